"""Operators registry: every op's numpy reference vs its ONNX emission run in onnxruntime."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from tolerances import (ELEMENTARY_ABS, EXP_REL, MS_SIGMOID_ABS, MS_TANH_ABS, U_FP32,  # noqa: E402
                        fp32_ops_atol, layer_norm_atol, low_precision_atol)

from ascend_adapt.errors import RegistryError  # noqa: E402
from ascend_adapt.operators import OPERATORS, OperatorSpec, get_operator, register_operator  # noqa: E402
from ascend_adapt.operators.graph import OP_TAG, GraphBuilder  # noqa: E402
from ascend_adapt.operators.rotary import rotary_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)


def run_op(name, arrays, attrs=None, *, act_dtype=np.float32, opset=17, target=None, n_const=0):
    """Emit operator `name` over graph inputs (the last `n_const` arrays become initializers),
    run it in onnxruntime; returns (outputs, model, builder)."""
    b = GraphBuilder(f"test_{name}", opset=opset, act_dtype=act_dtype)
    names, feeds = [], {}
    for i, a in enumerate(arrays):
        if i >= len(arrays) - n_const:
            names.append(b.const(a, name=f"c{i}"))
        else:
            names.append(b.add_input(f"in{i}", a.dtype, a.shape))
            feeds[f"in{i}"] = a
    op = get_operator(name)
    refs = op.reference(*arrays, **(attrs or {}))
    refs = refs if isinstance(refs, tuple) else (refs,)
    outs = op.emit(b, names, target, **(attrs or {}))
    for k, (o, r) in enumerate(zip(outs, refs)):
        b.add_output(o, act_dtype, r.shape, name=f"out{k}")
    model = b.make_model()
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds), model, b


def op_types(model):
    return {n.op_type for n in model.graph.node}


def x(*shape, dtype=np.float32, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(dtype)


def amax(*arrays) -> float:
    return max(float(np.abs(np.asarray(a, np.float64)).max()) for a in arrays)


# Tolerances (tests/tolerances.py): two fp32 evaluations of one operator differ by 2·u·Σn relative
# to the magnitude of the values (n: an accumulation's length, 1 per element-wise op), plus the
# error of non-correctly-rounded tanh / sigmoid / exp kernels. The bugs these tests are for (a
# wrong axis, a dropped weight or bias, a wrong constant or position) are ≥ 1e-1 relative.
def _rms_norm_atol(a, ref) -> float:
    # Square, ReduceMean over H (another summation order), AddEps, Sqrt, Div, MulWeight: relative
    # errors propagate to y relatively (every step multiplicative) → 2·u·(H + 5)·max|y|
    return fp32_ops_atol([1, a.shape[-1], 1, 1, 1, 1], amax(ref))


def _layer_norm_atol(a, weight, bias) -> float:
    # Mean, Center, Var, AddEps, Sqrt, Div, MulWeight, AddBias, with the one-pass variance of
    # onnxruntime's fused kernel: 2·u·(H + H·κ + 6)·max|norm·w + b| (tests/tolerances.py)
    return layer_norm_atol(a, weight, bias)


def _attention_atol(q, k, v, mask, past_k=None, past_v=None, *, head_dim, low=False, **_) -> float:
    """Bound on |Δ context| between two evaluations of attention (numpy reference, onnxruntime).

    Scores s = q·kᵀ/√D (+ mask, exact for visible slots; a hidden slot's exp underflows to 0 in
    both): a dot product of D terms, the scale (ChatGLM: q/(√D·coeff), then ·coeff: one more) and
    the add: |δs| ≤ 2·u·(D + 3)·max Σ|q||k|/√D. Softmax turns |δs| into a relative |δp|/p ≤ 2·|δs|,
    its exp adds 2·EXP_REL, its sum over T keys and the divide 2·u·(T + 1); p·v sums T terms:
    2·u·T more, all relative to Σp|v| ≤ max|v|. fp16 (`low`): the stored scores (QK, Scale: 2
    roundings), p (Cast_down) and the context (PV) are each rounded to fp16 by both, and a
    rounding may go the other way (1 ulp = 2·2^-11 relative): |δs| += 2·2·2^-11·max|s|,
    |δp|/p += 2·2^-11, |δctx| += 2·2^-11·max|ctx| (`low_precision_atol`).
    """
    f = lambda t: np.asarray(t, np.float64)  # noqa: E731
    kk = f(k) if past_k is None else np.concatenate([f(past_k), f(k)], 2)
    vv = f(v) if past_v is None else np.concatenate([f(past_v), f(v)], 2)
    g = q.shape[1] // kk.shape[1]
    kk, vv = np.repeat(kk, g, 1), np.repeat(vv, g, 1)
    D, T = head_dim, kk.shape[2]
    qk_abs = (np.abs(f(q)) @ np.abs(np.swapaxes(kk, -1, -2))).max() / math.sqrt(D)
    vmax = amax(vv)
    ds = 2 * U_FP32 * (D + 3) * qk_abs
    rel_p = 2 * EXP_REL + 2 * U_FP32 * (T + 1)
    tol = fp32_ops_atol([T], vmax, extra_abs=(2 * ds + rel_p) * vmax)
    if low:
        s_vis = np.where(f(mask) < 0, 0.0, f(q) @ np.swapaxes(kk, -1, -2) / math.sqrt(D))
        ds16 = low_precision_atol(4, amax(s_vis))
        tol += (2 * ds16 + low_precision_atol(2, 1.0)) * vmax + low_precision_atol(2, vmax)
    return tol


# ---- registry ------------------------------------------------------------------------------
def test_registry_has_the_builtin_ops_with_docs_and_empty_sim_hooks():
    assert {"rms_norm", "layer_norm", "rotary", "swiglu", "gelu_tanh", "glm_residual", "attention"} <= set(
        OPERATORS.names())
    quant = {"anti_quant", "quant", "int8_matmul", "dequant"}  # issue #14: these ship their CPU kernels
    for name, op in OPERATORS.items():
        assert op.name == name and op.doc, name
        if name in quant:
            assert op.sim_kernel is not None and op.sim_cost is not None
        else:
            assert op.sim_kernel is None and op.sim_cost is None


def test_duplicate_registration_raises_and_unknown_lists_known():
    class Again(OperatorSpec):
        name = "rms_norm"

    with pytest.raises(RegistryError, match="already registered"):
        register_operator(Again)
    with pytest.raises(RegistryError, match="rms_norm"):
        get_operator("no_such_op")


def test_every_emitted_node_is_tagged_with_its_operator():
    _, model, _ = run_op("swiglu", [x(2, 8), x(2, 8)])
    tags = {p.value for n in model.graph.node for p in n.metadata_props if p.key == OP_TAG}
    assert tags == {"swiglu"}


# ---- element-wise ops ----------------------------------------------------------------------
@pytest.mark.parametrize("opset", [13, 17, 18])
def test_rms_norm_fp32(opset):
    a, w = x(2, 3, 16, scale=3), 1 + x(16, scale=0.1)
    (y,), model, b = run_op("rms_norm", [a, w], {"eps": 1e-5}, opset=opset, n_const=1)
    ref = get_operator("rms_norm").reference(a, w, eps=1e-5)
    # 2·u·(16 + 5)·max|y| ≈ 2.5e-6·max|y| (_rms_norm_atol); a dropped weight (1 ± 0.1) is ≥ 1e-1·|y|
    np.testing.assert_allclose(y, ref, rtol=0, atol=_rms_norm_atol(a, ref))
    assert "Cast" not in op_types(model)  # fp32 activations: no casts


def test_rms_norm_fp16_is_an_fp32_island_with_named_nodes():
    a, w = x(2, 3, 16, dtype=np.float16, scale=3), (1 + x(16, scale=0.1)).astype(np.float16)
    (y,), model, b = run_op("rms_norm", [a, w], {"eps": 1e-6}, act_dtype=np.float16, n_const=1)
    ref = get_operator("rms_norm").reference(a, w, eps=1e-6)
    assert y.dtype == np.float16
    # the fp32 island as above, then two fp16 roundings (Cast_down, MulWeight) that either side may
    # take the other way: 2·(2·2^-11)·max|y| (tests/tolerances.py) ≈ 2e-3·max|y|. A dropped weight
    # (1 ± 0.1) or a norm over the wrong axis is ≥ 1e-1·|y|.
    y32 = ref.astype(np.float32)
    tol = _rms_norm_atol(a, y32) + low_precision_atol(4, amax(y32))
    np.testing.assert_allclose(y.astype(np.float32), y32, rtol=0, atol=tol)
    names = [n.name for n in model.graph.node]
    assert names[0] == "Cast_up" and "Cast_down" in names and "ReduceMean" in names
    assert b.keep_dtype == [n for n in names if n not in ("MulWeight", "output/out0")]


@pytest.mark.parametrize("opset,fused", [(13, False), (17, True), (18, True)])
def test_layer_norm_fused_only_from_opset_17(opset, fused):
    a, w, bias = x(2, 5, 32, scale=2), 1 + x(32, scale=0.1), x(32, scale=0.1)
    (y,), model, _ = run_op("layer_norm", [a, w, bias], {"eps": 1e-5}, opset=opset, n_const=2)
    # 2·u·(H + H·κ + 6)·max|norm·w + b| ≈ 8e-6·3 (_layer_norm_atol); a dropped bias (0.1 scale) or
    # weight (1 ± 0.1) is ≥ 1e-1
    np.testing.assert_allclose(y, get_operator("layer_norm").reference(a, w, bias, eps=1e-5), rtol=0,
                               atol=_layer_norm_atol(a, w, bias))
    assert ("LayerNormalization" in op_types(model)) == fused


def test_layer_norm_decomposes_when_the_target_lacks_the_fused_op():
    class OldCann:  # e.g. CANN 6: opsets 9-13, no LayerNormalization parser
        def op_support(self, op_type, opset, **_):
            return op_type != "LayerNormalization"

    a, w, bias = x(1, 4, 16), 1 + x(16, scale=0.1), x(16, scale=0.1)
    (y,), model, _ = run_op("layer_norm", [a, w, bias], {"eps": 1e-5}, target=OldCann(), n_const=2)
    assert "LayerNormalization" not in op_types(model)
    # the primitives' two-pass mean/var: within the same bound (_layer_norm_atol)
    np.testing.assert_allclose(y, get_operator("layer_norm").reference(a, w, bias), rtol=0,
                               atol=_layer_norm_atol(a, w, bias))


def test_layer_norm_fp16_island():
    a = x(1, 4, 16, dtype=np.float16, scale=4)
    w, bias = (1 + x(16, scale=0.1)).astype(np.float16), x(16, dtype=np.float16, scale=0.1)
    (y,), _, b = run_op("layer_norm", [a, w, bias], {"eps": 1e-5}, act_dtype=np.float16, n_const=2)
    # fp32 island (_layer_norm_atol), then one fp16 rounding (Cast_down) that either side may take
    # the other way: + 2·2^-11·max|y| (tests/tolerances.py) ≈ 3e-3. A dropped bias or weight is ≥ 1e-1.
    ref = get_operator("layer_norm").reference(a, w, bias).astype(np.float32)
    tol = _layer_norm_atol(a, w, bias) + low_precision_atol(2, amax(ref))
    np.testing.assert_allclose(y.astype(np.float32), ref, rtol=0, atol=tol)
    assert "LayerNormalization" in b.keep_dtype and "Cast_down" in b.keep_dtype


def test_swiglu_and_glm_residual():
    g, u = x(2, 3, 24, scale=2), x(2, 3, 24)
    (y,), _, _ = run_op("swiglu", [g, u])
    # y = g·σ(g)·u: onnxruntime's Sigmoid (≤ ELEMENTARY_ABS) against numpy's 1/(1 + exp(−g)) (exp
    # ≤ EXP_REL relative → ≤ EXP_REL/4 on σ, then Add, Div), times |g·u|; two Muls each side:
    # 2·u·4·max|g·u| + (ELEMENTARY_ABS + EXP_REL/4)·max|g·u| ≈ 1e-6·max|g·u| ≈ 1e-5. A plain
    # sigmoid or a missing gate is ≥ 1e-1 off.
    gu = amax(g.astype(np.float64) * u)
    np.testing.assert_allclose(y, get_operator("swiglu").reference(g, u), rtol=0,
                               atol=fp32_ops_atol([1, 1, 1, 1], gu, extra_abs=(ELEMENTARY_ABS + EXP_REL / 4) * gu))
    a, f = x(2, 3, 8), x(2, 3, 8)
    (y,), _, _ = run_op("glm_residual", [a, f], {"alpha": math.sqrt(56)})
    # bit-exact: both take fp32(√56)·a, rounded, then + f, rounded — the same two correctly
    # rounded IEEE operations in the same order
    np.testing.assert_array_equal(y, np.float32(math.sqrt(56)) * a + f)


def test_gelu_tanh_matches_torch_tanh_gelu():
    torch = pytest.importorskip("torch")
    a = x(4, 64, scale=3)
    (y,), model, _ = run_op("gelu_tanh", [a])
    ref = get_operator("gelu_tanh").reference(a)
    # y = 0.5·x·(1 + tanh(z)): the two tanh kernels differ by ≤ 2·ELEMENTARY_ABS; z itself by
    # ≤ 2·4·u·|z| (4 roundings each, maybe another order: onnxruntime may fuse the pattern, torch
    # writes K·(x + C·x³)), which tanh scales by sech²(z), and |z|·sech²(z) ≤ 0.45; so
    # |Δtanh| ≤ 2·ELEMENTARY_ABS + 3.6·u, times 0.5·|x|; then 1 + t, 0.5·x, the product: 2·u·3·max|x|.
    # ≈ 1.6e-5 for |x| ≤ 12. The erf GELU instead of the tanh one is 4e-4 off, C = 0.04 instead of
    # 0.044715 3e-3: both caught.
    tol = fp32_ops_atol([1, 1, 1], amax(a), extra_abs=0.5 * amax(a) * (2 * ELEMENTARY_ABS + 3.6 * U_FP32))
    np.testing.assert_allclose(y, ref, rtol=0, atol=tol)
    np.testing.assert_allclose(ref, torch.nn.functional.gelu(torch.from_numpy(a), approximate="tanh").numpy(),
                               rtol=0, atol=tol)
    assert "Gelu" not in op_types(model)  # ONNX Gelu is opset 20; ATC has no parser for it


# ---- rotary --------------------------------------------------------------------------------
def test_chatglm_fp16_table_is_the_originals_fp16_path():
    torch = pytest.importorskip("torch")
    rows, dim = 2048, 64
    inv = (1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))).half()
    t = torch.arange(rows, dtype=inv.dtype)
    emb = torch.cat([torch.einsum("i,j->ij", t, inv)] * 2, -1)
    cos, sin = rotary_table(rows, dim, 10000.0, "glm2d", "float16")
    assert cos.dtype == np.float16
    # angles are bit-exact; torch's own half cos/sin differ by 1 fp16 ulp between its vectorized
    # and scalar paths (it depends on the tensor's length), so allow exactly that: 1 ulp of a
    # value in [-1, 1] is ≤ 2^-11. torch rounds its faithful fp32 cos (≤ 1 fp32 ulp off) to fp16,
    # which differs from the correctly rounded fp16 value only where that fp32 result lies within
    # 1 fp32 ulp of an fp16 rounding midpoint: a window of 2·2^-24 in each fp16 spacing of 2^-11
    # (relative), so a fraction ≤ 2^-12 of the entries; allow 4× that (measured 7.6e-5). A table
    # with other angles (fp32 instead of fp16 products) differs in most entries, by up to 0.78.
    for ours, theirs in ((cos, emb.cos().numpy()), (sin, emb.sin().numpy())):
        diff = np.abs(ours.astype(np.float32) - theirs.astype(np.float32))
        assert diff.max() <= 2.0 ** -11 and (diff > 0).mean() <= 4 * 2.0 ** -12
    # the quirk is real: far from the exact table (reference §1.5 measured up to 0.78)
    exact = np.cos(np.arange(rows)[:, None] * (1.0 / 10000 ** (np.arange(0, dim, 2) / dim)))
    assert np.abs(cos[:, : dim // 2].astype(np.float64) - exact).max() > 0.5


def test_llama_fp32_table_matches_transformers_rule():
    torch = pytest.importorskip("torch")
    rows, dim = 256, 32
    inv = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    emb = torch.cat([torch.arange(rows).float()[:, None] * inv[None, :]] * 2, -1)
    cos, _ = rotary_table(rows, dim, 10000.0, "half_split", "float32")
    # same fp32 angles (the exact product rounded once, both); ours the correctly rounded cos,
    # torch's within 1 ulp of the exact value: ≤ 1.5 ulp apart, and 1 ulp of a value in [-1, 1] is
    # ≤ 2^-24: atol 2^-23 = 2·u. An angle off by one position or a wrong theta is O(1e-1) or more.
    np.testing.assert_allclose(cos, emb.cos().numpy(), rtol=0, atol=2 * U_FP32)


@pytest.mark.parametrize("style,rd,D", [("half_split", 16, 16), ("half_split", 8, 16), ("interleaved", 16, 16),
                                        ("interleaved", 8, 16), ("glm2d", 8, 16)])
def test_rotary_styles(style, rd, D):
    B, N, S, rows = 2, 3, 5, 64
    a = x(B, N, S, D)
    pos = RNG.integers(0, rows, size=(B, 2, S) if style == "glm2d" else (B, S)).astype(np.int32)
    attrs = dict(style=style, rotary_dim=rd, theta=10000.0, table_dtype="float32", table_rows=rows)
    (y,), _, _ = run_op("rotary", [a, pos], {**attrs, "head_dim": D})
    ref = get_operator("rotary").reference(a, pos, **attrs)
    # bit-exact: the graph gathers the same table constants and takes the same correctly rounded
    # x·cos, rot·sin (Neg is exact) and their sum / difference in the same order as numpy
    np.testing.assert_array_equal(y, ref)
    # independent check of the convention: rotating by position 0 is the identity, exactly
    # (cos 0 = 1, sin 0 = 0 are exact, x·1 + r·0 = x)
    zero = np.zeros_like(pos)
    np.testing.assert_array_equal(get_operator("rotary").reference(a, zero, **attrs), a)
    if style == "interleaved":  # pair (0, 1) rotated by angle pos·inv_freq[0] = pos
        p = pos[0, 0]
        c, s = math.cos(p), math.sin(p)
        # the float64 rotation vs fp32: cos/sin rounded (u each), 2 products and the sum (u each),
        # relative to |a0| + |a1|: 2·u·3·(|a0| + |a1|) at most (one side exact). A swapped pair or a
        # sign error is O(|a|).
        a0, a1 = float(a[0, 0, 0, 0]), float(a[0, 0, 0, 1])
        np.testing.assert_allclose(ref[0, 0, 0, :2], [a0 * c - a1 * s, a1 * c + a0 * s], rtol=0,
                                   atol=fp32_ops_atol([1, 1, 1], abs(a0) + abs(a1)))


def test_rotary_tables_are_gathered_once_per_graph():
    b = GraphBuilder("t", 17)
    q = b.add_input("q", np.float32, [1, 2, 3, 8])
    k = b.add_input("k", np.float32, [1, 2, 3, 8])
    pos = b.add_input("pos", np.int32, [1, 3])
    for t in (q, k):
        get_operator("rotary").emit(b, [t, pos], style="half_split", rotary_dim=8, table_rows=16, head_dim=8)
    assert sum(n.op_type == "Gather" for n in b.nodes) == 2  # cos + sin, shared by q and k


# ---- attention -----------------------------------------------------------------------------
def _mask(B, S, T, rng=RNG, fill=-10000.0):
    vis = rng.random((B, 1, S, T)) < 0.7
    vis[..., -S:] |= np.eye(S, dtype=bool)  # every query sees itself
    return np.where(vis, 0.0, fill).astype(np.float32)


@pytest.mark.parametrize("heads,kv,past,coeff", [(4, 4, False, None), (4, 2, True, None), (4, 1, True, None),
                                                 (4, 4, True, 3.0), (4, 4, False, 28.0)])
def test_attention(heads, kv, past, coeff):
    B, S, M, D = 2, 3, 6, 8
    q, k, v = x(B, heads, S, D), x(B, kv, S, D), x(B, kv, S, D)
    arrays = [q, k, v, _mask(B, S, M + S if past else S)]
    if past:
        arrays += [x(B, kv, M, D), x(B, kv, M, D)]
    attrs = dict(num_heads=heads, num_kv_heads=kv, head_dim=D, layer_coeff=coeff)
    (y,), model, b = run_op("attention", arrays, attrs)
    ref = get_operator("attention").reference(*arrays, **attrs)
    assert y.shape == (B, S, heads * D)
    # _attention_atol: ≈ 2e-5·max|v| here. A hidden slot made visible, a wrong KV head or a
    # missing scale is ≥ 1e-1.
    np.testing.assert_allclose(y, ref, rtol=0, atol=_attention_atol(*arrays, **attrs))
    assert "Softmax" in b.keep_dtype


def test_attention_additive_mask_equals_masked_fill_semantics():
    """ChatGLM's masked_fill(-10000)·coeff and our additive -10000 give the same probabilities."""
    B, H, S, D, coeff = 1, 2, 4, 8, 5.0
    q, k, v = x(B, H, S, D), x(B, H, S, D), x(B, H, S, D)
    mask = np.triu(np.full((S, S), -10000.0, np.float32), 1)[None, None]
    ours = get_operator("attention").reference(q, k, v, mask, num_heads=H, num_kv_heads=H, head_dim=D,
                                               layer_coeff=coeff)
    s = (q / (math.sqrt(D) * coeff)) @ np.swapaxes(k, -1, -2)
    s = np.where(mask < 0, -10000.0, s) * coeff
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    glm = (p @ v).transpose(0, 2, 1, 3).reshape(B, S, H * D)
    # bit-exact: visible scores are the same fp32 operations (+0 is exact), a hidden slot's
    # exp(score·coeff − max) and exp(−10000·coeff − max) both underflow to exactly 0, and the
    # row max, sums and p·v see identical terms
    np.testing.assert_array_equal(ours, glm)


