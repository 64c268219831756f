"""AclRunner's host side (numpy ↔ device bytes, aclDataType codes, gears, output shapes,
teardown) against the strict fake pyACL (`ascend_adapt.testing.fake_acl`): real device
allocations with bounds, checked memcpy kinds, the graphs run through onnxruntime. No card, no CANN."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import numpy as np
import pytest

from ascend_adapt.errors import ConfigError, MissingDependencyError
from ascend_adapt.backends.acl.runner import (AclRunner, AclRuntimeError, AisBenchRunner,
                                              acl_dtype_to_numpy, from_device_bytes, gear_dims, numpy_to_acl_dtype,
                                              select_gear, to_device_bytes)
from ascend_adapt.backends.acl.runtime import AclRuntime
from ascend_adapt.runtime.runners import RunnerError
from ascend_adapt.testing.fake_acl import FakeAcl


def fake_om(path, platform=b"Ascend310P3"):
    """A file with an OM header (IMOD magic, a real platform string) and no model."""
    head = struct.pack("<III64sIBBBB32sI32sII20sB3sQBB62s", 0x444F4D49, 256, 0x20000000, b"", 0, 0, 0, 1, 0,
                       b"m", 0, b"", 0, 1, platform, 0, b"", 0, 0, 0, b"")
    path.write_bytes(head)
    return path


def static_omsim(tmp_path):
    """A simulator artifact holding one static graph: x f32 [2,3], ids i32 [2] → y f16 = 2x, z i64 = ids + 1.
    Returns the stand-in OM (the artifact's graph)."""
    import onnx
    from onnx import TensorProto, helper

    from ascend_adapt.backends.sim.artifact import write_omsim

    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    one = helper.make_tensor("one", TensorProto.INT64, [], [1])
    g = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["x2"]), helper.make_node("Cast", ["x2"], ["y"], to=TensorProto.FLOAT16),
         helper.make_node("Cast", ["ids"], ["ids64"], to=TensorProto.INT64),
         helper.make_node("Add", ["ids64", "one"], ["z"])],
        "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
              helper.make_tensor_value_info("ids", TensorProto.INT32, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 3]),
         helper.make_tensor_value_info("z", TensorProto.INT64, [2])], [two, one])
    src = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), src)
    art = write_omsim(tmp_path / "m.omsim", {"m": src}, "Ascend310P3")
    return art.graph_path("m")


def test_dtype_codes():
    assert [acl_dtype_to_numpy(c).name for c in (0, 1, 3, 9, 12)] == ["float32", "float16", "int32", "int64", "bool"]
    assert acl_dtype_to_numpy(27).name == "bfloat16"
    assert [numpy_to_acl_dtype(t) for t in (np.float32, np.float16, np.int32, np.int64)] == [0, 1, 3, 9]
    with pytest.raises(ConfigError):
        acl_dtype_to_numpy(99)


def test_bytes_round_trip_and_checks():
    a = np.arange(6, dtype=np.float16).reshape(2, 3)
    data = to_device_bytes(a.T.T, 1, 64)
    assert from_device_bytes(data + b"\0" * 8, 1, (2, 3)).tolist() == a.tolist()
    with pytest.raises(RunnerError, match="aclDataType 0"):
        to_device_bytes(a, 0, 64)
    with pytest.raises(RunnerError, match="buffer holds 4"):
        to_device_bytes(a, 1, 4)


def test_static_model_end_to_end(tmp_path):
    fake = FakeAcl()
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    with AclRunner(static_omsim(tmp_path), 0, acl=fake) as r:
        meta = r.get_input_metadata()
        assert meta == {"x": (np.dtype("float32"), (2, 3)), "ids": (np.dtype("int32"), (2,))}
        out = r.infer({"x": x, "ids": np.array([5, 6], np.int32)})
        assert out["y"].dtype == np.float16 and out["y"].tolist() == (2 * x).tolist()
        assert out["z"].dtype == np.int64 and out["z"].tolist() == [6, 7]
        assert r.last_gear is None
        with pytest.raises(RunnerError, match="dtype int64"):
            r.infer({"x": x, "ids": np.array([5, 6], np.int64)})
    # one inference: two host→device copies of exactly the inputs' bytes, two device→host of the outputs'
    assert fake.copies == {"host_to_host": 0, "host_to_device": 2, "device_to_host": 2, "device_to_device": 0}
    assert fake.bytes["host_to_device"] == 6 * 4 + 2 * 4 and fake.bytes["device_to_host"] == 6 * 2 + 2 * 8
    assert fake.calls["init"] == 1 and fake.calls["mdl.execute"] == 1
    # closing the only model frees everything and releases the device; ACL stays up until exit
    assert fake.live() == {"device_allocations": 0, "host_allocations": 0, "models": 0, "datasets": 0,
                           "data_buffers": 0, "contexts": 0}
    assert fake.calls["rt.reset_device"] == 1 and fake.calls["finalize"] == 0 and fake.state == "initialized"
    AclRuntime.of(fake).shutdown()
    assert fake.calls["finalize"] == 1 and fake.state == "finalized"


