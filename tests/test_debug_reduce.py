"""`debug reduce`: a 2-layer tiny Llama graph with one unsupported op planted in the middle
reduces to a subgraph of at most 3 nodes that contains it."""

import os
import shutil
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tolerances import U_FP16

from ascend_adapt.cli.main import main
from ascend_adapt.debug import GraphIndex, reduce_model
from ascend_adapt.debug.checks import all_tensor_values
from ascend_adapt.errors import ConfigError

PLANT = "layers.0/mlp/act/MulUp"  # the SwiGLU product of layer 0, right before down_proj


def _own_two_layer_graph() -> onnx.ModelProto:
    """A 2-layer RMSNorm + SwiGLU residual stack (used when the LLM graph builder is absent)."""
    rng = np.random.default_rng(0)
    H, I, nodes, inits = 16, 32, [], []

    def w(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
        return name

    w("eps", [1e-5])
    inits.append(numpy_helper.from_array(np.array([-1], np.int64), "axes"))
    x = "x"
    for i in range(2):
        p = f"layers.{i}"
        nodes += [
            helper.make_node("Mul", [x, x], [f"{p}/sq"], name=f"{p}/mlp_norm/Square"),
            helper.make_node("ReduceMean", [f"{p}/sq", "axes"], [f"{p}/ms"], name=f"{p}/mlp_norm/ReduceMean"),
            helper.make_node("Add", [f"{p}/ms", "eps"], [f"{p}/mse"], name=f"{p}/mlp_norm/AddEps"),
            helper.make_node("Sqrt", [f"{p}/mse"], [f"{p}/rms"], name=f"{p}/mlp_norm/Sqrt"),
            helper.make_node("Div", [x, f"{p}/rms"], [f"{p}/n"], name=f"{p}/mlp_norm/Div"),
            helper.make_node("MatMul", [f"{p}/n", w(f"{p}.g", rng.standard_normal((H, I)) / 4)], [f"{p}/g"],
                             name=f"{p}/mlp/gate_proj/MatMul"),
            helper.make_node("MatMul", [f"{p}/n", w(f"{p}.u", rng.standard_normal((H, I)) / 4)], [f"{p}/u"],
                             name=f"{p}/mlp/up_proj/MatMul"),
            helper.make_node("Sigmoid", [f"{p}/g"], [f"{p}/sg"], name=f"{p}/mlp/act/Sigmoid"),
            helper.make_node("Mul", [f"{p}/g", f"{p}/sg"], [f"{p}/silu"], name=f"{p}/mlp/act/SiLU"),
            helper.make_node("Mul", [f"{p}/silu", f"{p}/u"], [f"{p}/act"], name=f"{p}/mlp/act/MulUp"),
            helper.make_node("MatMul", [f"{p}/act", w(f"{p}.d", rng.standard_normal((I, H)) / 6)], [f"{p}/d"],
                             name=f"{p}/mlp/down_proj/MatMul"),
            helper.make_node("Add", [x, f"{p}/d"], [f"{p}/out"], name=f"{p}/mlp_residual/Add"),
        ]
        x = f"{p}/out"
    nodes.append(helper.make_node("MatMul", [x, w("head", rng.standard_normal((H, 8)))], ["logits"], name="lm_head"))
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, H])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    return m


@pytest.fixture(scope="module")
def llm_graph(tmp_path_factory) -> onnx.ModelProto:
    """prefill.onnx of a 2-layer tiny Llama from the graph builder (opset 18), else our own graph."""
    try:
        from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint
        from ascend_adapt.om_convert.builder import build_llm_onnx
    except ImportError:
        return _own_two_layer_graph()
    d = tmp_path_factory.mktemp("llm")
    make_tiny_checkpoint(d / "ckpt", "llama")
    r = build_llm_onnx(d / "ckpt", d / "export", seq_len=8, max_len=16, opset=18, progress=False)
    return onnx.load(str(r.prefill_path))


