"""Adapter contract and registry: an HF architecture → `ModelSpec` + canonical weight stream.

Canonical tensor names (one set for every architecture; `{layer}` = 0 … L-1):

    embed.weight                      [vocab, H]
    layers.{layer}.attn_norm.weight   [H]        (+ .bias for LayerNorm)
    layers.{layer}.attn.q.weight      [heads·D, H]     q/k/v/o (+ .bias where the model has them)
    layers.{layer}.attn.k.weight      [kv_heads·D, H]
    layers.{layer}.attn.v.weight      [kv_heads·D, H]
    layers.{layer}.attn.o.weight      [H, heads·D]
    layers.{layer}.mlp_norm.weight    [H]        (+ .bias)
    layers.{layer}.mlp.gate.weight    [I, H]     (SwiGLU only)
    layers.{layer}.mlp.up.weight      [I, H]
    layers.{layer}.mlp.down.weight    [H, I]
    final_norm.weight                 [H]        (+ .bias)
    lm_head.weight                    [vocab, H] (absent when tied and not stored)

Linear weights keep torch's [out, in] layout. Q/K rows keep the checkpoint's rotary convention
(the spec's `rotary` says which). An adapter is declarative: a weight-name table (data, with
`{layer}` templates) and only the real transforms in code (split / merge of fused tensors,
Meta's rotary permutation).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Iterator, Mapping, Sequence

import numpy as np

from ascend_adapt.checkpoint.config import ConfigFields, check_identity_keys, config_source, shown
from ascend_adapt.errors import CheckpointError, ConfigError, ShapeMismatchError, UnsupportedError
from ascend_adapt.registry import Registry
from ascend_adapt.runtime.lm_inputs import DEFAULT_POSITIONS, PositionScheme
from ascend_adapt.spec import ModelSpec


@dataclass(frozen=True)
class WeightEntry:
    """One row of a weight-name table.

    Attributes:
        canonical: canonical name template(s); several when the source tensor is fused.
        source: the checkpoint's name template.
        transform: name of the adapter's transform pair (`split_<t>` / `merge_<t>`), or None.
        optional: the source may be absent (e.g. lm_head when tied).
    """

    canonical: tuple[str, ...]
    source: str
    transform: str | None = None
    optional: bool = False

    def expand(self, layer: int | None) -> "WeightEntry":
        if layer is None:
            return self
        return WeightEntry(tuple(c.format(layer=layer) for c in self.canonical),
                           self.source.format(layer=layer), self.transform, self.optional)

    @property
    def per_layer(self) -> bool:
        return "{layer}" in self.source


def table(rows: Sequence[tuple]) -> tuple[WeightEntry, ...]:
    """Build a table from rows `(canonical | (c1, c2, …), source[, transform[, optional]])`."""
    out = []
    for row in rows:
        canon = row[0] if isinstance(row[0], tuple) else (row[0],)
        out.append(WeightEntry(canon, row[1], *row[2:]))
    return tuple(out)


class Adapter:
    """Base class of model adapters. Subclasses set the class attributes and `spec_from_config`.

    Class attributes:
        name: adapter key ("llama").
        architectures: HF `architectures` entries handled.
        model_types: HF `model_type` values handled.
        weight_tables: layout ("hf", "meta", "mindformers", …) → weight table.
        ignored: regexes of checkpoint tensors that carry no parameters (e.g. rotary inv_freq).
    """

    name: ClassVar[str] = ""
    architectures: ClassVar[tuple[str, ...]] = ()
    model_types: ClassVar[tuple[str, ...]] = ()
    weight_tables: ClassVar[Mapping[str, tuple[WeightEntry, ...]]] = {}
    ignored: ClassVar[tuple[str, ...]] = ()
    # which tokenizer family its checkpoints ship: "llama" (tokenizer.model, SentencePiece BPE with
    # BOS) or "chatglm" (ice_text.model, [gMASK] <sop>); tiny test checkpoints get a tiny one of it
    tokenizer_kind: ClassVar[str] = "llama"
    # HF `architectures` / `model_type` values this adapter shares with another adapter: it gets a
    # config carrying one of them only when `claims(config)` says so (ChatGLM2/3 ship as
    # `ChatGLMModel` / "chatglm", like ChatGLM-6B), before the plain indexes are consulted
    shared_names: ClassVar[tuple[str, ...]] = ()
    # ---- behaviour hooks: what the core asks the architecture for (through `spec.arch`) ------
    # how the model numbers its tokens and masks its prompt (position_ids of a prefill / decode
    # step and their shape, the bidirectional prefix, the tokens a prompt ends with); the core's
    # default is 1-D positions, a causal mask and no suffix (ChatGLM-6B overrides it)
    position_scheme: ClassVar[PositionScheme] = DEFAULT_POSITIONS
    # the serving engines that load this family's msModelSlim W8A8 export (`export --format
    # msmodelslim`); a family they do not serve sets () and says why, and what to do instead
    serving_engines: ClassVar[tuple[str, ...]] = ("vLLM-Ascend", "MindIE")
    not_served: ClassVar[tuple[str, str]] = ("", "")
    # the text `convert`'s verification encodes when no --verify-prompt is given (in the language
    # the family's tokenizer was built for)
    verify_prompt: ClassVar[str] = "Hello world"
    # the llama.cpp GGUF `general.architecture` values this adapter reads (the core's GGUF reader,
    # `ascend_adapt/checkpoint/gguf_io.py`, asks the registry for them); () = no GGUF reading
    gguf_architectures: ClassVar[tuple[str, ...]] = ()

    def claims(self, config: Mapping) -> bool:
        """Whether a config carrying one of `shared_names` is this adapter's (by its fields)."""
        return False

    # ---- GGUF hooks (used only where `gguf_architectures` is set) -----------------------------
    def gguf_config(self, meta) -> dict:
        """The HF config.json of a GGUF file of this family.

        Args:
            meta: the file's `GGUFMetadata` (`ascend_adapt/checkpoint/gguf_io.py`): `meta.llm_config()`
                is the HF reading of GGUF's standard LLM keys (`{arch}.block_count`, …, tokens'
                ids); `meta.field(key)` reads any key, `meta.has_tensor(name)` asks for a GGUF tensor.

        The default: this adapter's first `architectures` / `model_types` entry and the standard
        keys; a family adds what GGUF does not record (activation, bias switches).
        """
        return {"architectures": list(self.architectures[:1]), "model_type": self.model_types[0],
                **meta.llm_config()}

    def gguf_hf_names(self, config: Mapping) -> list[str]:
        """HF tensor names without their `.weight` / `.bias` suffix, the GGUF reader's names to look
        up in the `gguf` library's tensor-name table (it gives each one's GGUF name).

        The default: the sources of the "hf" weight table, global rows first, then every layer's
        rows (expanded over `num_hidden_layers`); names a file lacks are skipped by the reader.
        """
        rows = self.weight_tables["hf"]
        bases = []
        for layer in [None] + list(range(int(config["num_hidden_layers"]))):
            for r in rows:
                if r.per_layer == (layer is not None):
                    base = r.expand(layer).source.rsplit(".", 1)[0]
                    if base not in bases:
                        bases.append(base)
        return bases

    def gguf_tensor(self, hf_name: str, array: np.ndarray, config: Mapping) -> np.ndarray:
        """A dequantized GGUF tensor (in HF's shape) → HF's values: undo what llama.cpp's converter
        did to this family's tensors (Llama: its Q/K row permutation). The default: as stored."""
        return array

    # ---- config ------------------------------------------------------------------------------
    def spec_from_config(self, config: Mapping) -> ModelSpec:  # pragma: no cover - abstract
        raise NotImplementedError

    def tiny_config(self) -> dict:  # pragma: no cover - abstract
        """An HF config.json for a tiny random test model of this architecture."""
        raise NotImplementedError

    # ---- weight tables -----------------------------------------------------------------------
    def entries(self, spec: ModelSpec, layout: str = "hf") -> list[WeightEntry]:
        """The concrete table for this spec (templates expanded over layers)."""
        try:
            rows = self.weight_tables[layout]
        except KeyError:
            raise UnsupportedError(f"{self.name}: no weight table for layout '{layout}'",
                                   f"known layouts: {', '.join(self.weight_tables)}") from None
        shapes = spec.canonical_shapes()
        # checkpoint order: global rows before the layers, every layer's rows, then the rest
        first = next((i for i, r in enumerate(rows) if r.per_layer), len(rows))
        head = [r for r in rows[:first]]
        per_layer = [r for r in rows if r.per_layer]
        tail = [r for r in rows[first:] if not r.per_layer]
        ordered = head + [r.expand(i) for i in range(spec.num_layers) for r in per_layer] + tail
        out = []
        for e in ordered:
            present = [c for c in e.canonical if c in shapes]
            if len(present) == len(e.canonical):
                out.append(e)
            elif present:
                raise ConfigError(f"{self.name}: table row {e} is only partly in the spec")
        return out

    def split(self, entry: WeightEntry, array: np.ndarray, spec: ModelSpec) -> tuple[np.ndarray, ...]:
        if entry.transform is None:
            return (array,)
        return getattr(self, f"split_{entry.transform}")(array, spec)

    def merge(self, entry: WeightEntry, arrays: Sequence[np.ndarray], spec: ModelSpec) -> np.ndarray:
        if entry.transform is None:
            return arrays[0]
        return getattr(self, f"merge_{entry.transform}")(arrays, spec)

    def source_shapes(self, spec: ModelSpec, layout: str = "hf") -> dict[str, tuple[int, ...]]:
        """Shapes of the checkpoint's tensors implied by the spec (for writers and checks).

        Allocates nothing proportional to the model: a transform's shape comes from its
        `shape_<t>` method when the adapter has one; otherwise `merge_<t>` runs on zero-stride
        placeholders (a transform that copies its input then allocates that tensor's size).
        """
        shapes = spec.canonical_shapes()
        out = {}
        for e in self.entries(spec, layout):
            in_shapes = [tuple(shapes[c]) for c in e.canonical]
            if e.transform is None:
                out[e.source] = in_shapes[0]
            elif hasattr(self, f"shape_{e.transform}"):
                out[e.source] = tuple(getattr(self, f"shape_{e.transform}")(in_shapes, spec))
            else:
                dummy = [np.broadcast_to(np.zeros((), np.uint8), s) for s in in_shapes]
                out[e.source] = tuple(self.merge(e, dummy, spec).shape)
        return out

    def is_ignored(self, name: str) -> bool:
        return any(re.search(p, name) for p in self.ignored)

    def tensor_problems(self, infos, entries, expected: dict, strict: bool = True) -> list[dict]:
        """Every way a checkpoint's tensors differ from the spec, from their headers alone.

        Args:
            infos: name → TensorInfo of the checkpoint.
            entries: the concrete weight table of the checkpoint's naming.
            expected: source name → expected shape.
            strict: list tensors that are not part of this architecture.

        Returns:
            dicts with `kind` ("unexpected", "missing", "shape"), `name`, `expected` (shape or
            None), `actual` (shape or None), `file` (or None) and, for "missing", `layer`:
            unexpected tensors first, then table order.
        """
        problems = []
        if strict:
            known = {e.source for e in entries}
            for n, info in infos.items():
                if n not in known and not self.is_ignored(n):
                    problems.append({"kind": "unexpected", "name": n, "expected": None,
                                     "actual": tuple(info.shape), "file": Path(info.file).name})
        for e in entries:
            info = infos.get(e.source)
            if info is None:
                if not e.optional:
                    layer = re.search(r"\.(\d+)\.", e.source)
                    problems.append({"kind": "missing", "name": e.source, "expected": tuple(expected[e.source]),
                                     "actual": None, "file": None, "layer": layer.group(1) if layer else None})
            elif tuple(info.shape) != tuple(expected[e.source]):
                problems.append({"kind": "shape", "name": e.source, "expected": tuple(expected[e.source]),
                                 "actual": tuple(info.shape), "file": Path(info.file).name})
        return problems

    def check_tensors(self, path, infos, spec: ModelSpec, entries, expected: dict, strict: bool = True,
                      naming: str = "") -> list[tuple[WeightEntry, object]]:
        """Check a checkpoint's tensors against the spec from their headers alone.

        Args:
            path: the checkpoint (for messages).
            infos: name → TensorInfo of the checkpoint.
            spec: the model.
            entries: the concrete weight table of the checkpoint's naming.
            expected: source name → expected shape.
            strict: refuse tensors that are not part of this architecture.
            naming: the naming, for messages ("hf", "mindformers", …).

        Returns:
            (entry, info) for every entry present, in table order.

        Raises:
            CheckpointError: a tensor is missing (naming it and its layer) or, with `strict`, the
                checkpoint holds tensors this architecture does not have.
            ShapeMismatchError: a tensor's shape does not match the config (name, expected, actual).
        """
        problems = self.tensor_problems(infos, entries, expected, strict)
        unexpected = [p["name"] for p in problems if p["kind"] == "unexpected"]
        if unexpected:
            what = f" ({naming} names)" if naming else ""
            raise CheckpointError(
                f"{path}: {len(unexpected)} tensors are not part of a {self.name} model{what}, "
                f"e.g. '{unexpected[0]}'",
                "check that config.json's architecture and layer count match the weights",
            )
        for p in problems:
            if p["kind"] == "missing":
                where = f" (layer {p['layer']})" if p["layer"] else ""
                raise CheckpointError(
                    f"{path}: tensor '{p['name']}'{where} is missing",
                    f"config.json says {spec.num_layers} layers; check the shards and the index",
                )
            raise ShapeMismatchError(p["name"], p["expected"], p["actual"], p["file"])
        return [(e, infos[e.source]) for e in entries if e.source in infos]

    def iter_canonical(self, reader, spec: ModelSpec | None = None, layout: str | None = None,
                       strict: bool = True) -> Iterator[tuple[str, np.ndarray]]:
        """Stream (canonical name, array) from a checkpoint, one source tensor at a time.

        Every source tensor's shape is checked against the spec before any data is read; a
        missing tensor, a shape mismatch or (with `strict`) an unexpected tensor raises naming it.
        """
        spec = spec or self.spec_from_config(reader.config)
        layout = layout or ("meta" if getattr(reader, "layout", "") == "meta" else "hf")
        entries = self.entries(spec, layout)
        shapes = spec.canonical_shapes()
        present = self.check_tensors(reader.path, reader.infos(), spec, entries, self.source_shapes(spec, layout),
                                     strict, layout)
        for e, _ in present:
            arrays = self.split(e, reader.get(e.source), spec)
            for cname, arr in zip(e.canonical, arrays):
                assert arr.shape == shapes[cname], (cname, arr.shape, shapes[cname])
                yield cname, arr

    def iter_source(self, get: Callable[[str], np.ndarray], spec: ModelSpec, layout: str = "hf",
                    available: Callable[[str], bool] | None = None) -> Iterator[tuple[str, np.ndarray]]:
        """Inverse stream: canonical tensors (fetched with `get`) → checkpoint names and layout."""
        for e in self.entries(spec, layout):
            if available is not None and not all(available(c) for c in e.canonical):
                if e.optional:
                    continue
                raise CheckpointError(f"canonical tensor(s) {e.canonical} missing for '{e.source}'")
            yield e.source, self.merge(e, [get(c) for c in e.canonical], spec)


