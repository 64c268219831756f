"""AclRunner's host side (numpy ↔ device bytes, aclDataType codes, gears, output shapes,
teardown) against a fake `acl` module: no card, no CANN."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import numpy as np
import pytest

from ascend_adapt.errors import ConfigError, MissingDependencyError
from ascend_adapt.runtime.acl_backend import (ACL_DYNAMIC_TENSOR_NAME, AclRunner, AclRuntimeError, AisBenchRunner,
                                              acl_dtype_to_numpy, from_device_bytes, gear_dims, numpy_to_acl_dtype,
                                              select_gear, to_device_bytes)
from ascend_adapt.runtime.runners import RunnerError


def fake_om(path, platform=b"Ascend310P3"):
    """A file with an OM header (IMOD magic, a real platform string) and no model."""
    head = struct.pack("<III64sIBBBB32sI32sII20sB3sQBB62s", 0x444F4D49, 256, 0x20000000, b"", 0, 0, 0, 1, 0,
                       b"m", 0, b"", 0, 1, platform, 0, b"", 0, 0, 0, b"")
    path.write_bytes(head)
    return path


class FakeAcl:
    """Just enough of pyACL: device memory is a dict of bytearrays; each loaded model has its io
    specs [(name, aclDataType, dims)] and a `compute(inputs) -> outputs`; `execute` decodes the
    input buffers, computes and encodes the outputs into their buffers."""

    def __init__(self, inputs=(), outputs=(), compute=None, *, om_gears=None, fail=None, loader=None,
                 gear_dim_max: int = 8):
        self.loader = loader or (lambda path: (list(inputs), list(outputs), compute))
        self.gear_dim_max = gear_dim_max  # buffer size of a gear dim: the largest gear's value
        self.om_gears, self.fail = om_gears, fail or {}
        self.models: dict[int, dict] = {}
        self.descs: dict[str, int] = {}
        self.mem: dict[int, bytearray] = {}
        self.host_bytes: dict[int, bytes] = {}
        self.calls: list[str] = []
        self.memcpy_kinds: list[int] = []
        self.datasets: dict[int, list] = {}
        self._next = 100
        s = self
        io = lambda d: s.models[s.descs[d]]  # noqa: E731
        self.rt = SimpleNamespace(
            set_device=lambda d: s._log("set_device", 0), create_context=lambda d: (s._log("create_context", 7), 0),
            malloc=lambda size, policy: (s._alloc(size), 0), malloc_host=lambda size: (s._alloc(size), 0),
            memcpy=s._memcpy, free=lambda p: s._free("free", p), free_host=lambda p: s._free("free_host", p),
            destroy_context=lambda c: s._log("destroy_context", 0), reset_device=lambda d: s._log("reset_device", 0))
        self.util = SimpleNamespace(bytes_to_ptr=s._bytes_to_ptr, ptr_to_bytes=lambda p, n: bytes(s.mem[p][:n]))
        self.mdl = SimpleNamespace(
            load_from_file=s._load, create_desc=s._create_desc, get_desc=s._get_desc,
            get_num_inputs=lambda d: len(io(d)["in"]), get_num_outputs=lambda d: len(io(d)["out"]),
            get_input_dims=lambda d, i: (s._dims(io(d)["in"][i]), 0),
            get_output_dims=lambda d, i: (s._dims(io(d)["out"][i]), 0),
            get_input_name_by_index=lambda d, i: io(d)["in"][i][0],
            get_output_name_by_index=lambda d, i: io(d)["out"][i][0],
            get_input_size_by_index=lambda d, i: s._size(io(d)["in"][i]),
            get_output_size_by_index=lambda d, i: s._size(io(d)["out"][i]),
            get_input_data_type=lambda d, i: io(d)["in"][i][1], get_output_data_type=lambda d, i: io(d)["out"][i][1],
            create_dataset=s._create_dataset, add_dataset_buffer=s._add_buffer,
            destroy_dataset=lambda ds: s._log("destroy_dataset", 0),
            set_input_dynamic_dims=s._set_dims, execute=s._execute,
            get_input_dynamic_gear_count=lambda d, i: (len(s.om_gears), 0),
            get_input_dynamic_dims=lambda d, i, n: ([{"dimCount": len(g), "dims": list(g)} for g in s.om_gears], 0),
            get_cur_output_dims=lambda d, i: (s._dims(("", 0, io(d)["last_out"][i])), 0),
            unload=lambda m: s._log("unload", 0), destroy_desc=lambda d: s._log("destroy_desc", 0))

    # -- plumbing
    def _log(self, name, ret):
        self.calls.append(name)
        return ret

    def init(self):
        return self._log("init", 0)

    def finalize(self):
        return self._log("finalize", 0)

    def create_data_buffer(self, ptr, size):
        return ("buf", ptr, size)

    def destroy_data_buffer(self, buf):
        return self._log("destroy_data_buffer", 0)

    def _load(self, path):
        self._log("load_from_file", 0)
        if self.fail.get("load_from_file"):
            return 0, self.fail["load_from_file"]
        mid = len(self.models) + 1
        ins, outs, compute = self.loader(path)
        self.models[mid] = {"in": ins, "out": outs, "compute": compute, "cur": None, "last_out": None}
        return mid, 0

    def _create_desc(self):
        self._log("create_desc", 0)
        return f"desc{len(self.descs)}"

    def _get_desc(self, desc, mid):
        self.descs[desc] = mid
        return self._log("get_desc", 0)

    @staticmethod
    def _dims(spec):
        return {"name": spec[0], "dimCount": len(spec[2]), "dims": list(spec[2])}

    def _size(self, spec):
        name, code, dims = spec
        if name == ACL_DYNAMIC_TENSOR_NAME:
            return 64
        worst = [self.gear_dim_max if d < 0 else d for d in dims]  # a gear dim: sized for the largest gear
        return int(np.prod(worst)) * acl_dtype_to_numpy(code).itemsize

    def _alloc(self, size):
        self._next += 1
        self.mem[self._next] = bytearray(size)
        return self._next

    def _free(self, name, p):
        del self.mem[p]
        return self._log(name, 0)

    def _bytes_to_ptr(self, data):
        self._next += 1
        self.mem[self._next] = bytearray(data)
        self.host_bytes[self._next] = data
        return self._next

    def _memcpy(self, dst, dst_max, src, count, kind):
        assert count <= dst_max
        self.memcpy_kinds.append(kind)
        self.mem[dst][:count] = self.mem[src][:count]
        return 0

    def _create_dataset(self):
        self._next += 1
        self.datasets[self._next] = []
        return self._next

    def _add_buffer(self, ds, buf):
        self.datasets[ds].append(buf)
        return ds, 0

    def _set_dims(self, mid, ds, index, dims):
        assert self.models[mid]["in"][index][0] == ACL_DYNAMIC_TENSOR_NAME
        self.models[mid]["cur"] = list(dims["dims"])[: dims["dimCount"]]
        return self._log("set_input_dynamic_dims", 0)

    @property
    def cur_dims(self):
        return self.models[max(self.models)]["cur"]

    def _execute(self, mid, ds_in, ds_out):
        self.calls.append("execute")
        model = self.models[mid]
        it = iter(model["cur"] or [])
        feeds = {}
        for (name, code, dims), (_, ptr, size) in zip(model["in"], self.datasets[ds_in]):
            if name == ACL_DYNAMIC_TENSOR_NAME:
                continue
            shape = [next(it) for _ in dims] if model["cur"] else dims
            dt = acl_dtype_to_numpy(code)
            feeds[name] = np.frombuffer(bytes(self.mem[ptr]), dt, count=int(np.prod(shape))).reshape(shape)
        outs = model["compute"](feeds)
        model["last_out"] = []
        for (name, code, _), (_, ptr, size) in zip(model["out"], self.datasets[ds_out]):
            data = np.ascontiguousarray(outs[name], acl_dtype_to_numpy(code)).tobytes()
            self.mem[ptr][:len(data)] = data
            model["last_out"].append(list(outs[name].shape))
        return self.fail.get("execute", 0)


def static_acl(**kw):
    return FakeAcl([("x", 0, [2, 3]), ("ids", 3, [2])], [("y", 1, [2, 3]), ("z", 9, [2])],
                   lambda f: {"y": (f["x"] * 2).astype(np.float16), "z": f["ids"].astype(np.int64) + 1}, **kw)


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
    fake = static_acl()
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    with AclRunner(fake_om(tmp_path / "m.om"), 0, acl=fake) as r:
        meta = r.get_input_metadata()
        assert meta == {"x": (np.dtype("float32"), (2, 3)), "ids": (np.dtype("int32"), (2,))}
        out = r.infer({"x": x, "ids": np.array([5, 6], np.int32)})
        assert out["y"].dtype == np.float16 and out["y"].tolist() == (2 * x).tolist()
        assert out["z"].dtype == np.int64 and out["z"].tolist() == [6, 7]
        assert r.last_gear is None
        with pytest.raises(RunnerError, match="dtype int64"):
            r.infer({"x": x, "ids": np.array([5, 6], np.int64)})
    assert fake.memcpy_kinds == [1, 1, 2, 2]
    assert fake.calls[:4] == ["init", "set_device", "create_context", "load_from_file"]
    assert fake.calls[-17:] == (["destroy_data_buffer"] * 4 + ["free"] * 4 + ["free_host"] * 2 +
                                ["destroy_dataset", "destroy_dataset", "unload", "destroy_desc", "destroy_context",
                                 "reset_device", "finalize"])
    assert not fake.mem or all(p in fake.host_bytes for p in fake.mem)  # every device / host buffer freed


def gear_acl(om_gears=None):
    return FakeAcl([("input_ids", 3, [1, -1]), ("attention_mask", 0, [1, -1]), (ACL_DYNAMIC_TENSOR_NAME, 9, [4])],
                   [("logits", 0, [1, -1, 2])],
                   lambda f: {"logits": np.stack([f["input_ids"].astype(np.float32), f["attention_mask"]], -1)},
                   om_gears=om_gears)


def test_gear_selection_and_dynamic_dims(tmp_path):
    shape = {"input_ids": (1, -1), "attention_mask": (1, -1)}
    assert gear_dims(shape, [(4, 4), (8, 8)]) == [[1, 4, 1, 4], [1, 8, 1, 8]]
    assert gear_dims({"x": (-1, 3)}, [(2,), (4,)], "dynamic_batch_size") == [[2, 3], [4, 3]]
    assert select_gear({"input_ids": (1, 8), "attention_mask": (1, 8)}, shape, [[1, 4, 1, 4], [1, 8, 1, 8]]) == 1
    fake = gear_acl()
    r = AclRunner(fake_om(tmp_path / "g.om"), acl=fake, input_shape=shape, gears=[(4, 4), (8, 8)])
    with r:
        assert set(r.get_input_metadata()) == {"input_ids", "attention_mask"}
        ids = np.arange(8, dtype=np.int32)[None]
        out = r.infer({"input_ids": ids, "attention_mask": np.ones((1, 8), np.float32)})
        assert r.last_gear == 1 and fake.cur_dims == [1, 8, 1, 8]
        assert out["logits"].shape == (1, 8, 2) and out["logits"][0, :, 0].tolist() == list(range(8))
        with pytest.raises(RunnerError, match="match none of the 2 gears"):
            r.infer({"input_ids": ids[:, :5], "attention_mask": np.ones((1, 5), np.float32)})


def test_gears_read_from_the_om_and_output_shapes_from_the_manifest(tmp_path):
    fake = gear_acl(om_gears=[[1, 4, 1, 4], [1, 8, 1, 8]])
    shapes = {0: {"logits": (1, 4, 2)}, 1: {"logits": (1, 8, 2)}}
    with AclRunner(fake_om(tmp_path / "g.om"), acl=fake, output_shapes=shapes) as r:
        out = r.infer({"input_ids": np.ones((1, 4), np.int32), "attention_mask": np.ones((1, 4), np.float32)})
        assert r.last_gear == 0 and out["logits"].shape == (1, 4, 2)


def test_errors_tear_down_and_missing_pyacl(tmp_path):
    fake = static_acl(fail={"load_from_file": 145000})
    r = AclRunner(fake_om(tmp_path / "m.om"), acl=fake)
    with pytest.raises(AclRuntimeError, match="acl.mdl.load_from_file returned error 145000"):
        r.activate()
    assert not r.is_active and fake.calls[-2:] == ["reset_device", "finalize"]
    try:
        import acl  # noqa: F401
        pytest.skip("pyACL is installed here")
    except ImportError:
        pass
    with pytest.raises(MissingDependencyError) as e:
        AclRunner(tmp_path / "m.om").activate()
    assert "pyACL" in str(e.value) and "CANN" in str(e.value)


def test_simulator_stub_is_not_an_om(tmp_path):
    from ascend_adapt.om_convert.artifact import pack_imod_header

    p = tmp_path / "stub.om"
    p.write_bytes(pack_imod_header(0))
    with pytest.raises(ConfigError, match="simulator stub"):
        AclRunner(p, acl=static_acl()).activate()


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


def test_acl_backend_runs_an_export_through_the_host_path(tiny_dir, tmp_path):
    """The "acl" LM backend over a fake card that executes the export's ONNX graphs: greedy
    tokens equal the onnxruntime backend's (so marshalling, KV cache and reshaping are right)."""
    ort = pytest.importorskip("onnxruntime")
    from ascend_adapt.om_convert.builder import build_llm_onnx
    from ascend_adapt.runtime.backends import get_backend
    from ascend_adapt.runtime.generate import greedy_tokens
    from ascend_adapt.sim.graph import load_model

    exp = tmp_path / "exp"
    build_llm_onnx(tiny_dir("llama", unit_head=True), exp, batch=1, seq_len=6, max_len=14, progress=False)
    for kind in ("prefill", "decode"):
        fake_om(exp / f"{kind}.om")

    def load_onnx(path):
        """x.om → the export's x.onnx on onnxruntime."""
        from ascend_adapt.sim.graph import dims_of

        onnx_path = str(path)[:-3] + ".onnx"
        m = load_model(onnx_path)
        code = {1: 0, 6: 3, 7: 9, 10: 1}
        ins = [(i.name, code[i.type.tensor_type.elem_type], dims_of(i)) for i in m.graph.input]
        outs = [(o.name, code[o.type.tensor_type.elem_type], dims_of(o)) for o in m.graph.output]
        sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        return ins, outs, lambda f: dict(zip([o.name for o in sess.get_outputs()], sess.run(None, dict(f))))

    card = FakeAcl(loader=load_onnx)
    be = get_backend("acl", exp, acl=card)
    ids = np.array([[1, 40, 50, 60]], np.int64)
    got = greedy_tokens(be, ids, 8)
    want = greedy_tokens(get_backend("onnxruntime", exp), ids, 8)
    assert got.tolist() == want.tolist()
    assert card.calls.count("load_from_file") == 2
    be.close()


