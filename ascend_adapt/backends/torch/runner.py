"""`TorchRunner`: a torch module, or the "torch" backend's full forward, as a graph runner — the
fp32 golden side of a comparison. torch is imported in `activate()`."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from ascend_adapt.runtime.runners import Metadata, Runner, _full_forward, _outputs_to_numpy


class TorchRunner(Runner):
    """A torch module (or any callable on torch tensors) as a runner — the fp32 golden side of a
    comparison.

    Args:
        model: a `torch.nn.Module`, a callable taking keyword tensors, or a zero-argument
            loader returning one (called in activate; keeps torch imports lazy).
        input_metadata: {name: (np.dtype, shape)} the model takes (optional; enables input checks).
        output_names: names for positional outputs (a tuple / list / single tensor).
        device: torch device (default "cpu").
    """

    def __init__(self, model: Any, *, input_metadata: Metadata | None = None,
                 output_names: Sequence[str] | None = None, device: str = "cpu", name: str | None = None,
                 loader: bool = False):
        super().__init__(name or "torch")
        self._model_src, self._loader = model, loader
        self._meta = dict(input_metadata or {})
        self.output_names = list(output_names or [])
        self.device = device
        self.model = None

    _backend_src: Any = None
    _layer_outputs = False

    @classmethod
    def from_backend(cls, backend: Any, *, layer_outputs: bool = True, dtype: str = "float32",
                     name: str | None = None) -> "TorchRunner":
        """The golden backend's full forward (no cache) as a runner, for layer-wise compare.

        Feeds: {"input_ids": [B, S] ints, "attention_mask": [B, S] (optional, 1 = real token)}.
        Outputs: {"logits": float32 [B, S, V]} plus, with `layer_outputs`, "embed",
        "layers.{i}", "final_norm" ([B, S, H]), the names the ONNX graphs give those tensors.

        Args:
            backend: a `TorchBackend`, or a checkpoint directory (loaded in activate).
            dtype: compute dtype when loading from a directory.
        """
        r = cls(None, name=name or "torch-golden")
        r._backend_src, r._layer_outputs, r._dtype = backend, layer_outputs, dtype
        return r

    def activate_impl(self) -> None:
        from ascend_adapt._optional import require

        torch = require("torch", purpose="the torch runner")
        self._torch = torch
        if self._backend_src is not None:
            src = self._backend_src
            if isinstance(src, (str, os.PathLike)):
                from .session import TorchBackend

                src = TorchBackend(src, dtype=self._dtype)
            self.backend = src
            return
        self.model = self._model_src() if self._loader else self._model_src
        if hasattr(self.model, "eval"):
            self.model.eval()

    def get_input_metadata_impl(self) -> Metadata:
        return dict(self._meta)

    def _check_inputs(self, feeds):  # no metadata = no check
        if self._meta:
            super()._check_inputs(feeds)

    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._backend_src is not None:
            return _full_forward(self.backend, feeds, self._layer_outputs)
        torch = self._torch
        args = {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in feeds.items()}
        with torch.inference_mode():
            out = self.model(**args)
        return _outputs_to_numpy(out, self.output_names, lambda t: t.detach().cpu().numpy())

    def deactivate_impl(self) -> None:
        self.model = None
        self.backend = None
