"""The "torch_npu" and "torch_mlu" backends: the torch model of a checkpoint on an Ascend NPU or a
Cambricon MLU through the vendor's PyTorch plugin.

The model is the family's torch reference (the same module the "torch" golden runs: transformers'
Llama / Qwen2, our ChatGLM), moved to the device; a forward pre-hook moves the step's host tensors
to the device and a forward hook brings the logits back, and a session's static cache (ChatGLM) is
moved once, so every family's session code runs unchanged on the device.

Device API (vendor documentation):
- torch_npu: `import torch_npu` registers the "npu" device; `torch.npu.is_available()`,
  `torch.npu.set_device("npu:0")`, tensors `.to("npu:0")` (Ascend/pytorch README.md; torch_npu/npu/
  utils.py `set_device`, torch_npu/npu/__init__.py `is_available`; master 9e73e708, 2026-08-21).
- torch_mlu: `import torch_mlu`; `torch.mlu.is_available()`, `torch.mlu.set_device`, "mlu:0"
  (Cambricon/torch_mlu README.md; torch_mlu/mlu/__init__.py, torch_mlu/mlu/device.py; r1.22_pt2.4.0).

Without the package (or without its CANN / Neuware libraries) creating the backend raises
`DevicePackageError`, naming the package, the release that pairs with the local PyTorch and the
CANN / Neuware version each listed release needs. Importing this module imports nothing heavy.
"""

from __future__ import annotations

import importlib

from ascend_adapt.errors import ConfigError, MissingDependencyError, UnsupportedError


# package -> (device type, pip name, SDK, what it is, environment hint)
PACKAGES = {
    "torch_npu": ("npu", "torch-npu", "CANN", "Huawei Ascend NPU",
                  "source the CANN toolkit's set_env.sh (e.g. /usr/local/Ascend/ascend-toolkit/set_env.sh) first"),
    "torch_mlu": ("mlu", "torch_mlu", "Neuware (CTR: CNToolkit, CNNL, CNCL)", "Cambricon MLU",
                  "set NEUWARE_HOME and put $NEUWARE_HOME/lib64 on LD_LIBRARY_PATH first"),
}
DTYPES = ("float16", "bfloat16", "float32")


class DevicePackageError(MissingDependencyError):
    """The device plugin (torch_npu / torch_mlu) does not import: the message names the package,
    the release for the local PyTorch and the CANN / Neuware version it needs."""

    def __init__(self, package: str, reason: str, torch_version: str | None):
        device_type, pip_name, sdk, what, env = PACKAGES[package]
        from ascend_adapt.coverage import load_releases

        pairs = "; ".join(f"{package} {r.version} (torch {r.torch}) needs {r.sdk}" for r in load_releases(package))
        local = (torch_version or "?").split("+")[0]
        msg = (f"generate --backend {package} runs on a {what} and needs the package '{package}', which does not "
               f"import here ({reason}). Releases and what they need: {pairs}")
        hint = (f"on the {what} host: install the {sdk} release that pairs with it, {env}, then pip install "
                f"{pip_name} matching torch {local} (the {package} version follows the PyTorch version)")
        self.message, self.hint = msg, hint
        Exception.__init__(self, msg)
        self.package, self.extra = package, ("npu" if package == "torch_npu" else None)


def import_device_package(package: str):
    """Import torch_npu / torch_mlu, or raise `DevicePackageError`."""
    import torch

    try:
        return importlib.import_module(package)
    except (ImportError, OSError, RuntimeError) as exc:  # missing wheel, or its CANN / Neuware libraries
        raise DevicePackageError(package, f"{type(exc).__name__}: {exc}", torch.__version__) from None


def _move(obj, device):
    import torch
    from torch.utils._pytree import tree_map

    return tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) and t.device != device else t, obj)


class TorchDeviceBackend:
    """The family's torch model on `npu:N` / `mlu:N`.

    Args:
        path: HF checkpoint directory.
        package: "torch_npu" or "torch_mlu".
        dtype: "float16" (default: every Ascend / MLU part computes fp16), "bfloat16" (910B, MLU370)
            or "float32".
        device: "npu:0" / "mlu:0" (default index 0). "cpu" runs the same path on the host without
            the package (for checking the plumbing where no device exists).

    Attributes:
        name, spec, device, golden (the `TorchBackend` whose module was moved).
    """

    def __init__(self, path, package: str = "torch_npu", dtype: str | None = None, device: str | None = None):
        import torch

        from ascend_adapt.backends.torch.session import TorchBackend

        if package not in PACKAGES:
            raise ConfigError(f"unknown device package '{package}'", f"use one of: {', '.join(PACKAGES)}")
        dtype = dtype or "float16"
        if dtype not in DTYPES:
            raise ConfigError(f"--backend {package}: unknown dtype '{dtype}'", f"use one of: {', '.join(DTYPES)}")
        device_type = PACKAGES[package][0]
        if device is None or not str(device).startswith("cpu"):
            device = device or f"{device_type}:0"
            if not str(device).startswith(device_type):
                raise ConfigError(f"--backend {package}: device '{device}' is not a {device_type} device",
                                  f"use {device_type}:N")
            import_device_package(package)
            dev_mod = getattr(torch, device_type)
            if not dev_mod.is_available():
                raise UnsupportedError(f"{package} imports but sees no {device_type.upper()} device",
                                       "check the driver (npu-smi info / cnmon) and the visible-devices variable")
            dev_mod.set_device(device)
        self.name = package
        self.device = torch.device(device)
        self.golden = TorchBackend(path, dtype=dtype)
        self.spec = self.golden.spec
        self.dtype = dtype
        model = self.golden.model.to(self.device)
        dev = self.device

        def to_device(_module, args, kwargs):
            return _move(args, dev), _move(kwargs, dev)

        def to_host(_module, _args, _kwargs, output):
            if isinstance(output, torch.Tensor):
                return output.cpu()
            if hasattr(output, "logits") and isinstance(output.logits, torch.Tensor):
                output.logits = output.logits.cpu()
            return output

        model.register_forward_pre_hook(to_device, with_kwargs=True)
        model.register_forward_hook(to_host, with_kwargs=True)

    def new_session(self, batch: int, max_len: int):
        """The family's session, its static cache (if any) moved to the device once."""
        session = self.golden.new_session(batch, max_len)
        if getattr(session, "cache", None) is not None:
            session.cache = _move(session.cache, self.device)
        return session


def torch_npu_backend(path, dtype: str | None = None, device: str | None = None, **_ignored) -> TorchDeviceBackend:
    """Factory of the "torch_npu" backend."""
    return TorchDeviceBackend(path, "torch_npu", dtype=dtype, device=device)


def torch_mlu_backend(path, dtype: str | None = None, device: str | None = None, **_ignored) -> TorchDeviceBackend:
    """Factory of the "torch_mlu" backend."""
    return TorchDeviceBackend(path, "torch_mlu", dtype=dtype, device=device)

