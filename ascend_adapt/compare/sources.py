"""What `compare` runs for each side: an artifact path resolved to a runner or an LM backend.

Two levels:

- **LM level** (token ids in; named layer outputs out: "embed", "layers.{i}", "final_norm",
  "logits"): an HF checkpoint directory (torch fp32 golden), an ONNX export directory
  (onnxruntime), a MindSpore port directory, an `.omsim` artifact (the "sim" backend with the
  precision settings of its manifest) or an `.om` (the "acl" backend, pyACL on a card). Each is
  the registered backend (`ascend_adapt.backends`: `get(kind).open(path).full_logits(...)`).
- **Graph level** (tensor feeds in; every tensor by name out): an `.onnx` file (onnxruntime
  fp32), `sim:FILE.onnx` (the simulator on that graph with --target / --precision-mode), or an
  `.omsim` graph (`DIR.omsim#prefill`).

A comparison runs at graph level when either side is a graph (an `.onnx` file or `sim:`);
`.omsim` then means its graph (`#name`, default "prefill" or the only one). Otherwise at LM level.
Which backend opens a path is the registry's business (`ascend_adapt.backends.detect`: each
backend package's opener); a prefix forces one: any registered name or alias (`torch:`,
`mindspore:`, `onnxruntime:`, `ort:`, `sim:`, `acl:`, `torch_npu:`, …).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from ascend_adapt.errors import ConfigError


def prefixes() -> list[str]:
    """The `NAME:` prefixes that force a side's backend: every registered backend and alias."""
    from ascend_adapt.backends import names

    return names(aliases=True)


@dataclass
class Spec:
    """A side as given on the command line, resolved.

    Attributes:
        text: what was given.
        path: the artifact path.
        kind: the backend name that runs it (torch | mindspore | onnxruntime | sim | acl | …), or
            "onnx" for an .onnx file on the backend that opens .onnx files natively (the fp32
            reference of a graph).
        graph: the graph of an .omsim (graph level), if named.
        is_graph_file: an .onnx file (graph level by nature).
        backend: the registered backend name (`kind` is "onnx" where this is "onnxruntime").
    """

    text: str
    path: Path
    kind: str
    graph: str | None = None
    is_graph_file: bool = False
    backend: str = ""

    def __post_init__(self):
        self.backend = self.backend or self.kind

    @property
    def runs_graphs(self) -> bool:
        """Whether its backend runs single graphs (graph-level compare)."""
        from ascend_adapt.backends import BACKENDS

        return "graph" in BACKENDS.get(self.backend).levels

    @property
    def simulated(self) -> bool:
        from ascend_adapt.backends import BACKENDS

        return BACKENDS.get(self.backend).simulated


def parse_spec(text: str) -> Spec:
    """Resolve one side: prefix, `#graph` suffix and which backend opens the path (the registry's
    openers, `ascend_adapt.backends.detect`)."""
    from ascend_adapt.backends import BACKENDS, detect

    prefix = None
    body = text
    head, sep, rest = text.partition(":")
    if sep and head in BACKENDS and not (len(head) == 1 and os.name == "nt"):
        prefix, body = BACKENDS.canonical(head), rest
    graph = None
    if "#" in body:
        body, graph = body.split("#", 1)
    p = Path(body)
    if not p.exists():
        raise ConfigError(f"compare: '{body}' does not exist",
                          "give an HF checkpoint dir, an export dir, a MindSpore port dir, an .onnx, "
                          "an .omsim or an .om")
    if (p / "convert.json").is_file():  # a convert output: the backend's part of it
        p, graph = _in_convert_output(p, prefix, graph)
    is_onnx = p.is_file() and p.suffix == ".onnx"
    found = detect(p)
    if prefix is None and found is None:
        if p.is_file() and p.name == "config.json":
            raise ConfigError(f"compare: '{p}' is a config file; compare needs the checkpoint directory",
                              f"pass {p.parent}")
        raise ConfigError(f"compare: cannot tell what '{body}' is",
                          f"prefix it with one of {', '.join(f'{n}:' for n in prefixes())}")
    backend = prefix or found.backend
    native = found is not None and found.backend == backend and found.level == "graph"
    kind = "onnx" if is_onnx and native else backend
    return Spec(text, p, kind, graph, is_onnx, backend)


def _in_convert_output(out: Path, prefix: str | None, graph: str | None) -> tuple[Path, str | None]:
    """A convert output directory (it holds convert.json and the source's config.json, so it would
    pass for a checkpoint): the part of it that the prefixed backend loads, else the part the
    first backend in detection order recognizes (the simulator artifact before the export)."""
    from ascend_adapt.backends import convert_output_path, detect, in_detect_order

    if prefix is not None:
        return convert_output_path(out, prefix, graph=graph)
    for be in in_detect_order():
        if be.locate is None:
            continue
        try:
            q, g = convert_output_path(out, be.name, graph=graph)
        except (KeyError, OSError, ValueError):
            continue
        art = detect(q)
        if q != out and q.exists() and art is not None and art.backend == be.name:
            return q, g
    raise ConfigError(f"compare: '{out}' is a convert output, but no backend here opens any part of it",
                      "check convert.json and the files it names (model.omsim, export/)")


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
        from ascend_adapt.backends import BACKENDS

        self.spec = spec
        be = BACKENDS.get(spec.backend)
        if not spec.runs_graphs:
            raise ConfigError(f"compare: '{spec.text}' ({spec.kind}) is not a graph",
                              "at graph level give .onnx files, sim:FILE.onnx or DIR.omsim#graph")
        try:
            handle = be.open_graph(spec.path, spec.graph, target=target, precision_mode=precision_mode,
                                   keep_dtype=keep_dtype, dump=layerwise, cost=False, optimize=False)
        except ConfigError as exc:
            raise ConfigError(f"compare: side '{spec.text}': {exc.message}", exc.hint) from None
        self.runner, self.model_path, self.graph = handle.runner, handle.model_path, handle.graph
        self.layerwise = layerwise and handle.layerwise  # a card returns outputs only (dumps need msprobe)
        self.simulated = handle.simulated
        self.precision = handle.precision  # refined after activation where the runner knows it
        self.target = getattr(self.runner, "settings", None) and self.runner.settings.target
        self.label = self.runner.name
        self._order: list[str] | None = None

    def activate(self) -> None:
        self.runner.activate()
        label = getattr(self.runner, "precision_label", None)
        if callable(label):
            self.precision = label()

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
        from ascend_adapt.backends import BACKENDS

        self.spec = spec
        self.layerwise = layerwise
        self._be = BACKENDS.get(spec.backend)
        self.simulated = self._be.simulated
        self.dtype = dtype
        self.keep_dtype, self.precision_mode = keep_dtype, precision_mode
        self.backend = None
        self.label = f"{spec.backend}:{spec.path.name}"
        self.precision = self._be.precision_label.format(dtype=dtype, golden=" golden" if dtype == "float32" else "")

    def activate(self) -> None:
        opts = self._be.filter_options({"dtype": self.dtype, "keep_dtype": self.keep_dtype,
                                        "precision_mode": self.precision_mode, "cost": False})
        self.backend = self._be.open(self.spec.path, **opts)
        label = getattr(self.backend, "precision_label", None)
        if callable(label):
            self.precision = label()

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