def test_attention_fp16_softmax_island():
    B, H, S, D = 1, 2, 3, 8
    arrays = [x(B, H, S, D, dtype=np.float16), x(B, H, S, D, dtype=np.float16), x(B, H, S, D, dtype=np.float16),
              _mask(B, S, S).astype(np.float16)]
    attrs = dict(num_heads=H, num_kv_heads=H, head_dim=D)
    (y,), _, b = run_op("attention", arrays, attrs, act_dtype=np.float16)
    ref = get_operator("attention").reference(*arrays, **attrs)
    # _attention_atol(low=True): the fp16 roundings of scores, p and context that may go the other
    # way, (2·4·max|s| + 4)·2^-11·max|v| ≈ 1.3e-2·max|v| (max|s| ≈ 3); a hidden slot made visible
    # or a missing scale is ≥ 1e-1·max|v|
    np.testing.assert_allclose(y.astype(np.float32), ref.astype(np.float32), rtol=0,
                               atol=_attention_atol(*arrays, **attrs, low=True))
    assert b.keep_dtype == ["Cast_up", "Softmax", "Cast_down"]


# ---- docs ----------------------------------------------------------------------------------
def test_docs_operators_snippet_runs():
    text = (ROOT / "docs" / "operators.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "docs/operators.md has no python snippet"
    before, ns = set(OPERATORS.names()), {}
    try:
        for code in blocks:
            exec(compile(code, "docs/operators.md", "exec"), ns)  # noqa: S102
    finally:
        for name in set(OPERATORS.names()) - before:
            OPERATORS.unregister(name)


# ---- MindSpore implementations ---------------------------------------------------------------
@pytest.mark.mindspore
def test_mindspore_implementations_match_the_references():
    ms = pytest.importorskip("mindspore")
    a, w, bias = x(2, 3, 16, scale=2), 1 + x(16, scale=0.1), x(16, scale=0.1)
    cases = [("rms_norm", (a, w), {"eps": 1e-5}), ("layer_norm", (a, w, bias), {"eps": 1e-5}),
             ("gelu_tanh", (a,), {}), ("swiglu", (a, a[::-1].copy()), {}), ("glm_residual", (a, a), {"alpha": 7.5})]
    for name, args, kw in cases:
        op = get_operator(name)
        got = op.mindspore(*[ms.Tensor(t) for t in args], **kw).asnumpy()
        ref = op.reference(*args, **kw)
        # the numpy-vs-onnxruntime bounds of the tests above, with MindSpore's kernels in place of
        # onnxruntime's (tests/tolerances.py): rsqrt instead of Sqrt + Div (≤ 1.5 ulp: one more
        # stage); its Sigmoid ≤ MS_SIGMOID_ABS; its Tanh, a fast approximation off by up to 1e-4
        # (MS_TANH_ABS = 2^-12), scaled by 0.5·|x| — 7e-4 here, which still catches a wrong
        # GELU constant (C = 0.04: 3e-3) but not the erf form (4e-4). glm_residual: two roundings
        # (α·a, + f) of values ≤ 8.5·max|a|.
        if name == "rms_norm":
            atol = fp32_ops_atol([1, a.shape[-1], 1, 2, 1, 1], amax(ref))
        elif name == "layer_norm":
            atol = _layer_norm_atol(a, w, bias)
        elif name == "gelu_tanh":
            atol = fp32_ops_atol([1, 1, 1], amax(a),
                                 extra_abs=0.5 * amax(a) * (MS_TANH_ABS + ELEMENTARY_ABS + 3.6 * U_FP32))
        elif name == "swiglu":
            gu = amax(args[0].astype(np.float64) * args[1])
            atol = fp32_ops_atol([1, 1, 1, 1], gu, extra_abs=(MS_SIGMOID_ABS + EXP_REL / 4) * gu)
        else:
            atol = fp32_ops_atol([1, 1], 8.5 * amax(a))
        np.testing.assert_allclose(got, ref, rtol=0, atol=atol, err_msg=name)
    with pytest.raises(Exception, match="no MindSpore implementation"):
        get_operator("attention").mindspore()
