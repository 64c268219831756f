"""Run a multi-chip split (`convert --chips N`): one stage per chip, the hidden state handed on.

A step (prefill or decode) runs the stages in order. Stage 0 takes the ids; each later stage
takes the previous stage's `hidden_out` as its `hidden_in`; every stage takes the same
positions and mask and its own layers' KV cache, and returns its layers' present K/V; the last
returns the logits. `run_stages` is that loop over any per-stage executor, so the host-cache
sessions (`graph_session.GraphLMSession`) of the simulator and of pyACL work unchanged: the
session's cache [L, …] is sliced per stage (`cache[a:b]`, a view), and the stages' present K/V
are stacked back in layer order.

**The hand-over goes through the host in this version**: the hidden state [B, seq, H] (activation
dtype) is copied device → host after stage i and host → device before stage i+1 (pyACL
`aclrtMemcpy` kinds 2 and 1). `HandoverCounter` counts the tensors and bytes. A device-to-device
copy between chips (`aclrtMemcpy` kind 3 across devices after `aclrtDeviceCanAccessPeer` /
`aclrtDeviceEnablePeerAccess`) would save the PCIe round trip; it is not done here.

Backends:
- `SimPipelineBackend` ("sim" on OUT/model.omsim with pipeline.json): one `SimLMBackend` per chip,
  each checked for memory on its own (a chip that does not fit is refused by name).
- `AclPipelineBackend` ("acl" on a split convert output): one `AclLMBackend` per stage on its own
  device (`AclRuntime` sets each device and creates its context once); `kv_cache="device"` keeps
  each stage's KV cache on its own chip (`AclDeviceKVCache`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ascend_adapt.errors import ConfigError

HIDDEN_IN, HIDDEN_OUT = "hidden_in", "hidden_out"
_PRESENT = ("present_keys", "present_values")


@dataclass
class HandoverCounter:
    """Hidden-state hand-overs between chips (through the host: one D2H + one H2D each)."""

    tensors: int = 0
    bytes: int = 0  # bytes of the hidden states handed over (each crosses PCIe twice)
    per_step: list = field(default_factory=list)

    def add(self, array: np.ndarray) -> None:
        self.tensors += 1
        self.bytes += int(np.asarray(array).nbytes)


StageRun = Callable[[int, Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


def run_stages(stages: Sequence[Mapping], feeds: Mapping[str, np.ndarray], run: StageRun,
               counter: HandoverCounter | None = None) -> dict[str, np.ndarray]:
    """One step through every stage; returns the whole-model graph's outputs.

    Args:
        stages: the export's "stages" ({index, layers [a, b), first, last, …}).
        feeds: the whole-model feeds (`contract.prefill_feeds` / `decode_feeds`): past_* [L, …]
            when present are sliced per stage.
        run: run(stage index, stage feeds) -> that stage graph's outputs.
        counter: counts the hand-overs.

    Returns:
        The last stage's outputs (logits, …), present_* stacked over all layers [L, …], and
        every stage's other outputs (layer outputs of a dump run; `hidden_out` of stage i also
        under its last layer's name).
    """
    out: dict[str, np.ndarray] = {}
    presents: dict[str, list] = {n: [] for n in _PRESENT}
    hidden = None
    for st in stages:
        a, b = st["layers"]
        f = {k: v for k, v in feeds.items() if k not in ("input_ids", "past_keys", "past_values")}
        if st["first"]:
            f["input_ids"] = feeds["input_ids"]
        else:
            f[HIDDEN_IN] = hidden
            if counter is not None:
                counter.add(hidden)
        for k in ("past_keys", "past_values"):
            if feeds.get(k) is not None:
                f[k] = feeds[k][a:b]
        res = run(int(st["index"]), f)
        for n in _PRESENT:
            presents[n].append(np.asarray(res[n]))
        for k, v in res.items():
            if k not in _PRESENT:
                out[k] = v
        if not st["last"]:
            hidden = np.asarray(res[HIDDEN_OUT])
            out[f"layers.{b - 1}"] = hidden
    out.pop(HIDDEN_OUT, None)
    for n, parts in presents.items():
        out[n] = np.concatenate(parts, axis=0)
    return out


def _export_of(path: Path) -> dict:
    from ascend_adapt.om_convert.builder.llm import load_manifest

    return load_manifest(path if (path / "export.json").is_file() else path / "export")


# ---------------------------------------------------------------------------- simulator
class SimPipelineBackend:
    """A split artifact (OUT/model.omsim with pipeline.json) on the simulator, one chip per stage.

    Each stage is a `SimLMBackend` over its own `.omsim` (acceptance and the memory check per
    chip, with the chip named in a refusal). The LM interface is that of `SimLMBackend`.

    Args:
        path: OUT/model.omsim (or OUT). Other options as `SimLMBackend`.
    """

    name = "sim"

    def __init__(self, path, **options):
        from ascend_adapt.om_convert.split import is_pipeline, read_pipeline
        from ascend_adapt.sim.acceptance import SimulatorRejection

        from ascend_adapt.backends.sim.session import SimLMBackend

        p = Path(path)
        if not is_pipeline(p) and is_pipeline(p / "model.omsim"):
            p = p / "model.omsim"
        self.path = p
        self.pipeline = read_pipeline(p)
        self.stages_info = self.pipeline["stages"]
        self.stages: list[SimLMBackend] = []
        try:
            for st in self.stages_info:
                try:
                    self.stages.append(SimLMBackend(p / st["omsim"], **options))
                except SimulatorRejection as e:  # each chip is checked alone: say which
                    raise SimulatorRejection(e.problems, e.target, st.get("label") or f"chip {st['index']}") from None
        except BaseException:
            self.close()
            raise
        first = self.stages[0]
        self.manifest = {**first.manifest, "graphs": {}, "stage": None}
        self.spec, self.batch, self.seq_len, self.max_len = first.spec, first.batch, first.seq_len, first.max_len
        self.cache_dtype, self.gears, self.roles = first.cache_dtype, first.gears, first.roles
        self.handover = HandoverCounter()
        self.last_cost = None

    # ------------------------------------------------------------------ LMBackend
    def _run(self, role: str, dump: Mapping[int, Any] | None = None):
        execs = [(dump or {}).get(i) or s.executor(role) for i, s in enumerate(self.stages)]

        def run(feeds):
            return run_stages(self.stages_info, feeds, lambda i, f: execs[i](f), self.handover)

        return run

    def executor(self, kind: str):
        return self._run(kind)

    def new_session(self, batch: int, max_len: int):
        from .graph_session import open_session

        return open_session(self, batch, max_len, self._run("prefill"), self._run("decode"),
                            self.gears or self.seq_len)

    def full_logits(self, input_ids, attention_mask=None, layer_outputs: bool = False):
        """As `SimLMBackend.full_logits`, through every stage (layer outputs from every chip)."""
        from .graph_session import GraphLMSession, prefill_with_layers
        from ascend_adapt.backends.sim.runner import SimRunner

        dump = {}
        if layer_outputs:
            for i, s in enumerate(self.stages):
                pre = s.runner("prefill")
                r = SimRunner(s.path, settings=pre.settings, graph=s.roles["prefill"], dump=True, check=False,
                              cost=False, threads=pre.threads).activate()
                dump[i] = r.infer
        session = GraphLMSession(self.spec, self._run("prefill", dump), self._run("decode"), self.batch,
                                 self.max_len, self.gears or self.seq_len, cache_dtype=self.cache_dtype)
        try:
            names = (self.manifest.get("layer_outputs") or []) if layer_outputs else None
            return prefill_with_layers(session, input_ids, attention_mask, names)
        finally:
            for r in dump.values():
                r.__self__.deactivate()

    # ------------------------------------------------------------------ cost / memory
    @property
    def target(self) -> str:
        return self.stages[0].target

    @property
    def settings(self) -> dict:
        return {f"stage{i}_{k}": v for i, s in enumerate(self.stages) for k, v in s.settings.items()}

    def precision_label(self) -> str:
        """The precision the chips compute in (every stage has the same settings)."""
        return self.stages[0].precision_label()

    def handover_bytes(self, kind: str = "decode") -> int:
        """Bytes of hidden state handed over per step (each crosses PCIe twice, via the host)."""
        seq = 1 if kind == "decode" else self.seq_len
        return (len(self.stages) - 1) * self.batch * seq * self.spec.hidden_size * np.dtype(self.cache_dtype).itemsize

    def handover_ms(self, kind: str = "decode") -> float:
        """Time of a step's hand-overs: one per chip boundary, device → host → device at the target's
        PCIe figure (`cost_model.handover_ms`, the function `estimate` uses for a split)."""
        from ascend_adapt.cost_model import CostFigures, handover_ms

        if len(self.stages) < 2:
            return 0.0
        per = self.handover_bytes(kind) / (len(self.stages) - 1)
        return (len(self.stages) - 1) * handover_ms(per, CostFigures.of(self.target))

    @property
    def per_token_ms(self) -> float:
        """Σ of the stages' simulated decode latencies (the stages run one after another) + the
        hand-overs of the hidden state between them."""
        return sum(s.per_token_ms for s in self.stages) + self.handover_ms("decode")

    @property
    def prefill_ms(self) -> float:
        return sum(s.prefill_ms for s in self.stages) + self.handover_ms("prefill")

    def cost_summary(self) -> dict:
        """The stages' simulated costs summed, and each chip's memory."""
        per = [s.cost_summary() for s in self.stages]
        dec = sum(c["decode_ms_per_token"] for c in per) + self.handover_ms("decode")
        chips = [{"chip": st["index"], "device_id": st["device_id"], "layers": st["layers"], "memory": c["memory"],
                  "decode_ms_per_token": c["decode_ms_per_token"], "prefill_ms": c["prefill_ms"]}
                 for st, c in zip(self.stages_info, per)]
        return {"simulated": True, "target": self.target, "precision_mode": per[-1]["precision_mode"],
                "prefill_ms": sum(c["prefill_ms"] for c in per) + self.handover_ms("prefill"),
                "decode_ms_per_token": dec, "handover_ms_per_token": self.handover_ms("decode"),
                "tokens_per_s": (1e3 * self.batch / dec) if dec else None, "chips": chips,
                "memory": max((c["memory"] for c in per), key=lambda m: m.get("total_bytes", 0) if isinstance(m, dict)
                              else 0),
                "handover_bytes_per_token": self.handover_bytes("decode"),
                "assumptions": list(per[-1]["assumptions"]) + [
                    f"{len(per)} chips run one after another (a pipeline of one batch); the hidden-state hand-over "
                    f"through the host ({self.handover_bytes('decode')} B per decode step, twice over PCIe) is "
                    "in the latency (ascend_adapt.cost_model.handover_ms)"]}

    def close(self) -> None:
        for s in self.stages:
            s.close()

    def __repr__(self) -> str:
        return f"<sim pipeline {self.path}: {len(self.stages)} chips on {self.target} (simulated)>"


# ---------------------------------------------------------------------------- pyACL
class AclPipelineBackend:
    """A split convert output on Ascend chips through pyACL: one stage per device.

    Each stage is an `AclLMBackend` over the stage's OMs (`OUT/stage{i}_{kind}.om`, or under the
    strict fake its simulator graphs) on the stage's device id; `AclRuntime` does set_device and
    create_context once per device. With kv_cache="device" each stage's KV cache lives on its own
    chip (`AclDeviceKVCache` of its layers), and per step the host sends ids / positions / mask to
    every chip, moves the hidden state from chip to chip (D2H + H2D) and receives the logits
    from the last chip.

    Args:
        path: the convert output directory. device_ids: override the manifest's, one per stage.
        acl, engine, session_cls, kv_cache: as `AclLMBackend`.
    """

    name = "acl"

    def __init__(self, path, device_ids: Sequence[int] | None = None, **options):
        from ascend_adapt.spec import ModelSpec

        self.path = Path(path)
        self.export = _export_of(self.path)
        self.stages_info = [dict(s) for s in self.export["stages"]]
        if device_ids is not None:
            from ascend_adapt.estimate.fit import parse_device_ids

            for st, d in zip(self.stages_info, parse_device_ids(device_ids, len(self.stages_info))):
                st["device_id"] = d
        self.spec = ModelSpec.from_dict(self.export["spec"])
        self.batch, self.seq_len, self.max_len = (int(self.export[k]) for k in ("batch", "seq_len", "max_len"))
        self.gears = self.export.get("gears") or None
        from ascend_adapt.contract import cache_dtype

        self.cache_dtype = cache_dtype(self.export)
        self.kv_cache = options.get("kv_cache", "host")
        self.options = options
        self.stages = [_acl_stage(self.path, self.export, st, **options) for st in self.stages_info]
        self.handover = HandoverCounter()

    def executor(self, kind: str):
        execs = [s.executor(kind) for s in self.stages]

        def run(feeds):
            return run_stages(self.stages_info, feeds, lambda i, f: execs[i](f), self.handover)

        return run

    def new_session(self, batch: int, max_len: int):
        from .graph_session import open_session

        if self.kv_cache == "device":
            return _device_pipeline_session(self, batch, max_len)
        return open_session(self, batch, max_len, self.executor("prefill"), self.executor("decode"),
                            self.gears or self.seq_len)

    def close(self) -> None:
        for s in self.stages:
            s.close()


def _acl_stage(path: Path, export: Mapping, stage: Mapping, **options):
    """An `AclLMBackend` running one stage: the stage's view of the manifest, its OMs, its device."""
    from ascend_adapt.om_convert.split import stage_view

    from ascend_adapt.backends.acl.session import AclLMBackend

    class AclStageBackend(AclLMBackend):
        def om_file(self, kind: str) -> Path:
            g = stage["graphs"][kind]
            try:
                return super().om_file(g)  # OUT/stage{i}_{kind}.om (or om/…, …_*.om)
            except ConfigError:
                from ascend_adapt.backends.acl.runtime import acl_module

                acl = acl_module(self._acl)
                if getattr(acl, "loads_stand_ins", False):  # the strict fake: the chip's simulator graph
                    from ascend_adapt.testing.fake_acl import stand_in_om

                    found = stand_in_om(self.path / "model.omsim" / f"stage{stage['index']}.omsim", kind)
                    if found is not None:
                        return found
                raise

    opts = {k: options[k] for k in ("engine", "acl", "session_cls", "kv_cache") if k in options}
    be = AclStageBackend(path, device_id=int(stage["device_id"]), **opts)
    be.manifest = stage_view(export, int(stage["index"]))
    return be


