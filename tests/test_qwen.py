"""Qwen2 / Qwen2.5 (q/k/v bias, rope theta 1e6, tied) and Qwen3 (per-head q/k RMSNorm, no bias)
as tiny random models through every route, against transformers' own Qwen2/Qwen3 models.

Tolerances (tests/tolerances.py, derived, never tuned): fp32 logits of onnxruntime, the simulator
(must_keep_origin_dtype) and MindSpore within 2·u·Σn·max|logits| of the fp32 golden (+ MindSpore's
CPU softmax / sigmoid error per layer); 32 greedy tokens identical; force_fp16 on the simulator:
every layer's cosine ≥ 1 − rel²/2 with rel = 2^-11·(18·L + 4) (≥ 0.9997 here, so ≥ 0.999).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from tolerances import MS_SIGMOID_REL, MS_SOFTMAX_REL, cosine_floor, fp16_rel, fp32_atol  # noqa: E402

from ascend_adapt.errors import UnsupportedError  # noqa: E402
from ascend_adapt.model_zoo import ADAPTERS  # noqa: E402
from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint, random_canonical_weights, tiny_config  # noqa: E402
from ascend_adapt.backends import get_backend  # noqa: E402
from ascend_adapt.runtime.generate import greedy_tokens  # noqa: E402

ARCHS = ("qwen2", "qwen3")
N_TOKENS = 32
MAX_LEN = 48  # prompt (≤ 8) + 32 new tokens fit the static cache


def _overrides(untied: bool) -> dict:
    return {"tie_word_embeddings": False} if untied else {}


def _weights(arch, untied: bool):
    """Random weights with the head scaled by 0.1 (logits O(1–10), as tests/conftest.py's unit head)."""
    spec = ADAPTERS.get(arch).spec_from_config(tiny_config(arch, **_overrides(untied)))
    w = random_canonical_weights(spec, 0)
    w["lm_head.weight"] = (w["lm_head.weight"] * 0.1).astype(np.float32)
    if not untied:
        w["embed.weight"] = w["lm_head.weight"]
    return w


@pytest.fixture(scope="module")
def routes(tmp_path_factory):
    """routes(arch, untied=False) -> {"dir", "spec", "torch", "onnxruntime", "sim", "sim16", "export"}
    (cached). The tied model is the released small sizes' layout; a random tied model greedily
    repeats its input token, so the greedy checks take the untied one (varied tokens)."""
    from ascend_adapt.backends.sim.artifact import omsim_from_export
    from ascend_adapt.om_convert.builder.llm import build_llm_onnx

    cache = {}

    def get(arch, untied=False):
        if (arch, untied) not in cache:
            root = tmp_path_factory.mktemp(arch)
            d = make_tiny_checkpoint(root / "model", arch, weights=_weights(arch, untied),
                                     config_overrides=_overrides(untied))
            torch_b = get_backend("torch", d)
            export = build_llm_onnx(d, root / "export", seq_len=8, max_len=MAX_LEN, target="Ascend310P3",
                                    progress=False).out_dir
            sim = omsim_from_export(export, root / "m.omsim", "Ascend310P3", precision_mode="must_keep_origin_dtype")
            sim16 = omsim_from_export(export, root / "m16.omsim", "Ascend310P3", precision_mode="force_fp16")
            cache[(arch, untied)] = {"dir": d, "spec": torch_b.spec, "torch": torch_b, "export": export,
                           "onnxruntime": get_backend("onnxruntime", export),
                           "sim": get_backend("sim", sim.path), "sim16": get_backend("sim", sim16.path)}
        return cache[(arch, untied)]

    return get


def _prompt(spec):
    rng = np.random.default_rng(1)
    ids = rng.integers(10, min(spec.vocab_size, 300), 7)[None].astype(np.int64)
    return ids, np.ones_like(ids)


def _cos(a, b):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_specs_carry_the_family_differences():
    q2 = ADAPTERS.get("qwen2").spec_from_config(tiny_config("qwen2"))
    q3 = ADAPTERS.get("qwen3").spec_from_config(tiny_config("qwen3"))
    assert (q2.qkv_bias, q2.o_bias, q2.qk_norm, q2.tie_word_embeddings, q2.rope_theta) == (True, False, False, True, 1e6)
    assert (q3.qkv_bias, q3.o_bias, q3.qk_norm, q3.head_dim) == (False, False, True, 32)
    assert q3.head_dim * q3.num_heads != q3.hidden_size  # Qwen3's head_dim is its own key
    shapes = q3.canonical_shapes()
    assert shapes["layers.0.attn.q_norm.weight"] == (32,) and "layers.0.attn.q.bias" not in shapes
    assert ADAPTERS.get("qwen2").source_shapes(q2)["model.layers.1.self_attn.k_proj.bias"] == (q2.kv_dim,)


@pytest.mark.parametrize("arch", ARCHS)
def test_golden_is_transformers_model(routes, arch):
    model = routes(arch)["torch"].reference.model
    assert type(model).__name__ == {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[arch]
    # the spec's parameter count is the HF model's (tied head counted once)
    assert routes(arch)["spec"].param_count() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("route", ["onnxruntime", "sim"])
def test_fp32_logits_and_layers_match_golden(routes, arch, route):
    r = routes(arch)
    ids, mask = _prompt(r["spec"])
    want, want_layers = r["torch"].full_logits(ids, mask, layer_outputs=True)
    got, got_layers = r[route].full_logits(ids, mask, layer_outputs=True)
    tol = fp32_atol(r["spec"], np.abs(want).max(), ids.shape[1])
    err = np.abs(got - want).max()
    assert err <= tol, f"{route}: max |Δ| {err:.3g} > {tol:.3g}"
    for i in range(r["spec"].num_layers):
        name = f"layers.{i}"
        lt = fp32_atol(r["spec"], np.abs(want_layers[name]).max(), ids.shape[1], layers=i + 1, head=False)
        assert np.abs(got_layers[name] - want_layers[name]).max() <= lt, name


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_32_tokens_identical_on_every_route(routes, arch):
    r = routes(arch, untied=True)
    ids, mask = _prompt(r["spec"])
    want = np.asarray(greedy_tokens(r["torch"], ids, N_TOKENS))
    assert len(set(want.ravel().tolist())) > 3  # a varied sequence, not one repeated token
    for route in ("onnxruntime", "sim"):
        got = np.asarray(greedy_tokens(r[route], ids, N_TOKENS))
        assert np.array_equal(got, want), route


@pytest.mark.parametrize("arch", ARCHS)
def test_force_fp16_layer_cosines(routes, arch):
    r = routes(arch)
    ids, mask = _prompt(r["spec"])
    _, want = r["torch"].full_logits(ids, mask, layer_outputs=True)
    _, got = r["sim16"].full_logits(ids, mask, layer_outputs=True)
    floor = max(cosine_floor(fp16_rel(r["spec"])), 0.999)  # rel = 2^-11·(18·L + 4): floor 0.9997
    for name in [f"layers.{i}" for i in range(r["spec"].num_layers)] + ["final_norm", "logits"]:
        c = _cos(got[name], want[name])
        assert c >= floor, f"{name}: cosine {c:.6f} < {floor:.6f}"


@pytest.mark.mindspore
@pytest.mark.parametrize("arch", ARCHS)
def test_mindspore_logits_and_greedy(routes, arch):
    pytest.importorskip("mindspore")
    r = routes(arch, untied=True)
    msb = get_backend("mindspore", r["dir"])
    ids, mask = _prompt(r["spec"])
    want = r["torch"].full_logits(ids, mask)
    got = msb.full_logits(ids, mask)
    # MindSpore's CPU softmax and sigmoid (SiLU) are not correctly rounded: their error per layer
    tol = fp32_atol(r["spec"], np.abs(want).max(), ids.shape[1], extra_rel=MS_SOFTMAX_REL + MS_SIGMOID_REL)
    assert np.abs(got - want).max() <= tol
    assert np.array_equal(np.asarray(greedy_tokens(msb, ids, N_TOKENS)),
                          np.asarray(greedy_tokens(r["torch"], ids, N_TOKENS)))


@pytest.mark.parametrize("arch", ARCHS)
def test_port_both_ways_is_bit_exact(routes, arch, tmp_path):
    pytest.importorskip("mindspore")
    from ascend_adapt.checkpoint import open_checkpoint
    from ascend_adapt.port import port_to_hf, port_to_mindspore

    src = routes(arch)["dir"]
    ms_dir = port_to_mindspore(src, tmp_path / "ms", progress=False)
    back = port_to_hf(ms_dir, tmp_path / "hf", progress=False)
    a, b = open_checkpoint(src), open_checkpoint(back)
    assert sorted(a.names()) == sorted(b.names())
    for n in a.names():
        np.testing.assert_array_equal(a.get(n), b.get(n), err_msg=n)


@pytest.mark.parametrize("arch", ARCHS)
def test_estimate_counts_biases_and_qk_norms(routes, arch):
    from ascend_adapt.estimate.core import spec_for

    spec = spec_for(routes(arch)["dir"])
    spec = spec[0] if isinstance(spec, tuple) else spec
    model = routes(arch)["torch"].reference.model
    assert spec.param_count() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_make_tiny_cli_and_chat_generate(arch, tmp_path):
    from click.testing import CliRunner

    from ascend_adapt.cli.main import cli

    out = tmp_path / arch
    res = CliRunner().invoke(cli, ["make-tiny", str(out), "--arch", arch], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == arch and (out / "tokenizer.json").is_file()
    res = CliRunner().invoke(cli, ["generate", str(out), "--prompt", "Hello", "--chat", "--max-new-tokens", "4",
                                   "--output-ids"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert len(res.output.strip().splitlines()[-1].split(",")) >= 1


def test_sliding_window_and_rope_scaling_are_refused():
    a = ADAPTERS.get("qwen2")
    with pytest.raises(UnsupportedError, match="use_sliding_window"):
        a.spec_from_config(tiny_config("qwen2", use_sliding_window=True))
    with pytest.raises(UnsupportedError, match="rope scaling"):
        a.spec_from_config(tiny_config("qwen2", rope_scaling={"type": "yarn", "factor": 4.0}))
