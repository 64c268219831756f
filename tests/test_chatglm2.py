"""ChatGLM2-6B / ChatGLM3-6B (issue 15): adapter and registry, weight table, rotary precision, the
torch reference against hand-written numpy, every route on tiny random models, tokenizer ids on the
real file, port round trip, convert.

Facts: ../shared/reference/model_architectures.md §2 (and §4.3 for MindFormers names).

Tolerances (tests/tolerances.py, never tuned to a run): fp32 backends against the fp32 torch golden
within 2·u·Σn·max|logits| (+ MindSpore's CPU softmax / sigmoid error per layer), ≈ 1.5e-4·max|logits|
on these models (measured ~1e-5); greedy tokens identical over 32 steps; fp16 compute: per-layer
cosine ≥ 1 − rel²/2 with rel = fp16_rel(spec) (+ 2·P·2^-11 for ChatGLM2's fp16 rotary angles).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tolerances import MS_SIGMOID_REL, MS_SOFTMAX_REL, cosine_floor, fp16_rel, fp32_atol  # noqa: E402

from ascend_adapt.errors import ConfigError, UnsupportedError  # noqa: E402
from ascend_adapt.model_zoo.base import ADAPTERS, adapter_for_config  # noqa: E402
from ascend_adapt.model_zoo.chatglm2.adapter import glm_version  # noqa: E402
from ascend_adapt.model_zoo.chatglm2.torch_model import ChatGLM2ForCausalLM  # noqa: E402
from ascend_adapt.model_zoo.tiny import random_canonical_weights, tiny_config  # noqa: E402
from ascend_adapt.model_zoo.tokenizers import ChatGLM2Tokenizer, left_pad, load_tokenizer  # noqa: E402
from ascend_adapt.operators.rotary import rotary_table  # noqa: E402
from ascend_adapt.runtime.generate import greedy_tokens  # noqa: E402
from ascend_adapt.runtime.lm_inputs import prefill_inputs  # noqa: E402

ARCHS = ("chatglm2", "chatglm3")
N_NEW = 32

# THUDM/chatglm2-6b config.json (§2; chatglm3-6b differs in seq_length and _name_or_path)
CHATGLM2_6B = {
    "_name_or_path": "THUDM/chatglm2-6b", "model_type": "chatglm", "architectures": ["ChatGLMModel"],
    "add_bias_linear": False, "add_qkv_bias": True, "apply_query_key_layer_scaling": True,
    "apply_residual_connection_post_layernorm": False, "attention_softmax_in_fp32": True,
    "ffn_hidden_size": 13696, "fp32_residual_connection": False, "hidden_size": 4096, "kv_channels": 128,
    "layernorm_epsilon": 1e-05, "multi_query_attention": True, "multi_query_group_num": 2,
    "num_attention_heads": 32, "num_layers": 28, "original_rope": True, "padded_vocab_size": 65024,
    "post_layer_norm": True, "rmsnorm": True, "seq_length": 32768, "tie_word_embeddings": False,
    "eos_token_id": 2, "pad_token_id": 0, "torch_dtype": "float16",
}
CHATGLM3_6B = dict(CHATGLM2_6B, _name_or_path="THUDM/chatglm3-6b", seq_length=8192)


# ---- adapter, registry, weight table ------------------------------------------------------------------

def test_real_configs_are_claimed_and_read():
    for cfg, version, table in ((CHATGLM2_6B, 2, "model_dtype"), (CHATGLM3_6B, 3, "float32")):
        adapter = adapter_for_config(cfg)  # ChatGLMModel / "chatglm", like ChatGLM-6B: claimed by its v2 keys
        assert adapter.name == f"chatglm{version}"
        s = adapter.spec_from_config(cfg)
        assert s.arch == f"chatglm{version}" and s.extra["glm_version"] == version and s.rotary_table_dtype == table
        assert (s.hidden_size, s.num_layers, s.num_heads, s.num_kv_heads, s.head_dim) == (4096, 28, 32, 2, 128)
        assert (s.intermediate_size, s.vocab_size, s.kv_group) == (13696, 65024, 16)
        assert s.ffn == "swiglu" and s.norm == "rmsnorm" and s.residual == "prenorm"
        assert s.rotary == "interleaved" and s.rotary_dim == 64 and s.rope_theta == 10000.0
        assert s.qkv_bias and not s.o_bias and not s.mlp_bias and not s.tie_word_embeddings
        assert s.eos_ids == (2,) and s.pad_token_id == 0 and (s.gmask_token_id, s.bos_token_id) == (64790, 64792)
        # §2: 200 checkpoint keys, 6,243,584,032 parameters in fp16 (12,487,168,064 B) — the 32 of them
        # in the rotary inv_freq buffer, which carries no parameter
        shapes = adapter.source_shapes(s)
        assert len(shapes) + 1 == 200
        assert shapes["transformer.encoder.layers.0.self_attention.query_key_value.weight"] == (4608, 4096)
        assert shapes["transformer.encoder.layers.0.self_attention.query_key_value.bias"] == (4608,)
        assert shapes["transformer.encoder.layers.27.mlp.dense_h_to_4h.weight"] == (27392, 4096)
        assert shapes["transformer.encoder.layers.27.mlp.dense_4h_to_h.weight"] == (4096, 13696)
        assert shapes["transformer.output_layer.weight"] == (65024, 4096)
        assert s.param_count() + 32 == 6_243_584_032
        assert adapter.is_ignored("transformer.rotary_pos_emb.inv_freq")
    assert s.max_position == 8192
    assert adapter_for_config(CHATGLM2_6B).spec_from_config(CHATGLM2_6B).max_position == 32768
    # one family: either adapter reads either version from the config's fields
    assert ADAPTERS.get("chatglm2").spec_from_config(CHATGLM3_6B) == s
    # ChatGLM-6B (v1) configs still go to their own adapter
    assert adapter_for_config(ADAPTERS.get("chatglm").tiny_config()).name == "chatglm"
    # the version: _name_or_path, else rope_ratio (ChatGLM3 revisions only), else ChatGLM2
    bare = {k: v for k, v in CHATGLM2_6B.items() if k != "_name_or_path"}
    assert glm_version(bare) == 2 and glm_version(dict(bare, rope_ratio=50)) == 3
    s32k = adapter_for_config(dict(bare, rope_ratio=50)).spec_from_config(dict(bare, rope_ratio=50))
    assert s32k.arch == "chatglm3" and s32k.rope_theta == 500000.0 and s32k.rotary_table_dtype == "float32"


@pytest.mark.parametrize("change, error, what", [
    ({"rmsnorm": False}, UnsupportedError, "rmsnorm"),
    ({"add_bias_linear": True}, UnsupportedError, "add_bias_linear"),
    ({"apply_residual_connection_post_layernorm": True}, UnsupportedError, "post"),
    ({"quantization_bit": 4}, UnsupportedError, "quantization_bit"),
    ({"pre_seq_len": 128}, UnsupportedError, "pre_seq_len"),
    ({"multi_query_group_num": 3}, ConfigError, "multi_query_group_num"),
    ({"rmsnorm": "true"}, ConfigError, "rmsnorm"),
])
def test_unsupported_and_bad_configs_name_the_key(change, error, what):
    with pytest.raises(error, match=what):
        adapter_for_config(dict(CHATGLM2_6B, **change)).spec_from_config(dict(CHATGLM2_6B, **change))


def test_estimate_reads_chatglm2():
    from ascend_adapt.estimate import estimate

    r = estimate(CHATGLM2_6B, ["Ascend310P3"], seq_len=2048)
    assert r.params == 6_243_584_000
    assert r.kv_cache_bytes == 2 * 28 * 1 * 2048 * (2 * 128) * 2  # 2 KV groups: MQA keeps the cache small


def test_fused_tensors_split_as_the_original_lays_them_out():
    adapter = ADAPTERS.get("chatglm2")
    spec = adapter.spec_from_config(tiny_config("chatglm2"))
    H, QD, KD, I = spec.hidden_size, spec.q_dim, spec.kv_dim, spec.intermediate_size
    entries = {e.source: e for e in adapter.entries(spec)}
    qkv = np.arange((QD + 2 * KD) * H, dtype=np.float32).reshape(QD + 2 * KD, H)
    q, k, v = adapter.split(entries["transformer.encoder.layers.0.self_attention.query_key_value.weight"], qkv, spec)
    # contiguous blocks [Q | K | V], not per-head interleaved (§2)
    assert np.array_equal(q, qkv[:QD]) and np.array_equal(k, qkv[QD:QD + KD]) and np.array_equal(v, qkv[QD + KD:])
    h4h = np.arange(2 * I * H, dtype=np.float32).reshape(2 * I, H)
    gate, up = adapter.split(entries["transformer.encoder.layers.0.mlp.dense_h_to_4h.weight"], h4h, spec)
    assert np.array_equal(gate, h4h[:I]) and np.array_equal(up, h4h[I:])  # silu(first half) · second half
    e = entries["transformer.encoder.layers.0.mlp.dense_h_to_4h.weight"]
    assert np.array_equal(adapter.merge(e, (gate, up), spec), h4h)


def test_tiny_checkpoint_has_the_real_names_and_tokenizer_files(tmp_path):
    from ascend_adapt.checkpoint import open_checkpoint
    from ascend_adapt.cli.main import main as cli

    for arch, version in (("chatglm2", 2), ("chatglm3", 3)):
        d = tmp_path / arch
        assert cli(["make-tiny", str(d), "--arch", arch]) == 0
        cfg = json.loads((d / "config.json").read_text())
        assert cfg["architectures"] == ["ChatGLMModel"] and cfg["_name_or_path"] == f"THUDM/chatglm{version}-6b"
        reader = open_checkpoint(d)
        spec = ADAPTERS.get("chatglm2").spec_from_config(cfg)
        infos = reader.infos()
        expected = ADAPTERS.get("chatglm2").source_shapes(spec)
        assert {n: tuple(i.shape) for n, i in infos.items() if n in expected} == expected
        assert set(infos) - set(expected) == {"transformer.rotary_pos_emb.inv_freq"}
        tc = json.loads((d / "tokenizer_config.json").read_text())
        assert tc["tokenizer_class"] == "ChatGLMTokenizer" and (d / "tokenizer.model").is_file()
        tok = load_tokenizer(d)
        assert isinstance(tok, ChatGLM2Tokenizer) and tok.version == version
        # the special tokens follow the pieces, as the original tokenizer numbers them
        n = tok.sp.get_piece_size()
        assert (tok.mask_id, tok.gmask_id, tok.bos_id) == (n, n + 1, n + 3) == (
            cfg["mask_token_id"], cfg["gmask_token_id"], cfg["bos_token_id"])
        assert tok.vocab_size == n + (9 if version == 3 else 5) <= cfg["padded_vocab_size"]
        assert tok.sp.piece_to_id("[gMASK]") == tok.sp.unk_id()  # not a trained piece
        ids = tok.encode_chat("Hello world")
        assert ids[:2] == [tok.gmask_id, tok.bos_id] and max(ids) < cfg["padded_vocab_size"]


# ---- rotary precision (§2) -------------------------------------------------------------------------------

def _original_rope_cache(rows: int, n_elem: int, model_dtype, version: int, base: float = 10000.0):
    """`RotaryEmbedding.forward_impl` of the original, from the notes (§2), in its ops and dtypes:
    ChatGLM2 builds theta and the positions in the model's dtype (the inv_freq buffer's, which
    follows the model), ChatGLM3 in torch.float; the outer product, then `.float()`, cos/sin in
    fp32, cast to the model's dtype. cos/sin are taken correctly rounded to fp32 (float64, rounded
    once), the table every path shares; torch's own fp32 cos/sin are within an ulp of it."""
    dt = model_dtype if version == 2 else torch.float
    theta = 1.0 / (base ** (torch.arange(0, n_elem, 2, dtype=dt) / n_elem))
    seq_idx = torch.arange(rows, dtype=dt)
    idx_theta = torch.outer(seq_idx, theta).float()
    exact = (idx_theta.double().cos().float().to(model_dtype), idx_theta.double().sin().float().to(model_dtype))
    return exact, (torch.cos(idx_theta).to(model_dtype), torch.sin(idx_theta).to(model_dtype))


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_rotary_table_is_the_originals(version, dtype):
    rows, n_elem = 4097, 64
    tdt = getattr(torch, dtype)
    (cos_x, sin_x), (cos_t, sin_t) = _original_rope_cache(rows, n_elem, tdt, version)
    rule = "model_dtype" if version == 2 else "float32"
    cos, sin = rotary_table(rows, n_elem, 10000.0, "interleaved", rule, compute_dtype=dtype)
    assert cos.shape == (rows, n_elem // 2) and cos.dtype == np.dtype(dtype)
    assert np.array_equal(cos, cos_x.numpy()) and np.array_equal(sin, sin_x.numpy())  # bit-exact
    for ours, theirs in ((cos, cos_t.numpy()), (sin, sin_t.numpy())):
        ulp = np.spacing(np.abs(ours)).astype(np.float64)
        assert (np.abs(ours.astype(np.float64) - theirs.astype(np.float64)) <= ulp).all()
    # the torch reference holds exactly this table for its compute dtype
    cfg = tiny_config("chatglm2" if version == 2 else "chatglm3")
    spec = ADAPTERS.get("chatglm2").spec_from_config(cfg)
    model = ChatGLM2ForCausalLM(spec, dtype)
    want = rotary_table(spec.max_position + 1, spec.rotary_dim, 10000.0, "interleaved", rule, compute_dtype=dtype)
    assert np.array_equal(model.cos.numpy(), want[0]) and np.array_equal(model.sin.numpy(), want[1])


def test_chatglm2_fp16_angles_are_its_bug_and_chatglm3_fixed_it():
    v2, _ = rotary_table(4097, 64, 10000.0, "interleaved", "model_dtype", compute_dtype="float16")
    v3, _ = rotary_table(4097, 64, 10000.0, "interleaved", "float32", compute_dtype="float16")
    d = np.abs(v2.astype(np.float64) - v3.astype(np.float64))
    # fp16 angles: ≤ P·2^-11 rad off at positions ≤ P (one rounding), so cos by about that much;
    # beyond 2048 the fp16 positions themselves round (ChatGLM3's fix, §2) and cos is O(1) off
    assert d[:64].max() <= 64 * 2.0 ** -11 + 2.0 ** -10 and d[2049:].max() > 1.0
    c32, _ = rotary_table(4097, 64, 10000.0, "interleaved", "model_dtype", compute_dtype="float32")
    f32, _ = rotary_table(4097, 64, 10000.0, "interleaved", "float32", compute_dtype="float32")
    assert np.array_equal(c32, f32)  # in an fp32 model both versions compute in fp32


# ---- the documented math, by hand in numpy ---------------------------------------------------------------

def test_single_layer_matches_handwritten_numpy():
    """Layer 1 of the tiny ChatGLM2 from §2, in float64: RMSNorm, [Q|K|V] with bias, interleaved
    rotary on the first half of each head, query head h on KV group h // (heads/groups), causal
    softmax(q·kᵀ/√D), dense without bias, SwiGLU silu(first half)·second half."""
    spec = ADAPTERS.get("chatglm2").spec_from_config(tiny_config("chatglm2"))
    w = random_canonical_weights(spec, seed=3)
    model = ChatGLM2ForCausalLM(spec, "float32").load_canonical(w.items())
    g = {k.split("layers.1.")[1]: v.astype(np.float64) for k, v in w.items() if k.startswith("layers.1.")}
    S, H, nh, ng, D, rd = 6, spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.rotary_dim
    x = np.random.default_rng(0).standard_normal((S, H))
    ids = np.array([spec.gmask_token_id, spec.bos_token_id, 11, 12, 13, 14])
    step, _ = prefill_inputs(spec, ids[None], None, S)
    assert step.positions[0].tolist() == list(range(S))  # 1-D positions, [gMASK] sop included

    def rms(v, wt):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + spec.norm_eps) * wt

    inv = 1.0 / 10000 ** (np.arange(0, rd, 2) / rd)
    ang = np.arange(S)[:, None] * inv[None]  # [S, rd/2]

    def rope(t):  # t [S, heads, D]: pairs (2i, 2i+1) of the first rd dims
        out = t.copy()
        e, o = t[..., 0:rd:2], t[..., 1:rd:2]
        c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
        out[..., 0:rd:2], out[..., 1:rd:2] = e * c - o * s, o * c + e * s
        return out

    a = rms(x, g["attn_norm.weight"])
    q = rope((a @ g["attn.q.weight"].T + g["attn.q.bias"]).reshape(S, nh, D))
    k = rope((a @ g["attn.k.weight"].T + g["attn.k.bias"]).reshape(S, ng, D))
    v = (a @ g["attn.v.weight"].T + g["attn.v.bias"]).reshape(S, ng, D)
    grp = np.arange(nh) // (nh // ng)
    scores = np.einsum("shd,thd->hst", q, k[:, grp]) / np.sqrt(D)
    scores = np.where(np.tril(np.ones((S, S), bool))[None], scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    h = x + np.einsum("hst,thd->shd", p, v[:, grp]).reshape(S, nh * D) @ g["attn.o.weight"].T
    m = rms(h, g["mlp_norm.weight"])
    gate, up = m @ g["mlp.gate.weight"].T, m @ g["mlp.up.weight"].T
    expected = h + (gate / (1 + np.exp(-gate)) * up) @ g["mlp.down.weight"].T

    cos = torch.nn.functional.embedding(torch.from_numpy(step.positions), model.cos).unsqueeze(2)
    sin = torch.nn.functional.embedding(torch.from_numpy(step.positions), model.sin).unsqueeze(2)
    got = model.layers[1](torch.from_numpy(x[None].astype(np.float32)), cos, sin,
                          torch.from_numpy(step.visible))[0].detach().numpy()
    # one layer in fp32 (torch) vs float64: 2·u·Σn·max|out| (tests/tolerances.py); a wrong group,
    # rotary pairing, half or bias is O(1e-1) or more
    np.testing.assert_allclose(got, expected, rtol=0,
                               atol=fp32_atol(spec, np.abs(expected).max(), keys=S, layers=1, head=False))


# ---- every route on the tiny random models ---------------------------------------------------------------

def _prompts(spec):
    """Two left-padded prompts in the family's format: [gMASK] sop + text ids."""
    rng = np.random.default_rng(1)
    bodies = [rng.integers(10, 300, 7).tolist(), rng.integers(10, 300, 3).tolist()]
    b = left_pad([[spec.gmask_token_id, spec.bos_token_id] + x for x in bodies], spec.pad_token_id)
    return b.input_ids, b.attention_mask


@pytest.fixture(scope="module")
def routes(tiny_dir, tiny_backend, tmp_path_factory):
    """routes(arch) -> (torch golden, ids, mask, ONNX export dir) on the unit-head tiny model."""
    from ascend_adapt.om_convert.builder import build_llm_onnx

    cache = {}

    def make(arch):
        if arch not in cache:
            golden = tiny_backend(arch)
            ids, mask = _prompts(golden.spec)
            out = tmp_path_factory.mktemp(f"glm2-{arch}") / "export"
            build_llm_onnx(tiny_dir(arch, unit_head=True), out, batch=2, seq_len=ids.shape[1],
                           max_len=ids.shape[1] + N_NEW, target="Ascend310P3", progress=False)
            cache[arch] = (golden, ids, mask, out)
        return cache[arch]

    return make


def _check_backend(golden, other, ids, mask, extra_rel=0.0):
    real = mask.astype(bool)
    want, got = golden.full_logits(ids, mask), other.full_logits(ids, mask)
    err = np.abs(got[real] - want[real]).max()
    tol = fp32_atol(golden.spec, np.abs(want[real]).max(), ids.shape[1], extra_rel=extra_rel)
    assert err <= tol, f"fp32 logits: max |Δ| {err:.3g} > {tol:.3g}"
    toks, logits = greedy_tokens(golden, ids, N_NEW, mask, return_logits=True)
    got_toks, got_logits = greedy_tokens(other, ids, N_NEW, mask, return_logits=True)
    assert got_toks.tolist() == toks.tolist()
    assert len(set(toks[0].tolist())) > 3  # varied tokens: the check is not vacuous
    keys = ids.shape[1] + N_NEW
    assert np.abs(got_logits - logits).max() <= fp32_atol(golden.spec, np.abs(logits).max(), keys,
                                                           extra_rel=extra_rel)
    return err


@pytest.mark.parametrize("arch", ARCHS)
def test_onnxruntime_and_simulator_match_the_golden(routes, arch):
    from ascend_adapt.backends import get_backend

    golden, ids, mask, export = routes(arch)
    _check_backend(golden, get_backend("onnxruntime", export), ids, mask)
    _check_backend(golden, get_backend("sim", export, precision_mode="must_keep_origin_dtype"), ids, mask)


@pytest.mark.parametrize("arch", ARCHS)
def test_simulator_force_fp16_tracks_every_layer(routes, arch):
    from ascend_adapt.backends import get_backend

    golden, ids, mask, export = routes(arch)
    sim = get_backend("sim", export, precision_mode="force_fp16")
    _, want = golden.full_logits(ids, mask, layer_outputs=True)
    got, got_layers = sim.full_logits(ids, mask, layer_outputs=True)
    real = mask.astype(bool)
    # fp16 weights + activations; ChatGLM2's table in fp16 has fp16 angles (≤ P·2^-11 rad off):
    # cosine ≥ 1 − rel²/2 (tests/tolerances.py), ≈ 0.9998 here — above the 0.999
    rel = fp16_rel(golden.spec, rotary_positions=ids.shape[1] if arch == "chatglm2" else 0)
    floor = max(cosine_floor(rel), 0.999)
    for name in want:
        a, b = got_layers[name][real].astype(np.float64).ravel(), want[name][real].astype(np.float64).ravel()
        c = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        assert c >= floor, f"{name}: cosine {c:.6f} < {floor:.6f}"
    assert not np.array_equal(got, golden.full_logits(ids, mask))  # fp16 really happened


@pytest.mark.mindspore
@pytest.mark.parametrize("arch", ARCHS)
def test_mindspore_matches_the_golden(routes, arch, tiny_dir):
    pytest.importorskip("mindspore")
    from ascend_adapt.backends import get_backend

    golden, ids, mask, _ = routes(arch)
    # MindSpore's CPU softmax and sigmoid (SiLU) are not correctly rounded (tests/tolerances.py)
    _check_backend(golden, get_backend("mindspore", tiny_dir(arch, unit_head=True)), ids, mask,
                   extra_rel=MS_SOFTMAX_REL + MS_SIGMOID_REL)
    ms16 = get_backend("mindspore", tiny_dir(arch, unit_head=True), dtype="float16", mode="pynative")
    _, want = golden.full_logits(ids, mask, layer_outputs=True)
    got = ms16.layer_outputs(ids, mask)
    real = mask.astype(bool)
    floor = cosine_floor(fp16_rel(golden.spec, rotary_positions=ids.shape[1] if arch == "chatglm2" else 0))
    for name in want:
        a, b = got[name][real].astype(np.float64).ravel(), want[name][real].astype(np.float64).ravel()
        assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) >= floor, name


