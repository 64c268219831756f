"""`convert` defaults that work for a real 7B checkpoint (issue #11, conversion half): weights in
the dtype the card stores, one step graph (one OM, one copy of the weights on the card and on
disk), a realistic context, the fit check before anything is written, a verify that fits the
machine."""

import json
import math
import shutil
import struct

import numpy as np
import pytest

from ascend_adapt.cli.main import main as cli
from ascend_adapt.estimate import estimate
from ascend_adapt.estimate.core import spec_for
from ascend_adapt.estimate.fit import ModelDoesNotFitError, check_fit
from ascend_adapt.om_convert.convert import (convert, default_context, default_weight_dtype, golden_plan,
                                             verify_llm)

LLAMA_7B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 32, "hidden_act": "silu", "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2, "vocab_size": 32000, "torch_dtype": "float16",
}
CHATGLM_6B = {
    "_name_or_path": "THUDM/chatglm-6b", "architectures": ["ChatGLMModel"], "model_type": "chatglm",
    "hidden_size": 4096, "inner_hidden_size": 16384, "num_attention_heads": 32, "num_layers": 28,
    "layernorm_epsilon": 1e-05, "max_sequence_length": 2048, "position_encoding_2d": True,
    "vocab_size": 130528, "torch_dtype": "float16", "bos_token_id": 130004, "eos_token_id": 130005,
    "mask_token_id": 130000, "gmask_token_id": 130001, "pad_token_id": 3,
}


def sparse_checkpoint(d, config, n_shards=7):
    """A full-size fp16 safetensors checkpoint whose tensor data are holes (`truncate`): real
    headers and file sizes, ~no bytes on disk. Tensor names/shapes come from the adapter."""
    from ascend_adapt.model_zoo.base import adapter_for_config

    d.mkdir(parents=True)
    adapter = adapter_for_config(config)
    spec = adapter.spec_from_config(config)
    items = list(adapter.source_shapes(spec, "hf").items())
    per = math.ceil(len(items) / n_shards)
    weight_map = {}
    for k in range(n_shards):
        shard = items[k * per:(k + 1) * per]
        if not shard:
            break
        fname = f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors"
        header, off = {}, 0
        for name, shape in shard:
            n = math.prod(shape) * 2
            header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
            weight_map[name] = fname
        hb = json.dumps(header).encode()
        hb += b" " * ((-len(hb)) % 8)
        with open(d / fname, "wb") as f:
            f.write(struct.pack("<Q", len(hb)) + hb)
            f.truncate(8 + len(hb) + off)
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (d / "config.json").write_text(json.dumps(config))
    return d


def _entries(p):
    return sorted(x.name for x in p.iterdir())


# --------------------------------------------------------------------------------- tiny models
@pytest.mark.parametrize("arch", ["llama", "chatglm"])
def test_defaults_fp16_one_step_graph_one_copy_on_disk(tiny_dir, tmp_path, arch):
    src = tiny_dir(arch, untied=True)
    out = tmp_path / "out"
    report = convert(src, out, soc="Ascend310P3", use_atc="never", verify_tokens=8)  # every default
    exp = json.loads((out / "export" / "export.json").read_text())
    # fp16 weights under the default force_fp16 (what the card stores)
    assert exp["weight_dtype"] == "float16"
    # the step-graph layout: one graph, decode = gear 1, prefill gears up to S = min(512, M/2)
    assert list(exp["graphs"]) == ["step"] and list(report.atc["commands"]) == ["step"]
    # the default context: min(2048, the model's maximum positions) = 256 for the tiny models
    assert exp["max_len"] == 256 and exp["gears"] == [1, 16, 32, 64, 128] and exp["seq_len"] == 128
    # one copy of the weights on disk: the artifact's weights.bin is the export's (same inode)
    a, b = (out / "export" / "weights.bin").stat(), (out / "model.omsim" / "weights.bin").stat()
    assert (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev) and a.st_nlink == 2
    weight_files = {(p.stat().st_dev, p.stat().st_ino): p.stat().st_size for p in out.rglob("*.bin")}
    assert list(weight_files.values()) == [a.st_size]  # every weights file in OUT is that one inode
    # the fit step ran first and the verify passed with greedy parity
    assert report.steps[0]["step"] == "fit" and report.steps[0]["fit"]["weight_copies"] == 1
    assert report.passed and report.verify["tokens_identical"], report.verify["summary"]