def test_acl_backend_runs_a_step_graph_with_gears(tiny_dir, tmp_path):
    """A gear build: one step OM (decode = gear 1) selected per step by the host, on a fake card."""
    ort = pytest.importorskip("onnxruntime")
    from ascend_adapt.om_convert.builder import build_llm_onnx
    from ascend_adapt.runtime.backends import get_backend
    from ascend_adapt.runtime.generate import greedy_tokens
    from ascend_adapt.sim.graph import dims_of, load_model

    exp = tmp_path / "exp"
    build_llm_onnx(tiny_dir("llama", unit_head=True), exp, batch=1, max_len=20, gears=[4, 8], progress=False)
    fake_om(exp / "step.om")

    def load_onnx(path):
        onnx_path = str(path)[:-3] + ".onnx"
        m = load_model(onnx_path)
        code = {1: 0, 6: 3, 7: 9, 10: 1}
        dyn = lambda vi: [d if isinstance(d, int) else -1 for d in dims_of(vi)]  # noqa: E731
        ins = [(i.name, code[i.type.tensor_type.elem_type], dyn(i)) for i in m.graph.input]
        ins.append((ACL_DYNAMIC_TENSOR_NAME, 9, [sum(len(d) for _, _, d in ins)]))  # as ATC appends it
        outs = [(o.name, code[o.type.tensor_type.elem_type], dyn(o)) for o in m.graph.output]
        sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        return ins, outs, lambda f: dict(zip([o.name for o in sess.get_outputs()], sess.run(None, dict(f))))

    card = FakeAcl(loader=load_onnx, gear_dim_max=8 + 20)  # the mask's last dim: largest gear + M
    be = get_backend("acl", exp, acl=card)
    for n in (3, 7):  # prompts padded to gear 4 and gear 8
        ids = np.arange(40, 40 + n, dtype=np.int64)[None]
        got = greedy_tokens(be, ids, 6)
        want = greedy_tokens(get_backend("onnxruntime", exp), ids, 6)
        assert got.tolist() == want.tolist()
    assert card.calls.count("load_from_file") == 1  # one OM serves prefill and decode
    be.close()