@pytest.mark.mindspore
def test_port_round_trip_is_bit_exact_and_mindformers_names(tiny_dir, tmp_path):
    pytest.importorskip("mindspore")
    from ascend_adapt.checkpoint import open_checkpoint
    from ascend_adapt.port import port_to_hf, port_to_mindspore

    src = tiny_dir("chatglm3")
    ignored = ADAPTERS.get("chatglm2").is_ignored
    src_reader = open_checkpoint(src)
    want = {n: src_reader.get(n).tobytes() for n in src_reader.names() if not ignored(n)}
    for naming in ("ours", "mindformers"):
        ms_dir = port_to_mindspore(src, tmp_path / f"ms-{naming}", naming=naming, fmt="ckpt", progress=False)
        if naming == "mindformers":
            from ascend_adapt.port.ckpt import CkptReader

            names = set(CkptReader(ms_dir / "model.ckpt").names())
            assert "transformer.embedding.embedding_weight" in names  # §4.3: the one renamed tensor
            assert "transformer.encoder.layers.1.self_attention.query_key_value.weight" in names
        back = port_to_hf(ms_dir, tmp_path / f"hf-{naming}", progress=False)
        r = open_checkpoint(back)
        assert {n: r.get(n).tobytes() for n in r.names()} == want
        assert (back / "config.json").read_bytes() == (src / "config.json").read_bytes()


