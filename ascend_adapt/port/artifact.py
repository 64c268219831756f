"""Open any weight artifact the MindSpore route reads: an HF / Meta checkpoint or a port output.

A port output directory (written by `ascend_adapt.port.convert.port_to_mindspore`) holds
`ascend_adapt_port.json` (the manifest: spec, naming, format, dtype, per-tensor CRC32, source
files), the weights (`model.ckpt`, or `model.safetensors` / shards + index), and the source's
config.json and tokenizer files.

Namings of a port output:
- "ours": the canonical tensor names (`embed.weight`, `layers.{i}.attn.q.weight`, …;
  `model_zoo/base.py`), the names of our MindSpore cells' parameters;
- "mindformers": MindFormers' checkpoint names, the adapter's "mindformers" weight table
  (reference model_architectures.md §4.1 Llama, §4.2 GLM).

`open_weights(path)` returns a `Weights` whose `iter_canonical()` streams (canonical name, array)
one source tensor at a time; `preflight()` checks every tensor's presence and shape first,
without reading data.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ascend_adapt.errors import CheckpointError, ConfigError

MANIFEST_NAME = "ascend_adapt_port.json"
MANIFEST_VERSION = 1
NAMINGS = ("ours", "mindformers")
FORMATS = ("ckpt", "safetensors")


def read_manifest(path) -> dict | None:
    """The port manifest of directory `path`, or None when it is not a port output."""
    f = Path(path) / MANIFEST_NAME
    if not f.is_file():
        return None
    try:
        m = json.loads(f.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CheckpointError(f"{f}: not valid JSON ({exc})", "re-run the port to rewrite it") from None
    if not isinstance(m, dict) or m.get("format_version") != MANIFEST_VERSION:
        raise CheckpointError(f"{f}: unknown manifest version {m.get('format_version') if isinstance(m, dict) else m!r}",
                              f"this ascend-adapt reads version {MANIFEST_VERSION}; re-run the port")
    return m


def tensor_crc32(array: np.ndarray) -> str:
    """CRC32 of a tensor's bytes, as 8 hex digits."""
    a = np.ascontiguousarray(array)
    return f"{zlib.crc32(memoryview(a.reshape(-1).view(np.uint8))):08x}"


