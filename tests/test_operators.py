"""Operators registry: every op's numpy reference vs its ONNX emission run in onnxruntime."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

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


# ---- registry ------------------------------------------------------------------------------
def test_registry_has_the_builtin_ops_with_docs_and_empty_sim_hooks():
    assert {"rms_norm", "layer_norm", "rotary", "swiglu", "gelu_tanh", "glm_residual", "attention"} <= set(
        OPERATORS.names())
    for name, op in OPERATORS.items():
        assert op.name == name and op.doc, name
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
    np.testing.assert_allclose(y, get_operator("rms_norm").reference(a, w, eps=1e-5), rtol=1e-5, atol=1e-6)
    assert "Cast" not in op_types(model)  # fp32 activations: no casts


def test_rms_norm_fp16_is_an_fp32_island_with_named_nodes():
    a, w = x(2, 3, 16, dtype=np.float16, scale=3), (1 + x(16, scale=0.1)).astype(np.float16)
    (y,), model, b = run_op("rms_norm", [a, w], {"eps": 1e-6}, act_dtype=np.float16, n_const=1)
    ref = get_operator("rms_norm").reference(a, w, eps=1e-6)
    assert y.dtype == np.float16
    np.testing.assert_allclose(y.astype(np.float32), ref.astype(np.float32), rtol=2e-3, atol=2e-3)
    names = [n.name for n in model.graph.node]
    assert names[0] == "Cast_up" and "Cast_down" in names and "ReduceMean" in names
    assert b.keep_dtype == [n for n in names if n not in ("MulWeight", "output/out0")]


@pytest.mark.parametrize("opset,fused", [(13, False), (17, True), (18, True)])
def test_layer_norm_fused_only_from_opset_17(opset, fused):
    a, w, bias = x(2, 5, 32, scale=2), 1 + x(32, scale=0.1), x(32, scale=0.1)
    (y,), model, _ = run_op("layer_norm", [a, w, bias], {"eps": 1e-5}, opset=opset, n_const=2)
    np.testing.assert_allclose(y, get_operator("layer_norm").reference(a, w, bias, eps=1e-5), rtol=1e-5, atol=1e-5)
    assert ("LayerNormalization" in op_types(model)) == fused


def test_layer_norm_decomposes_when_the_target_lacks_the_fused_op():
    class OldCann:  # e.g. CANN 6: opsets 9-13, no LayerNormalization parser
        def op_support(self, op_type, opset, **_):
            return op_type != "LayerNormalization"

    a, w, bias = x(1, 4, 16), 1 + x(16, scale=0.1), x(16, scale=0.1)
    (y,), model, _ = run_op("layer_norm", [a, w, bias], {"eps": 1e-5}, target=OldCann(), n_const=2)
    assert "LayerNormalization" not in op_types(model)
    np.testing.assert_allclose(y, get_operator("layer_norm").reference(a, w, bias), rtol=1e-5, atol=1e-5)


def test_layer_norm_fp16_island():
    a = x(1, 4, 16, dtype=np.float16, scale=4)
    w, bias = (1 + x(16, scale=0.1)).astype(np.float16), x(16, dtype=np.float16, scale=0.1)
    (y,), _, b = run_op("layer_norm", [a, w, bias], {"eps": 1e-5}, act_dtype=np.float16, n_const=2)
    np.testing.assert_allclose(y.astype(np.float32),
                               get_operator("layer_norm").reference(a, w, bias).astype(np.float32), atol=4e-3)
    assert "LayerNormalization" in b.keep_dtype and "Cast_down" in b.keep_dtype


def test_swiglu_and_glm_residual():
    g, u = x(2, 3, 24, scale=2), x(2, 3, 24)
    (y,), _, _ = run_op("swiglu", [g, u])
    np.testing.assert_allclose(y, get_operator("swiglu").reference(g, u), rtol=1e-5, atol=1e-6)
    a, f = x(2, 3, 8), x(2, 3, 8)
    (y,), _, _ = run_op("glm_residual", [a, f], {"alpha": math.sqrt(56)})
    np.testing.assert_allclose(y, math.sqrt(56) * a + f, rtol=1e-6, atol=1e-6)


def test_gelu_tanh_matches_torch_tanh_gelu():
    torch = pytest.importorskip("torch")
    a = x(4, 64, scale=3)
    (y,), model, _ = run_op("gelu_tanh", [a])
    ref = get_operator("gelu_tanh").reference(a)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ref, torch.nn.functional.gelu(torch.from_numpy(a), approximate="tanh").numpy(),
                               rtol=1e-5, atol=1e-6)
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
    # and scalar paths (it depends on the tensor's length), so allow exactly that
    for ours, theirs in ((cos, emb.cos().numpy()), (sin, emb.sin().numpy())):
        diff = np.abs(ours.astype(np.float32) - theirs.astype(np.float32))
        assert diff.max() <= 2.0 ** -11 and (diff > 0).mean() < 1e-3
    # the quirk is real: far from the exact table (reference §1.5 measured up to 0.78)
    exact = np.cos(np.arange(rows)[:, None] * (1.0 / 10000 ** (np.arange(0, dim, 2) / dim)))
    assert np.abs(cos[:, : dim // 2].astype(np.float64) - exact).max() > 0.5


def test_llama_fp32_table_matches_transformers_rule():
    torch = pytest.importorskip("torch")
    rows, dim = 256, 32
    inv = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    emb = torch.cat([torch.arange(rows).float()[:, None] * inv[None, :]] * 2, -1)
    cos, _ = rotary_table(rows, dim, 10000.0, "half_split", "float32")
    np.testing.assert_allclose(cos, emb.cos().numpy(), atol=1e-6)


@pytest.mark.parametrize("style,rd,D", [("half_split", 16, 16), ("half_split", 8, 16), ("interleaved", 16, 16),
                                        ("interleaved", 8, 16), ("glm2d", 8, 16)])
def test_rotary_styles(style, rd, D):
    B, N, S, rows = 2, 3, 5, 64
    a = x(B, N, S, D)
    pos = RNG.integers(0, rows, size=(B, 2, S) if style == "glm2d" else (B, S)).astype(np.int32)
    attrs = dict(style=style, rotary_dim=rd, theta=10000.0, table_dtype="float32", table_rows=rows)
    (y,), _, _ = run_op("rotary", [a, pos], {**attrs, "head_dim": D})
    ref = get_operator("rotary").reference(a, pos, **attrs)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    # independent check of the convention: rotating by position 0 is the identity
    zero = np.zeros_like(pos)
    np.testing.assert_allclose(get_operator("rotary").reference(a, zero, **attrs), a, atol=1e-7)
    if style == "interleaved":  # pair (0, 1) rotated by angle pos·inv_freq[0] = pos
        p = pos[0, 0]
        c, s = math.cos(p), math.sin(p)
        np.testing.assert_allclose(ref[0, 0, 0, :2], [a[0, 0, 0, 0] * c - a[0, 0, 0, 1] * s,
                                                      a[0, 0, 0, 1] * c + a[0, 0, 0, 0] * s], rtol=1e-4, atol=1e-5)


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
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
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
    np.testing.assert_allclose(ours, glm, rtol=1e-5, atol=1e-6)


def test_attention_fp16_softmax_island():
    B, H, S, D = 1, 2, 3, 8
    arrays = [x(B, H, S, D, dtype=np.float16), x(B, H, S, D, dtype=np.float16), x(B, H, S, D, dtype=np.float16),
              _mask(B, S, S).astype(np.float16)]
    attrs = dict(num_heads=H, num_kv_heads=H, head_dim=D)
    (y,), _, b = run_op("attention", arrays, attrs, act_dtype=np.float16)
    ref = get_operator("attention").reference(*arrays, **attrs)
    np.testing.assert_allclose(y.astype(np.float32), ref.astype(np.float32), atol=3e-3)
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
        # MindSpore's CPU Tanh is a fast approximation: 1 + tanh(x) for x << 0 is off by ~1e-4
        atol = 3e-4 if name == "gelu_tanh" else 2e-6
        np.testing.assert_allclose(got, op.reference(*args, **kw), rtol=1e-5, atol=atol, err_msg=name)
    with pytest.raises(Exception, match="no MindSpore implementation"):
        get_operator("attention").mindspore()
