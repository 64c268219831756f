"""`ascend-adapt` entry point.

Commands are listed here by name → "module:attribute" and imported only when invoked (or when
their own `--help` is asked for). Command modules import torch / mindspore / onnxruntime inside
their function bodies, never at module level, so `ascend-adapt --help` and
`ascend-adapt <cmd> --help` import none of them (tests/test_cli_lazy.py proves it).

Errors derived from `AscendAdaptError` are printed as "error: …  fix: …" with exit status 2.
"""

from __future__ import annotations

import importlib
import sys

import click

from .. import __version__
from ..errors import AscendAdaptError

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
    try:
        cli.main(args=argv, prog_name="ascend-adapt", standalone_mode=False)
    except AscendAdaptError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except SystemExit as exc:  # commands may sys.exit(code)
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
