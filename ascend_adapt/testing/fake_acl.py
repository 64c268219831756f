"""A strict fake of CANN's pyACL: `acl` stands in for the `acl` module.

Use it to rehearse a deployment without a card (`ASCEND_ADAPT_ACL=fake ascend-adapt generate
OUT --backend acl` runs exactly the code that runs on the card), and in tests (`FakeAcl()` gives a
fresh "process"; pass it as `acl=` to `AclRunner` / the "acl" backend).

What it checks (each refusal returns the aclError code pyACL would return, as pyACL does — it
never raises — and appends the reason to `fake.log`):

- life cycle: `init` once per process (a second call, also after `finalize`, returns 100002
  ACL_ERROR_REPEAT_INITIALIZE: CANN `acl.h` says aclInit "can be called only once in a
  process"); every other call before `init` or after `finalize` returns 100001
  ACL_ERROR_UNINITIALIZE; a second `finalize` returns 100037 ACL_ERROR_REPEAT_FINALIZE.
- devices and contexts: `set_device(id)` with id < `device_count` (else 107001
  ACL_ERROR_RT_INVALID_DEVICEID); `create_context` makes the new context current on the calling
  thread (contexts are per thread, as in CANN); `malloc`, `memcpy` touching the device,
  `load_from_file` and `execute` need a current context (else 107002 ACL_ERROR_RT_CONTEXT_NULL),
  and `execute` needs the context of the device the model was loaded on (else 107004).
- memory: `rt.malloc` / `rt.malloc_host` return addresses of real allocations (bytearrays) with
  guard gaps between them; a pointer may point inside an allocation. A copy that runs past its
  allocation, a `dest_max` larger than the room left in the destination, `count > dest_max`, a
  freed or unknown pointer, a double free, and a memcpy kind that does not match where the
  pointers live return 100000 ACL_ERROR_INVALID_PARAM. The card cannot check a `dest_max` that
  overstates its buffer; the fake does, because that is always a caller bug.
  `util.bytes_to_ptr(data)` gives a read-only host pointer to `data`; the fake remembers the
  last `BYTES_PTR_WINDOW` of them (a real pointer lives as long as the bytes object: keep it
  alive until the copy is done).
- memcpy kinds (CANN `aclrtMemcpyKind`): 0 host→host, 1 host→device, 2 device→host,
  3 device→device; the sheet (reference §5.1) documents 1 and 2; others return 100000.
  `rt.memcpy_2d(dst, dpitch, src, spitch, width, height, kind)` (CANN aclrtMemcpy2d; the pyACL
  name is assumed from pyACL's naming, the sheet is silent) checks every row's extent the same
  way; `rt.memset(ptr, max, value, count)` (aclrtMemset) fills device memory.
- models: `mdl.load_from_file(path)` loads a *stand-in OM* (below) and describes it as ATC would:
  inputs / outputs with aclDataType codes and dims (-1 for a gear dim), buffer sizes of the
  largest gear, and for a gear build the extra input `ascend_mbatch_shape_data` that
  `set_input_dynamic_dims` selects the gear with. A gear is given and reported
  (`get_input_dynamic_dims`) as the full shapes of all inputs of --input_shape concatenated, the
  -1s filled with the gear's --dynamic_dims values (how `ascend_adapt.backends.acl.runner.gear_dims` reads CANN's
  aclmdlIODims; the reference sheet is silent on the layout). `mdl.execute` checks the datasets (count and
  sizes: 100017 / 100018), that a gear was selected on a gear model, reads every input from its
  device buffer, runs the graph through onnxruntime and writes every output into its device
  buffer.
- counting: `fake.calls` (Counter of every call by pyACL name), `fake.bytes` (bytes copied per
  direction: "host_to_device", "device_to_host", "device_to_device", "host_to_host"),
  `fake.copies` (memcpy calls per direction); `reset_counters()` zeroes them; `traffic()`
  returns a snapshot; `live()` lists what is still allocated / loaded.

Where the OM comes from (the stand-in rule): the fake has no OM compiler, so an OM is stood in
for by the ONNX graph ATC compiles it from, together with the ATC settings the simulator
artifact records (input shapes, gears). `load_from_file(path)` accepts

1. `X.omsim/<graph>.onnx` — a graph of a simulator artifact (what `convert` writes without ATC:
   `OUT/model.omsim/`); its manifest gives the graph's --input_shape and --dynamic_dims, or
2. `DIR/<graph>.om` (the file need not exist) when `DIR` holds a simulator artifact
   (`DIR/*.omsim`) with that graph.

`stand_in_om(directory, graph)` returns the path of rule 1 for a convert output or an `.omsim`
directory, and the "acl" backend asks for it (only when the module has `loads_stand_ins`, i.e.
this fake) when the directory holds no real OM. A real card never sees these paths.

The fake computes in the graph's own dtypes (the export's fp32 graph on onnxruntime): the
numerics of a precision mode are the simulator's business, not this fake's.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter, deque
from pathlib import Path

import numpy as np

from ascend_adapt.backends.acl.runtime import (ACL_ERROR_BAD_ALLOC, ACL_ERROR_INVALID_FILE, ACL_ERROR_INVALID_MODEL_ID,
                                              ACL_ERROR_INVALID_PARAM, ACL_ERROR_MODEL_INPUT_NOT_MATCH,
                                              ACL_ERROR_MODEL_NOT_DYNAMIC, ACL_ERROR_RT_MODEL_CONTEXT,
                                              ACL_ERROR_MODEL_OUTPUT_NOT_MATCH, ACL_ERROR_PARSE_MODEL,
                                              ACL_ERROR_REPEAT_FINALIZE, ACL_ERROR_REPEAT_INITIALIZE,
                                              ACL_ERROR_RT_CONTEXT_NULL, ACL_ERROR_RT_INVALID_DEVICEID,
                                              ACL_ERROR_RT_PARAM_INVALID, ACL_ERROR_UNINITIALIZE, ACL_SUCCESS)

ACL_DYNAMIC_TENSOR_NAME = "ascend_mbatch_shape_data"
KINDS = {0: "host_to_host", 1: "host_to_device", 2: "device_to_host", 3: "device_to_device"}
# onnx TensorProto elem_type → aclDataType (= ge::DataType, reference §5.1)
ONNX_TO_ACL = {1: 0, 10: 1, 3: 2, 6: 3, 2: 4, 5: 6, 4: 7, 12: 8, 7: 9, 13: 10, 11: 11, 9: 12, 16: 27}
BYTES_PTR_WINDOW = 256
_GUARD = 4096          # bytes of unmapped address space after each allocation
_ALIGN = 512           # allocation alignment


def stand_in_om(directory, graph: str) -> Path | None:
    """The stand-in OM of `graph` for a convert output or `.omsim` directory (rule 1 of the
    module docstring), or None when there is no simulator artifact holding that graph."""
    d = Path(directory)
    for art in ([d] if d.suffix == ".omsim" else []) + sorted(d.glob("*.omsim")):
        entry = _omsim_graphs(art).get(graph)
        if entry is not None:
            return art / entry["file"]
    return None


def _omsim_graphs(art: Path) -> dict:
    from ascend_adapt.backends.sim.artifact import is_omsim, read_omsim

    if not is_omsim(art):
        return {}
    return read_omsim(art, verify=False).manifest.get("graphs", {})


class _Region:
    __slots__ = ("base", "size", "where", "device", "data", "readonly")

    def __init__(self, base, size, where, device, data, readonly=False):
        self.base, self.size, self.where, self.device, self.data, self.readonly = (base, size, where, device, data,
                                                                                    readonly)


class _Model:
    def __init__(self, path, device, inputs, outputs, gears, session, out_dims_sym):
        self.path, self.device, self.inputs, self.outputs, self.gears = path, device, inputs, outputs, gears
        self.session, self.out_dims_sym = session, out_dims_sym
        self.gears_full: list[list[int]] = []   # each gear as aclmdlGetInputDynamicDims gives it
        self.gear: list[int] | None = None       # set by set_input_dynamic_dims (its raw --dynamic_dims values)
        self.cur_out: list[list[int]] | None = None


class _Namespace:
    pass


class FakeAcl:
    """A fresh fake pyACL "process" (see the module docstring).

    Args:
        device_count: NPUs on the fake host.
        device_memory_bytes: memory per device; `rt.malloc` past it returns 200000 ACL_ERROR_BAD_ALLOC
            (None: unlimited).
        intra_op_threads: onnxruntime threads per model.
    """

    loads_stand_ins = True  # the "acl" backend may hand it stand-in OMs (ONNX graphs of an .omsim)

    def __init__(self, device_count: int = 8, device_memory_bytes: int | None = None, intra_op_threads: int = 0):
        self.device_count = int(device_count)
        self.device_memory_bytes = device_memory_bytes
        self.intra_op_threads = int(intra_op_threads)
        self.state = "new"  # new → initialized → finalized
        self.log: list[str] = []
        self._lock = threading.RLock()
        self._tls = threading.local()
        self._regions: dict[int, _Region] = {}
        self._bases: list[int] = []
        self._freed: set[int] = set()
        self._next = {"device": 0x1000_0000_0000, "host": 0x7000_0000_0000}
        self._bytes_ptrs: deque[int] = deque()
        self._device_used: Counter = Counter()
        self._devices_set: Counter = Counter()
        self._contexts: dict[int, int] = {}      # context handle → device
        self._models: dict[int, _Model] = {}
        self._descs: dict[int, int | None] = {}  # desc handle → model id
        self._datasets: dict[int, list[int]] = {}
        self._buffers: dict[int, tuple[int, int]] = {}
        self._handle = 1
        self.reset_counters()
        self.rt, self.mdl, self.util = _Namespace(), _Namespace(), _Namespace()
        for name in ("set_device", "reset_device", "create_context", "destroy_context", "set_context",
                     "get_context", "malloc", "free", "malloc_host", "free_host", "memcpy", "memcpy_2d", "memset"):
            setattr(self.rt, name, self._api(f"rt.{name}", getattr(self, f"_rt_{name}")))
        for name in ("load_from_file", "unload", "create_desc", "destroy_desc", "get_desc", "get_num_inputs",
                     "get_num_outputs", "get_input_size_by_index", "get_output_size_by_index", "get_input_dims",
                     "get_output_dims", "get_input_name_by_index", "get_output_name_by_index",
                     "get_input_data_type", "get_output_data_type", "get_input_dynamic_gear_count",
                     "get_input_dynamic_dims", "get_cur_output_dims", "create_dataset", "add_dataset_buffer",
                     "destroy_dataset", "get_dataset_num_buffers", "set_input_dynamic_dims", "execute"):
            setattr(self.mdl, name, self._api(f"mdl.{name}", getattr(self, f"_mdl_{name}")))
        for name in ("bytes_to_ptr", "ptr_to_bytes"):
            setattr(self.util, name, self._api(f"util.{name}", getattr(self, f"_util_{name}")))
        self.create_data_buffer = self._api("create_data_buffer", self._create_data_buffer)
        self.destroy_data_buffer = self._api("destroy_data_buffer", self._destroy_data_buffer)

    # ------------------------------------------------------------------ counters
    def reset_counters(self) -> None:
        """Zero `calls`, `bytes` and `copies`."""
        self.calls: Counter = Counter()
        self.bytes: dict[str, int] = {k: 0 for k in KINDS.values()}
        self.copies: dict[str, int] = {k: 0 for k in KINDS.values()}

    def traffic(self) -> dict:
        """A snapshot: {"calls": total pyACL calls, "by_call": {...}, "bytes": {...}, "copies": {...}}."""
        return {"calls": sum(self.calls.values()), "by_call": dict(self.calls), "bytes": dict(self.bytes),
                "copies": dict(self.copies)}

    def live(self) -> dict:
        """What is still held: device / host allocations, models, datasets, data buffers, contexts."""
        regions = [r for r in self._regions.values() if not r.readonly]
        return {"device_allocations": sum(r.where == "device" for r in regions),
                "host_allocations": sum(r.where == "host" for r in regions),
                "models": len(self._models), "datasets": len(self._datasets), "data_buffers": len(self._buffers),
                "contexts": len(self._contexts)}

    # ------------------------------------------------------------------ plumbing
    def _api(self, name, fn):
        def call(*args):
            with self._lock:
                self.calls[name] += 1
                if self.state != "initialized":
                    return self._uninit(fn)
                return fn(*args)

        call.__name__ = name
        return call

    def _uninit(self, fn):
        self.log.append(f"{fn.__name__}: ACL is {'finalized' if self.state == 'finalized' else 'not initialized'}")
        # calls that return a value return (value, ret); plain-ret calls return ret
        return (None, ACL_ERROR_UNINITIALIZE) if fn.__name__ in _VALUE_CALLS else ACL_ERROR_UNINITIALIZE

    def _fail(self, code: int, why: str, value: bool = False):
        self.log.append(why)
        return (None, code) if value else code

    def _new_handle(self) -> int:
        self._handle += 1
        return self._handle

    def get_recent_err_msg(self) -> str:
        """aclGetRecentErrMsg: why the latest refused call was refused (the fake's log line)."""
        return self.log[-1] if self.log else ""

    def init(self, config_path: str | None = None) -> int:
        """aclInit: once per process."""
        with self._lock:
            self.calls["init"] += 1
            if self.state != "new":
                return self._fail(ACL_ERROR_REPEAT_INITIALIZE, f"init: ACL already {self.state} in this process")
            self.state = "initialized"
            return ACL_SUCCESS

    def finalize(self) -> int:
        """aclFinalize: once; releases whatever is left (as the runtime does)."""
        with self._lock:
            self.calls["finalize"] += 1
            if self.state == "new":
                return self._fail(ACL_ERROR_UNINITIALIZE, "finalize before init")
            if self.state == "finalized":
                return self._fail(ACL_ERROR_REPEAT_FINALIZE, "finalize: already finalized")
            self.state = "finalized"
            return ACL_SUCCESS

    def _ctx_device(self) -> int | None:
        ctx = getattr(self._tls, "context", None)
        return self._contexts.get(ctx) if ctx is not None else None

    # ------------------------------------------------------------------ rt: devices / contexts
    def _rt_set_device(self, device_id):
        if not isinstance(device_id, (int, np.integer)) or not 0 <= int(device_id) < self.device_count:
            return self._fail(ACL_ERROR_RT_INVALID_DEVICEID, f"set_device({device_id}): {self.device_count} devices")
        self._devices_set[int(device_id)] += 1
        return ACL_SUCCESS

    def _rt_reset_device(self, device_id):
        if self._devices_set.get(int(device_id), 0) <= 0:
            return self._fail(ACL_ERROR_RT_INVALID_DEVICEID, f"reset_device({device_id}): device was not set")
        self._devices_set[int(device_id)] -= 1
        return ACL_SUCCESS

    def _rt_create_context(self, device_id):
        if self._devices_set.get(int(device_id), 0) <= 0:
            return self._fail(ACL_ERROR_RT_INVALID_DEVICEID, f"create_context({device_id}): set_device first", True)
        ctx = self._new_handle()
        self._contexts[ctx] = int(device_id)
        self._tls.context = ctx
        return ctx, ACL_SUCCESS

    def _rt_destroy_context(self, ctx):
        if ctx not in self._contexts:
            return self._fail(ACL_ERROR_RT_PARAM_INVALID, f"destroy_context({ctx}): unknown context")
        del self._contexts[ctx]
        if getattr(self._tls, "context", None) == ctx:
            self._tls.context = None
        return ACL_SUCCESS

    def _rt_set_context(self, ctx):
        if ctx not in self._contexts:
            return self._fail(ACL_ERROR_RT_PARAM_INVALID, f"set_context({ctx}): unknown or destroyed context")
        self._tls.context = ctx
        return ACL_SUCCESS

    def _rt_get_context(self):
        ctx = getattr(self._tls, "context", None)
        if ctx is None:
            return self._fail(ACL_ERROR_RT_CONTEXT_NULL, "get_context: no current context on this thread", True)
        return ctx, ACL_SUCCESS

    # ------------------------------------------------------------------ rt: memory
    def _map(self, size: int, where: str, device, data, readonly=False) -> int:
        base = self._next[where]
        self._next[where] = base + (-(-max(size, 1) // _ALIGN)) * _ALIGN + _GUARD
        self._regions[base] = _Region(base, size, where, device, data, readonly)
        bisect.insort(self._bases, base)
        return base

    def _unmap(self, base: int) -> None:
        del self._regions[base]
        self._bases.pop(bisect.bisect_left(self._bases, base))
        self._freed.add(base)

    def _find(self, ptr, count: int) -> tuple[_Region | None, str]:
        """(region holding [ptr, ptr + count), "") or (None, why)."""
        if not isinstance(ptr, (int, np.integer)):
            return None, f"pointer {ptr!r} is not an address"
        ptr = int(ptr)
        i = bisect.bisect_right(self._bases, ptr) - 1
        if i < 0:
            return None, f"pointer {ptr:#x} is in no allocation"
        r = self._regions[self._bases[i]]
        if ptr >= r.base + r.size:
            why = "freed" if ptr in self._freed else "in no allocation"
            return None, f"pointer {ptr:#x} is {why} (after the {r.size}-byte allocation at {r.base:#x})"
        if ptr + count > r.base + r.size:
            return None, (f"{count} bytes at {ptr:#x} run past the {r.size}-byte allocation at {r.base:#x} "
                          f"by {ptr + count - r.base - r.size}")
        return r, ""

    def _rt_malloc(self, size, policy=0):
        dev = self._ctx_device()
        if dev is None:
            return self._fail(ACL_ERROR_RT_CONTEXT_NULL, "malloc: no current context on this thread", True)
        if not isinstance(size, (int, np.integer)) or size <= 0 or policy not in (0, 1, 2):
            return self._fail(ACL_ERROR_INVALID_PARAM, f"malloc({size}, {policy}): bad size or policy", True)
        if self.device_memory_bytes is not None and self._device_used[dev] + size > self.device_memory_bytes:
            return self._fail(ACL_ERROR_BAD_ALLOC, f"malloc({size}): device {dev} has "
                              f"{self.device_memory_bytes - self._device_used[dev]} bytes left", True)
        self._device_used[dev] += int(size)
        return self._map(int(size), "device", dev, bytearray(int(size))), ACL_SUCCESS

    def _rt_malloc_host(self, size):
        if not isinstance(size, (int, np.integer)) or size <= 0:
            return self._fail(ACL_ERROR_INVALID_PARAM, f"malloc_host({size}): bad size", True)
        return self._map(int(size), "host", None, bytearray(int(size))), ACL_SUCCESS

    def _free_region(self, ptr, where: str, api: str):
        r = self._regions.get(ptr) if isinstance(ptr, (int, np.integer)) else None
        if r is None or r.where != where or r.readonly:
            why = "already freed" if ptr in self._freed else f"not the start of a {where} allocation"
            return self._fail(ACL_ERROR_INVALID_PARAM, f"{api}({ptr!r}): {why}")
        if where == "device":
            self._device_used[r.device] -= r.size
        self._unmap(r.base)
        return ACL_SUCCESS

    def _rt_free(self, ptr):
        return self._free_region(ptr, "device", "rt.free")

    def _rt_free_host(self, ptr):
        return self._free_region(ptr, "host", "rt.free_host")

    def _rt_memcpy(self, dst, dest_max, src, count, kind):
        if kind not in KINDS:
            return self._fail(ACL_ERROR_INVALID_PARAM, f"memcpy: kind {kind} is not 0-3")
        if not all(isinstance(v, (int, np.integer)) and v >= 0 for v in (dest_max, count)) or count > dest_max:
            return self._fail(ACL_ERROR_INVALID_PARAM, f"memcpy: count {count} > dest_max {dest_max} (or negative)")
        want_src, want_dst = KINDS[kind].split("_to_")
        if "device" in (want_src, want_dst) and self._ctx_device() is None:
            return self._fail(ACL_ERROR_RT_CONTEXT_NULL, "memcpy: no current context on this thread")
        d, why = self._find(dst, dest_max)
        if d is None:
            return self._fail(ACL_ERROR_INVALID_PARAM, f"memcpy {KINDS[kind]} destination: {why}")
        s, why = self._find(src, count)
        if s is None:
            return self._fail(ACL_ERROR_INVALID_PARAM, f"memcpy {KINDS[kind]} source: {why}")
        if (s.where, d.where) != (want_src, want_dst):
            return self._fail(ACL_ERROR_INVALID_PARAM, f"memcpy kind {kind} ({KINDS[kind]}) but the source is "
                                                       f"{s.where} memory and the destination {d.where} memory")
        if d.readonly:
            return self._fail(ACL_ERROR_INVALID_PARAM, "memcpy: the destination is a bytes_to_ptr (read-only) buffer")
        so, do = int(src) - s.base, int(dst) - d.base
        d.data[do:do + count] = s.data[so:so + count]
        self.bytes[KINDS[kind]] += int(count)
        self.copies[KINDS[kind]] += 1
        return ACL_SUCCESS

    def _rt_memcpy_2d(self, dst, dpitch, src, spitch, width, height, kind):
        """aclrtMemcpy2d: `height` rows of `width` bytes, row i from src + i·spitch to dst + i·dpitch
        (CANN acl_rt.h; not in the reference sheet). Counted as width·height bytes, one copy."""
        if kind not in KINDS:
            return self._fail(ACL_ERROR_INVALID_PARAM, f"memcpy_2d: kind {kind} is not 0-3")
        ints = (dpitch, spitch, width, height)
        if not all(isinstance(v, (int, np.integer)) and v > 0 for v in ints) or width > dpitch or width > spitch:
            return self._fail(ACL_ERROR_INVALID_PARAM, f"memcpy_2d: width {width} must be > 0 and ≤ both pitches "
                                                       f"({spitch}, {dpitch}); height {height} > 0")
        want_src, want_dst = KINDS[kind].split("_to_")
        if "device" in (want_src, want_dst) and self._ctx_device() is None:
            return self._fail(ACL_ERROR_RT_CONTEXT_NULL, "memcpy_2d: no current context on this thread")
        d, why = self._find(dst, (height - 1) * dpitch + width)
        if d is None:
            return self._fail(ACL_ERROR_INVALID_PARAM, f"memcpy_2d {KINDS[kind]} destination: {why}")
        s, why = self._find(src, (height - 1) * spitch + width)
        if s is None:
            return self._fail(ACL_ERROR_INVALID_PARAM, f"memcpy_2d {KINDS[kind]} source: {why}")
        if (s.where, d.where) != (want_src, want_dst) or d.readonly:
            return self._fail(ACL_ERROR_INVALID_PARAM, f"memcpy_2d kind {kind} ({KINDS[kind]}) but the source is "
                                                       f"{s.where} memory and the destination {d.where} memory")
        so, do = int(src) - s.base, int(dst) - d.base
        sv = np.frombuffer(s.data, np.uint8)
        dv = np.frombuffer(d.data, np.uint8)
        rows = np.lib.stride_tricks.as_strided(sv[so:], (height, width), (spitch, 1))
        np.lib.stride_tricks.as_strided(dv[do:], (height, width), (dpitch, 1))[...] = rows
        self.bytes[KINDS[kind]] += int(width) * int(height)
        self.copies[KINDS[kind]] += 1
        return ACL_SUCCESS

    def _rt_memset(self, ptr, max_count, value, count):
        """aclrtMemset(devPtr, maxCount, value, count): `count` bytes of `value` (device memory)."""
        if self._ctx_device() is None:
            return self._fail(ACL_ERROR_RT_CONTEXT_NULL, "memset: no current context on this thread")
        if not all(isinstance(v, (int, np.integer)) and v >= 0 for v in (max_count, count)) or count > max_count:
            return self._fail(ACL_ERROR_INVALID_PARAM, f"memset: count {count} > max {max_count}")
        r, why = self._find(ptr, max_count)
        if r is None or r.where != "device":
            return self._fail(ACL_ERROR_INVALID_PARAM, f"memset: {why or 'not device memory'}")
        o = int(ptr) - r.base
        r.data[o:o + count] = bytes([int(value) & 0xFF]) * int(count)
        return ACL_SUCCESS

    # ------------------------------------------------------------------ util
    def _util_bytes_to_ptr(self, data):
        if not isinstance(data, (bytes, bytearray)):
            self.log.append(f"bytes_to_ptr({type(data).__name__}): not bytes")
            return 0
        p = self._map(len(data), "host", None, data, readonly=isinstance(data, bytes))
        self._bytes_ptrs.append(p)
        while len(self._bytes_ptrs) > BYTES_PTR_WINDOW:
            self._unmap(self._bytes_ptrs.popleft())
        return p

    def _util_ptr_to_bytes(self, ptr, size):
        r, why = self._find(ptr, int(size))
        if r is None or r.where != "host":
            self.log.append(f"ptr_to_bytes: {why or 'not host memory'}")
            raise ValueError(f"fake pyACL: ptr_to_bytes({ptr!r}, {size}): {why or 'not host memory'}")
        o = int(ptr) - r.base
        return bytes(r.data[o:o + int(size)])

    # ------------------------------------------------------------------ data buffers / datasets
    def _create_data_buffer(self, ptr, size):
        r, why = self._find(ptr, int(size))
        if r is None or r.where != "device":
            self.log.append(f"create_data_buffer: {why or 'not device memory'}")
            return 0  # pyACL returns a null buffer
        h = self._new_handle()
        self._buffers[h] = (int(ptr), int(size))
        return h

    def _destroy_data_buffer(self, buf):
        if self._buffers.pop(buf, None) is None:
            return self._fail(ACL_ERROR_INVALID_PARAM, f"destroy_data_buffer({buf!r}): unknown buffer")
        return ACL_SUCCESS

    def _mdl_create_dataset(self):
        h = self._new_handle()
        self._datasets[h] = []
        return h

    def _mdl_add_dataset_buffer(self, ds, buf):
        if ds not in self._datasets or buf not in self._buffers:
            return self._fail(ACL_ERROR_INVALID_PARAM, f"add_dataset_buffer({ds!r}, {buf!r}): unknown handle", True)
        self._datasets[ds].append(buf)
        return ds, ACL_SUCCESS

    def _mdl_get_dataset_num_buffers(self, ds):
        return len(self._datasets.get(ds, []))

    def _mdl_destroy_dataset(self, ds):
        if self._datasets.pop(ds, None) is None:
            return self._fail(ACL_ERROR_INVALID_PARAM, f"destroy_dataset({ds!r}): unknown dataset")
        return ACL_SUCCESS

    # ------------------------------------------------------------------ models
    def _mdl_load_from_file(self, path):
        dev = self._ctx_device()
        if dev is None:
            return self._fail(ACL_ERROR_RT_CONTEXT_NULL, "load_from_file: no current context on this thread", True)
        p = Path(str(path))
        graph, entry = self._resolve(p)
        if graph is None:
            code = ACL_ERROR_INVALID_FILE if not (p.exists() or p.parent.is_dir()) else ACL_ERROR_PARSE_MODEL
            return self._fail(code, f"load_from_file({p}): {entry}", True)
        try:
            model = self._describe(graph, entry, dev)
        except Exception as exc:  # noqa: BLE001 - an unloadable graph is a load failure, as on the card
            return self._fail(ACL_ERROR_PARSE_MODEL, f"load_from_file({p}): {exc}", True)
        mid = self._new_handle()
        self._models[mid] = model
        return mid, ACL_SUCCESS

    def _resolve(self, p: Path):
        """(graph path, omsim manifest entry) of a stand-in OM, or (None, why)."""
        if p.suffix == ".onnx":
            entry = next((e for e in _omsim_graphs(p.parent).values() if e.get("file") == p.name), None)
            if entry is None:
                return None, f"{p.name} is not a graph of a simulator artifact (.omsim) — no stand-in OM"
            return p, entry
        if p.suffix == ".om":
            stem = p.stem
            for art in sorted(p.parent.glob("*.omsim")):
                graphs = _omsim_graphs(art)
                name = stem if stem in graphs else next((g for g in graphs if stem.startswith(g + "_")), None)
                if name is not None:
                    return art / graphs[name]["file"], graphs[name]
            return None, f"no simulator artifact beside it holds graph '{stem}' (the fake's stand-in OM)"
        return None, "not an .om (nor a stand-in .onnx of an .omsim)"

    def _describe(self, graph: Path, entry: dict, device: int) -> _Model:
        import onnxruntime as ort

        settings = entry.get("settings") or {}
        shape_opt = settings.get("input_shape") or {}
        gear_spec = settings.get("gears") or None
        if gear_spec and gear_spec.get("flag", "dynamic_dims") != "dynamic_dims":
            raise ValueError(f"gear flag {gear_spec.get('flag')} is not modelled by the fake (dynamic_dims only)")
        gears = [list(map(int, g)) for g in gear_spec["values"]] if gear_spec else None
        ins_sym = {k: v["shape"] for k, v in entry["inputs"].items()}
        outs_sym = {k: v["shape"] for k, v in entry["outputs"].items()}
        so = ort.SessionOptions()
        if self.intra_op_threads:
            so.intra_op_num_threads = self.intra_op_threads
        sess = ort.InferenceSession(str(graph), so, providers=["CPUExecutionProvider"])
        order = [i.name for i in sess.get_inputs()]
        bindings = [self._bind(order, ins_sym, shape_opt, g) for g in gears] if gears else [{}]

        def dims_of(sym, binding):
            return [d if isinstance(d, int) else int(binding[d]) for d in sym]

        def size(sym, code, binding_list):
            item = _itemsize(code)
            return max(int(np.prod(dims_of(sym, b), dtype=np.int64)) * item for b in binding_list)

        inputs = []
        for name in order:
            code = ONNX_TO_ACL[entry["inputs"][name]["dtype"]]
            dims = [d if isinstance(d, int) else -1 for d in ins_sym[name]]
            inputs.append([name, code, dims, size(ins_sym[name], code, bindings)])
        gears_full = []
        for g in gears or []:
            it = iter(g)
            gears_full.append([int(next(it)) if d == -1 else int(d)
                               for name in order for d in (shape_opt.get(name) or ins_sym[name])])
        if gears:
            n = len(gears_full[0])
            inputs.append([ACL_DYNAMIC_TENSOR_NAME, 9, [n], 8 * n])  # ATC appends it; int64 per value
        outputs = []
        for o in sess.get_outputs():
            code = ONNX_TO_ACL[entry["outputs"][o.name]["dtype"]]
            dims = [d if isinstance(d, int) else -1 for d in outs_sym[o.name]]
            outputs.append([o.name, code, dims, size(outs_sym[o.name], code, bindings)])
        model = _Model(graph, device, inputs, outputs, gears, sess, (ins_sym, outs_sym, shape_opt, order))
        model.gears_full = gears_full
        return model

    @staticmethod
    def _bind(order, ins_sym, shape_opt, gear) -> dict:
        """{dim_param: value} for one gear: the -1s of --input_shape, in input order, take its values."""
        it = iter(gear)
        binding: dict = {}
        for name in order:
            opt = shape_opt.get(name) or ins_sym[name]
            for sym, d in zip(ins_sym[name], opt):
                if d == -1 or not isinstance(d, int):
                    v = int(next(it))
                    if isinstance(sym, str):
                        binding[sym] = v
        return binding

    def _model(self, mid) -> _Model | None:
        return self._models.get(mid)

    def _mdl_unload(self, mid):
        if self._models.pop(mid, None) is None:
            return self._fail(ACL_ERROR_INVALID_MODEL_ID, f"unload({mid!r}): no such model")
        return ACL_SUCCESS

    def _mdl_create_desc(self):
        h = self._new_handle()
        self._descs[h] = None
        return h

    def _mdl_destroy_desc(self, desc):
        if desc not in self._descs:
            return self._fail(ACL_ERROR_INVALID_PARAM, f"destroy_desc({desc!r}): unknown desc")
        del self._descs[desc]
        return ACL_SUCCESS

    def _mdl_get_desc(self, desc, mid):
        if desc not in self._descs:
            return self._fail(ACL_ERROR_INVALID_PARAM, f"get_desc({desc!r}): unknown desc")
        if mid not in self._models:
            return self._fail(ACL_ERROR_INVALID_MODEL_ID, f"get_desc: no model {mid!r}")
        self._descs[desc] = mid
        return ACL_SUCCESS

    def _io(self, desc, which):
        mid = self._descs.get(desc)
        m = self._models.get(mid) if mid is not None else None
        if m is None:
            raise ValueError(f"fake pyACL: desc {desc!r} describes no loaded model")
        return m, (m.inputs if which == "in" else m.outputs)

    def _mdl_get_num_inputs(self, desc):
        return len(self._io(desc, "in")[1])

    def _mdl_get_num_outputs(self, desc):
        return len(self._io(desc, "out")[1])

    def _mdl_get_input_size_by_index(self, desc, i):
        return self._io(desc, "in")[1][i][3]

    def _mdl_get_output_size_by_index(self, desc, i):
        return self._io(desc, "out")[1][i][3]

    def _mdl_get_input_dims(self, desc, i):
        name, _, dims, _ = self._io(desc, "in")[1][i]
        return {"name": name, "dimCount": len(dims), "dims": list(dims)}, ACL_SUCCESS

    def _mdl_get_output_dims(self, desc, i):
        name, _, dims, _ = self._io(desc, "out")[1][i]
        return {"name": name, "dimCount": len(dims), "dims": list(dims)}, ACL_SUCCESS

    def _mdl_get_input_name_by_index(self, desc, i):
        return self._io(desc, "in")[1][i][0]

    def _mdl_get_output_name_by_index(self, desc, i):
        return self._io(desc, "out")[1][i][0]

    def _mdl_get_input_data_type(self, desc, i):
        return self._io(desc, "in")[1][i][1]

    def _mdl_get_output_data_type(self, desc, i):
        return self._io(desc, "out")[1][i][1]

    def _mdl_get_input_dynamic_gear_count(self, desc, index):
        m, _ = self._io(desc, "in")
        if not m.gears:
            return self._fail(ACL_ERROR_MODEL_NOT_DYNAMIC, "get_input_dynamic_gear_count: the model has no gears", True)
        return len(m.gears), ACL_SUCCESS

    def _mdl_get_input_dynamic_dims(self, desc, index, count):
        m, _ = self._io(desc, "in")
        if not m.gears or count != len(m.gears):
            return self._fail(ACL_ERROR_INVALID_PARAM, f"get_input_dynamic_dims: count {count}", True)
        return [{"dimCount": len(g), "dims": list(g)} for g in m.gears_full], ACL_SUCCESS

    def _mdl_get_cur_output_dims(self, desc, i):
        m, outs = self._io(desc, "out")
        if m.cur_out is None:
            return self._fail(ACL_ERROR_INVALID_PARAM, "get_cur_output_dims before execute", True)
        return {"name": outs[i][0], "dimCount": len(m.cur_out[i]), "dims": list(m.cur_out[i])}, ACL_SUCCESS

    def _mdl_set_input_dynamic_dims(self, mid, ds, index, dims):
        m = self._model(mid)
        if m is None:
            return self._fail(ACL_ERROR_INVALID_MODEL_ID, f"set_input_dynamic_dims: no model {mid!r}")
        if not m.gears:
            return self._fail(ACL_ERROR_MODEL_NOT_DYNAMIC, "set_input_dynamic_dims on a model without gears")
        if index != len(m.inputs) - 1 or m.inputs[index][0] != ACL_DYNAMIC_TENSOR_NAME:
            return self._fail(ACL_ERROR_INVALID_PARAM, f"set_input_dynamic_dims: index {index} is not "
                                                       f"{ACL_DYNAMIC_TENSOR_NAME}")
        if ds not in self._datasets:
            return self._fail(ACL_ERROR_INVALID_PARAM, "set_input_dynamic_dims: unknown dataset")
        got = list(dims.get("dims", []))[: dims.get("dimCount", 0)]
        if got not in m.gears_full:
            return self._fail(ACL_ERROR_INVALID_PARAM, f"set_input_dynamic_dims: {got} is none of the gears "
                                                       f"{m.gears_full}")
        m.gear = m.gears[m.gears_full.index(got)]
        return ACL_SUCCESS

    def _mdl_execute(self, mid, ds_in, ds_out):
        m = self._model(mid)
        if m is None:
            return self._fail(ACL_ERROR_INVALID_MODEL_ID, f"execute: no model {mid!r}")
        dev = self._ctx_device()
        if dev is None:
            return self._fail(ACL_ERROR_RT_CONTEXT_NULL, "execute: no current context on this thread")
        if dev != m.device:
            return self._fail(ACL_ERROR_RT_MODEL_CONTEXT, f"execute: model on device {m.device}, context on {dev}")
        bins, bouts = self._datasets.get(ds_in), self._datasets.get(ds_out)
        if bins is None or len(bins) != len(m.inputs):
            return self._fail(ACL_ERROR_MODEL_INPUT_NOT_MATCH, f"execute: input dataset has "
                              f"{None if bins is None else len(bins)} buffers, the model {len(m.inputs)} inputs")
        if bouts is None or len(bouts) != len(m.outputs):
            return self._fail(ACL_ERROR_MODEL_OUTPUT_NOT_MATCH, f"execute: output dataset has "
                              f"{None if bouts is None else len(bouts)} buffers, the model {len(m.outputs)} outputs")
        for specs, bufs, code in ((m.inputs, bins, ACL_ERROR_MODEL_INPUT_NOT_MATCH),
                                  (m.outputs, bouts, ACL_ERROR_MODEL_OUTPUT_NOT_MATCH)):
            for (name, _, _, need), b in zip(specs, bufs):
                if b not in self._buffers or self._buffers[b][1] < need:
                    return self._fail(code, f"execute: buffer of '{name}' is smaller than the model's {need} bytes "
                                            "(or destroyed)")
        ins_sym, outs_sym, shape_opt, order = m.out_dims_sym
        if m.gears:
            if m.gear is None:
                return self._fail(ACL_ERROR_INVALID_PARAM, "execute: gear model run without set_input_dynamic_dims")
            binding = self._bind(order, ins_sym, shape_opt, m.gear)
        else:
            binding = {}
        feeds = {}
        for (name, code, _, _), b in zip(m.inputs, bins):
            if name == ACL_DYNAMIC_TENSOR_NAME:
                continue
            shape = [d if isinstance(d, int) else binding[d] for d in ins_sym[name]]
            ptr, size = self._buffers[b]
            r, why = self._find(ptr, size)
            if r is None:
                return self._fail(ACL_ERROR_INVALID_PARAM, f"execute: input '{name}': {why}")
            dt = _np_dtype(code)
            n = int(np.prod(shape, dtype=np.int64))
            o = ptr - r.base
            feeds[name] = np.frombuffer(bytes(r.data[o:o + n * dt.itemsize]), dt).reshape(shape)
        results = m.session.run(None, feeds)
        cur = []
        for (name, code, _, _), b, arr in zip(m.outputs, bouts, results):
            arr = np.asarray(arr)
            dt = _np_dtype(code)
            if arr.dtype != dt:
                return self._fail(ACL_ERROR_MODEL_OUTPUT_NOT_MATCH, f"execute: output '{name}' is {arr.dtype}, "
                                                                    f"described as {dt}")
            data = np.ascontiguousarray(arr).tobytes()
            ptr, size = self._buffers[b]
            r, why = self._find(ptr, len(data))
            if r is None or len(data) > size:
                return self._fail(ACL_ERROR_MODEL_OUTPUT_NOT_MATCH, f"execute: output '{name}' ({len(data)} bytes) "
                                                                    f"does not fit its buffer: {why or size}")
            o = ptr - r.base
            r.data[o:o + len(data)] = data
            cur.append(list(arr.shape))
        m.cur_out = cur
        return ACL_SUCCESS


# calls that return (value, ret) in pyACL (the rest return ret, or a bare value / handle)
_VALUE_CALLS = {"_rt_create_context", "_rt_get_context", "_rt_malloc", "_rt_malloc_host", "_mdl_load_from_file",
                "_mdl_get_input_dims", "_mdl_get_output_dims", "_mdl_add_dataset_buffer",
                "_mdl_get_input_dynamic_gear_count", "_mdl_get_input_dynamic_dims", "_mdl_get_cur_output_dims"}


def _np_dtype(code: int) -> np.dtype:
    from ascend_adapt.backends.acl.runner import acl_dtype_to_numpy

    return acl_dtype_to_numpy(code)


def _itemsize(code: int) -> int:
    return _np_dtype(code).itemsize


acl = FakeAcl()
"""The process-wide fake (what `ASCEND_ADAPT_ACL=fake` makes every acl code path use)."""
