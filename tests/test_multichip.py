"""Issue 13 item 4: the multi-chip split (`convert --chips N`, `--device-ids`).

Tiny Llama-2 / ChatGLM-6B split over 2 (and Llama-2 over 4) chips give the unsplit greedy tokens on
the simulator and through the strict fake pyACL (host and device KV cache, the CLI and the Python
API); the per-chip fit check from config.json (13B fp16 on Ascend310P3, 7B fp16 on Ascend310); a
chip whose stage does not fit is refused by name; bad --chips / --device-ids values are refused.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ascend_adapt.errors import ConfigError
from ascend_adapt.estimate.core import spec_for
from ascend_adapt.estimate.fit import (ModelDoesNotFitError, check_fit, check_split_fit, chips_for_split,
                                       partition_layers)

LLAMA_13B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 5120,
    "intermediate_size": 13824, "num_hidden_layers": 40, "num_attention_heads": 40,
    "num_key_value_heads": 40, "hidden_act": "silu", "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-05, "tie_word_embeddings": False, "vocab_size": 32000, "torch_dtype": "float16",
}
LLAMA_7B = {**LLAMA_13B, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 32}
GIB = 2**30


def config_dir(d, cfg):
    """A model directory holding only config.json: the fit check reads nothing else."""
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _entries(p):
    return sorted(x.name for x in p.iterdir())


# ------------------------------------------------------------------------------ fit from the config
def test_13b_fp16_refused_on_one_310p3_chip_and_accepted_on_two(tmp_path):
    from ascend_adapt.om_convert.convert import check_split_memory_fit, convert

    src = config_dir(tmp_path / "llama-13b", LLAMA_13B)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(ModelDoesNotFitError) as e:
        convert(src, work / "out", soc="Ascend310P3", use_atc="never")
    assert "does not fit Ascend310P3" in e.value.message
    assert "--chips 2" in e.value.hint and "int8 weight quantization" in e.value.hint
    assert _entries(work) == []  # refused before anything is written
    # --chips 2: the fit check convert runs (from the config, per chip) accepts it
    sf = check_split_memory_fit(src, "Ascend310P3", 2, precision_mode="force_fp16", weight_dtype="float16",
                                layout="step", batch=1, max_len=2048, seq_len=512)
    assert sf.fits and sf.ranges == [(0, 20), (20, 40)] and sf.device_ids == [0, 1]
    per = sf.to_dict()["per_chip"]
    # each chip: half the layers (20 × 2·(4·5120² + 3·5120·13824) B ≈ 11.9 GiB) + its end of the model
    # (embedding or head, 32000·5120·2 B = 0.31 GiB) + half the KV cache (0.78 GiB) + the workspace
    for c in per:
        assert 12 * GIB < c["needed_bytes"] < 14 * GIB < c["usable_bytes"]
        assert c["kv_cache_bytes"] == 2 * 20 * 2048 * 5120 * 2
    whole = check_fit(spec_for(LLAMA_13B)[0], "Ascend310P3", weight_bytes_per_elem=2, compute_bytes=2, batch=1,
                      max_len=2048, prompt_len=512)
    assert not whole.fits and whole.usable_bytes < whole.needed_bytes  # ~26 GiB > ~21 GiB
    # the two chips hold every weight once (the head and the embedding are distinct matrices here)
    assert sum(c["weights_bytes"] for c in per) == whole.footprint.weights_bytes
    assert "chip 0 layers 0-19" in sf.summary() and "chip 1 layers 20-39" in sf.summary()


def test_7b_fp16_on_ascend310_chips_gets_the_chip_count_it_needs(tmp_path):
    from ascend_adapt.om_convert.convert import check_split_memory_fit, convert

    spec = spec_for(LLAMA_7B)[0]
    src = config_dir(tmp_path / "llama-7b", LLAMA_7B)
    with pytest.raises(ModelDoesNotFitError) as e:
        convert(src, tmp_path / "out", soc="Ascend310", use_atc="never")
    n = chips_for_split(spec, "Ascend310", precision="fp16", max_len=2048, prompt_len=512)
    assert n == 2 and f"--chips {n}" in e.value.hint
    ok = check_split_memory_fit(src, "Ascend310", n, precision_mode="force_fp16", weight_dtype="float16",
                                layout="step", batch=1, max_len=2048, seq_len=512)
    assert ok.fits and all(c.total_bytes <= c.usable_bytes for c in ok.chips)
    # a longer context needs more chips: each step of M adds KV cache to every chip
    assert chips_for_split(spec, "Ascend310", precision="fp16", max_len=4096, prompt_len=512) == 3


def test_a_chip_whose_stage_does_not_fit_is_refused_by_name(tmp_path):
    from ascend_adapt.om_convert.convert import convert

    src = config_dir(tmp_path / "llama-7b", LLAMA_7B)
    work = tmp_path / "work"
    work.mkdir()
    # 2 Ascend310 chips hold 7B at M=2048 but not at M=4096 (2 GiB of KV cache more)
    with pytest.raises(ModelDoesNotFitError) as e:
        convert(src, work / "out", soc="Ascend310", chips=2, device_ids="4,5", max_len=4096, use_atc="never")
    msg = e.value.message
    assert "split over 2 chips does not fit Ascend310" in msg
    assert "chip 0 (device 4: layers 0-15, embedding)" in msg and "chip 1 (device 5: layers 16-31, head)" in msg
    assert "--chips 3" in e.value.hint
    assert _entries(work) == []
    # one chip over, one under: only the one that does not fit is named
    sf = check_split_fit(spec_for(LLAMA_7B)[0], "Ascend310", 2, weight_bytes_per_elem=2, compute_bytes=2, batch=1,
                         max_len=2048, prompt_len=512, ranges=[(0, 8), (8, 32)])
    assert [c.fits for c in sf.chips] == [True, False]
    err = sf.error("llama-7b").message
    assert "chip 1 (device 1: layers 8-31, head)" in err and "chip 0 (" not in err


def test_partition_balances_the_largest_chip():
    spec = spec_for(LLAMA_7B)[0]
    for n in (1, 2, 3, 4, 5, 32):
        r = partition_layers(spec, n)
        assert r[0][0] == 0 and r[-1][1] == 32 and all(b > a for a, b in r)
        assert all(r[i][1] == r[i + 1][0] for i in range(n - 1))
    # a tied 130k-vocab embedding/head (ChatGLM-6B, 1 GiB in fp16) sits on both end chips: they take fewer layers
    glm = spec_for({"architectures": ["ChatGLMModel"], "model_type": "chatglm", "hidden_size": 4096,
                    "inner_hidden_size": 16384, "num_attention_heads": 32, "num_layers": 28,
                    "layernorm_epsilon": 1e-05, "max_sequence_length": 2048, "position_encoding_2d": True,
                    "vocab_size": 130528, "bos_token_id": 130004, "eos_token_id": 130005,
                    "mask_token_id": 130000, "gmask_token_id": 130001, "pad_token_id": 3})[0]
    sizes = [b - a for a, b in partition_layers(glm, 4)]
    assert sum(sizes) == 28 and sizes[0] < max(sizes[1:3]) and sizes[-1] < max(sizes[1:3])


# ------------------------------------------------------------------------------ bad values
@pytest.mark.parametrize("kw, words", [
    ({"chips": 0}, ["--chips 0", "positive integer"]),
    ({"chips": 3}, ["--chips 3", "2 layers", "--chips 2 or fewer"]),
    ({"chips": 2, "device_ids": "0"}, ["--device-ids 0", "1 device(s) for --chips 2"]),
    ({"chips": 2, "device_ids": "0,0"}, ["distinct"]),
    ({"chips": 2, "device_ids": "0,x"}, ["non-negative integers"]),
    ({"chips": 1, "device_ids": "3"}, ["--chips N"]),
])
def test_bad_chips_values_are_refused_before_writing(tmp_path, tiny_dir, kw, words):
    from ascend_adapt.om_convert.convert import convert

    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(ConfigError) as e:
        convert(tiny_dir("llama"), work / "out", soc="Ascend310P3", max_len=32, gears=[[4]], verify=False, **kw)
    text = e.value.message + " " + (e.value.hint or "")
    assert all(w in text for w in words), text
    assert _entries(work) == []


def test_bad_chips_on_the_cli_exit_2_without_traceback(tmp_path, tiny_dir, capsys):
    from ascend_adapt.cli.main import main as cli

    out = tmp_path / "out"
    assert cli(["convert", str(tiny_dir("llama")), "--soc", "Ascend310P3", "-o", str(out), "--chips", "5",
                "--no-verify"]) == 2
    err = capsys.readouterr().err
    assert "--chips 5" in err and "Traceback" not in err and not out.exists()


# ------------------------------------------------------------------------------ split artifacts run
CASES = {  # name: (arch, layers, chips, layout options)
    "llama-2chips": ("llama", 2, 2, {"gears": [[4], [8]]}),
    "chatglm-2chips": ("chatglm", 2, 2, {"layout": "two-graph", "seq_len": 8}),
    "llama-4chips": ("llama", 4, 4, {"gears": [[4], [8]]}),
}


@pytest.fixture(scope="module")
def split_pairs(tmp_path_factory):
    """(unsplit, split) convert outputs per case, fp32 export under force_fp16 (the simulator
    rounds every op to fp16 with explicit casts, so a graph cut changes nothing: bit-exact)."""
    pytest.importorskip("onnxruntime")
    from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint
    from ascend_adapt.om_convert.convert import convert

    root = tmp_path_factory.mktemp("multichip")
    out = {}
    for name, (arch, layers, chips, opts) in CASES.items():
        key = "num_layers" if arch == "chatglm" else "num_hidden_layers"
        ckpt = make_tiny_checkpoint(root / f"{arch}-{layers}", arch, config_overrides={key: layers})
        one = root / f"{name}-one"
        two = root / f"{name}-split"
        kw = dict(soc="Ascend310P3", max_len=32, verify=False, weight_dtype="float32", **opts)
        convert(ckpt, one, **kw)
        rep = convert(ckpt, two, chips=chips, **kw)
        out[name] = (ckpt, one, two, chips, rep)
    return out


def _prompt(arch):
    from ascend_adapt.model_zoo.tiny import tiny_config

    if arch == "chatglm":
        cfg = tiny_config("chatglm")
        return np.array([[40, 50, 60, cfg["gmask_token_id"], cfg["bos_token_id"]]], np.int64)
    return np.array([[1, 40, 50, 60, 70]], np.int64)


@pytest.mark.parametrize("case", list(CASES))
def test_split_gives_the_unsplit_greedy_tokens_on_the_simulator(split_pairs, case):
    from ascend_adapt.backends import get_backend
    from ascend_adapt.runtime.generate import greedy_tokens

    ckpt, one, two, chips, rep = split_pairs[case]
    prompt = _prompt(CASES[case][0])
    a, b = get_backend("sim", one / "model.omsim"), get_backend("sim", two / "model.omsim")
    assert type(b).__name__ == "SimPipelineBackend" and len(b.stages) == chips
    ta, tb = greedy_tokens(a, prompt, 8)[0].tolist(), greedy_tokens(b, prompt, 8)[0].tolist()
    assert ta == tb
    # the same arithmetic op for op: the stage graphs are the unsplit graph cut between layers and the
    # hand-over is the fp16-exact hidden state, so the logits and every layer output are identical
    la, layers_a = a.full_logits(prompt, layer_outputs=True)
    lb, layers_b = b.full_logits(prompt, layer_outputs=True)
    assert np.array_equal(la, lb)
    assert set(layers_a) == set(layers_b)
    for k in layers_a:
        assert np.array_equal(layers_a[k], layers_b[k]), k
    # decode steps of 1 token hand over [B, 1, H] per chip boundary
    b.handover.tensors = b.handover.bytes = 0
    s = b.new_session(1, b.max_len)
    s.prefill(prompt)
    before = b.handover.bytes
    s.decode(np.array([[3]]))
    assert b.handover.bytes - before == (chips - 1) * b.spec.hidden_size * 4  # fp32 export: 4 B per value
    # the simulated latency is the stages' one after another + one hand-over per chip boundary, each
    # device -> host -> device at the target's PCIe figure (the cost model estimate uses for a split)
    from ascend_adapt.cost_model import CostFigures, handover_ms

    hand = (chips - 1) * handover_ms(b.spec.hidden_size * 4, CostFigures.of(b.target))
    assert hand > 0
    assert b.per_token_ms == pytest.approx(sum(st.per_token_ms for st in b.stages) + hand, rel=1e-12)
    assert b.cost_summary()["handover_ms_per_token"] == pytest.approx(hand, rel=1e-12)
    a.close()
    b.close()


@pytest.mark.parametrize("case", list(CASES))
def test_split_artifact_layout_and_report(split_pairs, case):
    ckpt, one, two, chips, rep = split_pairs[case]
    conv = json.loads((two / "convert.json").read_text())
    assert conv["chips"] == chips and conv["device_ids"] == list(range(chips))
    export = json.loads((two / "export" / "export.json").read_text())
    assert [s["layers"] for s in export["stages"]] == conv["layers"]
    assert (two / "model.omsim" / "pipeline.json").is_file()
    for i in range(chips):
        assert (two / "model.omsim" / f"stage{i}.omsim" / "manifest.json").is_file()
        for g in export["stages"][i]["graphs"].values():
            script = (two / "atc" / f"{g}.sh").read_text()  # one ATC command per stage graph → OUT/<g>.om
            assert f"--output=../{g}" in script and f"--model=../export/{g}.onnx" in script
    text = (two / "convert_report.txt").read_text()
    for i in range(chips):
        assert f"chip {i} (device {i}): layers" in text
    fit = rep.steps[0]["fit"]
    assert fit["chips"] == chips and len(fit["per_chip"]) == chips
    assert all(c["needed_bytes"] <= c["usable_bytes"] for c in fit["per_chip"])
    assert len(rep.artifact["chips"]) == chips and all(c["simulated_memory"] for c in rep.artifact["chips"])
    # the unsplit output keeps today's layout: no split keys anywhere
    assert "chips" not in json.loads((one / "convert.json").read_text())
    assert "stages" not in json.loads((one / "export" / "export.json").read_text())
    assert not (one / "model.omsim" / "pipeline.json").exists()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kv_cache", ["host", "device"])
def test_split_through_the_strict_fake_acl(split_pairs, case, kv_cache):
    """Each stage on its own device (set_device + one context per device), the hidden state through
    the host; with kv_cache="device" each chip's KV cache stays on it."""
    from ascend_adapt.backends import get_backend
    from ascend_adapt.runtime.generate import greedy_tokens
    from ascend_adapt.testing.fake_acl import FakeAcl

    ckpt, one, two, chips, rep = split_pairs[case]
    prompt = _prompt(CASES[case][0])
    golden = greedy_tokens(get_backend("sim", one / "model.omsim"), prompt, 8)[0].tolist()
    fake = FakeAcl()
    be = get_backend("acl", two, acl=fake, kv_cache=kv_cache)
    assert type(be).__name__ == "AclPipelineBackend"
    assert greedy_tokens(be, prompt, 8)[0].tolist() == golden
    assert fake.calls["rt.set_device"] == chips and fake.calls["rt.create_context"] == chips and fake.calls["init"] == 1
    if kv_cache == "device":
        s = be.new_session(1, be.max_len)
        logits = s.prefill(prompt)
        fake.reset_counters()
        logits = s.decode(np.argmax(logits, -1)[:, None])
        spec, M, V = be.spec, be.max_len, be.spec.vocab_size
        pos = 2 if spec.rotary == "glm2d" else 1
        step_in = 4 * pos + 4 * (M + 1)  # positions and the mask go to every chip
        hidden = spec.hidden_size * 4  # fp32 export
        assert fake.bytes["host_to_device"] == 4 + chips * step_in + (chips - 1) * hidden
        assert fake.bytes["device_to_host"] == 4 * V + (chips - 1) * hidden  # logits + the hand-overs
        assert fake.bytes["device_to_device"] == 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * 4
    be.close()
    assert fake.live()["device_allocations"] == 0 and fake.live()["contexts"] == 0


