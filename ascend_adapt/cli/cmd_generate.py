"""`ascend-adapt generate` (light: no torch / mindspore / onnxruntime at import)."""

from __future__ import annotations

import click

from ..errors import ConfigError


def parse_prompt_ids(text: str, option: str = "--prompt-ids") -> list[int]:
    """Token ids written as "1,2,3" (spaces allowed) → [1, 2, 3].

    Raises:
        ConfigError: an empty list, an empty item or an item that is not a non-negative integer,
            quoting it. (The range [0, vocab) is checked against the model in `generate`.)
    """
    hint = f'write {option} as comma-separated token ids, e.g. {option} 1,15043,3186'
    items = [t.strip() for t in str(text).split(",")]
    if not any(items):
        raise ConfigError(f"{option} '{text}' has no token ids", hint)
    ids = []
    for t in items:
        if not t:
            raise ConfigError(f"{option} '{text}' has an empty item (two commas in a row, or one at an end)", hint)
        if not t.isascii() or not t.isdigit():
            raise ConfigError(f"{option} '{text}': '{t}' is not a token id (a non-negative integer)", hint)
        ids.append(int(t))
    return ids


@click.command("generate")
@click.argument("model_dir", type=click.Path(exists=True, path_type=str))
@click.option("--prompt", "prompts", multiple=True,
              help="Prompt text; repeat for a batch (left-padded).")
@click.option("--prompt-ids", "prompt_ids", multiple=True,
              help="A prompt as token ids instead of text, e.g. 1,15043,3186 (ids in [0, vocab); no tokenizer "
                   "needed; ChatGLM-6B ids must end in [gMASK] <sop>); repeat for a batch. Not with --prompt.")
@click.option("--backend", default="torch", show_default=True,
              help="Backend name in the registry (ascend_adapt.backends): torch, mindspore, onnxruntime, sim, acl, "
                   "torch_npu, torch_mlu, or any registered one.")
@click.option("--dtype", default=None, help="Compute dtype for backends that take one (torch: float32, float16).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True,
              help="New tokens per prompt; prompt + this must fit the model's context (a converted model's "
                   "KV cache M, a checkpoint's max_position_embeddings / seq_length).")
@click.option("--max-len", type=click.IntRange(min=1), default=None,
              help="KV-cache slots (default: prompt + max-new-tokens).")
@click.option("--chat", is_flag=True, help="Wrap the prompt in the model's chat format.")
@click.option("--history", "history_file", type=click.Path(exists=True, dir_okay=False, path_type=str), default=None,
              help="With --chat: earlier turns as a JSON file, [[query, response], …] or role/content messages "
                   "(an optional system message first); the prompt is the next user turn.")
