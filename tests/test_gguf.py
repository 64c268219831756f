"""GGUF in: a tiny llama.cpp file (written here with the `gguf` library, Q/K permuted and quantized
as llama.cpp's converter does) read by our reader, checked against transformers' own GGUF loading,
and taken through inspect, convert, generate and port.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from ascend_adapt.checkpoint import open_checkpoint  # noqa: E402
from ascend_adapt.checkpoint.gguf_io import GGUFCheckpoint, resolve_source, unpack_gguf  # noqa: E402
from ascend_adapt.errors import CheckpointError, ConfigError, UnsupportedError  # noqa: E402
from ascend_adapt.model_zoo import ADAPTERS  # noqa: E402
from ascend_adapt.model_zoo.llama.adapter import LlamaAdapter, hf_to_meta_rows  # noqa: E402
from ascend_adapt.model_zoo.tiny import CHATML_TEMPLATE, random_canonical_weights, tiny_bpe_tokenizer_json  # noqa: E402

Q = gguf.GGMLQuantizationType
# per tensor kind: what llama.cpp's Q4_1 files hold (Q8_0 embedding, Q4_1 matrices, F32 norms)
QUANT = {"embed_tokens": Q.Q8_0, "norm": Q.F32, "proj": Q.Q4_1}


def _tokenizer_meta():
    tj = json.loads(tiny_bpe_tokenizer_json())
    vocab = tj["model"]["vocab"]
    for t in tj["added_tokens"]:
        vocab[t["content"]] = t["id"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {t["content"] for t in tj["added_tokens"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    return tokens, [3 if t in special else 1 for t in tokens], merges


def write_tiny_gguf(path, seed: int = 0, arch: str = "llama", rope_freqs: bool = False, gguf_arch: str | None = None,
                    **overrides):
    """A tiny tied model of adapter `arch` as llama.cpp writes it (Llama: SmolLM2's shape family, Q/K
    permuted; qwen2 / qwen3: biases, q/k norms, no permute) under GGUF architecture `gguf_arch`
    (default: `arch`); returns (spec, canonical weights)."""
    tokens, types, merges = _tokenizer_meta()
    ids = {t: i for i, t in enumerate(tokens)}
    adapter = ADAPTERS.get(arch)
    cfg = adapter.tiny_config()
    cfg.update(intermediate_size=192, vocab_size=len(tokens), tie_word_embeddings=True, rope_theta=100000.0,
               bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    cfg.update(overrides)
    spec = adapter.spec_from_config(cfg)
    canon = random_canonical_weights(spec, seed)
    key = gguf_arch or arch
    w = gguf.GGUFWriter(str(path), key)
    w.add_block_count(spec.num_layers)
    w.add_context_length(spec.max_position)
    w.add_embedding_length(spec.hidden_size)
    w.add_feed_forward_length(spec.intermediate_size)
    w.add_head_count(spec.num_heads)
    w.add_head_count_kv(spec.num_kv_heads)
    w.add_layer_norm_rms_eps(spec.norm_eps)
    w.add_rope_freq_base(spec.rope_theta)
    w.add_rope_dimension_count(spec.head_dim)
    w.add_key_length(spec.head_dim)
    w.add_value_length(spec.head_dim)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(ids["<|im_start|>"])
    w.add_eos_token_id(ids["<|im_end|>"])
    w.add_pad_token_id(ids["<|endoftext|>"])
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML_TEMPLATE)
    tmap = gguf.get_tensor_name_map(next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == key), spec.num_layers)
    hf = dict(adapter.iter_source(canon.__getitem__, spec, "hf", available=canon.__contains__))
    hf.pop("lm_head.weight", None)  # tied: llama.cpp stores no output.weight
    for name, arr in hf.items():
        base, suffix = name.rsplit(".", 1)
        gname = tmap.get_name(base) + "." + suffix
        if not isinstance(adapter, LlamaAdapter):
            pass  # llama.cpp permutes Q/K for its Llama rotary kernel only
        elif name.endswith("q_proj.weight"):
            arr = hf_to_meta_rows(arr, spec.num_heads)  # llama.cpp's permute for its rotary kernel
        elif name.endswith("k_proj.weight"):
            arr = hf_to_meta_rows(arr, spec.num_kv_heads)
        kind = "embed_tokens" if "embed_tokens" in name else ("norm" if arr.ndim == 1 else "proj")
        qt = QUANT[kind]
        data = gguf.quants.quantize(np.ascontiguousarray(arr, np.float32), qt) if qt != Q.F32 else arr
        w.add_tensor(gname, data, raw_dtype=qt)
    if rope_freqs:  # Llama-3.1's llama3 rope: per-frequency factors
        w.add_tensor("rope_freqs.weight", np.ones(spec.head_dim // 2, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return spec, canon


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    spec, canon = write_tiny_gguf(d / "tiny-llama.Q4_1.gguf")
    return d / "tiny-llama.Q4_1.gguf", spec, canon


@pytest.fixture(scope="module")
def hf_gguf(tiny_gguf):
    """transformers' own reading of the same file (model + tokenizer)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    torch = pytest.importorskip("torch")
    path = tiny_gguf[0]
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                              dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model, tok


