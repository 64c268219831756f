"""The "onnxruntime" backend: an ONNX export directory (`ascend-adapt export`) run on onnxruntime.

    backend = get_backend("onnxruntime", "out/llama2")      # the export directory
    session = backend.new_session(batch=1, max_len=256)      # B and M of the export
    logits = session.prefill(ids, mask); logits = session.decode(tokens)

Sessions are `GraphLMSession`s whose executors run prefill.onnx / decode.onnx; the host keeps
the KV cache. `full_logits(ids, mask, layer_outputs=True)` also returns the tensors named for a
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

    Attributes:
        name: "onnxruntime".
        spec: the model's `ModelSpec` (from export.json).
        manifest: export.json.
        batch, seq_len, max_len: B, S and M the graphs were built for.
    """

    name = "onnxruntime"

    def __init__(self, path, providers=None, threads: int | None = None):
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


def ort_backend(path, **options) -> OrtLMBackend:
    """Factory registered as "onnxruntime" in `BACKENDS` (path = an export directory)."""
    known = {k: options[k] for k in ("providers", "threads") if k in options}
    return OrtLMBackend(path, **known)


BACKENDS.register("onnxruntime", ort_backend)

