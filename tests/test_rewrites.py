"""Rewrite rules: each one proven numerically with onnxruntime (before vs after, random inputs),
plus the misses it reports, the framework and the fp32-island files."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tolerances import (ELEMENTARY_ABS, U_FP32, fp32_ops_atol, layer_norm_atol, layer_norm_magnitude,
                        low_precision_atol)

from ascend_adapt.errors import RegistryError
from ascend_adapt.operators.rewrites import (RULES, SKIP, NodeRule, apply_rules, write_keep_dtype,
                                             write_modify_mixlist)

REPO = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)
F, I64, I32, BOOL, D = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32, TensorProto.BOOL, TensorProto.DOUBLE


def make(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in dict(inits).items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    onnx.checker.check_model(m)
    return m


def vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def run(model, feeds):
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    dtypes = {i.name: i.type for i in sess.get_inputs()}
    cast = {"tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(float)": np.float32,
            "tensor(double)": np.float64, "tensor(float16)": np.float16, "tensor(bool)": np.bool_}
    return sess.run(None, {k: v.astype(cast[dtypes[k]]) for k, v in feeds.items() if k in dtypes})


def rewrite_and_compare(model, feeds, rules=None, target="Ascend310P3", atol=0.0, **kw):
    """Apply rules to a copy; assert the outputs match onnxruntime on the original. Returns (new, report).

    atol 0 (the default): the rewrite must be bit-exact — it moves, folds, retypes integers or
    drops nodes but leaves every float operation as it was. A rewrite that replaces or reorders
    float operations passes a tolerance derived from them (tests/tolerances.py)."""
    before = run(model, feeds)
    work = onnx.ModelProto()
    work.CopyFrom(model)
    new, report = apply_rules(work, target, rules, **kw)
    assert not report.errors, report.errors
    onnx.checker.check_model(new)
    after = run(new, feeds)
    assert len(before) == len(after)
    for a, b in zip(before, after):
        assert a.shape == b.shape
        np.testing.assert_allclose(b.astype(np.float64), a.astype(np.float64), atol=atol, rtol=0)
    return new, report


def ops(model):
    return Counter(n.op_type for n in model.graph.node)


# ---------------------------------------------------------------------------------- framework
def test_registry_holds_every_rule_and_refuses_duplicates():
    expected = {"fix_input_shapes", "fold_shape_chains", "remove_dead_isnan_where", "trilu_to_const",
                "einsum_to_matmul", "gelu20_to_tanh_or_erf", "layernorm_to_primitives", "int64_to_int32",
                "float64_to_float32", "opset_downconvert"}
    assert expected <= set(RULES.names())
    with pytest.raises(RegistryError, match="already registered"):
        RULES.register("trilu_to_const", RULES.get("einsum_to_matmul"))
    with pytest.raises(RegistryError, match="unknown rewrite rule"):
        apply_rules(make([], [vi("x", F, [1])], [vi("x", F, [1])]), None, ["no_such_rule"])


def test_docs_example_rule_runs():
    text = (REPO / "docs" / "rewrite_rules.md").read_text()
    code = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "register_rule" in b and "class" in b]
    assert len(code) == 1
    try:
        exec(compile(code[0], "docs/rewrite_rules.md", "exec"), {})
        m = make([helper.make_node("Identity", ["x"], ["a"], name="id1"),
                  helper.make_node("Relu", ["a"], ["b"], name="relu"),
                  helper.make_node("Identity", ["b"], ["y"], name="id_out")],
                 [vi("x", F, [2, 3])], [vi("y", F, [2, 3])])
        new, report = rewrite_and_compare(m, {"x": RNG.standard_normal((2, 3))}, ["drop_identity"])
        assert report["drop_identity"].fired == 1
        assert [x.where for x in report["drop_identity"].misses] == ["id_out"]
        assert "graph output" in report["drop_identity"].misses[0].reason
        assert ops(new) == {"Relu": 1, "Identity": 1}
    finally:
        RULES.unregister("drop_identity")


def test_skip_is_silent_and_misses_carry_reasons():
    class Probe(NodeRule):
        name, op_type = "probe_rule", "Relu"

        def check(self, ctx, node):
            return SKIP if node.name == "quiet" else "never matches"

    m = make([helper.make_node("Relu", ["x"], ["a"], name="quiet"),
              helper.make_node("Relu", ["a"], ["y"], name="loud")],
             [vi("x", F, [2])], [vi("y", F, [2])])
    RULES.register("probe_rule", Probe())
    try:
        _, report = apply_rules(m, None, ["probe_rule"])
        r = report["probe_rule"]
        assert r.fired == 0 and [(x.where, x.reason) for x in r.misses] == [("loud", "never matches")]
        assert "probe_rule" in str(report)
    finally:
        RULES.unregister("probe_rule")


# ---------------------------------------------------------------------------------- trilu_to_const
def test_trilu_of_constant_becomes_initializer():
    mask = np.full((5, 5), -1e4, np.float32)
    m = make([helper.make_node("Trilu", ["m", "k"], ["t"], name="tri", upper=1),
              helper.make_node("Add", ["x", "t"], ["y"])],
             [vi("x", F, [2, 5, 5])], [vi("y", F, [2, 5, 5])], {"m": mask, "k": np.array(1, np.int64)}, opset=14)
    new, rep = rewrite_and_compare(m, {"x": RNG.standard_normal((2, 5, 5))}, ["trilu_to_const"])
    assert rep["trilu_to_const"].fired == 1 and "Trilu" not in ops(new)


def test_trilu_of_activation_becomes_where_with_constant_mask():
    m = make([helper.make_node("Trilu", ["x", "k"], ["y"], name="tri", upper=0)],
             [vi("x", F, [2, 4, 6])], [vi("y", F, [2, 4, 6])], {"k": np.array(-1, np.int64)}, opset=14)
    x = RNG.standard_normal((2, 4, 6))
    x[0, 0, 0] = -np.inf  # Where, unlike a multiply by 0/1, keeps inf out of the masked part
    new, rep = rewrite_and_compare(m, {"x": x}, ["trilu_to_const"])
    assert ops(new) == {"Where": 1}


def test_trilu_with_dynamic_k_is_a_miss():
    m = make([helper.make_node("Trilu", ["x", "k"], ["y"], name="tri")],
             [vi("x", F, [3, 3]), vi("k", I64, [])], [vi("y", F, [3, 3])], opset=14)
    _, rep = apply_rules(m, None, ["trilu_to_const"])
    assert rep["trilu_to_const"].fired == 0 and "k input 'k' is not constant" in rep["trilu_to_const"].misses[0].reason


# ---------------------------------------------------------------------------------- int64_to_int32
def _ids_model():
    emb = RNG.standard_normal((50, 4)).astype(np.float32)
    pos = RNG.standard_normal((16, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["e"]),
        helper.make_node("Add", ["position_ids", "one"], ["p1"]),
        helper.make_node("Gather", ["pos", "p1"], ["pe"]),
        helper.make_node("Add", ["e", "pe"], ["h"]),
        helper.make_node("Unsqueeze", ["position_ids", "ax"], ["pu"]),  # int data + int64-only axes
        helper.make_node("Cast", ["pu"], ["pf"], to=F),
        helper.make_node("Reshape", ["pf", "shape"], ["pr"]),
        helper.make_node("Mul", ["h", "pr"], ["y"]),
        helper.make_node("Gather", ["emb", "const_ids"], ["ce"]),
        helper.make_node("ReduceSum", ["ce"], ["cs"], keepdims=0),
        helper.make_node("Add", ["y", "cs"], ["out"]),
    ]
    inits = {"emb": emb, "pos": pos, "one": np.array(1, np.int64), "ax": np.array([2], np.int64),
             "shape": np.array([1, 6, 1], np.int64), "const_ids": np.array([3, 4], np.int64)}
    return make(nodes, [vi("input_ids", I64, [1, 6]), vi("position_ids", I64, [1, 6])],
                [vi("out", F, [1, 6, 4]), vi("p1", I64, [1, 6])], inits)


def test_int64_to_int32_converts_ids_positions_and_gather_indices():
    m = _ids_model()
    feeds = {"input_ids": RNG.integers(0, 50, (1, 6)), "position_ids": np.arange(6)[None]}
    new, rep = rewrite_and_compare(m, feeds, ["int64_to_int32"])
    assert {i.name: i.type.tensor_type.elem_type for i in new.graph.input} == {"input_ids": I32, "position_ids": I32}
    assert {o.name: o.type.tensor_type.elem_type for o in new.graph.output} == {"out": F, "p1": I64}
    gather_idx = [n.input[1] for n in new.graph.node if n.op_type == "Gather"]
    init_types = {t.name: t.data_type for t in new.graph.initializer}
    for name in gather_idx:  # every Gather index is int32: an input, a converted chain or an int32 constant
        assert init_types.get(name, I32) == I32
    casts = [n for n in new.graph.node if n.op_type == "Cast"
             and helper.get_attribute_value(n.attribute[0]) == I64]
    assert len(casts) == 1  # only the int64 graph output p1 needs a cast back (Unsqueeze data takes int32)
    assert "graph inputs now int32" in rep["int64_to_int32"].notes[0]


def test_int64_constant_that_does_not_fit_stays_int64():
    m = make([helper.make_node("Add", ["ids", "big"], ["s"]), helper.make_node("Cast", ["s"], ["y"], to=F)],
             [vi("ids", I64, [3])], [vi("y", F, [3])], {"big": np.array([2**40], np.int64)})
    new, _ = rewrite_and_compare(m, {"ids": np.arange(3)}, ["int64_to_int32"])
    add = next(n for n in new.graph.node if n.op_type == "Add")
    assert any(n.op_type == "Cast" and n.output[0] == add.input[0] for n in new.graph.node)  # cast back before Add


# ---------------------------------------------------------------------------------- gelu20
def _gelu_atol(x) -> float:
    """onnxruntime's Gelu-20 kernel vs the primitives: y = 0.5·x·(1 + f(z)), f = erf or tanh.

    The two f kernels differ by ≤ 2·ELEMENTARY_ABS; z by ≤ 2·5·u·|z| (x/√2; or x², x³, ·C, + x, ·K),
    which f scales by its slope: |z|·f'(z) ≤ 0.48 (erf), 0.45 (tanh) → ≤ 4.8·u; times 0.5·|x|.
    Then 1 + f, 0.5·x and the product: 2·u·3·max|x| (tests/tolerances.py). ≈ 1e-5 for |x| ≤ 8;
    the other GELU form (erf for tanh) is 4e-4 off, a wrong constant (C = 0.04) 3e-3.
    """
    mx = float(np.abs(x).max())
    return fp32_ops_atol([1, 1, 1], mx, extra_abs=0.5 * mx * (2 * ELEMENTARY_ABS + 4.8 * U_FP32))


@pytest.mark.parametrize("approx", ["none", "tanh"])
def test_gelu20_becomes_primitives(approx):
    m = make([helper.make_node("Gelu", ["x"], ["y"], approximate=approx)], [vi("x", F, [3, 7])], [vi("y", F, [3, 7])],
             opset=20)
    x = (RNG.standard_normal((3, 7)) * 3).astype(np.float32)
    new, rep = rewrite_and_compare(m, {"x": x}, ["gelu20_to_tanh_or_erf"], atol=_gelu_atol(x))
    assert "Gelu" not in ops(new) and ("Tanh" if approx == "tanh" else "Erf") in ops(new)


def test_gelu20_automatic_mode_then_opset_is_lowered():
    m = make([helper.make_node("Gelu", ["x"], ["y"])], [vi("x", F, [4])], [vi("y", F, [4])], opset=20)
    x = RNG.standard_normal(4).astype(np.float32)
    new, rep = rewrite_and_compare(m, {"x": x}, None, atol=_gelu_atol(x))  # the erf form: _gelu_atol
    assert rep.fired.get("gelu20_to_tanh_or_erf") == 1 and rep.fired.get("opset_downconvert") == 1
    assert new.opset_import[0].version == 18


# ---------------------------------------------------------------------------------- layernorm
@pytest.mark.parametrize("axis,bias,dtype", [(-1, True, np.float32), (1, False, np.float32), (-1, True, np.float16)])
def test_layernorm_to_primitives(axis, bias, dtype):
    elem = F if dtype == np.float32 else TensorProto.FLOAT16
    shape = [2, 3, 8]
    nshape = shape[axis:] if axis >= 0 else shape[axis:]
    inits = {"s": RNG.standard_normal(nshape).astype(dtype)}
    ins = ["x", "s"]
    if bias:
        inits["b"] = RNG.standard_normal(nshape).astype(dtype)
        ins.append("b")
    m = make([helper.make_node("LayerNormalization", ins, ["y"], axis=axis, epsilon=1e-5)],
             [vi("x", elem, shape)], [vi("y", elem, shape)], inits)
    x = RNG.standard_normal(shape).astype(dtype)
    # fused (one-pass variance) vs primitives (two-pass), both fp32: layer_norm_atol ≈ 1e-5. fp16:
    # the fused kernel rounds y to fp16 once, the primitives three times (Cast back, Mul scale,
    # Add bias), each ≤ 2^-11 relative to a value ≤ max|norm·s| + max|b|: + 4·2^-11·that
    # (tests/tolerances.py) ≈ 1e-2. A dropped bias or scale, or the wrong axis, is ≥ 1e-1 relative.
    atol = layer_norm_atol(x, inits["s"], inits.get("b"), axis)
    if dtype == np.float16:
        atol += low_precision_atol(4, layer_norm_magnitude(x, inits["s"], inits.get("b"), axis))
    new, rep = rewrite_and_compare(m, {"x": x}, ["layernorm_to_primitives"], atol=atol)
    assert "LayerNormalization" not in ops(new) and ops(new)["ReduceMean"] == 2


def test_layernorm_kept_where_the_target_parses_it():
    m = make([helper.make_node("LayerNormalization", ["x", "s"], ["y"], name="ln")], [vi("x", F, [2, 4])],
             [vi("y", F, [2, 4])], {"s": np.ones(4, np.float32)})
    _, rep = apply_rules(m, "Ascend310P3", None)
    assert rep["layernorm_to_primitives"].fired == 0
    assert "accepts LayerNormalization at opset 17" in rep["layernorm_to_primitives"].misses[0].reason
    _, rep = apply_rules(m, "Ascend310P3", None, cann_version="6.0")
    assert rep["layernorm_to_primitives"].fired == 1 and rep["opset_downconvert"].fired == 1


# ---------------------------------------------------------------------------------- einsum
@pytest.mark.parametrize("eq,sa,sb", [
    ("bhqd,bhkd->bhqk", (2, 3, 4, 5), (2, 3, 6, 5)),
    ("bhqk,bhkd->bhqd", (2, 3, 4, 6), (2, 3, 6, 5)),
    ("bij,bjk->bik", (2, 4, 5), (2, 5, 3)),
    ("ij,jk->ik", (4, 5), (5, 3)),
    ("ij,jk", (4, 5), (5, 3)),
    ("bij,jk->bik", (2, 4, 5), (5, 3)),
    ("bqhd,bkhd->bhqk", (2, 4, 3, 5), (2, 6, 3, 5)),
    ("bik,bjk->bji", (2, 4, 5), (2, 3, 5)),
])
def test_einsum_to_matmul(eq, sa, sb):
    out = vi("y", F, np.einsum(eq, np.zeros(sa), np.zeros(sb)).shape)
    m = make([helper.make_node("Einsum", ["a", "b"], ["y"], equation=eq)], [vi("a", F, sa), vi("b", F, sb)], [out])
    a, b = RNG.standard_normal(sa).astype(np.float32), RNG.standard_normal(sb).astype(np.float32)
    # Einsum and MatMul sum the same K products in their own orders: 2·u·K·max Σ|a||b|
    # (tests/tolerances.py); K and Σ|a||b| from einsum over ones and over |a|, |b|. A wrong
    # transpose or contracted axis is O(1).
    K = int(np.einsum(eq, np.ones(sa), np.ones(sb)).max())
    atol = fp32_ops_atol([K], np.einsum(eq, np.abs(a).astype(np.float64), np.abs(b)).max())
    new, rep = rewrite_and_compare(m, {"a": a, "b": b}, ["einsum_to_matmul"], atol=atol)
    assert "Einsum" not in ops(new) and ops(new)["MatMul"] == 1


@pytest.mark.parametrize("eq,why", [
    ("iij,jk->ik", "repeated letter"),
    ("ii->i", "1 operands"),
    ("ij,jk,kl->il", "3 operands"),
    ("...ij,...jk->...ik", "ellipsis"),
    ("ijk,jkl->il", "2 contracted letters"),
    ("ij,j->i", "0 free letters in the second operand"),
    ("ij,kl->ijkl", "0 contracted"),
])
def test_einsum_misses_say_why(eq, why):
    subs = eq.split("->")[0].split(",")
    out_subs = eq.split("->")[1] if "->" in eq else ""
    m = make([helper.make_node("Einsum", [f"x{i}" for i in range(len(subs))], ["y"], equation=eq, name="e")],
             [vi(f"x{i}", F, list(s.replace("...", "E"))) for i, s in enumerate(subs)],
             [vi("y", F, list(out_subs.replace("...", "E")))])
    _, rep = apply_rules(m, None, ["einsum_to_matmul"])
    assert rep["einsum_to_matmul"].fired == 0 and why in rep["einsum_to_matmul"].misses[0].reason


# ---------------------------------------------------------------------------------- isnan / where
def _sdpa_guard(fill):
    nodes = [
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Where", ["keep", "zero", "fill"], ["mask"]),
        helper.make_node("Add", ["s", "mask"], ["sm_in"]),
        helper.make_node("Softmax", ["sm_in"], ["p"], axis=-1),
        helper.make_node("IsNaN", ["p"], ["nan"], name="isnan"),
        helper.make_node("Where", ["nan", "zero", "p"], ["y"], name="guard"),
    ]
    return make(nodes, [vi("q", F, [2, 4, 8]), vi("kt", F, [2, 8, 4]), vi("keep", BOOL, [1, 4, 4])],
                [vi("y", F, [2, 4, 4])], {"zero": np.array(0, np.float32), "fill": np.array(fill, np.float32)})


def test_dead_isnan_guard_is_removed_for_a_finite_mask():
    m = _sdpa_guard(np.finfo(np.float32).min)
    keep = np.tril(np.ones((4, 4), bool))[None]
    feeds = {"q": RNG.standard_normal((2, 4, 8)), "kt": RNG.standard_normal((2, 8, 4)), "keep": keep}
    new, rep = rewrite_and_compare(m, feeds, ["remove_dead_isnan_where"])
    assert "IsNaN" not in ops(new) and ops(new)["Where"] == 1 and "finite activations" in rep.results[0].notes[0]
    keep0 = keep.copy()
    keep0[0, 0] = False  # a fully masked row: finite mask gives a uniform row, never NaN
    assert not np.isnan(run(new, {**feeds, "keep": keep0})[0]).any()


def test_isnan_guard_kept_when_the_mask_holds_inf():
    m = _sdpa_guard(-np.inf)
    _, rep = apply_rules(m, None, ["remove_dead_isnan_where"])
    r = rep["remove_dead_isnan_where"]
    assert r.fired == 0
    assert any(x.where == "guard" and "holds inf/NaN" in x.reason for x in r.misses)


def test_isnan_guard_kept_when_both_add_operands_are_masks():
    nodes = [helper.make_node("Where", ["keep", "zero", "fmin"], ["m1"]),
             helper.make_node("Where", ["keep", "zero", "ninf"], ["m2"]),
             helper.make_node("Add", ["m1", "m2"], ["s"]),
             helper.make_node("Softmax", ["s"], ["p"]),
             helper.make_node("IsNaN", ["p"], ["nan"]),
             helper.make_node("Where", ["nan", "zero", "p"], ["y"], name="guard")]
    m = make(nodes, [vi("keep", BOOL, [4, 4])], [vi("y", F, [4, 4])],
             {"zero": np.array(0, np.float32), "fmin": np.array(-1e30, np.float32),
              "ninf": np.array(-np.inf, np.float32)})
    _, rep = apply_rules(m, None, ["remove_dead_isnan_where"])
    miss = next(x for x in rep["remove_dead_isnan_where"].misses if x.where == "guard")
    assert rep["remove_dead_isnan_where"].fired == 0 and "neither scores nor a provably finite mask" in miss.reason


def test_where_with_constant_condition_is_removed():
    m = make([helper.make_node("Where", ["c", "x", "z"], ["y"])], [vi("x", F, [2, 3]), vi("z", F, [2, 3])],
             [vi("y", F, [2, 3])], {"c": np.ones((2, 3), bool)})
    new, rep = rewrite_and_compare(m, {"x": RNG.standard_normal((2, 3)), "z": RNG.standard_normal((2, 3))},
                                   ["remove_dead_isnan_where"])
    assert "Where" not in ops(new)


# ---------------------------------------------------------------------------------- fold_shape_chains
def _shape_chain_model():
    nodes = [
        helper.make_node("Shape", ["x"], ["sh"]),
        helper.make_node("Gather", ["sh", "one"], ["seq"], axis=0),
        helper.make_node("Range", ["zero", "seq", "one"], ["r"]),
        helper.make_node("Cast", ["r"], ["rf"], to=F),
        helper.make_node("Unsqueeze", ["seq", "ax0"], ["seq1"]),
        helper.make_node("ConstantOfShape", ["seq1"], ["ones"],
                         value=numpy_helper.from_array(np.array([1.0], np.float32))),
        helper.make_node("Add", ["rf", "ones"], ["t"]),
        helper.make_node("Add", ["x", "t"], ["y"]),
    ]
    return make(nodes, [vi("x", F, ["batch", "seq"])], [vi("y", F, ["batch", "seq"])],
                {"one": np.array(1, np.int64), "zero": np.array(0, np.int64), "ax0": np.array([0], np.int64)})


def test_fold_shape_chains_with_fixed_input_shapes():
    m = _shape_chain_model()
    new, rep = rewrite_and_compare(m, {"x": RNG.standard_normal((2, 5))}, ["fix_input_shapes", "fold_shape_chains"],
                                   input_shapes={"x": (2, 5)})
    assert set(ops(new)) == {"Add"} and rep["fold_shape_chains"].fired >= 6
    assert [d.dim_value for d in new.graph.input[0].type.tensor_type.shape.dim] == [2, 5]


def test_fold_shape_chains_reports_dynamic_inputs():
    _, rep = apply_rules(_shape_chain_model(), None, ["fold_shape_chains"])
    r = rep["fold_shape_chains"]
    assert r.fired == 0 and any("input shape not static: ['batch', 'seq']" in x.reason for x in r.misses)


def test_fix_input_shapes_refuses_conflicts():
    m = make([helper.make_node("Relu", ["x"], ["y"])], [vi("x", F, [2, "s"])], [vi("y", F, [2, "s"])])
    _, rep = apply_rules(m, None, ["fix_input_shapes"], input_shapes={"x": (3, 4)})
    assert "dim 0 is fixed to 2 in the model, 3 given" in rep["fix_input_shapes"].misses[0].reason


# ---------------------------------------------------------------------------------- opset_downconvert
def test_downconvert_17_to_13_with_builtin_adapters():
    # Identity-16 has no down adapter in onnx.version_converter; ReduceMean / Softmax / Split need care
    nodes = [helper.make_node("Identity", ["x"], ["a"]),
             helper.make_node("ReduceMean", ["a"], ["m"], axes=[-1], keepdims=1),
             helper.make_node("Sub", ["a", "m"], ["c"]),
             helper.make_node("Softmax", ["c"], ["p"], axis=-1),
             helper.make_node("Split", ["p", "split"], ["p0", "p1"], axis=2),
             helper.make_node("Concat", ["p1", "p0"], ["y"], axis=2)]
    m = make(nodes, [vi("x", F, [2, 3, 6])], [vi("y", F, [2, 3, 6])], {"split": np.array([2, 4], np.int64)})
    new, rep = rewrite_and_compare(m, {"x": RNG.standard_normal((2, 3, 6))}, None, cann_version="6.0")
    assert new.opset_import[0].version == 13 and rep["opset_downconvert"].fired == 1


def test_downconvert_18_reduce_axes_input_becomes_attribute():
    m = make([helper.make_node("ReduceMax", ["x", "axes"], ["y"], keepdims=0)], [vi("x", F, [2, 3, 4])],
             [vi("y", F, [2, 4])], {"axes": np.array([1], np.int64)}, opset=18)
    new, rep = rewrite_and_compare(m, {"x": RNG.standard_normal((2, 3, 4))}, ["opset_downconvert"],
                                   cann_version="6.0")
    node = next(n for n in new.graph.node if n.op_type == "ReduceMax")
    assert len(node.input) == 1 and helper.get_attribute_value(node.attribute[-1]) in ([1], 0)


def test_downconvert_names_the_blocking_op():
    m = make([helper.make_node("Gelu", ["x"], ["y"])], [vi("x", F, [4])], [vi("y", F, [4])], opset=20)
    work = onnx.ModelProto()
    work.CopyFrom(m)
    _, rep = apply_rules(work, "Ascend310P3", ["opset_downconvert"])
    err = rep.errors["opset_downconvert"]
    assert "Gelu (first in opset 20)" in err and "gelu20_to_tanh_or_erf" in err
    assert work.opset_import[0].version == 20 and ops(work) == {"Gelu": 1}  # left as it was


def test_downconvert_not_needed_within_range():
    m = make([helper.make_node("Relu", ["x"], ["y"])], [vi("x", F, [4])], [vi("y", F, [4])], opset=17)
    _, rep = apply_rules(m, "Ascend310P3", None)
    assert rep["opset_downconvert"].fired == 0 and "within" in rep["opset_downconvert"].misses[0].reason


# ---------------------------------------------------------------------------------- float64
def test_float64_to_float32():
    m = make([helper.make_node("Mul", ["x", "w"], ["a"]), helper.make_node("Cast", ["a"], ["b"], to=D),
              helper.make_node("Add", ["b", "c"], ["y"])],
             [vi("x", D, [3])], [vi("y", D, [3])], {"w": np.array([1.5, 2, 3]), "c": np.array(0.25)})
    x = RNG.standard_normal(3)
    # the float64 graph is exact to 2^-53; the fp32 one rounds x, x·w and + c (w and c are exact in
    # fp32): 3·u·max(|x·w| + |c|) ≈ 2e-7·max. A dropped or mis-typed constant is ≥ 2.5e-1.
    mag = float(np.max(np.abs(x * [1.5, 2, 3])) + 0.25)
    new, rep = rewrite_and_compare(m, {"x": x}, None, atol=3 * U_FP32 * mag)
    assert rep["float64_to_float32"].fired == 1
    assert all(t.data_type == F for t in new.graph.initializer)
    assert new.graph.input[0].type.tensor_type.elem_type == F


# ---------------------------------------------------------------------------------- fp32 island files
def test_keep_dtype_file(tmp_path):
    p = tmp_path / "keep.cfg"
    lines = write_keep_dtype(p, ["/layers.0/Softmax", "OpType::Softmax", "MatMul", "ReduceMean", "MatMul"])
    assert lines == ["/layers.0/Softmax", "OpType::SoftmaxV2", "OpType::BatchMatMulV2", "OpType::ReduceMean"]
    assert p.read_text().splitlines() == lines


def test_modify_mixlist_file(tmp_path):
    p = tmp_path / "mix.json"
    doc = write_modify_mixlist(p, ["Softmax", "ReduceMean", "RealDiv", "Softmax"])
    assert doc == {"black-list": {"to-add": ["SoftmaxV2", "ReduceMean", "RealDiv"]}}
    assert json.loads(p.read_text()) == doc
    assert write_modify_mixlist(p, ["Softmax"], map_onnx_types=False)["black-list"]["to-add"] == ["Softmax"]
