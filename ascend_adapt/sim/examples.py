"""Tiny hand-built ONNX graphs for the simulator's tests and docs (made in code, no downloads).

Each builder returns an in-memory `onnx.ModelProto` with its weights embedded; `save(model, path)`
writes it (optionally with external data, like the LLM builder's `weights.bin`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _model(nodes, inputs, outputs, inits, opset: int = OPSET, name: str = "g") -> onnx.ModelProto:
    g = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="ascend-adapt-sim-examples")
    m.ir_version = 8
    return m


def mlp(batch: int | str = 2, d_in: int = 64, d_hidden: int = 128, d_out: int = 32, seed: int = 0,
        scale: float = 1.0) -> onnx.ModelProto:
    """x [B, d_in] → MatMul → Add → Tanh → MatMul → Add → y [B, d_out] (float32)."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((d_in, d_hidden)) * scale / np.sqrt(d_in)).astype(np.float32)
    b1 = (rng.standard_normal(d_hidden) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((d_hidden, d_out)) * scale / np.sqrt(d_hidden)).astype(np.float32)
    b2 = (rng.standard_normal(d_out) * 0.1).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
        helper.make_node("Tanh", ["h1"], ["h2"], name="act"),
        helper.make_node("MatMul", ["h2", "w2"], ["h3"], name="fc2"),
        helper.make_node("Add", ["h3", "b2"], ["y"], name="fc2_bias"),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, d_in])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, d_out])], inits)


RMSNORM_NODES = ("rms_sq", "rms_mean", "rms_add_eps", "rms_sqrt", "rms_div", "rms_scale")


def rmsnorm_block(batch: int = 2, seq: int = 8, hidden: int = 256, eps: float = 1e-6, seed: int = 0
                  ) -> onnx.ModelProto:
    """A decoder-style RMSNorm island followed by a projection.

    x [B, S, H] → sq = x·x → var = ReduceMean(sq) → rstd = 1/sqrt(var + eps) → n = x·rstd·w
    → y = n @ W. Outputs: `y` [B, S, H] and `var` [B, S, 1]. With activations of ~300, x·x
    (~9e4) overflows fp16 (max 65504) under force_fp16; the island's node names are
    `RMSNORM_NODES` (put them in keep_dtype to keep it fp32, as on the card).
    """
    rng = np.random.default_rng(seed)
    w = (1.0 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)
    proj = (rng.standard_normal((hidden, hidden)) / np.sqrt(hidden)).astype(np.float32)
    nodes = [
        helper.make_node("Mul", ["x", "x"], ["sq"], name="rms_sq"),
        helper.make_node("ReduceMean", ["sq", "axes"], ["var"], name="rms_mean", keepdims=1),
        helper.make_node("Add", ["var", "eps"], ["var_eps"], name="rms_add_eps"),
        helper.make_node("Sqrt", ["var_eps"], ["std"], name="rms_sqrt"),
        helper.make_node("Div", ["x", "std"], ["normed"], name="rms_div"),
        helper.make_node("Mul", ["normed", "norm_w"], ["n"], name="rms_scale"),
        helper.make_node("MatMul", ["n", "proj"], ["y"], name="proj"),
    ]
    inits = [numpy_helper.from_array(np.array([-1], np.int64), "axes"),
             numpy_helper.from_array(np.array(eps, np.float32), "eps"),
             numpy_helper.from_array(w, "norm_w"), numpy_helper.from_array(proj, "proj")]
    # ReduceMean takes axes as an input from opset 18; use 18 for this graph
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, seq, hidden])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, seq, hidden]),
                helper.make_tensor_value_info("var", TensorProto.FLOAT, [batch, seq, 1])], inits, opset=18)
    return m


def single_op(op_type: str, opset: int = OPSET, shape: Sequence[int | str] = (2, 4), n_inputs: int = 1,
              **attrs) -> onnx.ModelProto:
    """One op with `n_inputs` float inputs x0, x1, ... and one output y."""
    ins = [f"x{i}" for i in range(n_inputs)]
    nodes = [helper.make_node(op_type, ins, ["y"], name=f"{op_type.lower()}_0", **attrs)]
    return _model(nodes, [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(shape)) for n in ins],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [], opset=opset)


def loop_graph() -> onnx.ModelProto:
    """A graph with a Loop (no ATC parser exists for Loop)."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["v_in", "one"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [2])],
        initializer=[numpy_helper.from_array(np.ones(2, np.float32), "one")])
    nodes = [helper.make_node("Loop", ["trip", "cond", "x"], ["y"], name="loop_0", body=body)]
    inits = [numpy_helper.from_array(np.array(3, np.int64), "trip"), numpy_helper.from_array(np.array(True), "cond")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], inits)


def big_matmul(rows: int, cols: int, batch: int | str = 1) -> onnx.ModelProto:
    """x [B, rows] @ W [rows, cols] with W declared as external data that is never written
    (for acceptance / cost only: it cannot run). W holds rows·cols float32 values."""
    w = TensorProto()
    w.name, w.data_type = "w", TensorProto.FLOAT
    w.dims.extend([rows, cols])
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "weights.bin"), ("offset", "0"), ("length", str(rows * cols * 4))):
        e = w.external_data.add()
        e.key, e.value = k, v
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, rows])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, cols])], [w])


def save(model: onnx.ModelProto, path: str | os.PathLike, *, external: str | None = None) -> Path:
    """Write `model` to `path`; with `external="weights.bin"` the initializers go to that file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if external:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)  # onnx.save_model moves the caller's tensors to external data otherwise
        onnx.save_model(copy, str(p), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=external, size_threshold=0)
    else:
        onnx.save_model(model, str(p))
    return p
