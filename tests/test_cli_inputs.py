"""Option parsers that cannot go wrong: one gear parser, soc_version aliases, `run --input`.

Every bad value is a ConfigError naming the option and quoting the bad token (the CLI prints it
and exits 2), never a traceback and never a silently different build.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ascend_adapt.cli.main import main as cli
from ascend_adapt.errors import ConfigError
from ascend_adapt.om_convert.atc.gearspec import (GearSyntaxError, parse_gears, parse_input_shape,
                                                  parse_prefill_gears, split_profiles)

# ---------------------------------------------------------------------------------------------
# the one gear parser


@pytest.mark.parametrize("text", ["16;32;64", "16,32,64", " 16 ; 32 ; 64 ", "16;32;64;", "16,32,64,"])
def test_prefill_gears_both_separators_mean_three_lengths(text):
    assert parse_prefill_gears(text) == [16, 32, 64]


@pytest.mark.parametrize("text, quoted, words", [
    ("16;abc", "'abc'", "not a positive integer"),
    ("16;1.5", "'1.5'", "not a positive integer"),
    ("16;-3", "'-3'", "not a positive integer"),
    ("0;16", "'0'", ">= 1"),
    ("16;16", "'16'", "given twice"),
    ("16;;32", "", "empty value"),
    ("", "", "is empty"),
    (";", "", "is empty"),
    ("16,32;64", "", "did you mean 16;32;64"),
    ("16;३२", "'३२'", "not a positive integer"),  # non-ASCII digits: int() would take them, ATC does not
])
def test_prefill_gear_errors_quote_the_token_and_show_the_syntax(text, quoted, words):
    with pytest.raises(GearSyntaxError) as exc:
        parse_prefill_gears(text)
    msg = str(exc.value)
    assert isinstance(exc.value, ConfigError)
    assert msg.startswith(f"--gears '{text}'") and quoted in msg and words in msg
    assert '"16;32;64"' in exc.value.hint  # the accepted syntax, with an example


def test_onnx_gears_are_profiles_checked_against_the_dynamic_dims():
    assert parse_gears("1,8;4,8") == ((1, 8), (4, 8))
    assert parse_gears("1;4;8", values_per_gear=1) == ((1,), (4,), (8,))
    with pytest.raises(GearSyntaxError, match=r"did you mean 1;4;8 \(3 gears\)"):
        parse_gears("1,4,8", values_per_gear=1)
    with pytest.raises(GearSyntaxError, match="'4' has 1 values, but '1,8' has 2"):
        parse_gears("1,8;4")
    with pytest.raises(GearSyntaxError, match="'1,8' is given twice"):
        parse_gears("1,8;1,8")
    with pytest.raises(GearSyntaxError, match="'x' is not a positive integer"):
        parse_gears("1;x")
    # ATC's own parser (AtcOptions) takes 0 at parse time and leaves it to validate() (E10038)
    assert split_profiles("0;4", strict=False) == ((0,), (4,))


def test_input_shape_grammar_is_shared_by_atc_options_settings_and_analyze():
    from ascend_adapt.cli.cmd_analyze import parse_input_shapes
    from ascend_adapt.om_convert.atc import AtcOptions, AtcValidationError
    from ascend_adapt.sim.settings import SimSettings

    text = "input_ids:1,-1;x:0:1,3;r:1~8,4;s:"
    assert AtcOptions(input_shape=text).input_shape == parse_input_shape(text)
    assert SimSettings(input_shape=text).input_shape == {"input_ids": (1, -1), "x:0": (1, 3), "r": ((1, 8), 4),
                                                         "s": ()}
    for bad in ("x:1,abc", "x:1.5", "noname"):
        with pytest.raises(AtcValidationError) as a:
            AtcOptions(input_shape=bad)
        with pytest.raises(AtcValidationError) as s:  # was a ValueError traceback
            SimSettings(input_shape=bad)
        with pytest.raises(AtcValidationError) as z:
            parse_input_shapes(bad)
        assert str(a.value) == str(s.value) == str(z.value)
    with pytest.raises(ConfigError, match="'-1' is not a static dim"):
        parse_input_shapes("x:1,-1")


@pytest.mark.parametrize("gears", ["16,32,64", "16;32;64"])
def test_export_and_convert_build_the_three_gears(tiny_dir, tmp_path, capsys, gears):
    src = tiny_dir("llama")
    assert cli(["export", str(src), "-o", str(tmp_path / "exp"), "--gears", gears, "--max-len", "96",
                "--quiet"]) == 0
    assert json.loads((tmp_path / "exp" / "export.json").read_text())["gears"] == [1, 16, 32, 64]
    # before: "16,32,64" silently built gears [1, 16] (the first number of each ';' group)
    assert cli(["convert", str(src), "--soc", "Ascend310P3", "-o", str(tmp_path / "cv"), "--gears", gears,
                "--max-len", "96", "--no-verify", "--json"]) == 0
    export = json.loads((tmp_path / "cv" / "export" / "export.json").read_text())
    assert export["gears"] == [1, 16, 32, 64]
    cmd = (tmp_path / "cv" / "atc" / "step.sh").read_text()
    assert cmd.count(";") >= 3 and "--dynamic_dims=1,1,1,97;16,16,16,112;32,32,32,128;64,64,64,160" in cmd


@pytest.mark.parametrize("cmd", ["convert", "export"])
@pytest.mark.parametrize("gears, words", [("16;abc", "'abc' is not a positive integer"),
                                          ("16,32;64", "did you mean 16;32;64"),
                                          ("16;16", "'16' is given twice")])
def test_bad_checkpoint_gears_exit_2_with_the_message(tiny_dir, tmp_path, capsys, cmd, gears, words):
    args = [cmd, str(tiny_dir("llama")), "-o", str(tmp_path / "o"), "--gears", gears]
    args += ["--soc", "Ascend310P3", "--no-verify"] if cmd == "convert" else ["--quiet"]
    assert cli(args) == 2  # before: "16;abc" was a ValueError traceback
    err = capsys.readouterr().err
    assert f"--gears '{gears}'" in err and words in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def mlp_onnx(tmp_path_factory):
    from ascend_adapt.sim.examples import mlp, save

    return save(mlp(batch="N"), tmp_path_factory.mktemp("mlp") / "mlp.onnx")


def test_onnx_gears_comma_list_is_refused_with_did_you_mean(mlp_onnx, tmp_path, capsys):
    args = ["convert", str(mlp_onnx), "--soc", "Ascend310P3", "--input-shape", "x:-1,64", "--no-verify"]
    assert cli(args + ["-o", str(tmp_path / "a"), "--gears", "1,4,8"]) == 2
    err = capsys.readouterr().err
    assert "--gears '1,4,8': '1,4,8' has 3 values, but each gear needs 1" in err and "did you mean 1;4;8" in err
    assert cli(args + ["-o", str(tmp_path / "b"), "--gears", "1;4;8"]) == 0
    assert "'--dynamic_dims=1;4;8'" in (tmp_path / "b" / "atc" / "model.sh").read_text()


# ---------------------------------------------------------------------------------------------
# soc_version aliases


def _aliases():
    from ascend_adapt.targets import TARGETS

    return [(name, alias) for name, t in TARGETS.items() for alias in t.aliases]


def test_there_are_aliases_to_check():
    assert ("Ascend910B", "Ascend910B4") in _aliases()


@pytest.mark.parametrize("name, alias", _aliases())
def test_every_alias_keeps_its_soc_version_in_the_atc_command(mlp_onnx, tmp_path, capsys, name, alias):
    from ascend_adapt.targets import load_target

    for spelled in (alias, alias.lower()):
        t = load_target(spelled)
        assert (t.name, t.soc_version) == (name, alias)  # the shared profile, the user's chip
    assert load_target(name).soc_version == name  # the profile itself is unchanged
    out = tmp_path / "o"
    assert cli(["convert", str(mlp_onnx), "--soc", alias.lower(), "-o", str(out), "--input-shape", "x:2,64",
                "--no-verify"]) == 0
    # before: --soc Ascend910B4 wrote --soc_version=Ascend910B
    assert f"--soc_version={alias} " in (out / "atc" / "model.sh").read_text()
    assert json.loads((out / "convert.json").read_text())["soc_version"] == alias
    manifest = json.loads((out / "model.omsim" / "manifest.json").read_text())
    assert manifest["soc_version"] == alias and f"--soc_version={alias}" in json.dumps(manifest)


# ---------------------------------------------------------------------------------------------
# run --input


@pytest.fixture(scope="module")
def llm_artifact(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "cv"
    assert cli(["convert", str(tiny_dir("llama")), "--soc", "Ascend310P3", "-o", str(out), "--gears", "4;8",
                "--max-len", "16", "--no-verify", "--json"]) == 0
    return out


def _npy(path: Path, array) -> str:
    np.save(path, array)
    return str(path)


def test_run_random_inputs_take_a_gear(llm_artifact, capsys):
    # before: random feeds gave every -1 dim size 1, which matches no gear of a step graph
    assert cli(["run", str(llm_artifact)]) == 0
    assert "input  input_ids          int32 [1, 1]" in capsys.readouterr().out


@pytest.mark.parametrize("item, words", [
    ("input_ids", "--input 'input_ids': expected NAME=FILE.npy"),        # before: ValueError traceback
    ("=ids.npy", "expected NAME=FILE.npy"),
    ("input_ids=", "expected NAME=FILE.npy"),
    ("input_ids=missing.npy", "--input input_ids=missing.npy: no such file"),
    ("nosuch={ok}", "the model has no input 'nosuch'"),
    ("input_ids={text}", "not a readable .npy array"),
    ("input_ids={i64}", "dtype int64, the graph input 'input_ids' takes int32"),
    ("input_ids={shape}", "shape [4], the graph input 'input_ids' takes [1, "),
    ("input_ids={neg}", "id -1 is outside [0, 512)"),                     # before: wrapped to the last row
    ("input_ids={big}", "id 512 is outside [0, 512)"),                    # before: a traceback in Gather
])
def test_run_input_is_validated_before_the_run(llm_artifact, tmp_path, capsys, item, words):
    files = {"ok": _npy(tmp_path / "ok.npy", np.array([[1]], np.int32)),
             "i64": _npy(tmp_path / "i64.npy", np.array([[1]], np.int64)),
             "shape": _npy(tmp_path / "shape.npy", np.array([1, 2, 3, 4], np.int32)),
             "neg": _npy(tmp_path / "neg.npy", np.array([[-1]], np.int32)),
             "big": _npy(tmp_path / "big.npy", np.array([[511, 512]], np.int32))}
    (tmp_path / "text.npy").write_text("not numpy")
    files["text"] = str(tmp_path / "text.npy")
    assert cli(["run", str(llm_artifact), "--input", item.format(**files)]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_run_input_ids_in_range_run_on_sim_and_onnxruntime(llm_artifact, tmp_path, capsys):
    ids = _npy(tmp_path / "ids.npy", np.array([[0, 5, 300, 511]], np.int32))
    assert cli(["run", str(llm_artifact), "--input", f"input_ids={ids}", "--save", str(tmp_path / "sim")]) == 0
    assert cli(["run", str(llm_artifact), "--backend", "onnxruntime", "--input", f"input_ids={ids}",
                "--save", str(tmp_path / "ort")]) == 0
    assert (np.load(tmp_path / "sim" / "logits.npy").shape == np.load(tmp_path / "ort" / "logits.npy").shape
            == (1, 4, 512))
    assert cli(["run", str(llm_artifact), "--input", f"input_ids={ids}", "--input", f"input_ids={ids}"]) == 2
    assert "--input input_ids is given twice" in capsys.readouterr().err
