"""ascend-adapt: take Hugging Face LLMs onto Huawei Ascend (CANN / MindSpore / ATC) and Cambricon MLU.

Nothing heavy is imported here: torch, mindspore and onnxruntime load only inside the functions
that need them, so `ascend-adapt --help` stays fast.
"""

__version__ = "0.1.0"
