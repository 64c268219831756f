"""Greedy on the card (issue 13 item 3): the graphs output `next_token` (ArgMax over the vocabulary,
first maximum as numpy.argmax) and `logits_sum` (the finiteness witness); with the KV cache on the
card the "acl" runtime copies back only those 8 bytes per row for greedy decoding, and the full
logits only when asked (`decode`: sampling, repetition penalty, --dump-logits, compare).

Before: every step copied the fp32 logits back (4·V bytes per row, 128,000 B for a 32k vocab).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from conftest import unit_head_weights  # noqa: E402

from ascend_adapt.errors import ConfigError  # noqa: E402
from ascend_adapt.backends import get_backend  # noqa: E402
from ascend_adapt.runtime.generate import (GenerationConfig, NonFiniteLogitsError, generate,  # noqa: E402
                                           greedy_tokens)
from ascend_adapt.testing.fake_acl import FakeAcl  # noqa: E402

N = 8


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tiny_dir):
    """convert outputs (the fake's stand-in OMs) of tiny Llama-2 (two-graph and gears) and ChatGLM-6B
    (gears), with the torch golden's greedy tokens."""
    from ascend_adapt.model_zoo.tiny import tiny_config
    from ascend_adapt.om_convert.convert import convert

    out = {}
    root = tmp_path_factory.mktemp("device-greedy")
    for arch, layout, kw in (("llama", "two-graph", {}), ("llama", "gears", {}), ("chatglm", "gears", {"untied": True})):
        ckpt = tiny_dir(arch, unit_head=True, **kw)
        ids = [1, 40, 50, 60, 70]
        if arch == "chatglm":
            cfg = tiny_config("chatglm")
            ids = [40, 50, 60, cfg["gmask_token_id"], cfg["bos_token_id"]]
        prompt = np.array([ids], np.int64)
        golden = greedy_tokens(get_backend("torch", ckpt), prompt, N)[0].tolist()
        opts = {"layout": "two-graph", "seq_len": 8} if layout == "two-graph" else {"gears": [[4], [8]]}
        d = root / f"{arch}-{layout}"
        convert(ckpt, d, soc="Ascend310P3", max_len=32, verify=False, **opts)
        out[(arch, layout)] = (d, prompt, golden)
    return out


@pytest.mark.parametrize("case", [("llama", "two-graph"), ("llama", "gears"), ("chatglm", "gears")])
def test_greedy_generate_copies_back_only_the_token(converted, case):
    d, prompt, golden = converted[case]
    fake = FakeAcl()
    be = get_backend("acl", d, acl=fake, kv_cache="device")
    res = generate(be, None, [prompt[0].tolist()], GenerationConfig(max_new_tokens=N))
    assert res[0].token_ids == golden
    spec, M = be.spec, be.max_len
    s = be.new_session(1, M)
    assert s.greedy_on_graph
    tok, finite = s.prefill_next(prompt)
    assert tok.tolist() == golden[:1] and finite.tolist() == [True]
    fake.reset_counters()
    for i in range(3):
        tok, finite = s.decode_next(tok)
        assert tok.tolist() == golden[i + 1: i + 2] and finite.all()
    pos = 2 if spec.rotary == "glm2d" else 1
    assert fake.bytes["host_to_device"] == 3 * (4 + 4 * pos + 4 * (M + 1))  # ids, positions, mask
    assert fake.bytes["device_to_host"] == 3 * (4 + 4)  # next_token int32 + logits_sum fp32, nothing else
    assert fake.copies["device_to_host"] == 3 * 2
    # full logits on request, from the same session
    fake.reset_counters()
    logits = s.decode(tok)
    assert logits.shape == (1, spec.vocab_size) and int(np.argmax(logits[0])) == golden[4]
    assert fake.bytes["device_to_host"] == 4 * spec.vocab_size
    be.close()
    assert fake.live()["device_allocations"] == 0


def test_sampling_and_repetition_penalty_take_the_full_logits(converted):
    """Sampling and a repetition penalty need the whole distribution: those steps copy the logits."""
    d, prompt, _ = converted[("llama", "gears")]
    fake = FakeAcl()
    be = get_backend("acl", d, acl=fake, kv_cache="device")
    V = be.spec.vocab_size
    for cfg in (GenerationConfig(max_new_tokens=3, do_sample=True, top_k=5, seed=1),
                GenerationConfig(max_new_tokens=3, repetition_penalty=1.3)):
        fake.reset_counters()
        generate(be, None, [prompt[0].tolist()], cfg)
        # the prefill (gear 8 holds the 5-token prompt: logits of its 8 positions) + 2 decodes
        assert fake.bytes["device_to_host"] == (8 + 2) * 4 * V
    be.close()


def _tie_checkpoint(tmp_path, head_rows):
    """A tiny untied Llama whose head is zero except rows `head_rows`, which are equal: every step's
    logits hold ties (the equal rows, and the zeros), so the first-maximum rule decides the token."""
    from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint

    w = unit_head_weights("llama", untied=True)
    head = np.zeros_like(w["lm_head.weight"])
    row = w["lm_head.weight"][3].copy()
    for r in head_rows:
        head[r] = row
    w["lm_head.weight"] = head
    return make_tiny_checkpoint(tmp_path / "ckpt", "llama", weights=w, config_overrides={"tie_word_embeddings": False})


def test_graph_argmax_breaks_ties_like_numpy(tmp_path):
    """The graph's ArgMax takes the first maximum (ONNX select_last_index=0), as numpy.argmax on the
    host: the tokens are the same whether the graph or the host chooses."""
    import onnx

    from ascend_adapt.om_convert.builder import build_llm_onnx

    src = _tie_checkpoint(tmp_path, (5, 9))
    exp = tmp_path / "export"
    build_llm_onnx(src, exp, batch=1, max_len=24, gears=[8], weight_dtype="float16", target="Ascend310P3",
                   progress=False)
    (am,) = [n for n in onnx.load(str(exp / "step.onnx"), load_external_data=False).graph.node
             if n.op_type == "ArgMax"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in am.attribute}
    assert am.input[0] == "logits" and attrs == {"axis": -1, "keepdims": 0, "select_last_index": 0}
    be = get_backend("onnxruntime", exp)
    prompt = np.array([[1, 40, 50, 60, 70]], np.int64)
    on_graph = greedy_tokens(be, prompt, N)  # next_token from the graph
    on_host, logits = greedy_tokens(be, prompt, N, return_logits=True)  # np.argmax of the logits
    assert on_graph.tolist() == on_host.tolist()
    # every step had a tie at its maximum: rows 5 and 9 equal (a > 0) or the zero rows (a <= 0)
    for step in logits[0]:
        top = step.max()
        assert (step == top).sum() >= 2
    assert set(on_graph[0].tolist()) <= {0, 5}  # the first of the tied rows, never 9 or a later zero


def test_non_finite_logits_are_refused_without_copying_them(tmp_path):
    """A NaN/Inf logit makes the graph's logits_sum non-finite: greedy generate raises the same
    NonFiniteLogitsError as on the logits path."""
    from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint
    from ascend_adapt.om_convert.builder import build_llm_onnx

    w = unit_head_weights("llama", untied=True)
    w["lm_head.weight"][7] = np.inf
    src = make_tiny_checkpoint(tmp_path / "ckpt", "llama", weights=w, config_overrides={"tie_word_embeddings": False})
    exp = tmp_path / "export"
    build_llm_onnx(src, exp, batch=1, max_len=24, gears=[8], target="Ascend310P3", progress=False)
    be = get_backend("onnxruntime", exp)
    s = be.new_session(1, be.max_len)
    _, finite = s.prefill_next(np.array([[1, 40, 50]], np.int64))
    assert finite.tolist() == [False]
    with pytest.raises(NonFiniteLogitsError, match="step 0"):
        generate(be, None, [[1, 40, 50]], GenerationConfig(max_new_tokens=4))


def test_exports_without_the_greedy_outputs_use_the_logits(converted, tmp_path):
    """An export made before the graphs had next_token (its manifest lists no such output): the
    session says so, generate takes the logits path and still gives the golden tokens."""
    d, prompt, golden = converted[("llama", "gears")]
    old = tmp_path / "old"
    shutil.copytree(d, old)
    man_path = old / "export" / "export.json"
    man = json.loads(man_path.read_text())
    for g in man["graphs"].values():
        g["outputs"] = [o for o in g["outputs"] if o["name"] in ("logits", "present_keys", "present_values")]
    man_path.write_text(json.dumps(man))
    fake = FakeAcl()
    be = get_backend("acl", old, acl=fake, kv_cache="device")
    s = be.new_session(1, be.max_len)
    assert not s.greedy_on_graph
    with pytest.raises(ConfigError, match="next_token"):
        s.prefill_next(prompt)
    res = generate(be, None, [prompt[0].tolist()], GenerationConfig(max_new_tokens=N))
    assert res[0].token_ids == golden
    be.close()


def test_logits_sum_stays_finite_under_force_fp16_when_the_sum_exceeds_fp16(tmp_path):
    """The finiteness witness is an fp32 island (ATC --keep_dtype): under force_fp16 a sum over V of
    finite logits can pass fp16's 65504 (SmolLM2: 49152 logits of ~10), and an fp16 ReduceSum then
    gives ±inf, refusing good output. Every head row is one N(0, 100²) vector, so all V logits are
    the same r·h: |Σ| = V·|r·h| ≫ 65504 while each logit is far below it (checked first)."""
    from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint
    from ascend_adapt.om_convert.builder import build_llm_onnx

    w = unit_head_weights("llama", untied=True)
    r = np.random.default_rng(5).standard_normal(w["lm_head.weight"].shape[1]).astype(np.float32) * 100
    w["lm_head.weight"][:] = r
    src = make_tiny_checkpoint(tmp_path / "ckpt", "llama", weights=w, config_overrides={"tie_word_embeddings": False})
    exp = tmp_path / "export"
    build_llm_onnx(src, exp, batch=1, max_len=24, gears=[8], target="Ascend310P3", progress=False)
    keep = json.loads((exp / "export.json").read_text())
    assert "outputs/SumLogits" in json.dumps(keep)  # recorded as an fp32 island for ATC
    prompt = np.array([[1, 40, 50]], np.int64)
    ref = get_backend("onnxruntime", exp).new_session(1, 24)
    logits = ref.prefill(prompt)
    V = logits.shape[-1]
    assert np.all(np.abs(logits) < 4096) and np.all(np.abs(logits.astype(np.float64).sum(-1)) > 2 * 65504)
    sim = get_backend("sim", exp, precision_mode="force_fp16", target="Ascend310P3")
    _, finite = sim.new_session(1, 24).prefill_next(prompt)
    assert finite.tolist() == [True], V
    res = generate(sim, None, prompt.tolist(), GenerationConfig(max_new_tokens=3))  # no NonFiniteLogitsError
    res = res[0] if isinstance(res, list) else res
    assert res.finish_reason == "length" and len(res.token_ids) == 3
