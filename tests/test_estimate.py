"""`estimate`: memory / tokens/s / compile cost from config.json alone, checked on real configs."""

import json

import pytest

from ascend_adapt.cli.main import main
from ascend_adapt.errors import ConfigError
from ascend_adapt.estimate import PUBLISHED, estimate, format_report

# Llama-2-7B config.json (model_architectures.md §3.3: hidden 4096, intermediate 11008, 32 layers,
# 32 heads, 32 KV heads, vocab 32000, max_position 4096, rms_norm_eps 1e-5)
LLAMA2_7B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 32, "hidden_act": "silu", "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "vocab_size": 32000, "bos_token_id": 1,
    "eos_token_id": 2, "tie_word_embeddings": False, "pretraining_tp": 1, "torch_dtype": "float16",
}


@pytest.fixture(scope="module")
def r7b():
    return estimate(LLAMA2_7B, seq_len=2048)


def test_llama2_7b_fp16_weights_and_fit(r7b):
    assert r7b.params == 6_738_415_616
    assert r7b.weights_bytes / 1e9 == pytest.approx(13.5, abs=0.05)
    # KV cache = 2 · L · B · S · kv_dim · 2 bytes
    assert r7b.kv_cache_bytes == 2 * 32 * 1 * 2048 * 4096 * 2
    a310 = r7b.target("Ascend310")
    assert not a310.fits_one_chip and a310.chips_needed > 1
    p3 = r7b.target("Ascend310P3")
    assert p3.fits_one_chip and p3.chips_needed == 1 and p3.cards_needed == 1
    assert [t.target for t in r7b.targets] == ["Ascend310", "Ascend310P3", "Atlas300IDuo", "Ascend310B1",
                                              "Ascend910B", "MLU370"]
    # ATC targets get a gear plan from the ATC driver; MagicMind does not
    assert p3.compile is not None and p3.compile.prefill_gears[-1] == 2048
    assert r7b.target("MLU370").compile is None


def test_quantized_precisions_state_scale_overhead():
    w8 = estimate(LLAMA2_7B, ["Ascend310"], "w8a16", 2048)
    w4 = estimate(LLAMA2_7B, ["Ascend310"], "w4a16", 2048)
    assert 6.5e9 < w8.weights_bytes < 7.5e9 and w8.weights.scales > 0
    assert 3.5e9 < w4.weights_bytes < 4.5e9
    # w4a16: scale + offset per 128-group = 4 bytes per 64 weight bytes = 6.25 %
    assert w4.weights.overhead_pct == pytest.approx(6.25, abs=0.01)
    assert "per group" in w4.weights.scheme
    assert w4.target("Ascend310").fits_one_chip


@pytest.mark.parametrize("fig", PUBLISHED, ids=lambda f: f.key)
def test_expected_within_2x_of_published(fig):
    r = estimate(fig.config, [fig.target], fig.precision, fig.seq_len, fig.batch)
    t = r.targets[0]
    got = t.card_decode_tok_s if fig.chips == "card" else t.decode_tok_s
    lo, hi = fig.tok_s
    assert lo / 2 <= got <= hi * 2, (fig.key, got, fig.tok_s)
    assert t.decode_tok_s <= t.decode_bound_tok_s


def test_efficiency_override_and_text(r7b):
    r = estimate(LLAMA2_7B, ["Ascend910B"], seq_len=2048, efficiency={"Ascend910B": 1.0})
    t = r.targets[0]
    assert t.decode_tok_s == pytest.approx(t.decode_bound_tok_s)
    text = format_report(r7b)
    assert "calibrated" in text and "uncalibrated" in text and "13.48 GB" in text


def test_bad_inputs(tmp_path):
    with pytest.raises(ConfigError):
        estimate(LLAMA2_7B, precision="int3")
    with pytest.raises(ConfigError):
        estimate(tmp_path)  # no config.json
    with pytest.raises(ConfigError):
        estimate(LLAMA2_7B, seq_len=128, prompt_len=256)


def test_cli_from_dir_and_config_json(tmp_path, capsys):
    d = tmp_path / "Llama-2-7b-hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(LLAMA2_7B))
    assert main(["estimate", str(d), "--soc", "Ascend310P3", "--soc", "Ascend310", "--format", "json",
                 "--seq-len", "1024"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "Llama-2-7b-hf" and [t["target"] for t in data["targets"]] == ["Ascend310P3", "Ascend310"]
    assert main(["estimate", str(d / "config.json"), "--precision", "w4a16", "--soc", "Ascend310B1"]) == 0
    assert "Ascend310B1" in capsys.readouterr().out
    assert main(["estimate", str(d), "--soc", "NoSuchChip"]) == 2


def test_target_facts_drive_the_notes_and_default_targets():
    """The weight-only note follows the data files' `weight_only_quant_kernels` figure, and the
    default targets their `estimate_rank`, not names in the code."""
    from ascend_adapt.estimate import DEFAULT_TARGETS, default_targets
    from ascend_adapt.targets import list_targets, load_target

    r = estimate(LLAMA2_7B, ["Ascend310", "Ascend310B1", "Ascend310P3", "Ascend910B"], "w8a16", 1024)
    for t in r.targets:
        fact = load_target(t.target).facts.get("weight_only_quant_kernels")
        noted = any(n.startswith("weight-only int8/int4") for n in t.notes)
        assert noted == (fact is not None and fact.value is False), t.target
    assert {t.target for t in r.targets if any(n.startswith("weight-only") for n in t.notes)} == {
        "Ascend310", "Ascend310B1"}
    ranked = sorted((load_target(n).estimate_rank, n) for n in list_targets() if load_target(n).estimate_rank)
    assert default_targets() == DEFAULT_TARGETS == tuple(n for _, n in ranked)
