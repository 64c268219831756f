"""What `compare` runs for each side: an artifact path resolved to a runner or an LM backend.

Two levels:

- **LM level** (token ids in; named layer outputs out: "embed", "layers.{i}", "final_norm",
  "logits"): an HF checkpoint directory (torch fp32 golden), an ONNX export directory
  (onnxruntime), a MindSpore port directory, an `.omsim` artifact (the "sim" backend with the
  precision settings of its manifest) or an `.om` (the "acl" backend, pyACL on a card). Each is
  the runtime's registered backend (`get_backend(kind, path).full_logits(...)`).
- **Graph level** (tensor feeds in; every tensor by name out): an `.onnx` file (onnxruntime
  fp32), `sim:FILE.onnx` (the simulator on that graph with --target / --precision-mode), or an
  `.omsim` graph (`DIR.omsim#prefill`).

A comparison runs at graph level when either side is a graph (an `.onnx` file or `sim:`);
`.omsim` then means its graph (`#name`, default "prefill" or the only one). Otherwise at LM level.
Prefixes force a kind: `torch:`, `mindspore:`, `onnxruntime:`, `ort:`, `sim:`, `acl:`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from ascend_adapt.errors import ConfigError, MissingDependencyError

PREFIXES = ("torch", "mindspore", "onnxruntime", "ort", "sim", "acl")
LM_KINDS = ("torch", "mindspore", "onnxruntime", "sim", "acl")
PORT_MANIFEST = "ascend_adapt_port.json"


@dataclass
class Spec:
    """A side as given on the command line, resolved.

    Attributes:
        text: what was given.
        path: the artifact path.
        kind: torch | mindspore | onnxruntime | sim | acl | onnx.
        graph: the graph of an .omsim (graph level), if named.
        is_graph_file: an .onnx file (graph level by nature).
    """

    text: str
    path: Path
    kind: str
    graph: str | None = None
    is_graph_file: bool = False


def _is_omsim(p: Path) -> bool:
    return p.is_dir() and (p / "manifest.json").is_file() and (p.suffix == ".omsim" or _manifest_format(p))


def _manifest_format(p: Path) -> bool:
    try:
        return json.loads((p / "manifest.json").read_text()).get("format") == "ascend-adapt.omsim"
    except (OSError, json.JSONDecodeError):
        return False


def parse_spec(text: str) -> Spec:
    """Resolve one side: prefix, `#graph` suffix and what the path is."""
    prefix = None
    body = text
    head, sep, rest = text.partition(":")
    if sep and head in PREFIXES and not (len(head) == 1 and os.name == "nt"):
        prefix, body = ("onnxruntime" if head == "ort" else head), rest
    graph = None
    if "#" in body:
        body, graph = body.split("#", 1)
    p = Path(body)
    if not p.exists():
        raise ConfigError(f"compare: '{body}' does not exist",
                          "give an HF checkpoint dir, an export dir, a MindSpore port dir, an .onnx, "
                          "an .omsim or an .om")
    is_onnx = p.is_file() and p.suffix == ".onnx"
    if prefix is not None:
        kind = prefix
        if prefix == "onnxruntime" and is_onnx:
            kind = "onnx"
    elif p.is_file() and p.suffix == ".om":
        kind = "acl"
    elif is_onnx:
        kind = "onnx"
    elif _is_omsim(p):
        kind = "sim"
    elif p.is_dir() and (p / "export.json").is_file():
        kind = "onnxruntime"
    elif p.is_dir() and (p / PORT_MANIFEST).is_file():
        kind = "mindspore"
    elif p.is_dir() and ((p / "config.json").is_file() or (p / "params.json").is_file()):
        kind = "torch"
    elif p.is_file() and p.name == "config.json":
        raise ConfigError(f"compare: '{p}' is a config file; compare needs the checkpoint directory",
                          f"pass {p.parent}")
    else:
        raise ConfigError(f"compare: cannot tell what '{body}' is",
                          "prefix it with torch:, mindspore:, onnxruntime:, sim: or acl:")
    return Spec(text, p, kind, graph, is_onnx)


def compare_level(a: Spec, b: Spec) -> str:
    """"graph" when either side is a graph file, else "lm"."""
    if a.is_graph_file or b.is_graph_file or (a.graph and b.graph):
        return "graph"
    return "lm"


# ------------------------------------------------------------------------------ graph level
class GraphSide:
    """One side at graph level: a runner over one ONNX graph, returning tensors by name.

    Args:
        spec: the resolved side.
        target / precision_mode / keep_dtype: simulator settings (sim sides only; an .omsim's
            manifest gives the defaults).
        layerwise: return every intermediate tensor too.
    """

    def __init__(self, spec: Spec, *, target: str | None = None, precision_mode: str | None = None,
                 keep_dtype=None, layerwise: bool = False):
        from ascend_adapt.runtime.runners import OrtRunner, SimRunner

        self.spec = spec
        self.layerwise = layerwise
        self.simulated = spec.kind == "sim"
        if spec.kind == "onnx":
            self.model_path = spec.path
            self.runner = OrtRunner(str(spec.path), dump=layerwise, optimize=False)
            self.precision = "fp32 (onnxruntime)"
        elif spec.kind == "sim":
            graph = None
            if _is_omsim(spec.path):
                from ascend_adapt.om_convert.artifact import read_omsim

                art = read_omsim(spec.path)
                graph = spec.graph or ("prefill" if "prefill" in art.graph_names else None)
                self.model_path = art.graph_path(graph)
                self.target = target or art.target
            else:
                if not target:
                    raise ConfigError(f"compare: the simulator side '{spec.text}' needs a target",
                                      "pass --target Ascend310P3 (an .omsim names its own)")
                self.model_path = spec.path
                self.target = target
            self.runner = SimRunner(str(spec.path) if _is_omsim(spec.path) else str(spec.path), target=target,
                                    precision_mode=precision_mode, keep_dtype=keep_dtype, dump=layerwise,
                                    graph=graph, cost=False)
            self.graph = graph
            self.precision = None  # known after activation
        elif spec.kind == "acl":
            try:
                from ascend_adapt.runtime.acl_backend import AclRunner
            except (ImportError, AttributeError) as exc:
                raise MissingDependencyError("acl (pyACL / CANN runtime)", None,
                                             f"running '{spec.path}' on an Ascend card") from exc
            self.model_path = spec.path
            self.runner = AclRunner(str(spec.path))
            self.layerwise = False  # a card returns outputs only (per-layer dumps need msprobe)
            self.precision = "as compiled (card)"
        else:
            raise ConfigError(f"compare: '{spec.text}' ({spec.kind}) is not a graph",
                              "at graph level give .onnx files, sim:FILE.onnx or DIR.omsim#graph")
        self.label = self.runner.name
        self._order: list[str] | None = None

    def activate(self) -> None:
        self.runner.activate()
        if self.spec.kind == "sim":
            s = self.runner.settings
            self.precision = s.precision_mode + (f" + keep_dtype({len(s.keep_dtype)})" if s.keep_dtype else "")

    @property
    def settings(self):
        return getattr(self.runner, "settings", None)

    def input_metadata(self) -> dict:
        return self.runner.get_input_metadata()

    def order(self) -> list[str]:
        """Tensor names in execution order (inputs, then node outputs, topologically)."""
        if self._order is None and Path(self.model_path).suffix != ".onnx":
            self._order = []  # an .om: no graph to read here
        if self._order is None:
            import onnx

            from ascend_adapt.debug.subgraph import topological_order

            m = onnx.load(str(self.model_path), load_external_data=False)
            inits = {t.name for t in m.graph.initializer}
            names = [i.name for i in m.graph.input if i.name not in inits]
            nodes = list(m.graph.node)
            for i in topological_order(nodes, inits | set(names)):
                names += [o for o in nodes[i].output if o]
            self._order = names
        return self._order

    def output_names(self) -> list[str]:
        import onnx

        if Path(self.model_path).suffix != ".onnx":
            return [o[0] for o in getattr(self.runner, "outputs", [])]

        m = onnx.load(str(self.model_path), load_external_data=False)
        return [o.name for o in m.graph.output]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runner.infer(dict(feeds))

    def close(self) -> None:
        self.runner.deactivate()


def graph_feeds(meta: Mapping[str, tuple], seed: int = 0, vocab: int | None = None) -> dict[str, np.ndarray]:
    """Deterministic feeds for a graph's inputs from its metadata.

    Float inputs: standard normal, except an `attention_mask` (all zeros: every position
    visible in an additive mask). Integer inputs: `input_ids` uniform in [0, vocab), positions
    0..n-1 along the last axis, others in [0, 4). Dynamic dims take 1.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, (dtype, shape) in meta.items():
        dims = [d if isinstance(d, int) and d > 0 else 1 for d in (shape or ())]
        dt = np.dtype(dtype or np.float32)
        if np.issubdtype(dt, np.floating):
            a = np.zeros(dims, dt) if "mask" in name else rng.standard_normal(dims).astype(dt)
        elif dt == np.bool_:
            a = np.ones(dims, bool)
        elif "position" in name:
            a = np.broadcast_to(np.arange(dims[-1] if dims else 1), dims).astype(dt).copy()
        elif "ids" in name:
            a = rng.integers(0, vocab or 32, size=dims).astype(dt)
        else:
            a = rng.integers(0, 4, size=dims).astype(dt)
        out[name] = a
    return out


