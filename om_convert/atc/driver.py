"""Run ATC: find it, pre-check, build, stream and decode its output; write the re-runnable script.

`run_atc(options)` validates the options the way ATC does, writes `atc_command.sh` beside the
output (always, so the exact build can be re-run on a CANN host), optionally runs ATC's
pre-check (`--mode=3`, reading the check report it writes), then the build. Every output line
goes to the `on_line` callback and to the log file as it arrives and through the E-code decoder.
A failure raises `AtcError` showing the exact command, the exit code, the tail of ATC's output
and the decoded diagnostics with fixes.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import shlex
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .errors import AtcError, AtcNotFoundError
from .logparse import STATUS_FAILED, STATUS_SUCCESS, AtcDiagnostic, AtcLogDecoder, fix_for
from .options import PATH_FIELDS, AtcOptions, om_path_for
from .validate import validate

SCRIPT_NAME = "atc_command.sh"
OM_MAGIC = b"IMOD"
"""An OM file starts with ModelFileHeader.magic 0x444F4D49, little-endian: the bytes "IMOD"."""

DEFAULT_LOCATIONS = (
    "/usr/local/Ascend/ascend-toolkit/latest/bin/atc",
    "/usr/local/Ascend/ascend-toolkit/latest/atc/bin/atc",
)
TAIL_LINES = 40


def find_atc() -> str | None:
    """Locate the `atc` executable, or None when CANN is not installed.

    Looks in order at PATH, `$ASCEND_TOOLKIT_HOME/bin/atc`, `$ASCEND_HOME_PATH/bin/atc` (and the
    older `<root>/atc/bin/atc` layout), then `/usr/local/Ascend/ascend-toolkit/latest/bin/atc`.
    """
    exe = shutil.which("atc")
    if exe:
        return exe
    candidates: list[str] = []
    for var in ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH"):
        root = os.environ.get(var)
        if root:
            candidates += [os.path.join(root, "bin", "atc"), os.path.join(root, "atc", "bin", "atc")]
    candidates += list(DEFAULT_LOCATIONS)
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def find_om(output: str | os.PathLike) -> str | None:
    """The OM ATC wrote for `--output=output`: `<output>.om`, or the newest `<output>_*.om`
    (newer CANN releases add a platform suffix such as `_linux_x86_64`)."""
    exact = om_path_for(output)
    if os.path.isfile(exact):
        return exact
    out = os.fspath(output)
    if out.endswith(".om") and os.path.isfile(out):
        return out
    found = [p for p in glob.glob(glob.escape(out) + "_*.om") if os.path.isfile(p)]
    return max(found, key=os.path.getmtime) if found else None


@dataclass
class AtcResult:
    """What a successful `run_atc` returns.

    Attributes:
        returncode: ATC's exit status (0).
        command: the exact build command, shell-quoted.
        log_tail: the last lines of ATC's output.
        diagnostics: decoded codes (warnings such as W11001 included) from pre-check and build.
        om_path: the OM written (None for modes that write none).
        check_report: the pre-check JSON report, when one was written.
        log_path: the log file, when one was asked for.
        script_path: the `atc_command.sh` written beside the output.
        precheck_command: the pre-check command, when a pre-check ran.
    """

    returncode: int
    command: str
    log_tail: list[str]
    diagnostics: list[AtcDiagnostic]
    om_path: str | None = None
    check_report: dict | None = None
    log_path: str | None = None
    script_path: str | None = None
    precheck_command: str | None = None
    warnings: list[AtcDiagnostic] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.warnings = [d for d in self.diagnostics if d.level == "warning"]


# ---------------------------------------------------------------------------------------------
# the script


def _script_dir(options: AtcOptions, path: str | os.PathLike | None) -> Path:
    if path is not None:
        return Path(path).resolve().parent
    return Path(options.output).resolve().parent if options.output else Path.cwd()


def script_options(options: AtcOptions, script_dir: str | os.PathLike) -> AtcOptions:
    """A copy of `options` with every path made relative to `script_dir` (the script cds there)."""
    changes = {}
    for name in PATH_FIELDS:
        value = getattr(options, name)
        if value is not None:
            changes[name] = os.path.relpath(os.path.abspath(value), os.fspath(script_dir))
    return options.replace(**changes)


def render_atc_script(options: AtcOptions, script_dir: str | os.PathLike | None = None) -> str:
    """The text of `atc_command.sh` for these options (see `write_atc_script`)."""
    from ascend_adapt import __version__

    opts = script_options(options, script_dir) if script_dir is not None else options
    soc = options.soc_version or "<set --soc_version>"
    om = om_path_for(opts.output) if opts.output else "(no OM for this --mode)"
    args = opts.to_argv()
    body = " \\\n  ".join(shlex.quote(a) for a in args)
    return f"""#!/usr/bin/env bash
