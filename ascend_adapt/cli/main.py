"""`ascend-adapt` entry point.

Commands are listed here by name → "module:attribute" and imported only when invoked (or when
their own `--help` is asked for). Command modules import torch / mindspore / onnxruntime inside
their function bodies, never at module level, so `ascend-adapt --help` and
`ascend-adapt <cmd> --help` import none of them (tests/test_cli_lazy.py proves it).

Errors derived from `AscendAdaptError` are printed as "error: …  fix: …" with exit status 2, and
so are OSErrors nothing translated (a full disk names the bytes free). A SIGINT / SIGTERM / SIGHUP
while an output is written (`InterruptedBySignal`) removes the partial output and exits with
128 + the signal number (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import importlib
import sys

import click

from .. import __version__
from ..errors import AscendAdaptError, InterruptedBySignal

# name -> (module, attribute, one-line help). The help is here so `--help` needs no import.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "inspect": ("ascend_adapt.cli.cmd_inspect", "inspect_cmd",
                "Show architecture, parameters, dtypes, shards and sizes of a checkpoint."),
    "make-tiny": ("ascend_adapt.cli.cmd_inspect", "make_tiny_cmd",
                  "Write a tiny random checkpoint (llama / chatglm) in the real on-disk layout."),
    "generate": ("ascend_adapt.cli.cmd_generate", "generate_cmd",
                 "Generate text from a checkpoint or converted model on a backend."),
    "port": ("ascend_adapt.cli.cmd_port", "port_cmd",
             "Convert weights HF <-> MindSpore (streamed, one tensor in memory)."),
    "export": ("ascend_adapt.cli.cmd_export", "export_cmd",
               "Build prefill/decode ONNX graphs for an HF checkpoint (static KV cache)."),
    "analyze": ("ascend_adapt.cli.cmd_analyze", "analyze_cmd",
                "Check an ONNX model's ops against a target's ATC op table (no CANN needed)."),
    "ops": ("ascend_adapt.cli.cmd_ops", "ops_group",
            "List and show custom operators and rewrite rules."),
    "convert": ("ascend_adapt.cli.cmd_convert", "convert_cmd",
                "HF checkpoint or ONNX -> OM (with ATC) or simulator artifact, verified vs golden."),
    "run": ("ascend_adapt.cli.cmd_run", "run_cmd",
            "Run a converted artifact (.omsim / .om / .onnx) on inputs."),
    "compare": ("ascend_adapt.cli.cmd_compare", "compare_cmd",
                "Compare two runners/artifacts per output or layer by layer."),
    "debug": ("ascend_adapt.cli.cmd_debug", "debug_group",
              "Debugging tools (reduce a failing graph)."),
    "estimate": ("ascend_adapt.cli.cmd_estimate", "estimate_cmd",
                 "Estimate memory, tokens/s and compile cost on targets from config.json."),
    "serve": ("ascend_adapt.cli.cmd_serve", "serve_cmd",
              "Serve a model with an OpenAI-compatible API (continuous batching)."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx):
        return sorted(n for n in COMMANDS if self._exists(n))

    @staticmethod
    def _exists(name: str) -> bool:
        import importlib.util

        try:
            return importlib.util.find_spec(COMMANDS[name][0]) is not None
        except ImportError:
            return False

    def get_command(self, ctx, name):
        if name not in COMMANDS or not self._exists(name):
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        rows = [(n, COMMANDS[n][2]) for n in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ascend-adapt")
def cli():
    """Port Hugging Face LLMs to Ascend (Atlas 310/310P via ATC, 910 via MindSpore/torch_npu).

    Every command runs on a plain CPU through the simulator backend; when `atc`, pyACL,
    torch_npu or MindSpore-Ascend are present the same commands use them.
    """


def main(argv=None) -> int:
    """Run the CLI on `argv` (default: sys.argv[1:]) and return the exit status."""
    try:
        cli.main(args=argv, prog_name="ascend-adapt", standalone_mode=False)
    except AscendAdaptError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except InterruptedBySignal as exc:  # raised outside click's invoke (in-process callers)
        return _interrupted(exc)
    except click.exceptions.Abort as exc:
        # click turns a KeyboardInterrupt (our InterruptedBySignal is one) into Abort
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, InterruptedBySignal):
            return _interrupted(cause)
        click.echo("aborted", err=True)
        return 130
    except OSError as exc:  # not translated where it happened: a clear line, not a traceback
        return _os_error(exc)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except SystemExit as exc:  # commands may sys.exit(code)
        return int(exc.code or 0)
    return 0


def _interrupted(exc: InterruptedBySignal) -> int:
    click.echo(exc.report(), err=True)
    return exc.exit_code


def run() -> None:
    """The program's entry point (`ascend-adapt`, `python -m ascend_adapt`): `main()`, then exit.

    A signal while an output is written ends the process from the handler itself
    (`fsutil.exit_on_signal`): the cleanups run, one line is printed, `os._exit(128 + signum)`.
    Raising `InterruptedBySignal` instead unwinds through whatever was running; a SIGTERM that
    landed inside `import onnx` (its C extensions call back into Python while they initialize)
    aborted the interpreter, and convert exited with SIGSEGV / SIGABRT instead of 143. In this mode
    no `InterruptedBySignal` reaches `main()` (in-process callers of `main()` still get the
    exception's exit code).
    """
    from ..fsutil import exit_on_signal

    exit_on_signal()
    sys.exit(main())


def _os_error(exc: OSError) -> int:
    """Print an uncaught OSError as "error: … fix: …" and return 2 (ENOSPC / EDQUOT: the free bytes)."""
    import errno

    from ..fsutil import os_error_to_output_error

    err = os_error_to_output_error(exc)
    if err is None:
        what = exc.strerror or type(exc).__name__
        files = " -> ".join(f"'{f}'" for f in (exc.filename, exc.filename2) if f is not None)
        hints = {errno.EACCES: "check the permissions of that path, or choose another output path (-o)",
                 errno.EPERM: "check the permissions of that path, or choose another output path (-o)",
                 errno.EROFS: "write the output to a writable filesystem (-o)",
                 errno.ENOENT: "check that the path exists",
                 errno.ENOTDIR: "a part of that path is a file, not a directory",
                 errno.EISDIR: "that path is a directory; give a file path"}
        err = AscendAdaptError(f"{what}: {files}" if files else what,
                               hints.get(exc.errno, "check the path and the filesystem it is on"))
    click.echo(f"error: {err}", err=True)
    return 2


if __name__ == "__main__":  # pragma: no cover
    run()
