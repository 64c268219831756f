"""`ascend-adapt convert` (light at import: the pipeline loads inside the command)."""

from __future__ import annotations

import json

import click


def _gears(text):
    if not text:
        return None
    return [tuple(int(x) for x in g.split(",") if x.strip()) for g in text.split(";") if g.strip()]


@click.command("convert")
@click.argument("source", type=click.Path(exists=True, path_type=str))
@click.option("--soc", required=True, help="Target: Ascend310P3, Ascend310, Ascend310B1, Ascend910B, Atlas300IDuo, …")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=str), help="Output directory.")
@click.option("--precision-mode", default="force_fp16", show_default=True,
              help="ATC --precision_mode (force_fp16, allow_fp32_to_fp16, must_keep_origin_dtype, "
                   "allow_mix_precision, …) or a --precision_mode_v2 name (fp16, origin, mixed_float16).")
@click.option("--seq-len", type=int, default=32, show_default=True, help="LLM prefill length S (static).")
@click.option("--max-len", type=int, default=96, show_default=True, help="LLM KV-cache slots M.")
@click.option("--batch", type=int, default=1, show_default=True)
@click.option("--input-shape", default=None, help='ONNX input: ATC syntax, e.g. "x:1,-1;mask:1,-1" (-1 = gear dim).')
@click.option("--gears", default=None,
              help='HF input: prefill lengths, e.g. "16;32;64": one step graph, decode = gear 1, one OM that '
                   'holds the weights once. ONNX input: --dynamic_dims profiles, e.g. "1,8;4,8".')
@click.option("--keep-dtype", multiple=True, help="Ops kept in fp32: node names / OpType::<Type>, comma lists or a file.")
@click.option("--cann", "cann_version", default=None, help="CANN version to check opsets against.")
@click.option("--weight-dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--atc", "use_atc", type=click.Choice(["auto", "never", "always"]), default="auto", show_default=True,
              help="Run ATC when found (auto), never, or fail without it (always).")
@click.option("--no-verify", is_flag=True, help="Skip the verification against the golden.")
@click.option("--verify-tokens", type=int, default=16, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--force", is_flag=True, help="Replace the output directory.")
def convert_cmd(source, soc, out, precision_mode, seq_len, max_len, batch, input_shape, gears, keep_dtype,
                cann_version, weight_dtype, use_atc, no_verify, verify_tokens, as_json, force):
    """HF checkpoint or ONNX → OM (ATC) or simulator artifact, verified against the golden.

    export → analyze → rewrite → atc (or the simulator artifact `model.omsim` when ATC is absent;
    the exact atc commands are always written to OUT/atc/*.sh) → verify → report.
    """
    from ascend_adapt.om_convert.convert import convert

    report = convert(source, out, soc=soc, precision_mode=precision_mode, seq_len=seq_len, max_len=max_len,
                     batch=batch, input_shape=input_shape, gears=_gears(gears), keep_dtype=list(keep_dtype) or None,
                     cann_version=cann_version, weight_dtype={"fp32": "float32", "fp16": "float16"}[weight_dtype],
                     use_atc=use_atc, verify=not no_verify, verify_tokens=verify_tokens, force=force,
                     progress=not as_json, on_step=None if as_json else (lambda m: click.echo(m, err=True)))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        click.echo(report.to_text())
    if report.verify and not report.passed:
        raise SystemExit(1)
