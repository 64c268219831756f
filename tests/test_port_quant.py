"""`port --to mindspore --quantize w8a16|w8a8`: int8 MindSpore checkpoints and the cells that run them.

Tolerances (tests/tolerances.py, derived, never tuned to a run):

- W8A16: the MindSpore cell dequantizes `float32(q)·scale` (one float32 rounding), which is
  bit for bit the weight `dequantize(q, scale)` that the fake-quantized golden
  (`ascend_adapt.quant.accuracy.fake_quant_backend`) puts into the fp32 torch model. The two
  then differ only as two fp32 implementations of one network: 2·u·Σn·max|logits| plus
  MindSpore's CPU softmax / sigmoid error per layer (the bound of tests/test_ms_models.py).
- W8A8: the cell runs the registry ops' arithmetic — AscendQuant in fp16 (x·(1/act_scale)
  rounded to fp16 before the int8 rounding), an exact int32 MatMul, one float32 dequant — which
  the cell test checks bit for bit against the registry's numpy references. The fp32
  fake-quantized golden rounds `x/s/act_scale` in fp32 instead, so its int8 codes differ by ±1
  wherever the fp16 rounding (≤ 2^-11·127/2 ≈ 0.03 codes, plus the fp16 rounding of x) crosses a
  .5 boundary: a different realization of the rounding noise, not a small error (on the tiny
  Llama the two differ by 0.03 on logits of ~3 where both are 0.44 from the float model). The
  model-level golden therefore is the fake-quantized torch model with the card's AscendQuant
  arithmetic in its pre-hooks (`ascend_quant_ref`, the registry's numpy reference): everything
  else is fp32, so the fp32 bound applies. (A 1-ulp fp32 difference — the port folds 1/s into the
  norm weight, the golden multiplies after the norm — could still move an fp16 rounding across a
  .5 boundary, probability ≈ 2^-12 per element; with these fixed weights and prompts none does:
  measured 1.2e-6 (Llama) and 9.5e-7 (ChatGLM) against a bound of 5e-4.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.mindspore
ms = pytest.importorskip("mindspore")
pytest.importorskip("torch")

from conftest import left_pad, tiny_prompts  # noqa: E402
from tolerances import MS_SIGMOID_REL, MS_SOFTMAX_REL, fp32_atol  # noqa: E402

from ascend_adapt.backends import get_backend  # noqa: E402
from ascend_adapt.port import MANIFEST_NAME, port_to_hf, port_to_mindspore, read_manifest  # noqa: E402
from ascend_adapt.quant.accuracy import fake_quant_backend, read_canonical  # noqa: E402
from ascend_adapt.runtime.generate import greedy_tokens  # noqa: E402

ARCHS = ("llama", "chatglm")
GREEDY_STEPS = 8


def _ms_atol(spec, magnitude, keys):
    extra = MS_SOFTMAX_REL + (MS_SIGMOID_REL if spec.ffn == "swiglu" else 0.0)
    return fp32_atol(spec, magnitude, keys, extra_rel=extra)


@pytest.fixture(scope="module")
def src(tiny_dir):
    """The unit-head tiny checkpoint, untied (so W8A16 quantizes lm_head too)."""
    return lambda arch: tiny_dir(arch, unit_head=True, untied=True)


@pytest.fixture(scope="module")
def plan(src):
    """One W8A8 plan per arch (the fp32 golden over the builtin calibration set), shared by the
    port and the ONNX export so both quantize with the same statistics."""
    from ascend_adapt.quant.smoothquant import plan_w8a8

    cache: dict = {}

    def get(arch):
        if arch not in cache:
            cache[arch] = plan_w8a8(src(arch))
        return cache[arch]

    return get


@pytest.fixture(scope="module")
def ported(src, plan, tmp_path_factory):
    """ported(arch, mode, fmt="ckpt", group_size=None) -> a cached quantized port directory."""
    cache: dict = {}

    def get(arch, mode, fmt="ckpt", group_size=None):
        key = (arch, mode, fmt, group_size)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"q-{arch}-{mode}-{fmt}-{group_size}") / "ms"
            kw = {"w8a8_plan": plan(arch)} if mode == "w8a8" else {"group_size": group_size}
            cache[key] = port_to_mindspore(src(arch), out, fmt=fmt, quantize=mode, progress=False, **kw)
        return cache[key]

    return get


def _batch(spec):
    return left_pad(tiny_prompts(spec), spec.pad_token_id if spec.pad_token_id is not None else 0)


def _card_arith_golden(spec, canonical, plan):
    """The fake-quantized fp32 golden whose W8A8 input quantization is the card's AscendQuant
    arithmetic (the registry's numpy reference) instead of an fp32 rint."""
    import torch

    from ascend_adapt.operators.quant import ascend_quant_ref, quant_scales
    from ascend_adapt.quant.calib import torch_linear_modules

    be = fake_quant_backend(spec, canonical, "w8a8", plan)
    for h in be.fake_quant_hooks:
        h.remove()
    mods = torch_linear_modules(be)

    def hook(lp):
        inv_s = (1.0 / lp.smooth.astype(np.float64)).astype(np.float32)
        act = float(lp.act_scale)

        def pre(_mod, args):
            x = args[0].detach().float().numpy() * inv_s
            q = ascend_quant_ref(x, **quant_scales(act)).astype(np.float32)
            return (torch.from_numpy(q * np.float32(act)).to(args[0].dtype),)
        return pre

    be.fake_quant_hooks = [mods[n].register_forward_pre_hook(hook(lp)) for n, lp in plan.linears.items()]
    return be


# ---- numerics ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("group_size", [None, 16])
@pytest.mark.parametrize("arch", ARCHS)
def test_w8a16_logits_equal_the_fake_quantized_golden(arch, group_size, src, ported):
    out = ported(arch, "w8a16", group_size=group_size)
    spec, canonical = read_canonical(src(arch))
    golden = fake_quant_backend(spec, canonical, "w8a16", group_size=group_size, include_head=True)
    msb = get_backend("mindspore", out, mode="pynative")
    ids, mask = _batch(spec)
    want = golden.full_logits(ids, mask)
    got = msb.full_logits(ids, mask)
    real = mask.astype(bool)
    tol = _ms_atol(spec, float(np.abs(want[real]).max()), keys=ids.shape[1])
    assert np.abs(got[real] - want[real]).max() <= tol
    # and the quantization is there: the float model is much further away than the tolerance
    ref = get_backend("torch", src(arch)).full_logits(ids, mask)
    assert np.abs(ref[real] - want[real]).max() > 10 * tol
    # graph-mode decoding through the shared generate loop: the golden's greedy tokens
    a = greedy_tokens(get_backend("mindspore", out), ids, GREEDY_STEPS, mask)
    b = greedy_tokens(golden, ids, GREEDY_STEPS, mask)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("arch", ARCHS)
def test_w8a8_logits_equal_the_fake_quantized_golden(arch, src, plan, ported):
    out = ported(arch, "w8a8")
    spec, canonical = read_canonical(src(arch))
    p = plan(arch)
    golden = _card_arith_golden(spec, canonical, p)
    msb = get_backend("mindspore", out, mode="pynative")
    ids, mask = _batch(spec)
    want = golden.full_logits(ids, mask)
    got = msb.full_logits(ids, mask)
    real = mask.astype(bool)
    tol = _ms_atol(spec, float(np.abs(want[real]).max()), keys=ids.shape[1])
    assert np.abs(got[real] - want[real]).max() <= tol
    # the fp32-rint fake quantization is another realization of the rounding noise: its codes differ from
    # ours by ±1 on the fraction p of elements whose fp16 rounding crosses a .5 boundary (p ≲ 0.03·2 for the
    # largest |x/act_scale| ≈ 127, far less for typical ones), i.e. a noise of rms √p codes against the
    # quantization's own 1/√12: √(12p) ≲ 0.6 of it. So ours is closer to it than it is to the float model.
    fq = fake_quant_backend(spec, canonical, "w8a8", p).full_logits(ids, mask)
    ref = get_backend("torch", src(arch)).full_logits(ids, mask)
    assert np.abs(got[real] - fq[real]).max() <= np.abs(fq[real] - ref[real]).max()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_quant_linear_cell_is_bit_exact_to_the_registry_references(dtype):
    """The W8A8 QuantLinear (PyNative and graph) against the registry's numpy references:
    [× smooth] → AscendQuant → int8 MatMul → AscendDequant (+ bias)."""
    from ascend_adapt.model_zoo.ms_layers import QuantLinear, compute_dtype
    from ascend_adapt.operators.quant import (GE_DT_FLOAT, GE_DT_FLOAT16, ascend_dequant_ref, ascend_quant_ref,
                                              encode_deq_scale, int8_matmul_ref, quant_scales)
    from ascend_adapt.quant.weights import quantize_per_channel

    rng = np.random.default_rng(3)
    npdt = np.float16 if dtype == "float16" else np.float32
    i, o = 48, 24
    w = rng.standard_normal((o, i)).astype(np.float32)
    s = np.exp(rng.uniform(-1, 1, i)).astype(np.float32)
    q, ws = quantize_per_channel(w, s)
    x = (rng.standard_normal((2, 5, i)) * 3).astype(npdt)
    act = float(np.abs(x.astype(np.float32) / s).max() / 127)
    inv = (1.0 / s.astype(np.float64)).astype(np.float32)
    bias = rng.standard_normal(o).astype(npdt)

    xs = (x * inv.astype(npdt)).astype(npdt)
    acc = int8_matmul_ref(ascend_quant_ref(xs, **quant_scales(act)), q.T)
    want = ascend_dequant_ref(acc, encode_deq_scale(np.float32(act) * ws),
                              dtype=GE_DT_FLOAT16 if dtype == "float16" else GE_DT_FLOAT) + bias

    for graph in (False, True):
        cell = QuantLinear(i, o, True, compute_dtype(dtype), "w8a8", act_scale=act, smooth=True)
        for name, v in (("weight", q), ("weight_scale", ws), ("input_scale", np.float32([act])),
                        ("smooth_scale", inv), ("bias", bias)):
            getattr(cell, name).set_data(ms.Tensor(v))
        if graph:
            cell.construct = ms.jit(cell.construct)
        got = cell(ms.Tensor(x)).asnumpy()
        assert got.dtype == npdt and np.array_equal(got, want)


# ---- against the ONNX quantized path -----------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["w8a16", "w8a8"])
@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_tokens_equal_the_onnx_quantized_export(arch, mode, src, plan, ported, tmp_path):
    """Same Linears, same int8 codes, same scales; fp32 activations on both sides (the export without
    --soc keeps fp32 weights, onnxruntime runs the lowered Ascend quant ops bit for bit)."""
    pytest.importorskip("onnxruntime")
    from ascend_adapt.om_convert.builder import build_llm_onnx

    out = ported(arch, mode)
    r = build_llm_onnx(src(arch), tmp_path / "onnx", batch=2, seq_len=16, max_len=48, weight_dtype="float32",
                       progress=False, quantize=mode, w8a8_plan=plan(arch) if mode == "w8a8" else None)
    exported = r.manifest["quantization"]
    ported_q = read_manifest(out)["quantization"]
    assert sorted(ported_q["quantized"]) == sorted(exported["quantized"])
    assert ported_q["granularity"] == exported["granularity"]
    spec = get_backend("mindspore", out).spec
    ids, mask = _batch(spec)
    a = greedy_tokens(get_backend("mindspore", out), ids, GREEDY_STEPS, mask)
    b = greedy_tokens(get_backend("onnxruntime", r.out_dir), ids, GREEDY_STEPS, mask)
    assert np.array_equal(a, b)


# ---- the checkpoint ---------------------------------------------------------------------------------------
def _read_all(out: Path, fmt: str) -> dict:
    if fmt == "ckpt":
        from ascend_adapt.port.ckpt import CkptReader

        r = CkptReader(out / "model.ckpt", {})
        return {n: r.get(n) for n in r.names()}
    from safetensors.numpy import load_file

    return load_file(str(out / "model.safetensors"))


@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
@pytest.mark.parametrize("mode", ["w8a16", "w8a8"])
@pytest.mark.parametrize("arch", ARCHS)
def test_checkpoint_holds_int8_weights_and_scales(arch, mode, fmt, src, plan, ported):
    from ascend_adapt.quant.weights import quantize_per_channel

    out = ported(arch, mode, fmt)
    t = _read_all(out, fmt)
    m = read_manifest(out)
    q = m["quantization"]
    spec, canonical = read_canonical(src(arch))
    shapes = spec.canonical_shapes()
    p = plan(arch) if mode == "w8a8" else None
    linears = [n for n in shapes if n.endswith(".weight") and n[:-7].rsplit(".", 1)[-1] in
               ("q", "k", "v", "o", "gate", "up", "down") or n == "lm_head.weight"]
    want_q = [n for n in linears if n in canonical and (p is None or p.get(n) is not None)]
    assert sorted(q["quantized"]) == sorted(want_q) and q["mode"] == mode
    for n in want_q:
        o, i = shapes[n]
        prefix = n[:-len(".weight")]
        lp = p.get(n) if p else None
        codes, scale = quantize_per_channel(canonical[n], lp.smooth if lp else None)
        assert t[n].dtype == np.int8 and t[n].shape == (o, i) and np.array_equal(t[n], codes)
        assert t[prefix + ".weight_scale"].dtype == np.float32 and np.array_equal(t[prefix + ".weight_scale"], scale)
        if mode == "w8a8":
            act = t[prefix + ".input_scale"]
            assert act.dtype == np.float32 and act.shape == (1,) and act[0] == np.float32(lp.act_scale)
            folded = lp.fold is not None
            assert (prefix + ".smooth_scale" in t) == (not folded) == (n in q["smooth_scale"])
            if folded:  # 1/s went into the norm: its weight is divided as it streamed
                norm = (canonical[lp.fold].astype(np.float32) / lp.smooth).astype(np.float32)
                assert np.array_equal(t[lp.fold], norm)
        assert m["tensors"][n]["dtype"] == "int8"
    kept = [n for n in linears if n in canonical and n not in want_q]
    assert all(t[n].dtype == np.float32 for n in kept)
    if mode == "w8a8":
        assert "lm_head.weight" in kept and set(q["fp16"]) >= {"lm_head"}
    assert {n for n in t if t[n].dtype == np.int8} == set(want_q)
    # MindSpore's own loader reads the file: same names, int8 where we wrote int8
    loaded = ms.load_checkpoint(str(out / ("model.ckpt" if fmt == "ckpt" else "model.safetensors")),
                                **({} if fmt == "ckpt" else {"format": "safetensors"}))
    assert set(loaded) == set(t) and all(loaded[n].dtype == ms.int8 for n in want_q)
    assert all(np.array_equal(loaded[n].asnumpy(), t[n]) for n in want_q)


def test_cli_port_quantize_then_generate_on_mindspore(src, tmp_path, capsys):
    from ascend_adapt.cli.main import main

    out = tmp_path / "w8"
    assert main(["port", str(src("llama")), "--to", "mindspore", "-o", str(out), "--quantize", "w8a16",
                 "--group-size", "16", "--format", "safetensors", "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "w8a16: 15 Linears int8 (per group of 16 input channels)" in said
    assert read_manifest(out)["quantization"]["group_size"] == 16
    assert main(["generate", str(out), "--backend", "mindspore", "--prompt-ids", "1,11,12,13",
                 "--max-new-tokens", "4", "--output-ids"]) == 0
    ids = capsys.readouterr().out.strip().splitlines()[-1].split(",")
    assert len(ids) == 4 and all(s.strip().isdigit() for s in ids)


def test_cli_w8a8_calibrates_like_the_api(src, ported, tmp_path, capsys):
    """The CLI's W8A8 (calibration through `prepare`, as export / convert) writes the very tensors of
    the API port with a plan from `plan_w8a8` (calibration is deterministic)."""
    from ascend_adapt.cli.main import main

    out = tmp_path / "w8a8"
    assert main(["port", str(src("chatglm")), "--to", "mindspore", "-o", str(out), "--quantize", "w8a8",
                 "--calib", "builtin", "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "w8a8:" in said and "kept in float: lm_head" in said
    a, b = _read_all(out, "ckpt"), _read_all(ported("chatglm", "w8a8"), "ckpt")
    assert a.keys() == b.keys() and all(np.array_equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("arch", ARCHS)
def test_mindir_of_a_quantized_port_matches_the_eager_cell(arch, ported, tmp_path):
    from ascend_adapt.port.mindir import MindIRSession, export_mindir

    out = ported(arch, "w8a8")
    eager = get_backend("mindspore", out, mode="pynative")
    mdir = export_mindir(out, tmp_path / "mindir", seq_len=12, max_len=32)
    assert json.loads((mdir / "mindir.json").read_text())["quantization"] == "w8a8"
    spec = eager.spec
    prompt = [11, 12, 13, 14, spec.gmask_token_id, spec.bos_token_id] if arch == "chatglm" else [1, 11, 12, 13, 14]
    ids = np.array([prompt])
    got, got_logits = greedy_tokens(lambda b, m: MindIRSession(mdir), ids, 8, return_logits=True)
    want, want_logits = greedy_tokens(eager, ids, 8, return_logits=True)
    assert np.array_equal(got, want)
    # same kernels and the same integer arithmetic; only the fp32 stages may reassociate
    assert np.abs(got_logits - want_logits).max() <= fp32_atol(spec, np.abs(want_logits).max(), keys=32)


def test_quantized_port_holds_about_one_tensor(tmp_path):
    """Peak traced memory of a W8A16 port stays near the largest tensor (as the float port's,
    tests/test_port.py): the tensors in flight and the quantizer's float32 block, never the model."""
    import tracemalloc

    from ascend_adapt.checkpoint import open_checkpoint
    from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint

    src = make_tiny_checkpoint(tmp_path / "src", "llama", "safetensors-sharded",
                               config_overrides={"hidden_size": 256, "intermediate_size": 704,
                                                 "num_hidden_layers": 6, "num_attention_heads": 4,
                                                 "num_key_value_heads": 4, "vocab_size": 2048})
    reader = open_checkpoint(src)
    total, largest = reader.total_bytes(), max(i.nbytes for i in reader.infos().values())
    assert total > 10 * largest
    import ascend_adapt.om_convert.builder.quantize  # noqa: F401  (imported first: module objects are not tensors)
    import ascend_adapt.quant.weights  # noqa: F401

    tracemalloc.start()
    port_to_mindspore(src, tmp_path / "w8", quantize="w8a16", progress=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # the float port's budget (the tensor in hand + the read-ahead: 3 tensors, + 1 MiB) plus the quantizer's
    # temporaries: a float32 copy of one block of rows and its |·| (each ≤ 16 MiB: `_BLOCK_ELEMS` float32, whole
    # matrices at this size) and the int8 codes (a quarter of a float32 tensor)
    from ascend_adapt.quant.weights import _BLOCK_ELEMS

    budget = 3 * largest + 2 * min(largest, 4 * _BLOCK_ELEMS) + largest // 4 + (1 << 20)
    assert peak < budget < total, f"peak {peak} B for a largest tensor of {largest} B (budget {budget})"


# ---- refusals: before anything is written -------------------------------------------------------------------
REFUSALS = [
    (["--quantize", "w4a16"], "--quantize 'w4a16'"),
    (["--quantize", "w8a16", "--calib", "builtin"], "--calib"),
    (["--quantize", "w8a16", "--smooth-alpha", "0.5"], "--smooth-alpha"),
    (["--quantize", "w8a16", "--keep-fp16", "lm_head=false"], "--keep-fp16"),
    (["--group-size", "32"], "--group-size"),
    (["--quantize", "w8a8", "--group-size", "32"], "--group-size"),
    (["--quantize", "w8a16", "--group-size", "24"], "group size 24 does not divide"),
    (["--quantize", "w8a8", "--calib", "/nonexistent/prompts.txt"], "--calib"),
    (["--quantize", "w8a8", "--smooth-alpha", "1.5"], "'--smooth-alpha': '1.5': expected 'auto'"),
    (["--quantize", "w8a16", "--naming", "mindformers"], "--naming mindformers"),
    (["--quantize", "w8a16", "--to", "hf"], "--to hf"),
    (["--quantize", "w8a16", "--to", "torch-npu", "--soc", "Ascend910B4"], "--to torch-npu"),
]


@pytest.mark.parametrize("args,needle", REFUSALS, ids=[" ".join(a) for a, _ in REFUSALS])
def test_bad_quantize_options_are_refused_before_writing(args, needle, src, tmp_path, capsys):
    from ascend_adapt.cli.main import main

    to = [] if "--to" in args else ["--to", "mindspore"]
    out = tmp_path / "out"
    assert main(["port", str(src("llama")), "-o", str(out), "--no-progress", *to, *args]) == 2
    err = capsys.readouterr().err
    assert needle in err, err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_port_to_hf_refuses_a_quantized_port(ported, tmp_path):
    from ascend_adapt.errors import UnsupportedError

    with pytest.raises(UnsupportedError, match="int8 weights"):
        port_to_hf(ported("llama", "w8a16"), tmp_path / "hf", progress=False)
    assert not (tmp_path / "hf").exists()


def test_manifest_records_the_quantization_like_export_json(src, plan, ported):
    """Every field of export.json's "quantization" (the same `LinearQuantizer.manifest`), plus the
    MindSpore tensor layout."""
    from ascend_adapt.om_convert.builder.quantize import LinearQuantizer

    q = json.loads((ported("chatglm", "w8a8") / MANIFEST_NAME).read_text())["quantization"]
    lq = LinearQuantizer("w8a8", read_canonical(src("chatglm"))[0], np.float32, plan=plan("chatglm"))
    assert set(lq.manifest()) <= set(q) and {"smooth_scale", "tensors"} <= set(q)
    for key in ("fp16", "keep_fp16_rule", "calib", "folded_into"):
        assert q[key] == lq.manifest()[key], key
    # ChatGLM-6B's α·LN(x) + f(LN(x)) residual reuses the norm output: nothing folds, every 1/s is stored
    assert q["folded_into"] == [] and sorted(q["smooth_scale"]) == sorted(q["quantized"])
