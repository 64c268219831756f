"""`ascend-adapt inspect` and `ascend-adapt make-tiny` (light: no torch at import)."""

from __future__ import annotations

import json

import click


@click.command("inspect")
@click.argument("model_dir", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect_cmd(model_dir, as_json):
    """Architecture, parameter count, tensors per dtype, shards and bytes at fp32/fp16/int8.

    Reads only headers (safetensors) or maps files (torch .bin, .gguf): no tensor data is loaded.
    MODEL_DIR may be a llama.cpp .gguf file (its metadata is read as config.json).
    Checks every tensor against the shapes config.json implies: prints what it could read, then
    exits with status 2 when the config is invalid or a tensor is mismatched, missing or unexpected
    (each listed with its expected and actual shape).
    """
    from ascend_adapt.inspect_model import format_report, inspect_checkpoint

    report = inspect_checkpoint(model_dir)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report))
    failure = report.failure()
    if failure is not None:
        raise failure


@click.command("make-tiny")
@click.argument("out_dir", type=click.Path(path_type=str))
@click.option("--arch", default="llama", show_default=True,
              help="A registered architecture (adapter name): llama, chatglm, chatglm2, chatglm3, qwen2, qwen3, …")
@click.option("--layout", type=click.Choice(["safetensors", "safetensors-sharded", "bin", "bin-sharded", "meta"]),
              default="safetensors", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--untied", is_flag=True,
              help="Distinct embedding and output matrices (tie_word_embeddings=false in config.json). "
                   "A random model whose head is tied to its embedding mostly repeats its last input token.")
@click.option("--force", is_flag=True, help="Replace OUT_DIR if it exists.")
def make_tiny_cmd(out_dir, arch, layout, dtype, seed, untied, force):
    """Write a tiny random checkpoint in the real on-disk layout (with a trained tiny tokenizer)."""
    from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint

    overrides = {"tie_word_embeddings": False} if untied else None
    path = make_tiny_checkpoint(out_dir, arch, layout, seed=seed, dtype=dtype, force=force,
                                config_overrides=overrides)
    click.echo(f"wrote tiny {arch} checkpoint ({layout}, {dtype}) to {path}")
