"""The "mindspore" backend: a checkpoint on MindSpore (CPU here, Ascend there) over a static KV
cache. `session.py`: the LM backend; `runner.py`: `MindSporeRunner`; `opener.py`: recognizes a
MindSpore port directory (`ascend-adapt port --to mindspore`). Nothing heavy is imported here."""

from ascend_adapt.backends import Backend, register

BACKEND = register(Backend(
    name="mindspore",
    summary="MindSpore (CPU here, Ascend there): a port directory or an HF checkpoint",
    session="ascend_adapt.backends.mindspore.session:mindspore_backend",
    opener="ascend_adapt.backends.mindspore.opener:recognize",
    requires=("mindspore",),
    device="cpu (Ascend with MindSpore-Ascend)",
    precisions=("fp32", "fp16"),
    options=("dtype", "mode", "device"),
    detect_order=40,
    precision_label="{dtype} (MindSpore)",
))
