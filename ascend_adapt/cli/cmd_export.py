"""`ascend-adapt export` (light: no onnx / torch / onnxruntime at import)."""

from __future__ import annotations

import importlib.util

import click

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
def export_cmd(hf_dir, out_dir, seq_len, max_len, batch, soc, weight_dtype, opset, force, quiet, gears):
    """Build static prefill/decode ONNX graphs (KV cache as input) for the checkpoint HF_DIR.

    The graphs are built from the architecture's spec with weights streamed one tensor at a time
    into one shared external-data file; the I/O contract is in docs/graph_contract.md.
    Architectures without a builder fall back to the traced export when it is installed.
    """
    from ascend_adapt.errors import UnsupportedError
    from ascend_adapt.om_convert.builder import build_llm_onnx

    from ascend_adapt.om_convert.atc.gearspec import parse_prefill_gears

    prefill_gears = parse_prefill_gears(gears) if gears is not None else None
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
                           gears=prefill_gears)
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
    if target is not None:
        click.echo(f"  every node is in {target.name}'s ATC op table at opset {opset}")
        _analyze_summary(r, target)
    for kind in r.paths:
        click.echo(f"  keep_dtype candidates ({kind}): {len(m['keep_dtype'][kind])} nodes ({m['keep_dtype_files'][kind]})")


def _analyze_summary(r, target) -> None:
    """Print `analyze`'s verdict on both graphs when the analyzer is installed."""
    try:
        found = importlib.util.find_spec("ascend_adapt.om_convert.analyze") is not None
    except ImportError:
        found = False
    if not found:
        return
    from ascend_adapt.om_convert.analyze import analyze_model

    from ascend_adapt.om_convert.builder.contract import graph_input_shapes

    for kind, path in r.paths.items():
        shapes = None if kind == "step" else graph_input_shapes(r.manifest, kind)[0]
        report = analyze_model(str(path), target, rules=False, input_shapes=shapes)
        click.echo(f"  analyze --soc {target.name} {kind}.onnx: {report.verdict()} "
                   f"({report.node_count} nodes, {len(report.rows)} op types)")
        for line in report.blocking:
            click.echo(f"    {line}")
