"""Tiny random checkpoints in the real on-disk layouts, made in code (nothing is downloaded).

`make_tiny_checkpoint(out_dir, "llama" | "chatglm", layout=…)` writes config.json, the weights
(single / sharded safetensors with index, single / sharded pytorch_model.bin with index, or
Meta's consolidated.*.pth + params.json for Llama) and a real SentencePiece tokenizer trained on
a small built-in corpus (BPE with byte fallback for Llama-2; unigram + NFKC with ChatGLM-6B's
special pieces for ChatGLM). Key names, fused layouts and config keys are the real ones
(reference model_architectures.md §1.1–1.2, §3.1); only the sizes are tiny.

Random weights give nearly flat next-token logits; `tiny_trained.py` trains the same configs on
the corpus and writes them through `make_tiny_checkpoint` (for greedy-agreement checks).
"""

from __future__ import annotations

import functools
import io
import json
import math
from pathlib import Path
from typing import Mapping

import numpy as np

from ascend_adapt.checkpoint import SafetensorsWriter, plan_shards, shard_file_names
from ascend_adapt.errors import ConfigError
from ascend_adapt.fsutil import atomic_output

from .base import ADAPTERS
from ascend_adapt.spec import ModelSpec

LAYOUTS = ("safetensors", "safetensors-sharded", "bin", "bin-sharded", "meta")
_CORPUS = Path(__file__).with_name("tiny_corpus.txt")

GLM_CONTROL = ["[MASK]", "[gMASK]", "[sMASK]", "<unused_0>", "<sop>", "<eop>", "<ENC>", "<dBLOCK>"]
GLM_USER = ["<n>", "<|tab|>"] + [f"<|blank_{k}|>" for k in range(2, 81)]


def _kind(arch: str) -> str:
    """The tokenizer kind of an adapter name, or the kind itself ("llama" / "chatglm")."""
    return arch if arch in ("llama", "chatglm", "bpe") else ADAPTERS.get(arch).tokenizer_kind


@functools.lru_cache(maxsize=None)
def tiny_tokenizer_model(kind: str) -> bytes:
    """Train (deterministically) the tiny SentencePiece model of a tokenizer kind ("llama" /
    "chatglm", or an adapter name); returns the model bytes."""
    kind = _kind(kind)
    import sentencepiece as spm

    lines = _CORPUS.read_text(encoding="utf-8").splitlines()
    buf = io.BytesIO()
    common = dict(sentence_iterator=iter(lines * 4), model_writer=buf, num_threads=1,
                  byte_fallback=True, character_coverage=1.0, hard_vocab_limit=False,
                  minloglevel=2, split_digits=True, shuffle_input_sentence=False, seed_sentencepiece_size=100000)
    if kind == "llama":
        spm.SentencePieceTrainer.train(
            vocab_size=512, model_type="bpe", normalization_rule_name="identity",
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True, **common)
    elif kind == "chatglm":
        # "\n" is pre-processed into <n> by the tokenizer, like ice_text.model
        text = [ln.replace("\n", "<n>") for ln in lines]
        common["sentence_iterator"] = iter(text * 4)
        spm.SentencePieceTrainer.train(
            vocab_size=640, model_type="unigram", normalization_rule_name="nmt_nfkc",
            unk_id=0, bos_id=1, eos_id=2, pad_id=3, unk_piece="<unk>", bos_piece="<s>",
            eos_piece="</s>", pad_piece="<pad>", add_dummy_prefix=True, remove_extra_whitespaces=True,
            control_symbols=GLM_CONTROL, user_defined_symbols=GLM_USER, **common)
    elif kind == "chatglm2":
        # as ChatGLM2/3's tokenizer.model (§2): BPE, identity normalizer, dummy prefix, spaces kept,
        # byte fallback, split digits, no pad piece; the special tokens are added by the tokenizer
        # code after the pieces (`model_zoo/tokenizers.py`), not trained in
        spm.SentencePieceTrainer.train(
            vocab_size=512, model_type="bpe", normalization_rule_name="identity",
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True, remove_extra_whitespaces=False,
            **common)
    else:
        raise ConfigError(f"no tiny tokenizer of kind '{kind}'", "use tokenizer_kind 'llama' or 'chatglm'")
    return buf.getvalue()


# byte-level BPE (Qwen2/2.5/3 style): special tokens after the learned vocabulary, ChatML chat format
BPE_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


