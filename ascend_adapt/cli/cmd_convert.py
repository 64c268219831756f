"""`ascend-adapt convert` (light at import: the pipeline loads inside the command)."""

from __future__ import annotations

import json

import click

from ascend_adapt.cli.options import SMOOTH_ALPHA


def _gears(text: str | None, source: str, input_shape: str | None) -> list[tuple[int, ...]] | None:
    """--gears for `source`: prefill lengths of a checkpoint ("16;32;64" or "16,32,64"), or the
    --dynamic_dims profiles of an ONNX file (one value per -1 of --input-shape, "1,8;4,8").

    Both go through the one parser, `om_convert.atc.gearspec`; a bad value is a ConfigError
    quoting the token, never a different gear set.
    """
    if text is None:
        return None
    from pathlib import Path

    from ascend_adapt.om_convert.atc.gearspec import (count_dynamic_dims, parse_gears, parse_input_shape,
                                                      parse_prefill_gears)

    if not Path(source).is_file():  # an HF checkpoint directory: each gear is one prefill length
        return [(g,) for g in parse_prefill_gears(text)]
    per_gear = count_dynamic_dims(parse_input_shape(input_shape)) if input_shape else None
    return list(parse_gears(text, values_per_gear=per_gear or None))


@click.command("convert")
@click.argument("source", type=click.Path(exists=True, path_type=str))
@click.option("--soc", required=True, help="Target: Ascend310P3, Ascend310, Ascend310B1, Ascend910B, Atlas300IDuo, …")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=str), help="Output directory.")
@click.option("--precision-mode", default=None,
              help="The target toolchain's precision mode. ATC: --precision_mode (force_fp16, allow_fp32_to_fp16, "
                   "must_keep_origin_dtype, allow_mix_precision, …) or a --precision_mode_v2 name (fp16, origin, "
                   "mixed_float16); MagicMind (MLU370): precision_config (force_float16, force_float32). "
                   "[default: the toolchain's: force_fp16 for ATC, force_float16 for MagicMind]")
@click.option("--seq-len", type=int, default=None,
              help="LLM longest prompt S: the largest prefill gear (step layout: gears are the powers of two "
                   "from 16 up to S) or the static prefill length (two-graph layout). "
                   "[default: min(512, M/2), leaving at least half the slots for generated tokens]")
@click.option("--max-len", type=int, default=None,
              help="LLM KV-cache slots M (the context: prompt + generated tokens). [default: min(2048, the "
                   "model's max_position_embeddings / ChatGLM seq_length): a chat turn with history, 1 GiB of "
                   "fp16 KV cache for a 7B; the static cache is read whole every decode step, so a larger M "
                   "costs speed even when unused]")
@click.option("--layout", type=click.Choice(["step", "two-graph"]), default=None,
              help="LLM graph layout. step (default): ONE step graph, prefill gears + decode gear 1, one OM "
                   "holding the weights once. two-graph: prefill.onnx + decode.onnx, two OMs that EACH hold "
                   "the weights (twice the device memory).")
@click.option("--batch", type=int, default=1, show_default=True)
@click.option("--input-shape", default=None, help='ONNX input: ATC syntax, e.g. "x:1,-1;mask:1,-1" (-1 = gear dim).')
@click.option("--gears", default=None,
              help='HF input: prefill lengths, "16;32;64" or "16,32,64" (the same three gears; mixing ; and , '
                   'is refused): one step graph, decode = gear 1, one OM that holds the weights once. '
                   'ONNX input: --dynamic_dims profiles, ";" between gears, "," between the values of one '
                   'gear (one per -1 of --input-shape), e.g. "1;4;8" or "1,8;4,8". Positive integers, no repeats.')
@click.option("--keep-dtype", multiple=True, help="Ops kept in fp32: node names / OpType::<Type>, comma lists or a file.")
@click.option("--cann", "cann_version", default=None, help="CANN version to check opsets against.")
@click.option("--weight-dtype", type=click.Choice(["fp32", "fp16"]), default=None,
              help="Exported LLM weights (and activations). [default: what the card stores under the precision "
                   "mode: fp16 for force_fp16 / allow_fp32_to_fp16 / mixed modes, the checkpoint's dtype for "
                   "must_keep_origin_dtype (bf16 → fp32)]")
@click.option("--atc", "use_atc", type=click.Choice(["auto", "never", "always"]), default="auto", show_default=True,
              help="Run the target's compiler (ATC; MagicMind for MLU370) when found (auto), never, or fail "
                   "without it (always).")
@click.option("--no-verify", is_flag=True,
              help="Skip the verification against the golden. (Without it, an LLM golden that does not fit this "
                   "machine's MemAvailable in fp32 runs in the checkpoint's fp16/bf16, or the verify is skipped "
                   "with the reason in the report.)")