def test_split_generate_cli_and_python_api_with_ascend_adapt_acl_fake(split_pairs, monkeypatch):
    from click.testing import CliRunner

    from ascend_adapt.cli.cmd_generate import generate_cmd
    from ascend_adapt.om_convert.convert import resolve_artifact
    from ascend_adapt.backends import get_backend
    from ascend_adapt.runtime.generate import greedy_tokens

    monkeypatch.setenv("ASCEND_ADAPT_ACL", "fake")
    for case in ("llama-2chips", "llama-4chips"):
        ckpt, one, two, chips, rep = split_pairs[case]
        prompt = _prompt("llama")
        golden = greedy_tokens(get_backend("sim", one / "model.omsim"), prompt, 6)[0].tolist()
        ids = ",".join(str(int(t)) for t in prompt[0])
        r = CliRunner().invoke(generate_cmd, [str(two), "--backend", "acl", "--prompt-ids", ids,
                                              "--max-new-tokens", "6", "--output-ids"])
        assert r.exit_code == 0, r.output
        assert r.output.strip().splitlines()[-1] == ",".join(map(str, golden))
        be = get_backend("acl", resolve_artifact(two, "acl"))
        assert greedy_tokens(be, prompt, 6)[0].tolist() == golden
        be.close()


def test_default_fp16_split_verifies_against_the_golden(tmp_path, tiny_dir):
    """The default build (fp16 export) split over 2 chips passes convert's own verify against the
    torch fp32 golden (a unit-head tiny model: clear greedy margins)."""
    from ascend_adapt.om_convert.convert import convert

    rep = convert(tiny_dir("llama", unit_head=True), tmp_path / "out", soc="Ascend310P3", max_len=32,
                  gears=[[4], [8]], chips=2, verify_tokens=8)
    assert rep.passed, rep.to_text()
    assert rep.verify["checks"]["tokens"]["passed"]
    assert len(rep.verify["cost"]["chips"]) == 2


