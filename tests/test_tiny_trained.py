"""model_zoo/tiny_trained.py: what the trainer feeds the model (no training here; the trained
models themselves are exercised by tests/test_quant_graph.py's free-running agreement tests)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("arch", ["llama", "chatglm"])
def test_rows_are_prompt_then_corpus_and_the_loss_skips_chatglms_context(arch):
    from ascend_adapt.model_zoo.base import ADAPTERS
    from ascend_adapt.model_zoo.tiny import tiny_config
    from ascend_adapt.model_zoo.tiny_trained import (CONTINUATION, _rows, corpus_continuations, corpus_lines,
                                                     prefix_len, trained_prompts)

    spec = ADAPTERS.get(arch).spec_from_config(tiny_config(arch))
    lines = corpus_lines(arch)
    assert len(lines) == 19 and all(len(ln) > 2 for ln in lines)
    prompts = trained_prompts(spec, lines)
    cont = corpus_continuations(spec, 40, lines)
    ids, w = _rows(spec, lines)
    assert ids.shape[0] == len(lines) and w.shape == (ids.shape[0], ids.shape[1] - 1)
    for i, (line, p) in enumerate(zip(lines, prompts)):
        k = prefix_len(i, line)
        if arch == "chatglm":  # text, [gMASK], <sop>: the ChatGLM tokenizer's own suffix
            assert p == line[:k] + [spec.gmask_token_id, spec.bos_token_id]
            first = len(p) - 1  # the <sop> position predicts the first continuation token
            assert not w[i, :first].any() and w[i, first:].all()
        else:
            assert p == [spec.bos_token_id] + line[:k]
            assert w[i].all()
        # every row starts with its prompt and goes on with the corpus text that the test expects
        assert ids[i, :len(p)].tolist() == p
        n = min(ids.shape[1] - len(p), cont.shape[1])
        assert n >= CONTINUATION and ids[i, len(p):len(p) + n].tolist() == cont[i, :n].tolist()
    # the last line's continuation loops to the first line
    last = len(lines) - 1
    rest = lines[last][prefix_len(last, lines[last]):]
    assert cont[last, len(rest):len(rest) + 3].tolist() == lines[0][:3]
    assert ids.max() < spec.vocab_size and np.unique(ids).size > 150


def test_trainer_refuses_what_it_cannot_train():
    from ascend_adapt.errors import ConfigError
    from ascend_adapt.model_zoo.tiny_trained import train_tiny_weights

    with pytest.raises(ConfigError, match="no trainer for architecture 'qwen2'"):
        train_tiny_weights("qwen2")
    with pytest.raises(ConfigError, match="steps must be ≥ 1"):
        train_tiny_weights("llama", steps=0)