def test_gear_selection_and_dynamic_dims():
    shape = {"input_ids": (1, -1), "attention_mask": (1, -1)}
    assert gear_dims(shape, [(4, 4), (8, 8)]) == [[1, 4, 1, 4], [1, 8, 1, 8]]
    assert gear_dims({"x": (-1, 3)}, [(2,), (4,)], "dynamic_batch_size") == [[2, 3], [4, 3]]
    assert select_gear({"input_ids": (1, 8), "attention_mask": (1, 8)}, shape, [[1, 4, 1, 4], [1, 8, 1, 8]]) == 1
    with pytest.raises(RunnerError, match="match none of the 2 gears"):
        select_gear({"input_ids": (1, 5), "attention_mask": (1, 5)}, shape, [[1, 4, 1, 4], [1, 8, 1, 8]])


def test_errors_keep_their_code_tear_down_and_missing_pyacl(tmp_path, monkeypatch):
    fake = FakeAcl()
    r = AclRunner(fake_om(tmp_path / "m.om"), acl=fake)  # an OM header, but no graph the fake can stand in with
    with pytest.raises(AclRuntimeError, match="acl.mdl.load_from_file returned error 100013") as e:
        r.activate()
    assert e.value.code == 100013 and e.value.code_name == "ACL_ERROR_PARSE_MODEL"
    assert "soc_version" in e.value.hint and "no simulator artifact" in str(e.value)  # the fake's recent error
    assert not r.is_active and fake.live()["contexts"] == 0 and fake.calls["rt.reset_device"] == 1
    monkeypatch.delenv("ASCEND_ADAPT_ACL", raising=False)
    try:
        import acl  # noqa: F401
        pytest.skip("pyACL is installed here")
    except ImportError:
        pass
    with pytest.raises(MissingDependencyError) as e2:
        AclRunner(tmp_path / "m.om").activate()
    assert "pyACL" in str(e2.value) and "CANN" in str(e2.value) and "ASCEND_ADAPT_ACL=fake" in str(e2.value)


def test_simulator_stub_is_not_an_om(tmp_path):
    from ascend_adapt.backends.sim.artifact import pack_imod_header

    p = tmp_path / "stub.om"
    p.write_bytes(pack_imod_header(0))
    with pytest.raises(ConfigError, match="simulator stub"):
        AclRunner(p, acl=FakeAcl()).activate()


def test_ais_bench_runner_marshals_by_name(tmp_path):
    class Desc(SimpleNamespace):
        pass

    class FakeSession:
        def __init__(self, device_id, path):
            self.freed = False

        def get_inputs(self):
            return [Desc(name="a", shape=[2], datatype=0), Desc(name="b", shape=[2], datatype=0)]

        def get_outputs(self):
            return [Desc(name="sum")]

        def infer(self, feeds, mode="static", custom_sizes=100000):
            return [feeds[0] + feeds[1]]

        def free_resource(self):
            self.freed = True

    r = AisBenchRunner(tmp_path / "m.om", session_cls=FakeSession)
    with r:
        out = r.infer({"b": np.ones(2, np.float32), "a": np.arange(2, dtype=np.float32)})
        assert out["sum"].tolist() == [1.0, 2.0]
        sess = r.session
    assert sess.freed


