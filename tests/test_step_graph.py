"""Gear builds: ONE step graph serves prefill and decode (decode = gear 1) — one OM, one copy of
the weights on the card — through onnxruntime, the simulator, and convert."""

import numpy as np
import pytest

from ascend_adapt.errors import ConfigError
from ascend_adapt.om_convert.builder import build_llm_onnx
from ascend_adapt.om_convert.builder.llm import normalize_gears
from ascend_adapt.backends import get_backend
from ascend_adapt.runtime.generate import greedy_tokens
from tolerances import fp32_atol


@pytest.fixture(scope="module")
def step_exports(tiny_dir, tmp_path_factory):
    out = {}
    for arch in ("llama", "chatglm"):
        d = tmp_path_factory.mktemp(f"step-{arch}") / "exp"
        build_llm_onnx(tiny_dir(arch, untied=True), d, max_len=40, gears=[4, 8, 16], target="Ascend310P3",
                       progress=False)
        out[arch] = d
    return out


def _prompt(arch, n):
    """n-token prompts; ChatGLM's end with [gMASK] <sop> as its tokenizer makes them."""
    from ascend_adapt.model_zoo.tiny import tiny_config

    ids = list(range(40, 40 + n))
    if arch == "chatglm":
        cfg = tiny_config("chatglm")
        ids = ids[: n - 2] + [cfg["gmask_token_id"], cfg["bos_token_id"]]
    return np.asarray([ids], np.int64)


@pytest.mark.parametrize("arch", ["llama", "chatglm"])
def test_step_graph_matches_golden_for_every_gear(step_exports, tiny_dir, arch):
    import onnx

    exp = step_exports[arch]
    model = onnx.load(str(exp / "step.onnx"), load_external_data=False)
    assert [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, "seq"]
    assert not (exp / "prefill.onnx").exists() and not (exp / "decode.onnx").exists()
    golden = get_backend("torch", tiny_dir(arch, untied=True))
    ort = get_backend("onnxruntime", exp)
    for n in (3, 8, 13):  # gears 4, 8, 16
        ids = _prompt(arch, n)
        assert greedy_tokens(ort.new_session, ids, 12).tolist() == greedy_tokens(golden.new_session, ids, 12).tolist()
        a, la = golden.full_logits(ids, layer_outputs=True)
        b, lb = ort.full_logits(ids, layer_outputs=True)
        # fp32 graph over 40 cache slots vs the fp32 golden: 2·u·Σn·max|output| (tests/tolerances.py),
        # ≈ 6e-3 on these N(0, 1)-head logits (~50); a wrong gear mask or position is O(1)
        assert np.abs(a - b).max() <= fp32_atol(golden.spec, np.abs(a).max(), keys=40)
        assert all(np.abs(la[k] - lb[k]).max() <= fp32_atol(golden.spec, np.abs(la[k]).max(), keys=40) for k in la)


@pytest.mark.parametrize("arch", ["llama", "chatglm"])
def test_step_graph_on_the_simulator(step_exports, tiny_dir, arch):
    from ascend_adapt.backends.sim.artifact import omsim_from_export

    art = omsim_from_export(step_exports[arch], step_exports[arch].parent / "m.omsim", "Ascend310P3",
                            precision_mode="must_keep_origin_dtype")
    assert art.graph_names == ["step"]
    sim = get_backend("sim", art.path)
    assert list(sim.runners) == ["step"] and sim.gears == [1, 4, 8, 16]
    golden = get_backend("torch", tiny_dir(arch, untied=True))
    ids = _prompt(arch, 6)
    assert greedy_tokens(sim.new_session, ids, 12).tolist() == greedy_tokens(golden.new_session, ids, 12).tolist()
    cost = sim.cost_summary()
    assert 0 < cost["decode_ms_per_token"] <= cost["prefill_ms"]
    # the card would refuse a step length that is not a gear
    from ascend_adapt.contract import decode_feeds
    from ascend_adapt.runtime.lm_inputs import prefill_inputs

    step, _ = prefill_inputs(sim.spec, _prompt(arch, 5), None, sim.max_len)
    zeros = np.zeros((sim.spec.num_layers, 1, sim.spec.num_kv_heads, sim.max_len, sim.spec.head_dim), np.float32)
    with pytest.raises(Exception, match="gear"):
        sim.runner("prefill").infer(decode_feeds(step, zeros, zeros))
    sim.close()


def test_gear_limits():
    assert normalize_gears([16, 8, 8], 64) == [1, 8, 16]
    with pytest.raises(ConfigError, match="E10036"):
        normalize_gears(range(2, 102), 256)
    with pytest.raises(ConfigError, match="max_len"):
        normalize_gears([8, 128], 64)
    with pytest.raises(ConfigError, match="at least one prefill length"):
        normalize_gears([1], 64)


def test_convert_with_gears_writes_one_om_command(tiny_dir, tmp_path):
    from ascend_adapt.om_convert.convert import convert

    report = convert(tiny_dir("llama", untied=True), tmp_path / "out", soc="Ascend310P3", max_len=40,
                     gears=[(4,), (8,)], precision_mode="must_keep_origin_dtype", use_atc="never", verify_tokens=8)
    assert report.passed and report.verify["tokens_identical"]
    assert list(report.atc["commands"]) == ["step"]
    cmd = report.atc["commands"]["step"]
    assert "--input_shape=input_ids:1,-1;position_ids:1,-1;attention_mask:1,1,-1,-1;" in cmd
    assert "--dynamic_dims=1,1,1,41;4,4,4,44;8,8,8,48" in cmd
    assert (tmp_path / "out" / "atc" / "step.sh").is_file()
