"""`ascend-adapt compare` (light: the library is imported when the command runs)."""

from __future__ import annotations

import shlex
import sys

import click


@click.command("compare")
@click.argument("a", metavar="A")
@click.argument("b", metavar="B")
@click.option("--inputs", default=None,
              help="An .npz of arrays by input name, an .npy of token ids, or ids like 1,15,27 "
                   "(default: seeded random).")
@click.option("--atol", type=float, default=None,
              help="Absolute tolerance for every tensor [default: derived per tensor at LM level from the "
                   "sides' compute precisions, the model and the tensor's depth; 1e-3 at graph level].")
@click.option("--rtol", type=float, default=None,
              help="Relative tolerance for every tensor [default: derived as --atol; 1e-3 at graph level].")
@click.option("--layerwise", is_flag=True, help="Also compare every intermediate tensor matched by name.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--plot", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Write a PNG of the error per layer.")
@click.option("--target", default=None, help="Simulator target for sim:FILE.onnx (an .omsim names its own).")
@click.option("--precision-mode", default=None, help="Override the simulator side's precision mode.")
@click.option("--keep-dtype", "keep_dtype_file", type=click.Path(exists=True, dir_okay=False, path_type=str),
              default=None, help="A keep_dtype file for the simulator side (one node name / OpType::X per line).")
@click.option("--no-fix", is_flag=True, help="Do not diagnose fp16 failures / propose keep_dtype.")
@click.option("--fix-dir", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Where to write keep_dtype.cfg / modify_mixlist.json [default: beside B].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32",
              show_default=True, help="Compute dtype of torch / MindSpore sides.")
def compare_cmd(a, b, inputs, atol, rtol, layerwise, fmt, plot, target, precision_mode, keep_dtype_file, no_fix,
                fix_dir, seed, dtype):
    """Compare B against the reference A on the same inputs (exit 0 PASSED, 1 FAILED).

    A and B: an HF checkpoint dir (torch fp32 golden), an export dir (onnxruntime), a MindSpore
    port dir, an .onnx file, sim:FILE.onnx (simulator), DIR.omsim (simulator with its manifest's
    precision; DIR.omsim#prefill for one graph), or an .om (pyACL on a card). Prints per output
    (and per layer with --layerwise) max/mean abs error, relative error, cosine, p90/p99, the
    minimum atol/rtol that would have passed and the first layer that diverges. Without --atol /
    --rtol the tolerance is derived from the arithmetic (docs/tools.md, "compare"). An fp16-only
    failure of a simulator side gets a keep_dtype / modify_mixlist proposal, re-checked.
    """
    from ascend_adapt.compare import compare, format_report

    argv = ["ascend-adapt", "compare", a, b]
    for flag, value, default in (("--inputs", inputs, None), ("--atol", atol, None), ("--rtol", rtol, None),
                                 ("--format", fmt, "text"), ("--plot", plot, None), ("--target", target, None),
                                 ("--precision-mode", precision_mode, None), ("--keep-dtype", keep_dtype_file, None),
                                 ("--fix-dir", fix_dir, None), ("--seed", seed, 0), ("--dtype", dtype, "float32")):
        if value != default:
            argv += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    if layerwise:
        argv.append("--layerwise")
    if no_fix:
        argv.append("--no-fix")
    keep = None
    if keep_dtype_file:
        from ascend_adapt.sim.settings import read_keep_dtype

        keep = list(read_keep_dtype(keep_dtype_file))
    report = compare(a, b, inputs=inputs, atol=atol, rtol=rtol, layerwise=layerwise, target=target,
                     precision_mode=precision_mode, keep_dtype=keep, seed=seed, fix=not no_fix, fix_dir=fix_dir,
                     command=shlex.join(argv), plot=plot, dtype=dtype)
    click.echo(report.to_json() if fmt == "json" else format_report(report))
    sys.exit(0 if report.passed else 1)
