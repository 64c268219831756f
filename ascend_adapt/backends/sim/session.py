"""The "sim" backend: an LLM on the Ascend CPU simulator.

    backend = get_backend("sim", "out/llama.omsim")                 # or an export directory
    backend = get_backend("sim", "out/llama2", target="Ascend310P3", precision_mode="force_fp16")
    session = backend.new_session(batch=1, max_len=256)
    logits = session.prefill(ids, mask); logits = session.decode(tokens)
    backend.last_cost.to_text()          # simulated cost of the latest step
    backend.per_token_ms                 # simulated decode latency per token on the target

Sessions are `GraphLMSession`s whose executors are `SimRunner`s (acceptance when the backend is
created, precision-mode numerics at every step). Nothing heavy is imported at module level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence


from ascend_adapt.errors import ConfigError


KINDS = ("prefill", "decode")


def _kinds(graph_names) -> tuple[str, ...]:
    """The graphs an LM artifact runs: ("step",) for a gear build, else ("prefill", "decode")."""
    return ("step",) if "step" in graph_names else KINDS


class SimLMBackend:
    """Prefill / decode graphs of an `.omsim` artifact (or an export directory) on the simulator.

    Args:
        path: an `.omsim` directory (settings from its manifest) or an export directory
            (export.json; settings from the arguments, shapes pinned to the export's).
        precision_mode: override (v1 or v2 name); default: the artifact's, else force_fp16.
        keep_dtype: override: a list for both graphs, {"prefill": [...], "decode": [...]}, or
            "export" (the export's fp32-island node lists, what `convert` passes to ATC).
            Default: the artifact's; for an export directory "export".
        target: target name (default: the artifact's; for an export directory its target, else
            Ascend310P3).
        modify_mixlist: override the mixlist.
        check: run the acceptance checks (default True).
        cost: estimate the simulated time of each step (default True).
        threads: onnxruntime intra-op threads.

    Attributes:
        name: "sim".
        spec: the ModelSpec. batch, seq_len, max_len: B, S, M of the graphs.
        runners: {"prefill": SimRunner, "decode": SimRunner}.
        last_cost: CostReport of the latest step (simulated).
    """

    name = "sim"

    def __init__(self, path, precision_mode: str | None = None, keep_dtype: Any = None, target: str | None = None,
                 modify_mixlist: Mapping | None = None, check: bool = True, cost: bool = True,
                 threads: int | None = None):
        from ascend_adapt.spec import ModelSpec
        from ascend_adapt.backends.sim.artifact import is_omsim, read_omsim

        from .runner import SimRunner

        self.path = Path(path)
        self.artifact = read_omsim(self.path) if is_omsim(self.path) else None
        if self.artifact is not None:
            export = self.artifact.manifest.get("export")
            if export is None and (self.path / "export.json").is_file():
                import json

                export = json.loads((self.path / "export.json").read_text())
            if export is None:
                raise ConfigError(f"{self.path}: the artifact has no export manifest (spec, B, S, M)",
                                  "write it with ascend_adapt.backends.sim.artifact.omsim_from_export (or pass copy_from= "
                                  "the export directory to write_omsim)")
            kinds = _kinds(self.artifact.graph_names)
            missing = [k for k in kinds if k not in self.artifact.graph_names]
            if missing:
                raise ConfigError(f"{self.path}: no {', '.join(missing)} graph",
                                  "the LM backend needs prefill + decode graphs, or one step graph")
            models = {k: self.path for k in kinds}
            base = {k: self.artifact.settings(k) for k in kinds}
        else:
            from ascend_adapt.contract import graph_input_shapes
            from ascend_adapt.om_convert.builder.llm import load_manifest
            from ascend_adapt.sim.settings import GearSpec, SimSettings

            export = load_manifest(self.path)
            tname = target or export.get("target") or "Ascend310P3"
            kinds = _kinds(export["graphs"])
            models = {k: self.path / export["graphs"][k]["file"] for k in kinds}
            base = {}
            for k in kinds:
                shapes, dims = graph_input_shapes(export, k)
                base[k] = SimSettings(target=tname, keep_dtype=tuple(export.get("keep_dtype", {}).get(k, ())),
                                      input_shape=shapes, gears=GearSpec("dynamic_dims", dims) if dims else None)
            if keep_dtype is None:
                keep_dtype = "export"
        self.manifest = export
        self.spec = ModelSpec.from_dict(export["spec"])
        self.batch, self.seq_len, self.max_len = (int(export[k]) for k in ("batch", "seq_len", "max_len"))
        from ascend_adapt.contract import cache_dtype

        self.cache_dtype = cache_dtype(export)
        # roles → graphs: prefill / decode graphs, or one step graph (a gear build) for both
        self.roles = {"prefill": kinds[0], "decode": kinds[-1]}
        self.gears = export.get("gears") or None
        self.runners: dict[str, SimRunner] = {}
        for k in kinds:
            keep = self._keep_for(k, keep_dtype, export)
            self.runners[k] = SimRunner(models[k], target=target, precision_mode=precision_mode, keep_dtype=keep,
                                        graph=k, modify_mixlist=modify_mixlist, settings=base[k], check=check,
                                        cost=cost, threads=threads)
        for r in self.runners.values():
            r.activate()  # acceptance happens here, as ATC / the load would fail
        self.memory = None
        if check:  # every OM loaded side by side must fit the chip too (a step graph: one OM)
            from ascend_adapt.sim.acceptance import SimulatorRejection, check_memory

            rs = list(self.runners.values())
            problems, self.memory = check_memory([r._light for r in rs], rs[0].target, [r.settings for r in rs],
                                                 graphs=list(self.runners))
            if problems:
                self.close()
                raise SimulatorRejection(problems, rs[0].target.name, " + ".join(self.runners))
        self.last_cost = None

    @staticmethod
    def _keep_for(kind: str, keep_dtype: Any, export: Mapping) -> Sequence[str] | None:
        if keep_dtype is None:
            return None
        if isinstance(keep_dtype, str):
            if keep_dtype != "export":
                raise ConfigError(f"keep_dtype={keep_dtype!r}", "pass a list, a dict per graph, or 'export'")
            return tuple(export.get("keep_dtype", {}).get(kind, ()))
        if isinstance(keep_dtype, Mapping):
            return tuple(keep_dtype.get(kind, ()))
        return tuple(keep_dtype)

    # ------------------------------------------------------------------ settings / cost
    @property
    def settings(self) -> dict:
        """{graph name: SimSettings} in effect ("prefill" / "decode", or "step")."""
        return {k: r.settings for k, r in self.runners.items()}

    @property
    def target(self) -> str:
        return self.runner("decode").settings.target

    def precision_label(self) -> str:
        """The precision the prompt's graph computes in (for reports)."""
        from .runner import settings_label

        s = self.settings
        return settings_label(s.get("prefill") or next(iter(s.values())))

    def runner(self, role: str):
        """The SimRunner serving `role` ("prefill" / "decode")."""
        return self.runners[self.roles[role]]

    def cost(self, kind: str = "decode"):
        """CostReport (simulated) of one `kind` step ("prefill" / "decode") at the export's shapes
        (a step graph: gear 1 for decode, the largest gear for prefill)."""
        from ascend_adapt.contract import step_shape

        graph = self.roles[kind]
        gear = 1 if kind == "decode" else self.seq_len
        shapes = {i["name"]: tuple(step_shape(i["shape"], gear)) for i in self.manifest["graphs"][graph]["inputs"]}
        return self.runners[graph].cost_for(shapes)

    @property
    def per_token_ms(self) -> float:
        """Simulated decode latency of one step (one token per row) on the target, in ms: the
        ops plus the host↔device copies (`CostReport.step_ms`)."""
        return self.cost("decode").step_ms

    @property
    def prefill_ms(self) -> float:
        """Simulated latency of the prefill graph (S tokens per row), in ms (ops + host copies)."""
        return self.cost("prefill").step_ms

    def cost_summary(self) -> dict:
        """Both graphs' simulated step costs and memory, for reports."""
        from ascend_adapt.sim.cost import combine_memory

        pre, dec = self.cost("prefill"), self.cost("decode")
        mem = combine_memory([pre.memory, dec.memory])
        return {"simulated": True, "target": self.target, "precision_mode": dec.precision_mode,
                "prefill_ms": pre.step_ms, "decode_ms_per_token": dec.step_ms,
                "tokens_per_s": (1e3 * self.batch / dec.step_ms) if dec.step_ms else None,
                "memory": mem.to_dict(), "assumptions": list(dec.assumptions)}

    # ------------------------------------------------------------------ LMBackend
    def executor(self, kind: str):
        r = self.runner(kind)

        def run(feeds):
            out = r.infer(feeds)
            if r.last_cost is not None:
                self.last_cost = r.last_cost
            return out

        return run

    def new_session(self, batch: int, max_len: int):
        """A GraphLMSession of `batch` rows (= the graphs' B); `max_len` ≤ the graphs' M."""
        from ascend_adapt.runtime.graph_session import open_session

        return open_session(self, batch, max_len, self.executor("prefill"), self.executor("decode"),
                            self.gears or self.seq_len)

    def full_logits(self, input_ids, attention_mask=None, layer_outputs: bool = False):
        """Logits of every prompt position through the simulated prefill graph.

        With `layer_outputs`, also {name: float32 [B, s, …]} for "embed", "layers.{i}",
        "final_norm", "logits" as the card stores them (fp16-rounded under fp16 modes).
        """
        from ascend_adapt.runtime.graph_session import GraphLMSession, prefill_with_layers
        from .runner import SimRunner

        pre = self.runner("prefill")
        runner = pre
        if layer_outputs:
            runner = SimRunner(pre.model_path if pre.artifact is None else self.path, settings=pre.settings,
                               graph=self.roles["prefill"], dump=True, check=False, cost=False,
                               threads=pre.threads).activate()
        session = GraphLMSession(self.spec, lambda f: runner.infer(f), self.executor("decode"), self.batch,
                                 self.max_len, self.gears or self.seq_len, cache_dtype=self.cache_dtype)
        try:
            names = (self.manifest.get("layer_outputs") or []) if layer_outputs else None
            return prefill_with_layers(session, input_ids, attention_mask, names)
        finally:
            if runner is not pre:
                runner.deactivate()

    def close(self) -> None:
        for r in self.runners.values():
            r.deactivate()

    def __repr__(self) -> str:
        return (f"<sim backend {self.path} on {self.target} ({self.runners['decode'].settings.precision_mode}, "
                f"simulated) B={self.batch} S={self.seq_len} M={self.max_len}>")


def sim_backend(path, **options) -> SimLMBackend:
    """Factory registered as "sim": path = an `.omsim` directory or an export directory.

    Options: precision_mode, keep_dtype, target, modify_mixlist, check, cost, threads.
    """
    known = ("precision_mode", "keep_dtype", "target", "modify_mixlist", "check", "cost", "threads")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"sim backend: unknown options {unknown}", f"known: {', '.join(known)}")
    from ascend_adapt.om_convert.split import is_pipeline

    if is_pipeline(path):  # a multi-chip split (convert --chips N): one simulated chip per stage
        from ascend_adapt.runtime.pipeline import SimPipelineBackend

        return SimPipelineBackend(path, **options)
    return SimLMBackend(path, **options)