def test_config_from_metadata(tiny_gguf):
    path, spec, _ = tiny_gguf
    ck = open_checkpoint(path)
    assert isinstance(ck, GGUFCheckpoint) and ck.layout == "gguf"
    got = ADAPTERS.get("llama").spec_from_config(ck.config)
    for f in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "intermediate_size",
              "vocab_size", "rope_theta", "tie_word_embeddings", "eos_token_id", "max_position"):
        assert getattr(got, f) == getattr(spec, f), f
    assert got.norm_eps == pytest.approx(spec.norm_eps, rel=2 ** -23)  # stored as a float32 in GGUF
    assert ck.quant_types == {"Q8_0": 1, "Q4_1": 7 * spec.num_layers, "F32": 2 * spec.num_layers + 1}


def test_tensors_equal_transformers_dequantization(tiny_gguf, hf_gguf):
    path, spec, _ = tiny_gguf
    sd = hf_gguf[0].state_dict()
    ck = GGUFCheckpoint(path)
    assert set(ck.names()) == set(sd) - {"lm_head.weight"}
    for name in ck.names():
        # the same dequantization (gguf.quants) and the same un-permute: bit for bit
        np.testing.assert_array_equal(ck.get(name), sd[name].numpy(), err_msg=name)


def test_qk_unpermuted_back_to_hf_rows(tiny_gguf):
    """Every tensor lies within its quantization error of the original HF tensor: a Q/K left in
    llama.cpp's interleaved order would be off by O(|w|), far beyond it."""
    path, spec, canon = tiny_gguf
    ck = GGUFCheckpoint(path)
    adapter = ADAPTERS.get("llama")
    hf = dict(adapter.iter_source(canon.__getitem__, spec, "hf", available=canon.__contains__))
    for name in ck.names():
        ref, got = hf[name], ck.get(name)
        if "embed_tokens" in name:
            # Q8_0: scale d = max|x|/127 per 32-value block (stored fp16): |err| ≤ d/2 + |x|·2^-11
            bound = np.abs(ref).max() / 127 / 2 + np.abs(ref).max() * 2.0 ** -10
        elif ref.ndim == 1:
            bound = 0.0  # F32 stored as is
        else:
            # Q4_1: d = (max-min)/15, min m, both fp16: |err| ≤ d/2 + (|m| + 15·d)·2^-11
            rng = ref.max() - ref.min()
            bound = rng / 15 / 2 + (np.abs(ref).max() + rng) * 2.0 ** -10
        assert np.abs(got - ref).max() <= bound, name


