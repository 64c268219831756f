"""Real `.om` files on an Ascend card: `AclRunner` (pyACL), `AisBenchRunner` (ais_bench) and the
"acl" LM backend.

pyACL flow (reference sheet §5.1): `acl.init` → `acl.rt.set_device` → `acl.rt.create_context`
→ `acl.mdl.load_from_file` → `acl.mdl.create_desc` / `get_desc` → one device buffer per input and
output in two datasets → per inference: `memcpy` host→device, `set_input_dynamic_dims` when the
model has gears, `execute`, `memcpy` device→host → teardown in reverse.

The host-side marshalling (numpy ↔ bytes by aclDataType code, gear selection, output
reshaping) is plain Python and is unit-tested without a card by passing a fake `acl` module
object (`AclRunner(..., acl=fake)`). Without CANN, `activate()` raises MissingDependencyError
naming pyACL / CANN; importing this module never imports `acl`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ascend_adapt.errors import AscendAdaptError, ConfigError, MissingDependencyError

from .backends import BACKENDS
from .runners import Metadata, Runner, RunnerError

# aclDataType = ge::DataType (reference §5.1, hicann/ge api/python/ge/ge/graph/types.py)
ACL_DTYPES: dict[int, str] = {0: "float32", 1: "float16", 2: "int8", 3: "int32", 4: "uint8", 6: "int16",
                              7: "uint16", 8: "uint32", 9: "int64", 10: "uint64", 11: "float64", 12: "bool",
                              27: "bfloat16"}
ACL_MEM_MALLOC_HUGE_FIRST = 0
ACL_MEMCPY_HOST_TO_DEVICE = 1
ACL_MEMCPY_DEVICE_TO_HOST = 2
ACL_SUCCESS = 0
# the extra input ATC adds to gear models (aclmdlSetInputDynamicDims writes it)
ACL_DYNAMIC_TENSOR_NAME = "ascend_mbatch_shape_data"


class AclRuntimeError(AscendAdaptError):
    """A pyACL call returned an error code."""


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


def _ret(value: Any) -> tuple[Any, int]:
    """pyACL returns `ret` alone or `(value, ret)`; normalize to (value, ret)."""
    if isinstance(value, tuple):
        return (value[0] if len(value) == 2 else value[:-1]), int(value[-1])
    return None, int(value)


def _check(value: Any, api: str) -> Any:
    v, ret = _ret(value)
    if ret != ACL_SUCCESS:
        raise AclRuntimeError(f"pyACL {api} returned error {ret}",
                              "look the code up in CANN's aclError list; export ASCEND_SLOG_PRINT_TO_STDOUT=1 "
                              "and ASCEND_GLOBAL_LOG_LEVEL=1 for the device log")
    return v


def _import_acl():
    try:
        import acl  # type: ignore  # noqa: F401 - only on CANN hosts

        return acl
    except ImportError as exc:
        raise MissingDependencyError("pyACL (CANN toolkit)", None,
                                     "running .om files on an Ascend card; install CANN and "
                                     "source set_env.sh, or use the 'sim' backend without a card") from exc


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
        acl: the `acl` module to use (tests inject a fake; default `import acl`).

    Attributes:
        inputs / outputs: [(name, size_bytes, acl_dtype, dims)] read from the model description.
        last_gear: index of the gear used by the latest inference (None for static models).
    """

    def __init__(self, om_path: str | os.PathLike, device_id: int = 0, *,
                 input_shape: Mapping[str, Sequence[int]] | None = None, gears: Sequence[Sequence[int]] | None = None,
                 gear_flag: str = "dynamic_dims", output_shapes: Mapping | None = None, acl: Any = None,
                 name: str | None = None):
        super().__init__(name or f"acl:{Path(om_path).name}")
        self.om_path = Path(om_path)
        self.device_id = int(device_id)
        self.input_shape = dict(input_shape) if input_shape else None
        self.gears = [tuple(g) for g in gears] if gears else None
        self.gear_flag = gear_flag
        self.output_shapes = output_shapes
        self._acl = acl
        self.last_gear: int | None = None
        self._reset_handles()

    def _reset_handles(self) -> None:
        self.acl = None
        self.context = None
        self.model_id = None
        self.desc = None
        self.ds_in = self.ds_out = None
        self._dev_in: list[tuple[Any, int]] = []
        self._dev_out: list[tuple[Any, int]] = []
        self._host_out: list[Any] = []
        self._buffers: list[Any] = []
        self.inputs: list[tuple[str, int, int, list[int]]] = []
        self.outputs: list[tuple[str, int, int, list[int]]] = []
        self._dyn_index: int | None = None
        self._gears_full: list[list[int]] | None = None
        self._stage = 0

    # ------------------------------------------------------------------ activate
    def activate_impl(self) -> None:
        acl = self._acl if self._acl is not None else _import_acl()
        if not self.om_path.is_file():
            raise ConfigError(f"OM file '{self.om_path}' not found", "build it with ATC (atc.sh of the artifact)")
        from ascend_adapt.om_convert.artifact import read_om_header

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
        _check(acl.init(), "acl.init")
        self._stage = 1
        _check(acl.rt.set_device(self.device_id), "acl.rt.set_device")
        self._stage = 2
        self.context = _check(acl.rt.create_context(self.device_id), "acl.rt.create_context")
        self.model_id = _check(acl.mdl.load_from_file(str(self.om_path)), "acl.mdl.load_from_file")
        self.desc = acl.mdl.create_desc()
        _check(acl.mdl.get_desc(self.desc, self.model_id), "acl.mdl.get_desc")
        n_in, n_out = acl.mdl.get_num_inputs(self.desc), acl.mdl.get_num_outputs(self.desc)
        for i in range(n_in):
            dims = _check(acl.mdl.get_input_dims(self.desc, i), "acl.mdl.get_input_dims")
            name = acl.mdl.get_input_name_by_index(self.desc, i) or dims.get("name", f"input_{i}")
            self.inputs.append((name, int(acl.mdl.get_input_size_by_index(self.desc, i)),
                                int(acl.mdl.get_input_data_type(self.desc, i)), list(dims.get("dims", []))))
        for i in range(n_out):
            dims = _check(acl.mdl.get_output_dims(self.desc, i), "acl.mdl.get_output_dims")
            name = acl.mdl.get_output_name_by_index(self.desc, i) or dims.get("name", f"output_{i}")
            self.outputs.append((name, int(acl.mdl.get_output_size_by_index(self.desc, i)),
                                 int(acl.mdl.get_output_data_type(self.desc, i)), list(dims.get("dims", []))))
        names = [n for n, *_ in self.inputs]
        if ACL_DYNAMIC_TENSOR_NAME in names:
            self._dyn_index = names.index(ACL_DYNAMIC_TENSOR_NAME)
            self._gears_full = self._read_gears(acl)
        self.ds_in = self._dataset(acl, self.inputs, self._dev_in)
        self.ds_out = self._dataset(acl, self.outputs, self._dev_out)
        for _, size, _, _ in self.outputs:
            self._host_out.append(_check(acl.rt.malloc_host(size), "acl.rt.malloc_host"))

    def _read_gears(self, acl) -> list[list[int]]:
        if self.input_shape and self.gears:
            return gear_dims(self.input_shape, self.gears, self.gear_flag)
        count = _check(acl.mdl.get_input_dynamic_gear_count(self.desc, -1), "acl.mdl.get_input_dynamic_gear_count")
        dims = _check(acl.mdl.get_input_dynamic_dims(self.desc, -1, count), "acl.mdl.get_input_dynamic_dims")
        return [list(d["dims"])[: d.get("dimCount", len(d["dims"]))] for d in dims]

    def _dataset(self, acl, specs, dev: list) -> Any:
        ds = acl.mdl.create_dataset()
        for _, size, _, _ in specs:
            ptr = _check(acl.rt.malloc(size, ACL_MEM_MALLOC_HUGE_FIRST), "acl.rt.malloc")
            dev.append((ptr, size))
            buf = acl.create_data_buffer(ptr, size)
            self._buffers.append(buf)
            _check(acl.mdl.add_dataset_buffer(ds, buf), "acl.mdl.add_dataset_buffer")
        return ds

    # ------------------------------------------------------------------ metadata
    def get_input_metadata_impl(self) -> Metadata:
        meta = {}
        for name, _, dt, dims in self.inputs:
            if name == ACL_DYNAMIC_TENSOR_NAME:
                continue
            if self.input_shape and name in self.input_shape:
                dims = [d if d != -1 else None for d in self.input_shape[name]]
            meta[name] = (acl_dtype_to_numpy(dt), tuple(d if d is None or d >= 0 else None for d in dims))
        return meta

    # ------------------------------------------------------------------ infer
    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        acl = self.acl
        keep_alive = []
        for i, (name, size, dt, _) in enumerate(self.inputs):
            if i == self._dyn_index:
                continue
            data = to_device_bytes(feeds[name], dt, size, name)
            keep_alive.append(data)
            ptr, cap = self._dev_in[i]
            _check(acl.rt.memcpy(ptr, cap, acl.util.bytes_to_ptr(data), len(data), ACL_MEMCPY_HOST_TO_DEVICE),
                   "acl.rt.memcpy (host to device)")
        self.last_gear = None
        if self._dyn_index is not None:
            shapes = {n: np.shape(feeds[n]) for n, *_ in self.inputs if n != ACL_DYNAMIC_TENSOR_NAME}
            order = self.input_shape or {n: s for n, s in shapes.items()}
            self.last_gear = select_gear(shapes, order, self._gears_full or [])
            dims = self._gears_full[self.last_gear]
            _check(acl.mdl.set_input_dynamic_dims(self.model_id, self.ds_in, self._dyn_index,
                                                  {"dimCount": len(dims), "name": "", "dims": list(dims)}),
                   "acl.mdl.set_input_dynamic_dims")
        _check(acl.mdl.execute(self.model_id, self.ds_in, self.ds_out), "acl.mdl.execute")
        out = {}
        for i, (name, size, dt, dims) in enumerate(self.outputs):
            shape = self._output_shape(i, name, dims)
            nbytes = math.prod(shape) * acl_dtype_to_numpy(dt).itemsize
            if nbytes > size:
                raise RunnerError(f"output '{name}' of shape {list(shape)} exceeds its buffer of {size} bytes",
                                  "the output shapes given to AclRunner do not match the OM")
            ptr, _ = self._dev_out[i]
            host = self._host_out[i]
            _check(acl.rt.memcpy(host, size, ptr, nbytes, ACL_MEMCPY_DEVICE_TO_HOST), "acl.rt.memcpy (device to host)")
            out[name] = from_device_bytes(acl.util.ptr_to_bytes(host, nbytes), dt, shape)
        return out

    def _output_shape(self, i: int, name: str, dims: list[int]) -> tuple[int, ...]:
        shapes = self.output_shapes
        if shapes:
            if self.last_gear is not None and self.last_gear in shapes:
                shapes = shapes[self.last_gear]
            if name in shapes:
                return tuple(int(d) for d in shapes[name])
        if self._dyn_index is not None and hasattr(self.acl.mdl, "get_cur_output_dims"):
            cur = _check(self.acl.mdl.get_cur_output_dims(self.desc, i), "acl.mdl.get_cur_output_dims")
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
        if self.context is not None:
            call(acl.rt.destroy_context, self.context)
        if self._stage >= 2:
            call(acl.rt.reset_device, self.device_id)
        if self._stage >= 1:
            call(acl.finalize)
        self._reset_handles()
        if errors:
            raise AclRuntimeError("pyACL teardown reported errors: " + "; ".join(errors),
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


# ---------------------------------------------------------------------------- the "acl" backend
class AclLMBackend:
    """The "acl" backend: prefill / decode OMs of an export run on the card.

    The directory holds export.json (the builder's manifest: spec, B, S, M, output shapes) and
    the OMs ATC wrote: `prefill.om` / `decode.om`, or `om/prefill.om` (an .omsim's atc.sh), or
    `<name>_<platform>.om`.

    Args:
        path: the directory.
        device_id: NPU index.
        engine: "acl" (pyACL) or "ais_bench".
        acl: a fake `acl` module (tests).
    """

    name = "acl"

    def __init__(self, path, device_id: int = 0, engine: str = "acl", acl: Any = None, session_cls: Any = None):
        from ascend_adapt.model_zoo.spec import ModelSpec
        from ascend_adapt.om_convert.builder.llm import load_manifest

        self.path = Path(path)
        # an export directory, or a convert output (OUT/export/export.json beside OUT/<graph>.om)
        self.manifest = load_manifest(self.path if (self.path / "export.json").is_file() else self.path / "export")
        self.spec = ModelSpec.from_dict(self.manifest["spec"])
        self.batch, self.seq_len, self.max_len = (int(self.manifest[k]) for k in ("batch", "seq_len", "max_len"))
        # a gear build has one step OM for prefill and decode (ATC --dynamic_dims over the step length)
        self.gears = self.manifest.get("gears") or None
        self.roles = {"prefill": "step", "decode": "step"} if self.gears else {"prefill": "prefill", "decode": "decode"}
        if engine not in ("acl", "ais_bench"):
            raise ConfigError(f"unknown engine '{engine}'", "use 'acl' or 'ais_bench'")
        self.device_id, self.engine, self._acl, self._session_cls = device_id, engine, acl, session_cls
        self.runners: dict[str, Runner] = {}

    def om_file(self, kind: str) -> Path:
        from ascend_adapt.om_convert.atc.driver import find_om

        for prefix in (self.path / kind, self.path / "om" / kind):
            found = find_om(prefix)
            if found:
                return Path(found)
        raise ConfigError(f"{self.path}: no {kind}.om (looked for {kind}.om, om/{kind}.om, {kind}_*.om)",
                          "build the OMs with ATC first (sh atc.sh in the .omsim, or ascend-adapt convert)")

    def runner(self, role: str) -> Runner:
        """The runner of the OM serving `role` ("prefill" / "decode"; both are "step" in a gear build)."""
        kind = self.roles.get(role, role)
        if kind not in self.runners:
            om = self.om_file(kind)
            if self.engine == "ais_bench":
                r: Runner = AisBenchRunner(om, self.device_id, session_cls=self._session_cls)
            elif kind == "step":
                from ascend_adapt.om_convert.builder.contract import graph_input_shapes, step_shape

                shapes, dims = graph_input_shapes(self.manifest, kind)
                outs = {i: {o["name"]: step_shape(o["shape"], g) for o in self.manifest["graphs"][kind]["outputs"]}
                        for i, g in enumerate(self.gears)}
                r = AclRunner(om, self.device_id, input_shape=shapes, gears=dims, output_shapes=outs, acl=self._acl)
            else:
                outs = {o["name"]: o["shape"] for o in self.manifest["graphs"][kind].get("outputs", [])}
                r = AclRunner(om, self.device_id, output_shapes=outs or None, acl=self._acl)
            self.runners[kind] = r.activate()
        return self.runners[kind]

    def executor(self, kind: str):
        r = self.runner(kind)
        meta = r.get_input_metadata()

        def run(feeds):
            cast = {k: np.asarray(v).astype(meta[k][0]) if k in meta and meta[k][0] is not None else v
                    for k, v in feeds.items()}
            return r.infer(cast)

        return run

    def new_session(self, batch: int, max_len: int):
        from .graph_session import open_session

        return open_session(self, batch, max_len, self.executor("prefill"), self.executor("decode"),
                            self.gears or self.seq_len)

    def close(self) -> None:
        for r in self.runners.values():
            r.deactivate()
        self.runners.clear()


def acl_backend(path, **options) -> AclLMBackend:
    """Factory registered as "acl" (path = an export directory with the OMs ATC built)."""
    known = {k: options[k] for k in ("device_id", "engine", "acl", "session_cls") if k in options}
    return AclLMBackend(path, **known)


BACKENDS.register("acl", acl_backend)
