"""Real `.om` files on an Ascend card: `AclRunner` (pyACL) and `AisBenchRunner` (ais_bench), the
graph runners of the "acl" backend (its LM backend is in `session.py`).

pyACL flow (reference sheet §5.1): the process's `AclRuntime` (`runtime.py`) does `acl.init`
once per process and `acl.rt.set_device` / `create_context` once per device, reference-counted
over every model; each runner then does `acl.mdl.load_from_file` → `acl.mdl.create_desc` /
`get_desc` → one device buffer per input and output in two datasets → per inference: `memcpy`
host→device, `set_input_dynamic_dims` when the model has gears, `execute`, `memcpy` device→host
→ teardown in reverse, releasing its hold on the device (never `acl.finalize`: that runs once, at
exit).

The `acl` module is `runtime.acl_module()`: CANN's pyACL, or with `ASCEND_ADAPT_ACL=fake` the
strict fake `ascend_adapt.testing.fake_acl.acl`, which runs the graphs through onnxruntime on fake
device memory (tests pass their own `FakeAcl()` as `acl=`). Without CANN (and without the fake),
`activate()` raises MissingDependencyError naming pyACL / CANN; importing this module never
imports `acl`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ascend_adapt.errors import AscendAdaptError, ConfigError, MissingDependencyError

from .runtime import ACL_SUCCESS, AclRuntime, AclRuntimeError, acl_module, check, split_ret
from ascend_adapt.runtime.runners import Metadata, Runner, RunnerError

# aclDataType = ge::DataType (reference §5.1, hicann/ge api/python/ge/ge/graph/types.py)
ACL_DTYPES: dict[int, str] = {0: "float32", 1: "float16", 2: "int8", 3: "int32", 4: "uint8", 6: "int16",
                              7: "uint16", 8: "uint32", 9: "int64", 10: "uint64", 11: "float64", 12: "bool",
                              27: "bfloat16"}
ACL_MEM_MALLOC_HUGE_FIRST = 0
ACL_MEMCPY_HOST_TO_DEVICE = 1
ACL_MEMCPY_DEVICE_TO_HOST = 2
# the extra input ATC adds to gear models (aclmdlSetInputDynamicDims writes it)
ACL_DYNAMIC_TENSOR_NAME = "ascend_mbatch_shape_data"


# ---------------------------------------------------------------------------- marshalling
def acl_dtype_to_numpy(code: int) -> np.dtype:
    """numpy dtype of an aclDataType code (0 f32, 1 f16, 3 i32, 9 i64, 12 bool, 27 bf16, …)."""
    try:
        name = ACL_DTYPES[int(code)]
    except KeyError:
        raise ConfigError(f"aclDataType {code} has no numpy equivalent here",
                          f"known codes: {', '.join(f'{k} {v}' for k, v in ACL_DTYPES.items())}") from None
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def numpy_to_acl_dtype(dtype: Any) -> int:
    """aclDataType code of a numpy dtype."""
    name = np.dtype(dtype).name
    for code, n in ACL_DTYPES.items():
        if n == name:
            return code
    raise ConfigError(f"numpy dtype {name} has no aclDataType", "cast to float32/float16/int32/int64/bool")


def to_device_bytes(array: np.ndarray, acl_dtype: int, buffer_size: int, name: str = "input") -> bytes:
    """The bytes to copy into an input buffer: C-contiguous, in the model's dtype, size-checked.

    Raises:
        RunnerError: dtype differs from the model's (no silent casts), or too many bytes.
    """
    want = acl_dtype_to_numpy(acl_dtype)
    a = np.asarray(array)
    if a.dtype != want:
        raise RunnerError(f"input '{name}' has dtype {a.dtype}, the OM takes {want} (aclDataType {acl_dtype})",
                          f"cast it with .astype(np.{want.name}); int64 ids usually become int32 on the card")
    data = np.ascontiguousarray(a).tobytes()
    if len(data) > buffer_size:
        raise RunnerError(f"input '{name}' is {len(data)} bytes, the OM's buffer holds {buffer_size}",
                          "feed the compiled shape (or a gear's shape for a gear model)")
    return data


def from_device_bytes(data: bytes, acl_dtype: int, shape: Sequence[int]) -> np.ndarray:
    """An output array from the bytes copied back (a gear model's buffer may be larger)."""
    dt = acl_dtype_to_numpy(acl_dtype)
    n = math.prod(shape)
    if n * dt.itemsize > len(data):
        raise RunnerError(f"output of shape {list(shape)} needs {n * dt.itemsize} bytes, the device gave {len(data)}",
                          "the output shape does not match the model (check the manifest)")
    return np.frombuffer(data, dtype=dt, count=n).reshape(tuple(shape)).copy()


def gear_dims(input_shape: Mapping[str, Sequence[int]], gears: Sequence[Sequence[int]], flag: str = "dynamic_dims"
              ) -> list[list[int]]:
    """Each gear as aclmdlSetInputDynamicDims wants it: the full shapes of all inputs of
    --input_shape, in its order, concatenated, with the -1 dims filled by the gear's values."""
    out = []
    for gear in gears:
        it = iter(gear)
        dims: list[int] = []
        for shape in input_shape.values():
            for d in shape:
                if d == -1:
                    dims.append(int(gear[0]) if flag == "dynamic_batch_size" else int(next(it)))
                else:
                    dims.append(int(d))
        out.append(dims)
    return out


def select_gear(feed_shapes: Mapping[str, Sequence[int]], input_shape: Mapping[str, Sequence[int]],
                gears_full: Sequence[Sequence[int]]) -> int:
    """Index of the gear whose concatenated dims equal the feeds' shapes.

    Raises:
        RunnerError: no gear matches (the host must pad to a gear).
    """
    got: list[int] = []
    for name in input_shape:
        if name not in feed_shapes:
            raise RunnerError(f"no feed for input '{name}'", "feed every input of the model")
        got.extend(int(d) for d in feed_shapes[name])
    for i, g in enumerate(gears_full):
        if list(g) == got:
            return i
    raise RunnerError(f"input shapes {dict((k, list(v)) for k, v in feed_shapes.items())} match none of the "
                      f"{len(gears_full)} gears of the OM",
                      "pad the inputs to the smallest gear that holds them (see the manifest's gears)")


_ret, _check = split_ret, check


class AclTeardownError(AscendAdaptError):
    """Closing a model reported pyACL errors (each with its code)."""


# ---------------------------------------------------------------------------- pyACL runner
class AclRunner(Runner):
    """Run an `.om` on an Ascend card through pyACL.

    Args:
        om_path: the `.om` file ATC wrote.
        device_id: the NPU index.
        input_shape: --input_shape of a gear model ({name: dims with -1}) in its order; with
            `gears`, lets the runner pick the gear from the feeds' shapes. Default: query the OM
            (aclmdlGetInputDynamicDims) when it has gears.
        gears: the --dynamic_dims / --dynamic_batch_size profiles (tuples).
        gear_flag: which gear option they come from.
        output_shapes: {output name: shape} (static), or {gear index: {name: shape}}, e.g. from
            the export manifest; default: the OM's current output dims.
        acl: the `acl` module to use (tests pass a `FakeAcl()`; default `runtime.acl_module()`:
            pyACL, or the strict fake with ASCEND_ADAPT_ACL=fake).
        resident: {input name: (device pointer, size in bytes)}: inputs whose data already lives
            on the card (the KV cache of `AclDeviceKVCache`): the input dataset points at that
            memory, nothing is copied for them and they are not fed.
        fetch: output names to copy back to the host (default: all); the others stay on the
            card (`output_buffer`).

    Attributes:
        inputs / outputs: [(name, size_bytes, acl_dtype, dims)] read from the model description.
        last_gear: index of the gear used by the latest inference (None for static models).
    """

    def __init__(self, om_path: str | os.PathLike, device_id: int = 0, *,
                 input_shape: Mapping[str, Sequence[int]] | None = None, gears: Sequence[Sequence[int]] | None = None,
                 gear_flag: str = "dynamic_dims", output_shapes: Mapping | None = None, acl: Any = None,
                 name: str | None = None, resident: Mapping[str, tuple[int, int]] | None = None,
                 fetch: Sequence[str] | None = None):
        super().__init__(name or f"acl:{Path(om_path).name}")
        self.om_path = Path(om_path)
        self.device_id = int(device_id)
        self.input_shape = dict(input_shape) if input_shape else None
        self.gears = [tuple(g) for g in gears] if gears else None
        self.gear_flag = gear_flag
        self.output_shapes = output_shapes
        self._acl = acl
        self.resident = dict(resident or {})
        self.fetch = set(fetch) if fetch is not None else None
        self.last_gear: int | None = None
        self._reset_handles()

    def _reset_handles(self) -> None:
        self.acl = None
        self.runtime: AclRuntime | None = None
        self.context = None
        self.model_id = None
        self.desc = None
        self.ds_in = self.ds_out = None
        self._dev_in: list[tuple[Any, int]] = []
        self._dev_out: list[tuple[Any, int]] = []
        self._host_out: list[Any] = []
        self._buffers: list[Any] = []
        self._borrowed: set[Any] = set()  # resident inputs' device memory: not ours to free
        self.inputs: list[tuple[str, int, int, list[int]]] = []
        self.outputs: list[tuple[str, int, int, list[int]]] = []
        self._dyn_index: int | None = None
        self._gears_full: list[list[int]] | None = None

    # ------------------------------------------------------------------ activate
    def activate_impl(self) -> None:
        acl = acl_module(self._acl)
        if not self.om_path.is_file():
            raise ConfigError(f"OM file '{self.om_path}' not found", "build it with ATC (atc.sh of the artifact)")
        if self.om_path.suffix == ".onnx" and getattr(acl, "loads_stand_ins", False):
            pass  # the strict fake's stand-in OM (ascend_adapt.testing.fake_acl): a graph of an .omsim
        else:
            from ascend_adapt.backends.sim.artifact import read_om_header

            header = read_om_header(self.om_path)
            if header.simulated:
                raise ConfigError(f"'{self.om_path}' is a simulator stub, not an OM",
                                  "run the .omsim with the 'sim' backend, or build real OMs with its atc.sh")
        self.acl = acl
        try:
            self._open(acl)
        except BaseException:
            self.deactivate_impl()
            raise

    def _open(self, acl) -> None:
        runtime = AclRuntime.of(acl)
        self.context = runtime.acquire(self.device_id)  # acl.init / set_device / context: once, shared
        self.runtime = runtime
        self.model_id = _check(acl.mdl.load_from_file(str(self.om_path)), "acl.mdl.load_from_file", acl)
        self.desc = acl.mdl.create_desc()
        _check(acl.mdl.get_desc(self.desc, self.model_id), "acl.mdl.get_desc", acl)
        n_in, n_out = acl.mdl.get_num_inputs(self.desc), acl.mdl.get_num_outputs(self.desc)
        for i in range(n_in):
            dims = _check(acl.mdl.get_input_dims(self.desc, i), "acl.mdl.get_input_dims", acl)
            name = acl.mdl.get_input_name_by_index(self.desc, i) or dims.get("name", f"input_{i}")
            self.inputs.append((name, int(acl.mdl.get_input_size_by_index(self.desc, i)),
                                int(acl.mdl.get_input_data_type(self.desc, i)), list(dims.get("dims", []))))
        for i in range(n_out):
            dims = _check(acl.mdl.get_output_dims(self.desc, i), "acl.mdl.get_output_dims", acl)
            name = acl.mdl.get_output_name_by_index(self.desc, i) or dims.get("name", f"output_{i}")
            self.outputs.append((name, int(acl.mdl.get_output_size_by_index(self.desc, i)),
                                 int(acl.mdl.get_output_data_type(self.desc, i)), list(dims.get("dims", []))))
        names = [n for n, *_ in self.inputs]
        if ACL_DYNAMIC_TENSOR_NAME in names:
            self._dyn_index = names.index(ACL_DYNAMIC_TENSOR_NAME)
            self._gears_full = self._read_gears(acl)
        unknown = set(self.resident) - {n for n, *_ in self.inputs}
        if unknown:
            raise RunnerError(f"resident inputs {sorted(unknown)} are not inputs of {self.om_path.name}",
                              f"its inputs: {', '.join(n for n, *_ in self.inputs)}")
        self.ds_in = self._dataset(acl, self.inputs, self._dev_in, self.resident)
        self.ds_out = self._dataset(acl, self.outputs, self._dev_out)
        for _, size, _, _ in self.outputs:
            self._host_out.append(_check(acl.rt.malloc_host(size), "acl.rt.malloc_host", acl))

    def _read_gears(self, acl) -> list[list[int]]:
        if self.input_shape and self.gears:
            return gear_dims(self.input_shape, self.gears, self.gear_flag)
        count = _check(acl.mdl.get_input_dynamic_gear_count(self.desc, -1), "acl.mdl.get_input_dynamic_gear_count",
                       acl)
        dims = _check(acl.mdl.get_input_dynamic_dims(self.desc, -1, count), "acl.mdl.get_input_dynamic_dims", acl)
        return [list(d["dims"])[: d.get("dimCount", len(d["dims"]))] for d in dims]

    def _dataset(self, acl, specs, dev: list, resident: Mapping[str, tuple[int, int]] | None = None) -> Any:
        ds = acl.mdl.create_dataset()
        for name, size, _, _ in specs:
            if resident and name in resident:
                ptr, have = resident[name]
                if have < size:
                    raise RunnerError(f"resident input '{name}' has {have} bytes on the card, the OM takes {size}",
                                      "allocate the device buffer with the OM's input size")
                self._borrowed.add(ptr)
            else:
                ptr = _check(acl.rt.malloc(size, ACL_MEM_MALLOC_HUGE_FIRST), "acl.rt.malloc", acl)
            dev.append((ptr, size))
            buf = acl.create_data_buffer(ptr, size)
            self._buffers.append(buf)
            _check(acl.mdl.add_dataset_buffer(ds, buf), "acl.mdl.add_dataset_buffer", acl)
        return ds

    # ------------------------------------------------------------------ metadata
    def get_input_metadata_impl(self) -> Metadata:
        meta = {}
        for name, _, dt, dims in self.inputs:
            if name == ACL_DYNAMIC_TENSOR_NAME or name in self.resident:
                continue
            if self.input_shape and name in self.input_shape:
                dims = [d if d != -1 else None for d in self.input_shape[name]]
            meta[name] = (acl_dtype_to_numpy(dt), tuple(d if d is None or d >= 0 else None for d in dims))
        return meta

    # ------------------------------------------------------------------ infer
    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        acl = self.acl
        self.runtime.use(self.device_id)  # this device's context, current on the calling thread
        keep_alive = []
        for i, (name, size, dt, _) in enumerate(self.inputs):
            if i == self._dyn_index or name in self.resident:
                continue
            data = to_device_bytes(feeds[name], dt, size, name)
            keep_alive.append(data)
            ptr, cap = self._dev_in[i]
            _check(acl.rt.memcpy(ptr, cap, acl.util.bytes_to_ptr(data), len(data), ACL_MEMCPY_HOST_TO_DEVICE),
                   "acl.rt.memcpy (host to device)", acl)
        self.last_gear = None
        if self._dyn_index is not None:
            shapes = {n: (np.shape(feeds[n]) if n not in self.resident else self._resident_shape(n))
                      for n, *_ in self.inputs if n != ACL_DYNAMIC_TENSOR_NAME}
            order = self.input_shape or {n: s for n, s in shapes.items()}
            self.last_gear = select_gear(shapes, order, self._gears_full or [])
            dims = self._gears_full[self.last_gear]
            _check(acl.mdl.set_input_dynamic_dims(self.model_id, self.ds_in, self._dyn_index,
                                                  {"dimCount": len(dims), "name": "", "dims": list(dims)}),
                   "acl.mdl.set_input_dynamic_dims", acl)
        _check(acl.mdl.execute(self.model_id, self.ds_in, self.ds_out), "acl.mdl.execute", acl)
        out = {}
        self.last_output_shapes: dict[str, tuple[int, ...]] = {}
        for i, (name, size, dt, dims) in enumerate(self.outputs):
            shape = self._output_shape(i, name, dims)
            self.last_output_shapes[name] = shape
            if self.fetch is not None and name not in self.fetch:
                continue  # stays on the card (output_buffer)
            nbytes = math.prod(shape) * acl_dtype_to_numpy(dt).itemsize
            if nbytes > size:
                raise RunnerError(f"output '{name}' of shape {list(shape)} exceeds its buffer of {size} bytes",
                                  "the output shapes given to AclRunner do not match the OM")
            ptr, _ = self._dev_out[i]
            host = self._host_out[i]
            _check(acl.rt.memcpy(host, size, ptr, nbytes, ACL_MEMCPY_DEVICE_TO_HOST), "acl.rt.memcpy (device to host)",
                   acl)
            out[name] = from_device_bytes(acl.util.ptr_to_bytes(host, nbytes), dt, shape)
        return out

    def _resident_shape(self, name: str) -> tuple[int, ...]:
        dims = next(d for n, _, _, d in self.inputs if n == name)
        if self.input_shape and name in self.input_shape:
            dims = list(self.input_shape[name])
        if any(d < 0 for d in dims):
            raise RunnerError(f"resident input '{name}' has dynamic dims {dims}", "a resident input must be static")
        return tuple(int(d) for d in dims)

    def output_buffer(self, name: str) -> tuple[Any, int]:
        """(device pointer, size in bytes) of output `name`'s buffer (valid while active)."""
        for (n, *_), dev in zip(self.outputs, self._dev_out):
            if n == name:
                return dev
        raise RunnerError(f"{self.om_path.name} has no output '{name}'", "see runner.outputs")

    def _output_shape(self, i: int, name: str, dims: list[int]) -> tuple[int, ...]:
        shapes = self.output_shapes
        if shapes:
            if self.last_gear is not None and self.last_gear in shapes:
                shapes = shapes[self.last_gear]
            if name in shapes:
                return tuple(int(d) for d in shapes[name])
        if self._dyn_index is not None and hasattr(self.acl.mdl, "get_cur_output_dims"):
            cur = _check(self.acl.mdl.get_cur_output_dims(self.desc, i), "acl.mdl.get_cur_output_dims", self.acl)
            return tuple(int(d) for d in cur["dims"][: cur.get("dimCount", len(cur["dims"]))])
        if any(d < 0 for d in dims):
            raise RunnerError(f"output '{name}' has dynamic dims {dims}",
                              "pass output_shapes (the export manifest has them)")
        return tuple(dims)

    # ------------------------------------------------------------------ teardown
    def deactivate_impl(self) -> None:
        acl = self.acl
        if acl is None:
            return
        errors = []
        runtime = self.runtime
        if runtime is not None and self.context is not None:
            try:
                runtime.use(self.device_id)
            except AclRuntimeError as exc:
                errors.append(str(exc.message))

        def call(fn, *args):
            try:
                _, ret = _ret(fn(*args))
                if ret != ACL_SUCCESS:
                    errors.append(f"{getattr(fn, '__name__', fn)} -> {ret}")
            except Exception as exc:  # noqa: BLE001 - keep tearing down, report at the end
                errors.append(f"{getattr(fn, '__name__', fn)}: {exc}")

        for buf in self._buffers:
            call(acl.destroy_data_buffer, buf)
        for ptr, _ in self._dev_in + self._dev_out:
            if ptr not in self._borrowed:
                call(acl.rt.free, ptr)
        for ptr in self._host_out:
            call(acl.rt.free_host, ptr)
        for ds in (self.ds_in, self.ds_out):
            if ds is not None:
                call(acl.mdl.destroy_dataset, ds)
        if self.model_id is not None:
            call(acl.mdl.unload, self.model_id)
        if self.desc is not None:
            call(acl.mdl.destroy_desc, self.desc)
        if runtime is not None:
            try:
                runtime.release(self.device_id)  # the last model on the device resets it; ACL stays up
            except AclRuntimeError as exc:
                errors.append(str(exc.message))
        self._reset_handles()
        if errors:
            raise AclTeardownError("pyACL teardown reported errors: " + "; ".join(errors),
                                   "the device may hold leaked memory; reset it with npu-smi if needed")


# ---------------------------------------------------------------------------- ais_bench runner
class AisBenchRunner(Runner):
    """Run an `.om` through ais_bench's `InferSession` (reference §5.2): an alternative to pyACL
    where msit's benchmark component is installed.

    Args:
        om_path: the `.om` file.
        device_id: the NPU index.
        mode: "static", "dymdims"/"dyndims", "dymbatch"/"dynbatch", "dymshape"/"dynshape".
        custom_sizes: output buffer bytes for dynamic-shape models.
        session_cls: InferSession class to use (tests inject a fake).
    """

    def __init__(self, om_path: str | os.PathLike, device_id: int = 0, *, mode: str = "static",
                 custom_sizes: int | Sequence[int] = 100000, session_cls: Any = None, name: str | None = None):
        super().__init__(name or f"ais_bench:{Path(om_path).name}")
        self.om_path, self.device_id, self.mode, self.custom_sizes = Path(om_path), int(device_id), mode, custom_sizes
        self._cls = session_cls
        self.session = None

    def activate_impl(self) -> None:
        cls = self._cls
        if cls is None:
            try:
                from ais_bench.infer.interface import InferSession as cls  # type: ignore
            except ImportError as exc:
                raise MissingDependencyError("ais_bench", "msit", "running .om files through ais_bench "
                                             "(needs the CANN runtime); or use AclRunner / the 'sim' backend") from exc
        self.session = cls(self.device_id, str(self.om_path))
        self._in = list(self.session.get_inputs())
        self._out = [o.name for o in self.session.get_outputs()]

    def get_input_metadata_impl(self) -> Metadata:
        meta = {}
        for d in self._in:
            dt = getattr(d, "datatype", None)
            code = int(getattr(dt, "value", dt)) if dt is not None else None
            meta[d.name] = (acl_dtype_to_numpy(code) if code in ACL_DTYPES else None,
                            tuple(x if x >= 0 else None for x in getattr(d, "shape", ())))
        return meta

    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = [np.ascontiguousarray(feeds[d.name]) for d in self._in]
        outs = self.session.infer(arrays, mode=self.mode, custom_sizes=self.custom_sizes)
        return dict(zip(self._out, (np.asarray(o) for o in outs)))

    def deactivate_impl(self) -> None:
        if self.session is not None:
            try:
                self.session.free_resource()
            finally:
                self.session = None