def test_tokenizer_equals_transformers(tiny_gguf, hf_gguf):
    from ascend_adapt.model_zoo.tokenizers import chat_messages, load_tokenizer

    ours, ref = load_tokenizer(tiny_gguf[0]), hf_gguf[1]
    for text in ["Hello world", "  spaces\n\nand 123 digits ünïcödé", "<|im_start|>user\nhi<|im_end|>"]:
        assert ours.encode(text) == ref(text)["input_ids"], text
    msgs = chat_messages("What is the capital of France?", (("Hi", "Hello!"),))
    assert ours.encode_chat("What is the capital of France?", (("Hi", "Hello!"),)) == list(
        ref.apply_chat_template(msgs, add_generation_prompt=True, return_dict=False))
    assert ours.eos_ids == (ref.convert_tokens_to_ids("<|im_end|>"),)


def test_unpack_streams_to_hf_dir(tiny_gguf, tmp_path):
    from ascend_adapt.model_zoo.tokenizers import BPETokenizer, load_tokenizer

    path, spec, _ = tiny_gguf
    out = unpack_gguf(path, tmp_path / "hf")
    rd = open_checkpoint(out)
    ck = GGUFCheckpoint(path)
    assert rd.names() == ck.names()
    for n in ck.names():
        np.testing.assert_array_equal(rd.get(n), ck.get(n))
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert isinstance(load_tokenizer(out), BPETokenizer)


def test_resolve_source_caches_once(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("ASCEND_ADAPT_CACHE", str(tmp_path / "cache"))
    notes = []
    a = resolve_source(tiny_gguf[0], note=notes.append)
    b = resolve_source(tiny_gguf[0], note=notes.append)
    assert a == b and a.parent == tmp_path / "cache" / "gguf" and len(notes) == 1
    assert resolve_source(tmp_path) == tmp_path  # a directory is itself


def test_not_a_gguf_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 10)
    with pytest.raises(CheckpointError, match="not a readable GGUF file"):
        open_checkpoint(bad)


def test_unsupported_gguf_architecture(tmp_path):
    p = tmp_path / "x.gguf"
    w = gguf.GGUFWriter(str(p), "gpt2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedError, match="GGUF architecture 'gpt2' is not supported") as exc:
        open_checkpoint(p)
    assert str(p) in str(exc.value)
    assert "supported GGUF architectures: llama, qwen2, qwen3" in exc.value.hint


def test_gguf_architectures_come_from_the_adapters():
    """The reader knows no architecture by name: each GGUF architecture is an adapter's hook."""
    from ascend_adapt.checkpoint.gguf_io import gguf_adapters

    assert {k: [a.name for a in v] for k, v in gguf_adapters().items()} == {
        "llama": ["llama"], "qwen2": ["qwen2"], "qwen3": ["qwen3"]}


def test_out_of_tree_adapter_reads_its_gguf_architecture(tiny_gguf, tmp_path):
    """An adapter registered from outside (no edit of the core) that lists a GGUF architecture in
    `gguf_architectures` gets that architecture's files: config from its `gguf_config`, names from
    its HF weight table, values through its `gguf_tensor` (Llama's Q/K un-permute, inherited).
    The file is the tiny Llama written under the key "granite" (a Llama-shaped tensor table in the
    gguf library); the toy adapter reads none of Granite's own multipliers, so it says nothing about
    real Granite files: its tensors must equal the "llama" file's of the same seed bit for bit."""
    from ascend_adapt.model_zoo import base

    @base.register_adapter
    class GGUFToyAdapter(LlamaAdapter):
        name = "gguf_toy"
        architectures = ("GGUFToyForCausalLM",)
        model_types = ("gguf_toy",)
        gguf_architectures = ("granite",)

    @base.register_adapter
    class Rival(GGUFToyAdapter):
        name = "gguf_toy_rival"
        architectures = ("GGUFToyRivalForCausalLM",)
        model_types = ("gguf_toy_rival",)

    try:
        path = tmp_path / "toy.gguf"
        write_tiny_gguf(path, gguf_arch="granite")
        # two adapters listing one GGUF architecture: refused, naming both (not the first one silently)
        with pytest.raises(ConfigError, match="'granite' is listed .* by adapters gguf_toy, gguf_toy_rival"):
            GGUFCheckpoint(path)
        base.ADAPTERS.unregister("gguf_toy_rival")
        ck, ref = GGUFCheckpoint(path), GGUFCheckpoint(tiny_gguf[0])
        assert ck.adapter.name == "gguf_toy" and ck.config["architectures"] == ["GGUFToyForCausalLM"]
        assert {k: v for k, v in ck.config.items() if k not in ("architectures", "model_type")} == \
            {k: v for k, v in ref.config.items() if k not in ("architectures", "model_type")}
        assert list(ck.names()) == list(ref.names())
        for name in ref.names():
            np.testing.assert_array_equal(ck.get(name), ref.get(name), err_msg=name)
    finally:
        for name in ("gguf_toy", "gguf_toy_rival"):
            if name in base.ADAPTERS:
                base.ADAPTERS.unregister(name)
        for key in ("GGUFToyForCausalLM", "GGUFToyRivalForCausalLM"):
            base._BY_ARCH.pop(key, None)
        for key in ("gguf_toy", "gguf_toy_rival"):
            base._BY_TYPE.pop(key, None)


# ---- commands ---------------------------------------------------------------------------------
def _cli(*args, env=None):
    from click.testing import CliRunner

    from ascend_adapt.cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, env=env)


