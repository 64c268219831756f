"""One Runner contract for every backend (Polygraphy style).

A runner has one life cycle:

    runner = SimRunner("out/llama.omsim", graph="decode")
    with runner:                                  # activate() … deactivate()
        meta = runner.get_input_metadata()        # {name: (np.dtype, shape)}
        outputs = runner.infer(feeds)             # {name: np.ndarray}
        runner.last_inference_time_ms             # host wall time of that call

Implementations live in their backend packages (`ascend_adapt/backends/<name>/runner.py`) and are
importable from here too (on first use): `OrtRunner` (plain onnxruntime, fp32 reference of an ONNX
graph), `SimRunner` (the Ascend CPU simulator: acceptance at activate, precision-mode numerics at
infer, a cost estimate per input shape), `TorchRunner` (a torch module or the golden backend's
forward), `MindSporeRunner` (a MindSpore Cell), and `AclRunner` / `AisBenchRunner` (real `.om`
files through pyACL / ais_bench). Optional dependencies are imported in `activate()`, never at
module import.
"""

from __future__ import annotations

import abc
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ascend_adapt.errors import AscendAdaptError

Metadata = dict  # dict[str, tuple[np.dtype, tuple[int | str | None, ...]]]


class RunnerError(AscendAdaptError):
    """A runner was used out of its life cycle or fed inputs that do not match its model."""


class Runner(abc.ABC):
    """Base class: subclasses implement `activate_impl`, `infer_impl`, `deactivate_impl` and
    `get_input_metadata_impl`.

    Attributes:
        name: a label for reports (default: the class name).
        is_active: between activate() and deactivate().
        last_inference_time_ms: host wall time of the last `infer`, in milliseconds.
        inference_times_ms: every call's wall time since activation.
    """

    def __init__(self, name: str | None = None):
        self.name = name or type(self).__name__
        self.is_active = False
        self.last_inference_time_ms: float | None = None
        self.inference_times_ms: list[float] = []

    # ------------------------------------------------------------------ life cycle
    def activate(self) -> "Runner":
        """Load the model / open the session (idempotent)."""
        if not self.is_active:
            self.activate_impl()
            self.is_active = True
            self.inference_times_ms = []
        return self

    def deactivate(self) -> None:
        """Release everything `activate` acquired (idempotent)."""
        if self.is_active:
            try:
                self.deactivate_impl()
            finally:
                self.is_active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # ------------------------------------------------------------------ use
    def get_input_metadata(self) -> Metadata:
        """{input name: (numpy dtype, shape)}; a dynamic dim is a string (its name) or None."""
        self._require_active("get_input_metadata")
        return self.get_input_metadata_impl()

    def infer(self, feeds: Mapping[str, np.ndarray], *, check_inputs: bool = True) -> dict[str, np.ndarray]:
        """Run one inference.

        Args:
            feeds: {input name: array}.
            check_inputs: check names, dtypes and static dims against `get_input_metadata`.

        Returns:
            {output name: array}.
        """
        self._require_active("infer")
        if check_inputs:
            self._check_inputs(feeds)
        t0 = time.perf_counter()
        out = self.infer_impl(feeds)
        self.last_inference_time_ms = (time.perf_counter() - t0) * 1e3
        self.inference_times_ms.append(self.last_inference_time_ms)
        return out

    # ------------------------------------------------------------------ to implement
    @abc.abstractmethod
    def activate_impl(self) -> None: ...

    @abc.abstractmethod
    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @abc.abstractmethod
    def deactivate_impl(self) -> None: ...

    @abc.abstractmethod
    def get_input_metadata_impl(self) -> Metadata: ...

    # ------------------------------------------------------------------ helpers
    def _require_active(self, what: str) -> None:
        if not self.is_active:
            raise RunnerError(f"{self.name}.{what}() called before activate()",
                              "use `with runner:` or call runner.activate() first")

    def _check_inputs(self, feeds: Mapping[str, np.ndarray]) -> None:
        meta = self.get_input_metadata_impl()
        missing = [n for n in meta if n not in feeds]
        extra = [n for n in feeds if n not in meta]
        if missing or extra:
            raise RunnerError(
                f"{self.name}: feeds do not match the model's inputs"
                + (f"; missing {missing}" if missing else "") + (f"; unexpected {extra}" if extra else ""),
                f"feed exactly: {', '.join(f'{n} {meta[n][0]} {list(meta[n][1])}' for n in meta)}")
        for n, (dtype, shape) in meta.items():
            a = feeds[n]
            if dtype is not None and np.asarray(a).dtype != dtype:
                raise RunnerError(f"{self.name}: input '{n}' has dtype {np.asarray(a).dtype}, the model takes {dtype}",
                                  f"cast it: feeds['{n}'] = feeds['{n}'].astype(np.{np.dtype(dtype).name})")
            if shape is None:
                continue
            s = np.shape(a)
            ok = len(s) == len(shape) and all(not isinstance(d, int) or d < 0 or d == x for d, x in zip(shape, s))
            if not ok:
                raise RunnerError(f"{self.name}: input '{n}' has shape {list(s)}, the model takes {list(shape)}",
                                  "fix the feed's shape (dynamic dims are shown as names)")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, active={self.is_active})"

def _full_forward(backend: Any, feeds: Mapping[str, np.ndarray], layer_outputs: bool) -> dict[str, np.ndarray]:
    """An LM backend's `full_logits` as runner outputs (logits + the named layer outputs)."""
    out = backend.full_logits(feeds["input_ids"], feeds.get("attention_mask"), layer_outputs=layer_outputs)
    if layer_outputs:
        logits, layers = out
        return {**{k: np.asarray(v, np.float32) for k, v in layers.items()}, "logits": np.asarray(logits, np.float32)}
    return {"logits": np.asarray(out, np.float32)}


def _outputs_to_numpy(out: Any, names: Sequence[str], to_np: Callable[[Any], np.ndarray]) -> dict[str, np.ndarray]:
    if isinstance(out, Mapping):
        return {k: to_np(v) if not isinstance(v, np.ndarray) else v for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        items = list(out)
    else:
        items = [out]
    keys = list(names) + [f"output_{i}" for i in range(len(names), len(items))]
    return {k: (v if isinstance(v, np.ndarray) else to_np(v)) for k, v in zip(keys, items)}

# the backends' runners, documented here as one contract (docs/simulator.md): imported on first use
_BACKEND_RUNNERS = {
    "OrtRunner": "ascend_adapt.backends.onnxruntime.runner",
    "SimRunner": "ascend_adapt.backends.sim.runner",
    "TorchRunner": "ascend_adapt.backends.torch.runner",
    "MindSporeRunner": "ascend_adapt.backends.mindspore.runner",
    "AclRunner": "ascend_adapt.backends.acl.runner",
    "AisBenchRunner": "ascend_adapt.backends.acl.runner",
}


def __getattr__(name: str):
    if name in _BACKEND_RUNNERS:
        import importlib

        return getattr(importlib.import_module(_BACKEND_RUNNERS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
