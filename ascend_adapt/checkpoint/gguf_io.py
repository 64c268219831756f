"""GGUF in: llama.cpp's single-file format read as an HF checkpoint, tensor by tensor.

`GGUFCheckpoint(path)` offers what `CheckpointReader` offers (`path`, `layout`, `config`,
`infos()`, `get(name)`, `shard_summary()`) with HF names and HF layouts:

- the file's `general.architecture` picks the model adapter whose `gguf_architectures` lists it
  (the adapter registry, asked inside a function: this module knows no architecture by name);
- the config is GGUF's standard LLM keys (`{arch}.block_count`, `.embedding_length`, …) read as
  HF keys (`GGUFMetadata.llm_config`), made the architecture's `config.json` by the adapter's
  `gguf_config` hook;
- tensor names come from the `gguf` library's own tensor-name tables (`get_tensor_name_map`),
  inverted: HF name (the adapter's `gguf_hf_names`: its HF weight table) → GGUF name, so a name
  llama.cpp renames is followed, not copied here;
- each tensor is dequantized on `get` (Q4_0/Q4_1/Q8_0/K-quants/F16/BF16… by `gguf.quants`)
  to float32 and reshaped to HF's [out, in] (GGUF lists dimensions innermost first), then handed
  to the adapter's `gguf_tensor` hook, which undoes what llama.cpp's converter did (Llama: the
  Q/K rows permuted into interleaved pairs for its rotary kernel);
- the vocabulary (`tokenizer.ggml.*`, model "gpt2" = byte-level BPE) becomes a `tokenizers`
  `tokenizer.json` plus a `tokenizer_config.json` carrying the chat template.

The file is memory-mapped by `gguf.GGUFReader`; one tensor is dequantized at a time, so converting
holds about one fp32 tensor (the embedding) in memory. `unpack_gguf` writes an HF directory
(config.json, model.safetensors, tokenizer files) streaming; `resolve_source` does that once into
a cache so every command that takes an HF directory takes a `.gguf` file too.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .._optional import require
from ..errors import CheckpointError, ConfigError, UnsupportedError
from .config import ConfigDict
from .reader import TensorIndex
from .safetensors_io import TensorInfo

GGUF_SUFFIX = ".gguf"

# rows dequantized at a time (a 576-wide row block of 1024 rows is 2.3 MiB of fp32)
_DEQUANT_ROWS = 1024

# token types of tokenizer.ggml.token_type (llama.cpp's llama_token_type)
_CONTROL, _USER_DEFINED = 3, 4


def is_gguf(path) -> bool:
    """`path` is a file ending in .gguf."""
    p = Path(path)
    return p.suffix.lower() == GGUF_SUFFIX and p.is_file()


def _gguf():
    return require("gguf", purpose="reading .gguf files (pip install gguf)")


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    try:
        return f.contents()
    except Exception:  # noqa: BLE001 - a malformed field reads as absent; required ones are checked
        return default


def gguf_adapters() -> dict[str, list]:
    """GGUF `general.architecture` → the registered model adapters that list it in their
    `gguf_architectures` (built-in and out-of-tree adapters alike; one each, normally)."""
    from ascend_adapt.model_zoo.base import ADAPTERS

    out: dict[str, list] = {}
    for name in ADAPTERS.names():
        adapter = ADAPTERS.get(name)
        for arch in adapter.gguf_architectures:
            out.setdefault(arch, []).append(adapter)
    return out


def gguf_adapter(arch: str, path):
    """The adapter that reads GGUF architecture `arch` (of the file `path`, for the message).

    Raises:
        UnsupportedError: no registered adapter reads it (naming the file, the architecture and
            the supported ones).
        ConfigError: more than one adapter lists it.
    """
    adapters = gguf_adapters()
    if arch not in adapters:
        raise UnsupportedError(f"{path}: GGUF architecture '{arch}' is not supported",
                               f"supported GGUF architectures: {', '.join(sorted(adapters)) or 'none'}; an adapter "
                               "reads more by listing them in `gguf_architectures` "
                               "(docs/adding_an_architecture.md)")
    if len(adapters[arch]) > 1:
        raise ConfigError(f"{path}: GGUF architecture '{arch}' is listed in `gguf_architectures` by adapters "
                          f"{', '.join(a.name for a in adapters[arch])}",
                          "keep it on one adapter (unregister or edit the other)")
    return adapters[arch][0]


class GGUFMetadata:
    """A GGUF file's metadata as an adapter's `gguf_config` hook reads it.

    Attributes:
        path: the file (for messages). arch: its `general.architecture`.
    """

    def __init__(self, path: Path, reader, arch: str, tensors: dict):
        self.path, self.reader, self.arch, self._tensors = path, reader, arch, tensors

    def field(self, key: str, default=None):
        """Any metadata key (full name, e.g. "tokenizer.ggml.eos_token_id"); `default` when absent."""
        return _field(self.reader, key, default)

    def has_tensor(self, gguf_name: str) -> bool:
        """Whether the file stores the GGUF tensor `gguf_name` (e.g. "blk.0.attn_q.bias")."""
        return gguf_name in self._tensors

    def arch_key(self, key: str, default=None, required: bool = True):
        """`{arch}.{key}`; a missing required key is a CheckpointError naming it."""
        v = _field(self.reader, f"{self.arch}.{key}", default)
        if v is None and required:
            raise CheckpointError(f"{self.path}: GGUF metadata key '{self.arch}.{key}' is missing",
                                  "the file was not written by llama.cpp's converter; re-convert it")
        return v

    def llm_config(self) -> dict:
        """GGUF's standard LLM keys (llama.cpp's `{arch}.*` and `tokenizer.ggml.*_token_id`) as HF
        config keys; tied embeddings where the file stores no `output.weight`.

        Raises:
            CheckpointError: a required key is missing.
            UnsupportedError: rope scaling (a `rope.scaling.type` or Llama-3.1's `rope_freqs` factors).
        """
        m = self.arch_key
        heads = int(m("attention.head_count"))
        hidden = int(m("embedding_length"))
        tokens = self.field("tokenizer.ggml.tokens", [])
        head_dim = m("attention.key_length", None, required=False) or hidden // heads
        cfg = {
            "hidden_size": hidden, "intermediate_size": int(m("feed_forward_length")),
            "num_hidden_layers": int(m("block_count")), "num_attention_heads": heads,
            "num_key_value_heads": int(m("attention.head_count_kv", heads, required=False)),
            "head_dim": int(head_dim),
            "max_position_embeddings": int(m("context_length")),
            "rms_norm_eps": float(m("attention.layer_norm_rms_epsilon")),
            "rope_theta": float(m("rope.freq_base", 10000.0, required=False)),
            "vocab_size": int(m("vocab_size", None, required=False) or len(tokens)),
            "tie_word_embeddings": not self.has_tensor("output.weight"),
            "torch_dtype": "float32",
        }
        scaling = self.field(f"{self.arch}.rope.scaling.type")
        if (scaling not in (None, "none")) or self.has_tensor("rope_freqs.weight"):
            # Llama-3.1's llama3 rope (a rope_freqs tensor) or linear / YaRN scaling: other numerics
            raise UnsupportedError(f"{self.path}: rope scaling ({scaling or 'rope_freqs.weight'}) is not supported",
                                   "only models with plain rotary embeddings are read (Llama-2, SmolLM2, Qwen2/2.5/3 "
                                   "without YaRN)")
        for key, name in (("bos_token_id", "bos"), ("eos_token_id", "eos"), ("pad_token_id", "padding")):
            v = self.field(f"tokenizer.ggml.{name}_token_id")
            cfg[key] = int(v) if v is not None else None
        return cfg


class GGUFCheckpoint(TensorIndex):
    """A `.gguf` file opened for streaming as an HF checkpoint (see the module docstring).

    Attributes:
        path: the file. layout: "gguf". shards: [path]. config: the HF config (a `ConfigDict`
        whose source names the file). quant_types: GGUF tensor type → tensor count.
        arch: `general.architecture`. adapter: the model adapter that reads it.

    Raises:
        CheckpointError: not a readable GGUF file, or tensors the adapter's names do not cover.
        UnsupportedError: an architecture no adapter reads, or rope scaling.
    """

    layout = "gguf"

    def __init__(self, path, require_config: bool = True, read_config: bool = True):
        gguf = _gguf()
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: no such file")
        try:
            self.reader = gguf.GGUFReader(str(self.path), "r")
        except Exception as exc:  # noqa: BLE001 - the library raises ValueError / struct errors
            raise CheckpointError(f"{self.path}: not a readable GGUF file ({str(exc)[:200]})",
                                  "re-download the file; only GGUF v2/v3 files are read") from None
        self.shards = [self.path]
        self.arch = str(_field(self.reader, "general.architecture", ""))
        self.adapter = gguf_adapter(self.arch, self.path)
        self._tensors = {t.name: t for t in self.reader.tensors}
        meta = GGUFMetadata(self.path, self.reader, self.arch, self._tensors)
        self.config = ConfigDict(self.adapter.gguf_config(meta), f"{self.path} (GGUF metadata)")
        self._names = self._name_map()
        self._infos = {}
        for hf, g in self._names.items():
            t = self._tensors[g]
            shape = tuple(int(d) for d in reversed([int(x) for x in t.shape]))
            self._infos[hf] = TensorInfo(hf, shape, "float32", self.path)
        self.quant_types: dict[str, int] = {}
        for t in self.reader.tensors:
            self.quant_types[t.tensor_type.name] = self.quant_types.get(t.tensor_type.name, 0) + 1

    def load_config(self, required: bool = True) -> ConfigDict:
        return self.config

    # ---- names -------------------------------------------------------------------------------
    def _name_map(self) -> dict[str, str]:
        """HF name → GGUF name for every tensor in the file (the gguf library's table, inverted)."""
        gguf = _gguf()
        arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == self.arch)
        n_layers = self.config["num_hidden_layers"]
        tmap = gguf.get_tensor_name_map(arch, n_layers)
        out: dict[str, str] = {}
        for base in self.adapter.gguf_hf_names(self.config):
            g = tmap.get_name(base)
            if g is None:
                continue
            for suffix in (".weight", ".bias"):
                if g + suffix in self._tensors:
                    out[base + suffix] = g + suffix
        unknown = sorted(set(self._tensors) - set(out.values()))
        if unknown:
            raise CheckpointError(f"{self.path}: {len(unknown)} GGUF tensor(s) have no HF name, e.g. '{unknown[0]}'",
                                  f"this file's '{self.arch}' tensors are not the layout the adapters know")
        return out

    # ---- CheckpointReader interface ----------------------------------------------------------
    def info(self, name: str) -> TensorInfo:
        try:
            return self._infos[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: tensor '{name}' is not in the checkpoint") from None

    def get(self, name: str) -> np.ndarray:
        """One tensor, dequantized to float32, in HF's layout and values (the adapter's `gguf_tensor`
        undoes the converter's changes, e.g. Llama's Q/K permutation)."""
        gguf = _gguf()
        info = self.info(name)
        t = self._tensors[self._names[name]]
        data = t.data  # a view of the memory-mapped file
        try:
            if data.ndim < 2 or len(info.shape) < 2:
                arr = np.asarray(gguf.quants.dequantize(data, t.tensor_type), dtype=np.float32).reshape(info.shape)
            else:
                # row blocks into one output: the dequantizer's temporaries stay a few MiB, not
                # several times the tensor (the 49152 x 576 embedding would peak at ~3x 108 MiB)
                arr = np.empty((data.shape[0], info.shape[-1]), np.float32)
                for i in range(0, data.shape[0], _DEQUANT_ROWS):
                    arr[i:i + _DEQUANT_ROWS] = gguf.quants.dequantize(data[i:i + _DEQUANT_ROWS], t.tensor_type)
                arr = arr.reshape(info.shape)
        except NotImplementedError:
            raise UnsupportedError(f"{self.path}: tensor '{t.name}' has GGUF type {t.tensor_type.name}, "
                                   "which the gguf library cannot dequantize",
                                   "re-quantize the model to Q8_0, Q4_K or F16 with llama.cpp") from None
        arr = self.adapter.gguf_tensor(name, arr, self.config)
        return np.ascontiguousarray(arr)

    def iter_tensors(self, names=None):
        for name in (self._infos if names is None else names):
            yield name, self.get(name)

    def shard_summary(self) -> list[tuple[Path, int, int]]:
        return [(self.path, len(self._infos), self.path.stat().st_size)]

    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self._infos.values())

    # ---- tokenizer ---------------------------------------------------------------------------
    def tokenizer_files(self) -> dict[str, dict]:
        """{"tokenizer.json": …, "tokenizer_config.json": …} built from the GGUF vocabulary.

        Raises:
            UnsupportedError: a vocabulary other than byte-level BPE (`tokenizer.ggml.model` "gpt2").
        """
        model = _field(self.reader, "tokenizer.ggml.model")
        if model != "gpt2":
            raise UnsupportedError(f"{self.path}: GGUF tokenizer model '{model}' is not supported",
                                   "only byte-level BPE vocabularies (tokenizer.ggml.model = gpt2) are read")
        tokens = [str(t) for t in _field(self.reader, "tokenizer.ggml.tokens", [])]
        types = list(_field(self.reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
        merges = [str(m) for m in _field(self.reader, "tokenizer.ggml.merges", [])]
        added = [{"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
                  "normalized": types[i] != _CONTROL, "special": types[i] == _CONTROL}
                 for i, tok in enumerate(tokens) if types[i] in (_CONTROL, _USER_DEFINED)]
        bos_id = _field(self.reader, "tokenizer.ggml.bos_token_id")
        add_bos = bool(_field(self.reader, "tokenizer.ggml.add_bos_token", False)) and bos_id is not None
        post = None
        if add_bos:
            bos = {"id": tokens[bos_id], "type_id": 0}
            post = {"type": "TemplateProcessing",
                    "single": [{"SpecialToken": bos}, {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [{"SpecialToken": bos}, {"Sequence": {"id": "A", "type_id": 0}},
                             {"Sequence": {"id": "B", "type_id": 1}}],
                    "special_tokens": {tokens[bos_id]: {"id": tokens[bos_id], "ids": [int(bos_id)],
                                                        "tokens": [tokens[bos_id]]}}}
        tok_json = {
            "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "post_processor": post,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": False, "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges},
        }

        def name(key):
            i = _field(self.reader, f"tokenizer.ggml.{key}_token_id")
            return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

        tc = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": add_bos, "add_eos_token": False,
              "bos_token": name("bos"), "eos_token": name("eos"), "pad_token": name("padding"),
              "unk_token": name("unknown"), "model_max_length": self.config["max_position_embeddings"]}
        template = _field(self.reader, "tokenizer.chat_template")
        if template:
            tc["chat_template"] = str(template)
        return {"tokenizer.json": tok_json, "tokenizer_config.json": tc}


def gguf_tokenizer(path):
    """The `BPETokenizer` of a `.gguf` file's vocabulary (files built in a temporary directory)."""
    from ascend_adapt.model_zoo.tokenizers import BPETokenizer

    ck = GGUFCheckpoint(path)
    files = ck.tokenizer_files()
    cfg = ck.config
    from ascend_adapt.fsutil import scratch_dir

    with scratch_dir("ascend-adapt-gguf-tok-") as tmp:
        tj = tmp / "tokenizer.json"
        tj.write_text(json.dumps(files["tokenizer.json"], ensure_ascii=False), encoding="utf-8")
        eos = cfg.get("eos_token_id")
        return BPETokenizer(tj, files["tokenizer_config.json"], eos_ids=[eos] if eos is not None else None,
                            pad_id=cfg.get("pad_token_id"))


def unpack_gguf(path, out_dir, *, force: bool = False, progress=None) -> Path:
    """Write a `.gguf` file as an HF directory: config.json, generation_config.json,
    model.safetensors (float32, one tensor dequantized at a time) and the tokenizer files (when
    the vocabulary is byte-level BPE; without them, `generate --prompt-ids` still runs).

    Args:
        path: the .gguf file.
        out_dir: the directory to create (atomically; `force` replaces an existing one).
        progress: optional callable(done, total) after each tensor.
    """
    from ascend_adapt.fsutil import atomic_output

    from .safetensors_io import SafetensorsWriter

    ck = GGUFCheckpoint(path)
    try:
        tok = ck.tokenizer_files()
    except UnsupportedError:
        tok = {}  # a SentencePiece vocabulary: the weights still convert; --prompt-ids works without it
    infos = ck.infos()
    with atomic_output(out_dir, force=force, is_dir=True, inputs=[Path(path)]) as d:
        (d / "config.json").write_text(json.dumps(dict(ck.config), indent=2))
        gen = {k: ck.config.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        (d / "generation_config.json").write_text(json.dumps({**gen, "do_sample": False}, indent=2))
        for fname, content in tok.items():
            (d / fname).write_text(json.dumps(content, ensure_ascii=False, indent=None if fname == "tokenizer.json"
                                              else 2), encoding="utf-8")
        specs = [(n, i.shape, "float32") for n, i in infos.items()]
        with SafetensorsWriter(d / "model.safetensors", specs,
                               metadata={"format": "pt", "source": f"gguf:{Path(path).name}"}) as w:
            for k, n in enumerate(infos):
                a = ck.get(n)
                w.write(n, a)
                del a
                if progress is not None:
                    progress(k + 1, len(infos))
    return Path(out_dir)


def cache_root() -> Path:
    """`$ASCEND_ADAPT_CACHE`, else `~/.cache/ascend-adapt`."""
    env = os.environ.get("ASCEND_ADAPT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ascend-adapt"


def resolve_source(path, note=None) -> Path:
    """An HF directory for `path`: itself, or for a `.gguf` file its unpacked copy in the cache
    (`cache_root()/gguf/<stem>-<key>`, keyed by the file's resolved path, size and mtime; made once).

    Args:
        path: a model directory, or a .gguf file.
        note: optional callable(str) told when a file is unpacked (a one-line progress note).
    """
    p = Path(path)
    if not is_gguf(p):
        return p
    st = p.stat()
    key = hashlib.sha256(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    out = cache_root() / "gguf" / f"{p.stem}-{key}"
    if not (out / "model.safetensors").is_file():
        if note is not None:
            note(f"[gguf] unpacking {p.name} (dequantized to float32, one tensor at a time) into {out}")
        out.parent.mkdir(parents=True, exist_ok=True)
        unpack_gguf(p, out, force=out.exists())
    return out
