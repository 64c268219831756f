"""One ACL runtime per process: `acl.init` once, one context per device, reference-counted
across every model loaded in the process, `acl.finalize` once at interpreter exit.

pyACL's `aclInit` may be called only once in a process (CANN `acl.h`: "The aclInit interface can
be called only once in a process"); a second call returns 100002 ACL_ERROR_REPEAT_INITIALIZE.
So models never call `acl.init` / `acl.finalize` themselves; they `acquire` a device from the
process's `AclRuntime` and `release` it when they close:

    rt = AclRuntime.of(acl)          # the one runtime of this `acl` module
    ctx = rt.acquire(device_id)      # 1st model: acl.init, set_device, create_context
    rt.use(device_id)                # before calls from another thread / after another device
    ...
    rt.release(device_id)            # last model on the device: destroy_context, reset_device

When the last model on a device closes, its context is destroyed and the device reset (its
memory goes back to the card). ACL itself is *not* finalized then: because aclInit cannot be
called again in the process, finalizing at the last close would make the next model loaded in
the same process (a server reloading a model, a script comparing two models, a test suite) fail.
`acl.finalize` runs once, at interpreter exit (`atexit`), or when `shutdown()` is called; after
it no model can be loaded in this process, and `acquire` says so.

If ACL was initialised by someone else in the process (torch_npu, MindSpore on the card),
`acl.init` returns 100002: the runtime takes that as "already initialised", and leaves the
finalize to its owner.

Which `acl` module: `acl_module()` — an explicit one (tests), else the strict fake of
`ascend_adapt.testing.fake_acl` when the environment has `ASCEND_ADAPT_ACL=fake` (rehearse a
deployment without a card), else `import acl` (CANN's pyACL).

Error codes: `ACL_ERRORS` names the codes this package meets and says what to do. Their values
are those of CANN's public headers (`acl/acl_base.h` for 1000xx / 2000xx / 5000xx,
`acl/error_codes/rt_error_codes.h` for 1070xx); the reference sheet
(`shared/reference/ascend_toolchain.md` §5.1) lists the call flow and the dtype / memcpy codes
but no error codes.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Any

from ascend_adapt.errors import AscendAdaptError, ConfigError, MissingDependencyError

ACL_SUCCESS = 0
ACL_ERROR_INVALID_PARAM = 100000
ACL_ERROR_UNINITIALIZE = 100001
ACL_ERROR_REPEAT_INITIALIZE = 100002
ACL_ERROR_INVALID_FILE = 100003
ACL_ERROR_PARSE_MODEL = 100013
ACL_ERROR_INVALID_MODEL_ID = 100011
ACL_ERROR_MODEL_INPUT_NOT_MATCH = 100017
ACL_ERROR_MODEL_OUTPUT_NOT_MATCH = 100018
ACL_ERROR_MODEL_NOT_DYNAMIC = 100019
ACL_ERROR_REPEAT_FINALIZE = 100037
ACL_ERROR_BAD_ALLOC = 200000
ACL_ERROR_RT_PARAM_INVALID = 107000
ACL_ERROR_RT_INVALID_DEVICEID = 107001
ACL_ERROR_RT_CONTEXT_NULL = 107002
ACL_ERROR_RT_MODEL_CONTEXT = 107004

# code: (name, what to do). Names and values: CANN acl_base.h / rt_error_codes.h.
ACL_ERRORS: dict[int, tuple[str, str]] = {
    ACL_ERROR_INVALID_PARAM: ("ACL_ERROR_INVALID_PARAM",
                              "an argument is wrong (a size larger than the buffer, a freed or unknown pointer, "
                              "a memcpy kind that does not match the pointers); this is a bug in the caller"),
    ACL_ERROR_UNINITIALIZE: ("ACL_ERROR_UNINITIALIZE",
                             "ACL is not initialised (or was finalized); load models through "
                             "ascend_adapt.backends.acl.runtime.AclRuntime, which calls acl.init once per process"),
    ACL_ERROR_REPEAT_INITIALIZE: ("ACL_ERROR_REPEAT_INITIALIZE",
                                  "acl.init may be called once per process; share the process's AclRuntime "
                                  "instead of calling acl.init per model"),
    ACL_ERROR_INVALID_FILE: ("ACL_ERROR_INVALID_FILE",
                             "the .om file is missing or unreadable; check the path and rebuild it with ATC"),
    ACL_ERROR_INVALID_MODEL_ID: ("ACL_ERROR_INVALID_MODEL_ID",
                                 "the model was unloaded (or never loaded); reopen the runner"),
    ACL_ERROR_PARSE_MODEL: ("ACL_ERROR_PARSE_MODEL",
                            "the file is not an OM this runtime can load; rebuild it with ATC for this "
                            "card's --soc_version and CANN release"),
    ACL_ERROR_MODEL_INPUT_NOT_MATCH: ("ACL_ERROR_MODEL_INPUT_NOT_MATCH",
                                      "the input dataset does not match the model (count or buffer sizes)"),
    ACL_ERROR_MODEL_OUTPUT_NOT_MATCH: ("ACL_ERROR_MODEL_OUTPUT_NOT_MATCH",
                                       "the output dataset does not match the model (count or buffer sizes)"),
    ACL_ERROR_MODEL_NOT_DYNAMIC: ("ACL_ERROR_MODEL_NOT_DYNAMIC",
                                  "a gear call on an OM built without --dynamic_dims; rebuild with gears or feed "
                                  "the static shape"),
    ACL_ERROR_REPEAT_FINALIZE: ("ACL_ERROR_REPEAT_FINALIZE",
                                "acl.finalize was already called in this process; it runs once, at exit"),
    ACL_ERROR_BAD_ALLOC: ("ACL_ERROR_BAD_ALLOC",
                          "the device is out of memory; close other models on the card, or convert with a "
                          "smaller --max-len / --batch, or a lower-precision weight dtype"),
    ACL_ERROR_RT_PARAM_INVALID: ("ACL_ERROR_RT_PARAM_INVALID", "a runtime argument is wrong; a bug in the caller"),
    ACL_ERROR_RT_INVALID_DEVICEID: ("ACL_ERROR_RT_INVALID_DEVICEID",
                                    "no NPU with that id; list them with `npu-smi info` and pass --device-id"),
    ACL_ERROR_RT_CONTEXT_NULL: ("ACL_ERROR_RT_CONTEXT_NULL",
                                "no current context on this thread; call AclRuntime.use(device_id) first"),
    ACL_ERROR_RT_MODEL_CONTEXT: ("ACL_ERROR_RT_MODEL_CONTEXT",
                                 "the model was loaded on another device than the current context's; "
                                 "call AclRuntime.use(the model's device_id) first"),
}

DEBUG_HINT = ("export ASCEND_SLOG_PRINT_TO_STDOUT=1 and ASCEND_GLOBAL_LOG_LEVEL=1 for the device log; "
              "look the code up in CANN's aclError list")


class AclRuntimeError(AscendAdaptError):
    """A pyACL call returned an error code.

    Attributes:
        api: the pyACL call ("acl.init", "acl.rt.memcpy (host to device)", ...).
        code: the aclError it returned.
        code_name: its name (ACL_ERROR_...), or "unknown".
    """

    def __init__(self, api: str, code: int, detail: str | None = None):
        name, todo = ACL_ERRORS.get(int(code), ("unknown", None))
        msg = f"pyACL {api} returned error {code} ({name})" + (f": {detail}" if detail else "")
        super().__init__(msg, todo + f"; {DEBUG_HINT}" if todo else DEBUG_HINT)
        self.api, self.code, self.code_name = api, int(code), name


def split_ret(value: Any) -> tuple[Any, int]:
    """pyACL returns `ret` alone or `(value, ret)` / `(v1, v2, ret)`; normalize to (value, ret)."""
    if isinstance(value, tuple):
        return (value[0] if len(value) == 2 else value[:-1]), int(value[-1])
    return None, int(value)


def check(value: Any, api: str, acl: Any = None) -> Any:
    """The value of a pyACL call, or AclRuntimeError carrying its code and name (and, when `acl`
    is given and has it, `acl.get_recent_err_msg()`: CANN's aclGetRecentErrMsg)."""
    v, ret = split_ret(value)
    if ret != ACL_SUCCESS:
        raise AclRuntimeError(api, ret, recent_error(acl))
    return v


def recent_error(acl: Any) -> str | None:
    """`acl.get_recent_err_msg()` when the module has it, else None."""
    fn = getattr(acl, "get_recent_err_msg", None)
    if fn is None:
        return None
    try:
        msg = fn()
    except Exception:  # noqa: BLE001 - a diagnostic only
        return None
    return str(msg).strip() or None


ENV = "ASCEND_ADAPT_ACL"


def acl_module(acl: Any = None) -> Any:
    """The `acl` module to use: `acl` when given, else the strict fake when `ASCEND_ADAPT_ACL=fake`,
    else CANN's pyACL (`import acl`).

    Raises:
        ConfigError: ASCEND_ADAPT_ACL has another value.
        MissingDependencyError: pyACL is not installed (and the fake was not asked for).
    """
    if acl is not None:
        return acl
    mode = os.environ.get(ENV, "").strip().lower()
    if mode == "fake":
        from ascend_adapt.testing.fake_acl import acl as fake

        return fake
    if mode not in ("", "real", "pyacl"):
        raise ConfigError(f"{ENV}={os.environ.get(ENV)!r} is not a known value",
                          f"set {ENV}=fake to rehearse on the strict fake pyACL, or unset it to use CANN's pyACL")
    try:
        import acl as real  # type: ignore  # noqa: F401 - only on CANN hosts

        return real
    except ImportError as exc:
        raise MissingDependencyError("pyACL (CANN toolkit)", None,
                                     "running .om files on an Ascend card; install CANN and source set_env.sh, "
                                     f"use the 'sim' backend without a card, or set {ENV}=fake to rehearse "
                                     "on the strict fake pyACL") from exc


class AclRuntime:
    """The process's ACL state for one `acl` module (see the module docstring).

    Attributes:
        acl: the module.
        owns_init: this runtime's `acl.init` succeeded (so it finalizes at exit).
        finalized: `shutdown()` ran; no model can be loaded any more in this process.
        refs: {device_id: number of models holding it}.
    """

    _instances: dict[int, "AclRuntime"] = {}
    _instances_lock = threading.Lock()

    def __init__(self, acl: Any):
        self.acl = acl
        self.initialized = False
        self.owns_init = False
        self.finalized = False
        self.refs: dict[int, int] = {}
        self.contexts: dict[int, Any] = {}
        self._lock = threading.RLock()
        # .current: (device, generation) of the context this thread last made current; a generation
        # counter, not the handle, because a destroyed context's handle value may be reused
        self._local = threading.local()
        self._generation = 0
        self._gen_of: dict[int, int] = {}
        self._atexit = False

    @classmethod
    def of(cls, acl: Any) -> "AclRuntime":
        """The one runtime of module `acl` in this process (created on first use)."""
        with cls._instances_lock:
            rt = cls._instances.get(id(acl))
            if rt is None or rt.acl is not acl:
                rt = cls._instances[id(acl)] = cls(acl)
            return rt

    # ------------------------------------------------------------------ devices
    def acquire(self, device_id: int) -> Any:
        """Hold `device_id` for one model: initialise ACL (first model in the process), set the
        device and create its context (first model on the device); make that context current on
        the calling thread. Returns the context.

        Raises:
            AclRuntimeError: a pyACL call failed, or ACL was finalized in this process.
        """
        device_id = int(device_id)
        with self._lock:
            if self.finalized:
                raise AclRuntimeError("acl.init", ACL_ERROR_REPEAT_INITIALIZE,
                                      "ACL was finalized in this process and cannot be initialised again "
                                      "(aclInit runs once per process); load models before AclRuntime.shutdown(), "
                                      "or in a new process")
            if not self.initialized:
                _, ret = split_ret(self.acl.init())
                if ret == ACL_ERROR_REPEAT_INITIALIZE:
                    self.owns_init = False  # another library initialised ACL in this process: it finalizes
                elif ret != ACL_SUCCESS:
                    raise AclRuntimeError("acl.init", ret, recent_error(self.acl))
                else:
                    self.owns_init = True
                self.initialized = True
                if not self._atexit:
                    atexit.register(self._at_exit)
                    self._atexit = True
            if self.refs.get(device_id, 0) == 0:
                check(self.acl.rt.set_device(device_id), "acl.rt.set_device", self.acl)
                try:
                    ctx = check(self.acl.rt.create_context(device_id), "acl.rt.create_context", self.acl)
                except BaseException:
                    self.acl.rt.reset_device(device_id)
                    raise
                self.contexts[device_id] = ctx
                self._generation += 1
                self._gen_of[device_id] = self._generation
                self._local.current = (device_id, self._generation)  # create_context makes it current here
                self.refs[device_id] = 0
            self.refs[device_id] += 1
            self.use(device_id)
            return self.contexts[device_id]

    def use(self, device_id: int) -> None:
        """Make `device_id`'s context current on the calling thread (a no-op when it is)."""
        ctx = self.contexts.get(int(device_id))
        if ctx is None:
            raise AclRuntimeError("acl.rt.set_context", ACL_ERROR_RT_CONTEXT_NULL,
                                  f"device {device_id} is not held by any model in this process")
        key = (int(device_id), self._gen_of.get(int(device_id)))
        if getattr(self._local, "current", None) != key:
            check(self.acl.rt.set_context(ctx), "acl.rt.set_context", self.acl)
            self._local.current = key

    def release(self, device_id: int) -> None:
        """Drop one model's hold on `device_id`; the last one destroys the context and resets the
        device. ACL stays initialised (see the module docstring)."""
        device_id = int(device_id)
        with self._lock:
            n = self.refs.get(device_id, 0)
            if n <= 0:
                return
            self.refs[device_id] = n - 1
            if n == 1:
                self._close_device(device_id)

    def _close_device(self, device_id: int) -> None:
        ctx = self.contexts.pop(device_id, None)
        self.refs.pop(device_id, None)
        errors = []
        if ctx is not None:
            _, ret = split_ret(self.acl.rt.destroy_context(ctx))
            if ret:
                errors.append(("acl.rt.destroy_context", ret))
            if getattr(self._local, "current", None) == (device_id, self._gen_of.get(device_id)):
                self._local.current = None
            self._gen_of.pop(device_id, None)
        _, ret = split_ret(self.acl.rt.reset_device(device_id))
        if ret:
            errors.append(("acl.rt.reset_device", ret))
        if errors:
            api, code = errors[0]
            raise AclRuntimeError(api, code, f"while releasing device {device_id}")

    # ------------------------------------------------------------------ process end
    def shutdown(self) -> None:
        """Release every device still held and finalize ACL (once; later calls do nothing).
        After this no model can be loaded in the process."""
        with self._lock:
            if self.finalized or not self.initialized:
                self.finalized = self.finalized or self.initialized
                return
            for dev in list(self.contexts):
                try:
                    self._close_device(dev)
                except AclRuntimeError:
                    pass  # finalize releases what is left
            self.finalized = True
            if self.owns_init:
                check(self.acl.finalize(), "acl.finalize", self.acl)

    def _at_exit(self) -> None:
        try:
            self.shutdown()
        except Exception:  # noqa: BLE001 - nothing to report to at interpreter exit
            pass

    @property
    def models(self) -> int:
        """Number of model holds across all devices."""
        return sum(self.refs.values())