def test_estimate_plans_the_chip_count_convert_builds():
    """`estimate` states the N of `convert --chips N` (the same planner, estimate.fit.chips_for_split)."""
    from ascend_adapt.estimate import estimate

    rep = estimate(LLAMA_13B, targets=["Ascend310P3", "Ascend310"], seq_len=2048, prompt_len=512)
    by = {t.target: t for t in rep.targets}
    assert by["Ascend310P3"].chips_needed == 2 and not by["Ascend310P3"].fits_one_chip
    spec = spec_for(LLAMA_13B)[0]
    assert by["Ascend310"].chips_needed == chips_for_split(spec, "Ascend310", max_len=2048, prompt_len=512) == 4
    rep7 = estimate(LLAMA_7B, targets=["Ascend310", "Ascend310P3"], seq_len=2048, prompt_len=512)
    assert [t.chips_needed for t in rep7.targets] == [2, 1]
    assert any("convert --chips 2" in n for n in rep7.targets[0].notes)
    # w8a16 int8 Linear weights (7B: ~7 GB) still need 2 Ascend310 chips at this context
    q = estimate(LLAMA_7B, targets=["Ascend310"], precision="w8a16", seq_len=2048, prompt_len=512)
    assert q.targets[0].chips_needed == chips_for_split(spec_for(LLAMA_7B)[0], "Ascend310", precision="w8a16",
                                                        max_len=2048, prompt_len=512)


