"""The .omsim artifact: written atomically after acceptance, read back with checksums."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnx")

from ascend_adapt.errors import ConfigError, OutputExistsError  # noqa: E402
from ascend_adapt.backends.sim.artifact import (HEADER_FILE, is_omsim, read_om_header, read_omsim,  # noqa: E402
                                              write_omsim)
from ascend_adapt.sim import examples as ex  # noqa: E402
from ascend_adapt.sim.acceptance import SimulatorRejection  # noqa: E402
from ascend_adapt.sim.settings import SimSettings  # noqa: E402


@pytest.fixture()
def graphs(tmp_path):
    """Two graphs in one directory, each with its external-data file, plus side files."""
    d = tmp_path / "export"
    a = ex.save(ex.mlp(batch=2), d / "a.onnx", external="weights.bin")
    b = ex.save(ex.rmsnorm_block(), d / "b.onnx", external="weights_b.bin")
    (d / "config.json").write_text('{"model_type": "tiny"}')
    (d / "tokenizer.model").write_bytes(b"sp")
    return {"first": a, "second": b}


def test_write_and_read_back(graphs, tmp_path):
    s = SimSettings(target="Ascend310P3", precision_mode="force_fp16", keep_dtype=ex.RMSNORM_NODES)
    art = write_omsim(tmp_path / "m", graphs, "Ascend310P3", settings={"first": SimSettings(target="Ascend310P3"),
                                                                        "second": s},
                      copy_from=graphs["first"].parent, extra={"note": "tiny"})
    assert art.path.name == "m.omsim" and is_omsim(art.path)
    names = {p.name for p in art.path.iterdir()}
    assert {"manifest.json", "first.onnx", "second.onnx", "weights.bin", "weights_b.bin", "atc.sh", "README.txt",
            HEADER_FILE, "config.json", "tokenizer.model", "second.keep_dtype.cfg"} <= names
    assert not any(n.endswith(".om") for n in names)
    back = read_omsim(art.path)
    man = back.manifest
    assert man["simulated"] is True and "SIMULATED" in man["notice"] and man["note"] == "tiny"
    assert (back.target, back.soc_version) == ("Ascend310P3", "Ascend310P3")
    assert back.settings("second").keep_dtype == ex.RMSNORM_NODES
    assert back.settings("first").precision_mode == "force_fp16"
    assert man["graphs"]["first"]["inputs"]["x"]["shape"] == [2, 64]
    assert man["files"]["first.onnx"]["sha256"] and man["files"]["weights.bin"]["sha256_sampled"]
    assert man["sources"]["weights.bin"]["mtime"] > 0
    assert man["graphs"]["first"]["cost"]["simulated"] is True
    script = (art.path / "atc.sh").read_text()
    assert "--model=second.onnx" in script and "--keep_dtype=second.keep_dtype.cfg" in script
    assert (art.path / "second.keep_dtype.cfg").read_text().split() == list(ex.RMSNORM_NODES)
    h = read_om_header(art.path / HEADER_FILE)
    assert h.simulated and h.magic == 0x444F4D49 and h.headsize == 256 and h.model_num == 2
    assert back.stale_sources() == []


def test_the_artifact_runs_like_its_graph(graphs, tmp_path):
    from ascend_adapt.runtime.runners import OrtRunner, SimRunner

    art = write_omsim(tmp_path / "m.omsim", {"first": graphs["first"]}, "Ascend310P3",
                      settings=SimSettings(target="Ascend310P3", precision_mode="origin"))
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    with SimRunner(art.path) as r, OrtRunner(graphs["first"]) as o:
        assert np.array_equal(r.infer({"x": x})["y"], o.infer({"x": x})["y"])


def test_atc_options_give_settings_and_the_exact_command(graphs, tmp_path):
    atc = pytest.importorskip("ascend_adapt.om_convert.atc")
    keep = tmp_path / "keep.cfg"
    keep.write_text("rms_sq\nOpType::ReduceMean\n")
    opts = atc.AtcOptions(model=str(graphs["second"]), output=str(tmp_path / "om/second"), soc_version="Ascend310P3",
                          input_format="ND", input_shape="x:2,8,256", precision_mode="allow_fp32_to_fp16",
                          keep_dtype=str(keep))
    art = write_omsim(tmp_path / "m.omsim", {"second": graphs["second"]}, "Ascend310P3", {"second": opts})
    s = art.settings("second")
    assert s.precision_mode == "allow_fp32_to_fp16" and s.keep_dtype == ("rms_sq", "OpType::ReduceMean")
    assert s.input_shape == {"x": (2, 8, 256)}
    assert art.atc_command("second") == opts.to_command()
    reloc = art.manifest["graphs"]["second"]["atc_command_relocated"]
    assert "--model=second.onnx" in reloc and "--keep_dtype=second.keep_dtype.cfg" in reloc


def test_rejected_model_writes_nothing(tmp_path):
    p = ex.save(ex.loop_graph(), tmp_path / "loop.onnx")
    with pytest.raises(SimulatorRejection) as e:
        write_omsim(tmp_path / "bad.omsim", {"g": p}, "Ascend310")
    assert e.value.code == "E19010"
    assert not (tmp_path / "bad.omsim").exists()
    assert [q.name for q in tmp_path.iterdir()] == ["loop.onnx"]  # no temporary left behind


def test_never_dot_om_and_existing_needs_force(graphs, tmp_path):
    with pytest.raises(ConfigError, match="never writes .om"):
        write_omsim(tmp_path / "m.om", graphs, "Ascend310P3")
    write_omsim(tmp_path / "m.omsim", {"first": graphs["first"]}, "Ascend310P3")
    with pytest.raises(OutputExistsError):
        write_omsim(tmp_path / "m.omsim", {"first": graphs["first"]}, "Ascend310P3")
    write_omsim(tmp_path / "m.omsim", {"first": graphs["first"]}, "Ascend310P3", force=True)


def test_tampering_and_stale_sources_are_detected(graphs, tmp_path):
    art = write_omsim(tmp_path / "m.omsim", {"first": graphs["first"]}, "Ascend310P3")
    w = art.path / "weights.bin"
    data = bytearray(w.read_bytes())
    data[0] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="does not match its checksum"):
        read_omsim(art.path)
    read_omsim(art.path, verify=False)
    src = graphs["first"].parent / "weights.bin"
    src.write_bytes(bytes(data))
    assert str(src.resolve()) in read_omsim(art.path, verify=False).stale_sources()


def test_real_om_and_garbage_are_told_apart(tmp_path):
    from ascend_adapt.backends.sim.artifact import pack_imod_header

    om = tmp_path / "x.om"
    om.write_bytes(pack_imod_header(0)[:4] + b"\0" * 300)
    with pytest.raises(ConfigError, match="real OM"):
        read_omsim(om)
    junk = tmp_path / "junk.om"
    junk.write_bytes(b"hello")
    with pytest.raises(ConfigError, match="IMOD"):
        read_om_header(junk)
    with pytest.raises(ConfigError, match="not a simulator artifact"):
        read_omsim(tmp_path)


def test_manifest_is_plain_json(graphs, tmp_path):
    art = write_omsim(tmp_path / "m.omsim", {"first": graphs["first"]}, "Ascend310P3")
    json.loads((art.path / "manifest.json").read_text())