# ATC build command written by ascend-adapt {__version__}. Run it on a host with CANN installed.
#
# Target: --soc_version={soc}
#   The OM runs only on chips with this soc_version ("Ascend" + the Name column of `npu-smi info`,
#   e.g. Name 310P3 -> Ascend310P3). Building needs no NPU, only the CANN toolkit.
# Output: {om}  (ATC appends .om to --output)
#
# Load CANN's environment first (this script tries the usual places when `atc` is not on PATH):
#   source /usr/local/Ascend/ascend-toolkit/set_env.sh
#   or: source "$ASCEND_TOOLKIT_HOME/../set_env.sh"  (CANN 8.x may also install /usr/local/Ascend/cann/set_env.sh)
# Large models need a lot of host RAM: on small hosts export MAX_COMPILE_CORE_NUMBER=1 TE_PARALLEL_COMPILER=1.
# For a detailed log add --log=info, or export ASCEND_SLOG_PRINT_TO_STDOUT=1.
# Paths are relative to this script's directory.
set -e
cd "$(dirname "$0")"
if ! command -v atc >/dev/null 2>&1; then
  for env_sh in "${{ASCEND_TOOLKIT_HOME:+$ASCEND_TOOLKIT_HOME/../set_env.sh}}" \\
                /usr/local/Ascend/ascend-toolkit/set_env.sh \\
                "$HOME/Ascend/ascend-toolkit/set_env.sh" \\
                /usr/local/Ascend/cann/set_env.sh; do
    if [ -n "$env_sh" ] && [ -f "$env_sh" ]; then . "$env_sh"; break; fi
  done
