"""Grouped W8A16 scales (`convert/export/port --quantize w8a16 --group-size G`) in estimate's memory
formula, `ascend-adapt estimate --group-size` and convert's fit check (issue #14 leftover).

The builder stores one fp16 scale per G input channels of each output row ([in/G, 1, out]), or one
per output row ([out]) without --group-size. The expected bytes here are worked out from the
config's sizes (hidden, intermediate, heads, vocab), not from `canonical_shapes`, and the fit
check's weight term is compared with the tensors a real tiny convert wrote into weights.bin.
Integer byte counts: every comparison is exact.
"""

from __future__ import annotations

import itertools
import json

import pytest

from ascend_adapt.errors import ConfigError
from ascend_adapt.estimate.core import (
    estimate,
    group_size_for,
    memory_footprint,
    spec_for,
    weight_bytes,
)
from ascend_adapt.estimate.fit import check_fit, check_split_fit, chips_for_split

# Llama-2-7B's config.json sizes
LLAMA_7B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 32, "hidden_act": "silu", "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-05, "tie_word_embeddings": False, "vocab_size": 32000, "torch_dtype": "float16",
}


def _linears(cfg: dict) -> list[tuple[int, int]]:
    """(out, in) of every Linear the w8a16 builder stores int8, from the config's sizes: per layer
    q, k, v, o, gate, up, down, and the untied lm_head."""
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    d = h // cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * d
    layer = [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i)]
    out = layer * cfg["num_hidden_layers"]
    if not cfg.get("tie_word_embeddings", False):
        out.append((v, h))
    return out


