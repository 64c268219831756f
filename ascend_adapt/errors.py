"""Errors that porting engineers read.

Every error says what failed (the file, key, tensor or op), what was expected, and what to do.
`AscendAdaptError.__str__` renders the message followed by a "fix:" line when a hint is given;
the CLI prints exactly that and exits with status 2 instead of a traceback.
"""

from __future__ import annotations


class AscendAdaptError(Exception):
    """Base class for every error ascend-adapt raises on purpose.

    Args:
        message: what failed, naming the file / key / op.
        hint: what to do about it (one sentence).
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  fix: {self.hint}"
        return self.message


class CheckpointError(AscendAdaptError):
    """A checkpoint directory or file is missing, corrupt or inconsistent."""


class ConfigError(AscendAdaptError):
    """A config (config.json, params.json, a target file, CLI options) is invalid."""


class UnsupportedError(AscendAdaptError):
    """An architecture, op, dtype or option is not supported (by us or by the target)."""


class RegistryError(AscendAdaptError):
    """A registry lookup or registration failed."""


class MissingDependencyError(AscendAdaptError):
    """An optional dependency is not installed.

    Args:
        package: the import / distribution name that is missing.
        extra: the `pip install ascend-adapt[extra]` that provides it, if any.
        purpose: what it is needed for.
    """

    def __init__(self, package: str, extra: str | None = None, purpose: str | None = None):
        what = f" (needed for {purpose})" if purpose else ""
        hint = (
            f"pip install 'ascend-adapt[{extra}]'" if extra else f"pip install {package}"
        )
        super().__init__(f"the package '{package}' is not installed{what}", hint)
        self.package = package
        self.extra = extra


class OutputError(AscendAdaptError):
    """An output cannot be written safely (exists, is an input, is locked, disk full, not writable)."""


class OutputExistsError(OutputError):
    """An output path exists and `--force` was not given."""

    def __init__(self, path):
        super().__init__(
            f"output '{path}' already exists", "pass --force to overwrite it, or choose another path"
        )
        self.path = path


class OutputAppearedError(OutputExistsError):
    """The output did not exist when the command started but did when it came to rename its result."""

    def __init__(self, path):
        super().__init__(path)
        self.message = (f"output '{path}' appeared while this command was running (another process wrote "
                        f"it); it was left as it is and this run's result was discarded")
        self.args = (self.message,)


class UnsafeOutputError(OutputError):
    """The output path is, contains or is the same file as an input, or contains the working directory.

    Replacing it (`--force`) would delete what the command reads, so it is refused with or without
    `--force`.
    """

    def __init__(self, path, reason: str, resolved=None):
        where = f"'{path}'" + (f" (= '{resolved}')" if resolved is not None else "")
        super().__init__(f"output {where} {reason}; refusing to write there (with or without --force)",
                         "choose a new path for the output (-o), outside the inputs and not the current "
                         "directory or one of its parents")
        self.path = path


class OutputLockedError(OutputError):
    """Another process holds the lock of the same output path."""

    def __init__(self, path, owner: str):
        super().__init__(f"output '{path}' is being written by another process ({owner})",
                         "wait for that run to finish (or stop it), or choose another path")
        self.path = path
        self.owner = owner


class OutputSpaceError(OutputError):
    """The filesystem holding an output ran out of space (ENOSPC) or of quota (EDQUOT).

    Args:
        path: the final output path.
        where: the file whose write failed (mapped from the temporary name to `path`).
        free_bytes: bytes free on that filesystem when the write failed.
        partial_bytes: bytes of the partial output that were removed.
        free_after_bytes: bytes free after removing the partial output (None when unknown).
        quota: EDQUOT (quota) rather than ENOSPC (device full).
    """

    def __init__(self, path, where, free_bytes, partial_bytes: int = 0, free_after_bytes=None,
                 quota: bool = False):
        what = "disk quota exceeded" if quota else "no space left on device"
        free = "unknown" if free_bytes is None else _human_bytes(free_bytes)
        msg = f"{what} while writing output '{path}'" if path is not None else f"{what} while writing"
        if where and str(where) != str(path):
            msg += f" (file '{where}')"
        msg += f": {free} free on that filesystem when the write failed"
        if partial_bytes:
            msg += f"; the partial output ({_human_bytes(partial_bytes)}) was removed"
        if free_after_bytes is not None:
            msg += f", {_human_bytes(free_after_bytes)} free now"
        need = f" (more than {_human_bytes(partial_bytes)} is needed)" if partial_bytes else ""
        hint = ("ask for a larger quota or remove files you own" if quota else "free space on that filesystem")
        super().__init__(msg, f"{hint}{need}, or write the output to another filesystem with -o")
        self.path, self.where = path, where
        self.free_bytes, self.partial_bytes, self.free_after_bytes = free_bytes, partial_bytes, free_after_bytes


class OutputWriteError(OutputError):
    """An output cannot be written: permission denied, read-only filesystem, not a directory, ..."""


class InterruptedBySignal(KeyboardInterrupt):
    """SIGINT / SIGTERM / SIGHUP arrived while an output was being written; its temporary was removed.

    A KeyboardInterrupt (not an Exception) so that `except Exception` in the middle of a command
    cannot swallow it. The CLI exits with `exit_code` = 128 + the signal number (130 for SIGINT).
    """

    def __init__(self, signum: int):
        import signal as _signal

        try:
            name = _signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        super().__init__(f"interrupted by {name}")
        self.signum = signum
        self.signal_name = name
        self.exit_code = 128 + signum

    def report(self, removed: bool = True) -> str:
        """The one line the program prints when it stops for this signal."""
        return f"{self}: stopped" + ("; the partial output was removed" if removed else "")


def _human_bytes(n) -> str:
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class ShapeMismatchError(CheckpointError):
    """A tensor's shape does not match what the config implies."""

    def __init__(self, name: str, expected, actual, source: str | None = None):
        where = f" in {source}" if source else ""
        super().__init__(
            f"tensor '{name}'{where} has shape {tuple(actual)}, expected {tuple(expected)} from the config",
            "check that config.json belongs to these weights (hidden_size, layers, heads, vocab)",
        )
        self.name, self.expected, self.actual = name, tuple(expected), tuple(actual)