@click.option("--verify-tokens", type=int, default=16, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--force", is_flag=True, help="Replace the output directory.")
@click.option("--chips", type=int, default=1, show_default=True,
              help="HF input: split the layers over N chips (contiguous ranges, one OM per chip, each holding "
                   "its layers' weights and KV cache; embedding on the first, head on the last). The fit check "
                   "is then per chip; a refusal on one chip names the N that fits.")
@click.option("--device-ids", default=None,
              help="With --chips N: the NPU of each chip, comma-separated, e.g. 0,1. [default: 0..N-1]")
@click.option("--quantize", default=None, metavar="w8a16|w8a8",
              help="HF input: int8 Linear weights. w8a16: weight-only, AscendAntiQuant (no calibration). "
                   "w8a8: SmoothQuant + static int8 activations, AscendQuant → int8 MatMul → AscendDequant "
                   "(calibrates with the fp32 golden). docs/quantization.md")
@click.option("--group-size", type=int, default=None,
              help="w8a16: one scale per this many input channels (must divide them) instead of per output channel.")
@click.option("--calib", default=None, metavar="FILE|builtin",
              help="w8a8 calibration prompts: a text file (one prompt per line) or JSON lines, or builtin. "
                   "[default: builtin]")
@click.option("--smooth-alpha", type=SMOOTH_ALPHA, default=None,
              help="w8a8 SmoothQuant migration strength: auto, or one α in [0, 1] for every Linear. [default: auto: per input group, "
                   "the α of 0, 0.1, …, 1 with the least held-out int8 output error on the calibration set]")
@click.option("--keep-fp16", default=None,
              help='w8a8: which Linears stay fp16, "key=value;…" (lm_head, edge_layers, edge_linears, '
                   'outlier_linears, outlier_ratio, max_error, keep) or a JSON file; printed in the report. '
                   '[default: lm_head=true;edge_layers=1;edge_linears=mlp.down;outlier_linears=mlp.down;'
                   'outlier_ratio=32;max_error=0.04]')
@click.option("--no-accuracy", is_flag=True,
              help="--quantize: skip the accuracy step after verify (the quantized artifact on the simulator "
                   "against the unquantized golden verify loaded: per-layer error, greedy-token agreement over "
                   "--verify-tokens steps, perplexity on a fixed text). --no-verify skips it too.")
@click.option("--accuracy-ppl/--no-accuracy-ppl", default=None,
              help="--quantize: measure the accuracy step's perplexity (2986 SmolLM2 tokens of a fixed text), or "
                   "not. [default: when the weights are real: skipped where config.json says "
                   "\"ascend_adapt_random_weights\": true, as make-tiny writes]")
def convert_cmd(source, soc, out, precision_mode, seq_len, max_len, layout, batch, input_shape, gears, keep_dtype,
                cann_version, weight_dtype, use_atc, no_verify, verify_tokens, as_json, force, chips, device_ids,
                quantize, group_size, calib, smooth_alpha, keep_fp16, no_accuracy, accuracy_ppl):
    """HF checkpoint or ONNX → OM (ATC) or simulator artifact, verified against the golden.

    fit → export → analyze → rewrite → compile with the target's toolchain (ATC: the exact atc
    commands always in OUT/atc/*.sh and the .om where ATC is found; MagicMind for MLU370: build
    scripts in OUT/magicmind/) plus the simulator artifact `model.omsim` → verify → report. The fit
    check (HF input) runs first from config.json: a model that cannot fit the chip is refused
    before anything is written, with what would fit.
    """
    from ascend_adapt.checkpoint.gguf_io import is_gguf, resolve_source
    from ascend_adapt.om_convert.convert import convert

    if is_gguf(source):  # a llama.cpp file: unpacked once into the cache as an HF checkpoint
        source = str(resolve_source(source, note=None if as_json else (lambda m: click.echo(m, err=True))))
    report = convert(source, out, soc=soc, precision_mode=precision_mode, seq_len=seq_len, max_len=max_len,
                     batch=batch, input_shape=input_shape, gears=_gears(gears, source, input_shape), keep_dtype=list(keep_dtype) or None,
                     cann_version=cann_version, layout=layout,
                     weight_dtype={"fp32": "float32", "fp16": "float16", None: None}[weight_dtype],
                     use_atc=use_atc, verify=not no_verify, verify_tokens=verify_tokens, force=force,
                     chips=chips, device_ids=device_ids, quantize=quantize, group_size=group_size, calib=calib,
                     smooth_alpha=smooth_alpha, keep_fp16=keep_fp16, accuracy=not no_accuracy,
                     accuracy_ppl=accuracy_ppl,
                     progress=not as_json, on_step=None if as_json else (lambda m: click.echo(m, err=True)))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        click.echo(report.to_text())
    if report.verify and not report.passed:
        raise SystemExit(1)
