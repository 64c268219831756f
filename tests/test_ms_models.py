"""MindSpore route, models: Llama (GQA) and ChatGLM-6B cells vs the fp32 torch golden.

Tolerances (derived in tests/tolerances.py, never tuned to a run): fp32 outputs within
2·u·Σn·max|output| of the torch fp32 golden plus MindSpore's CPU softmax / sigmoid error per layer
(≈ 1e-3 on logits of ~7; measured ≤ 1e-5 for both families); greedy tokens identical over 32
steps through the shared generate loop; fp16 compute: cosine ≥ 1 − rel²/2 with rel =
2^-11·(18·L + 4) (+ the fp16 rotary angles for ChatGLM) for every layer output (≥ 0.9997;
measured 0.999999). Only real (non-padding) positions are compared: padding rows of a left-padded
batch are don't-care in every backend.
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
from tolerances import MS_SIGMOID_REL, MS_SOFTMAX_REL, cosine_floor, fp16_rel, fp32_atol  # noqa: E402

from ascend_adapt.backends import get_backend  # noqa: E402
from ascend_adapt.runtime.generate import generate, greedy_tokens  # noqa: E402

ARCHS = ("llama", "chatglm")


def _ms_atol(spec, magnitude, keys, **kw):
    """fp32 MindSpore vs fp32 torch: the accumulation bound plus MindSpore's CPU softmax (both
    families) and sigmoid (Llama's SiLU) error per layer (tests/tolerances.py). ChatGLM's GELU tanh
    runs in float64 on the CPU (model_zoo/ms_layers.py), so it adds nothing."""
    extra = MS_SOFTMAX_REL + (MS_SIGMOID_REL if spec.ffn == "swiglu" else 0.0)
    return fp32_atol(spec, magnitude, keys, extra_rel=extra, **kw)


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
    S = ids.shape[1]
    tol = _ms_atol(ref.spec, np.abs(want[real]).max(), S)
    assert err <= tol, f"max |Δ| {err:.3g} > {tol:.3g} (min tolerance that would pass: {err:.3g})"
    assert set(got_layers) == set(want_layers)
    for name in want_layers:  # each output against the part of the forward pass before it
        layers = int(name.split(".")[1]) + 1 if name.startswith("layers.") else (0 if name == "embed" else None)
        w = want_layers[name][real]
        t = _ms_atol(ref.spec, np.abs(w).max(), S, layers=layers, head=name in ("final_norm", "logits"))
        d = np.abs(got_layers[name][real] - w).max()
        assert d <= t, f"{name}: max |Δ| {d:.3g} > {t:.3g}"


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_decode_matches_full_recompute(arch, ms_backend, tiny_backend):
    """Static-cache steps (graph mode, bucketed prefill) vs the golden's full forward."""
    ref, msb = tiny_backend(arch), ms_backend(arch)
    ids, mask = _batch(ref.spec)
    forced = np.random.default_rng(3).integers(10, 200, (ids.shape[0], 6))
    got = forced_decode_logits(msb, ids, mask, forced)
    want = full_recompute_logits(ref, ids, mask, forced)
    err = np.abs(got - want).max()
    tol = _ms_atol(ref.spec, np.abs(want).max(), ids.shape[1] + forced.shape[1] + 16)  # + prefill bucket padding
    assert err <= tol, f"max |Δ| {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_32_tokens_identical_to_torch(arch, ms_backend, tiny_backend):
    untied = arch == "chatglm"  # a random tied ChatGLM repeats its input token (see conftest)
    ref, msb = tiny_backend(arch, untied=untied), ms_backend(arch, untied=untied)
    ids, mask = _batch(ref.spec)
    want, want_logits = greedy_tokens(ref, ids, 32, mask, return_logits=True)
    got, got_logits = greedy_tokens(msb, ids, 32, mask, return_logits=True)
    assert np.array_equal(got, want)
    assert len(set(want[0].tolist())) > 3  # the test exercises varied tokens
    assert np.abs(got_logits - want_logits).max() <= _ms_atol(ref.spec, np.abs(want_logits).max(),
                                                              ids.shape[1] + 32 + 16)


@pytest.mark.parametrize("arch", ARCHS)
def test_pynative_and_graph_sessions_agree(arch, ms_backend):
    ids, mask = _batch(ms_backend(arch).spec)
    a = greedy_tokens(ms_backend(arch, mode="pynative"), ids, 8, mask, return_logits=True)
    b = greedy_tokens(ms_backend(arch), ids, 8, mask, return_logits=True)
    assert np.array_equal(a[0], b[0])
    # same kernels; graph mode pads the prefill to a bucket (other key lengths, other fusions):
    # the fp32 accumulation bound of tests/tolerances.py, ≈ 1e-3 here; measured ≤ 1e-6
    spec = ms_backend(arch).spec
    assert np.abs(a[1] - b[1]).max() <= fp32_atol(spec, np.abs(a[1]).max(), ids.shape[1] + 8 + 16)


@pytest.mark.parametrize("arch", ARCHS)
def test_fp16_compute_cosine_per_layer(arch, ms_backend, tiny_backend):
    ref, msb = tiny_backend(arch), ms_backend(arch, dtype="float16", mode="pynative")
    ids, mask = _batch(ref.spec)
    _, want = ref.full_logits(ids, mask, layer_outputs=True)
    got = msb.layer_outputs(ids, mask)
    real = mask.astype(bool)
    # fp16 weights + activations (+ ChatGLM's fp16 rotary angles): cosine ≥ 1 − rel²/2
    # (tests/tolerances.py), ≈ 0.9997; measured 0.999999. A wrong mask or position gives ≤ 0.99.
    floor = cosine_floor(fp16_rel(ref.spec, rotary_positions=ids.shape[1] if arch == "chatglm" else 0))
    for name in want:
        c = _cos(got[name][real], want[name][real])
        assert c >= floor, f"{name}: cosine {c:.6f} < {floor:.6f}"
    assert msb.model.layers[0].attn.q.weight.dtype == ms.float16


def test_fp16_graph_session_decodes(ms_backend, tiny_backend):
    ref, msb = tiny_backend("llama"), ms_backend("llama", dtype="float16")
    ids, mask = _batch(ref.spec)
    _, want = greedy_tokens(ref, ids, 4, mask, return_logits=True)
    _, got = greedy_tokens(msb, ids, 4, mask, return_logits=True)
    assert np.isfinite(got).all() and _cos(got, want) >= cosine_floor(fp16_rel(ref.spec))  # tests/tolerances.py


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


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_chatglm_rotary_table_is_the_torch_references(dtype):
    """The MindSpore cell, the torch golden and the shared table function hold the same table for
    the compute dtype (fp32 model: fp32 angles from the fp16-rounded inv_freq, as the original)."""
    from ascend_adapt.model_zoo.base import ADAPTERS
    from ascend_adapt.model_zoo.chatglm.ms_model import build
    from ascend_adapt.model_zoo.chatglm.torch_model import ChatGLMForCausalLM
    from ascend_adapt.model_zoo.tiny import tiny_config
    from ascend_adapt.operators.rotary import rotary_table

    spec = ADAPTERS.get("chatglm").spec_from_config(tiny_config("chatglm"))
    want = rotary_table(spec.max_position + 1, spec.rotary_dim, spec.rope_theta, "glm2d", "float16",
                        compute_dtype=dtype)
    cell, golden = build(spec, dtype), ChatGLMForCausalLM(spec, dtype)
    for got, ref, w in ((cell.cos, golden.cos, want[0]), (cell.sin, golden.sin, want[1])):
        assert got.asnumpy().dtype == np.dtype(dtype)
        assert np.array_equal(got.asnumpy(), w) and np.array_equal(ref.numpy(), w)


def test_gelu_tanh_is_torchs_to_an_ulp():
    """MindSpore's CPU fp32 Tanh is off by up to 1e-4 (±1 from |x| = 5); the GELU the ChatGLM cell
    uses must be torch's op by op. Both compute 0.5·x·(1 + t) in the same fp32 order; t differs by
    at most 1 ulp (≤ 2^-24 for |t| < 1: torch's tanh is faithful, ours correctly rounded), which
    moves (1 + t) by ≤ 2^-23 after rounding and the result by ≤ 0.5·|x|·2^-23 plus 1 ulp of it."""
    import torch

    from ascend_adapt.model_zoo.chatglm.torch_model import gelu_tanh as torch_gelu
    from ascend_adapt.model_zoo.ms_layers import gelu_tanh, tanh_in_float64

    x = np.linspace(-12, 12, 100001, dtype=np.float32)
    want = torch_gelu(torch.from_numpy(x)).numpy()
    got = gelu_tanh(ms.Tensor(x), tanh_in_float64()).asnumpy()
    bound = 0.5 * np.abs(x) * 2.0 ** -23 + np.spacing(np.abs(want))
    assert (np.abs(got - want) <= bound).all(), float(np.abs(got - want).max())


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
        from ascend_adapt.backends import BACKENDS
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
