"""`convert` end to end on tiny models: parity with the golden, the ATC boundary, ONNX input, gears."""

import json
import os
import stat
import sys

import numpy as np
import pytest

from ascend_adapt.cli.main import main as cli
from ascend_adapt.errors import OutputExistsError
from ascend_adapt.om_convert.convert import convert, verify_llm
from ascend_adapt.model_zoo.base import ADAPTERS
from tolerances import U_FP16, cosine_floor, fp16_rel, fp32_atol

FAKE_ATC = r'''#!{python}
import json, struct, sys
with open({record!r}, "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\n")
args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
{body}
'''
ATC_FAILS = '''
print("ATC start working now, please wait for a moment.")
print("E19010: No parser is registered for Op [layers.0/attn/Softmax, optype [ai.onnx::17::Softmax]].")
print("ATC run failed, Please check the detail log, Try 'atc --help' for more information")
sys.exit(1)
'''
ATC_SUCCEEDS = '''
if args.get("mode") == "3":
    open(args["check_report"], "w").write(json.dumps({"op": []}))
    print("ATC run success, welcome to the next use.")
    sys.exit(0)
with open(args["output"] + ".om", "wb") as fh:
    fh.write(b"IMOD" + struct.pack("<II", 256, 0x20000000) + bytes(248))
print("ATC run success, welcome to the next use.")
'''


def _fake_atc(tmp_path, monkeypatch, body):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "atc_argv.jsonl"
    exe = bindir / "atc"
    exe.write_text(FAKE_ATC.format(python=sys.executable, record=str(record), body=body))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return record


