"""The "torch" backend: the fp32 CPU golden (transformers Llama / Qwen, our ChatGLM) every other
backend is compared with. `session.py`: the LM backend; `runner.py`: `TorchRunner`;
`opener.py`: recognizes an HF checkpoint directory. Registered on the registry's first lookup;
nothing heavy is imported here."""

from ascend_adapt.backends import Backend, register

BACKEND = register(Backend(
    name="torch",
    summary="fp32 golden on the CPU: the family's torch model of an HF checkpoint",
    session="ascend_adapt.backends.torch.session:torch_backend",
    opener="ascend_adapt.backends.torch.opener:recognize",
    locate="ascend_adapt.backends.torch.opener:locate",
    requires=("torch",),
    device="cpu",
    precisions=("fp32", "fp16", "bf16"),
    options=("dtype",),
    detect_order=90,
    precision_label="{dtype} (torch{golden})",  # fp32: the golden
))