def test_relocated_output_still_runs(tiny_dir, tmp_path, capsys):
    out = tmp_path / "out"
    convert(tiny_dir("llama"), out, soc="Ascend310P3", use_atc="never", verify=False)
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(str(out), str(moved))
    from ascend_adapt.backends.sim.artifact import read_omsim

    read_omsim(moved / "model.omsim")  # checksums of the linked weights still hold
    capsys.readouterr()
    assert cli(["generate", str(moved), "--backend", "sim", "--prompt", "Hello", "--max-new-tokens", "4",
                "--no-stream"]) == 0


def test_must_keep_origin_keeps_the_checkpoint_dtype_and_reproduces_the_golden(tiny_dir, tmp_path):
    src = tiny_dir("llama", untied=True)  # an fp32 checkpoint
    report = convert(src, tmp_path / "out", soc="Ascend310P3", precision_mode="must_keep_origin_dtype",
                     use_atc="never", verify_tokens=12)
    assert json.loads((tmp_path / "out" / "export" / "export.json").read_text())["weight_dtype"] == "float32"
    v = report.verify
    # fp32 everywhere on both sides: only summation order differs, ~ L·eps32·|logit| ≪ 1e-4
    assert v["tokens_identical"] and v["logits"]["max_abs"] < 1e-4


def test_default_weight_dtype_follows_the_precision_mode():
    for mode in ("force_fp16", "allow_fp32_to_fp16", "allow_mix_precision_fp16", "cube_fp16in_fp32out"):
        assert default_weight_dtype(mode, "float32") == "float16"
    assert default_weight_dtype("must_keep_origin_dtype", "float32") == "float32"
    assert default_weight_dtype("must_keep_origin_dtype", "float16") == "float16"
    assert default_weight_dtype("must_keep_origin_dtype", "bfloat16") == "float32"  # no bf16 export


