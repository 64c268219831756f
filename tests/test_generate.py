"""The generate loop: session contract only, per-row stopping, left padding, sampling, CLI."""

from __future__ import annotations

import numpy as np
import pytest

from ascend_adapt.errors import ConfigError
from ascend_adapt.runtime.generate import (GenerationConfig, NonFiniteLogitsError, apply_repetition_penalty,
                                           generate, greedy_tokens, sample_token)
from ascend_adapt.runtime.session import LMSession

V = 16


class ScriptedSession:
    """A numpy LMSession: the next token is (last token + 1 + row) mod V, unless scripted."""

    def __init__(self, batch, max_len, log):
        self.batch, self.max_len, self.log = batch, max_len, log

    def _logits(self, last):
        out = np.zeros((len(last), V), np.float32)
        for b, t in enumerate(last):
            out[b, (int(t) + 1 + b) % V] = 5.0
        return out

    def prefill(self, input_ids, attention_mask=None):
        self.log.append(("prefill", np.array(input_ids), None if attention_mask is None else np.array(attention_mask)))
        return self._logits(np.asarray(input_ids)[:, -1])

    def decode(self, token_ids):
        self.log.append(("decode", np.array(token_ids)))
        return self._logits(np.asarray(token_ids))


class CharTokenizer:
    eos_ids = (0,)
    pad_id = 15

    def encode(self, text, add_special_tokens=True):
        return [int(c, 16) for c in text]

    def decode(self, ids):
        return "".join(format(i, "x") for i in ids if i not in self.eos_ids)


def _factory(log):
    return lambda batch, max_len: ScriptedSession(batch, max_len, log)


def test_loop_uses_only_the_session_contract_and_stops_per_row():
    log = []
    assert isinstance(ScriptedSession(1, 1, []), LMSession)
    res = generate(_factory(log), CharTokenizer(), ["9a", "c"], GenerationConfig(max_new_tokens=10))
    # row 0: a → b c d e f 0 (EOS, stops); row 1: c → e 0 (EOS, +2 per step)
    assert res[0].token_ids == [11, 12, 13, 14, 15, 0] and res[0].finish_reason == "stop"
    assert res[0].text == "bcdef"
    assert res[1].token_ids == [14, 0] and res[1].text == "e" and res[1].finish_reason == "stop"
    kind, ids, mask = log[0]
    assert kind == "prefill" and ids.tolist() == [[9, 10], [15, 12]] and mask.tolist() == [[1, 1], [0, 1]]
    assert len(log) == 1 + 5  # one decode per extra token, none after every row stopped


def test_length_stop_stream_and_stop_tokens():
    pieces = []
    cfg = GenerationConfig(max_new_tokens=3, stream=lambda row, tok, text: pieces.append((row, tok, text)))
    res = generate(_factory([]), CharTokenizer(), "1", cfg)
    assert res[0].token_ids == [2, 3, 4] and res[0].finish_reason == "length"
    assert "".join(p[2] for p in pieces) == res[0].text == "234"
    res = generate(_factory([]), CharTokenizer(), ["1"], GenerationConfig(max_new_tokens=8, stop_token_ids=[4]))
    assert res[0].token_ids == [2, 3, 4] and res[0].finish_reason == "stop" and res[0].text == "23"


def test_pre_encoded_prompts_and_errors():
    res = generate(_factory([]), CharTokenizer(), [[1, 2]], GenerationConfig(max_new_tokens=1))
    assert res[0].prompt_ids == [1, 2] and res[0].token_ids == [3]
    with pytest.raises(ConfigError, match="exceed"):
        generate(_factory([]), CharTokenizer(), ["12"], GenerationConfig(max_new_tokens=4, max_len=5))
    with pytest.raises(ConfigError):
        generate(_factory([]), CharTokenizer(), ["1"], GenerationConfig(do_sample=True, temperature=0))


