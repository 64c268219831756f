"""`ascend-adapt generate` (light: no torch / mindspore / onnxruntime at import)."""

from __future__ import annotations

import click


@click.command("generate")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--prompt", "prompts", multiple=True, required=True,
              help="Prompt text; repeat for a batch (left-padded).")
@click.option("--backend", default="torch", show_default=True,
              help="Backend name in the registry: torch, mindspore, onnxruntime, sim, acl.")
@click.option("--dtype", default=None, help="Compute dtype for backends that take one (torch: float32, float16).")
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--max-len", type=int, default=None, help="KV-cache slots (default: prompt + max-new-tokens).")
@click.option("--chat", is_flag=True, help="Wrap the prompt in the model's chat format.")
@click.option("--sample", "do_sample", is_flag=True, help="Sample instead of greedy decoding.")
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--top-k", type=int, default=0, show_default=True, help="0 = off.")
@click.option("--top-p", type=float, default=1.0, show_default=True, help="1.0 = off.")
@click.option("--repetition-penalty", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-stream", is_flag=True, help="Print each answer when it is complete.")
@click.option("--device", default=None,
              help="MindSpore only: device target (CPU, Ascend); default: MindSpore's default.")
@click.option("--precision-mode", default=None,
              help="Simulator only: override the artifact's precision mode (force_fp16, must_keep_origin_dtype, …).")
def generate_cmd(model_dir, prompts, backend, dtype, max_new_tokens, max_len, chat, do_sample, temperature,
                 top_k, top_p, repetition_penalty, seed, no_stream, device, precision_mode):
    """Generate text from MODEL_DIR (an HF checkpoint or a converted artifact) on a backend.

    The tokenizer is loaded from MODEL_DIR. With one prompt, tokens stream to stdout as they come.
    """
    from ascend_adapt.model_zoo.tokenizers import load_tokenizer
    from ascend_adapt.runtime.backends import get_backend
    from ascend_adapt.runtime.generate import GenerationConfig, generate

    from ascend_adapt.om_convert.convert import resolve_artifact

    tokenizer = load_tokenizer(model_dir)
    options = {"dtype": dtype} if dtype else {}
    if device:
        if backend != "mindspore":
            raise click.UsageError("--device applies to --backend mindspore")
        options["device"] = device
    if precision_mode:
        if backend != "sim":
            raise click.UsageError("--precision-mode applies to --backend sim")
        options["precision_mode"] = precision_mode
    runner = get_backend(backend, resolve_artifact(model_dir, backend), **options)
    texts = [tokenizer.build_chat_prompt(p) if chat else p for p in prompts]
    stream = len(texts) == 1 and not no_stream

    def on_token(row, token_id, delta):
        click.echo(delta, nl=False)

    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                           top_k=top_k, top_p=top_p, seed=seed, repetition_penalty=repetition_penalty,
                           stream=on_token if stream else None, max_len=max_len)
    results = generate(runner, tokenizer, texts, cfg)
    if backend == "sim":
        cost = runner.cost_summary()
        click.echo(f"[simulated on {cost['target']} ({cost['precision_mode']}): "
                   f"{cost['decode_ms_per_token']:.3f} ms/token, prefill {cost['prefill_ms']:.3f} ms — "
                   "an estimate, not a measurement]", err=True)
    if stream:
        click.echo()
        return
    for prompt, r in zip(prompts, results):
        if len(results) > 1:
            click.echo(f"### {prompt}")
        click.echo(r.text)
