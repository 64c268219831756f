"""Errors of the ATC driver.

`AtcValidationError` is what `validate()` raises before ATC runs: it carries ATC's own code and
message (the wording of `ge_error_codes.txt`) plus what to do. `AtcError` is what `run_atc()`
raises when ATC itself fails: it shows the exact command, the exit code, the tail of ATC's output
and the decoded E-codes with a fix for each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from ascend_adapt.errors import AscendAdaptError, ConfigError

from .codes import format_ge_message

if TYPE_CHECKING:  # pragma: no cover
    from .logparse import AtcDiagnostic


class AtcValidationError(ConfigError):
    """An ATC option that ATC itself would refuse, reported with ATC's code and wording.

    The message reads like ATC's own line, e.g.
    `E10035: --dynamic_batch_size, --dynamic_image_size, or --dynamic_dims has 1 profiles, which is
    less than the minimum 2.`, followed by a `fix:` line.

    Args:
        code: the GE error code (E10035, E10001, …).
        message: the message without the code prefix.
        hint: what to do.
        flag: the ATC flag at fault (without dashes), when there is one.

    Attributes:
        code: the GE error code.
        atc_message: the message as ATC prints it, without the code prefix.
        flag: the flag at fault, or None.
    """

    def __init__(self, code: str, message: str, hint: str | None = None, *, flag: str | None = None):
        super().__init__(f"{code}: {message}", hint)
        self.code = code
        self.atc_message = message
        self.flag = flag

    @classmethod
    def from_code(
        cls, code: str, *args: object, hint: str | None = None, flag: str | None = None
    ) -> "AtcValidationError":
        """Build the error from the code's template in ge_error_codes.json.

        Args:
            code: the GE error code.
            *args: the template's `%s` values, in order.
            hint: what to do.
            flag: the flag at fault.
        """
        return cls(code, format_ge_message(code, *args), hint, flag=flag)


class AtcError(AscendAdaptError):
    """ATC ran and failed (or could not be run).

    Args:
        message: the full report (command, exit code, output tail, decoded diagnostics).
        hint: what to try first.
        command: the exact command line, shell-quoted.
        returncode: ATC's exit status (None when ATC was not started).
        log_tail: the last lines of ATC's output.
        diagnostics: decoded E-/W-codes.
        stage: "precheck" or "build".
    """

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        command: str = "",
        returncode: int | None = None,
        log_tail: Sequence[str] = (),
        diagnostics: Sequence["AtcDiagnostic"] = (),
        stage: str = "build",
    ):
        super().__init__(message, hint)
        self.command = command
        self.returncode = returncode
        self.log_tail = list(log_tail)
        self.diagnostics = list(diagnostics)
        self.stage = stage


class AtcNotFoundError(AtcError):
    """No `atc` executable was found (PATH, $ASCEND_TOOLKIT_HOME, $ASCEND_HOME_PATH, default)."""