# Qwen2's pre-tokenizer split (its tokenizer.json): contractions, letters, ONE digit, punctuation, spaces
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


@functools.lru_cache(maxsize=None)
def tiny_bpe_tokenizer_json() -> str:
    """Train (deterministically) a tiny byte-level BPE `tokenizer.json` on the built-in corpus,
    in Qwen2's form: NFC, the `QWEN2_SPLIT` regex then byte-level bytes, byte-level decoder,
    up to 512 tokens, then `BPE_SPECIAL`."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS.read_text(encoding="utf-8").splitlines(), trainer=trainer)
    tok.add_special_tokens(BPE_SPECIAL)
    return tok.to_str()


def _bpe_ids() -> dict[str, int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tiny_bpe_tokenizer_json()).get_vocab(with_added_tokens=True)


def _piece_ids(model: bytes) -> dict[str, int]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model)
    return {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}


def tiny_config(arch: str, **overrides) -> dict:
    """The tiny HF config.json of `arch` with token ids matching its tiny tokenizer."""
    adapter = ADAPTERS.get(arch)
    cfg = adapter.tiny_config()
    if adapter.tokenizer_kind == "chatglm2":
        # ChatGLM2/3 special tokens follow the pieces ([MASK] [gMASK] [sMASK] sop eop, ChatGLM3's
        # four role tokens), as the original tokenizer adds them; eos 2 and pad 0 are the real ones
        from .chatglm2.adapter import ROLE_TOKENS, SPECIAL_TOKENS

        n = len(_piece_ids(tiny_tokenizer_model("chatglm2")))
        cfg.update(mask_token_id=n, gmask_token_id=n + 1, bos_token_id=n + 3, eos_token_id=2, pad_token_id=0)
        need = n + len(SPECIAL_TOKENS) + len(ROLE_TOKENS)
        cfg["padded_vocab_size"] = max(cfg["padded_vocab_size"], ((need + 63) // 64) * 64)
        cfg.update(overrides)
        return cfg
    if adapter.tokenizer_kind == "chatglm":
        ids = _piece_ids(tiny_tokenizer_model("chatglm"))
        cfg.update(bos_token_id=ids["<sop>"], eos_token_id=ids["<eop>"], mask_token_id=ids["[MASK]"],
                   gmask_token_id=ids["[gMASK]"], pad_token_id=ids["<pad>"])
        cfg["vocab_size"] = max(cfg["vocab_size"], ((len(ids) + 63) // 64) * 64)
    elif adapter.tokenizer_kind == "bpe":
        ids = _bpe_ids()
        cfg.update(bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
        cfg["vocab_size"] = max(cfg["vocab_size"], len(ids))
    else:
        cfg["vocab_size"] = max(cfg["vocab_size"], len(_piece_ids(tiny_tokenizer_model("llama"))))
    cfg.update(overrides)
    return cfg


def random_canonical_weights(spec: ModelSpec, seed: int = 0, dtype: str = "float32") -> dict[str, np.ndarray]:
    """Random weights for every canonical tensor, scaled so logits are well spread (no argmax ties)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in spec.canonical_shapes().items():
        if name.endswith("norm.weight"):
            a = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith(".bias"):
            a = 0.05 * rng.standard_normal(shape)
        elif name == "embed.weight" or name == "lm_head.weight":
            a = rng.standard_normal(shape)
        else:
            a = rng.standard_normal(shape) / math.sqrt(shape[1])
        out[name] = a.astype(dtype)
    if spec.tie_word_embeddings:
        # a tied checkpoint stores the same matrix under both keys (as saving a tied model does)
        src = spec.tied_source
        other = "embed.weight" if src == "lm_head.weight" else "lm_head.weight"
        out[other] = out[src]
    return out