def test_the_simulator_checks_each_chip_on_its_own_and_names_the_one_that_does_not_fit(split_pairs, tmp_path):
    """Loading a split artifact checks every chip's stage against ONE chip's memory: with a target
    whose chips hold the small middle stages but not the end stages (embedding / head), the first
    chip over the limit is refused by name — a check of the whole model against one chip, or of
    the sum, would name no chip."""
    import shutil
    from pathlib import Path

    import ascend_adapt.targets as targets
    from ascend_adapt.backends import get_backend
    from ascend_adapt.sim.acceptance import SimulatorRejection

    ckpt, one, two, chips, rep = split_pairs["llama-4chips"]
    stages = json.loads((two / "model.omsim" / "pipeline.json").read_text())["stages"]
    totals = [s["memory"]["total_bytes"] for s in stages]
    limit = (min(totals) + max(totals)) // 2  # between the smallest and the largest chip
    assert min(totals) < limit < max(totals)
    data = Path(targets.__file__).parent / "data"
    shutil.copytree(data, tmp_path, dirs_exist_ok=True)  # the target files and what they refer to
    t = json.loads((tmp_path / "Ascend310P3.json").read_text())
    t["usable_memory_bytes"]["value"] = limit
    (tmp_path / "Ascend310P3.json").write_text(json.dumps(t))
    first_bad = next(i for i, tot in enumerate(totals) if tot > limit)
    with pytest.raises(SimulatorRejection) as e:
        get_backend("sim", two / "model.omsim", target=str(tmp_path / "Ascend310P3.json"))
    assert stages[first_bad]["label"] in str(e.value) and "207001" in str(e.value)
    assert all(stages[i]["label"] not in str(e.value) for i in range(chips) if i != first_bad)
    # the unmodified target holds every chip
    get_backend("sim", two / "model.omsim").close()
