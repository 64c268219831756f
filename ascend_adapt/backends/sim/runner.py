"""`SimRunner`: one graph on the Ascend CPU simulator (the "sim" backend's graph runner).
Nothing heavy is imported before `activate()`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ascend_adapt.errors import ConfigError
from ascend_adapt.runtime.runners import Metadata, Runner


def settings_label(s) -> str:
    """A SimSettings as reports name its precision: the mode, plus how many keep_dtype entries."""
    return s.precision_mode + (f" + keep_dtype({len(s.keep_dtype)})" if s.keep_dtype else "")


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
        from ascend_adapt.backends.sim.artifact import is_omsim, read_omsim
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

        self.target = self._resolve_target()
        self._light = load_model(self.model_path)
        self.acceptance = check_model(self._light, self.target, self.settings, graph=self.graph)
        if self.check:
            self.acceptance.raise_if_rejected(self.graph)
        self._inputs = graph_inputs(self._light)
        self._session = SimSession(self.model_path, self.settings, target=self.target, dump=self.dump,
                                   threads=self.threads, infos=infer_tensor_infos(self._light))
        self.stats = self._session.stats
        self._gears = self.settings.gear_shapes()

    def _resolve_target(self):
        """The Target of the settings: an artifact's own (a target given as a file when it was
        written is found through the file the manifest recorded), else the registered one."""
        from ascend_adapt.targets import load_target

        if self.artifact is not None and self.settings.target == self.artifact.target:
            return self.artifact.resolve_target()
        return load_target(self.settings.target)

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

    def precision_label(self) -> str:
        """The precision this runner computes in (for reports)."""
        return settings_label(self.settings)

    def cost_for(self, input_shapes: Mapping[str, Sequence[int]]):
        """CostReport (simulated) of this graph at the given input shapes (cached)."""
        from ascend_adapt.sim.cost import estimate_cost

        key = tuple(sorted((k, tuple(v)) for k, v in input_shapes.items()))
        if key not in self._costs:
            target = getattr(self, "target", None) or self._resolve_target()
            light = getattr(self, "_light", None) or self.model_path
            self._costs[key] = estimate_cost(light, target, self.settings, input_shapes=dict(input_shapes),
                                             graph_name=self.graph)
        return self._costs[key]

    def deactivate_impl(self) -> None:
        if self._session is not None:
            self._session.close()
        self._session = None