def _scales(cfg: dict, g: int | None) -> int:
    """fp16 scale bytes: out × (in / G) per Linear, or out per Linear without a group."""
    return sum(o * (i // g if g else 1) * 2 for o, i in _linears(cfg))


def _tiny_cfg() -> dict:
    from ascend_adapt.model_zoo.tiny import tiny_config

    return dict(tiny_config("llama"), tie_word_embeddings=False)


# ------------------------------------------------------------------------------ the formula
@pytest.mark.parametrize("g", [None, 4, 16])
def test_w8a16_scale_bytes_equal_the_shapes_at_every_grouping(g):
    cfg = _tiny_cfg()
    spec = spec_for(cfg)[0]
    w = weight_bytes(spec, "w8a16", g)
    assert w.scales == _scales(cfg, g)
    assert w.quantized == sum(o * i for o, i in _linears(cfg))  # int8: 1 byte per weight, any grouping
    per_channel = weight_bytes(spec, "w8a16")
    assert w.total - per_channel.total == _scales(cfg, g) - _scales(cfg, None)
    assert w.fp16 == per_channel.fp16
    m = memory_footprint(spec, "w8a16", seq_len=64, group_size=g)
    assert m.weights_bytes == w.total and m.weights.scales == w.scales
    assert (f"per group of {g} input channels" if g else "per output channel") in w.scheme


def test_llama2_7b_group_128_scales_are_the_100_mb_the_fit_check_missed():
    spec = spec_for(LLAMA_7B)[0]
    grouped, per_channel = weight_bytes(spec, "w8a16", 128), weight_bytes(spec, "w8a16")
    assert grouped.scales == _scales(LLAMA_7B, 128) == 103_235_584
    assert per_channel.scales == _scales(LLAMA_7B, None) == 2_783_744
    gap = grouped.total - per_channel.total
    assert gap == 100_451_840  # 95.8 MiB; +1.56 % of the int8 weights at G = 128 vs +0.04 % per channel
    kw = {"weight_bytes_per_elem": 1, "compute_bytes": 2, "batch": 1, "max_len": 2048, "prompt_len": 512}
    fit_g = check_fit(spec, "Ascend310P3", group_size=128, **kw)
    fit_c = check_fit(spec, "Ascend310P3", **kw)
    assert fit_g.footprint.weights_bytes - fit_c.footprint.weights_bytes == gap
    assert fit_g.needed_bytes - fit_c.needed_bytes == gap
    assert fit_g.group_size == 128 and fit_g.to_dict()["group_size"] == 128
    assert "fp16 scales per 128 input channels" in fit_g.summary()
    assert "fp16 scales per output channel" in fit_c.summary()
    # two-graph layout: both OMs hold the scales
    two = check_fit(spec, "Ascend310P3", group_size=128, weight_copies=2, layout="two-graph", **kw)
    assert two.footprint.weights_bytes == 2 * grouped.total


def test_a_fit_that_the_grouped_scales_break_is_refused_and_the_options_stay_right():
    """Find the largest M that fits Ascend310 with per-channel scales: at G = 128 it no longer fits."""
    spec = spec_for(LLAMA_7B)[0]
    kw = {"weight_bytes_per_elem": 1, "compute_bytes": 2, "batch": 1, "prompt_len": 512}
    m_c = check_fit(spec, "Ascend310", max_len=8192, **kw).max_len_that_fits
    m_g = check_fit(spec, "Ascend310", max_len=8192, group_size=128, **kw).max_len_that_fits
    assert m_c is not None and m_g is not None and m_g < m_c
    fc = check_fit(spec, "Ascend310", max_len=m_c, group_size=128, **kw)
    assert not fc.fits and check_fit(spec, "Ascend310", max_len=m_c, **kw).fits
    opts = fc.options()
    # the build is already int8: no "int8 weight quantization" suggestion, the per-channel one instead
    assert not any(o.startswith("int8 weight quantization") for o in opts)
    per_channel = memory_footprint(spec, "w8a16", seq_len=m_c, prompt_len=512).total_bytes
    assert fc.int8_total_bytes == per_channel
    assert any("drop --group-size 128" in o and "(fits)" in o for o in opts)
    assert f"--max-len {m_g} or less" in "; ".join(opts)
    # an fp16 build's int8 suggestion prices convert's default int8 build (per-channel scales)
    f16 = check_fit(spec, "Ascend310", max_len=m_c, **{**kw, "weight_bytes_per_elem": 2})
    assert f16.int8_total_bytes == per_channel
    assert any(o.startswith("int8 weight quantization") and "per-channel" in o for o in f16.options())


def test_estimate_and_its_split_and_timing_count_the_groups():
    spec = spec_for(LLAMA_7B)[0]
    gap = _scales(LLAMA_7B, 128) - _scales(LLAMA_7B, None)
    a = estimate(LLAMA_7B, ["Ascend310", "Ascend310P3"], "w8a16", 4096, calibration=False)
    b = estimate(LLAMA_7B, ["Ascend310", "Ascend310P3"], "w8a16", 4096, group_size=128, calibration=False)
    assert b.weights_bytes - a.weights_bytes == gap and b.total_bytes - a.total_bytes == gap
    assert b.decode_bytes_per_step - a.decode_bytes_per_step == gap
    assert "--group-size 128" in b.weights.scheme and "per output channel" in a.weights.scheme
    for tg in ("Ascend310", "Ascend310P3"):
        ta, tb = a.target(tg), b.target(tg)
        assert tb.needed_bytes - ta.needed_bytes == gap
        # the split planner prices the same grouping
        assert tb.chips_needed == chips_for_split(spec, tg, precision="w8a16", max_len=4096, prompt_len=4096,
                                                  group_size=128)
        # the step graph costs the grouped scales' read: a longer decode step
        assert tb.decode_ms > ta.decode_ms
    # w4a16: None is the 128 it always was; another G changes the per-group scale + offset bytes
    w4 = weight_bytes(spec, "w4a16")
    assert w4.total == weight_bytes(spec, "w4a16", 128).total
    blocks = [(o, i) for o, i in _linears(LLAMA_7B)[:-1]]  # w4a16 keeps the head fp16
    assert weight_bytes(spec, "w4a16", 64).scales == sum(o * -(-i // 64) * 4 for o, i in blocks)


@pytest.mark.parametrize("precision,g,words", [
    ("fp16", 64, ("--group-size 64", "precision 'fp16' stores no scales", "--precision w8a16")),
    ("fp32", 128, ("--group-size 128", "precision 'fp32'",)),
    ("w8a16", 100, ("layers.0.attn.q.weight", "group size 100 does not divide the input features 4096")),
    ("w8a16", 0, ("must be a positive integer",)),
    ("w8a16", True, ("must be a positive integer",)),
    ("w4a16", -8, ("must be a positive integer",)),
])
def test_bad_group_sizes_are_refused_naming_the_option(precision, g, words):
    spec = spec_for(LLAMA_7B)[0]
    with pytest.raises(ConfigError) as e:
        weight_bytes(spec, precision, g)
    text = f"{e.value.message} {e.value.hint}"
    assert all(w in text for w in words), text
    with pytest.raises(ConfigError):
        estimate(LLAMA_7B, ["Ascend310P3"], precision, 1024, group_size=g)


def test_fit_checks_refuse_a_group_size_with_fp16_weights():
    spec = spec_for(LLAMA_7B)[0]
    kw = {"weight_bytes_per_elem": 2, "compute_bytes": 2, "batch": 1, "max_len": 1024, "prompt_len": 512,
          "group_size": 64}
    with pytest.raises(ConfigError, match="stores no scales"):
        check_fit(spec, "Ascend310P3", **kw)
    with pytest.raises(ConfigError, match="stores no scales"):
        check_split_fit(spec, "Ascend310P3", 2, **kw)
    assert group_size_for("w8a16") is None and group_size_for("w4a16") == 128 and group_size_for("fp16") is None


# ------------------------------------------------------------------------------ the CLI
def _cli(args, capsys):
    from ascend_adapt.cli.main import main

    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture
def cfg_7b(tmp_path):
    d = tmp_path / "llama-2-7b"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(LLAMA_7B))
    return d


def test_cli_group_size_prices_the_grouped_scales(cfg_7b, capsys):
    rc, out, err = _cli(["estimate", cfg_7b, "--soc", "Ascend310P3", "--precision", "w8a16", "--group-size", 128,
                         "--seq-len", 1024, "--format", "json"], capsys)
    assert rc in (0, None), err
    rep = json.loads(out)
    assert rep["weights"]["scales"] == _scales(LLAMA_7B, 128)
    rc, out, err = _cli(["estimate", cfg_7b, "--soc", "Ascend310P3", "--precision", "w8a16", "--group-size", 128,
                         "--seq-len", 1024], capsys)
    assert rc in (0, None) and "one fp16 scale per group of 128 input channels" in out and "--group-size 128" in out


@pytest.mark.parametrize("args,words", [
    (["--group-size", 64], ("--group-size 64", "precision 'fp16' stores no scales", "--precision w8a16")),
    (["--precision", "w8a16", "--group-size", 100], ("group size 100 does not divide", "--group-size")),
    (["--precision", "w8a16", "--group-size", 0], ("must be a positive integer",)),
])
def test_cli_refuses_a_group_size_it_cannot_price(cfg_7b, capsys, args, words):
    rc, out, err = _cli(["estimate", cfg_7b, "--soc", "Ascend310P3", *args], capsys)
    assert rc == 2, out + err
    assert all(w in err for w in words) and "fix:" in err and "Traceback" not in err


# ------------------------------------------------------------------------------ a real convert
def _initializer_bytes(onnx_path) -> tuple[int, dict[str, tuple[int, int]]]:
    """Σ external-data lengths of the graph's initializers, and name → (offset, length)."""
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    at = {}
    for t in m.graph.initializer:
        if t.external_data:
            kv = {e.key: e.value for e in t.external_data}
            at[t.name] = (int(kv.get("offset", 0)), int(kv["length"]))
    return sum(n for _, n in at.values()), at


@pytest.fixture(scope="module")
def tiny_untied(tmp_path_factory):
    from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("groups") / "llama", "llama",
                                config_overrides={"tie_word_embeddings": False})


@pytest.mark.parametrize("g", [None, 16])
def test_convert_fit_weight_term_equals_the_tensors_written_to_weights_bin(tiny_untied, tmp_path, g):
    """The fit's weight term is Σ tensor bytes; weights.bin = those tensors + the alignment padding
    between them (om_convert/builder/weights.py: each tensor starts on a 64-byte boundary, 4096 for
    tensors of 1 MiB or more): the difference is exactly the gaps between the stored extents."""
    from ascend_adapt.om_convert.convert import convert

    cfg = json.loads((tiny_untied / "config.json").read_text())
    rep = convert(tiny_untied, tmp_path / "o", soc="Ascend310P3", quantize="w8a16", group_size=g, verify=False,
                  use_atc="never")
    fit = rep.steps[0]["fit"]
    assert rep.steps[0]["step"] == "fit" and fit["group_size"] == g
    stored, at = _initializer_bytes(tmp_path / "o" / "export" / "step.onnx")
    assert fit["weights_bytes"] == stored
    assert sum(at[n][1] for n in at if n.endswith("_scale")) == _scales(cfg, g)
    size = (tmp_path / "o" / "export" / "weights.bin").stat().st_size
    extents = sorted(at.values())
    assert size == max(o + n for o, n in extents)
    gaps = sum(b[0] - (a[0] + a[1]) for a, b in itertools.pairwise(extents)) + extents[0][0]
    assert size - stored == gaps and all(o % 64 == 0 for o, _ in extents)


@pytest.mark.parametrize("g", [None, 16])
def test_split_convert_fit_per_chip_equals_each_stage_graphs_tensors(tiny_untied, tmp_path, g):
    """convert --chips 2: each chip's weight term is its stage graph's tensors (the int8 head with
    its scales on the last chip, the embedding on the first)."""
    from ascend_adapt.om_convert.convert import convert

    rep = convert(tiny_untied, tmp_path / "s", soc="Ascend310P3", quantize="w8a16", group_size=g, verify=False,
                  use_atc="never", chips=2)
    fit = rep.steps[0]["fit"]
    assert fit["group_size"] == g and len(fit["per_chip"]) == 2
    for chip in fit["per_chip"]:
        stored, _ = _initializer_bytes(tmp_path / "s" / "export" / f"stage{chip['chip']}_step.onnx")
        assert chip["weights_bytes"] == stored, chip


def test_estimate_w8a16_grouped_equals_the_simulator_on_the_grouped_export(tiny_dir, tmp_path):
    """estimate's step graph with --group-size G is the builder's grouped graph: its decode step
    equals the simulator's on a `--quantize w8a16 --group-size G` export (same ops, same cost
    function; only float64 summation / layer extrapolation rounding, `agreement_rel`)."""
    pytest.importorskip("onnx")
    from ascend_adapt.om_convert.builder import build_llm_onnx
    from test_cost_model import _sim_decode, agreement_rel

    src = tiny_dir("llama")
    exp = tmp_path / "export_g16"
    build_llm_onnx(src, exp, batch=1, max_len=64, gears=[16], weight_dtype="float16", target="Ascend310P3",
                   progress=False, quantize="w8a16", group_size=16)
    rep, sim_ms = _sim_decode(exp)
    cfg = json.loads((src / "config.json").read_text())
    kw = {"seq_len": 64, "batch": 1, "prompt_len": 16, "calibration": False}
    t = estimate(cfg, ["Ascend310P3"], "w8a16", group_size=16, **kw).targets[0]
    layers = json.loads((exp / "export.json").read_text())["spec"]["num_layers"]
    assert t.decode_ms == pytest.approx(sim_ms, rel=agreement_rel(len(rep.ops), layers))
    per_channel = estimate(cfg, ["Ascend310P3"], "w8a16", **kw).targets[0]
    assert t.decode_ms != per_channel.decode_ms  # the grouped graph, not the per-channel one