@click.option("--sample", "do_sample", is_flag=True, help="Sample instead of greedy decoding.")
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--top-k", type=int, default=0, show_default=True, help="0 = off.")
@click.option("--top-p", type=float, default=1.0, show_default=True, help="1.0 = off.")
@click.option("--repetition-penalty", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-stream", is_flag=True, help="Print each answer when it is complete.")
@click.option("--output-ids", is_flag=True,
              help="Print the new token ids (one comma-separated line per prompt, the stop token included "
                   "when a row stopped on one) instead of text.")
@click.option("--dump-logits", "dump_logits", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Write the prompt's logits to this .npy file: float32 [prompt positions, vocab] (row i "
                   "predicts token i+1). One prompt only.")
@click.option("--force", is_flag=True, help="Overwrite an existing --dump-logits file.")
@click.option("--device", default=None,
              help="Backends that take a device: mindspore (device target CPU, Ascend; default: MindSpore's "
                   "default), torch_npu / torch_mlu (e.g. npu:1; default: device 0).")
@click.option("--precision-mode", default=None,
              help="Simulator only: override the artifact's precision mode (force_fp16, must_keep_origin_dtype, …).")
def generate_cmd(model_dir, prompts, prompt_ids, backend, dtype, max_new_tokens, max_len, chat, history_file, do_sample,
                 temperature, top_k, top_p, repetition_penalty, seed, no_stream, output_ids, dump_logits, force,
                 device, precision_mode):
    """Generate text from MODEL_DIR (an HF checkpoint or a converted artifact) on a backend.

    The tokenizer is loaded from MODEL_DIR (not needed with --prompt-ids --output-ids). With one
    text prompt, tokens stream to stdout as they come. Ctrl-C stops between steps: what was
    generated so far is printed and the exit status is 130.
    """
    from ascend_adapt.errors import CheckpointError
    from ascend_adapt.fsutil import atomic_output, check_output
    from ascend_adapt.model_zoo.tokenizers import load_tokenizer
    from ascend_adapt.backends import BACKENDS, convert_output_path
    from ascend_adapt.runtime.generate import GenerationConfig, GenerationInterrupted, generate

    from pathlib import Path

    from ascend_adapt.checkpoint.gguf_io import is_gguf, resolve_source

    if is_gguf(model_dir):  # a llama.cpp file: unpacked once into the cache as an HF checkpoint
        model_dir = str(resolve_source(model_dir, note=lambda m: click.echo(m, err=True)))
    elif not Path(model_dir).is_dir():
        raise click.UsageError(f"{model_dir} is a file: pass a model directory, an artifact or a .gguf file")
    if prompts and prompt_ids:
        raise click.UsageError("give --prompt (text) or --prompt-ids (token ids), not both")
    if not prompts and not prompt_ids:
        raise click.UsageError("give a prompt: --prompt TEXT or --prompt-ids 1,2,3")
    if chat and prompt_ids:
        raise click.UsageError("--chat wraps text prompts; with --prompt-ids, pass the ids of the chat prompt")
    if history_file and not chat:
        raise click.UsageError("--history is the earlier turns of a chat: add --chat")
    batch = [parse_prompt_ids(p) for p in prompt_ids] if prompt_ids else None
    n_prompts = len(batch) if batch is not None else len(prompts)
    if dump_logits:
        if n_prompts != 1:
            raise click.UsageError(f"--dump-logits writes one prompt's logits; {n_prompts} prompts were given")
        check_output(dump_logits, force)  # before the model loads, not after the generation
    try:
        tokenizer = load_tokenizer(model_dir)
    except CheckpointError:
        if batch is None or not output_ids:
            raise
        tokenizer = None  # ids in, ids out: the model needs no tokenizer
    be = BACKENDS.get(backend)
    options = {"dtype": dtype} if dtype else {}
    for flag, key, value in (("--device", "device", device), ("--precision-mode", "precision_mode", precision_mode)):
        if value:
            if key not in be.options:
                takers = [n for n, b in BACKENDS.items() if key in b.options]
                raise click.UsageError(f"{flag} applies to --backend {' / '.join(takers)}")
            options[key] = value
    options = {**be.generate_options, **options}  # e.g. acl: the KV cache stays on the card (docs/deployment.md)
    runner = be.open(convert_output_path(model_dir, be.name)[0], **options)
    if batch is None:
        history, system = [], None
        if history_file:
            from ascend_adapt.model_zoo.tokenizers import load_chat_history

            history, system = load_chat_history(history_file)
        if system is not None:
            import inspect

            if "system" not in inspect.signature(tokenizer.build_chat_prompt).parameters:
                raise ConfigError(f"{history_file}: a system message, but {type(tokenizer).__name__}'s chat "
                                  "format has no system prompt", "drop the system message from the history")
        extra = {"system": system} if system is not None else {}
        batch = [tokenizer.build_chat_prompt(p, history, **extra) if chat else p for p in prompts]
    stream = n_prompts == 1 and not no_stream and not output_ids and tokenizer is not None
    labels = list(prompts) if prompts else list(prompt_ids)

    def on_token(row, token_id, delta):
        click.echo(delta, nl=False)

    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                           top_k=top_k, top_p=top_p, seed=seed, repetition_penalty=repetition_penalty,
                           stream=on_token if stream else None, max_len=max_len)
    try:
        results = generate(runner, tokenizer, batch, cfg, prompt_logits=bool(dump_logits))
    except GenerationInterrupted as stop:
        if stream:
            click.echo()
        else:
            _print(stop.results, labels, output_ids)
        n = sum(len(r.token_ids) for r in stop.results)
        click.echo(f"interrupted (Ctrl-C) after {n} new token(s); printed what was generated so far", err=True)
        raise SystemExit(130) from None
    if dump_logits:
        import numpy as np

        logits = np.ascontiguousarray(results[0].prompt_logits, np.float32)
        with atomic_output(dump_logits, force=force) as tmp, open(tmp, "wb") as f:
            np.save(f, logits)  # a file object: numpy would append ".npy" to the temporary name
        click.echo(f"wrote {dump_logits}: float32 {list(logits.shape)} (prompt positions × vocab)", err=True)
    if be.simulated and callable(getattr(runner, "cost_summary", None)):
        cost = runner.cost_summary()
        click.echo(f"[simulated on {cost['target']} ({cost['precision_mode']}): "
                   f"{cost['decode_ms_per_token']:.3f} ms/token, prefill {cost['prefill_ms']:.3f} ms — "
                   "an estimate, not a measurement]", err=True)
    if stream:
        click.echo()
    else:
        _print(results, labels, output_ids)
    if not output_ids:
        for i, r in enumerate(results):
            if r.token_ids and not r.text:  # never silent: say what came out when it decodes to no text
                ids = ",".join(str(t) for t in r.token_ids[:16]) + ("…" if len(r.token_ids) > 16 else "")
                click.echo(f"note: prompt {i + 1}: the {len(r.token_ids)} new token(s) ({ids}; finish: "
                           f"{r.finish_reason}) decode to no text (special tokens); --output-ids prints the ids",
                           err=True)


def _print(results, labels, output_ids: bool) -> None:
    for label, r in zip(labels, results):
        if output_ids:
            click.echo(",".join(str(t) for t in r.token_ids))
            continue
        if len(results) > 1:
            click.echo(f"### {label}")
        click.echo(r.text)
