"""MindSpore route, models: Llama (GQA) and ChatGLM-6B cells vs the fp32 torch golden.

Tolerances: fp32 logits max |Δ| ≤ 1e-4 against torch (CPU fp32 golden); greedy tokens identical
over 32 steps through the shared generate loop; fp16 compute: cosine ≥ 0.999 for every layer
output against the fp32 golden. Only real (non-padding) positions are compared: padding rows of
a left-padded batch are don't-care in every backend.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytestmark = pytest.mark.mindspore
ms = pytest.importorskip("mindspore")
pytest.importorskip("torch")

from conftest import forced_decode_logits, full_recompute_logits, left_pad, tiny_prompts  # noqa: E402

from ascend_adapt.runtime.backends import get_backend  # noqa: E402
from ascend_adapt.runtime.generate import generate, greedy_tokens  # noqa: E402

ARCHS = ("llama", "chatglm")
ATOL = 1e-4


@pytest.fixture(scope="module")
def ms_backend(tiny_dir):
    """ms_backend(arch, dtype="float32", mode="graph", untied=False) -> cached MindSpore backend."""
    cache: dict = {}

    def get(arch, dtype="float32", mode="graph", untied=False):
        key = (arch, dtype, mode, untied)
        if key not in cache:
            cache[key] = get_backend("mindspore", tiny_dir(arch, unit_head=True, untied=untied),
                                     dtype=dtype, mode=mode)
        return cache[key]

    return get


def _batch(spec):
    pad = spec.pad_token_id if spec.pad_token_id is not None else 0
    return left_pad(tiny_prompts(spec), pad)


def _cos(a, b):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("arch", ARCHS)
def test_fp32_logits_and_layers_match_torch(arch, ms_backend, tiny_backend):
    ref, msb = tiny_backend(arch), ms_backend(arch, mode="pynative")
    ids, mask = _batch(ref.spec)
    want, want_layers = ref.full_logits(ids, mask, layer_outputs=True)
    got, got_layers = msb.full_logits(ids, mask, layer_outputs=True)
    real = mask.astype(bool)
    assert got.shape == want.shape
    err = np.abs(got[real] - want[real]).max()
    assert err <= ATOL, f"max |Δ| {err:.3g} > {ATOL} (min tolerance that would pass: {err:.3g})"
    assert set(got_layers) == set(want_layers)
    for name in want_layers:
        d = np.abs(got_layers[name][real] - want_layers[name][real]).max()
        assert d <= ATOL, f"{name}: max |Δ| {d:.3g}"


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_decode_matches_full_recompute(arch, ms_backend, tiny_backend):
    """Static-cache steps (graph mode, bucketed prefill) vs the golden's full forward."""
    ref, msb = tiny_backend(arch), ms_backend(arch)
    ids, mask = _batch(ref.spec)
    forced = np.random.default_rng(3).integers(10, 200, (ids.shape[0], 6))
    got = forced_decode_logits(msb, ids, mask, forced)
    want = full_recompute_logits(ref, ids, mask, forced)
    err = np.abs(got - want).max()
    assert err <= ATOL, f"max |Δ| {err:.3g}"


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_32_tokens_identical_to_torch(arch, ms_backend, tiny_backend):
    untied = arch == "chatglm"  # a random tied ChatGLM repeats its input token (see conftest)
    ref, msb = tiny_backend(arch, untied=untied), ms_backend(arch, untied=untied)
    ids, mask = _batch(ref.spec)
    want, want_logits = greedy_tokens(ref, ids, 32, mask, return_logits=True)
    got, got_logits = greedy_tokens(msb, ids, 32, mask, return_logits=True)
    assert np.array_equal(got, want)
    assert len(set(want[0].tolist())) > 3  # the test exercises varied tokens
    assert np.abs(got_logits - want_logits).max() <= ATOL


