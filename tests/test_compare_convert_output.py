"""`compare` on a convert output directory: it holds the source's config.json (so it used to pass
for a checkpoint and failed with "no weights found"); each side now opens the backend's part of it
(the simulator artifact first, `ort:` the export), through the backend registry."""

import pytest

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint
    from ascend_adapt.om_convert.convert import convert

    d = tmp_path_factory.mktemp("cmpout")
    ckpt = make_tiny_checkpoint(d / "tiny", "llama")
    out = d / "out"
    convert(ckpt, out, soc="Ascend310P3", seq_len=8, max_len=16, progress=False)
    return ckpt, out


def test_a_convert_output_opens_its_simulator_artifact_or_the_prefixed_part(converted):
    import json

    from ascend_adapt.compare.sources import parse_spec

    ckpt, out = converted
    manifest = json.loads((out / "convert.json").read_text())
    s = parse_spec(str(out))
    assert s.backend == "sim" and s.path == out / manifest["omsim"]
    o = parse_spec(f"ort:{out}")
    assert o.backend == "onnxruntime" and o.path != out and o.path.is_relative_to(out)
    assert parse_spec(str(ckpt)).backend == "torch"  # a checkpoint stays a checkpoint


def test_compare_runs_against_a_convert_output(converted):
    from ascend_adapt.compare import compare

    ckpt, out = converted
    r = compare(ckpt, out, atol=1.0, rtol=1.0)
    assert r.passed and r.outputs  # both sides ran: the golden and the simulated artifact
