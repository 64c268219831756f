"""`ascend-adapt port`: weights HF <-> MindSpore, streamed (light: no mindspore / torch at import)."""

from __future__ import annotations

import click

from ascend_adapt.cli.options import SMOOTH_ALPHA


def _parse_size(text: str | None) -> int | None:
    if not text:
        return None
    t = text.strip().upper().replace("IB", "").replace("B", "")
    units = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    mult = units.get(t[-1:], 1)
    num = t[:-1] if t[-1:] in units else t
    try:
        return int(float(num) * mult)
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a size (e.g. 5GB, 500MB)") from None


@click.command("port")
@click.argument("src", type=click.Path(exists=True, path_type=str))
@click.option("--to", "to", type=click.Choice(["mindspore", "hf", "torch-npu", "torch-mlu"]), required=True,
              help="mindspore: HF/Meta checkpoint -> MindSpore; hf: a port output -> HF safetensors; "
                   "torch-npu / torch-mlu: a porting script + op-coverage report (docs/torch_npu.md).")
@click.option("--soc", default=None, help="--to torch-npu / torch-mlu: target SoC (e.g. Ascend910B4, Ascend310P3, "
                                          "MLU370); sets the dtype policy.")
@click.option("-o", "--out", required=True, type=click.Path(path_type=str), help="Output directory.")
@click.option("--dtype", type=click.Choice(["fp16", "bf16", "fp32", "float16", "bfloat16", "float32"]),
              default=None, help="Cast floating weights (default: keep the source's dtype; round trips are bit-exact).")
@click.option("--naming", type=click.Choice(["ours", "mindformers"]), default="ours", show_default=True,
              help="Tensor names: ours = canonical names (our MindSpore cells); mindformers = MindFormers' names.")
@click.option("--format", "fmt", type=click.Choice(["ckpt", "safetensors"]), default="ckpt", show_default=True,
              help="MindSpore checkpoint format.")
@click.option("--max-shard-size", default=None, help="Shard safetensors outputs (e.g. 5GB). --to hf defaults to 5GB.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists (only once the new output is complete).")
@click.option("--no-verify", is_flag=True, help="--to hf: skip the per-tensor CRC32 check against the manifest.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--mindir", is_flag=True, help="--to mindspore: also export prefill/decode MindIR graphs into OUT/mindir.")
@click.option("--seq-len", type=int, default=None, help="MindIR prefill length (prompts padded to it).")
@click.option("--max-len", type=int, default=None, help="MindIR KV-cache slots (default 2 x --seq-len).")
@click.option("--quantize", default=None, metavar="w8a16|w8a8",
              help="--to mindspore: int8 Linear weights with their scales, the Linears and arithmetic of export "
                   "--quantize; run by `generate --backend mindspore` (docs/mindspore.md, docs/quantization.md).")
@click.option("--group-size", type=int, default=None,
              help="w8a16: one scale per this many input channels instead of per output channel.")
@click.option("--calib", default=None, metavar="FILE|builtin",
              help="w8a8 calibration prompts (a file, or builtin). [default: builtin]")
@click.option("--smooth-alpha", type=SMOOTH_ALPHA, default=None,
              help="w8a8 SmoothQuant α: auto, or a number in [0, 1] for every Linear. [default: auto, searched per input group]")
@click.option("--keep-fp16", default=None,
              help='w8a8: the Linears kept in float, "key=value;…" or a JSON file (docs/quantization.md).')