def test_inspect_gguf(tiny_gguf):
    res = _cli("inspect", tiny_gguf[0])
    assert res.exit_code == 0, res.output
    assert "layout       gguf" in res.output and "adapter: llama" in res.output
    assert "every tensor matches" in res.output


def test_generate_and_convert_from_gguf_give_transformers_tokens(tiny_gguf, hf_gguf, tmp_path):
    """generate (torch) and convert → simulator (must_keep_origin_dtype) on the .gguf give
    transformers' greedy tokens from the same file."""
    import torch

    path, spec, _ = tiny_gguf
    env = {"ASCEND_ADAPT_CACHE": str(tmp_path / "cache")}
    prompt = [5, 17, 42, 99, 7, 250]
    n = 12
    with torch.no_grad():
        ref = hf_gguf[0].generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False,
                                  eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    ids = ",".join(map(str, prompt))
    res = _cli("generate", path, "--backend", "torch", "--prompt-ids", ids, "--output-ids",
               "--max-new-tokens", n, env=env)
    assert res.exit_code == 0, res.output
    assert [int(t) for t in res.output.strip().splitlines()[-1].split(",")] == ref
    out = tmp_path / "om"
    res = _cli("convert", path, "--soc", "Ascend310P3", "-o", out, "--precision-mode", "must_keep_origin_dtype",
               "--seq-len", 8, "--max-len", 32, "--no-verify", env=env)
    assert res.exit_code == 0, res.output
    res = _cli("generate", out, "--backend", "sim", "--prompt-ids", ids, "--output-ids", "--max-new-tokens", n,
               env=env)
    assert res.exit_code == 0, res.output
    assert [int(t) for t in res.output.strip().splitlines()[-1].split(",")] == ref


