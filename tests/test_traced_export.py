"""Traced export of HF models without a builder: tiny Llama (sdpa and eager) and a tiny BERT reach
ATC-clean graphs after the rules, and onnxruntime still matches torch.

What the raw traced graphs actually contain (inspected with transformers 5.x, torch 2.13, opset 17):
- Llama (sdpa): IsNaN/Where guard after Softmax (kept: torch's SDPA export builds its mask with
  -inf, so the guard is live for fully masked rows), Shape / ConstantOfShape / Equal / Where /
  Expand shape chains, int64 inputs, no Trilu. At CANN >= 7 the op table accepts it as is; at
  CANN 6.0 the opset (17 > 13) blocks every op.
- BERT: GatherElements on the int64 token-type buffer (ATC's GatherElements takes fp16/fp32/int32
  data: blocked until the constant chain is folded), LayerNormalization (opset 17 only).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from types import SimpleNamespace  # noqa: E402

from tolerances import ELEMENTARY_ABS, fp32_atol  # noqa: E402

from ascend_adapt.om_convert.analyze import analyze_model  # noqa: E402
from ascend_adapt.om_convert.traced_export import export_traced  # noqa: E402

SEQ = 8


def _atol(model, golden) -> float:
    """onnxruntime on the exported graph vs the fp32 torch model: 2·u·Σn·max|output| over SEQ keys
    (tests/tolerances.py; a BERT layer has the same accumulations: 2 norms, q/k/v, q·k, p·v, output,
    up, down) plus onnxruntime's sigmoid / erf against torch's per layer (ELEMENTARY_ABS).
    ≈ 1.3e-4·max|output|; the function refuses a bound that would not catch a 1e-1 error (a
    dropped mask, a shifted position, a folded constant of the wrong shape)."""
    c = model.config
    shape = SimpleNamespace(hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                            head_dim=c.hidden_size // c.num_attention_heads, q_dim=c.hidden_size,
                            num_layers=c.num_hidden_layers)
    return fp32_atol(shape, np.abs(golden).max(), keys=SEQ, extra_rel=ELEMENTARY_ABS)


def ort_run(path, feeds):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def tiny_llama(attn):
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=128, max_position_embeddings=64,
                                   attn_implementation=attn)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def tiny_bert():
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                  vocab_size=100, max_position_embeddings=32)
    torch.manual_seed(0)
    return transformers.BertModel(cfg).eval()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_tiny_llama_traced_export_for_old_cann(tmp_path, attn):
    model = tiny_llama(attn)
    raw = export_traced(model, tmp_path / "raw.onnx", seq_len=SEQ, rules=False)
    raw_model = onnx.load(str(raw.path))
    raw_ops = {n.op_type for n in raw_model.graph.node}
    assert {"ConstantOfShape", "Shape"} <= raw_ops and ("IsNaN" in raw_ops) == (attn == "sdpa")
    assert raw.input_dtypes == {"input_ids": "int64", "attention_mask": "int64"}

    # CANN 8.0 (the default): the op table takes the traced graph as is; int64 inputs are advice only
    r8 = analyze_model(raw.path, "Ascend310P3")
    assert r8.accepted_as_is and any(f.code == "int64" for f in r8.findings)
    # CANN 6.0: opset 17 is above 13 -> every op blocked, all fixable
    r6 = analyze_model(raw.path, "Ascend310P3", cann_version="6.0")
    assert not r6.accepted_as_is and r6.accepted_after_rules
    assert any(f.code == "opset" and f.level == "error" for f in r6.findings)
    assert all(x.status == "fixable" for x in r6.rows if x.op_type != "Constant")

    res = export_traced(model, tmp_path / "llama.onnx", seq_len=SEQ, target="Ascend310P3", cann_version="6.0")
    fixed = onnx.load(str(res.path))
    assert res.opset == 13 and res.input_dtypes == {"input_ids": "int32", "attention_mask": "int32"}
    left = {n.op_type for n in fixed.graph.node}
    assert not left & {"Shape", "ConstantOfShape", "Range", "Equal"}  # shape chains folded
    assert res.rewrite["fold_shape_chains"].fired > 0 and res.rewrite["opset_downconvert"].fired == 1
    if attn == "sdpa":  # the guard is live (-inf mask): the rule must keep it and say why
        r = res.rewrite["remove_dead_isnan_where"]
        assert r.fired == 0 and any("inf" in m.reason for m in r.misses)
    after = analyze_model(res.path, "Ascend310P3", cann_version="6.0")
    assert after.accepted_as_is, after.blocking
    out = ort_run(res.path, res.example_inputs)
    np.testing.assert_allclose(out, res.torch_output, atol=_atol(model, res.torch_output), rtol=0)
    # padding in the mask still matches torch (the kept guard zeroes fully masked rows)
    ids = res.example_inputs["input_ids"]
    mask = np.ones_like(ids)
    mask[0, :2] = 0
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids.astype(np.int64)), attention_mask=torch.from_numpy(
            mask.astype(np.int64)), use_cache=False).logits.numpy()
    got = ort_run(res.path, {"input_ids": ids, "attention_mask": mask})
    np.testing.assert_allclose(got[:, 2:], ref[:, 2:], atol=_atol(model, ref[:, 2:]), rtol=0)


def test_tiny_bert_reaches_an_atc_clean_graph(tmp_path):
    model = tiny_bert()
    raw = export_traced(model, tmp_path / "raw.onnx", seq_len=SEQ, rules=False)
    r = analyze_model(raw.path, "Ascend310P3")
    ge = r.row("GatherElements")
    assert ge.status == "fixable" and "int64" in ge.reason and ge.fixable_by == ("fold_shape_chains",)
    assert not r.accepted_as_is and r.accepted_after_rules

    for cann in (None, "6.0"):
        res = export_traced(model, tmp_path / f"bert{cann}.onnx", seq_len=SEQ, target="Ascend310P3",
                            cann_version=cann)
        after = analyze_model(res.path, "Ascend310P3", cann_version=cann)
        assert after.accepted_as_is, after.blocking
        ops = {n.op_type for n in onnx.load(str(res.path)).graph.node}
        assert "GatherElements" not in ops
        assert ("LayerNormalization" in ops) == (cann is None)  # kept on CANN 8.0, decomposed for 6.0
        out = ort_run(res.path, res.example_inputs)
        assert out.shape == (1, SEQ, 32)
        np.testing.assert_allclose(out, res.torch_output, atol=_atol(model, res.torch_output), rtol=0)


def test_export_refuses_bad_arguments(tmp_path):
    from ascend_adapt.errors import ConfigError, OutputExistsError

    with pytest.raises(ConfigError, match="opset 19"):
        export_traced(tiny_bert(), tmp_path / "x.onnx", opset=19)
    with pytest.raises(ConfigError, match="not a checkpoint directory"):
        export_traced(str(tmp_path / "nope"), tmp_path / "x.onnx")
    (tmp_path / "exists.onnx").write_text("x")
    with pytest.raises(OutputExistsError):
        export_traced(tiny_bert(), tmp_path / "exists.onnx", seq_len=4)
