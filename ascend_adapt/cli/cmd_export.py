"""`ascend-adapt export` (light: no onnx / torch / onnxruntime at import)."""

from __future__ import annotations

import importlib.util

import click

from ascend_adapt.cli.options import SMOOTH_ALPHA

_DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16"}


def _traced_export_available() -> bool:
    try:
        return importlib.util.find_spec("ascend_adapt.om_convert.traced_export") is not None
    except ImportError:
        return False


@click.command("export")
@click.argument("hf_dir", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=str),
              help="Export directory to create (prefill.onnx, decode.onnx, weights.bin, export.json).")
@click.option("--seq-len", type=int, default=None,
              help="Prefill length S (prompts are left-padded to it). [default: min(512, M/2), as convert]")
@click.option("--max-len", type=int, default=None,
              help="KV-cache slots M of the decode graph. [default: min(2048, the model's maximum positions), "
                   "as convert]")
@click.option("--batch", type=int, default=1, show_default=True, help="Static batch B of both graphs.")
@click.option("--soc", default=None,
              help="Target (e.g. Ascend310P3): checks the opset and every node against its ATC op table.")
@click.option("--weight-dtype", type=click.Choice(sorted(_DTYPES)), default=None,
              help="Stored weights and activations (graph I/O stays float32; fp32 islands stay fp32). "
                   "[default: fp16 with --soc (what the card stores under ATC's default force_fp16, as convert "
                   "does), fp32 without (a reference export for onnxruntime)]")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (13-18; ATC parses ≤ 18).")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--gears", default=None,
              help='Prefill lengths, "16;32;64" or "16,32,64" (the same three gears; mixing ; and , is refused; '
                   'positive integers, no repeats): build ONE step.onnx (decode = gear 1) for ATC --dynamic_dims.')
@click.option("--quantize", default=None, metavar="w8a16|w8a8",
              help="int8 Linear weights: w8a16 (AscendAntiQuant, weight-only) or w8a8 (SmoothQuant, AscendQuant → "
                   "int8 MatMul → AscendDequant; calibrates with the fp32 golden). docs/quantization.md")
@click.option("--group-size", type=int, default=None,
              help="w8a16: one scale per this many input channels instead of per output channel.")
@click.option("--calib", default=None, metavar="FILE|builtin",
              help="w8a8 calibration prompts (a file, or builtin). [default: builtin]")
@click.option("--smooth-alpha", type=SMOOTH_ALPHA, default=None, help="w8a8 SmoothQuant α: auto, or a number in [0, 1] for every Linear. [default: auto, searched per input group]")
@click.option("--keep-fp16", default=None,
              help='w8a8: the Linears kept fp16, "key=value;…" or a JSON file (docs/quantization.md).')
@click.option("--format", "fmt", type=click.Choice(["onnx", "msmodelslim"]), default="onnx", show_default=True,
              help="onnx: the graphs for ATC. msmodelslim: W8A8 safetensors + quant_model_description.json for "
                   "vLLM-Ascend / MindIE (needs --quantize w8a8; docs/quantization.md).")