# --------------------------------------------------------------------------------- LM level
LAYER_ORDER_HINT = ("embed", "layers.", "final_norm", "logits")


def lm_order(names) -> list[str]:
    """embed, layers.0 … layers.N (numerically), final_norm, logits, then anything else."""
    def key(n: str):
        if n == "embed":
            return (0, 0, n)
        if n.startswith("layers."):
            try:
                return (1, int(n.split(".")[1]), n)
            except ValueError:
                return (1, 10**9, n)
        if n == "final_norm":
            return (2, 0, n)
        if n == "logits":
            return (3, 0, n)
        return (4, 0, n)
    return sorted(names, key=key)


class LMSide:
    """One side at LM level: a backend's `full_logits(ids, mask, layer_outputs=...)`."""

    def __init__(self, spec: Spec, *, layerwise: bool = False, dtype: str = "float32",
                 keep_dtype=None, precision_mode=None):
        self.spec = spec
        self.layerwise = layerwise
        self.simulated = spec.kind == "sim"
        self.dtype = dtype
        self.keep_dtype, self.precision_mode = keep_dtype, precision_mode
        self.backend = None
        self.label = f"{spec.kind}:{spec.path.name}"
        self.precision = {"torch": f"{dtype} (torch golden)" if dtype == "float32" else f"{dtype} (torch)",
                          "onnxruntime": "export dtype (onnxruntime)", "mindspore": f"{dtype} (MindSpore)",
                          "sim": "manifest precision (simulator)", "acl": "as compiled (card)"}[spec.kind]

    def activate(self) -> None:
        from ascend_adapt.runtime.backends import BACKENDS, get_backend

        kind = self.spec.kind
        if kind == "sim":
            opts = {k: v for k, v in (("keep_dtype", self.keep_dtype), ("precision_mode", self.precision_mode))
                    if v is not None}
            self.backend = get_backend("sim", self.spec.path, cost=False, **opts)
            s = self.backend.settings["prefill"]
            self.precision = s.precision_mode + (f" + keep_dtype({len(s.keep_dtype)})" if s.keep_dtype else "")
            return
        if kind == "acl" and "acl" not in BACKENDS:
            raise MissingDependencyError("acl (pyACL / CANN runtime)", None, f"running '{self.spec.path}' on a card")
        opts = {"dtype": self.dtype} if kind in ("torch", "mindspore") else {}
        self.backend = get_backend(kind, self.spec.path, **opts)

    @property
    def prefill_len(self) -> int | None:
        return getattr(self.backend, "seq_len", None)

    @property
    def model_spec(self):
        return getattr(self.backend, "spec", None)

    def run(self, ids: np.ndarray, mask: np.ndarray | None) -> dict[str, np.ndarray]:
        out = self.backend.full_logits(ids, mask, layer_outputs=self.layerwise)
        if self.layerwise:
            logits, layers = out
            d = {k: np.asarray(v) for k, v in layers.items()}
            d["logits"] = np.asarray(logits)
            return {k: d[k] for k in lm_order(d)}
        return {"logits": np.asarray(out)}

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()