@pytest.mark.mindspore
def test_mindir_export_decodes_as_the_eager_cell(tiny_dir, tmp_path):
    pytest.importorskip("mindspore")
    from ascend_adapt.port.mindir import MindIRSession, export_mindir
    from ascend_adapt.backends import get_backend

    eager = get_backend("mindspore", tiny_dir("chatglm2", unit_head=True), mode="pynative")
    out = export_mindir(None, tmp_path / "mindir", seq_len=12, max_len=32, backend=eager)
    spec = eager.spec
    ids = np.array([[spec.gmask_token_id, spec.bos_token_id, 11, 12, 13, 14]])
    got, got_logits = greedy_tokens(lambda b, m: MindIRSession(out), ids, 16, return_logits=True)
    want, want_logits = greedy_tokens(eager, ids, 16, return_logits=True)
    assert np.array_equal(got, want)
    # same kernels, compiled vs eager over the static 32-slot cache: 2·u·Σn·max|logits| (tolerances.py)
    assert np.abs(got_logits - want_logits).max() <= fp32_atol(spec, np.abs(want_logits).max(), keys=32)


def test_convert_for_ascend310p3_from_the_cli(tiny_dir, tmp_path, capsys):
    from ascend_adapt.cli.main import main as cli

    src = tiny_dir("chatglm2")
    out = tmp_path / "om"
    assert cli(["convert", str(src), "-o", str(out), "--soc", "Ascend310P3", "--precision-mode",
                "must_keep_origin_dtype", "--seq-len", "48", "--max-len", "96", "--verify-tokens", "16",
                "--atc", "never"]) == 0
    report = json.loads((out / "convert_report.json").read_text())
    assert report["verify"]["tokens_identical"]
    capsys.readouterr()
    assert cli(["generate", str(out), "--backend", "sim", "--prompt", "你好", "--chat", "--max-new-tokens", "8",
                "--no-stream"]) == 0
    sim_text = capsys.readouterr().out
    assert cli(["generate", str(src), "--backend", "torch", "--prompt", "你好", "--chat", "--max-new-tokens", "8",
                "--no-stream"]) == 0
    assert sim_text == capsys.readouterr().out