def export_cmd(hf_dir, out_dir, seq_len, max_len, batch, soc, weight_dtype, opset, force, quiet, gears,
               quantize, group_size, calib, smooth_alpha, keep_fp16, fmt):
    """Build static prefill/decode ONNX graphs (KV cache as input) for the checkpoint HF_DIR.

    The graphs are built from the architecture's spec with weights streamed one tensor at a time
    into one shared external-data file; the I/O contract is in docs/graph_contract.md.
    Architectures without a builder fall back to the traced export when it is installed.
    """
    if fmt == "msmodelslim":
        _export_msmodelslim(hf_dir, out_dir, quantize, group_size, calib, smooth_alpha, keep_fp16, force, quiet)
        return
    from ascend_adapt.errors import UnsupportedError
    from ascend_adapt.om_convert.builder import build_llm_onnx

    from ascend_adapt.om_convert.atc.gearspec import parse_prefill_gears

    prefill_gears = parse_prefill_gears(gears) if gears is not None else None
    qkw = {}
    if quantize is not None or group_size is not None or calib is not None or smooth_alpha is not None \
            or keep_fp16 is not None:
        from ascend_adapt.om_convert.builder.quantize import prepare

        qkw = prepare(hf_dir, quantize, group_size=group_size, calib=calib, smooth_alpha=smooth_alpha,
                      keep_fp16=keep_fp16, note=None if quiet else (lambda m: click.echo(m, err=True)))
        if qkw.get("w8a8_plan") is not None:
            for line in qkw["w8a8_plan"].summary():
                click.echo(line)
    target = None
    if soc:
        from ascend_adapt.targets import load_target

        target = load_target(soc)
    weight_dtype = weight_dtype or ("fp16" if soc else "fp32")
    if max_len is None or seq_len is None:
        from ascend_adapt.errors import UnsupportedError as _NoAdapter
        from ascend_adapt.estimate.core import spec_for
        from ascend_adapt.om_convert.convert import default_context

        try:
            max_len, seq_len = default_context(spec_for(hf_dir)[0], max_len, seq_len)
        except _NoAdapter:  # no adapter: the traced export below uses S only
            max_len, seq_len = max_len or 256, seq_len or 64
    try:
        r = build_llm_onnx(hf_dir, out_dir, batch=batch, seq_len=seq_len, max_len=max_len, target=target,
                           opset=opset, weight_dtype=_DTYPES[weight_dtype], force=force, progress=not quiet,
                           gears=prefill_gears, **qkw)
    except UnsupportedError as exc:
        if "unsupported architecture" not in exc.message or not _traced_export_available():
            raise
        from pathlib import Path

        from ascend_adapt.om_convert.traced_export import export_traced

        click.echo(f"{exc.message}: no graph builder for it; using the traced export (static shapes, no KV cache)",
                   err=True)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        res = export_traced(hf_dir, Path(out_dir) / "model.onnx", opset=opset, seq_len=seq_len, batch=batch,
                            target=target, force=force)
        click.echo(f"wrote {res.path} (traced export)")
        return
    m = r.manifest
    shape = f"gears {m['gears']}" if m.get("gears") else f"S={seq_len}"
    click.echo(f"wrote {r.out_dir}: {m['arch']}, B={batch} {shape} M={max_len}, opset {opset}, "
               f"{m['weight_dtype']} weights")
    graphs = ", ".join(f"{k}.onnx {r.proto_bytes[k] / 1e3:.0f} kB" for k in r.paths)
    click.echo(f"  {graphs}, weights.bin {r.weights_bytes / 1e6:.1f} MB "
               f"({r.num_tensors} tensors) in {r.elapsed_s:.1f} s")
    click.echo(f"  ops: {', '.join(r.op_types)}")
    if m.get("quantization"):
        q = m["quantization"]
        click.echo(f"  {q['mode']}: {len(q['quantized'])} Linears int8 ({q['granularity']}), "
                   f"scales {q['scale_bytes'] / 1e6:.2f} MB")
    if target is not None:
        click.echo(f"  every node is in {target.name}'s ATC op table at opset {opset}")
        _analyze_summary(r, target)
    for kind in r.paths:
        click.echo(f"  keep_dtype candidates ({kind}): {len(m['keep_dtype'][kind])} nodes ({m['keep_dtype_files'][kind]})")


def _export_msmodelslim(hf_dir, out_dir, quantize, group_size, calib, smooth_alpha, keep_fp16, force, quiet) -> None:
    """`export --format msmodelslim`: the W8A8 weights in msModelSlim's format (ascend_adapt.quant.msmodelslim)."""
    from ascend_adapt.errors import ConfigError

    if str(quantize).lower() != "w8a8" or group_size is not None:
        raise ConfigError("--format msmodelslim writes W8A8 weights: it needs --quantize w8a8 (and no --group-size)",
                          "add --quantize w8a8 [--calib FILE|builtin] [--smooth-alpha A], or use --format onnx")
    from ascend_adapt.quant.msmodelslim import export_msmodelslim
    from ascend_adapt.quant.smoothquant import check_alpha, format_alpha, plan_w8a8

    from ascend_adapt.fsutil import check_output

    check_output(out_dir, force, inputs=[hf_dir])  # before the calibration run, not after it
    note = None if quiet else (lambda m: click.echo(m, err=True))
    alpha = check_alpha("auto" if smooth_alpha is None else smooth_alpha)
    if note:
        note(f"[msmodelslim] calibrating on {calib or 'builtin'} (SmoothQuant α={format_alpha(alpha)}) with the fp32 golden")
    plan = plan_w8a8(hf_dir, calib=calib or "builtin", alpha=alpha, rule=keep_fp16)
    for line in plan.summary():
        click.echo(line)
    out = export_msmodelslim(hf_dir, out_dir, plan, force=force, note=note)
    click.echo(f"wrote {out}: quant_model_weights.safetensors + quant_model_description.json (W8A8); "
               f"serve with vLLM-Ascend: vllm serve {out} --quantization ascend")


def _analyze_summary(r, target) -> None:
    """Print `analyze`'s verdict on both graphs when the analyzer is installed."""
    try:
        found = importlib.util.find_spec("ascend_adapt.om_convert.analyze") is not None
    except ImportError:
        found = False
    if not found:
        return
    from ascend_adapt.om_convert.analyze import analyze_model

    from ascend_adapt.contract import graph_input_shapes

    for kind, path in r.paths.items():
        shapes = None if kind == "step" else graph_input_shapes(r.manifest, kind)[0]
        report = analyze_model(str(path), target, rules=False, input_shapes=shapes)
        click.echo(f"  analyze --soc {target.name} {kind}.onnx: {report.verdict()} "
                   f"({report.node_count} nodes, {len(report.rows)} op types)")
        for line in report.blocking:
            click.echo(f"    {line}")