def test_nonfinite_logits_raise():
    class NaNSession(ScriptedSession):
        def prefill(self, input_ids, attention_mask=None):
            return np.full((len(input_ids), V), np.nan, np.float32)

    with pytest.raises(NonFiniteLogitsError, match="NaN/Inf"):
        generate(lambda b, m: NaNSession(b, m, []), CharTokenizer(), ["1"])


def test_sampling_filters():
    logits = np.array([0.0, 1.0, 5.0, 4.9, -3.0])
    rng = np.random.default_rng(0)
    topk1 = GenerationConfig(do_sample=True, top_k=1)
    assert all(sample_token(logits, topk1, rng) == 2 for _ in range(20))
    topk2 = GenerationConfig(do_sample=True, top_k=2)
    assert {sample_token(logits, topk2, rng) for _ in range(200)} == {2, 3}
    topp = GenerationConfig(do_sample=True, top_p=0.5)  # p(2) ≈ 0.51 already reaches 0.5
    assert {sample_token(logits, topp, rng) for _ in range(50)} == {2}
    cold = GenerationConfig(do_sample=True, temperature=1e-3)
    assert sample_token(logits, cold, rng) == 2
    pen = apply_repetition_penalty(np.array([[2.0, -2.0, 1.0]]), [np.array([0, 1, 1])], 2.0)
    assert pen.tolist() == [[1.0, -4.0, 1.0]]


@pytest.mark.parametrize("arch", ["llama", "chatglm"])
def test_generate_on_the_torch_golden(tiny_backend, tiny_dir, arch):
    from ascend_adapt.model_zoo.tokenizers import load_tokenizer

    be = tiny_backend(arch, untied=True)  # a random tied ChatGLM repeats its input token
    tok = load_tokenizer(tiny_dir(arch, unit_head=True, untied=True))
    prompts = ["Hello world, how are you", "Hi"]
    cfg = GenerationConfig(max_new_tokens=8, repetition_penalty=1.3)
    batch = generate(be, tok, prompts, cfg)
    assert all(len(set(r.token_ids)) > 2 for r in batch)
    for b, p in enumerate(prompts):
        alone = generate(be, tok, [p], cfg)[0]
        assert batch[b].token_ids == alone.token_ids and batch[b].text == alone.text
        assert batch[b].prompt_ids == tok.encode(p)
    # plain greedy through generate == greedy_tokens (no stop token hit in 8 steps)
    plain = generate(be, tok, prompts[:1], GenerationConfig(max_new_tokens=8, stop_token_ids=()))[0]
    ref = greedy_tokens(be, np.array([tok.encode(prompts[0])]), 8)[0].tolist()
    n = len(plain.token_ids)
    assert plain.token_ids == ref[:n] and (n == 8 or plain.finish_reason == "stop")
    # sampling is reproducible per seed
    s = GenerationConfig(max_new_tokens=6, do_sample=True, temperature=0.9, top_p=0.9, top_k=50, seed=7)
    assert generate(be, tok, prompts, s)[1].token_ids == generate(be, tok, prompts, s)[1].token_ids


def test_cli_generate_streams(tiny_dir):
    from click.testing import CliRunner

    from ascend_adapt.cli.cmd_generate import generate_cmd

    d = str(tiny_dir("chatglm", unit_head=True))
    r = CliRunner().invoke(generate_cmd, [d, "--prompt", "你好", "--max-new-tokens", "4", "--chat",
                                          "--repetition-penalty", "1.5"])
    assert r.exit_code == 0, r.output
    r2 = CliRunner().invoke(generate_cmd, [d, "--prompt", "Hi", "--prompt", "Hello world", "--max-new-tokens", "3",
                                           "--sample", "--top-k", "5", "--seed", "1"])
    assert r2.exit_code == 0, r2.output
    assert "### Hi" in r2.output and "### Hello world" in r2.output
    r3 = CliRunner().invoke(generate_cmd, [d, "--prompt", "Hi", "--backend", "nope"])
    assert r3.exit_code != 0 and "unknown backend 'nope'" in str(r3.exception)
