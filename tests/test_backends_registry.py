"""The backend registry walked end to end: for every registered backend its metadata, and a tiny
graph and a tiny LM run through it, or the precise reason it cannot run here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from ascend_adapt.backends import BACKENDS, Backend, detect, get_backend, names
from ascend_adapt.errors import ConfigError, MissingDependencyError, RegistryError

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

ALL = BACKENDS.names()

# what each backend opens in this test (a new backend must say what it runs, or the walk fails)
LM_ARTIFACT = {"torch": "checkpoint", "torch_npu": "checkpoint", "torch_mlu": "checkpoint", "mindspore": "checkpoint",
               "onnxruntime": "export", "sim": "omsim", "acl": "export"}
LM_OPTIONS = {"mindspore": {"mode": "pynative"}}
GRAPH_ARTIFACT = {"onnxruntime": "onnx", "sim": "graph_omsim", "acl": "stand_in_om"}
# the packages the error names when a dependency is missing (pip / SDK names)
NAMED_AS = {"torch_npu": ("torch-npu", "CANN"), "torch_mlu": ("torch_mlu", "Neuware"), "acl": ("pyACL", "CANN"),
            "mindspore": ("mindspore",), "torch": ("torch",), "onnxruntime": ("onnxruntime",), "onnx": ("onnx",)}

PROMPT = np.array([[1, 40, 50, 60]], np.int64)
STEPS = 4


def _importable(mod: str) -> bool:
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


@pytest.fixture(scope="module")
def arts(tmp_path_factory, tiny_dir):
    """The tiny artifacts: an HF checkpoint, its export (with the .omsim inside, the strict fake's
    stand-in OMs), a one-graph .onnx and its .omsim."""
    import onnx
    from onnx import TensorProto, helper

    from ascend_adapt.backends.sim.artifact import omsim_from_export, write_omsim
    from ascend_adapt.om_convert.builder import build_llm_onnx

    d = tmp_path_factory.mktemp("registry")
    ckpt = tiny_dir("llama", unit_head=True)
    exp = d / "exp"
    build_llm_onnx(ckpt, exp, batch=1, progress=False, seq_len=6, max_len=14)
    omsim_from_export(exp, exp / "model.omsim", "Ascend310P3")
    # y = 2 x + 1 over a static [2, 3] input: exact in fp32, two roundings in fp16
    g = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["x2"]), helper.make_node("Add", ["x2", "one"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]), helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])])
    src = d / "g.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), src)
    art = write_omsim(d / "g.omsim", {"g": src}, "Ascend310P3")
    return {"checkpoint": ckpt, "export": exp, "omsim": exp / "model.omsim", "onnx": src, "graph_omsim": art.path,
            "stand_in_om": art.graph_path("g")}


@pytest.fixture(scope="module")
def golden_tokens(arts):
    from ascend_adapt.runtime.generate import greedy_tokens

    return greedy_tokens(get_backend("torch", arts["checkpoint"]), PROMPT, STEPS).tolist()


# ------------------------------------------------------------------------------------ metadata
@pytest.mark.parametrize("name", ALL)
def test_metadata(name):
    be = BACKENDS.get(name)
    assert isinstance(be, Backend) and be.name == name
    assert be.summary and be.device and be.precisions, f"{name}: summary, device and precisions are required"
    assert be.levels, f"{name} has neither an LM session nor a graph runner"
    assert isinstance(be.simulated, bool)
    assert set(be.missing()) <= set(be.requires)
    for alias in be.aliases:
        assert BACKENDS.get(alias) is be and alias in BACKENDS
    # the test knows what each backend opens: a new backend must be added to the tables above
    assert ("lm" in be.levels) == (name in LM_ARTIFACT), f"{name}: LM level and LM_ARTIFACT disagree"
    assert ("graph" in be.levels) == (name in GRAPH_ARTIFACT), f"{name}: graph level and GRAPH_ARTIFACT disagree"


def test_registry_surface():
    assert {"torch", "onnxruntime", "sim", "acl", "mindspore", "torch_npu", "torch_mlu"} <= set(ALL)
    assert BACKENDS.get("ort") is BACKENDS.get("onnxruntime") and "ort" in names(aliases=True)
    assert names(level="graph") == ["acl", "onnxruntime", "sim"]
    assert [n for n in ALL if BACKENDS.get(n).simulated] == ["sim"]
    with pytest.raises(RegistryError, match="unknown backend 'nope'"):
        BACKENDS.get("nope")
    with pytest.raises(RegistryError, match="already registered"):
        BACKENDS.register(Backend(name="sim", session=lambda p: None))
    with pytest.raises(RegistryError, match="alias 'ort'"):
        BACKENDS.register(Backend(name="other-ort", session=lambda p: None, aliases=("ort",)))
    assert "other-ort" not in BACKENDS


def test_listing_imports_nothing_heavy():
    import subprocess

    code = ("import sys; from ascend_adapt.backends import names, detect; names(); detect('.')\n"
            "heavy = [m for m in ('torch', 'onnxruntime', 'mindspore', 'onnx', 'acl') if m in sys.modules]\n"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_detect_and_convert_output(arts, tmp_path):
    assert detect(arts["checkpoint"]).backend == "torch"
    assert detect(arts["export"]).backend == "onnxruntime" and detect(arts["export"]).level == "lm"
    assert detect(arts["omsim"]).backend == "sim"  # it holds export.json too: sim is asked first
    assert detect(arts["onnx"]).backend == "onnxruntime" and detect(arts["onnx"]).level == "graph"
    om = tmp_path / "m.om"
    om.write_bytes(b"IMOD")
    assert detect(om).backend == "acl"
    port = tmp_path / "port"
    port.mkdir()
    (port / "config.json").write_text("{}")
    (port / "ascend_adapt_port.json").write_text("{}")
    assert detect(port).backend == "mindspore"
    assert detect(tmp_path / "nothing") is None
    # each backend's part of a convert output (convert.json)
    import json

    from ascend_adapt.backends import convert_output_path

    out = tmp_path / "out"
    out.mkdir()
    (out / "convert.json").write_text(json.dumps({"omsim": "model.omsim", "export": "export", "source": "/src",
                                                  "om": {}}))
    assert convert_output_path(out, "sim") == (out / "model.omsim", None)
    assert convert_output_path(out, "ort") == (out / "export", None)
    assert convert_output_path(out, "onnxruntime", "graph", "decode") == (out / "export" / "decode.onnx", "decode")
    assert convert_output_path(out, "torch") == (Path("/src"), None)
    assert convert_output_path(out, "mindspore") == (out, None)
    assert convert_output_path(arts["export"], "sim") == (arts["export"], None)  # not a convert output


# ------------------------------------------------------------------------------------ running
def _expect_missing(be: Backend, call) -> None:
    """`call` must fail with MissingDependencyError naming what is missing here."""
    with pytest.raises(MissingDependencyError) as e:
        call()
    text = str(e.value)
    for mod in be.missing():
        assert any(n in text for n in NAMED_AS.get(mod, (mod,))), f"{be.name}: '{text}' does not name {mod}"


def _fake_acl_wanted(be: Backend, monkeypatch) -> bool:
    """acl without pyACL: the strict fake stands in (ASCEND_ADAPT_ACL=fake), as on a CI host."""
    if be.missing() == ["acl"]:
        monkeypatch.setenv("ASCEND_ADAPT_ACL", "fake")
        return True
    return False


@pytest.mark.parametrize("name", [n for n in ALL if n in GRAPH_ARTIFACT] + [n for n in ALL if n not in GRAPH_ARTIFACT])
def test_tiny_graph(name, arts, monkeypatch):
    be = BACKENDS.get(name)
    if name not in GRAPH_ARTIFACT:
        with pytest.raises(ConfigError, match=f"backend '{name}' does not run single graphs"):
            be.open_graph(arts["onnx"])
        return
    if be.name == "acl":
        monkeypatch.delenv("ASCEND_ADAPT_ACL", raising=False)
        if be.missing():
            _expect_missing(be, lambda: be.open_graph(arts["stand_in_om"]).runner.activate())
            _fake_acl_wanted(be, monkeypatch)
    elif be.missing():
        _expect_missing(be, lambda: be.open_graph(arts[GRAPH_ARTIFACT[name]]).runner.activate())
        return
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3)).astype(np.float32)
    want = x * np.float32(2) + np.float32(1)
    handle = be.open_graph(arts[GRAPH_ARTIFACT[name]])
    assert handle.simulated == be.simulated
    with handle.runner as r:
        assert list(r.get_input_metadata()) == ["x"]
        y = np.asarray(r.infer({"x": x})["y"], np.float32)
    if be.simulated:
        # Ascend310P3's default is fp16 compute: x rounds to fp16 (≤ 2^-11 relative, doubled by
        # the Mul), the result rounds once more (≤ 2^-11 of |y|); second-order terms: 1 %
        bound = (2.0 ** -11 * 2 * np.abs(x) + 2.0 ** -11 * np.abs(want)) * 1.01
        assert np.all(np.abs(y - want) <= bound)
        assert r.last_simulated_time_ms is not None and r.last_simulated_time_ms > 0
    else:
        np.testing.assert_array_equal(y, want)  # fp32 end to end: the same two fp32 operations as numpy


@pytest.mark.parametrize("name", [n for n in ALL if n in LM_ARTIFACT] + [n for n in ALL if n not in LM_ARTIFACT])
def test_tiny_lm(name, arts, golden_tokens, monkeypatch):
    from ascend_adapt.runtime.generate import greedy_tokens

    be = BACKENDS.get(name)
    if name not in LM_ARTIFACT:
        with pytest.raises(ConfigError, match=f"backend '{name}' has no LM level"):
            be.open(arts["export"])
        return
    path = arts[LM_ARTIFACT[name]]
    monkeypatch.delenv("ASCEND_ADAPT_ACL", raising=False)
    if be.missing() and not (_fake_acl_wanted(be, monkeypatch)):
        _expect_missing(be, lambda: greedy_tokens(be.open(path, **LM_OPTIONS.get(name, {})), PROMPT, STEPS))
        return
    lm = be.open(path, **LM_OPTIONS.get(name, {}))
    try:
        got = greedy_tokens(lm, PROMPT, STEPS).tolist()
    finally:
        close = getattr(lm, "close", None)
        if callable(close):
            close()
    # the unit-head tiny model's greedy tokens are robust to fp16 compute (tests/conftest.py)
    assert got == golden_tokens, f"{name}: {got} != golden {golden_tokens}"
