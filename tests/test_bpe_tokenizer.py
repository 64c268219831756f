"""Byte-level BPE tokenizers from tokenizer.json and chat templates rendered as transformers renders them.

The reference is transformers' own `AutoTokenizer` on the same files: ids, decoded text and the
chat prompt (`apply_chat_template`) must be identical.
"""

from __future__ import annotations

import json

import pytest

from ascend_adapt.errors import ConfigError
from ascend_adapt.model_zoo.tiny import BPE_SPECIAL, CHATML_TEMPLATE, tiny_bpe_tokenizer_json
from ascend_adapt.model_zoo.tokenizers import BPETokenizer, chat_messages, load_tokenizer, render_chat_template

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  two leading spaces, trailing  \n\nnew lines\ttabs",
    "digits 12345 and 3.14159",
    "ünïcödé, 中文, emoji 🙂",
    "<|im_start|>user\nhi<|im_end|>\n",
    "a<|endoftext|>b",
    "",
]

# a template using what transformers' environment offers: loop controls, tojson, raise_exception
RICH_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('bad role ' + m['role']) }}{% endif %}"
    "{% if m['content'] == 'skip' %}{% continue %}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% if m['role'] == 'system' %}{{ {'meta': m['content']} | tojson }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    "{{ eos_token }}"
)


def _write(d, template=CHATML_TEMPLATE):
    d.mkdir(parents=True, exist_ok=True)
    (d / "tokenizer.json").write_text(tiny_bpe_tokenizer_json(), encoding="utf-8")
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "unk_token": None, "chat_template": template}))
    return d


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    d = _write(tmp_path_factory.mktemp("bpe"))
    return load_tokenizer(d), transformers.AutoTokenizer.from_pretrained(str(d))


def test_dir_with_tokenizer_json_loads_bpe(pair):
    ours, _ = pair
    assert isinstance(ours, BPETokenizer)
    ids = ours.tok.get_vocab(with_added_tokens=True)
    assert ours.eos_ids == (ids["<|im_end|>"],) and ours.pad_id == ids["<|endoftext|>"] and ours.bos_id is None
    assert ours.vocab_size == len(ids) and all(t in ids for t in BPE_SPECIAL)


@pytest.mark.parametrize("text", TEXTS)
def test_ids_and_text_equal_transformers(pair, text):
    ours, ref = pair
    ids = ours.encode(text)
    assert ids == ref(text)["input_ids"]
    assert ours.decode(ids, skip_special_tokens=False) == ref.decode(ids, skip_special_tokens=False)
    assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    # byte-level: every text round-trips exactly
    assert ours.decode(ids, skip_special_tokens=False) == text


@pytest.mark.parametrize("history", [(), (("Hi there", "Hello! How can I help?"),),
                                     (("1+1?", "2"), ("and 2+2?", "4"))])
def test_chat_prompt_equals_apply_chat_template(pair, history):
    ours, ref = pair
    msgs = chat_messages("What is the capital of France?", history)
    text = ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert ours.build_chat_prompt("What is the capital of France?", history) == text
    ref_ids = ref.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert ours.encode_chat("What is the capital of France?", history) == list(ref_ids)


def test_system_prompt_and_rich_template_equal_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    d = _write(tmp_path / "rich", RICH_TEMPLATE)
    ours, ref = load_tokenizer(d), transformers.AutoTokenizer.from_pretrained(str(d))
    msgs = chat_messages("ünïcödé 中文", (("skip", "ok"),), system="Be brief. «quotes»")
    for gen in (True, False):
        assert ours.apply_chat_template(msgs, gen) == ref.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=gen)


def test_template_exception_is_a_clear_error(tmp_path):
    ours = load_tokenizer(_write(tmp_path / "rich", RICH_TEMPLATE))
    with pytest.raises(ConfigError, match="chat template: bad role tool"):
        ours.apply_chat_template([{"role": "tool", "content": "x"}])


def test_no_chat_template_is_a_clear_error(tmp_path):
    d = _write(tmp_path / "plain", None)
    with pytest.raises(ConfigError, match="no chat_template") as e:
        load_tokenizer(d).build_chat_prompt("hi")
    assert "--chat" in e.value.hint


def test_render_is_the_jinja_of_transformers_whitespace_rules():
    # trim_blocks + lstrip_blocks: a block tag's own line leaves no newline / indentation behind
    tpl = "{% for m in messages %}\n  {% if true %}\n[{{ m['content'] }}]\n  {% endif %}\n{% endfor %}"
    assert render_chat_template(tpl, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) == "[a]\n[b]\n"


# ---- generate --chat --history ------------------------------------------------------------------
def _gen(*args):
    from click.testing import CliRunner

    from ascend_adapt.cli.main import cli

    return CliRunner().invoke(cli, ["generate", *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("q") / "qwen2", "qwen2",
                                config_overrides={"tie_word_embeddings": False})


@pytest.mark.parametrize("form", ["messages", "pairs"])
def test_generate_chat_history_file(tiny_qwen, tmp_path, form):
    """The history file's turns (and system prompt) reach the chat template: the new tokens are
    those of the same prompt given as ids."""
    turns = [("Hi there", "Hello! How can I help?"), ("1+1?", "2")]
    if form == "messages":
        data = [{"role": "system", "content": "Be brief."}]
        for q, a in turns:
            data += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        system = "Be brief."
    else:
        data, system = [list(t) for t in turns], None
    hist = tmp_path / "history.json"
    hist.write_text(json.dumps(data), encoding="utf-8")
    tok = load_tokenizer(tiny_qwen)
    ids = tok.encode(tok.build_chat_prompt("and 2+2?", turns, system))
    assert ids != tok.encode(tok.build_chat_prompt("and 2+2?"))  # the history changes the prompt
    res = _gen(tiny_qwen, "--chat", "--history", hist, "--prompt", "and 2+2?", "--output-ids", "--max-new-tokens", 6)
    assert res.exit_code == 0, res.output
    want = _gen(tiny_qwen, "--prompt-ids", ",".join(map(str, ids)), "--output-ids", "--max-new-tokens", 6)
    assert res.output.strip().splitlines()[-1] == want.output.strip().splitlines()[-1]


@pytest.mark.parametrize("content, message", [
    ("{not json", "not readable JSON"),
    ('{"a": 1}', "must be a JSON list"),
    ('[["q"]]', "entry 0 is not a [query, response] pair"),
    ('[{"role": "user", "content": "q"}]', "must alternate user / assistant"),
    ('[{"role": "bot", "content": "q"}]', "message 0 is not"),
])
def test_bad_history_file_is_a_clear_error(tiny_qwen, tmp_path, capsys, content, message):
    from ascend_adapt.cli.main import main

    hist = tmp_path / "h.json"
    hist.write_text(content)
    rc = main(["generate", str(tiny_qwen), "--chat", "--history", str(hist), "--prompt", "x", "--max-new-tokens", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and str(hist) in err and "fix:" in err and "Traceback" not in err


def test_history_needs_chat(tiny_qwen, tmp_path, capsys):
    from ascend_adapt.cli.main import main

    hist = tmp_path / "h.json"
    hist.write_text("[]")
    assert main(["generate", str(tiny_qwen), "--history", str(hist), "--prompt", "x"]) == 2
    assert "add --chat" in capsys.readouterr().err
