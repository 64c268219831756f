"""`ascend-adapt estimate` (light: the library is imported when the command runs)."""

from __future__ import annotations

import click


@click.command("estimate")
@click.argument("model", type=click.Path(exists=True, path_type=str))
@click.option("--soc", "socs", multiple=True, metavar="TARGET",
              help="Target profile name (repeatable). Default: Ascend310, Ascend310P3, Atlas300IDuo, "
                   "Ascend310B1, Ascend910B, MLU370.")
@click.option("--precision", type=click.Choice(["fp16", "w8a16", "w4a16"]), default="fp16", show_default=True)
@click.option("--seq-len", type=int, default=None, help="Context held by the static KV cache [default: min(2048, max_position)].")
@click.option("--batch", type=int, default=1, show_default=True)
@click.option("--prompt-len", type=int, default=None, help="Prefill tokens [default: seq-len, the largest gear].")
@click.option("--group-size", type=int, default=None, metavar="G",
              help="Scale grouping of --precision w8a16 / w4a16 along the input dim: one scale per G input "
                   "channels of each output row (convert/export/port --group-size G; it must divide every "
                   "Linear's input size for w8a16). Default: w8a16 one scale per output channel, w4a16 128.")
@click.option("--efficiency", type=float, default=None,
              help="Memory efficiency of the cost model for every target (default: the target data "
                   "file's, fitted on a published figure where one exists).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def estimate_cmd(model, socs, precision, seq_len, batch, prompt_len, group_size, efficiency, fmt):
    """Memory, decode tokens/s, prefill latency and ATC compile cost of MODEL on targets.

    MODEL is an HF checkpoint directory or its config.json: no weights are read. Every figure is
    an estimate from the target data files (the simulator's cost model over the graph convert
    builds); the report prints the formulas, the efficiencies and the published figure each was
    fitted on, with the error on the others.
    """
    from ascend_adapt.estimate import estimate, format_report

    report = estimate(model, list(socs) or None, precision, seq_len, batch, prompt_len=prompt_len,
                      efficiency=efficiency, group_size=group_size)
    click.echo(report.to_json() if fmt == "json" else format_report(report))
