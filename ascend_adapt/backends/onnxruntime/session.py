"""The "onnxruntime" backend: an ONNX export directory (`ascend-adapt export`) run on onnxruntime.

    backend = get_backend("onnxruntime", "out/llama2")      # the export directory
    session = backend.new_session(batch=1, max_len=256)      # B and M of the export
    logits = session.prefill(ids, mask); logits = session.decode(tokens)

Sessions are `GraphLMSession`s whose executors run prefill.onnx / decode.onnx; the host keeps
the KV cache. `full_logits(ids, mask, layer_outputs=True)` also returns the tensors named for a
layer-wise compare with the torch golden ("embed", "layers.{i}", "final_norm", "logits").

CPU decode is memory-bound: every token streams all the weights. `huge_pages=True` backs
onnxruntime's (prepacked) weight buffers with transparent huge pages, which cuts TLB misses on that
stream (about 11 % faster decode of a 134M-parameter Llama on 2 cores, tools/bench/decode.py).

No onnxruntime import at module level: importing this module stays cheap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ascend_adapt._optional import require
from ascend_adapt.spec import ModelSpec
from ascend_adapt.contract import cache_dtype

from ascend_adapt.runtime.graph_session import GraphLMSession, open_session


class OrtLMBackend:
    """Run an export directory's graphs on onnxruntime.

    Args:
        path: the export directory (export.json, prefill.onnx, decode.onnx, weights.bin).
        providers: onnxruntime execution providers (default: CPU).
        threads: intra-op threads (default: onnxruntime's choice).
        huge_pages: after creating each session, collapse the anonymous memory it filled (the
            weights onnxruntime prepacked) into transparent huge pages (`promote_to_huge_pages`;
            Linux ≥ 6.1, a no-op elsewhere). Same numbers; costs about 1 s per 0.4 GB at load.

    Attributes:
        name: "onnxruntime".
        spec: the model's `ModelSpec` (from export.json).
        manifest: export.json.
        batch, seq_len, max_len: B, S and M the graphs were built for.
        huge_page_bytes: bytes collapsed into huge pages so far (with `huge_pages`).
    """

    name = "onnxruntime"

    def __init__(self, path, providers=None, threads: int | None = None, huge_pages: bool = False):
        from ascend_adapt.om_convert.builder.llm import load_manifest

        self.path = Path(path)
        self.manifest = load_manifest(self.path)
        self.spec = ModelSpec.from_dict(self.manifest["spec"])
        self.batch = int(self.manifest["batch"])
        self.seq_len = int(self.manifest["seq_len"])
        self.max_len = int(self.manifest["max_len"])
        self.cache_dtype = cache_dtype(self.manifest)
        # a gear build has one step graph for prefill and decode
        self.gears = self.manifest.get("gears") or None
        self.kinds = ("step", "step") if self.gears else ("prefill", "decode")
        self.prefill_lengths = self.gears or self.seq_len
        self.providers = list(providers or ["CPUExecutionProvider"])
        self.threads = threads
        self.huge_pages = bool(huge_pages)
        self.huge_page_bytes = 0
        self._sessions: dict = {}

    # ---- onnxruntime sessions ----------------------------------------------------------------
    def _options(self):
        ort = require("onnxruntime", purpose="the onnxruntime backend")
        so = ort.SessionOptions()
        if self.threads:
            so.intra_op_num_threads = int(self.threads)
        so.log_severity_level = 3
        return ort, so

    def ort_session(self, kind: str, extra_outputs: tuple[str, ...] = ()):
        """The onnxruntime InferenceSession of graph `kind`, optionally exposing intermediate tensors."""
        key = (kind, extra_outputs)
        if key not in self._sessions:
            before = _anonymous_regions() if self.huge_pages else None
            ort, so = self._options()
            path = self.path / self.manifest["graphs"][kind]["file"]
            from ascend_adapt.operators.quant import ort_model_source  # a quantized export: quant ops lowered

            if extra_outputs:
                # the graph with extra outputs, from bytes; its external data stays in the export
                so.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                            str(self.path.resolve()))
                model = ort_model_source(self._with_outputs(path, extra_outputs), so, self.path.resolve())
                self._sessions[key] = ort.InferenceSession(model, so, providers=self.providers)
            else:
                self._sessions[key] = ort.InferenceSession(ort_model_source(path, so), so,
                                                           providers=self.providers)
            if before is not None:
                self.huge_page_bytes += promote_to_huge_pages(before)
        return self._sessions[key]

    def _with_outputs(self, path: Path, names: tuple[str, ...]):
        """The graph's proto (without weights) with `names` added as outputs."""
        onnx = require("onnx", purpose="exposing layer outputs")
        from onnx import helper

        model = onnx.load(str(path), load_external_data=False)
        have = {o.name for o in model.graph.output}
        act = helper.np_dtype_to_tensor_dtype(np.dtype(self.manifest["activation_dtype"]))
        for n in names:
            if n not in have:
                model.graph.output.append(helper.make_tensor_value_info(n, act, None))
        return model

    def executor(self, kind: str, extra_outputs: tuple[str, ...] = ()):
        """A plain callable feeds → {output name: array} running graph `kind`."""
        sess = self.ort_session(kind, extra_outputs)
        names = [o.name for o in sess.get_outputs()]

        def run(feeds):
            return dict(zip(names, sess.run(names, dict(feeds))))

        return run

    # ---- LMBackend -----------------------------------------------------------------------------
    def new_session(self, batch: int, max_len: int) -> GraphLMSession:
        """A session of `batch` rows (= the export's B); `max_len` ≤ the export's M.

        The cache always has the export's M slots; a smaller `max_len` is accepted (the tokens
        that fit are capped by M all the same), a larger one raises.
        """
        pk, dk = self.kinds
        return open_session(self, batch, max_len, self.executor(pk), self.executor(dk), self.prefill_lengths)

    def full_logits(self, input_ids, attention_mask=None, layer_outputs: bool = False):
        """Logits of every prompt position through the prefill graph (prompt ≤ S tokens).

        Returns:
            float32 [B, s, vocab], or (logits, {name: float32 [B, s, …]}) with `layer_outputs`
            (names: "embed", "layers.{i}", "final_norm", "logits").
        """
        extra = tuple(self.manifest["layer_outputs"][:-1]) if layer_outputs else ()
        pk, dk = self.kinds
        run = self.executor(pk, extra)
        session = GraphLMSession(self.spec, run, run if pk == dk else self.executor(dk), self.batch, self.max_len,
                                 self.prefill_lengths, cache_dtype=self.cache_dtype)
        logits = session.prefill_all(input_ids, attention_mask)
        if not layer_outputs:
            return logits
        layers = {n: np.asarray(session.last_outputs[n], np.float32)[:, session.pad:] for n in extra}
        layers["logits"] = logits
        return logits, layers

    def close(self) -> None:
        self._sessions.clear()

    def __repr__(self) -> str:
        return f"<onnxruntime backend {self.path} B={self.batch} S={self.seq_len} M={self.max_len}>"


_HUGE_PAGE = 1 << 21  # 2 MiB: the transparent huge page size on x86-64 (and arm64 with 4 KiB pages)
_MADV_HUGEPAGE, _MADV_COLLAPSE = 14, 25


def _anonymous_regions(smaps: str | None = None) -> list[tuple[int, int, int]]:
    """(start, end, resident bytes) of this process's writable anonymous mappings, the heap
    included, from /proc/self/smaps (or the text `smaps`; an empty list where there is none)."""
    text = smaps
    if text is None:
        try:
            with open("/proc/self/smaps") as f:
                text = f.read()
        except OSError:
            return []
    out = []
    region = None
    for line in text.splitlines():
        head = line.split(None, 5)
        if not head:
            continue
        if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            a, b = (int(x, 16) for x in head[0].split("-"))
            anon = len(head) == 5 or head[5].strip() == "[heap]"
            region = (a, b) if anon and "w" in head[1] else None
        elif region is not None and head[0] == "Rss:":
            out.append((*region, int(head[1]) * 1024))
            region = None
    return out


def _filled_anonymous_regions(min_resident: float = 0.9, smaps: str | None = None) -> set[tuple[int, int]]:
    """(start, end) of the writable anonymous mappings (heap included) of at least 2 MiB whose
    pages are ≥ `min_resident` resident. Sparse mappings (thread stacks, untouched arena chunks)
    are left out: collapsing them would fault in memory nobody uses."""
    return {(a, b) for a, b, rss in _anonymous_regions(smaps)
            if b - a >= _HUGE_PAGE and rss >= min_resident * (b - a)}


def _subtract(spans: list[tuple[int, int]], taken: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of `spans` not covered by `taken` (both lists of [start, end) intervals)."""
    out = []
    for a, b in spans:
        parts = [(a, b)]
        for c, d in taken:
            parts = [p for lo, hi in parts for p in ((lo, min(hi, c)), (max(lo, d), hi)) if p[0] < p[1]]
        out += parts
    return out


def promote_to_huge_pages(before: list[tuple[int, int, int]]) -> int:
    """Collapse the filled anonymous memory mapped since `before` into transparent huge pages.

    `before` is `_anonymous_regions()` taken before creating an onnxruntime session. Address
    ranges mapped since then inside filled mappings (the session's prepacked weights; new heap)
    get madvise(MADV_HUGEPAGE) and a synchronous madvise(MADV_COLLAPSE) (Linux ≥ 6.1) over their
    2 MiB-aligned spans. Memory that was mapped before is left alone. Contents are unchanged (the
    kernel copies the pages); where the calls are not supported nothing happens.

    Returns:
        bytes now backed by huge pages (0 where unsupported).
    """
    import ctypes

    new = _subtract(sorted(_filled_anonymous_regions()), [(a, b) for a, b, _ in before])
    if not new:
        return 0
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    done = 0
    for a, b in new:
        lo, hi = -(-a // _HUGE_PAGE) * _HUGE_PAGE, b // _HUGE_PAGE * _HUGE_PAGE
        if hi - lo < _HUGE_PAGE:
            continue
        madvise(lo, hi - lo, _MADV_HUGEPAGE)
        if madvise(lo, hi - lo, _MADV_COLLAPSE) == 0:
            done += hi - lo
    return done


def ort_backend(path, **options) -> OrtLMBackend:
    """Factory of the "onnxruntime" backend (path = an export directory)."""
    known = {k: options[k] for k in ("providers", "threads", "huge_pages") if k in options}
    return OrtLMBackend(path, **known)