def plant(model: onnx.ModelProto, after: str, op_type: str = "GroupNormalization") -> onnx.ModelProto:
    """Insert `op_type` on the output of node `after`, rewiring its consumers."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    nodes = list(m.graph.node)
    k = next(i for i, n in enumerate(nodes) if n.name == after)
    src = nodes[k].output[0]
    dst = src + "/planted"
    for n in nodes[k + 1:]:
        for j, name in enumerate(n.input):
            if name == src:
                n.input[j] = dst
    m.graph.initializer.extend([numpy_helper.from_array(np.ones(1, np.float32), "planted.scale"),
                                numpy_helper.from_array(np.zeros(1, np.float32), "planted.bias")])
    new = helper.make_node(op_type, [src, "planted.scale", "planted.bias"], [dst], name="planted/" + op_type,
                           num_groups=1, epsilon=1e-5)
    del m.graph.node[:]
    m.graph.node.extend(nodes[:k + 1] + [new] + nodes[k + 1:])
    return m


def test_reduce_to_the_planted_unsupported_op(llm_graph):
    model = plant(llm_graph, PLANT)
    r = reduce_model(model, "sim-rejects", target="Ascend310P3")
    assert r.original_nodes >= 25
    assert len(r.kept) <= 3
    assert any("GroupNormalization" in lbl for lbl in r.node_labels)
    assert any("GroupNormalization" in k for k in r.signature)
    assert r.steps[0].phase == "start" and r.steps[0].count == r.original_nodes
    assert {n.op_type for n in r.model.graph.node} >= {"GroupNormalization"}


def test_extracted_subgraph_reproduces_the_original_values(llm_graph):
    idx = GraphIndex(llm_graph)
    n = len(idx)
    keep = list(range(n // 3, 2 * n // 3))
    sub = idx.extract(keep)
    inits = {t.name for t in idx.model.graph.initializer}
    feeds = {}
    for i in idx.model.graph.input:
        if i.name in inits:
            continue
        shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
        dt = helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
        feeds[i.name] = (np.zeros(shape, dt) if not np.issubdtype(dt, np.floating)
                         else np.random.default_rng(0).standard_normal(shape).astype(dt))
    if "attention_mask" in feeds:
        feeds["attention_mask"] = np.zeros_like(feeds["attention_mask"])
    full = all_tensor_values(idx.model, feeds)
    sub_inputs = [i.name for i in sub.graph.input if i.name not in {t.name for t in sub.graph.initializer}]
    assert sub_inputs and all(name in full for name in sub_inputs)
    got = all_tensor_values(sub, {k: full[k] for k in sub_inputs})
    for o in sub.graph.output:
        np.testing.assert_array_equal(got[o.name], full[o.name])


def test_cli_writes_model_and_log(llm_graph, tmp_path, capsys):
    src = tmp_path / "prefill_gn.onnx"
    onnx.save(plant(llm_graph, PLANT), str(src))
    out = tmp_path / "min.onnx"
    assert main(["debug", "reduce", str(src), "--check", "sim-rejects", "-o", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    assert "GroupNormalization" in text and "wrote" in text
    reduced = onnx.load(str(out))
    assert 1 <= len(reduced.graph.node) <= 3
    log = (tmp_path / "min.reduce.log").read_text()
    assert "# command: ascend-adapt debug reduce" in log and "FAILS (kept)" in log
    # an existing output needs --force
    assert main(["debug", "reduce", str(src), "--check", "sim-rejects", "-o", str(out), "-q"]) == 2


def test_user_command_with_fail_regex(llm_graph, tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(plant(llm_graph, PLANT), str(src))
    script = tmp_path / "probe.py"
    script.write_text("import onnx, sys\n"
                      "m = onnx.load(sys.argv[1], load_external_data=False)\n"
                      "print('BAD OP' if any(n.op_type == 'GroupNormalization' for n in m.graph.node) else 'ok')\n")
    cmd = f"{sys.executable} {script} {{model}}"
    r = reduce_model(str(src), cmd, fail_regex="BAD OP")
    assert [n.op_type for n in r.model.graph.node] == ["GroupNormalization"]


def test_original_must_fail_and_checks_are_named(llm_graph):
    with pytest.raises(ConfigError, match="does not fail"):
        reduce_model(llm_graph, "sim-rejects", target="Ascend310P3")
    with pytest.raises(ConfigError, match="unknown check"):
        reduce_model(llm_graph, "no-such-check")


@pytest.mark.skipif(bool(shutil.which("atc")) or bool(os.environ.get("ASCEND_TOOLKIT_HOME")), reason="ATC present")
def test_atc_fails_without_atc_is_a_clear_error(llm_graph, tmp_path, capsys):
    src = tmp_path / "m.onnx"
    onnx.save(llm_graph, str(src))
    assert main(["debug", "reduce", str(src), "--check", "atc-fails", "-q"]) == 2
    assert "needs CANN's atc" in capsys.readouterr().err


def test_accuracy_check_finds_the_fp16_overflow(llm_graph):
    """One weight scaled so layer 1's activations overflow fp16: the reduced graph holds the overflow."""
    m = onnx.ModelProto()
    m.CopyFrom(llm_graph)
    down = next(n for n in m.graph.node if n.name == "layers.0/mlp/down_proj/MatMul")
    w = next(t for t in m.graph.initializer if t.name == down.input[1])
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 1e5, w.name))
    # a correct fp16 subgraph stays within fp16_rel = 2^-11·(18·L + 4) ≈ 0.02 of fp32 for the
    # 2-layer tiny Llama (tests/tolerances.py), relative to its values' scale (here ~1: rtol for the
    # large ones, atol for those near 0); the overflow is inf, outside any tolerance
    rel = U_FP16 * (18 * 2 + 4)
    r = reduce_model(m, "accuracy", target="Ascend310P3", atol=rel, rtol=rel)
    assert len(r.kept) <= 4, r.node_labels
    assert "inf" in r.final_detail, r.final_detail
    assert any("down_proj" in lbl for lbl in r.node_labels)
