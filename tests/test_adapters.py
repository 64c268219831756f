"""Adapters: registry lookups, normalized specs from real configs, weight tables and transforms
(bit-exact round trips over every tiny layout), and coverage: every adapter has a tiny model
that runs through the torch backend."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ascend_adapt.checkpoint import open_checkpoint
from ascend_adapt.errors import ConfigError, RegistryError, UnsupportedError
from ascend_adapt.model_zoo import ADAPTERS, Adapter, ModelSpec, adapter_for_config, register_adapter
from ascend_adapt.model_zoo.chatglm.adapter import merge_glm_qkv, split_glm_qkv
from ascend_adapt.model_zoo.llama.adapter import hf_to_meta_rows, meta_to_hf_rows
from ascend_adapt.model_zoo.tiny import LAYOUTS
from tolerances import fp32_atol

# ---- real configs (reference model_architectures.md §1.1, §3.3) -------------------------------------

CHATGLM_6B = {
    "architectures": ["ChatGLMModel"], "model_type": "chatglm", "hidden_size": 4096, "num_layers": 28,
    "num_attention_heads": 32, "inner_hidden_size": 16384, "vocab_size": 130528,
    "max_sequence_length": 2048, "layernorm_epsilon": 1e-05, "position_encoding_2d": True,
    "bos_token_id": 130004, "eos_token_id": 130005, "mask_token_id": 130000, "gmask_token_id": 130001,
    "pad_token_id": 3, "use_cache": True, "torch_dtype": "float16",
}


def _llama2(hidden, inter, layers, heads, kv):
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
            "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv, "vocab_size": 32000, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
            "max_position_embeddings": 4096, "hidden_act": "silu", "tie_word_embeddings": False,
            "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float16"}


LLAMA2_7B = _llama2(4096, 11008, 32, 32, 32)
LLAMA2_70B = _llama2(8192, 28672, 80, 64, 8)


# ---- 1. registry ------------------------------------------------------------------------------------

@pytest.mark.parametrize("config, name", [
    ({"architectures": ["LlamaForCausalLM"]}, "llama"),
    ({"architectures": ["ChatGLMModel"]}, "chatglm"),
    ({"architectures": ["ChatGLMForConditionalGeneration"]}, "chatglm"),
    ({"model_type": "llama"}, "llama"),
    ({"model_type": "chatglm"}, "chatglm"),
    ({"architectures": ["SomethingElse"], "model_type": "llama"}, "llama"),
    ({"dim": 4096, "n_layers": 32, "n_heads": 32}, "llama"),  # Meta params.json
])
def test_adapter_lookup(config, name):
    assert adapter_for_config(config).name == name


def test_unknown_architecture_lists_supported():
    with pytest.raises(UnsupportedError) as e:
        adapter_for_config({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    assert "GPT2LMHeadModel" in str(e.value) and "LlamaForCausalLM" in str(e.value)
    assert "adding_an_architecture" in str(e.value)


def test_registering_twice_raises():
    with pytest.raises(RegistryError, match="already registered"):
        ADAPTERS.register("llama", object())

    class Clash(Adapter):
        name = "clash-test"
        architectures = ("LlamaForCausalLM",)

    with pytest.raises(ConfigError, match="already handled by adapter 'llama'"):
        register_adapter(Clash)
    assert "clash-test" not in ADAPTERS


# ---- 2. normalized spec --------------------------------------------------------------------------------

def test_chatglm_6b_spec_from_the_real_config():
    s = ADAPTERS.get("chatglm").spec_from_config(CHATGLM_6B)
    assert (s.hidden_size, s.num_layers, s.num_heads, s.num_kv_heads, s.head_dim) == (4096, 28, 32, 32, 128)
    assert (s.intermediate_size, s.vocab_size, s.max_position) == (16384, 130528, 2048)
    assert s.ffn == "gelu_tanh" and s.norm == "layernorm" and s.residual == "glm_alpha"
    assert s.residual_alpha == math.sqrt(56)  # exact: the same correctly rounded sqrt(2·28)
    assert s.rotary == "glm2d" and s.rotary_dim == 64 and s.rotary_table_dtype == "float16"
    assert s.attn_layer_scaling and s.mask_fill == -10000.0 and s.kv_layout == "sbhd"
    assert s.qkv_bias and s.o_bias and s.mlp_bias
    assert s.tie_word_embeddings and s.tied_source == "lm_head.weight"
    assert (s.bos_token_id, s.eos_ids, s.pad_token_id, s.mask_token_id, s.gmask_token_id) == \
        (130004, (130005,), 3, 130000, 130001)
    # 368 checkpoint keys − 28 inv_freq buffers = 340 tensors; fused QKV weight/bias split in 3
    shapes = s.canonical_shapes()
    assert len(shapes) == 340 + 28 * 2 * 2
    assert sum(math.prod(v) for v in shapes.values()) == 6_707_929_984 - 28 * 32  # §1.2, without inv_freq
    # α does not follow num_layers (§1.12)
    tiny = ADAPTERS.get("chatglm").spec_from_config(dict(CHATGLM_6B, num_layers=2))
    assert tiny.residual_alpha == s.residual_alpha


def test_llama2_specs_from_real_configs():
    s7 = ADAPTERS.get("llama").spec_from_config(LLAMA2_7B)
    assert s7.param_count() == 6_738_415_616
    assert s7.ffn == "swiglu" and s7.norm == "rmsnorm" and s7.rotary == "half_split" and s7.rotary_dim == 128
    assert s7.residual == "prenorm" and s7.residual_alpha == 1.0 and s7.mask_fill == float("-inf")
    assert not s7.tie_word_embeddings and s7.eos_ids == (2,) and s7.bos_token_id == 1
    s70 = ADAPTERS.get("llama").spec_from_config(LLAMA2_70B)
    assert (s70.num_kv_heads, s70.kv_group, s70.kv_dim) == (8, 8, 1024)
    assert s70.canonical_shapes()["layers.0.attn.k.weight"] == (1024, 8192)
    # fp16 KV cache: 2 · 80 layers · 1 · 4096 · 1024 · 2 bytes
    assert s70.kv_cache_bytes(1, 4096) == 2 * 80 * 4096 * 1024 * 2


def test_spec_dict_round_trip():
    for cfg, arch in ((CHATGLM_6B, "chatglm"), (LLAMA2_70B, "llama")):
        s = ADAPTERS.get(arch).spec_from_config(cfg)
        assert ModelSpec.from_dict(s.to_dict()) == s
    s = ADAPTERS.get("llama").spec_from_config(dict(LLAMA2_7B, eos_token_id=[2, 32000]))
    assert ModelSpec.from_dict(s.to_dict()).eos_ids == (2, 32000)


@pytest.mark.parametrize("change, what", [
    ({"multi_query_attention": True, "padded_vocab_size": 65024}, "ChatGLM2"),
    ({"quantization_bit": 4}, "quantization_bit"),
    ({"pre_seq_len": 128}, "pre_seq_len"),
    ({"position_encoding_2d": False}, "position_encoding_2d"),
])
def test_chatglm_unsupported_variants(change, what):
    with pytest.raises(UnsupportedError, match=what):
        ADAPTERS.get("chatglm").spec_from_config(dict(CHATGLM_6B, **change))


def test_llama_unsupported_variants():
    llama = ADAPTERS.get("llama")
    with pytest.raises(UnsupportedError, match="rope scaling"):
        llama.spec_from_config(dict(LLAMA2_7B, rope_scaling={"type": "linear", "factor": 2.0}))
    with pytest.raises(ConfigError, match="multiple"):
        llama.spec_from_config(dict(LLAMA2_7B, num_key_value_heads=5))


# ---- 3. weight tables and transforms ---------------------------------------------------------------

def test_glm_qkv_split_is_per_head_interleaved():
    heads, D = 4, 3
    w = np.arange(heads * 3 * D)[:, None] * np.ones((1, 2), np.int64)
    q, k, v = split_glm_qkv(w, heads)
    for h in range(heads):  # rows [h·3D, h·3D+D) are Q of head h, then K, then V
        assert q[h * D:(h + 1) * D, 0].tolist() == list(range(h * 3 * D, h * 3 * D + D))
        assert k[h * D:(h + 1) * D, 0].tolist() == list(range(h * 3 * D + D, h * 3 * D + 2 * D))
        assert v[h * D:(h + 1) * D, 0].tolist() == list(range(h * 3 * D + 2 * D, h * 3 * D + 3 * D))
    assert np.array_equal(merge_glm_qkv(q, k, v, heads), w)
    b = np.arange(heads * 3 * D)  # the bias follows the same layout
    assert np.array_equal(merge_glm_qkv(*split_glm_qkv(b, heads), heads), b)


def test_meta_hf_qk_permutation():
    heads, D = 2, 8
    meta = np.arange(heads * D)[:, None] * np.ones((1, 3), np.int64)
    hf = meta_to_hf_rows(meta, heads)
    for h in range(heads):  # HF row h·D + j·D/2 + i ← Meta row h·D + 2i + j
        for j in range(2):
            for i in range(D // 2):
                assert hf[h * D + j * D // 2 + i, 0] == h * D + 2 * i + j
    assert np.array_equal(hf_to_meta_rows(hf, heads), meta)


_ROUND_TRIPS = [(a, lay) for a in ("llama", "chatglm") for lay in LAYOUTS if not (lay == "meta" and a != "llama")]


@pytest.mark.parametrize("arch, layout", _ROUND_TRIPS)
def test_source_canonical_source_round_trip_is_bit_exact(tiny_dir, arch, layout):
    reader = open_checkpoint(tiny_dir(arch, layout))
    adapter = adapter_for_config(reader.config)
    spec = adapter.spec_from_config(reader.config)
    table_layout = "meta" if layout == "meta" else "hf"
    canon = dict(adapter.iter_canonical(reader, spec, table_layout))
    back = dict(adapter.iter_source(canon.__getitem__, spec, table_layout, available=canon.__contains__))
    expected = {n for n in reader.infos() if not adapter.is_ignored(n)}
    assert set(back) == expected
    for name, arr in back.items():
        src = reader.get(name)
        assert arr.dtype == src.dtype and arr.shape == src.shape, name
        assert np.ascontiguousarray(arr).tobytes() == src.tobytes(), name


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_round_trip_keeps_half_dtypes(tiny_dir, dtype):
    reader = open_checkpoint(tiny_dir("chatglm", "safetensors", dtype=dtype))
    adapter = adapter_for_config(reader.config)
    spec = adapter.spec_from_config(reader.config)
    canon = dict(adapter.iter_canonical(reader, spec))
    for name, arr in adapter.iter_source(canon.__getitem__, spec, available=canon.__contains__):
        assert np.ascontiguousarray(arr).tobytes() == reader.get(name).tobytes(), name
    assert str(canon["layers.0.attn.q.weight"].dtype) == dtype


def test_mindformers_tables_round_trip():
    for arch, cfg in (("llama", LLAMA2_7B), ("chatglm", CHATGLM_6B)):
        adapter = ADAPTERS.get(arch)
        small = adapter.spec_from_config(adapter.tiny_config())
        from ascend_adapt.model_zoo.tiny import random_canonical_weights

        canon = random_canonical_weights(small, seed=2)
        ms = dict(adapter.iter_source(canon.__getitem__, small, "mindformers", available=canon.__contains__))
        assert any("embedding" in n for n in ms)
        hf = dict(adapter.iter_source(canon.__getitem__, small, "hf", available=canon.__contains__))
        assert len(ms) == len(hf)
        assert sorted(a.tobytes() for a in ms.values()) == sorted(a.tobytes() for a in hf.values())


# ---- coverage: every registered architecture has a tiny model that runs on the golden ---------------

def exercise_tiny_model(name: str, out_dir) -> None:
    """Build `name`'s tiny checkpoint and run it through the torch backend (full + cached)."""
    from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint
    from ascend_adapt.runtime.generate import greedy_tokens
    from ascend_adapt.backends.torch.session import TorchBackend

    adapter = ADAPTERS.get(name)
    spec = adapter.spec_from_config(adapter.tiny_config())
    assert spec.arch == name
    from ascend_adapt.runtime.session import LMBackend, LMSession

    d = make_tiny_checkpoint(out_dir, name)
    be = TorchBackend(d)
    assert isinstance(be, LMBackend) and isinstance(be.new_session(1, 8), LMSession)
    ids = [5, 6, 7, 8]
    if spec.rotary == "glm2d":
        ids += [be.spec.gmask_token_id, be.spec.bos_token_id]
    full = be.full_logits(np.array([ids]))
    assert full.shape == (1, len(ids), spec.vocab_size) and np.isfinite(full).all()
    _, logits = greedy_tokens(be, np.array([ids]), 3, return_logits=True)
    # the cached first step vs the full pass, both fp32 torch: 2·u·Σn·max|logits| over ≤ len(ids) + 3
    # keys (tests/tolerances.py: ≈ 1.4e-4·max|logits|; it refuses a bound that would not catch a
    # 1e-1 error). A stale cache slot or a wrong position is O(1).
    tol = fp32_atol(be.spec, np.abs(full).max(), keys=len(ids) + 3)
    np.testing.assert_allclose(logits[:, 0], full[:, -1], rtol=0, atol=tol)


