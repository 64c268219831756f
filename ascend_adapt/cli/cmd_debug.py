"""`ascend-adapt debug ...` (light: the library is imported when a command runs)."""

from __future__ import annotations

import shlex

import click


@click.group("debug")
def debug_group():
    """Debugging tools for graphs that fail to convert or lose accuracy."""


@debug_group.command("reduce")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.option("--check", "check", required=True, metavar="CHECK",
              help="sim-rejects | atc-fails | accuracy, or a command with {model}, "
                   "e.g. \"python my_check.py {model}\".")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Reduced model path [default: MODEL with .reduced.onnx]; the log goes beside it.")
@click.option("--fail-regex", default=None,
              help="A candidate fails only if this regex matches the check's output (for a command: "
                   "stdout+stderr, whatever its exit code).")
@click.option("--soc", "--target", "target", default="Ascend310P3", show_default=True,
              help="Target for the built-in checks.")
@click.option("--atol", type=float, default=1e-3, show_default=True, help="accuracy: absolute tolerance.")
@click.option("--rtol", type=float, default=1e-3, show_default=True, help="accuracy: relative tolerance.")
@click.option("--precision-mode", default="force_fp16", show_default=True, help="accuracy: simulator precision mode.")
@click.option("--mode", type=click.Choice(["both", "bisect", "linear"]), default="both", show_default=True,
              help="bisect over node ranges, then remove nodes one by one (both).")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("-q", "--quiet", is_flag=True, help="Do not print every check.")
def reduce_cmd(model, check, output, fail_regex, target, atol, rtol, precision_mode, mode, force, quiet):
    """Shrink MODEL to a minimal subgraph that still fails CHECK the same way.

    Bisects over node ranges in topological order, then removes nodes one at a time; each
    candidate is a standalone model (inputs = tensors produced outside it, outputs = tensors
    used outside it). Writes the reduced model and a log of every check.
    """
    from pathlib import Path

    from ascend_adapt.debug import reduce_model, write_reduced

    argv = ["ascend-adapt", "debug", "reduce", model, "--check", check, "-o", str(output or "")]
    for flag, value, default in (("--fail-regex", fail_regex, None), ("--soc", target, "Ascend310P3"),
                                 ("--mode", mode, "both")):
        if value != default:
            argv += [flag, str(value)]
    if check == "accuracy":
        argv += ["--atol", f"{atol:g}", "--rtol", f"{rtol:g}", "--precision-mode", precision_mode]
    out = Path(output) if output else Path(model).with_name(Path(model).stem + ".reduced.onnx")
    argv[argv.index("-o") + 1] = str(out)
    command = shlex.join(argv)
    from ascend_adapt.fsutil import check_output

    check_output(out, force, inputs=[model])
    opts = {"target": target}
    if check == "accuracy":
        opts.update(atol=atol, rtol=rtol, precision_mode=precision_mode)
    step = None if quiet else (lambda s: click.echo(s.line()))
    result = reduce_model(model, check, fail_regex=fail_regex, mode=mode, on_step=step, **opts)
    path, log = write_reduced(result, out, force=force, command=command, inputs=[model])
    click.echo(result.summary())
    click.echo(f"wrote {path} ({len(result.kept)} nodes) and {log}")