fi
{body}
"""


def write_atc_script(options: AtcOptions, path: str | os.PathLike | None = None) -> str:
    """Write an executable `atc_command.sh` that runs exactly this build on a CANN host.

    The script has `set -e`, comments naming the soc_version and how to source CANN's
    `set_env.sh`, sources it itself when `atc` is not on PATH, changes to its own directory and
    uses paths relative to it (copy the output directory with the model to the CANN host and run
    it). Written whether or not ATC is present here.

    Args:
        options: the ATC options.
        path: the script path; default `atc_command.sh` beside `--output`.

    Returns:
        The script path.
    """
    from ascend_adapt.fsutil import atomic_output

    script_dir = _script_dir(options, path)
    target = Path(path) if path is not None else script_dir / SCRIPT_NAME
    text = render_atc_script(options, script_dir)
    with atomic_output(target, force=True) as tmp:
        tmp.write_text(text, encoding="utf-8")
        os.chmod(tmp, 0o755)
    return str(target)


# ---------------------------------------------------------------------------------------------
# running


class _Run:
    """One ATC process: streams lines to the callback, the log and the decoder."""

    def __init__(self, argv: list[str], decoder: AtcLogDecoder, log_fh, on_line, env, timeout_s):
        self.argv = argv
        self.decoder = decoder
        self.log_fh = log_fh
        self.on_line = on_line
        self.env = env
        self.timeout_s = timeout_s
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.timed_out = False

    def __call__(self) -> int:
        try:
            proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    errors="replace", bufsize=1, env=self.env)
        except OSError as err:
            raise AtcError(f"could not start ATC: {shlex.join(self.argv)}: {err}",
                           "check that the atc executable exists and is executable",
                           command=shlex.join(self.argv)) from err
        timer = None
        if self.timeout_s:
            def _kill() -> None:
                self.timed_out = True
                proc.kill()
            timer = threading.Timer(self.timeout_s, _kill)
            timer.daemon = True
            timer.start()
        from ascend_adapt.fsutil import register_cleanup, unregister_cleanup

        stop = register_cleanup(proc.kill)  # a signal that ends the program (exit_on_signal) stops ATC too
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\r\n")
                self.tail.append(line)
                self.decoder.feed(line)
                if self.log_fh is not None:
                    self.log_fh.write(line + "\n")
                    self.log_fh.flush()
                if self.on_line is not None:
                    self.on_line(line)
            return proc.wait()
        finally:
            unregister_cleanup(stop)
            if timer is not None:
                timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _read_check_report(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as err:
        return {"unreadable": f"{path}: {err}"}
    return data if isinstance(data, dict) else {"report": data}


def report_diagnostics(report: dict | None) -> list[AtcDiagnostic]:
    """Failed entries of a pre-check report as diagnostics (best effort: any JSON object with a
    `result` of failed / fail / false, naming the op by op_name/name and op_type/type)."""
    found: list[AtcDiagnostic] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            result = str(node.get("result", "")).lower()
            if result in ("failed", "fail", "false", "unsupported"):
                name = node.get("op_name") or node.get("name")
                typ = node.get("op_type") or node.get("type")
                reason = node.get("reason") or node.get("message") or json.dumps(node, ensure_ascii=False)
                found.append(AtcDiagnostic("PRECHECK", "error", str(reason), name, typ, fix_for("EZ3003", name, typ)))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(report)
    return found


def _failure(stage: str, command: str, rc: int | None, run: _Run, diagnostics: Sequence[AtcDiagnostic],
             log_path: str | None, script_path: str | None, why: str | None = None) -> AtcError:
    lines = [f"ATC {stage} failed" + (f" (exit code {rc})" if rc is not None else "") + (f": {why}" if why else ""),
             f"  command: {command}"]
    if run.tail:
        lines.append(f"  last {len(run.tail)} lines of ATC output:")
        lines += [f"    | {t}" for t in run.tail]
    else:
        lines.append("  ATC printed nothing")
    shown = [d for d in diagnostics if d.code not in (STATUS_SUCCESS, STATUS_FAILED)]
    shown += [d for d in diagnostics if d.code == STATUS_FAILED][:1]  # the status line last
    if shown:
        lines.append("  decoded:")
        for d in shown:
            lines += ["    " + s for s in str(d).splitlines()]
    if log_path:
        lines.append(f"  log: {log_path}")
    if script_path:
        lines.append(f"  script: {script_path}")
    errors = [d for d in shown if d.level == "error" and d.code != STATUS_FAILED]
    hint = errors[0].fix if errors else fix_for(STATUS_FAILED)
    return AtcError("\n".join(lines), hint, command=command, returncode=rc, log_tail=list(run.tail),
                    diagnostics=list(diagnostics), stage=stage)


def _find_or_refuse(options: AtcOptions, atc: str | None, script_path: str | None) -> str:
    """The ATC executable (`atc` or `find_atc()`), or AtcNotFoundError pointing at the script."""
    exe = atc or find_atc()
    if exe is None:
        where = f"; the command is in {script_path}" if script_path else ""
        raise AtcNotFoundError(
            "ATC (the CANN toolkit's atc) was not found on PATH, in $ASCEND_TOOLKIT_HOME, $ASCEND_HOME_PATH "
            f"or /usr/local/Ascend/ascend-toolkit/latest{where}",
            f"run {script_path or SCRIPT_NAME} on a host with CANN, or source CANN's set_env.sh here",
            command=options.to_command(), stage="build")
    return exe


def _precheck_options(options: AtcOptions) -> AtcOptions:
    """The pre-check (`--mode=3`) of a build: no output, the check report beside the output."""
    report = options.check_report or f"{options.output}_check_result.json"
    return options.replace(mode=3, output=None, check_report=report)


@dataclass
class _Session:
    """The ATC invocations of one `run_atc` call: one executable, environment and log, and the
    diagnostics (and pre-check report) gathered across its stages."""

    exe: str
    env: dict
    log_fh: object
    on_line: Callable[[str], None] | None
    timeout_s: float | None
    log_path: str | None
    script_path: str | None
    diagnostics: list = field(default_factory=list)
    check_report: dict | None = None

    def stage(self, name: str, opts: AtcOptions, read_report: str | None = None) -> tuple[str, int, _Run]:
        """Run one ATC invocation, streaming and decoding its log; raise AtcError on failure."""
        argv = opts.to_argv(self.exe)
        command = shlex.join(argv)
        if self.log_fh is not None:
            self.log_fh.write(f"# ascend-adapt: {name}: {command}\n")
        decoder = AtcLogDecoder()
        run = _Run(argv, decoder, self.log_fh, self.on_line, self.env, self.timeout_s)
        rc = run()
        self.diagnostics += decoder.close()
        if read_report is not None:
            self.check_report = _read_check_report(read_report)
            self.diagnostics += report_diagnostics(self.check_report)
        if rc != 0 or run.timed_out or decoder.status == "failed":
            why = f"timed out after {self.timeout_s} s" if run.timed_out else None
            raise _failure(name, command, rc, run, self.diagnostics, self.log_path, self.script_path, why)
        return command, rc, run

    def built_om(self, options: AtcOptions, command: str, rc: int, run: _Run) -> str | None:
        """The OM a build wrote (None for modes that write none); AtcError when ATC exited 0 without it."""
        if options.mode not in (None, 0) or not options.output:
            return None
        om = find_om(options.output)
        if om is None:
            raise _failure("build", command, rc, run, self.diagnostics, self.log_path, self.script_path,
                           f"ATC exited 0 but {om_path_for(options.output)} was not written")
        return om


def run_atc(
    options: AtcOptions,
    log_path: str | os.PathLike | None = None,
    on_line: Callable[[str], None] | None = None,
    precheck: bool = True,
    *,
    atc: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
    check_files: bool = True,
    script: bool = True,
) -> AtcResult:
    """Validate, (pre-check,) build; raise AtcError with decoded E-codes when ATC fails.

    Args:
        options: the ATC options (mode 0 builds an OM at `<output>.om`).
        log_path: write every ATC output line here (both stages, with a header per command).
        on_line: called with each output line (no newline) as it arrives.
        precheck: for a build (mode 0), first run `--mode=3` with `--check_report` beside the
            output and read the report; a failing pre-check stops before the build.
        atc: the executable; default `find_atc()`.
        env: extra environment variables for ATC.
        timeout_s: kill ATC after this many seconds (per stage).
        check_files: check that the files named by the options exist before running.
        script: write `atc_command.sh` beside the output first (see `write_atc_script`).

    Returns:
        AtcResult.

    Raises:
        AtcValidationError: options ATC would refuse (before anything runs).
        AtcNotFoundError: no ATC here (the script is still written).
        AtcError: ATC failed; the message holds the command, exit code, output tail and fixes.
    """
    validate(options, check_files=check_files)
    if options.output:
        Path(options.output).resolve().parent.mkdir(parents=True, exist_ok=True)
    script_path = write_atc_script(options) if script else None
    exe = _find_or_refuse(options, atc, script_path)
    log_fh = open(log_path, "w", encoding="utf-8") if log_path is not None else None
    try:
        session = _Session(exe, {**os.environ, **(env or {})}, log_fh, on_line, timeout_s, _s(log_path), script_path)
        precheck_command = None
        if precheck and options.mode in (None, 0):
            pre = _precheck_options(options)
            precheck_command, _, _ = session.stage("pre-check", pre, read_report=pre.check_report)
        command, rc, run = session.stage("build", options)
        om = session.built_om(options, command, rc, run)
        return AtcResult(rc, command, list(run.tail), session.diagnostics, om, session.check_report, _s(log_path),
                         script_path, precheck_command)
    finally:
        if log_fh is not None:
            log_fh.close()


def _s(path) -> str | None:
    return None if path is None else os.fspath(path)
