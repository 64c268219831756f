"""`MindSporeRunner`: a MindSpore Cell, or the "mindspore" backend's full forward, as a runner.
mindspore is imported in `activate()`."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from ascend_adapt.runtime.runners import Metadata, Runner, _full_forward, _outputs_to_numpy


class MindSporeRunner(Runner):
    """A MindSpore Cell (or a callable on MindSpore tensors) as a runner.

    Args:
        model: the Cell, or a zero-argument loader returning one with `loader=True` (for example
            the MindSpore backend's model; mindspore is imported in activate only).
        input_metadata / output_names: as for TorchRunner.
        device: "CPU" puts MindSpore on the CPU (the project's default, with its fast settings);
            None leaves MindSpore's device as the caller set it (e.g. Ascend on an NPU host).
    """

    def __init__(self, model: Any, *, input_metadata: Metadata | None = None,
                 output_names: Sequence[str] | None = None, name: str | None = None, loader: bool = False,
                 device: str | None = "CPU"):
        super().__init__(name or "mindspore")
        self.device = device
        self._model_src, self._loader = model, loader
        self._meta = dict(input_metadata or {})
        self.output_names = list(output_names or [])
        self.model = None

    _backend_src: Any = None
    _layer_outputs = False

    @classmethod
    def from_backend(cls, backend: Any, *, layer_outputs: bool = True, dtype: str = "float32", mode: str = "graph",
                     name: str | None = None) -> "MindSporeRunner":
        """The MindSpore backend's full forward as a runner (same feeds / outputs as
        `TorchRunner.from_backend`).

        Args:
            backend: a `MindSporeBackend` (ascend_adapt.backends.mindspore.session), or a checkpoint
                directory (loaded in activate with `dtype` and `mode`).
        """
        r = cls(None, name=name or "mindspore-full")
        r._backend_src, r._layer_outputs, r._dtype, r._mode = backend, layer_outputs, dtype, mode
        return r

    def activate_impl(self) -> None:
        from ascend_adapt._optional import require

        self._ms = require("mindspore", purpose="the MindSpore runner")
        if self.device == "CPU":
            from ascend_adapt.model_zoo.ms_layers import configure_cpu

            configure_cpu("pynative")  # once per process, before any kernel runs (MindSpore requires it)
        if self._backend_src is not None:
            src = self._backend_src
            if isinstance(src, (str, os.PathLike)):
                from .session import MindSporeBackend

                src = MindSporeBackend(src, dtype=self._dtype, mode=self._mode)
            self.backend = src
            return
        self.model = self._model_src() if self._loader else self._model_src
        if hasattr(self.model, "set_train"):
            self.model.set_train(False)

    def get_input_metadata_impl(self) -> Metadata:
        return dict(self._meta)

    def _check_inputs(self, feeds):
        if self._meta:
            super()._check_inputs(feeds)

    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._backend_src is not None:
            return _full_forward(self.backend, feeds, self._layer_outputs)
        ms = self._ms
        args = {k: ms.Tensor(np.ascontiguousarray(v)) for k, v in feeds.items()}
        out = self.model(**args)
        return _outputs_to_numpy(out, self.output_names, lambda t: t.asnumpy())

    def deactivate_impl(self) -> None:
        self.model = None
        self.backend = None
