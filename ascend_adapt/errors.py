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


class OutputExistsError(AscendAdaptError):
    """An output path exists and `--force` was not given."""

    def __init__(self, path):
        super().__init__(
            f"output '{path}' already exists", "pass --force to overwrite it, or choose another path"
        )
        self.path = path


class ShapeMismatchError(CheckpointError):
    """A tensor's shape does not match what the config implies."""

    def __init__(self, name: str, expected, actual, source: str | None = None):
        where = f" in {source}" if source else ""
        super().__init__(
            f"tensor '{name}'{where} has shape {tuple(actual)}, expected {tuple(expected)} from the config",
            "check that config.json belongs to these weights (hidden_size, layers, heads, vocab)",
        )
        self.name, self.expected, self.actual = name, tuple(expected), tuple(actual)
