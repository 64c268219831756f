"""Runtime backends: one package per backend, one registry.

Each backend is a package `ascend_adapt/backends/<name>/` whose `__init__.py` registers a
`Backend`: its metadata (name, aliases, the optional dependency it needs, the device it runs on,
whether it is simulated, the precisions it computes) and, as "module:attribute" strings imported
on first use, its LM session factory (`generate`, `serve`, LM-level `compare`), its graph
Runner (`run`, graph-level `compare`) and its artifact opener (which paths it recognizes, and
where its part of a `convert` output directory lies). A package `__init__` imports nothing heavy:
listing, detecting and `ascend-adapt --help` never import torch, MindSpore or onnxruntime.

    from ascend_adapt.backends import BACKENDS, detect, get_backend
    BACKENDS.names()                        # ['acl', 'mindspore', 'onnxruntime', 'sim', 'torch', ...]
    detect("out/model.omsim").backend       # 'sim'
    lm = get_backend("sim", "out/model.omsim", precision_mode="force_fp16")
    runner = BACKENDS.get("ort").runner("model.onnx")    # an alias

Adding a backend is one new package and its registration line (`register_package("pkg")`, or one
entry in `BUILTIN_PACKAGES` for a built-in one): docs/adding_a_backend.md.

Every artifact directory (HF checkpoint, MindSpore port, ONNX export, simulator artifact) keeps
`config.json` and the tokenizer files of its source, so `generate` can load the tokenizer from
any of them.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from ascend_adapt.errors import ConfigError, RegistryError
from ascend_adapt.registry import Registry

# the built-in backend packages, imported (light: metadata only) on the registry's first lookup
BUILTIN_PACKAGES = (
    "ascend_adapt.backends.torch",        # "torch": fp32 golden (transformers Llama, our ChatGLM-6B)
    "ascend_adapt.backends.mindspore",    # "mindspore": MindSpore (CPU here, Ascend there)
    "ascend_adapt.backends.onnxruntime",  # "onnxruntime" / "ort": ONNX graphs and export directories
    "ascend_adapt.backends.sim",          # "sim": the Ascend CPU simulator on .omsim artifacts
    "ascend_adapt.backends.acl",          # "acl": real .om files through pyACL / ais_bench
    "ascend_adapt.backends.torch_npu",    # "torch_npu" / "torch_mlu": the torch model on an NPU / MLU
)

LEVELS = ("lm", "graph")


@dataclass(frozen=True)
class Artifact:
    """What a backend's opener recognized at a path.

    Attributes:
        backend: the backend name that opens it.
        path: the path.
        level: "lm" (token ids in, logits out: a checkpoint, an export, an .omsim) or "graph"
            (one graph's tensors: an .onnx or .om file).
        what: a few words for messages ("simulator artifact", "ONNX graph", …).
    """

    backend: str
    path: Path
    level: str
    what: str


@dataclass(frozen=True)
class GraphHandle:
    """A graph opened for one inference run: the runner plus what callers report about it.

    Attributes:
        runner: the Runner (not yet activated).
        model_path: the graph file the runner loads (.onnx, or .om on a card).
        graph: the graph's name in a multi-graph artifact (None: its only graph).
        precision: what the run computes in, for reports (may be refined after activate).
        layerwise: whether the runner can return every intermediate tensor.
        simulated: whether the numbers come from the simulator.
    """

    runner: Any
    model_path: Path
    graph: str | None
    precision: str
    layerwise: bool = True
    simulated: bool = False


def _resolve(ref: Any) -> Any:
    """A "module:attribute" string imported now, or the object itself."""
    if isinstance(ref, str):
        mod, _, attr = ref.partition(":")
        return getattr(importlib.import_module(mod), attr)
    return ref


@dataclass(frozen=True)
class Backend:
    """One runtime backend.

    Attributes:
        name: registry name (`--backend NAME`, `NAME:path` in compare).
        summary: one line for listings.
        session: factory(path, **options) -> LM backend (`new_session`, `full_logits`), or
            "module:attribute" naming it (imported on first use). None: no LM level.
        runner: open_graph(path, graph=None, **options) -> GraphHandle, or "module:attribute".
            None: no graph level.
        opener: recognize(path) -> Artifact | None (cheap: reads names and small JSON files
            only), or "module:attribute". None: never detected from a path (name it).
        locate: locate(out_dir, manifest, level, graph) -> (path, graph): this backend's part of
            an `ascend-adapt convert` output directory (manifest = its convert.json), or
            "module:attribute". None: the directory itself.
        aliases: other names (`ort` for onnxruntime).
        requires: import names of the optional dependencies it needs (checked, not imported).
        device: where it computes ("cpu", "Ascend NPU", …).
        simulated: its numbers come from the CPU simulator, not hardware.
        precisions: what it computes in ("fp32", "fp16", "bf16", "int8", "as compiled").
        options: backend options its factories take (what the CLI may pass it).
        generate_options: options `generate` / `serve` pass by default (e.g. acl: kv_cache=device).
        detect_order: order among the openers in `detect` (lower first).
        precision_label: template for reports of an LM run ("{dtype}", "{golden}": " golden" at
            float32); an LM backend's own `precision_label()` replaces it once opened.
    """

    name: str
    summary: str = ""
    session: Any = None
    runner: Any = None
    opener: Any = None
    locate: Any = None
    aliases: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    device: str = "cpu"
    simulated: bool = False
    precisions: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    generate_options: Mapping[str, Any] = field(default_factory=dict)
    detect_order: int = 100
    precision_label: str = "{dtype}"

    # -------------------------------------------------------------------- use
    def __call__(self, path, **options):
        """The LM backend for `path` (the registry's entries are factories, as before)."""
        return self.open(path, **options)

    def open(self, path, **options):
        """The LM backend for the artifact at `path` (token ids in, logits out)."""
        if self.session is None:
            raise ConfigError(f"backend '{self.name}' has no LM level (it runs single graphs)",
                              f"use `ascend-adapt run --backend {self.name}` on a graph, or another backend")
        return _resolve(self.session)(path, **options)

    def open_graph(self, path, graph: str | None = None, **options) -> GraphHandle:
        """A GraphHandle running one graph of `path` (an .onnx / .omsim / .om, per backend)."""
        if self.runner is None:
            raise ConfigError(f"backend '{self.name}' does not run single graphs",
                              f"use it at the LM level (generate / compare of checkpoints), or one of the "
                              f"graph backends: {', '.join(names(level='graph'))}")
        return _resolve(self.runner)(path, graph, **options)

    def recognize(self, path) -> Artifact | None:
        """The Artifact this backend opens at `path`, or None."""
        return None if self.opener is None else _resolve(self.opener)(Path(path))

    def in_convert_output(self, out_dir, manifest: Mapping, level: str = "lm",
                          graph: str | None = None) -> tuple[Path, str | None]:
        """(path, graph) of this backend's part of a convert output directory."""
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
        if self.locate is None:
            return Path(out_dir), graph
        return _resolve(self.locate)(Path(out_dir), dict(manifest), level, graph)

    def missing(self) -> list[str]:
        """The optional dependencies in `requires` that cannot be imported here (not imported)."""
        out = []
        for mod in self.requires:
            try:
                found = importlib.util.find_spec(mod) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                out.append(mod)
        return out

    def filter_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The entries of `options` this backend takes (None values dropped)."""
        return {k: v for k, v in options.items() if v is not None and k in self.options}

    @property
    def levels(self) -> tuple[str, ...]:
        return tuple(lv for lv, ref in (("lm", self.session), ("graph", self.runner)) if ref is not None)


class BackendRegistry(Registry[Backend]):
    """The backend registry: names and aliases → Backend. A plain factory registered under a
    name (the older form, `BACKENDS.register("x", factory)`) becomes a Backend with only an LM
    level."""

    def __init__(self, loader: Callable[[], None] | None = None):
        super().__init__("backend", loader=loader)
        self._aliases: dict[str, str] = {}

    def register(self, name, obj=None, *, override: bool = False):
        if isinstance(name, Backend):  # register(Backend(...))
            return self._add(name, override)
        if obj is None:
            return lambda o: self.register(name, o, override=override)
        be = obj if isinstance(obj, Backend) else Backend(name=name, session=obj)
        if be.name != name:
            be = replace(be, name=name)
        return self._add(be, override)

    def _add(self, be: Backend, override: bool) -> Backend:
        for alias in be.aliases:
            owner = self._aliases.get(alias)
            if (alias in self._items or (owner is not None and owner != be.name)) and not override:
                raise RegistryError(f"backend alias '{alias}' of '{be.name}' is already taken",
                                    "pick another alias, or pass override=True to replace it on purpose")
        if be.name in self._aliases and not override:
            raise RegistryError(f"backend '{be.name}' is already an alias of '{self._aliases[be.name]}'",
                                "pick another name")
        Registry.register(self, be.name, be, override=override)
        for alias in be.aliases:
            self._aliases[alias] = be.name
        return be

    def unregister(self, name: str) -> None:
        be = self._items.get(name)
        super().unregister(name)
        for alias in (be.aliases if be is not None else ()):
            if self._aliases.get(alias) == name:
                del self._aliases[alias]

    def canonical(self, name: str) -> str:
        self._ensure_loaded()
        return self._aliases.get(name, name)

    def get(self, name: str) -> Backend:
        return super().get(self.canonical(name))

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._items or name in self._aliases

    def aliases(self) -> dict[str, str]:
        self._ensure_loaded()
        return dict(self._aliases)


def _load() -> None:
    for mod in BUILTIN_PACKAGES:
        importlib.import_module(mod)


BACKENDS = BackendRegistry(loader=_load)


def register(backend: Backend, *, override: bool = False) -> Backend:
    """Register a Backend (a package's `__init__` calls this with its metadata)."""
    return BACKENDS.register(backend, override=override)


def register_package(module: str, *, override: bool = False) -> Backend:
    """The registration line of a backend package outside `BUILTIN_PACKAGES`: import `module`
    (which holds `BACKEND = Backend(...)`) and register its BACKEND.

    Raises:
        ConfigError: the module cannot be imported or has no BACKEND.
    """
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"backend package '{module}' cannot be imported: {exc}",
                          "put its folder on sys.path (or install it) before registering it") from exc
    be = getattr(mod, "BACKEND", None)
    if not isinstance(be, Backend):
        raise ConfigError(f"backend package '{module}' has no BACKEND = Backend(...)",
                          "define BACKEND in its __init__.py (docs/adding_a_backend.md)")
    BACKENDS._ensure_loaded()
    if BACKENDS._items.get(be.name) is be:
        return be
    return BACKENDS.register(be, override=override)


def get(name: str) -> Backend:
    """The Backend registered as `name` (or an alias of it)."""
    return BACKENDS.get(name)


def names(level: str | None = None, *, aliases: bool = False) -> list[str]:
    """Registered backend names (with a level: only those with an LM / graph level), and their
    aliases with `aliases=True`."""
    if level is not None and level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
    out = [n for n, be in BACKENDS.items() if level is None or level in be.levels]
    if aliases:
        out += [a for a, n in BACKENDS.aliases().items() if n in out]
    return sorted(out)


def in_detect_order() -> list["Backend"]:
    """The registered backends in the order their openers are asked (`detect_order`, then name)."""
    return sorted((be for _, be in BACKENDS.items()), key=lambda b: (b.detect_order, b.name))


def detect(path, *, level: str | None = None) -> Artifact | None:
    """Which backend opens `path`: the first opener (by `detect_order`) that recognizes it.

    Returns None when no registered backend recognizes the path.
    """
    for be in in_detect_order():
        art = be.recognize(path)
        if art is not None and (level is None or art.level == level):
            return art
    return None


def get_backend(name: str, path, **options):
    """Create backend `name`'s LM backend for the artifact at `path`."""
    return BACKENDS.get(name).open(path, **options)


def convert_output_path(path, backend: str, level: str = "lm", graph: str | None = None) -> tuple[Path, str | None]:
    """(path, graph) that `backend` loads for `path`: a convert output directory (it holds
    convert.json) maps to the backend's part of it; any other path is returned unchanged."""
    import json

    p = Path(path)
    manifest = p / "convert.json"
    if not manifest.is_file():
        return p, graph
    return BACKENDS.get(backend).in_convert_output(p, json.loads(manifest.read_text()), level, graph)
