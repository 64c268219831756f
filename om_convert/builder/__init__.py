"""LLM graph builder: HF checkpoint → prefill.onnx + decode.onnx with a static KV cache, built
directly from the adapter's spec and the streamed weights (see `llm.py`; contract in
`ascend_adapt/contract.py` and docs/graph_contract.md).

    from ascend_adapt.om_convert.builder import build_llm_onnx
    result = build_llm_onnx("llama-2-7b-hf", "out/llama2", seq_len=64, max_len=512,
                            target="Ascend310P3", weight_dtype="float16")

The contract module is pure numpy; `build_llm_onnx` (onnx) is loaded on first access.
"""

from ascend_adapt.contract import MASK_FILL, io_spec, layer_output_names

__all__ = ["build_llm_onnx", "BuildResult", "load_manifest", "check_graph_ops", "MASK_FILL", "io_spec",
           "layer_output_names"]


def __getattr__(name):
    if name in ("build_llm_onnx", "BuildResult", "load_manifest", "check_graph_ops"):
        from . import llm

        return getattr(llm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