def _load_builtin_adapters() -> None:
    from . import chatglm, chatglm2, llama, qwen  # noqa: F401  (registration side effect)


ADAPTERS: Registry[Adapter] = Registry("model adapter", loader=_load_builtin_adapters)
# secondary indexes (architectures / model_type → adapter name), filled by `register_adapter`
_BY_ARCH: dict[str, str] = {}
_BY_TYPE: dict[str, str] = {}
# shared architecture / model_type → adapters that claim some of its configs (`Adapter.claims`)
_SHARED: dict[str, list[str]] = {}


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: register an adapter under its name, architectures and model types."""
    for arch in cls.architectures:
        if arch in _BY_ARCH and _BY_ARCH[arch] != cls.name:
            raise ConfigError(f"architecture '{arch}' is already handled by adapter '{_BY_ARCH[arch]}'")
    ADAPTERS.register(cls.name, cls())
    for arch in cls.architectures:
        _BY_ARCH[arch] = cls.name
    for mt in cls.model_types:
        _BY_TYPE.setdefault(mt, cls.name)
    for key in cls.shared_names:
        if cls.name not in _SHARED.setdefault(key, []):
            _SHARED[key].append(cls.name)
    return cls


def adapter_for_config(config: Mapping, source: str = "config.json") -> Adapter:
    """Pick the adapter for an HF config (by `architectures`, then `model_type`; an adapter that
    shares those names with another one, e.g. ChatGLM2/3 with ChatGLM-6B, first if it claims the
    config by its fields).

    Raises:
        ConfigError: `architectures` is not a list of strings or `model_type` not a string.
        UnsupportedError: no adapter handles it.
    """
    ADAPTERS.names()  # make sure built-ins are loaded
    source = config_source(config, source)
    archs, mt = check_identity_keys(config, source)
    for key in (*archs, mt):
        for name in _SHARED.get(key, ()):
            if ADAPTERS.get(name).claims(config):
                return ADAPTERS.get(name)
    for arch in archs:
        if arch in _BY_ARCH:
            return ADAPTERS.get(_BY_ARCH[arch])
    if mt in _BY_TYPE:
        return ADAPTERS.get(_BY_TYPE[mt])
    if "dim" in config and "n_layers" in config:  # Meta params.json
        return ADAPTERS.get("llama")
    supported = ", ".join(sorted(_BY_ARCH)) + "; model_type " + ", ".join(sorted(_BY_TYPE))
    raise UnsupportedError(
        f"{source}: unsupported architecture {shown(archs)} (model_type {shown(mt)})",
        f"supported: {supported}. To add one, see docs/adding_an_architecture.md",
    )


def get_alias(config: Mapping, aliases: Mapping[str, Sequence[str]], key: str, default=...):
    """Read `key` from `config` under any of its aliases, untyped.

    The built-in adapters read typed, bounded values with
    `ascend_adapt.checkpoint.config.ConfigFields` instead; prefer it in new adapters.
    """
    k, value = ConfigFields(config, aliases).find(key)
    if value is not None:
        return value
    if default is ...:
        raise ConfigError(f"{config_source(config)}: missing key '{key}' "
                          f"(looked for {', '.join(aliases.get(key, (key,)))})",
                          "use the config.json that came with the checkpoint")
    return default