def test_port_gguf_to_mindspore(tiny_gguf, tmp_path):
    pytest.importorskip("mindspore")
    env = {"ASCEND_ADAPT_CACHE": str(tmp_path / "cache")}
    res = _cli("port", tiny_gguf[0], "--to", "mindspore", "-o", tmp_path / "ms", "--no-progress", env=env)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ms" / "config.json").is_file()


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_qwen_gguf_equals_transformers(arch, tmp_path, monkeypatch):
    """Qwen2 (q/k/v biases) and Qwen3 (q/k norms, head_dim ≠ hidden/heads) GGUF files: our tensors
    are transformers' dequantization bit for bit (no Q/K permute for these), and the torch backend
    on the .gguf greedily gives transformers' tokens."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    torch = pytest.importorskip("torch")
    from ascend_adapt.backends import get_backend
    from ascend_adapt.runtime.generate import greedy_tokens

    path = tmp_path / f"tiny-{arch}.gguf"
    # transformers 5.x's GGUF loader keeps Qwen3Config's default head_dim (128) whatever
    # attention.key_length says, so its golden needs head_dim 128 here; our reader reads key_length
    # (test_qwen3_gguf_head_dim_from_key_length)
    spec, _ = write_tiny_gguf(path, arch=arch, **({"head_dim": 128} if arch == "qwen3" else {}))
    ck = GGUFCheckpoint(path)
    got = ADAPTERS.get(arch).spec_from_config(ck.config)
    assert got.norm_eps == pytest.approx(spec.norm_eps, rel=2 ** -23)  # stored as a float32 in GGUF
    assert dataclasses.replace(got, norm_eps=spec.norm_eps) == spec
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name,
                                                              dtype=torch.float32).eval()
    sd = model.state_dict()
    assert set(ck.names()) == set(sd) - {"lm_head.weight"}
    for name in ck.names():
        np.testing.assert_array_equal(ck.get(name), sd[name].numpy(), err_msg=name)
    monkeypatch.setenv("ASCEND_ADAPT_CACHE", str(tmp_path / "cache"))
    ours = get_backend("torch", resolve_source(path))
    prompt = [5, 17, 42, 99, 7, 250]
    with torch.no_grad():
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=None,
                             pad_token_id=0)[0, len(prompt):].tolist()
    assert np.asarray(greedy_tokens(ours, np.asarray([prompt]), 8)).reshape(-1).tolist() == ref


def test_qwen3_gguf_head_dim_from_key_length(tmp_path):
    """Qwen3's head_dim is its own key (128 on the released models, ≠ hidden/heads): read from
    `qwen3.attention.key_length`, the shapes and the spec follow it."""
    path = tmp_path / "tiny-qwen3.gguf"
    spec, canon = write_tiny_gguf(path, arch="qwen3")
    assert spec.head_dim == 32 != spec.hidden_size // spec.num_heads
    ck = GGUFCheckpoint(path)
    got = ADAPTERS.get("qwen3").spec_from_config(ck.config)
    assert dataclasses.replace(got, norm_eps=spec.norm_eps) == spec
    assert ck.info("model.layers.0.self_attn.q_proj.weight").shape == (spec.q_dim, spec.hidden_size)
    np.testing.assert_array_equal(ck.get("model.layers.1.self_attn.k_norm.weight"),
                                  canon["layers.1.attn.k_norm.weight"])  # F32: stored as is


def test_row_block_dequantization_equals_whole_tensor(tiny_gguf, monkeypatch):
    """Dequantizing in row blocks (a partial last block included) gives the one-block result."""
    from ascend_adapt.checkpoint import gguf_io

    path = tiny_gguf[0]
    whole = {n: a for n, a in GGUFCheckpoint(path).iter_tensors()}
    monkeypatch.setattr(gguf_io, "_DEQUANT_ROWS", 7)  # 404 embedding rows = 57 blocks + 5
    for n, a in GGUFCheckpoint(path).iter_tensors():
        np.testing.assert_array_equal(a, whole[n], err_msg=n)


@pytest.mark.parametrize("peak_mib, verdict", [(455, "within"), (1500, "OVER")])
def test_gguf_bench_prose_follows_the_figures(peak_mib, verdict):
    """tools/bench/gguf_convert.py's text is a pure function of its figures."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "bench"))
    import gguf_convert

    mib = 2 ** 20
    fig = {"unpack": {"peak_rss": (peak_mib - 2) * mib, "seconds": 9.0},
           "convert": {"peak_rss": peak_mib * mib, "seconds": 20.0}}
    text = gguf_convert.prose(fig, file_bytes=94 * mib, fp32_bytes=513 * mib)
    assert f"The highest peak RSS is {peak_mib} MiB, {verdict} the 1024 MiB bound" in text
    assert f"| convert | {peak_mib} | 20.0 |" in text and "+2 MiB" in text


def test_rope_scaling_is_refused_not_ignored(tmp_path):
    """A Llama-3.1 GGUF (rope_freqs factors) computes other rotary angles: refused, naming it."""
    write_tiny_gguf(tmp_path / "l31.gguf", rope_freqs=True)
    with pytest.raises(UnsupportedError, match=r"rope scaling \(rope_freqs.weight\) is not supported"):
        open_checkpoint(tmp_path / "l31.gguf")