@pytest.mark.parametrize("arch", ARCHS)
def test_pynative_and_graph_sessions_agree(arch, ms_backend):
    ids, mask = _batch(ms_backend(arch).spec)
    a = greedy_tokens(ms_backend(arch, mode="pynative"), ids, 8, mask, return_logits=True)
    b = greedy_tokens(ms_backend(arch), ids, 8, mask, return_logits=True)
    assert np.array_equal(a[0], b[0])
    assert np.abs(a[1] - b[1]).max() <= 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_fp16_compute_cosine_per_layer(arch, ms_backend, tiny_backend):
    ref, msb = tiny_backend(arch), ms_backend(arch, dtype="float16", mode="pynative")
    ids, mask = _batch(ref.spec)
    _, want = ref.full_logits(ids, mask, layer_outputs=True)
    got = msb.layer_outputs(ids, mask)
    real = mask.astype(bool)
    for name in want:
        c = _cos(got[name][real], want[name][real])
        assert c >= 0.999, f"{name}: cosine {c:.6f} < 0.999"
    assert msb.model.layers[0].attn.q.weight.dtype == ms.float16


def test_fp16_graph_session_decodes(ms_backend, tiny_backend):
    ref, msb = tiny_backend("llama"), ms_backend("llama", dtype="float16")
    ids, mask = _batch(ref.spec)
    _, want = greedy_tokens(ref, ids, 4, mask, return_logits=True)
    _, got = greedy_tokens(msb, ids, 4, mask, return_logits=True)
    assert np.isfinite(got).all() and _cos(got, want) >= 0.999


def test_generate_loop_on_mindspore(ms_backend, tiny_backend):
    """The shared generate loop (tokenizer, stop handling) on both backends gives the same text."""
    from ascend_adapt.model_zoo.tokenizers import load_tokenizer
    from ascend_adapt.runtime.generate import GenerationConfig

    ref, msb = tiny_backend("llama"), ms_backend("llama")
    tok = load_tokenizer(msb.path)
    cfg = GenerationConfig(max_new_tokens=12)
    a = generate(ref, tok, ["hello world", "the"], cfg)
    b = generate(msb, tok, ["hello world", "the"], cfg)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.text for r in a] == [r.text for r in b]


def test_chatglm_rotary_table_is_the_torch_references():
    from ascend_adapt.model_zoo.chatglm.torch_model import glm_rotary_table as torch_table
    from ascend_adapt.model_zoo.ms_layers import glm_rotary_table

    for a, b in zip(glm_rotary_table(2049, 64), torch_table(2049, 64)):
        assert a.dtype == np.float16 and np.array_equal(a, b)


def test_sessions_reuse_compiled_step_cells(ms_backend):
    msb = ms_backend("llama")
    s1 = msb.new_session(1, 24)
    cell = s1.cell
    s1.close()
    s2 = msb.new_session(1, 24)
    assert s2.cell is cell
    s3 = msb.new_session(1, 24)  # s2 still alive: a fresh cell, never a shared cache
    assert s3.cell is not cell


def test_port_outputs_load_into_the_backend(tmp_path, tiny_dir, ms_backend):
    from ascend_adapt.port import port_to_mindspore

    src = tiny_dir("chatglm", unit_head=True)
    ref = ms_backend("chatglm", mode="pynative")
    ids, mask = _batch(ref.spec)
    want = ref.full_logits(ids, mask)
    for naming, fmt in (("ours", "ckpt"), ("mindformers", "safetensors")):
        out = port_to_mindspore(src, tmp_path / f"{naming}-{fmt}", naming=naming, fmt=fmt, progress=False)
        got = get_backend("mindspore", out, mode="pynative").full_logits(ids, mask)
        assert np.array_equal(got, want), (naming, fmt)


def test_registering_the_backend_imports_no_mindspore():
    probe = textwrap.dedent("""
        import json, sys
        from ascend_adapt.runtime.backends import BACKENDS
        names = BACKENDS.names()
        print(json.dumps({"registered": "mindspore" in names, "imported": "mindspore" in sys.modules}))
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"registered": True, "imported": False}


def test_bad_options_are_reported(tiny_dir):
    from ascend_adapt.errors import ConfigError

    with pytest.raises(ConfigError, match="bfloat16"):
        get_backend("mindspore", tiny_dir("llama"), dtype="bfloat16")
    with pytest.raises(ConfigError, match="mode"):
        get_backend("mindspore", tiny_dir("llama"), mode="eager")
