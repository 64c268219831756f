"""Filesystem helpers: outputs appear complete or not at all, and never at the cost of an input.

Every command writes its outputs through `atomic_output`, which in one place:

1. refuses an output path that is, contains or is the same file as an input of the command, or
   that is the current directory or one of its parents (`UnsafeOutputError`, with or without
   `--force`: replacing such a path would delete what the command reads);
2. takes an exclusive lock (`fcntl.flock` on `.NAME.lock` beside the output) until the final
   rename, so a second run to the same output fails at once naming the first one's pid
   (`OutputLockedError`); the lock file is removed afterwards;
3. writes into a temporary sibling `.NAME.tmp-PID@HOST-XXXXXXXX` and renames it when complete;
   without `force` the rename never replaces an output that appeared meanwhile
   (`OutputAppearedError`);
4. removes the temporary on any exception, including SIGINT / SIGTERM / SIGHUP (handlers
   installed for the duration raise `InterruptedBySignal` in the main thread); after a SIGKILL,
   where no code runs, the next run for the same output removes temporaries whose owner process is
   gone (and says so on stderr, with the bytes reclaimed), never one whose owner is alive.
   The program itself (`ascend-adapt`, after `exit_on_signal()`) does not raise: the handler runs
   the registered cleanups (`on_interrupt`: the temporaries, the lock files, scratch directories,
   child processes), prints one line and leaves with `os._exit(128 + signum)`. An exception raised
   from a signal handler unwinds through whatever was running, and when that was a C extension
   calling back into Python (onnx's or protobuf's module init during `import onnx`) the interpreter
   aborts or segfaults instead of exiting 143;
5. turns a full disk / exceeded quota (ENOSPC / EDQUOT) into `OutputSpaceError` naming the output,
   the bytes free and what to do, and permission / read-only errors on the output into
   `OutputWriteError`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .errors import (
    InterruptedBySignal,
    OutputAppearedError,
    OutputError,
    OutputExistsError,
    OutputLockedError,
    OutputSpaceError,
    OutputWriteError,
    UnsafeOutputError,
    _human_bytes,
)

try:  # POSIX; elsewhere the lock is skipped (the rename still refuses to replace without force)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

#: signals that remove the temporary output before the process exits
INTERRUPT_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))
#: errno values meaning "the filesystem is full" (device or quota)
FULL_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e is not None)
#: errno values meaning "this path cannot be written here"
DENIED_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


# ----------------------------------------------------------------------------------- the guard
def _resolved(p: str | os.PathLike) -> Path:
    return Path(os.path.abspath(p)).resolve()


def _samefile(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _covers(out: Path, out_resolved: Path, other: Path) -> str | None:
    """How `out` covers `other` ("is" / "contains"), or None: compared on resolved paths and by
    inode (`samefile`: hard links, bind mounts, case-insensitive filesystems)."""
    out_exists = os.path.lexists(out)
    for i, anc in enumerate([other, *other.parents]):
        if out_resolved == anc or (out_exists and _samefile(out, anc)):
            return "is" if i == 0 else "contains"
    return None


def refuse_unsafe_output(path: str | os.PathLike, inputs: Iterable = ()) -> None:
    """Raise `UnsafeOutputError` when writing (or replacing) `path` could destroy an input.

    Refused: `path` is an input, a directory containing an input, or the same file as one (symlinks
    resolved, then compared by inode); `path` is the current working directory or one of its
    parents. An output *inside* an input directory is allowed.

    Args:
        path: the final output path.
        inputs: the paths the command reads (None entries are skipped).
    """
    out = Path(path)
    out_res = _resolved(out)
    # the message shows where '.', '..' or a symlink points
    shown = out_res if out.name in ("", ".", "..") or out.is_symlink() else None
    for inp in inputs or ():
        if inp is None or (isinstance(inp, str) and not inp):
            continue
        how = _covers(out, out_res, _resolved(inp))
        if how == "is":
            raise UnsafeOutputError(out, f"is the input '{inp}'", shown)
        if how == "contains":
            raise UnsafeOutputError(out, f"contains the input '{inp}'; replacing it would delete the input", shown)
    try:
        cwd = Path(os.getcwd())
    except OSError:  # the working directory was deleted
        return
    how = _covers(out, out_res, cwd.resolve())
    if how == "is":
        raise UnsafeOutputError(out, "is the current directory", shown)
    if how == "contains":
        raise UnsafeOutputError(out, f"contains the current directory '{cwd}'", shown)


def check_output(path: str | os.PathLike, force: bool, *, inputs: Iterable = ()) -> Path:
    """Return `path` as a Path after the checks every output gets before any work starts.

    Raises:
        UnsafeOutputError: `path` is / contains an input or the current directory (even with `force`).
        OutputExistsError: `path` exists and not `force`.
    """
    p = Path(path)
    refuse_unsafe_output(p, inputs)
    if os.path.lexists(p) and not force:
        raise OutputExistsError(p)
    return p


# ----------------------------------------------------------------------------- temporaries
def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname() or "localhost")[:64]


def _sibling(final: Path, kind: str) -> Path:
    """`.NAME.<kind>-PID@HOST-XXXXXXXX` beside `final` (kind "tmp" or "old")."""
    return final.with_name(f".{final.name}.{kind}-{os.getpid()}@{_host()}-{uuid.uuid4().hex[:8]}")


_OWNED = re.compile(r"^(?P<pid>\d+)@(?P<host>[A-Za-z0-9._-]+?)-[0-9a-f]{8}(?:\..*)?$")
_LEGACY = re.compile(r"^[0-9a-f]{8}$")


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def _tree_bytes(p: Path) -> int:
    """Bytes held by the files under `p` (a file: its size; hard links counted once); 0 when gone."""
    try:
        if not p.is_dir() or p.is_symlink():
            return p.lstat().st_size
    except OSError:
        return 0
    seen: dict[tuple[int, int], int] = {}
    for root, _dirs, files in os.walk(p):
        for f in files:
            try:
                st = os.lstat(os.path.join(root, f))
            except OSError:
                continue
            seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values())


def _free_bytes(p: Path) -> int | None:
    """Bytes free to this user on the filesystem holding `p` (its nearest existing ancestor)."""
    for anc in [p, *p.parents]:
        try:
            if anc.exists():
                return shutil.disk_usage(anc).free
        except OSError:
            return None
    return None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def _note(text: str) -> None:
    print(f"ascend-adapt: {text}", file=sys.stderr, flush=True)


def reclaim_stale(path: str | os.PathLike) -> int:
    """Remove `.NAME.tmp-*` / `.NAME.old-*` siblings of `path` left by a killed run.

    A sibling is removed only when its name records an owner on this host whose process is gone;
    one whose owner is alive, or on another host, is left alone. Siblings from versions that
    recorded no owner are only reported. Each removal is reported on stderr with its size.

    Returns:
        The bytes reclaimed.
    """
    final = Path(path)
    try:
        entries = list(os.scandir(final.parent))
    except OSError:
        return 0
    host = _host()
    reclaimed = 0
    for kind in ("tmp", "old"):
        prefix = f".{final.name}.{kind}-"
        for e in entries:
            if not e.name.startswith(prefix):
                continue
            rest = e.name[len(prefix):]
            p = final.parent / e.name
            m = _OWNED.match(rest)
            if m is None:
                if _LEGACY.match(rest):
                    _note(f"'{p}' ({_human_bytes(_tree_bytes(p))}) is a temporary output of an older run that "
                          f"recorded no owner; delete it if no ascend-adapt run is writing '{final}'")
                continue
            pid = int(m["pid"])
            if m["host"] != host or _pid_alive(pid):
                continue
            size = _tree_bytes(p)
            try:
                _remove(p)
            except OSError as exc:
                _note(f"could not remove stale temporary output '{p}': {exc}")
                continue
            reclaimed += size
            _note(f"removed stale temporary output '{p}' (its owner, process {pid}, is gone): "
                  f"{_human_bytes(size)} reclaimed")
    return reclaimed


# ----------------------------------------------------------------------------------- signals
_EXIT_ON_SIGNAL = False
#: cleanups a signal runs before the program exits, innermost (last registered) first
_CLEANUPS: list[Callable[[], Any]] = []


def exit_on_signal(enabled: bool = True) -> None:
    """Make a signal inside `atomic_output` end the process instead of raising `InterruptedBySignal`.

    Called by the program's entry point (`cli.main.run`), never by the library: a porting script
    that writes through `atomic_output` still gets the exception. In this mode the handler runs
    the `on_interrupt` cleanups, prints "interrupted by SIGTERM: stopped; ..." and calls
    `os._exit(128 + signum)`: no code of the interrupted command resumes, so a signal that lands
    inside a C extension's import or call cannot crash the unwinding or the interpreter's teardown.
    """
    global _EXIT_ON_SIGNAL
    _EXIT_ON_SIGNAL = enabled


def register_cleanup(cleanup: Callable[[], Any]) -> Callable[[], Any]:
    """Run `cleanup()` if a signal ends the program before `unregister_cleanup(cleanup)`; a truthy
    result means it removed a partial output. Returns `cleanup`."""
    _CLEANUPS.append(cleanup)
    return cleanup


def unregister_cleanup(cleanup: Callable[[], Any]) -> None:
    # list.remove is one step under the GIL (other threads register too: ATC builds) and compares
    # with ==: a bound method (proc.kill) is a new object at each access, equal to the registered one
    with contextlib.suppress(ValueError):
        _CLEANUPS.remove(cleanup)


@contextlib.contextmanager
def on_interrupt(cleanup: Callable[[], Any]) -> Iterator[None]:
    """`register_cleanup(cleanup)` for the duration of the block (where normal unwinding would
    otherwise have cleaned up: a scratch directory, a child process)."""
    register_cleanup(cleanup)
    try:
        yield
    finally:
        unregister_cleanup(cleanup)


@contextlib.contextmanager
def scratch_dir(prefix: str, dir: str | os.PathLike | None = None) -> Iterator[Path]:
    """A temporary directory removed at the end of the block, on an exception, and when a signal
    ends the program."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix=prefix, dir=dir) as d:
        with on_interrupt(lambda: shutil.rmtree(d, ignore_errors=True)):
            yield Path(d)


