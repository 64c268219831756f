"""The "onnxruntime" backend: an ONNX export directory (`ascend-adapt export`) run on onnxruntime.

    backend = get_backend("onnxruntime", "out/llama2")      # the export directory
    session = backend.new_session(batch=1, max_len=256)      # B and M of the export
    logits = session.prefill(ids, mask); logits = session.decode(tokens)

Sessions are `GraphLMSession`s whose executors run prefill.onnx / decode.onnx; the host keeps
the KV cache. `fast=True` (`get_backend("onnxruntime", path, threads=2, fast=True)`) is the CPU
decode path measured by tools/bench/decode.py: every graph optimization, a fixed intra-op pool, and
executors over IO binding (`BoundExecutor`): the session's host cache is bound as past_keys /
past_values once, without a copy (it is updated in place between steps), and the outputs land in
preallocated buffers. `full_logits(ids, mask, layer_outputs=True)` also returns the tensors named for a
layer-wise compare with the torch golden ("embed", "layers.{i}", "final_norm", "logits").

No onnxruntime import at module level: importing this module (which registers the backend) stays
cheap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ascend_adapt._optional import require
from ascend_adapt.errors import ConfigError
from ascend_adapt.model_zoo.spec import ModelSpec

from .backends import BACKENDS
from .graph_session import GraphLMSession


class OrtLMBackend:
    """Run an export directory's graphs on onnxruntime.

    Args:
        path: the export directory (export.json, prefill.onnx, decode.onnx, weights.bin).
        providers: onnxruntime execution providers (default: CPU).
        threads: intra-op threads (default: onnxruntime's choice).
        fast: the fast CPU decode settings: ORT_ENABLE_ALL, one inter-op thread, sequential
            execution, and IO-binding executors (`BoundExecutor`). Same numbers as without it.

    Attributes:
        name: "onnxruntime".
        spec: the model's `ModelSpec` (from export.json).
        manifest: export.json.
        batch, seq_len, max_len: B, S and M the graphs were built for.
    """

    name = "onnxruntime"

    def __init__(self, path, providers=None, threads: int | None = None, fast: bool = False):
        from ascend_adapt.om_convert.builder.llm import load_manifest

        self.path = Path(path)
        self.manifest = load_manifest(self.path)
        self.spec = ModelSpec.from_dict(self.manifest["spec"])
        self.batch = int(self.manifest["batch"])
        self.seq_len = int(self.manifest["seq_len"])
        self.max_len = int(self.manifest["max_len"])
        # a gear build has one step graph for prefill and decode
        self.gears = self.manifest.get("gears") or None
        self.kinds = ("step", "step") if self.gears else ("prefill", "decode")
        self.prefill_lengths = self.gears or self.seq_len
        self.providers = list(providers or ["CPUExecutionProvider"])
        self.threads = threads
        self.fast = bool(fast)
        self._sessions: dict = {}

    # ---- onnxruntime sessions ----------------------------------------------------------------
    def _options(self):
        ort = require("onnxruntime", purpose="the onnxruntime backend")
        so = ort.SessionOptions()
        if self.threads:
            so.intra_op_num_threads = int(self.threads)
        if self.fast:
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.inter_op_num_threads = 1
        so.log_severity_level = 3
        return ort, so

    def ort_session(self, kind: str, extra_outputs: tuple[str, ...] = ()):
        """The onnxruntime InferenceSession of graph `kind`, optionally exposing intermediate tensors."""
        key = (kind, extra_outputs)
        if key not in self._sessions:
            ort, so = self._options()
            path = self.path / self.manifest["graphs"][kind]["file"]
            if extra_outputs:
                # the graph with extra outputs, from bytes; its external data stays in the export
                so.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                            str(self.path.resolve()))
                model = self._with_outputs(path, extra_outputs).SerializeToString()
                self._sessions[key] = ort.InferenceSession(model, so, providers=self.providers)
            else:
                self._sessions[key] = ort.InferenceSession(str(path), so, providers=self.providers)
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
        """A plain callable feeds → {output name: array} running graph `kind` (a `BoundExecutor`
        with `fast`)."""
        sess = self.ort_session(kind, extra_outputs)
        if self.fast:
            return BoundExecutor(sess)
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
        if batch != self.batch:
            raise ConfigError(f"{self.path}: the graphs were built for batch {self.batch}, asked for {batch}",
                              f"re-export with --batch {batch}")
        if max_len > self.max_len:
            raise ConfigError(f"{self.path}: the graphs have {self.max_len} cache slots, asked for {max_len}",
                              f"re-export with --max-len {max_len} (or more)")
        pk, dk = self.kinds
        return GraphLMSession(self.spec, self.executor(pk), self.executor(dk), self.batch,
                              self.max_len, self.prefill_lengths)

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
                                 self.prefill_lengths)
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


class BoundExecutor:
    """feeds → {output name: array} over onnxruntime IO binding, for CPU sessions.

    An input that is the same numpy object as at the previous call (the session's host KV cache,
    which `GraphLMSession` updates in place) stays bound: no OrtValue is made and nothing is
    copied. Other inputs are bound as OrtValues over their memory (when C-contiguous and of the
    graph's dtype; else over a converted copy, which is never kept bound). Outputs with static shapes land in buffers allocated once.
    "logits" is returned as a fresh copy (callers keep it across steps); the other outputs are the
    reused buffers, valid until the next call (GraphLMSession copies present_* into its cache
    right away).

    Args:
        sess: an onnxruntime InferenceSession on the CPU execution provider.
    """

    def __init__(self, sess):
        import onnxruntime as ort

        self._ort, self.sess = ort, sess
        self.binding = sess.io_binding()
        self._dtypes = {i.name: _ORT_NP.get(i.type, np.float32) for i in sess.get_inputs()}
        self.output_names = [o.name for o in sess.get_outputs()]
        self._bound: dict[str, np.ndarray] = {}   # input name → the object bound last
        self._values: dict[str, object] = {}      # input name → its OrtValue (keeps the memory alive)
        self._out: dict[str, np.ndarray] = {}
        for o in sess.get_outputs():
            if all(isinstance(d, int) and d > 0 for d in o.shape):
                buf = np.empty(o.shape, _ORT_NP.get(o.type, np.float32))
                self._out[o.name] = buf
                self.binding.bind_ortvalue_output(o.name, ort.OrtValue.ortvalue_from_numpy(buf))
            else:
                self.binding.bind_output(o.name, "cpu")

    def __call__(self, feeds):
        for name, arr in feeds.items():
            if self._bound.get(name) is arr:
                continue
            a = np.ascontiguousarray(arr, dtype=self._dtypes.get(name))
            value = self._ort.OrtValue.ortvalue_from_numpy(a)
            self.binding.bind_ortvalue_input(name, value)
            # only an array bound over its own memory may stay bound (in-place updates show through)
            self._bound[name] = arr if a is arr else None
            self._values[name] = value
        self.sess.run_with_iobinding(self.binding)
        if len(self._out) == len(self.output_names):
            out = dict(self._out)
        else:
            out = dict(zip(self.output_names, self.binding.copy_outputs_to_cpu()))
        if "logits" in out:
            out["logits"] = out["logits"].copy()
        return out


_ORT_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int32)": np.int32,
           "tensor(int64)": np.int64, "tensor(bool)": np.bool_, "tensor(double)": np.float64}


def ort_backend(path, **options) -> OrtLMBackend:
    """Factory registered as "onnxruntime" in `BACKENDS` (path = an export directory)."""
    known = {k: options[k] for k in ("providers", "threads", "fast") if k in options}
    return OrtLMBackend(path, **known)


BACKENDS.register("onnxruntime", ort_backend)

