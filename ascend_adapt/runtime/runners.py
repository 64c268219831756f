"""One Runner contract for every backend (Polygraphy style).

A runner has one life cycle:

    runner = SimRunner("out/llama.omsim", graph="decode")
    with runner:                                  # activate() … deactivate()
        meta = runner.get_input_metadata()        # {name: (np.dtype, shape)}
        outputs = runner.infer(feeds)             # {name: np.ndarray}
        runner.last_inference_time_ms             # host wall time of that call

Implementations: `OrtRunner` (plain onnxruntime, fp32 reference of an ONNX graph), `SimRunner`
(the Ascend CPU simulator: acceptance at activate, precision-mode numerics at infer, a cost
estimate per input shape), `TorchRunner` (a torch module or the golden backend's forward),
`MindSporeRunner` (a MindSpore Cell), and `AclRunner` / `AisBenchRunner` in `acl_backend.py`
(real `.om` files through pyACL / ais_bench). Optional dependencies are imported in
`activate()`, never at module import.
"""

from __future__ import annotations

import abc
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ascend_adapt.errors import AscendAdaptError, ConfigError

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


# ============================================================================ onnxruntime
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


# ============================================================================ simulator
class SimRunner(Runner):
    """The Ascend CPU simulator as a runner.

    `activate()` runs the acceptance checks (raising `SimulatorRejection` for what ATC / the
    card would refuse) and builds the precision-mode emulation; `infer()` checks the feed shapes
    against the compiled shapes / gears as the card does, computes like the card, and records
    the simulated device time of that call (`last_simulated_time_ms`, `last_cost`).

    Args:
        model: an `.omsim` directory, or an `.onnx` file (or ModelProto).
        target: target name (default: the artifact's; required for a bare .onnx).
        precision_mode: override the artifact's precision mode (v1 or v2 name).
        keep_dtype: override the artifact's keep_dtype entries (node names, `OpType::<Type>`).
        dump: return every intermediate tensor too (name → array, as the card stores it).
        graph: which graph of the artifact ("prefill", "decode"); None when it has one.
        modify_mixlist: override the mixlist ({"black-list": {"to-add": [...]}}).
        settings: full SimSettings (for a bare .onnx; fields above override it).
        check: run the acceptance checks in activate (default True).
        cost: estimate the simulated device time of every inference (cached per input shape).
        threads: onnxruntime intra-op threads.

    Attributes:
        settings: the effective SimSettings.
        acceptance: the AcceptanceReport of activate (warnings included).
        stats: what the numerics emulation rewrote (EmulationStats).
        last_cost: CostReport of the last inference's shapes (simulated).
        last_simulated_time_ms: its total, the estimated device time of that call.
    """

    def __init__(self, model: Any, target: str | None = None, precision_mode: str | None = None,
                 keep_dtype: Sequence[str] | None = None, dump: bool = False, *, graph: str | None = None,
                 modify_mixlist: Mapping | None = None, settings: Any = None, check: bool = True,
                 cost: bool = True, threads: int | None = None, name: str | None = None):
        from ascend_adapt.om_convert.artifact import is_omsim, read_omsim
        from ascend_adapt.sim.settings import SimSettings

        self.artifact = None
        if isinstance(model, (str, os.PathLike)) and is_omsim(model):
            self.artifact = read_omsim(model)
            self.model_path: Any = self.artifact.graph_path(graph)
            # explicit settings (e.g. the sim backend's overridden ones) win over the manifest's
            base = settings if settings is not None else self.artifact.settings(graph)
            graph = graph or self.artifact.graph_names[0]
        else:
            if isinstance(model, (str, os.PathLike)) and Path(model).suffix == ".om":
                raise ConfigError(f"'{model}' is a real OM file", "run it with AclRunner on an Ascend host")
            self.model_path = model
            if settings is None and target is None:
                raise ConfigError("SimRunner on a bare ONNX graph needs a target",
                                  "pass target='Ascend310P3' (or an .omsim artifact, which names its target)")
            base = settings if settings is not None else SimSettings(target=target)
        changes: dict[str, Any] = {}
        if target is not None and target != base.target:
            changes["target"] = target
        if precision_mode is not None:
            changes["precision_mode"] = precision_mode  # v1 or v2 name
        if keep_dtype is not None:
            changes["keep_dtype"] = tuple(keep_dtype)
        if modify_mixlist is not None:
            changes["modify_mixlist"] = modify_mixlist
        self.settings = base.replace(**changes) if changes else base
        self.graph = graph
        self.dump, self.check, self.cost, self.threads = dump, check, cost, threads
        label = graph or (Path(model).stem if isinstance(model, (str, os.PathLike)) else "graph")
        super().__init__(name or f"sim:{self.settings.target}:{self.settings.precision_mode}:{label}")
        self.acceptance = None
        self.stats = None
        self.last_cost = None
        self.last_simulated_time_ms: float | None = None
        self._session = None
        self._costs: dict[tuple, Any] = {}

    def activate_impl(self) -> None:
        from ascend_adapt.sim.acceptance import check_model
        from ascend_adapt.sim.graph import graph_inputs, infer_tensor_infos, load_model
        from ascend_adapt.sim.numerics import SimSession
        from ascend_adapt.targets import load_target

        self.target = load_target(self.settings.target)
        self._light = load_model(self.model_path)
        self.acceptance = check_model(self._light, self.target, self.settings, graph=self.graph)
        if self.check:
            self.acceptance.raise_if_rejected(self.graph)
        self._inputs = graph_inputs(self._light)
        self._session = SimSession(self.model_path, self.settings, target=self.target, dump=self.dump,
                                   threads=self.threads, infos=infer_tensor_infos(self._light))
        self.stats = self._session.stats
        self._gears = self.settings.gear_shapes()

    def get_input_metadata_impl(self) -> Metadata:
        from ascend_adapt.sim.graph import np_dtype

        pinned = self.settings.input_shape or {}
        meta = {}
        for name, info in self._inputs.items():
            shape = info.shape
            if name in pinned:
                shape = tuple(d if isinstance(d, int) and d > 0 else (f"gear{i}" if d == -1 else None)
                              for i, d in enumerate(pinned[name]))
            meta[name] = (np_dtype(info.elem_type), shape)
        return meta

    def _check_compiled_shapes(self, feeds: Mapping[str, np.ndarray]) -> None:
        """The card runs only the compiled shapes: one of the gears, or the static shape."""
        from ascend_adapt.sim.acceptance import Problem, SimulatorRejection

        if self._gears:
            got = {n: tuple(np.shape(feeds[n])) for n in self._gears[0] if n in feeds}
            if not any(all(got.get(n) == tuple(s) for n, s in g.items()) for g in self._gears):
                listing = "; ".join(", ".join(f"{n}:{list(s)}" for n, s in g.items()) for g in self._gears[:6])
                more = f" (+{len(self._gears) - 6} more)" if len(self._gears) > 6 else ""
                raise SimulatorRejection([Problem(
                    "100000", f"ACL_ERROR_INVALID_PARAM: input shapes {got} match no gear of the model; gears: "
                              f"{listing}{more}",
                    "pad the inputs on the host to the smallest gear that holds them (the LM session does this)",
                    "shape", graph=self.graph)], self.settings.target, self.graph)

    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._check_compiled_shapes(feeds)
        out = self._session.run(feeds)
        if self.settings.output_type in ("FP16", "fp16"):
            out = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in out.items()}
        if self.cost:
            self.last_cost = self.cost_for({n: np.shape(feeds[n]) for n in self._inputs if n in feeds})
            self.last_simulated_time_ms = self.last_cost.total_ms
        return out

    def cost_for(self, input_shapes: Mapping[str, Sequence[int]]):
        """CostReport (simulated) of this graph at the given input shapes (cached)."""
        from ascend_adapt.sim.cost import estimate_cost

        key = tuple(sorted((k, tuple(v)) for k, v in input_shapes.items()))
        if key not in self._costs:
            target = getattr(self, "target", None) or self.settings.target
            light = getattr(self, "_light", None) or self.model_path
            self._costs[key] = estimate_cost(light, target, self.settings, input_shapes=dict(input_shapes),
                                             graph_name=self.graph)
        return self._costs[key]

    def deactivate_impl(self) -> None:
        if self._session is not None:
            self._session.close()
        self._session = None


# ============================================================================ torch
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
                from .torch_backend import TorchBackend

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


# ============================================================================ mindspore
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
            backend: a `MindSporeBackend` (ascend_adapt.model_zoo.ms_backend), or a checkpoint
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
                from ascend_adapt.model_zoo.ms_backend import MindSporeBackend

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


def __getattr__(name: str):
    # AclRunner / AisBenchRunner live beside the "acl" backend; re-exported lazily here
    if name in ("AclRunner", "AisBenchRunner"):
        from . import acl_backend

        return getattr(acl_backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