def _device_pipeline_session(backend: AclPipelineBackend, batch: int, max_len: int):
    """A session whose KV cache lives on the chips, each stage's on its own device; the hidden
    state goes chip → host → chip; only the last chip's logits come back."""
    from .graph_session import GraphLMSession, open_session

    class PipelineDeviceCacheSession(GraphLMSession):
        def _run(self, inputs, executor, feeds) -> np.ndarray:
            role = "prefill" if executor is self.run_prefill else "decode"

            def run(i, f):
                stage = backend.stages[i]
                r = stage.runner(role)
                last = backend.stages_info[i]["last"]
                r.fetch = {"logits"} if last else {HIDDEN_OUT}  # present_* stay on the chip
                meta = r.get_input_metadata()
                out = r.infer({k: np.asarray(v).astype(meta[k][0]) for k, v in f.items() if k in meta})
                stage.cache.write(r.output_buffer("present_keys"), r.output_buffer("present_values"),
                                  inputs.start_slot, inputs.seq_len)
                return out

            out = run_stages(backend.stages_info, {k: v for k, v in feeds.items() if not k.startswith("past_")},
                             _no_presents(run), backend.handover)
            self.last_outputs = out
            return np.asarray(out["logits"], dtype=np.float32)

    def prefill_marker(feeds):  # never called: _run dispatches on identity
        raise AssertionError("device-cache session executor called directly")

    def decode_marker(feeds):
        raise AssertionError("device-cache session executor called directly")

    lengths = backend.gears or backend.seq_len
    open_session(backend, batch, max_len, prefill_marker, decode_marker, lengths)  # its batch / max_len checks
    s = PipelineDeviceCacheSession(backend.spec, prefill_marker, decode_marker, backend.batch, backend.max_len,
                                   lengths)
    s.cache_k = s.cache_v = None  # each stage's cache is on its chip
    for st in backend.stages:
        st.ensure_cache().clear()
    return s


def _no_presents(run: StageRun) -> StageRun:
    """A stage run whose present K/V stayed on the chip: empty stand-ins for `run_stages`."""
    def wrapped(i, f):
        out = dict(run(i, f))
        for n in _PRESENT:
            out.setdefault(n, np.zeros((0,), np.float32))
        return out

    return wrapped
