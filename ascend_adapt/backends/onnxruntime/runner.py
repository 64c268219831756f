"""`OrtRunner`: an ONNX graph on plain onnxruntime, the fp32 reference (the "onnxruntime" backend's
graph runner). onnxruntime is imported in `activate()`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ascend_adapt.runtime.runners import Metadata, Runner


def _ort_dtype(t: str) -> np.dtype:
    from ascend_adapt.sim.numerics import _ort_dtype as f

    return f(t)


def _expose_all(model_bytes_or_path: Any):
    """ModelProto of the model with every node output marked as a graph output."""
    import onnx

    from ascend_adapt.sim.graph import expose_all_outputs

    if isinstance(model_bytes_or_path, (bytes, bytearray)):
        m = onnx.load_from_string(bytes(model_bytes_or_path))
    elif isinstance(model_bytes_or_path, onnx.ModelProto):
        m = onnx.ModelProto()
        m.CopyFrom(model_bytes_or_path)
    else:
        m = onnx.load(str(model_bytes_or_path))  # loads external data beside it
    expose_all_outputs(m, [i.name for i in m.graph.input] + [o for n in m.graph.node for o in n.output])
    return m


class OrtRunner(Runner):
    """A plain onnxruntime session (CPU by default): the fp32 reference of an ONNX graph.

    Args:
        model: path to an .onnx file, its bytes, or a ModelProto (weights embedded).
        providers: onnxruntime execution providers (default CPU).
        dump: return every intermediate tensor too (name → array), for layer-wise compare.
        optimize: onnxruntime's default graph optimizations (False = ORT_DISABLE_ALL).
        threads: intra-op threads (None = onnxruntime's default).
    """

    def __init__(self, model: Any, *, providers: Sequence[str] | None = None, dump: bool = False,
                 optimize: bool = True, threads: int | None = None, name: str | None = None):
        super().__init__(name or (f"onnxruntime:{Path(model).name}" if isinstance(model, (str, os.PathLike))
                                  else "onnxruntime"))
        self.model = model
        self.providers = list(providers or ["CPUExecutionProvider"])
        self.dump, self.optimize, self.threads = dump, optimize, threads
        self.session = None

    def activate_impl(self) -> None:
        import onnx
        import onnxruntime as ort

        so = ort.SessionOptions()
        if not self.optimize:
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if self.threads:
            so.intra_op_num_threads = self.threads
        so.log_severity_level = 3
        from ascend_adapt.operators.quant import ort_model_source  # a quantized graph: quant ops lowered

        src = self.model
        if self.dump:
            src = _expose_all(self.model)
        elif isinstance(src, os.PathLike):
            src = os.fspath(src)
        base = os.path.dirname(os.path.abspath(self.model)) if isinstance(self.model, (str, os.PathLike)) else None
        src = ort_model_source(src, so, base if isinstance(src, onnx.ModelProto) else None)
        self.session = ort.InferenceSession(src, so, providers=self.providers)
        self._outputs = [o.name for o in self.session.get_outputs()]

    def get_input_metadata_impl(self) -> Metadata:
        return {i.name: (_ort_dtype(i.type), tuple(i.shape)) for i in self.session.get_inputs()}

    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self.session.run(self._outputs, dict(feeds))))

    def deactivate_impl(self) -> None:
        self.session = None
