"""Decode ATC's output: E-/W-codes, unsupported-operator messages and the final status line.

ATC prints its errors to the screen as

    ATC run failed, Please check the detail log, Try 'atc --help' for more information
    E19010: [PID: 5948] 2025-04-21-15:00:19.776.801 No parser is registered for Op [Gelu_3, optype [ai.onnx::20::Gelu]].
            Solution: Check the version of the installation package and reinstall the package. ...
            TraceBack (most recent call last):
            Model parse to graph failed, graph name:Graph. [FILE: onnx_parser.cc] ...

A code is six characters (level E/W/I, module, four digits; x9xxx = internal). The op-level
messages and their regexes follow msit's ATC parser (reference sheet §3). Each diagnostic gets a
fix: ours for the codes porting engineers meet, else the suggestions of ge_error_codes.txt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from .codes import CODE_PATTERN, ge_code, is_internal, level_of, template_regex

STATUS_SUCCESS = "ATC_RUN_SUCCESS"
STATUS_FAILED = "ATC_RUN_FAILED"
ENV_LIBRARY = "ENV_LIBRARY"
ENV_PYTHON = "ENV_PYTHON"


@dataclass(frozen=True)
class AtcDiagnostic:
    """One decoded finding in ATC's output.

    Attributes:
        code: the E-/W-code ("E19010"), or one of STATUS_SUCCESS, STATUS_FAILED, ENV_LIBRARY,
            ENV_PYTHON for the status line and environment failures.
        level: "error", "warning" or "info".
        message: the message text without the code, PID and timestamp.
        op_name: the op the message names, when it names one.
        op_type: its type as ATC prints it (e.g. "ai.onnx::20::Gelu" or "Conv").
        fix: what to do.
        solution: ATC's own "Solution:" line, when it printed one.
    """

    code: str
    level: str
    message: str
    op_name: str | None = None
    op_type: str | None = None
    fix: str | None = None
    solution: str | None = None

    def __str__(self) -> str:
        op = ""
        if self.op_name or self.op_type:
            op = f" [op {self.op_name or '?'}" + (f", type {self.op_type}" if self.op_type else "") + "]"
        text = f"{self.code} ({self.level}){op}: {self.message}"
        return text + (f"\n    fix: {self.fix}" if self.fix else "")


# ---------------------------------------------------------------------------------------------
# patterns

_CODE_LINE = re.compile(rf"(?<![A-Za-z0-9_])(?P<code>{CODE_PATTERN})\s*:\s*(?P<rest>.*)$")
_PID_PREFIX = re.compile(r"^\[PID:\s*\d+\]\s*(?:\d{4}-\d{2}-\d{2}-[\d:.]+\s*)?")
_NAME = r"[^\[\],]+?"
_OP_PATTERNS = (  # (inferred code, regex) — msit's patterns with wider name characters
    ("EZ9010", re.compile(rf"No parser is registered for Op \[\s*(?P<name>{_NAME})\s*,\s*optype \[\s*(?P<type>[^\[\]]+?)\s*\]\s*\]")),
    ("EZ0501", re.compile(rf"IR for Op \[\s*(?P<name>{_NAME})\s*,\s*optype \[\s*(?P<type>[^\[\]]+?)\s*\]\s*\],?\s*is not registered")),
    ("EZ3002", re.compile(r"Optype \[\s*(?P<type>[^\[\]]+?)\s*\] of Ops kernel \[\s*(?P<engine>[^\[\]]+?)\s*\] is unsupported")),
    ("EZ3003", re.compile(rf"No supported Ops kernel and engine are found for \[\s*(?P<name>{_NAME})\s*\],\s*optype \[\s*(?P<type>[^\[\]]+?)\s*\]")),
)
_ONNX_TYPE = re.compile(r"^(?P<domain>[\w.]*)::(?P<opset>\d+)::(?P<op>[\w.]+)$")
_SUCCESS = re.compile(r"ATC run success", re.I)
_FAILED = re.compile(r"ATC run failed", re.I)
_LIB = re.compile(r"error while loading shared libraries: (?P<lib>\S+?):")
_PYMOD = re.compile(r"(?:ModuleNotFoundError|ImportError): (?P<what>.+)$")


# ---------------------------------------------------------------------------------------------
# fixes

OPSET_FIX = "re-export the ONNX model at opset <= 18 (<= 13 for CANN <= 6.0; 11-17 is safest)"
ANALYZE_FIX = "run `ascend-adapt analyze` on the model to list every op the target lacks"
OPP_FIX = "check that the installed opp/kernels packages match the toolkit version"
PLOG_FIX = ("internal error: rerun with --log=info and ASCEND_SLOG_PRINT_TO_STDOUT=1, collect the plog "
            "(~/ascend/log/debug/plog) and report it with the exact command line to Huawei support")
GEAR_FIX = ("fix the gear options: 2-100 sorted unique profiles, one value per -1 of --input_shape; "
            "plan them with plan_gears() / prefill_gear_shapes() and check with validate()")
SETENV_FIX = ("load CANN's environment first: source /usr/local/Ascend/ascend-toolkit/set_env.sh "
              "(or $ASCEND_TOOLKIT_HOME/../set_env.sh)")

_GEAR_CODES = {"E10009", "E10012", "E10018", "E10019", "E10020", "E10031", "E10035", "E10036",
               "E10037", "E10038", "E10039", "E10040", "E10045", "E10046"}


def _split_type(op_type: str | None) -> tuple[str | None, int | None, str | None]:
    if not op_type:
        return None, None, None
    m = _ONNX_TYPE.match(op_type)
    if not m:
        return None, None, op_type
    return m.group("domain"), int(m.group("opset")), m.group("op")


def fix_for(code: str, op_name: str | None = None, op_type: str | None = None, engine: str | None = None) -> str:
    """What to do about a code (and the op it names).

    Args:
        code: the E-/W-code or a STATUS_* / ENV_* pseudo code.
        op_name: the op name from the message.
        op_type: the op type from the message.
        engine: the kernel engine (EZ3002).
    """
    domain, opset, op = _split_type(op_type)
    what = op or op_type or "this op"
    if code in ("E19010", "EZ9010", "E16002", "E13010", "E11009"):
        at = f" at opset {opset}" if opset else ""
        if domain not in (None, "", "ai.onnx"):
            return (f"{what} is in the custom domain '{domain}', which ATC does not parse: rewrite it into "
                    f"standard ONNX ops or register an ONNX plugin (msopgen); {ANALYZE_FIX}")
        first = OPSET_FIX if opset is None or opset > 18 else f"check {what}'s opset against the CANN release"
        return (f"ATC has no parser for {what}{at}: {first}, or rewrite/decompose {what} "
                f"({ANALYZE_FIX}); {OPP_FIX}")
    if code in ("EZ0501", "E10501"):
        return (f"no Ascend IR prototype for op type {what}: decompose it into supported ops ({ANALYZE_FIX}, "
                f"then `ascend-adapt rewrite`), or {OPP_FIX}")
    if code == "EZ3002":
        eng = f"{engine} " if engine else ""
        return (f"the op-info library has no {eng}kernel for {what} with these dtypes/formats: cast int64 "
                f"tensors to int32, try --precision_mode=allow_fp32_to_fp16 (or force_fp16), or keep the op "
                f"at its dtype with --keep_dtype; {OPP_FIX}")
    if code == "EZ3003":
        return (f"no engine (AI Core, AI CPU, ...) runs {op_name or what} ({what}) with these dtypes/shapes: "
                f"cast int64 inputs to int32, try --precision_mode=allow_fp32_to_fp16 / force_fp16 or "
                f"--keep_dtype, or replace the op ({ANALYZE_FIX}); {OPP_FIX}")
    if code == "W11001":
        return "performance hint only: the op uses a lower-priority implementation; act only if it is hot"
    if code == STATUS_SUCCESS:
        return None  # type: ignore[return-value]
    if code == STATUS_FAILED:
        return ("read the E-codes ATC printed; if there are none, rerun with --log=info and "
                "ASCEND_SLOG_PRINT_TO_STDOUT=1 and read the plog in ~/ascend/log/debug/plog")
    if code == ENV_LIBRARY:
        return f"a CANN library is not on LD_LIBRARY_PATH: {SETENV_FIX}"
    if code == ENV_PYTHON:
        return (f"ATC's Python side failed to import: {SETENV_FIX}; install its Python deps "
                "(decorator, attrs, psutil, sympy, numpy<2) in the interpreter ATC uses")
    if is_internal(code):
        return PLOG_FIX
    if code in _GEAR_CODES:
        return GEAR_FIX
    if code == "E13015":
        return ("a file is outside the size ATC accepts: an ONNX model over 2 GB must keep its weights in "
                "external data files beside the .onnx; use --external_weight=1 or 2 for a large OM")
    if code == "E13023":
        return "the OM exceeds the system limit: build with --external_weight=1 (or 2) to keep weights outside"
    if code in ("E16001", "E16004", "E16005"):
        return "the ONNX file is malformed: run onnx.checker.check_model on it and re-export"
    if code in ("E10410", "E13000", "E13001", "E13003", "E13026", "E10041"):
        return "check that the path exists, is readable and is the model/config the flag expects"
    facts = ge_code(code)
    if facts and facts.get("fixes"):
        return " ".join(facts["fixes"])
    if code.startswith("E10"):
        return ("fix the ATC flag named in the message; validate(options) reports these before ATC runs "
                "(see docs/atc.md)")
    return "see ATC's detail log: rerun with --log=info (ASCEND_SLOG_PRINT_TO_STDOUT=1 prints it)"


# ---------------------------------------------------------------------------------------------
# decoding


def _op_fields(code: str, message: str) -> tuple[str | None, str | None, str | None, str | None]:
    """(inferred code, op_name, op_type, engine) from a message, when it names an op."""
    for inferred, rx in _OP_PATTERNS:
        m = rx.search(message)
        if m:
            d = m.groupdict()
            return inferred, d.get("name"), d.get("type"), d.get("engine")
    facts = ge_code(code) if code else None
    if facts:
        names = facts.get("placeholders") or []
        if any(n in ("op name", "op type") for n in names):
            rx = template_regex(code)
            m = rx.search(message) if rx else None
            if m and len(m.groups()) == len(names):
                got = dict(zip(names, m.groups()))
                return None, got.get("op name"), got.get("op type"), None
    return None, None, None, None


class AtcLogDecoder:
    """Decode ATC output one line at a time (memory stays bounded on huge debug logs).

    Example:
        >>> dec = AtcLogDecoder()
        >>> for line in text.splitlines(): dec.feed(line)
        >>> dec.diagnostics, dec.status
    """

    def __init__(self) -> None:
        self.diagnostics: list[AtcDiagnostic] = []
        self.status: str | None = None
        self._seen: set[tuple[str, str]] = set()
        self._open: dict | None = None  # the code message still collecting continuation lines

    def feed(self, line: str) -> None:
        """Read one line of ATC output (with or without its newline)."""
        line = line.rstrip("\r\n")
        stripped = line.strip()
        if _SUCCESS.search(line):
            self._close()
            self.status = "success"
            self._add(STATUS_SUCCESS, "info", stripped)
            return
        if _FAILED.search(line):
            self._close()
            self.status = "failed"
            self._add(STATUS_FAILED, "error", stripped)
            return
        m = _CODE_LINE.search(line)
        if m:
            self._close()
            rest = _PID_PREFIX.sub("", m.group("rest").strip())
            self._open = {"code": m.group("code"), "lines": [rest] if rest else [], "solution": None,
                          "phase": "message"}
            return
        if self._open is not None:
            if not stripped:
                self._close()
            elif stripped.startswith("Solution:"):
                self._open["solution"] = stripped[len("Solution:"):].strip()
                self._open["phase"] = "solution"
            elif stripped.startswith(("TraceBack", "Possible Cause")):
                self._open["phase"] = "trace"
            elif line[:1].isspace():
                if self._open["phase"] == "message":
                    self._open["lines"].append(stripped)
            else:  # an unindented line ends the message (and may say something itself)
                self._close()
                self._loose(line)
            return
        self._loose(line)

    def close(self) -> list[AtcDiagnostic]:
        """Flush the message being collected; returns the diagnostics."""
        self._close()
        return self.diagnostics

    # -- internals -------------------------------------------------------------------------------

    def _loose(self, line: str) -> None:
        """A line without a code: op messages wrapped or printed alone, environment failures."""
        inferred, name, typ, engine = _op_fields("", line)
        if inferred:
            self._add(inferred, "error", line.strip(), name, typ, engine=engine)
            return
        m = _LIB.search(line)
        if m:
            self._add(ENV_LIBRARY, "error", line.strip(), op_name=None, op_type=None)
            return
        m = _PYMOD.search(line)
        if m:
            self._add(ENV_PYTHON, "error", line.strip())

    def _close(self) -> None:
        if self._open is None:
            return
        entry, self._open = self._open, None
        code = entry["code"]
        message = " ".join(entry["lines"]).strip()
        inferred, name, typ, engine = _op_fields(code, message)
        self._add(code, level_of(code), message, name, typ, entry["solution"], engine)

    def _add(self, code, level, message, op_name=None, op_type=None, solution=None, engine=None) -> None:
        key = (code, message)
        if key in self._seen:
            return
        self._seen.add(key)
        fix = fix_for(code, op_name, op_type, engine)
        self.diagnostics.append(AtcDiagnostic(code, level, message, op_name, op_type, fix, solution))


def decode_atc_log(text: str | Iterable[str]) -> list[AtcDiagnostic]:
    """Decode ATC output into diagnostics, in order of appearance, duplicates removed.

    Recognises `Exxxxx:` / `Wxxxxx:` code lines (with ATC's `[PID: n] timestamp` prefix and
    indented continuation / `Solution:` lines), the unsupported-op messages (E19010/EZ9010 no
    parser, EZ0501 no IR, EZ3002 no kernel, EZ3003 no engine) with their op name and type even
    without a code, "ATC run success" / "ATC run failed", and missing-library / Python-import
    failures of the CANN environment.

    Args:
        text: the whole output, or an iterable of lines.

    Returns:
        AtcDiagnostic list; each has a `fix`.
    """
    dec = AtcLogDecoder()
    lines = text.splitlines() if isinstance(text, str) else text
    for line in lines:
        dec.feed(line)
    return dec.close()


def atc_status(text: str) -> str | None:
    """"success", "failed" or None from ATC's status line."""
    if _FAILED.search(text):
        return "failed"
    if _SUCCESS.search(text):
        return "success"
    return None