@pytest.mark.parametrize("name", ADAPTERS.names())
def test_every_adapter_has_a_tiny_model_that_runs(name, tmp_path):
    pytest.importorskip("torch")
    try:
        exercise_tiny_model(name, tmp_path / name)
    except NotImplementedError:
        pytest.fail(f"adapter '{name}' is registered without a tiny test model (tiny_config)")


def test_coverage_check_catches_an_adapter_without_tiny_model(tmp_path):
    class NoTiny(Adapter):
        name = "no-tiny-test"

    ADAPTERS.register(NoTiny.name, NoTiny())
    try:
        with pytest.raises(NotImplementedError):
            exercise_tiny_model(NoTiny.name, tmp_path / "x")
    finally:
        ADAPTERS.unregister(NoTiny.name)


def test_a_new_family_gets_a_tiny_checkpoint_and_a_clear_error_without_a_reference(tmp_path):
    """An adapter outside the built-in families: tiny checkpoints come with its tokenizer kind, and
    the torch backend says what to add instead of raising a raw ModuleNotFoundError."""
    from ascend_adapt.errors import UnsupportedError
    from ascend_adapt.model_zoo import base
    from ascend_adapt.model_zoo.llama.adapter import LlamaAdapter
    from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint
    from ascend_adapt.backends import get_backend

    class ToyAdapter(LlamaAdapter):
        name = "toyllama"
        architectures = ("ToyLlamaForCausalLM",)
        model_types = ("toyllama",)

        def tiny_config(self):
            return {**super().tiny_config(), "architectures": ["ToyLlamaForCausalLM"], "model_type": "toyllama"}

    base.register_adapter(ToyAdapter)
    try:
        d = make_tiny_checkpoint(tmp_path / "toy", "toyllama")
        assert (d / "tokenizer.model").is_file()
        with pytest.raises(UnsupportedError, match="has no torch reference.*model_zoo.toyllama.torch_model"):
            get_backend("torch", d)
    finally:
        base.ADAPTERS.unregister("toyllama")
        base._BY_ARCH.pop("ToyLlamaForCausalLM", None)
        base._BY_TYPE.pop("toyllama", None)
