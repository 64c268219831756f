"""The "acl" LM backend: a converted model's OMs on an Ascend card, the host (or the card,
`AclDeviceKVCache`) keeping the KV cache; sessions are `GraphLMSession`s whose executors are the
`AclRunner`s of `runner.py`. Importing this module never imports `acl`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ascend_adapt.errors import ConfigError
from ascend_adapt.runtime.runners import Runner, RunnerError

from .runner import ACL_MEM_MALLOC_HUGE_FIRST, AclRunner, AisBenchRunner
from .runtime import ENV, AclRuntime, acl_module, check


# ---------------------------------------------------------------------------- KV cache on the card
ACL_MEMCPY_DEVICE_TO_DEVICE = 3


class AclDeviceKVCache:
    """The KV cache resident on the card: two device buffers [L, B, KVH, M, D] in the graphs'
    cache dtype, which ARE the `past_keys` / `past_values` inputs of the decode (or step) OM
    (its input dataset points at them), so nothing of the cache crosses PCIe.

    After each step the new K/V (the graph's `present_*` outputs, [L, B, KVH, seq, D], still in
    the output buffers) go into slots [start, start + seq) with one strided device-to-device copy
    per tensor: `acl.rt.memcpy_2d` (CANN aclrtMemcpy2d: `height` = L·B·KVH rows of `width` =
    seq·D elements, source pitch seq·D, destination pitch M·D), or row by row with
    `acl.rt.memcpy` kind 3 when the module has no memcpy_2d. A slot is D contiguous elements
    per (layer, row, head) in this layout, so the write is strided, not one block.

    Args:
        acl, runtime, device_id: the module, the process's AclRuntime, the NPU.
        shape: [L, B, KVH, M, D].
        dtype: the cache dtype (the OM's past_keys dtype).
    """

    def __init__(self, acl, runtime: AclRuntime, device_id: int, shape: Sequence[int], dtype):
        self.acl, self.runtime, self.device_id = acl, runtime, int(device_id)
        self.shape = tuple(int(d) for d in shape)
        self.itemsize = np.dtype(dtype).itemsize
        self.nbytes = math.prod(self.shape) * self.itemsize
        runtime.acquire(self.device_id)
        self.k = self.v = None
        try:
            self.k = check(acl.rt.malloc(self.nbytes, ACL_MEM_MALLOC_HUGE_FIRST), "acl.rt.malloc (KV cache)", acl)
            self.v = check(acl.rt.malloc(self.nbytes, ACL_MEM_MALLOC_HUGE_FIRST), "acl.rt.malloc (KV cache)", acl)
        except BaseException:
            self.close()
            raise
        self.clear()

    def clear(self) -> None:
        """Zero both buffers (device memory starts with garbage; a NaN in a hidden slot would
        still poison the softmax: 0 · NaN)."""
        self.runtime.use(self.device_id)
        for p in (self.k, self.v):
            check(self.acl.rt.memset(p, self.nbytes, 0, self.nbytes), "acl.rt.memset (KV cache)", self.acl)

    def write(self, present_k: tuple[Any, int], present_v: tuple[Any, int], start: int, seq: int) -> None:
        """Copy [L, B, KVH, seq, D] present K/V (device buffers) into slots [start, start + seq)."""
        L, B, KVH, M, D = self.shape
        if start < 0 or start + seq > M:
            raise RunnerError(f"KV slots [{start}, {start + seq}) outside the cache's {M}",
                              "the session ran past --max-len")
        rows, width = L * B * KVH, seq * D * self.itemsize
        dpitch, spitch = M * D * self.itemsize, width
        acl = self.acl
        self.runtime.use(self.device_id)
        for (src, size), dst in ((present_k, self.k), (present_v, self.v)):
            if rows * spitch > size:
                raise RunnerError(f"present K/V of {seq} slots need {rows * spitch} bytes, the output buffer has "
                                  f"{size}", "the OM's present_* outputs do not match the cache shape")
            dst = dst + start * D * self.itemsize
            if hasattr(acl.rt, "memcpy_2d"):
                check(acl.rt.memcpy_2d(dst, dpitch, src, spitch, width, rows, ACL_MEMCPY_DEVICE_TO_DEVICE),
                       "acl.rt.memcpy_2d (KV cache write)", acl)
            else:
                for r in range(rows):
                    check(acl.rt.memcpy(dst + r * dpitch, width, src + r * spitch, width, ACL_MEMCPY_DEVICE_TO_DEVICE),
                           "acl.rt.memcpy (KV cache write)", acl)

    def close(self) -> None:
        if self.runtime is None:
            return
        try:
            self.runtime.use(self.device_id)
            for p in (self.k, self.v):
                if p is not None:
                    self.acl.rt.free(p)
        finally:
            self.k = self.v = None
            self.runtime.release(self.device_id)
            self.runtime = None


def _device_cache_session(backend: "AclLMBackend", batch: int, max_len: int):
    """A GraphLMSession whose KV cache lives on the card (`AclDeviceKVCache`): per step the host
    sends ids, positions and the mask, and receives only what the step is asked for: the logits
    (`prefill` / `decode`), or the greedy token and the logits' finiteness witness
    (`prefill_next` / `decode_next`: contract.GREEDY_OUTPUTS, 8 bytes per row)."""
    from ascend_adapt.contract import GREEDY_OUTPUTS

    from ascend_adapt.runtime.graph_session import GraphLMSession, has_greedy_outputs, open_session

    class AclDeviceCacheSession(GraphLMSession):
        def _run(self, inputs, executor, feeds) -> np.ndarray | None:
            role = "prefill" if executor is self.run_prefill else "decode"
            r = backend.runner(role)
            meta = r.get_input_metadata()
            cast = {k: np.asarray(v).astype(meta[k][0]) for k, v in feeds.items() if k in meta}
            r.fetch = set(GREEDY_OUTPUTS) if self.want == "tokens" else {"logits"}  # the rest stays on the card
            out = r.infer(cast)
            backend.cache.write(r.output_buffer("present_keys"), r.output_buffer("present_values"),
                                inputs.start_slot, inputs.seq_len)
            self.last_outputs = out
            return np.asarray(out["logits"], dtype=np.float32) if "logits" in out else None

    def prefill_marker(feeds):  # never called: _run dispatches on identity
        raise AssertionError("device-cache session executor called directly")

    def decode_marker(feeds):
        raise AssertionError("device-cache session executor called directly")

    lengths = backend.gears or backend.seq_len
    open_session(backend, batch, max_len, prefill_marker, decode_marker, lengths)  # its batch / max_len checks
    s = AclDeviceCacheSession(backend.spec, prefill_marker, decode_marker, backend.batch, backend.max_len, lengths)
    s.cache_k = s.cache_v = None  # the cache is on the card (the host arrays were never touched)
    s.greedy_on_graph = has_greedy_outputs(backend.manifest)
    backend.ensure_cache().clear()
    return s


# ---------------------------------------------------------------------------- the "acl" backend
class AclLMBackend:
    """The "acl" backend: prefill / decode OMs of an export run on the card.

    The directory holds export.json (the builder's manifest: spec, B, S, M, output shapes) and
    the OMs ATC wrote: `prefill.om` / `decode.om`, or `om/prefill.om` (an .omsim's atc.sh), or
    `<name>_<platform>.om`. Under the strict fake (`ASCEND_ADAPT_ACL=fake`, or `acl=FakeAcl()`),
    a directory without OMs is run from its simulator artifact's graphs, the fake's stand-in OMs
    (`ascend_adapt.testing.fake_acl.stand_in_om`).

    All models of the process share one ACL runtime (`runtime.AclRuntime`): this backend's
    runners hold the device while open and `close()` releases it.

    Args:
        path: the directory.
        device_id: NPU index.
        engine: "acl" (pyACL) or "ais_bench".
        acl: the `acl` module (tests pass a `FakeAcl()`; default `runtime.acl_module()`).
        kv_cache: "host" (default; the session's numpy cache is copied to the card every step,
            what `ascend_adapt.serve` drives directly) or "device" (`AclDeviceKVCache`: the cache
            stays on the card, per step only ids / positions / mask go up and the logits come
            back — or, through the session's `prefill_next` / `decode_next` (what greedy
            `generate` uses), only the token chosen by the graph's ArgMax and the logits' sum
            as a finiteness check; one session at a time per backend).
    """

    name = "acl"

    def __init__(self, path, device_id: int = 0, engine: str = "acl", acl: Any = None, session_cls: Any = None,
                 kv_cache: str = "host"):
        from ascend_adapt.spec import ModelSpec
        from ascend_adapt.om_convert.builder.llm import load_manifest

        self.path = Path(path)
        # an export directory, or a convert output (OUT/export/export.json beside OUT/<graph>.om)
        self.manifest = load_manifest(self.path if (self.path / "export.json").is_file() else self.path / "export")
        self.spec = ModelSpec.from_dict(self.manifest["spec"])
        self.batch, self.seq_len, self.max_len = (int(self.manifest[k]) for k in ("batch", "seq_len", "max_len"))
        # a gear build has one step OM for prefill and decode (ATC --dynamic_dims over the step length)
        self.gears = self.manifest.get("gears") or None
        self.roles = {"prefill": "step", "decode": "step"} if self.gears else {"prefill": "prefill", "decode": "decode"}
        if engine not in ("acl", "ais_bench"):
            raise ConfigError(f"unknown engine '{engine}'", "use 'acl' or 'ais_bench'")
        self.device_id, self.engine, self._acl, self._session_cls = device_id, engine, acl, session_cls
        if kv_cache not in ("host", "device"):
            raise ConfigError(f"unknown kv_cache '{kv_cache}'", "use 'host' or 'device'")
        if kv_cache == "device" and engine != "acl":
            raise ConfigError("kv_cache='device' needs engine='acl' (pyACL)", "use engine='acl' or kv_cache='host'")
        self.kv_cache = kv_cache
        self.cache: AclDeviceKVCache | None = None
        self.runners: dict[str, Runner] = {}

    def om_file(self, kind: str) -> Path:
        from ascend_adapt.om_convert.atc.driver import find_om

        for prefix in (self.path / kind, self.path / "om" / kind):
            found = find_om(prefix)
            if found:
                return Path(found)
        if self._acl is not None or os.environ.get(ENV, "").strip().lower() not in ("", "real", "pyacl"):
            acl = acl_module(self._acl)
            if getattr(acl, "loads_stand_ins", False):
                from ascend_adapt.testing.fake_acl import stand_in_om

                found = stand_in_om(self.path, kind)
                if found is not None:
                    return found
        raise ConfigError(f"{self.path}: no {kind}.om (looked for {kind}.om, om/{kind}.om, {kind}_*.om)",
                          "build the OMs with ATC first (sh atc.sh in the .omsim, or ascend-adapt convert)")

    def runner(self, role: str) -> Runner:
        """The runner of the OM serving `role` ("prefill" / "decode"; both are "step" in a gear build)."""
        kind = self.roles.get(role, role)
        if kind not in self.runners:
            om = self.om_file(kind)
            if self.engine == "ais_bench":
                r: Runner = AisBenchRunner(om, self.device_id, session_cls=self._session_cls)
            else:
                dev = {}
                if self.kv_cache == "device":
                    c = self.ensure_cache()
                    has_past = any(i["name"] == "past_keys" for i in self.manifest["graphs"][kind]["inputs"])
                    dev = {"resident": {"past_keys": (c.k, c.nbytes), "past_values": (c.v, c.nbytes)} if has_past
                           else None, "fetch": ["logits"]}
                if kind == "step":
                    from ascend_adapt.contract import graph_input_shapes, step_shape

                    shapes, dims = graph_input_shapes(self.manifest, kind)
                    outs = {i: {o["name"]: step_shape(o["shape"], g) for o in self.manifest["graphs"][kind]["outputs"]}
                            for i, g in enumerate(self.gears)}
                    r = AclRunner(om, self.device_id, input_shape=shapes, gears=dims, output_shapes=outs,
                                  acl=self._acl, **dev)
                else:
                    outs = {o["name"]: o["shape"] for o in self.manifest["graphs"][kind].get("outputs", [])}
                    r = AclRunner(om, self.device_id, output_shapes=outs or None, acl=self._acl, **dev)
            self.runners[kind] = r.activate()
        return self.runners[kind]

    def executor(self, kind: str):
        r = self.runner(kind)
        meta = r.get_input_metadata()

        def run(feeds):
            cast = {k: np.asarray(v).astype(meta[k][0]) if k in meta and meta[k][0] is not None else v
                    for k, v in feeds.items()}
            return r.infer(cast)

        return run

    def ensure_cache(self) -> AclDeviceKVCache:
        """The device KV cache (kv_cache="device"), allocated on first use."""
        if self.cache is None:
            kind = self.roles["decode"]
            past = next(i for i in self.manifest["graphs"][kind]["inputs"] if i["name"] == "past_keys")
            acl = acl_module(self._acl)
            self.cache = AclDeviceKVCache(acl, AclRuntime.of(acl), self.device_id, past["shape"],
                                          np.dtype(past.get("dtype", "float32")))
        return self.cache

    def new_session(self, batch: int, max_len: int):
        from ascend_adapt.runtime.graph_session import open_session

        if self.kv_cache == "device":
            return _device_cache_session(self, batch, max_len)
        return open_session(self, batch, max_len, self.executor("prefill"), self.executor("decode"),
                            self.gears or self.seq_len)

    def close(self) -> None:
        try:
            for r in self.runners.values():
                r.deactivate()
        finally:
            self.runners.clear()
            if self.cache is not None:
                self.cache.close()
                self.cache = None


def acl_backend(path, **options) -> AclLMBackend:
    """Factory registered as "acl" (path = an export directory with the OMs ATC built)."""
    import json

    known = {k: options[k] for k in ("device_id", "engine", "acl", "session_cls", "kv_cache") if k in options}
    p = Path(path)
    export = p / "export.json" if (p / "export.json").is_file() else p / "export" / "export.json"
    if export.is_file() and json.loads(export.read_text()).get("stages"):  # a multi-chip split: a stage per device
        from ascend_adapt.runtime.pipeline import AclPipelineBackend

        known.pop("device_id", None)
        return AclPipelineBackend(path, device_ids=options.get("device_ids"), **known)
    return AclLMBackend(path, **known)

