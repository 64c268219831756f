"""The "torch_npu" and "torch_mlu" backends: the family's torch model (the "torch" backend's)
on an Ascend NPU (torch_npu + CANN) or a Cambricon MLU (torch_mlu + Neuware). One package: they
differ only in the device plugin they import (`session.PACKAGES`). Never detected from a path
(an HF checkpoint opens on "torch" unless one of these is named)."""

from ascend_adapt.backends import Backend, register

_COMMON = dict(
    locate="ascend_adapt.backends.torch.opener:locate",
    precisions=("fp16", "bf16", "fp32"),
    options=("dtype", "device"),
    detect_order=1000,
)

BACKEND = register(Backend(
    name="torch_npu",
    summary="the torch model on an Ascend NPU through torch_npu (needs CANN)",
    session="ascend_adapt.backends.torch_npu.session:torch_npu_backend",
    requires=("torch", "torch_npu"), device="Ascend NPU",
    precision_label="{dtype} (torch_npu)", **_COMMON))

BACKEND_MLU = register(Backend(
    name="torch_mlu",
    summary="the torch model on a Cambricon MLU through torch_mlu (needs Neuware)",
    session="ascend_adapt.backends.torch_npu.session:torch_mlu_backend",
    requires=("torch", "torch_mlu"), device="Cambricon MLU",
    precision_label="{dtype} (torch_mlu)", **_COMMON))
