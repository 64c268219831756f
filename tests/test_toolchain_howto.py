"""Toolchains behind one registry (issue #12): the how-to page runs, and convert asks the toolchain.

- docs/adding_a_toolchain.md: its titled blocks are written into a temporary directory as the
  files they name (the toolchain module, the target JSON), the `pyproject.toml` entry point
  becomes an installed distribution's `entry_points.txt` there, and the ```python title="example"```
  block runs: the toolchain is found through the entry point (nothing imports the module by
  hand), the tiny ONNX model is converted through it and verified on the simulator, and the
  optimized graph it wrote computes what the source graph computes. The target is given by its
  file path and never registered (the simulator finds it through the artifact's manifest);
  afterwards nothing stays registered (toolchain, module, sys.path).
- Every compile step goes through the registry: a toolchain that cannot compile an input says
  so before anything is written, naming the target, the toolchain and what to do; convert.py,
  the convert command and analyze compare no toolchain name.
- Issue #12's claim "convert --soc MLU370 asks for a MagicMind precision mode, then ATC's E10001
  rejects that mode" (fixed by #16): the CLI's default mode converts for MLU370 through MagicMind,
  with no ATC script and no E10001.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "adding_a_toolchain.md"
BLOCK = re.compile(r'^```(\w+) title="([^"]+)"\n(.*?)^```', re.S | re.M)
U_FP32 = 2.0 ** -24  # fp32 unit roundoff


def _blocks() -> dict[str, tuple[str, str]]:
    """{title: (language, body)} of the page's titled blocks."""
    found = BLOCK.findall(DOC.read_text(encoding="utf-8"))
    titles = [t for _, t, _ in found]
    assert len(titles) == len(set(titles)), f"duplicate block titles in {DOC.name}: {titles}"
    return {t: (lang, body) for lang, t, body in found}


@pytest.fixture
def howto(tmp_path, monkeypatch):
    """Write the page's files into tmp_path, install its entry point there, run the example block;
    yield its namespace; unregister everything afterwards."""
    from ascend_adapt.om_convert.toolchains import ENTRY_POINT_GROUP, TOOLCHAINS
    from ascend_adapt.targets import TARGETS

    blocks = _blocks()
    assert set(blocks) == {"my_toolchain.py", "pyproject.toml", "Ascend310P3-ort.json", "example"}, set(blocks)
    before_tc, before_targets = TOOLCHAINS.names(), TARGETS.names()
    assert "ort_offline" not in before_tc and "Ascend310P3-ort" not in before_targets
    for title in ("my_toolchain.py", "Ascend310P3-ort.json"):
        (tmp_path / title).write_text(blocks[title][1], encoding="utf-8")
    # the toml's entry points, as pip writes them for an installed distribution
    eps = tomllib.loads(blocks["pyproject.toml"][1])["project"]["entry-points"]
    assert set(eps) == {ENTRY_POINT_GROUP}
    dist = tmp_path / "my_toolchain-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-toolchain\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n" + "".join(f"{k} = {v}\n" for k, v in eps[ENTRY_POINT_GROUP].items()))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "docs_example"}
    try:
        exec(compile(blocks["example"][1], str(DOC), "exec"), ns)  # noqa: S102
        assert "Ascend310P3-ort" not in TARGETS  # converted and verified by path, not by registration
        yield ns
    finally:
        TOOLCHAINS.unregister("ort_offline")
        sys.modules.pop("my_toolchain", None)
    assert TOOLCHAINS.names() == before_tc and TARGETS.names() == before_targets


def _fp32_bound(model_path: Path, x: np.ndarray) -> np.ndarray:
    """Per-output bound on |optimized - source| for the example MLP in fp32 (either order of
    summation): each Linear's K products and the bias add carry γ = (K+1)·u/(1-(K+1)·u) relative
    to Σ|terms|; tanh is 1-Lipschitz, so the first layer's bound goes through |w2|."""
    import onnx
    from onnx import numpy_helper

    w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in onnx.load(str(model_path)).graph.initializer}
    gamma = lambda k: (k + 1) * U_FP32 / (1 - (k + 1) * U_FP32)  # noqa: E731
    x = x.astype(np.float64)
    e1 = gamma(w["w1"].shape[0]) * (np.abs(x) @ np.abs(w["w1"]) + np.abs(w["b1"]))
    h = np.tanh(x @ w["w1"] + w["b1"])
    k2 = w["w2"].shape[0]
    # the rounding of tanh itself: one u per element, also through |w2|
    return (gamma(k2) * (np.abs(h) @ np.abs(w["w2"]) + np.abs(w["b2"]))
            + (e1 + U_FP32 * np.abs(h)) @ np.abs(w["w2"]))


