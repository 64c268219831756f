"""`convert --quantize`'s accuracy step (issue #14 Deliver 5): the quantized artifact on the
simulator against the model without quantization (the torch golden verify loaded), printed and
in convert_report.json/.txt under "accuracy".

The step adds no arithmetic of its own: its figures must equal `accuracy_report` called directly
on a fresh torch golden and a fresh simulator backend of the same artifact with the same prompts,
steps and perplexity ids — both sides are the same deterministic computations, so equality is
exact. Tiny random checkpoints (a few seconds per convert; W8A8 calibrates with the builtin set).
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")


def _cli(args, capsys):
    from ascend_adapt.cli.main import main

    rc = main(args)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("convacc") / "llama", "llama")


@pytest.mark.parametrize("mode", ["w8a16", "w8a8"])
def test_quantized_convert_prints_the_accuracy_step_equal_to_accuracy_report(tiny_llama, tmp_path, capsys, mode):
    from ascend_adapt.backends import get_backend
    from ascend_adapt.model_zoo.tokenizers import load_tokenizer
    from ascend_adapt.quant.accuracy import accuracy_prompts, accuracy_report, ppl_text_ids

    out = tmp_path / "out"
    rc, printed, progress = _cli(["convert", str(tiny_llama), "--soc", "Ascend310P3", "-o", str(out),
                                  "--quantize", mode, "--accuracy-ppl"], capsys)
    assert rc == 0, printed + progress
    rep = json.loads((out / "convert_report.json").read_text())
    acc = rep["accuracy"]
    steps = [s["step"] for s in rep["steps"]]
    assert steps[-2:] == ["verify", "accuracy"]
    # the printed report and the text file carry every part
    text = (out / "convert_report.txt").read_text()
    for where in (printed, text):
        assert f"accuracy of {mode.upper()} artifact" in where
        assert "reference: the model without quantization: the torch float32 golden" in where
        assert "per-layer: worst cosine" in where and "logits       cosine" in where
        assert "greedy tokens:" in where and "teacher-forced" in where
        assert "perplexity:" in where and "→" in where
    assert "[accuracy]" in progress
    assert acc["reference"].startswith("the model without quantization") and acc["seconds"] > 0
    assert acc["prompts"][0] == "Hello world" and len(acc["prompts"]) == 4 and acc["steps"] == 16

    # the same measure called directly on fresh backends: equal values
    tok = load_tokenizer(tiny_llama)
    texts, prompts = accuracy_prompts(tok, "Hello world")
    assert texts == acc["prompts"] and prompts == acc["prompt_ids"]
    sim = get_backend("sim", out / "model.omsim")
    want = accuracy_report(get_backend("torch", tiny_llama, dtype="float32"), sim, prompts=prompts, steps=16,
                           ppl_ids=ppl_text_ids(tok), window=acc["perplexity_window"])
    sim.close()
    assert acc["perplexity_tokens"] == len(ppl_text_ids(tok)) and acc["perplexity_window"] == 128  # S = 128
    assert acc["layers"] == want.layers
    assert set(want.layers) >= {"embed", "layers.0", "layers.1", "final_norm", "logits"}
    assert acc["greedy"] == json.loads(json.dumps(want.greedy))
    assert acc["perplexity"] == {"reference": want.ppl_ref, "test": want.ppl_test, "rise": want.ppl_rise}
    # and it measured a quantized model: not the identity (an fp16 artifact's own layer error is
    # orders below; see docs/quantization.md)
    assert acc["layers"]["logits"]["max_rel"] > 0


def test_random_weights_skip_the_perplexity_by_default(tiny_llama, tmp_path, capsys):
    out = tmp_path / "out"
    rc, printed, _ = _cli(["convert", str(tiny_llama), "--soc", "Ascend310P3", "-o", str(out),
                           "--quantize", "w8a16", "--json"], capsys)
    assert rc == 0
    acc = json.loads(printed)["accuracy"]
    assert acc["perplexity"] is None and acc["perplexity_tokens"] == 0
    assert "ascend_adapt_random_weights" in acc["perplexity_reason"]
    assert acc["greedy"]["total"] == 4 * 16 and "logits" in acc["layers"]
    assert any("perplexity: not measured" in ln for ln in acc["lines"])


def test_real_weights_reads_the_mark(tmp_path):
    from ascend_adapt.quant.accuracy import RANDOM_WEIGHTS_KEY, real_weights

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert real_weights(tmp_path)[0] is True
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", RANDOM_WEIGHTS_KEY: True}))
    ok, why = real_weights(tmp_path)
    assert ok is False and "config.json" in why and "--accuracy-ppl" in why


def test_no_accuracy_skips_it_and_an_unquantized_convert_has_none(tiny_llama, tmp_path, capsys):
    for name, extra in (("noacc", ["--quantize", "w8a16", "--no-accuracy"]), ("plain", [])):
        out = tmp_path / name
        rc, printed, progress = _cli(["convert", str(tiny_llama), "--soc", "Ascend310P3", "-o", str(out), *extra],
                                     capsys)
        assert rc == 0
        rep = json.loads((out / "convert_report.json").read_text())
        assert rep["accuracy"] == {} and "accuracy" not in [s["step"] for s in rep["steps"]]
        assert "verify" in [s["step"] for s in rep["steps"]]
        assert "[accuracy]" not in progress and "accuracy of" not in printed


def test_accuracy_ppl_without_quantize_is_refused(tiny_llama, tmp_path, capsys):
    rc, _, err = _cli(["convert", str(tiny_llama), "--soc", "Ascend310P3", "-o", str(tmp_path / "o"),
                       "--accuracy-ppl"], capsys)
    assert rc == 2 and "--accuracy-ppl" in err and "--quantize" in err
    assert not (tmp_path / "o").exists()


def test_accuracy_is_skipped_with_the_reason_when_verify_is(tiny_llama, tmp_path, monkeypatch):
    """No memory for the golden: verify and accuracy are both SKIPPED with the same plan's reason."""
    from ascend_adapt.om_convert import convert as conv

    monkeypatch.setattr(conv, "available_memory_bytes", lambda: 1 << 20)  # 1 MiB available
    rep = conv.convert(str(tiny_llama), tmp_path / "o", soc="Ascend310P3", quantize="w8a16")
    skipped = {s["step"]: s for s in rep.steps if s.get("skipped")}
    assert set(skipped) == {"verify", "accuracy"}
    assert skipped["accuracy"]["summary"] == skipped["verify"]["summary"]
    assert skipped["accuracy"]["summary"].startswith("SKIPPED: ") and "verification skipped" in \
        skipped["accuracy"]["summary"]
    assert rep.accuracy == {} and rep.verify == {} and rep.outcome == "unverified"
    assert "[accuracy] SKIPPED: " in rep.to_text()