# ---- the real tokenizer file (../shared/assets, skipped when absent) ----------------------------------

@pytest.fixture(scope="module")
def real_file(shared_asset):
    return shared_asset("chatglm2_tokenizer.model")


def test_real_chatglm2_ids(real_file):
    tok = ChatGLM2Tokenizer(real_file, version=2)
    assert tok.sp.get_piece_size() == 64789 and tok.vocab_size == 64794
    # §2 / assets README: "你好" → [36474, 54591]; [gMASK] 64790 and sop 64792 are prepended
    assert tok.encode("你好", add_special_tokens=False) == [36474, 54591]
    assert tok.encode("你好") == [64790, 64792, 36474, 54591]
    assert (tok.mask_id, tok.eop_id, tok.pad_id, tok.eos_ids) == (64789, 64793, 0, (2,))
    prompt = tok.build_chat_prompt("你好", [("hi", "hello")])
    assert prompt == "[Round 1]\n\n问：hi\n\n答：hello\n\n[Round 2]\n\n问：你好\n\n答："
    assert tok.build_chat_prompt("你好") == "[Round 1]\n\n问：你好\n\n答："
    ids = tok.encode_chat("你好")
    assert ids[:2] == [64790, 64792] and ids[-4:] == [13, 13, 55437, 31211]  # …\n\n答：
    assert tok.decode(ids) == "[Round 1]\n\n问：你好\n\n答："
    with pytest.raises(ConfigError, match="system"):
        tok.build_chat_prompt("你好", system="be brief")


def test_real_chatglm3_ids_and_roles(real_file):
    tok = ChatGLM2Tokenizer(real_file, version=3)
    assert tok.vocab_size == 64798
    assert [tok.command(t) for t in ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")] == \
        [64794, 64795, 64796, 64797]
    # build_chat_input("你好"): [gMASK] sop <|user|> encode("\n") encode("你好") <|assistant|>
    assert tok.encode_chat("你好") == [64790, 64792, 64795, 30910, 13, 36474, 54591, 64796]
    # a past turn: <|user|> "\n" hi <|assistant|> "\n" hello, each message encoded on its own
    n = tok.encode("\n", add_special_tokens=False)
    hi, hello = (tok.encode(t, add_special_tokens=False) for t in ("hi", "hello"))
    assert tok.encode_chat("你好", [("hi", "hello")]) == (
        [64790, 64792, 64795] + n + hi + [64796] + n + hello + [64795] + n + [36474, 54591, 64796])
    assert tok.eos_ids == (2, 64795, 64797)  # generation stops on eos, <|user|> and <|observation|>
    assert tok.decode(tok.encode_chat("你好")).strip() == "你好"