def port_cmd(src, to, out, soc, dtype, naming, fmt, max_shard_size, force, no_verify, no_progress, mindir,
             seq_len, max_len, quantize, group_size, calib, smooth_alpha, keep_fp16):
    """Convert weights between Hugging Face and MindSpore, one tensor in memory at a time.

    \b
    ascend-adapt port llama-2-7b-hf --to mindspore -o llama-ms --dtype fp16 --naming mindformers
    ascend-adapt port chatglm-6b --to mindspore -o glm-ms --format safetensors --mindir --seq-len 128
    ascend-adapt port llama-ms --to hf -o llama-hf-again
    ascend-adapt port llama-2-7b-hf --to mindspore -o llama-w8 --quantize w8a16 [--group-size 128]
    ascend-adapt port llama-2-7b-hf --to mindspore -o llama-w8a8 --quantize w8a8 --calib builtin

    The output directory keeps config.json, the tokenizer files and ascend_adapt_port.json (spec,
    naming, format, dtype, per-tensor CRC32, source files); it is written under a temporary name
    and renamed when complete, so a failed conversion leaves nothing behind.
    """
    from ascend_adapt.errors import ConfigError
    from ascend_adapt.port import port_to_hf, port_to_mindspore

    from ascend_adapt.checkpoint.gguf_io import is_gguf, resolve_source

    if is_gguf(src) and to == "mindspore":  # a llama.cpp file: unpacked once into the cache
        src = str(resolve_source(src, note=lambda m: click.echo(m, err=True)))
    quant_given = [f"--{n}" for n, v in (("quantize", quantize), ("group-size", group_size), ("calib", calib),
                                          ("smooth-alpha", smooth_alpha), ("keep-fp16", keep_fp16)) if v is not None]
    if quant_given and to == "hf":
        raise ConfigError(f"--to hf does not quantize ({', '.join(quant_given)})",
                          "a Hugging Face checkpoint is written in float; quantize on the way to MindSpore "
                          "(--to mindspore --quantize w8a16|w8a8) or with export / convert")
    if quant_given and to in ("torch-npu", "torch-mlu"):
        raise ConfigError(f"--to {to} writes a porting script and an op-coverage report, no weights: "
                          f"{', '.join(quant_given)} has nothing to act on",
                          "drop the quantization options; int8 on Ascend: port --to mindspore --quantize, or "
                          "export / convert --quantize")
    if to in ("torch-npu", "torch-mlu"):
        if mindir or dtype or naming != "ours" or fmt != "ckpt" or max_shard_size:
            raise ConfigError(f"--to {to} writes a script and a report, not weights",
                              "drop --dtype / --naming / --format / --mindir / --max-shard-size (the dtype "
                              "follows --soc)")
        from ascend_adapt.port.torch_npu import port_torch_device

        path = port_torch_device(src, out, package=to.replace("-", "_"), soc=soc, force=force)
        pkg = to.replace("-", "_")
        click.echo(f"wrote {path}/run_{pkg}.py and the op-coverage report {path}/op_coverage_{pkg}.txt / .json")
        return
    if soc:
        raise ConfigError("--soc only applies with --to torch-npu / torch-mlu")
    shard = _parse_size(max_shard_size)
    if to == "hf":
        if mindir or dtype or naming != "ours" or fmt != "ckpt":
            raise ConfigError("--to hf takes the naming, format and dtype from the port manifest",
                              "drop --dtype / --naming / --format / --mindir")
        path = port_to_hf(src, out, force=force, progress=not no_progress, verify=not no_verify,
                          **({"max_shard_bytes": shard} if shard else {}))
        click.echo(f"wrote Hugging Face checkpoint to {path}")
        return
    after = None
    if mindir:
        if not seq_len:
            raise ConfigError("--mindir needs --seq-len N (the static prefill length)")
        compute = "float16" if dtype in ("fp16", "float16") else "float32"

        def after(tmp):
            from ascend_adapt.port.mindir import export_mindir

            export_mindir(tmp, tmp / "mindir", seq_len=seq_len, max_len=max_len, dtype=compute)
    elif seq_len or max_len:
        raise ConfigError("--seq-len / --max-len only apply with --mindir")
    qkw = {"quantize": quantize, "group_size": group_size, "calib": calib, "smooth_alpha": smooth_alpha,
           "keep_fp16": keep_fp16} if quant_given else {}
    if qkw:
        qkw["note"] = None if no_progress else (lambda m: click.echo(m, err=True))
    path = port_to_mindspore(src, out, naming=naming, fmt=fmt, dtype=dtype, force=force,
                             progress=not no_progress, max_shard_bytes=shard, after=after, **qkw)
    click.echo(f"wrote MindSpore checkpoint ({fmt}, {naming} names) to {path}"
               + (f" with MindIR graphs in {path}/mindir" if mindir else ""))
    if qkw:
        from ascend_adapt.port import read_manifest

        q = read_manifest(path)["quantization"]
        click.echo(f"  {q['mode']}: {len(q['quantized'])} Linears int8 ({q['granularity']}), "
                   f"scales {q['scale_bytes'] / 1e6:.2f} MB")
        for n, reasons in (q.get("fp16") or {}).items():
            click.echo(f"  kept in float: {n} ({', '.join(reasons) if isinstance(reasons, list) else reasons})")
