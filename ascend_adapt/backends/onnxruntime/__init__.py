"""The "onnxruntime" backend (alias "ort"): plain onnxruntime on the CPU. LM level: an export
directory (`ascend-adapt export`, prefill/decode or step graphs, `session.py`); graph level: one
`.onnx` file (`runner.py`: `OrtRunner`, the fp32 reference of a graph). Nothing heavy is
imported here."""

from ascend_adapt.backends import Backend, register

BACKEND = register(Backend(
    name="onnxruntime",
    summary="onnxruntime on the CPU: an .onnx graph or an export directory",
    session="ascend_adapt.backends.onnxruntime.session:ort_backend",
    runner="ascend_adapt.backends.onnxruntime.opener:open_graph",
    opener="ascend_adapt.backends.onnxruntime.opener:recognize",
    locate="ascend_adapt.backends.onnxruntime.opener:locate",
    aliases=("ort",),
    requires=("onnxruntime",),
    device="cpu",
    precisions=("fp32", "fp16", "int8"),
    options=("threads", "huge_pages", "providers"),
    detect_order=30,
    precision_label="export dtype (onnxruntime)",
))