def test_howto_registers_by_entry_point_converts_and_cleans_up(howto, tmp_path):
    import onnxruntime as ort

    from ascend_adapt.om_convert.toolchains import TOOLCHAINS, get_toolchain

    report, target = howto["report"], howto["target"]
    tc = get_toolchain(target)
    assert target.toolchain == "ort_offline" and type(tc).__name__ == "OrtOfflineToolchain"
    assert "ort_offline" in TOOLCHAINS.names() and sys.modules["my_toolchain"].__file__ == str(tmp_path / "my_toolchain.py")
    out = tmp_path / "mlp-ort"
    opt = out / "ort" / "model.opt.onnx"
    assert opt.is_file() and (out / "model.omsim").is_dir() and not (out / "atc").exists()
    assert report.precision_mode == "must_keep_origin_dtype" and report.atc["toolchain"] == "ort_offline"
    assert report.artifact["om"] == {"model": "ort/model.opt.onnx"} and report.artifact["simulated"] is False
    manifest = json.loads((out / "convert.json").read_text())
    assert manifest["om"] == {"model": "ort/model.opt.onnx"} and manifest["target"] == "Ascend310P3-ort"
    compile_step = next(s for s in report.steps if s["step"] == "compile")
    assert compile_step["summary"] == "ONNX Runtime built model.opt.onnx"
    assert "artifact: ort/model.opt.onnx (built by ONNX Runtime)" in report.to_text()
    assert report.passed, report.verify  # the simulator (fp32: must_keep_origin_dtype) vs onnxruntime
    # the compiled graph computes the source graph's function, within fp32 rounding of the MLP
    x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
    src = tmp_path / "mlp.onnx"
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(opt), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    bound = _fp32_bound(src, x)
    assert np.all(np.abs(got.astype(np.float64) - ref) <= bound), (np.abs(got - ref).max(), bound.min())


def test_howto_toolchain_refuses_what_it_cannot_compile(howto, tiny_dir, tmp_path):
    from ascend_adapt.errors import ConfigError, UnsupportedError
    from ascend_adapt.om_convert.convert import convert

    with pytest.raises(UnsupportedError) as e:  # inputs = ("onnx",): an HF checkpoint is refused
        convert(tiny_dir("llama"), tmp_path / "hf", soc="Ascend310P3-ort.json", verify=False)
    msg = str(e.value)
    assert "Ascend310P3-ort" in msg and "ONNX Runtime (toolchain 'ort_offline')" in msg and "fix:" in msg
    assert "export the model to ONNX first" in msg and not (tmp_path / "hf").exists()
    with pytest.raises(ConfigError, match="keeps the graph's dtypes"):
        convert(tmp_path / "mlp.onnx", tmp_path / "fp16", soc="Ascend310P3-ort.json", precision_mode="force_fp16")
    with pytest.raises(UnsupportedError, match="--keep-dtype"):
        convert(tmp_path / "mlp.onnx", tmp_path / "keep", soc="Ascend310P3-ort.json", keep_dtype="OpType::Tanh")
    assert not (tmp_path / "fp16").exists() and not (tmp_path / "keep").exists()


def test_unknown_toolchain_names_the_target_and_the_entry_point_group(tmp_path):
    from ascend_adapt.errors import RegistryError
    from ascend_adapt.om_convert.toolchains import get_toolchain
    from ascend_adapt.targets import load_target_file

    p = tmp_path / "Nowhere.json"
    p.write_text(json.dumps({"schema_version": 1, "name": "Nowhere", "extends": "Ascend310P3",
                             "toolchain": "no_such_compiler"}))
    with pytest.raises(RegistryError) as e:
        get_toolchain(load_target_file(p))
    assert "Nowhere" in str(e.value) and "no_such_compiler" in str(e.value)
    assert "ascend_adapt.toolchains" in str(e.value) and "atc" in str(e.value)