def test_explicit_options_win_and_two_graph_layout_stays_available(tiny_dir, tmp_path):
    report = convert(tiny_dir("llama"), tmp_path / "out", soc="Ascend310P3", use_atc="never", verify=False,
                     layout="two-graph", weight_dtype="float32", seq_len=16, max_len=48)
    exp = json.loads((tmp_path / "out" / "export" / "export.json").read_text())
    assert list(exp["graphs"]) == ["prefill", "decode"] and exp["weight_dtype"] == "float32"
    assert (exp["seq_len"], exp["max_len"]) == (16, 48)
    fit = report.steps[0]["fit"]
    assert fit["weight_copies"] == 2 and fit["weights_bytes"] == 2 * (fit["weights_bytes"] // 2)


def test_default_context_is_capped_by_the_model():
    llama, _ = spec_for(LLAMA_7B)
    glm, _ = spec_for({**CHATGLM_6B, "max_sequence_length": 1024})
    short, _ = spec_for({**LLAMA_7B, "max_position_embeddings": 512})
    assert default_context(llama, None, None) == (2048, 512)
    assert default_context(glm, None, None) == (1024, 512)
    assert default_context(short, None, None) == (512, 256)
    assert default_context(llama, 4096, 100) == (4096, 100)


# --------------------------------------------------------------------------- the fit check
@pytest.mark.parametrize("config", [LLAMA_7B, CHATGLM_6B], ids=["llama-7b", "chatglm-6b"])
def test_fit_check_refuses_ascend310_before_writing_anything(tmp_path, config, capsys):
    src = sparse_checkpoint(tmp_path / "ckpt", config)
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"
    with pytest.raises(ModelDoesNotFitError) as e:
        convert(src, out, soc="Ascend310", use_atc="never")
    msg, hint = e.value.message, e.value.hint
    assert "does not fit Ascend310" in msg and "usable per chip" in msg and "fp16" in msg
    assert "Ascend310P3" in hint  # a larger chip
    assert "int8 weight quantization" in hint  # the W8A16 figure, named generally (true with or without --quantize)
    assert "--chips 2" in hint  # the multi-chip split that fits (tests/test_multichip.py)
    # nothing was written: no output, no temporary sibling
    assert not out.exists() and _entries(work) == []
    # the CLI: a clear error, exit status 2, no traceback
    capsys.readouterr()
    assert cli(["convert", str(src), "--soc", "Ascend310", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "does not fit Ascend310" in err and "Traceback" not in err and _entries(work) == []


def test_fit_check_uses_estimates_formula_and_counts_two_graph_copies(tmp_path):
    src = sparse_checkpoint(tmp_path / "ckpt", LLAMA_7B)
    spec, _ = spec_for(src)
    fc = check_fit(spec, "Ascend310P3", weight_bytes_per_elem=2, compute_bytes=2, batch=1, max_len=2048,
                   prompt_len=512)
    est = estimate(src, ["Ascend310P3"], "fp16", seq_len=2048, prompt_len=512).target("Ascend310P3")
    assert fc.fits and fc.needed_bytes == est.needed_bytes  # one formula
    # the old default (two OMs, each holding fp16 weights) does not fit; the refusal points to one OM
    with pytest.raises(ModelDoesNotFitError) as e:
        convert(src, tmp_path / "out", soc="Ascend310P3", layout="two-graph", use_atc="never")
    assert "2 copies" in e.value.message and "--layout step" in e.value.hint
    assert not (tmp_path / "out").exists()


def test_fit_check_names_the_context_that_would_fit():
    spec, _ = spec_for(LLAMA_7B)
    # fp16 weights, 8 sequences at a huge context on 910B: the KV cache is what does not fit
    fc = check_fit(spec, "Ascend910B", weight_bytes_per_elem=2, compute_bytes=2, batch=8, max_len=32768,
                   prompt_len=512)
    assert not fc.fits and fc.max_len_that_fits is not None
    m = fc.max_len_that_fits
    ok = check_fit(spec, "Ascend910B", weight_bytes_per_elem=2, compute_bytes=2, batch=8, max_len=m,
                   prompt_len=512, alternatives=False)
    over = check_fit(spec, "Ascend910B", weight_bytes_per_elem=2, compute_bytes=2, batch=8, max_len=m + 1,
                     prompt_len=512, alternatives=False)
    assert ok.fits and not over.fits  # the largest M that fits, exactly
    assert f"--max-len {m}" in " ".join(fc.options())


# ---------------------------------------------------------------- a verify that fits the machine
GiB = 2**30


def test_golden_plan_picks_fp32_then_the_checkpoint_dtype_then_skips():
    spec = {"hidden_size": 4096, "intermediate_size": 11008, "vocab_size": 32000, "num_layers": 32,
            "num_heads": 32}
    p7b = 6_738_415_616
    sim = 13 * GiB
    big = golden_plan(p7b, "float16", 128 * GiB, other_bytes=sim, spec=spec)
    assert big["dtype"] == "float32"
    mid = golden_plan(p7b, "float16", 30 * GiB, other_bytes=sim, spec=spec)  # 27 GB fp32 + sim > 30 GiB
    assert mid["dtype"] == "float16" and "Tolerance consequence" in mid["reason"]
    assert mid["need_bytes"]["float32"] > 30 * GiB >= mid["need_bytes"]["float16"]
    small = golden_plan(p7b, "float16", 24 * GiB, other_bytes=sim, spec=spec)
    assert small["dtype"] is None and "verification skipped" in small["reason"] and "MemAvailable" in small["reason"]
    # an fp32 checkpoint has no 16-bit dtype of its own to fall back on
    assert golden_plan(p7b, "float32", 30 * GiB, other_bytes=sim, spec=spec)["dtype"] is None
    # a tiny model fits anywhere in fp32
    assert golden_plan(40_000, "float32", 2 * GiB)["dtype"] == "float32"


def test_verify_llm_runs_a_16_bit_golden(tmp_path):
    from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint

    src = make_tiny_checkpoint(tmp_path / "h", "llama", dtype="float16")
    convert(src, tmp_path / "out", soc="Ascend310P3", use_atc="never", verify=False)
    v = verify_llm(src, tmp_path / "out" / "model.omsim", n_tokens=6, golden_dtype="float16")
    # both sides compute from the same fp16 weights in fp16: every layer stays close (cosine bound
    # of the fp16 modes, 0.999: fp16 unit roundoff 4.9e-4 over a 2-layer model)
    assert v["min_layer_cosine"] >= 0.999 and np.isfinite(v["logits"]["max_abs"])
