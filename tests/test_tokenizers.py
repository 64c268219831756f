"""Tokenizers: real files from ../shared/assets (skipped when absent) and the tiny ones."""

from __future__ import annotations

import numpy as np
import pytest

from ascend_adapt.errors import CheckpointError
from ascend_adapt.spec import ModelSpec
from ascend_adapt.model_zoo.tokenizers import ChatGLMTokenizer, LlamaTokenizer, load_tokenizer
from ascend_adapt.runtime.lm_inputs import prefill_inputs


@pytest.fixture(scope="module")
def llama_tok(shared_asset):
    return LlamaTokenizer(shared_asset("llama2_tokenizer.model"))


@pytest.fixture(scope="module")
def glm_tok(shared_asset):
    return ChatGLMTokenizer(shared_asset("chatglm6b_ice_text.model"))


def _real_glm_spec() -> ModelSpec:
    """ChatGLM-6B's spec from the real config.json values (§1.1), tiny sizes elsewhere."""
    from ascend_adapt.model_zoo.base import ADAPTERS

    cfg = dict(ADAPTERS.get("chatglm").tiny_config(), vocab_size=130528, bos_token_id=130004,
               eos_token_id=130005, mask_token_id=130000, gmask_token_id=130001, pad_token_id=3)
    return ADAPTERS.get("chatglm").spec_from_config(cfg)


# ---- real Llama-2 tokenizer -----------------------------------------------------------------------

def test_llama_real_hello_world(llama_tok):
    assert llama_tok.encode("Hello world", add_special_tokens=False) == [15043, 3186]
    assert llama_tok.encode("Hello world") == [1, 15043, 3186]
    assert llama_tok.decode([1, 15043, 3186, 2]) == "Hello world"
    assert llama_tok.eos_ids == (2,) and llama_tok.bos_id == 1 and llama_tok.vocab_size == 32000


def test_llama_load_by_file_and_special_strings(llama_tok, shared_asset):
    assert isinstance(load_tokenizer(shared_asset("llama2_tokenizer.model")), LlamaTokenizer)
    ids = llama_tok.encode(llama_tok.build_chat_prompt("hi", [("a", "b")]))
    assert ids[0] == 1 and ids.count(1) == 2 and ids.count(2) == 1  # <s>…</s><s>… as control ids
    assert llama_tok.build_chat_prompt("hi") == "[INST] hi [/INST]"


# ---- real ChatGLM-6B tokenizer ---------------------------------------------------------------------

def test_glm_real_nihao_ids_positions_and_blocks(glm_tok):
    ids = glm_tok.encode("你好")
    assert ids == [5, 74874, 130001, 130004]
    step, _ = prefill_inputs(_real_glm_spec(), np.array([ids]), None, 8)
    assert step.positions[0].tolist() == [[0, 1, 2, 2], [0, 0, 0, 1]]


def test_glm_real_sentences(glm_tok):
    assert glm_tok.encode("Hello world") == [19316, 398, 130001, 130004]
    ids = glm_tok.encode("晚上睡不着应该怎么办")
    assert ids == [74747, 83400, 64213, 66846, 130001, 130004]
    step, _ = prefill_inputs(_real_glm_spec(), np.array([ids]), None, 8)
    assert step.positions[0].tolist() == [[0, 1, 2, 3, 4, 4], [0, 0, 0, 0, 0, 1]]
    assert glm_tok.decode(ids) == "晚上睡不着应该怎么办"
    assert glm_tok.eos_ids == (130005,) and glm_tok.pad_id == 3 and glm_tok.bos_id == 130004


def test_glm_real_chat_with_history(glm_tok):
    prompt = glm_tok.build_chat_prompt("你好", [("hi", "hello")])
    assert prompt == "[Round 0]\n问：hi\n答：hello\n[Round 1]\n问：你好\n答："
    assert glm_tok.build_chat_prompt("你好") == "你好"  # first turn: the raw query
    ids = glm_tok.encode(prompt)
    assert ids.count(4) == 5 and 12 in ids  # "\n" → <n> (4); full-width colon NFKC → ":" (12)
    assert ids[-2:] == [130001, 130004]
    assert glm_tok.encode_chat("你好", [("hi", "hello")]) == ids


def test_glm_real_whitespace_round_trip(glm_tok):
    text = "def f(x):\n\treturn  x   +\n" + " " * 81 + "1"
    ids = glm_tok.encode(text, add_special_tokens=False)
    assert 130008 in ids and 130009 in ids  # <|tab|>, <|blank_2|>
    assert glm_tok.decode(ids) == text


def test_glm_preprocess_longest_blank_first():
    assert ChatGLMTokenizer.preprocess("a" + " " * 83 + "b\n") == "a<|blank_80|><|blank_3|>b<n>"
    assert ChatGLMTokenizer.postprocess("a<|blank_80|><|blank_3|>b<n>") == "a" + " " * 83 + "b\n"


def test_glm_response_postprocess():
    assert ChatGLMTokenizer.postprocess_response(" 你好,世界! [[训练时间]] ") == "你好，世界！ 2023年"


# ---- tiny tokenizers (always run) ------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "chatglm"])
def test_tiny_tokenizer_from_model_dir(tiny_dir, arch):
    from ascend_adapt.model_zoo.base import ADAPTERS
    from ascend_adapt.model_zoo.tiny import tiny_config

    d = tiny_dir(arch)
    tok = load_tokenizer(d)
    spec = ADAPTERS.get(arch).spec_from_config(tiny_config(arch))
    assert isinstance(tok, ChatGLMTokenizer if arch == "chatglm" else LlamaTokenizer)
    assert set(spec.eos_ids) == set(tok.eos_ids)
    # the tiny Llama model collapses repeated spaces (SentencePiece's remove_extra_whitespaces)
    text = "Hello world\n  again" if arch == "chatglm" else "Hello world, again"
    ids = tok.encode(text)
    if arch == "chatglm":
        assert ids[-2:] == [spec.gmask_token_id, spec.bos_token_id] and tok.pad_id == spec.pad_token_id
    else:
        assert ids[0] == spec.bos_token_id
    assert tok.decode(ids) == text


@pytest.mark.parametrize("arch", ["llama", "chatglm"])
def test_batch_encode_pads_on_the_left(tiny_dir, arch):
    tok = load_tokenizer(tiny_dir(arch))
    batch = tok.batch_encode(["Hello world, this is longer", "Hi"])
    short = tok.encode("Hi")
    n = len(short)
    assert batch.input_ids.dtype == np.int64 and batch.input_ids.shape == batch.attention_mask.shape
    assert batch.input_ids[1, -n:].tolist() == short
    assert (batch.input_ids[1, :-n] == tok.pad_id).all()
    assert batch.attention_mask[1].tolist() == [0] * (batch.input_ids.shape[1] - n) + [1] * n
    assert batch.attention_mask[0].all() and batch.lengths.tolist() == [batch.input_ids.shape[1], n]


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no tokenizer found"):
        load_tokenizer(tmp_path)
    with pytest.raises(CheckpointError, match="no such directory"):
        load_tokenizer(tmp_path / "missing")
