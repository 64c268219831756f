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
def generate_cmd(model_dir, prompts, backend, dtype, max_new_tokens, max_len, chat, do_sample, temperature,
                 top_k, top_p, repetition_penalty, seed, no_stream):
    """Generate text from MODEL_DIR (an HF checkpoint or a converted artifact) on a backend.

    The tokenizer is loaded from MODEL_DIR. With one prompt, tokens stream to stdout as they come.
    """
    from ascend_adapt.model_zoo.tokenizers import load_tokenizer
    from ascend_adapt.runtime.backends import get_backend
    from ascend_adapt.runtime.generate import GenerationConfig, generate

    tokenizer = load_tokenizer(model_dir)
    options = {"dtype": dtype} if dtype else {}
    runner = get_backend(backend, model_dir, **options)
    texts = [tokenizer.build_chat_prompt(p) if chat else p for p in prompts]
    stream = len(texts) == 1 and not no_stream

    def on_token(row, token_id, delta):
        click.echo(delta, nl=False)

    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                           top_k=top_k, top_p=top_p, seed=seed, repetition_penalty=repetition_penalty,
                           stream=on_token if stream else None, max_len=max_len)
    results = generate(runner, tokenizer, texts, cfg)
    if stream:
        click.echo()
        return
    for prompt, r in zip(prompts, results):
        if len(results) > 1:
            click.echo(f"### {prompt}")
        click.echo(r.text)