@pytest.mark.parametrize("arch", ["llama", "chatglm"])
def test_convert_must_keep_reproduces_golden_tokens(tiny_dir, tmp_path, arch, capsys):
    src = tiny_dir(arch, untied=True)
    out = tmp_path / "out"
    report = convert(src, out, soc="Ascend310P3", precision_mode="must_keep_origin_dtype", use_atc="never",
                     verify_tokens=24, seq_len=16, max_len=48, layout="two-graph")
    v = report.verify
    assert v["tokens_identical"], (v["golden_tokens"], v["sim_tokens"])
    assert len(v["golden_tokens"]) == 24 and len(set(v["golden_tokens"])) > 3
    # fp32 simulator graph vs fp32 torch golden: 2·u·Σn·max|logits| over the 48 cache slots
    # (tests/tolerances.py, ≈ 1e-3 on logits ~7); a wrong mask, position or cache slot is ≥ 1e-1
    spec = ADAPTERS.get(arch).spec_from_config(json.loads((src / "config.json").read_text()))
    assert v["logits"]["max_abs"] <= fp32_atol(spec, v["logits"]["ref_absmax"], keys=48) and report.passed
    assert v["cost"]["simulated"] and v["cost"]["decode_ms_per_token"] > 0
    # layout: manifest, scripts, simulator artifact, tokenizer; nothing temporary left
    assert json.loads((out / "convert.json").read_text())["omsim"] == "model.omsim"
    assert (out / "atc" / "prefill.sh").is_file() and (out / "atc" / "decode.sh").is_file()
    assert "--soc_version=Ascend310P3" in (out / "atc" / "decode.sh").read_text()
    assert (out / "model.omsim" / "manifest.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # the CLI generates the same text on the simulator as the golden does
    prompt = "你好" if arch == "chatglm" else "Hello world"
    capsys.readouterr()
    assert cli(["generate", str(out), "--backend", "sim", "--prompt", prompt, "--max-new-tokens", "8",
                "--no-stream"]) == 0
    sim_text = capsys.readouterr().out
    assert cli(["generate", str(src), "--backend", "torch", "--prompt", prompt, "--max-new-tokens", "8",
                "--no-stream"]) == 0
    assert sim_text == capsys.readouterr().out


@pytest.mark.parametrize("arch", ["llama", "chatglm"])
def test_convert_force_fp16_keeps_every_layer_close(tiny_dir, tmp_path, arch):
    src = tiny_dir(arch, untied=True)
    report = convert(src, tmp_path / "out", soc="Ascend310P3", precision_mode="force_fp16", use_atc="never",
                     seq_len=16, max_len=48, verify_tokens=8)
    v = report.verify
    # fp16 compute is within fp16_rel(spec) of fp32 (ChatGLM: + its fp16 rotary table at positions
    # ≤ 48), so every layer's cosine is ≥ 1 − rel²/2 (tests/tolerances.py): 0.9998 Llama, 0.998
    # ChatGLM; a zeroed or overflowing layer is < 0.9. The logits: above the fp32 bound (fp16
    # storage really happened), within rel·max|logits|.
    spec = ADAPTERS.get(arch).spec_from_config(json.loads((src / "config.json").read_text()))
    rel = fp16_rel(spec, rotary_positions=48 if arch == "chatglm" else 0)
    assert v["min_layer_cosine"] >= cosine_floor(rel), v["layers"]
    mag = v["logits"]["ref_absmax"]
    assert fp32_atol(spec, mag, keys=48) < v["logits"]["max_abs"] <= rel * mag
    assert report.passed


def test_existing_output_needs_force(tiny_dir, tmp_path):
    src = tiny_dir("llama")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        convert(src, out, soc="Ascend310P3", use_atc="never", verify=False)
    assert (out / "keep.txt").read_text() == "mine"


def test_fake_atc_failure_is_decoded_and_leaves_nothing(tiny_dir, tmp_path, monkeypatch):
    from ascend_adapt.om_convert.atc import AtcError

    record = _fake_atc(tmp_path, monkeypatch, ATC_FAILS)
    out = tmp_path / "out"
    with pytest.raises(AtcError) as e:
        convert(tiny_dir("llama"), out, soc="Ascend310P3", precision_mode="force_fp16", seq_len=16, max_len=48,
                layout="two-graph")
    msg = str(e.value)
    assert "E19010" in msg and "layers.0/attn/Softmax" in msg
    argv = [json.loads(line) for line in record.read_text().splitlines()]
    build = [a for a in argv if "--mode=3" not in a][0] if any("--mode=3" not in a for a in argv) else argv[0]
    assert "--framework=5" in build and "--soc_version=Ascend310P3" in build
    assert "--input_format=ND" in build and "--precision_mode=force_fp16" in build
    assert any(a.startswith("--input_shape=input_ids:1,16;position_ids:1,16;attention_mask:1,1,16,16")
               for a in build)
    assert any(a.startswith("--keep_dtype=") for a in build)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_fake_atc_success_builds_om_files(tiny_dir, tmp_path, monkeypatch):
    _fake_atc(tmp_path, monkeypatch, ATC_SUCCEEDS)
    out = tmp_path / "out"
    report = convert(tiny_dir("llama"), out, soc="Ascend310P3", seq_len=16, max_len=48, verify=False,
                     layout="two-graph")
    assert report.atc["ran"] is True
    for g in ("prefill", "decode"):
        assert (out / f"{g}.om").read_bytes()[:4] == b"IMOD"
    assert json.loads((out / "convert.json").read_text())["om"] == {"prefill": "prefill.om", "decode": "decode.om"}


def _mlp_onnx(tmp_path, batch="B"):
    from ascend_adapt.sim import examples

    return examples.save(examples.mlp(batch=batch), tmp_path / "mlp.onnx")


def test_convert_onnx_with_gears(tmp_path):
    src = _mlp_onnx(tmp_path)
    report = convert(src, tmp_path / "out", soc="Ascend310P3", input_shape="x:-1,64", gears=[(1,), (4,), (8,)],
                     precision_mode="force_fp16", use_atc="never")
    assert report.passed, report.verify
    cmd = report.atc["commands"]["model"]
    assert "--dynamic_dims=1;4;8" in cmd and "--input_shape=x:-1,64" in cmd
    # the MLP in fp16: 10 roundings of 2^-11 on the path to y (as tests/test_sim_numerics.py counts
    # them), so a cosine ≥ 1 − (10·2^-11)²/2 = 0.99999 (tests/tolerances.py)
    assert cosine_floor(10 * U_FP16) <= report.verify["outputs"]["y"]["cosine"]
    assert report.verify["outputs"]["y"]["max_abs"] > 0


def test_convert_onnx_refuses_101_gears(tmp_path):
    from ascend_adapt.om_convert.atc import AtcValidationError

    src = _mlp_onnx(tmp_path)
    with pytest.raises(AtcValidationError, match="E10036"):
        convert(src, tmp_path / "out", soc="Ascend310P3", input_shape="x:-1,64",
                gears=[(i,) for i in range(1, 102)], use_atc="never")
    assert not (tmp_path / "out").exists()


def test_convert_onnx_dynamic_shape_for_ascend310_is_refused(tmp_path):
    from ascend_adapt.errors import AscendAdaptError

    src = _mlp_onnx(tmp_path)
    with pytest.raises(AscendAdaptError, match="dynamic|range|E10"):
        convert(src, tmp_path / "out", soc="Ascend310", input_shape="x:1~8,64", use_atc="never")


def test_run_command_on_convert_output(tiny_dir, tmp_path, capsys):
    out = tmp_path / "out"
    convert(tiny_dir("llama"), out, soc="Ascend310P3", use_atc="never", seq_len=16, max_len=48, verify=False,
            layout="two-graph")
    capsys.readouterr()
    assert cli(["run", str(out), "--graph", "decode", "--save", str(tmp_path / "npy")]) == 0
    text = capsys.readouterr().out
    assert "simulated device time" in text and "logits" in text
    assert np.load(tmp_path / "npy" / "logits.npy").shape == (1, 1, 512)


def test_convert_for_cann6_exports_at_opset_13(tiny_dir, tmp_path):
    import onnx

    report = convert(tiny_dir("chatglm"), tmp_path / "out", soc="Ascend310P3", cann_version="6.0", use_atc="never",
                     seq_len=16, max_len=48, verify=False, layout="two-graph")
    assert report.analysis["prefill"]["accepted"]
    m = onnx.load(str(tmp_path / "out" / "export" / "prefill.onnx"), load_external_data=False)
    assert m.opset_import[0].version == 13
    assert "LayerNormalization" not in {n.op_type for n in m.graph.node}  # primitives before opset 17


def test_verify_fails_on_fp16_overflow_and_names_non_finite_values(tmp_path):
    """fp16 overflow must fail verification loudly: x² overflowing in the norms zeroes the layers
    (cosine collapses), and values beyond fp16's range are reported as non-finite, never as 'cosine 1'."""
    from ascend_adapt.model_zoo.base import ADAPTERS
    from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint, random_canonical_weights, tiny_config

    spec = ADAPTERS.get("llama").spec_from_config(tiny_config("llama"))
    results = {}
    for scale in (400, 100_000):  # x² > 65504 in every RMSNorm; embeddings beyond fp16's max
        w = random_canonical_weights(spec, 0)
        w["embed.weight"] = (w["embed.weight"] * scale).astype(np.float32)
        src = make_tiny_checkpoint(tmp_path / f"hot{scale}", "llama", weights=w)
        convert(src, tmp_path / f"out{scale}", soc="Ascend310P3", precision_mode="force_fp16", use_atc="never",
                seq_len=16, max_len=48, verify=False)
        # with the fp32 islands dropped, fp16 overflows as on the card
        results[scale] = verify_llm(src, tmp_path / f"out{scale}" / "model.omsim", n_tokens=4,
                                    precision_mode="force_fp16", keep_dtype=())
    assert not results[400]["passed"] and results[400]["min_layer_cosine"] < 0.9
    assert not results[100_000]["passed"] and "NON-FINITE values (inf/NaN) in embed" in results[100_000]["summary"]
    # the RMSNorm islands in keep_dtype (what convert passes to ATC) fix the x² overflow
    src400 = tmp_path / "hot400"
    assert verify_llm(src400, tmp_path / "out400" / "model.omsim", n_tokens=4, precision_mode="force_fp16")["passed"]