def test_magicmind_refuses_a_plain_onnx_file_before_writing(tmp_path):
    from ascend_adapt.errors import UnsupportedError
    from ascend_adapt.om_convert.convert import convert
    from ascend_adapt.sim import examples

    src = examples.save(examples.mlp(batch=1), tmp_path / "mlp.onnx")
    with pytest.raises(UnsupportedError) as e:
        convert(src, tmp_path / "out", soc="MLU370")
    msg = str(e.value)
    assert "MLU370 builds with MagicMind (toolchain 'magicmind')" in msg and "not a plain ONNX file" in msg
    assert "convert the HF checkpoint directory" in msg and not (tmp_path / "out").exists()


def test_atc_onnx_compile_goes_through_the_registry_with_atc_wording(tmp_path):
    from ascend_adapt.om_convert.convert import convert
    from ascend_adapt.sim import examples

    src = examples.save(examples.mlp(batch=1), tmp_path / "mlp.onnx")
    report = convert(src, tmp_path / "out", soc="Ascend310P3", use_atc="never", keep_dtype="OpType::Tanh")
    assert report.precision_mode == "force_fp16"  # ATC's default when none is given
    assert report.atc["toolchain"] == "atc" and report.atc["scripts"] == {"model": "atc/model.sh"}
    assert "--keep_dtype=atc/keep_dtype_model.cfg" in report.atc["commands"]["model"]
    assert (tmp_path / "out" / "atc" / "keep_dtype_model.cfg").read_text().split() == ["OpType::Tanh"]
    text = report.to_text()
    assert "atc commands, run in the output directory (also in atc/*.sh):" in text
    assert "artifact: model.omsim (simulated: no ATC on this machine)" in text
    step = next(s for s in report.steps if s["step"] == "compile")
    assert step["summary"] == "no ATC here: wrote model.omsim (simulated) and atc/*.sh to run on a CANN host"


def test_mlu370_default_mode_builds_with_magicmind_not_atc(tiny_dir, tmp_path):
    """Issue #12: "convert --soc MLU370 asks for a MagicMind precision mode, then ATC's E10001
    rejects that mode". The CLI's default precision mode now goes to the target's toolchain."""
    from click.testing import CliRunner

    from ascend_adapt.cli.cmd_convert import convert_cmd

    out = tmp_path / "mlu"
    res = CliRunner().invoke(convert_cmd, [str(tiny_dir("llama")), "--soc", "MLU370", "-o", str(out), "--no-verify",
                                           "--max-len", "48", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["precision_mode"] == "force_float16" and report["atc"]["toolchain"] == "magicmind"
    assert "E10001" not in res.output and not (out / "atc").exists()
    assert (out / "magicmind" / "build_step.py").is_file() and (out / "model.omsim").is_dir()
    # the simulator artifact computes in the MagicMind mode it was given
    omsim = json.loads((out / "model.omsim" / "manifest.json").read_text())
    assert json.dumps(omsim).count("force_float16") >= 1


def _string_compares(path: Path) -> list[str]:
    """`x == "name"` / `x != "name"` / `x in ("name", …)` comparisons against a toolchain name."""
    from ascend_adapt.om_convert.toolchains import TOOLCHAINS

    names = set(TOOLCHAINS.names())
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Compare):
            consts = [c for c in ast.walk(node) if isinstance(c, ast.Constant) and c.value in names]
            found += [f"{path.name}:{node.lineno}: {ast.unparse(node)}" for _ in consts[:1]]
    return found


def test_no_toolchain_is_tested_by_name_outside_its_module():
    files = [REPO / "om_convert" / "convert.py", REPO / "ascend_adapt" / "cli" / "cmd_convert.py",
             REPO / "om_convert" / "analyze.py", REPO / "ascend_adapt" / "targets" / "gear_rules.py"]
    assert [hit for f in files for hit in _string_compares(f)] == []