def quant_tensors(quantization: dict | None, shapes: dict) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """The extra tensors of a quantized port ("quantization" record of the manifest), per weight.

    weight name (`layers.0.attn.q.weight`, stored int8 [out, in]) → [(name, shape)] of what
    follows it in the checkpoint: `<prefix>.weight_scale` float32 [out] (or [out, in/G] for
    W8A16 groups of G); W8A8 also `<prefix>.input_scale` float32 [1] and, where 1/s is not folded
    into the preceding norm, `<prefix>.smooth_scale` float32 [in].
    """
    if not quantization:
        return {}
    group = quantization.get("group_size")
    smooth = set(quantization.get("smooth_scale") or ())
    out = {}
    for w in quantization.get("quantized") or ():
        if w not in shapes:
            raise CheckpointError(f"{MANIFEST_NAME}: quantized tensor '{w}' is not a weight of this model",
                                  "re-run the port")
        o, i = shapes[w]
        prefix = w[:-len(".weight")]
        extra = [(prefix + ".weight_scale", (o, i // group) if group else (o,))]
        if quantization.get("mode") == "w8a8":
            extra.append((prefix + ".input_scale", (1,)))
            if w in smooth:
                extra.append((prefix + ".smooth_scale", (i,)))
        out[w] = extra
    return out


def ours_entries(adapter, spec, quantization: dict | None = None) -> list:
    """The "ours" naming as weight entries: one per canonical tensor, in checkpoint order (a
    quantized port: each int8 weight followed by its scale tensors, `quant_tensors`)."""
    from ascend_adapt.model_zoo.base import WeightEntry

    extras = quant_tensors(quantization, spec.canonical_shapes())
    out = []
    for e in adapter.entries(spec, "hf"):
        for c in e.canonical:
            out.append(WeightEntry((c,), c, None, e.optional))
            out.extend(WeightEntry((n,), n, None, False) for n, _ in extras.get(c, ()))
    return out


def layout_entries(adapter, spec, layout: str, quantization: dict | None = None) -> list:
    """Weight entries of a layout: "ours", or one of the adapter's tables ("hf", "meta", "mindformers")."""
    return ours_entries(adapter, spec, quantization) if layout == "ours" else adapter.entries(spec, layout)


def expected_shapes(adapter, spec, layout: str, quantization: dict | None = None) -> dict[str, tuple[int, ...]]:
    if layout == "ours":
        shapes = dict(spec.canonical_shapes())
        for extra in quant_tensors(quantization, shapes).values():
            shapes.update(extra)
        return shapes
    return adapter.source_shapes(spec, layout)


@dataclass
class Weights:
    """One opened weight artifact.

    Attributes:
        path: the directory.
        config: config.json (or params.json) as a dict.
        adapter, spec: the architecture and its `ModelSpec`.
        reader: `CheckpointReader` or `CkptReader` (infos() / get()).
        layout: the naming of the tensors: "hf", "meta", "ours" or "mindformers".
        manifest: the port manifest (None for an HF / Meta checkpoint).
    """

    path: Path
    config: dict
    adapter: object
    spec: object
    reader: object
    layout: str
    manifest: dict | None = None

    @property
    def quantization(self) -> dict | None:
        """The manifest's "quantization" record of a `port --quantize` output (else None)."""
        return (self.manifest or {}).get("quantization") or None

    def entries(self) -> list:
        return layout_entries(self.adapter, self.spec, self.layout, self.quantization)

    def preflight(self, strict: bool = True) -> dict[str, str]:
        """Check every tensor's presence and shape against the spec without reading data.

        Returns:
            canonical name → dtype of the tensor that holds it, for the tensors present.

        Raises:
            CheckpointError: a tensor is missing (naming it and its layer) or (with `strict`)
                the checkpoint holds tensors this architecture does not have.
            ShapeMismatchError: a tensor's shape does not match the config (name, expected, actual).
        """
        shapes = expected_shapes(self.adapter, self.spec, self.layout, self.quantization)
        present = self.adapter.check_tensors(self.path, self.reader.infos(), self.spec, self.entries(), shapes,
                                             strict, self.layout)
        return {c: info.dtype for e, info in present for c in e.canonical}

    def iter_canonical(self, verify: bool = True) -> Iterator[tuple[str, np.ndarray]]:
        """Stream (canonical name, array), one source tensor in memory at a time.

        Args:
            verify: for a port output, check each tensor's CRC32 against the manifest.
        """
        reader = self.reader
        if verify and self.manifest is not None:
            reader = _VerifyingReader(reader, self.manifest.get("tensors", {}))
        if self.layout != "ours":
            yield from self.adapter.iter_canonical(reader, self.spec, layout=self.layout)
            return
        self.preflight()
        infos = reader.infos()
        for e in self.entries():
            if e.source in infos:
                yield e.source, reader.get(e.source)


class _VerifyingReader:
    """Reader proxy that checks each tensor's CRC32 against the port manifest."""

    def __init__(self, reader, tensors: dict):
        self._r, self._tensors = reader, tensors
        self.path, self.config, self.layout = reader.path, reader.config, reader.layout

    def infos(self):
        return self._r.infos()

    def get(self, name: str) -> np.ndarray:
        arr = self._r.get(name)
        want = (self._tensors.get(name) or {}).get("crc32")
        if want is not None and tensor_crc32(arr) != want:
            raise CheckpointError(
                f"{self.path}: tensor '{name}' does not match the CRC32 recorded in {MANIFEST_NAME} "
                f"(got {tensor_crc32(arr)}, expected {want})",
                "the weights file is corrupt or was replaced; re-run the port, or pass --no-verify "
                "if you changed the weights on purpose")
        return arr


def weights_reader(path: Path, manifest: dict, config: dict):
    """The reader of a port output's weights file(s)."""
    from ascend_adapt.checkpoint import open_checkpoint

    from .ckpt import CkptReader

    files = manifest.get("weights_files") or []
    for f in files:
        if not (path / f).is_file():
            raise CheckpointError(f"{path}: weights file '{f}' named in {MANIFEST_NAME} is missing",
                                  "copy the whole port directory, or re-run the port")
    if manifest["format"] == "ckpt":
        return CkptReader(path / files[0], config, directory=path)
    reader = open_checkpoint(path, require_config=False)
    reader.config = config
    return reader


def open_weights(path) -> Weights:
    """Open an HF / Meta checkpoint directory or a port output directory."""
    from ascend_adapt.checkpoint import open_checkpoint
    from ascend_adapt.model_zoo.base import ADAPTERS, adapter_for_config
    from ascend_adapt.spec import ModelSpec

    path = Path(path)
    manifest = read_manifest(path) if path.is_dir() else None
    if manifest is None:
        reader = open_checkpoint(path)
        adapter = adapter_for_config(reader.config, str(path / "config.json"))
        spec = adapter.spec_from_config(reader.config)
        layout = "meta" if reader.layout == "meta" else "hf"
        return Weights(path, reader.config, adapter, spec, reader, layout)
    naming = manifest.get("naming")
    if naming not in NAMINGS or manifest.get("format") not in FORMATS:
        raise ConfigError(f"{path / MANIFEST_NAME}: naming {naming!r} / format {manifest.get('format')!r} unknown",
                          f"namings: {', '.join(NAMINGS)}; formats: {', '.join(FORMATS)}")
    spec = ModelSpec.from_dict(manifest["spec"])
    adapter = ADAPTERS.get(spec.arch)
    cfg_file = path / manifest.get("config_file", "config.json")
    config = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file.is_file() else {}
    reader = weights_reader(path, manifest, config)
    return Weights(path, config, adapter, spec, reader, naming, manifest)
