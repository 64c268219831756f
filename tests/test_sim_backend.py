"""The "sim" LM backend end to end: tiny Llama / ChatGLM-6B → export → .omsim → generation."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from conftest import left_pad, tiny_prompts  # noqa: E402
from tolerances import cosine_floor, fp16_rel  # noqa: E402

from ascend_adapt.errors import ConfigError  # noqa: E402
from ascend_adapt.backends.sim.artifact import omsim_from_export  # noqa: E402
from ascend_adapt.om_convert.builder import build_llm_onnx  # noqa: E402
from ascend_adapt.backends import get_backend  # noqa: E402
from ascend_adapt.runtime.generate import greedy_tokens  # noqa: E402
from ascend_adapt.sim.acceptance import SimulatorRejection  # noqa: E402

N = 32
ARCHS = ("llama", "chatglm")


@pytest.fixture(scope="module")
def case(tiny_dir, tiny_backend, tmp_path_factory):
    """case(arch) -> (golden, ids, mask, export dir); ChatGLM untied (a tied random one repeats)."""
    cache = {}

    def make(arch):
        if arch not in cache:
            untied = arch == "chatglm"
            golden = tiny_backend(arch, untied=untied)
            ids, mask = left_pad(tiny_prompts(golden.spec), golden.spec.pad_token_id or 0)
            out = tmp_path_factory.mktemp(f"sim-{arch}") / "export"
            build_llm_onnx(tiny_dir(arch, unit_head=True, untied=untied), out, batch=2, seq_len=ids.shape[1],
                           max_len=ids.shape[1] + N, target="Ascend310P3", progress=False)
            cache[arch] = (golden, ids, mask, out)
        return cache[arch]

    return make


def cosine(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("arch", ARCHS)
def test_must_keep_origin_dtype_generates_the_golden_tokens(case, arch, tmp_path):
    golden, ids, mask, export = case(arch)
    art = omsim_from_export(export, tmp_path / f"{arch}.omsim", "Ascend310P3", precision_mode="must_keep_origin_dtype")
    sim = get_backend("sim", art.path)
    want = greedy_tokens(golden, ids, N, mask)
    got = greedy_tokens(sim, ids, N, mask)
    assert got.tolist() == want.tolist()
    assert len(set(want[0].tolist())) > 3  # the tokens vary: the check is not vacuous
    assert sim.last_cost is not None and sim.last_cost.simulated
    assert sim.last_cost.graph == "decode" and sim.per_token_ms > 0
    summary = sim.cost_summary()
    assert summary["simulated"] and summary["tokens_per_s"] > 0 and summary["memory"]["fits"]


@pytest.mark.parametrize("arch", ARCHS)
def test_force_fp16_tracks_the_golden_layer_by_layer(case, arch, tmp_path):
    golden, ids, mask, export = case(arch)
    art = omsim_from_export(export, tmp_path / f"{arch}16.omsim", "Ascend310P3", precision_mode="force_fp16")
    sim = get_backend("sim", art.path)
    assert sim.settings["decode"].precision_mode == "force_fp16"
    assert sim.settings["decode"].keep_dtype  # the export's fp32 islands went to keep_dtype
    want, want_layers = golden.full_logits(ids, mask, layer_outputs=True)
    got, got_layers = sim.full_logits(ids, mask, layer_outputs=True)
    valid = mask.astype(bool)
    assert set(want_layers) <= set(got_layers)
    # fp16 compute is within fp16_rel(spec) of the fp32 golden (6 weight + ~12 activation roundings
    # per layer; ChatGLM's fp16 rotary table adds 2·P·2^-11), so each layer's cosine is ≥ 1 − rel²/2
    # (tests/tolerances.py) ≈ 0.9998 (Llama); an fp16 overflow or a zeroed layer drops it below 0.9
    rel = fp16_rel(golden.spec, rotary_positions=ids.shape[1] if arch == "chatglm" else 0)
    for name in want_layers:
        c = cosine(want_layers[name][valid], got_layers[name][valid])
        assert c >= cosine_floor(rel), f"{name}: cosine {c:.6f}"
    emb = got_layers["embed"][valid]
    assert np.array_equal(emb, emb.astype(np.float16).astype(np.float32))  # stored in fp16
    assert not np.array_equal(got, want)


def test_export_directory_directly_and_options(case):
    golden, ids, mask, export = case("llama")
    sim = get_backend("sim", export, precision_mode="must_keep_origin_dtype")
    assert sim.target == "Ascend310P3"
    np.testing.assert_array_equal(greedy_tokens(sim, ids, 4, mask), greedy_tokens(golden, ids, 4, mask))
    with pytest.raises(ConfigError, match="batch"):
        sim.new_session(3, 8)
    with pytest.raises(ConfigError, match="unknown options"):
        get_backend("sim", export, precison_mode="fp16")


def test_a_model_too_big_for_the_card_is_refused(case, tmp_path):
    """A target profile (a JSON file, not registered) whose chip has 64 KiB of memory."""
    import json

    from ascend_adapt.targets import DATA_DIR

    *_, export = case("llama")
    profile = json.loads((DATA_DIR / "Ascend310.json").read_text())
    profile.update(name="TinyMemory310", memory_bytes={"value": 65536, "source": "test", "confidence": "M"})
    p = tmp_path / "TinyMemory310.json"
    p.write_text(json.dumps(profile))
    with pytest.raises(SimulatorRejection) as e:
        get_backend("sim", export, target=str(p))
    assert e.value.code == "207001" and "TinyMemory310 has 0.00 GiB" in str(e.value)