def _write_tokenizer(d: Path, arch: str, spec: ModelSpec) -> None:
    if _kind(arch) == "bpe":
        (d / "tokenizer.json").write_text(tiny_bpe_tokenizer_json(), encoding="utf-8")
        (d / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>", "unk_token": None, "add_prefix_space": False,
            "model_max_length": spec.max_position, "chat_template": CHATML_TEMPLATE,
        }, indent=2))
        return
    model = tiny_tokenizer_model(arch)
    if _kind(arch) == "chatglm2":  # the real repos' tokenizer.model + tokenizer_config.json (§2)
        (d / "tokenizer.model").write_bytes(model)
        (d / "tokenizer_config.json").write_text(json.dumps({
            "name_or_path": f"THUDM/chatglm{spec.extra.get('glm_version', 2)}-6b", "remove_space": False,
            "do_lower_case": False, "tokenizer_class": "ChatGLMTokenizer",
            "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]},
        }, indent=2))
        return
    if _kind(arch) == "llama":
        (d / "tokenizer.model").write_bytes(model)
        (d / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
            "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
            "model_max_length": spec.max_position, "legacy": False,
        }, indent=2))
        (d / "special_tokens_map.json").write_text(json.dumps(
            {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2))
    else:
        (d / "ice_text.model").write_bytes(model)
        (d / "tokenizer_config.json").write_text(json.dumps({
            "name_or_path": "THUDM/chatglm-6b", "bos_token": "<sop>", "eos_token": "<eop>",
            "end_token": "</s>", "gmask_token": "[gMASK]", "mask_token": "[MASK]", "pad_token": "<pad>",
            "unk_token": "<unk>", "remove_space": False, "do_lower_case": False,
            "tokenizer_class": "ChatGLMTokenizer", "num_image_tokens": 0,
            "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]},
        }, indent=2))


def _write_safetensors(d: Path, items: list[tuple[str, np.ndarray]], max_shard_bytes: int | None) -> None:
    specs = [(n, a.shape, str(a.dtype)) for n, a in items]
    arrays = dict(items)
    shards = plan_shards(specs, max_shard_bytes) if max_shard_bytes else [specs]
    names = shard_file_names("model", len(shards), "safetensors")
    weight_map = {}
    for fname, shard in zip(names, shards):
        with SafetensorsWriter(d / fname, shard, metadata={"format": "pt"}) as w:
            for n, _, _ in shard:
                w.write(n, arrays[n])
                weight_map[n] = fname
    if len(shards) > 1:
        total = sum(a.nbytes for a in arrays.values())
        (d / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def _write_bin(d: Path, items: list[tuple[str, np.ndarray]], max_shard_bytes: int | None,
               file_names: list[str] | None = None, index_name: str | None = "pytorch_model.bin.index.json") -> None:
    import torch

    specs = [(n, a.shape, str(a.dtype)) for n, a in items]
    arrays = dict(items)
    shards = plan_shards(specs, max_shard_bytes) if max_shard_bytes else [specs]
    names = file_names or shard_file_names("pytorch_model", len(shards), "bin")
    weight_map = {}
    for fname, shard in zip(names, shards):
        sd = {n: torch.from_numpy(np.ascontiguousarray(arrays[n])) for n, _, _ in shard}
        torch.save(sd, d / fname)
        weight_map.update({n: fname for n in sd})
    if len(shards) > 1 and index_name:
        total = sum(a.nbytes for a in arrays.values())
        (d / index_name).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def make_tiny_checkpoint(out_dir, arch: str = "llama", layout: str = "safetensors", *, seed: int = 0,
                         dtype: str = "float32", force: bool = False, config_overrides: Mapping | None = None,
                         weights: Mapping[str, np.ndarray] | None = None) -> Path:
    """Write a tiny random checkpoint of `arch` in `layout` to `out_dir` (atomically).

    Args:
        out_dir: the model directory to create.
        arch: "llama" or "chatglm" (any registered adapter with a tiny config).
        layout: one of LAYOUTS. Sharded layouts put about two layers in each shard.
        seed: RNG seed of the weights.
        dtype: weight dtype ("float32", "float16", "bfloat16").
        force: replace an existing `out_dir`.
        config_overrides: keys to change in the tiny config.json.
        weights: canonical weights to write instead of random ones (e.g. a perturbed copy).
            Without it config.json carries `"ascend_adapt_random_weights": true`
            (`quant.accuracy.real_weights`).

    Returns:
        The directory.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout '{layout}'", f"use one of: {', '.join(LAYOUTS)}")
    adapter = ADAPTERS.get(arch)
    cfg = tiny_config(arch, **(config_overrides or {}))
    cfg["torch_dtype"] = dtype
    if weights is None:  # drawn here: say so (convert's accuracy step then skips the perplexity)
        from ascend_adapt.quant.accuracy import RANDOM_WEIGHTS_KEY

        cfg[RANDOM_WEIGHTS_KEY] = True
    spec = adapter.spec_from_config(cfg)
    canon = dict(weights) if weights is not None else random_canonical_weights(spec, seed, "float32")
    if dtype != "float32":
        from ascend_adapt.checkpoint import numpy_dtype

        canon = {k: v.astype(numpy_dtype(dtype)) for k, v in canon.items()}
    table_layout = "meta" if layout == "meta" else "hf"
    if layout == "meta" and "meta" not in adapter.weight_tables:
        raise ConfigError(f"the Meta consolidated layout exists only for llama, not '{arch}'")
    items = list(adapter.iter_source(canon.__getitem__, spec, table_layout, available=canon.__contains__))
    if arch == "chatglm":
        # the real checkpoint also stores each layer's rotary inv_freq buffer (fp16; ignored on load)
        inv = (1.0 / 10000 ** (np.arange(0, spec.rotary_dim, 2) / spec.rotary_dim)).astype(np.float16)
        with_buffers = []
        for n, a in items:
            with_buffers.append((n, a))
            if n.endswith("attention.query_key_value.bias"):
                with_buffers.append((n.replace("query_key_value.bias", "rotary_emb.inv_freq"), inv))
        items = with_buffers
    elif adapter.tokenizer_kind == "chatglm2":
        # the real checkpoint stores one rotary buffer after the embedding (§2; ignored on load),
        # in the checkpoint's dtype
        rd = spec.rotary_dim
        inv = (1.0 / 10000 ** (np.arange(0, rd, 2) / rd)).astype(items[0][1].dtype)
        items = items[:1] + [("transformer.rotary_pos_emb.inv_freq", inv)] + items[1:]
    layer_bytes = sum(a.nbytes for n, a in items if ".0." in n) or 1
    shard_bytes = 2 * layer_bytes if layout.endswith("sharded") else None
    with atomic_output(out_dir, force=force, is_dir=True) as d:
        if layout == "meta":
            params = {"dim": spec.hidden_size, "n_layers": spec.num_layers, "n_heads": spec.num_heads,
                      "n_kv_heads": spec.num_kv_heads, "vocab_size": spec.vocab_size,
                      "multiple_of": 32, "ffn_dim_multiplier": None, "norm_eps": spec.norm_eps}
            # pick multiple_of so Meta's FFN rule reproduces the tiny intermediate size
            from .llama.adapter import _ffn_size

            fits = [m for m in (256, 128, 64, 32, 16, 8, 4, 2, 1)
                    if _ffn_size(spec.hidden_size, m, None) == spec.intermediate_size]
            if not fits:
                raise ConfigError(f"intermediate_size {spec.intermediate_size} cannot be expressed in params.json")
            params["multiple_of"] = fits[0]
            (d / "params.json").write_text(json.dumps(params, indent=2))
            _write_meta_shards(d, items)
        else:
            (d / "config.json").write_text(json.dumps(cfg, indent=2))
            if layout.startswith("safetensors"):
                _write_safetensors(d, items, shard_bytes)
            else:
                _write_bin(d, items, shard_bytes)
        if adapter.tokenizer_kind in ("llama", "bpe"):
            (d / "generation_config.json").write_text(json.dumps(
                {"bos_token_id": spec.bos_token_id, "eos_token_id": spec.eos_token_id, "pad_token_id": 0,
                 "do_sample": False}, indent=2))
        _write_tokenizer(d, arch, spec)
    return Path(out_dir)


def _write_meta_shards(d: Path, items: list[tuple[str, np.ndarray]], n_shards: int = 2) -> None:
    """Two model-parallel shards, split as Meta's code splits them (§3.1 / MindFormers §4.1)."""
    import torch

    from ascend_adapt.checkpoint.reader import _META_CONCAT_DIM

    shards: list[dict] = [{} for _ in range(n_shards)]
    for name, a in items:
        dim = next((dm for pat, dm in _META_CONCAT_DIM if pat.search(name)), None) if a.ndim >= 2 else None
        parts = np.split(a, n_shards, axis=dim) if dim is not None else [a] * n_shards
        for s, p in zip(shards, parts):
            s[name] = torch.from_numpy(np.ascontiguousarray(p))
    for i, sd in enumerate(shards):
        torch.save(sd, d / f"consolidated.{i:02d}.pth")