def run_child(cmd, *, timeout: float | None = None, **popen_kwargs):
    """`subprocess.run(cmd, capture_output=True, ...)` whose child is killed if a signal ends the
    program (`subprocess.run` kills it only when the exception unwinds through it)."""
    import subprocess

    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen_kwargs) as proc:
        with on_interrupt(proc.kill):
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _exit_now(signum: int) -> None:
    """Run the registered cleanups (innermost first), say so on stderr, `os._exit(128 + signum)`."""
    exc = InterruptedBySignal(signum)
    removed = False
    for cleanup in reversed(list(_CLEANUPS)):
        try:
            removed = bool(cleanup()) or removed
        except BaseException:  # noqa: BLE001 - the others still run, the process still exits
            pass
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    try:
        sys.stderr.write(exc.report(removed) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(exc.exit_code)


class _SignalGuard:
    """Turn SIGINT / SIGTERM / SIGHUP into `InterruptedBySignal` in the main thread while active.

    Signals the process ignores (SIG_IGN, e.g. SIGHUP under nohup) stay ignored. Inside
    `deferred()` a signal is only recorded and raised when the block ends, so the final rename and
    the cleanup run to completion. After the first raise, later signals are recorded, not raised,
    so they cannot interrupt the cleanup. Outside the main thread the guard does nothing.
    """

    def __init__(self):
        self.previous: dict[int, object] = {}
        self.pending: int | None = None
        self.raised = False
        self.defer_depth = 0

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in INTERRUPT_SIGNALS:
            prev = signal.getsignal(sig)
            if prev is signal.SIG_IGN or prev is None:  # ignored, or a handler not set from Python
                continue
            try:
                signal.signal(sig, self._handle)
            except (ValueError, OSError):
                continue
            self.previous[sig] = prev
        return self

    def __exit__(self, *exc):
        for sig, prev in self.previous.items():
            signal.signal(sig, prev)
        self.previous.clear()
        return False

    def _handle(self, signum, frame):
        if self.raised or self.defer_depth:
            self.pending = self.pending or signum
            return
        self.raised = True
        if _EXIT_ON_SIGNAL:
            _exit_now(signum)
        raise InterruptedBySignal(signum)

    @contextlib.contextmanager
    def deferred(self, raise_pending: bool = True):
        self.defer_depth += 1
        try:
            yield
        finally:
            self.defer_depth -= 1
        if self.defer_depth or not self.pending:
            return
        if _EXIT_ON_SIGNAL:  # also after a cleanup (raise_pending=False): it is complete now
            self.raised = True
            _exit_now(self.pending)
        if raise_pending and not self.raised:
            signum, self.pending = self.pending, None
            self.raised = True
            raise InterruptedBySignal(signum)


# ------------------------------------------------------------------------------------- lock
class _OutputLock:
    """An exclusive `flock` on `.NAME.lock` beside the output, holding "pid@host since ...: argv"."""

    def __init__(self, final: Path):
        self.final = final
        self.path = final.with_name(f".{final.name}.lock")
        self.fd: int | None = None

    def __enter__(self):
        if fcntl is None:
            return self
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                os.close(fd)
                raise OutputLockedError(self.final, owner) from None
            except OSError as exc:  # e.g. ENOLCK on a filesystem without locks: go on unlocked
                os.close(fd)
                _note(f"cannot lock '{self.path}' ({exc.strerror}); writing '{self.final}' without a lock")
                return self
            # the previous holder may have unlinked the file between our open and flock: retry on
            # the file now at that path, so two processes never both hold "the" lock
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            record = (f"process {os.getpid()} on {_host()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)[:300]}\n")
            os.ftruncate(fd, 0)
            os.write(fd, record.encode("utf-8", "replace"))
            self.fd = fd
            return self
        raise OutputLockedError(self.final, "the lock file keeps changing")

    def __exit__(self, *exc):
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # while still holding it (see __enter__'s re-check)
            os.close(self.fd)
            self.fd = None
        return False


def _read_owner(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 1000).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "owner unknown"


# ------------------------------------------------------------------------------------ rename
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def _rename_noreplace(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`, failing with FileExistsError if `dst` exists (atomically on Linux)."""
    fn = _renameat2()
    if fn is not None:
        import ctypes

        if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        e = ctypes.get_errno()
        if e == errno.EEXIST:
            raise FileExistsError(e, os.strerror(e), str(dst))
        if e not in (errno.EINVAL, errno.ENOSYS, getattr(errno, "ENOTSUP", errno.EINVAL)):
            raise OSError(e, os.strerror(e), str(src), None, str(dst))
    if os.path.lexists(dst):  # no renameat2 here: check, then rename (we hold the lock)
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


def _commit(tmp: Path, final: Path, force: bool) -> None:
    if not force:
        try:
            _rename_noreplace(tmp, final)
        except FileExistsError:
            raise OutputAppearedError(final) from None
        return
    if os.path.lexists(final):
        old = _sibling(final, "old")
        os.replace(final, old)
        os.replace(tmp, final)
        _remove(old)
    else:
        os.replace(tmp, final)


# ------------------------------------------------------------------------------ translation
def _inside(p, root: Path) -> bool:
    try:
        Path(p).relative_to(root)
        return True
    except ValueError:
        return False


def _map_tmp(name, tmp: Path | None, final: Path):
    """`name` with the temporary prefix replaced by the final path (for messages)."""
    if name is None or tmp is None:
        return name
    try:
        rel = Path(os.fsdecode(name)).relative_to(tmp)
    except ValueError:
        return name
    return final / rel if str(rel) != "." else final


def os_error_to_output_error(exc: OSError, final: Path | None = None, tmp: Path | None = None,
                             partial_bytes: int = 0, free_bytes: int | None = None) -> OutputError | None:
    """An `OutputError` for an OSError that is about writing an output, or None.

    ENOSPC / EDQUOT always (a full disk is never the input's fault; `final` None: the CLI's last
    resort, the message names the failing file); EACCES / EPERM / EROFS when `final` is given and
    the failing file is the output, its temporary / lock, inside them, or a parent of the output.
    """
    where = _map_tmp(exc.filename, tmp, final) if final is not None else exc.filename
    if exc.errno in FULL_ERRNOS:
        if exc.filename:
            loc = Path(os.fsdecode(exc.filename))
        else:
            loc = tmp if tmp is not None and os.path.exists(tmp) else (final.parent if final is not None else Path("."))
        if free_bytes is None:
            free_bytes = _free_bytes(loc)
        free_after = _free_bytes(final.parent) if final is not None else None
        return OutputSpaceError(final if final is not None else where, where, free_bytes, partial_bytes,
                                free_after, quota=exc.errno == getattr(errno, "EDQUOT", -1))
    if exc.errno in DENIED_ERRNOS and final is not None:
        if exc.filename is not None:
            f = Path(os.fsdecode(exc.filename))
            ours = (_inside(f, final) or (tmp is not None and _inside(f, tmp)) or _inside(final, f)
                    or (f.parent == final.parent and f.name.startswith(f".{final.name}.")))  # tmp / lock / old
            if not ours:
                return None
        what = {errno.EROFS: "the filesystem is read-only"}.get(exc.errno, "permission denied")
        detail = f" (file '{where}')" if where is not None and str(where) != str(final) else ""
        return OutputWriteError(f"cannot write output '{final}': {what}{detail}",
                                "choose an output path on a writable filesystem where you have write "
                                "permission (-o), or fix the permissions of its directory")
    return None


# ------------------------------------------------------------------------------ atomic output
@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, force: bool = False, is_dir: bool = False,
                  inputs: Iterable = ()) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it to `path`.

    On any exception (SIGINT / SIGTERM / SIGHUP included) the temporary file or directory is
    removed and `path` is untouched. With `force`, an existing `path` is replaced only after the
    new output is complete; without it, an output that appeared while the body ran is not replaced
    (`OutputAppearedError`). See the module docstring for the guard, the lock and the cleanup of
    temporaries left by killed runs.

    Args:
        path: the final file or directory.
        force: allow replacing an existing `path`.
        is_dir: create the temporary path as a directory.
        inputs: the paths the command reads; `path` may not be, contain or alias any of them.

    Raises:
        UnsafeOutputError, OutputExistsError, OutputLockedError, OutputAppearedError,
        OutputSpaceError, OutputWriteError, InterruptedBySignal.
    """
    final = check_output(path, force, inputs=inputs)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        lock = _OutputLock(final)
        lock.__enter__()
    except OSError as exc:
        raise (os_error_to_output_error(exc, final) or exc) from exc
    tmp: Path | None = None

    def cleanup() -> bool:  # what a signal that ends the program removes (`exit_on_signal`)
        removed = False
        if tmp is not None and (tmp.exists() or tmp.is_symlink()):
            with contextlib.suppress(OSError):
                _remove(tmp)
                removed = True
        lock.__exit__(None, None, None)
        return removed

    register_cleanup(cleanup)
    try:
        with _SignalGuard() as guard:
            try:
                with guard.deferred():
                    reclaim_stale(final)
                    tmp = _sibling(final, "tmp")
                    if is_dir:
                        tmp.mkdir()
                yield tmp
                with guard.deferred():
                    _commit(tmp, final, force)
            except BaseException as exc:
                with guard.deferred(raise_pending=False):
                    partial = _tree_bytes(tmp) if tmp is not None else 0
                    free = None
                    if tmp is not None and isinstance(exc, OSError) and (
                            exc.filename is None or _inside(os.fsdecode(exc.filename), tmp)):
                        free = _free_bytes(tmp)  # before the partial output is removed
                    if tmp is not None:
                        with contextlib.suppress(OSError):
                            _remove(tmp)
                if isinstance(exc, OSError):
                    err = os_error_to_output_error(exc, final, tmp, partial, free)
                    if err is not None:
                        raise err from exc
                elif isinstance(exc, OutputSpaceError) and tmp is not None and _inside(exc.path, tmp):
                    # a nested output inside ours ran out of space: report it as ours
                    raise OutputSpaceError(final, _map_tmp(exc.where, tmp, final), exc.free_bytes,
                                           partial + exc.partial_bytes, _free_bytes(final.parent),
                                           quota="quota" in exc.message) from exc.__cause__
                raise
    finally:
        unregister_cleanup(cleanup)
        lock.__exit__(None, None, None)


__all__ = ["atomic_output", "check_output", "refuse_unsafe_output", "reclaim_stale", "os_error_to_output_error",
           "exit_on_signal", "on_interrupt", "register_cleanup", "unregister_cleanup", "scratch_dir", "run_child",
           "OutputExistsError", "InterruptedBySignal"]