def llm_omsim(tiny_dir, tmp_path, **build):
    """An LLM export with its simulator artifact (the fake's stand-in OMs) inside: what the "acl"
    backend finds in a convert output without ATC."""
    from ascend_adapt.backends.sim.artifact import omsim_from_export
    from ascend_adapt.om_convert.builder import build_llm_onnx

    exp = tmp_path / "exp"
    build_llm_onnx(tiny_dir("llama", unit_head=True), exp, batch=1, progress=False, **build)
    omsim_from_export(exp, exp / "model.omsim", "Ascend310P3")
    return exp


def test_acl_backend_runs_an_export_through_the_host_path(tiny_dir, tmp_path):
    """The "acl" LM backend on the strict fake, which executes the export's ONNX graphs: greedy
    tokens equal the onnxruntime backend's (so marshalling, KV cache and reshaping are right)."""
    pytest.importorskip("onnxruntime")
    from ascend_adapt.backends import get_backend
    from ascend_adapt.runtime.generate import greedy_tokens

    exp = llm_omsim(tiny_dir, tmp_path, seq_len=6, max_len=14)
    card = FakeAcl()
    be = get_backend("acl", exp, acl=card)
    ids = np.array([[1, 40, 50, 60]], np.int64)
    got = greedy_tokens(be, ids, 8)
    want = greedy_tokens(get_backend("onnxruntime", exp), ids, 8)
    assert got.tolist() == want.tolist()
    assert card.calls["mdl.load_from_file"] == 2 and card.calls["init"] == 1  # two OMs, one ACL init
    assert card.calls["mdl.execute"] == 8  # one prefill + 7 decode steps
    be.close()
    assert card.live()["models"] == 0 and card.live()["contexts"] == 0


def test_acl_backend_runs_a_step_graph_with_gears(tiny_dir, tmp_path):
    """A gear build: one step OM (decode = gear 1) selected per step by the host, on the strict fake."""
    pytest.importorskip("onnxruntime")
    from ascend_adapt.backends import get_backend
    from ascend_adapt.runtime.generate import greedy_tokens

    exp = llm_omsim(tiny_dir, tmp_path, max_len=20, gears=[4, 8])
    card = FakeAcl()
    be = get_backend("acl", exp, acl=card)
    for n in (3, 7):  # prompts padded to gear 4 and gear 8
        ids = np.arange(40, 40 + n, dtype=np.int64)[None]
        got = greedy_tokens(be, ids, 6)
        want = greedy_tokens(get_backend("onnxruntime", exp), ids, 6)
        assert got.tolist() == want.tolist()
    assert card.calls["mdl.load_from_file"] == 1  # one OM serves prefill and decode
    assert card.calls["mdl.set_input_dynamic_dims"] == card.calls["mdl.execute"] == 12
    be.close()


def test_gears_read_from_the_om_and_output_shapes_from_the_manifest(tiny_dir, tmp_path):
    """Without gears given, AclRunner reads them from the OM (aclmdlGetInputDynamicDims) and picks
    the gear from the feeds' shapes; the output shapes come from the export manifest per gear."""
    pytest.importorskip("onnxruntime")
    from ascend_adapt.contract import step_shape
    from ascend_adapt.om_convert.builder.llm import load_manifest
    from ascend_adapt.runtime.runners import OrtRunner

    exp = llm_omsim(tiny_dir, tmp_path, max_len=20, gears=[4, 8])
    man = load_manifest(exp)
    gears = man["gears"]
    outs = {i: {o["name"]: step_shape(o["shape"], g) for o in man["graphs"]["step"]["outputs"]}
            for i, g in enumerate(gears)}
    card = FakeAcl()
    rng = np.random.default_rng(0)
    with AclRunner(exp / "model.omsim" / "step.onnx", acl=card, output_shapes=outs) as r, \
            OrtRunner(exp / "step.onnx") as ref:
        i = gears.index(4)
        feeds = {n: (rng.integers(0, 100, step_shape(s, 4)).astype(np.int32) if "ids" in n
                     else np.zeros(step_shape(s, 4), np.float32))
                 for n, s in ((x["name"], x["shape"]) for x in man["graphs"]["step"]["inputs"])}
        out = r.infer(feeds)
        assert r.last_gear == i and out["logits"].shape == tuple(outs[i]["logits"])
        want = ref.infer(feeds)
        assert all(np.array_equal(out[k], want[k]) for k in want)  # same graph, same runtime: bit-identical
