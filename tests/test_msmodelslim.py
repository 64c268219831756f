"""msModelSlim-format W8A8 export, read back by an independent parser of the contract.

The parser below is written from the readers' source, not from our writer:

- vLLM-Ascend v0.23.0 `vllm_ascend/quantization/modelslim_config.py`: `quant_model_description.json`
  maps "<prefix>.weight" → quant type; "FLOAT" = unquantized; shards of a fused vLLM layer
  (q/k/v, gate/up) must share one type.
- vLLM-Ascend v0.23.0 `vllm_ascend/_310p/quantization/methods/w8a8_static.py`: a "W8A8" Linear
  [n, k] in an fp16 model has weight int8 [n, k], input_scale [1], input_offset [1],
  quant_bias int32 [n], deq_scale int64 [n], weight_scale [n, 1], weight_offset [n, 1];
  x_q = round(x / input_scale + input_offset) (npu_quantize), y = (x_q·W_qᵀ + quant_bias)·deq_scale
  (npu_quant_matmul); `vllm_ascend/xlite/xlite.py`: the int64 deq_scale is the fp32 bit pattern in
  the low 32 bits.
- msModelSlim AscendV1 (docs/zh/.../ascendv1.md): model_quant_type, version "1.0.0",
  deq_scale = input_scale·weight_scale, every tensor described.

Reading uses the `safetensors` package itself, not our reader.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
st = pytest.importorskip("safetensors.numpy")

from ascend_adapt.errors import UnsupportedError  # noqa: E402

U32 = 2.0 ** -24
U16 = 2.0 ** -11
W8A8_PARAMS = {"weight": "int8", "input_scale": None, "input_offset": None, "quant_bias": "int32",
               "deq_scale": "int64", "weight_scale": None, "weight_offset": None}
# HF Linear → the norm whose output it reads (Llama / Qwen / ChatGLM2 naming)
NORM_OF = [(re.compile(r"(.*\.layers\.\d+\.)(self_attn\.[qkv]_proj|self_attention\.query_key_value)$"),
            "input_layernorm"),
           (re.compile(r"(.*\.layers\.\d+\.)mlp\.(gate_proj|up_proj|dense_h_to_4h)$"), "post_attention_layernorm")]
FUSED = [("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")]


def read_modelslim(d: Path) -> tuple[dict, dict, dict]:
    """(description, tensors, W8A8 layers {prefix: {param: array}}) after checking the contract."""
    desc = json.loads((d / "quant_model_description.json").read_text())
    assert desc.pop("model_quant_type") == "W8A8" and desc.pop("version") == "1.0.0"
    tensors = {}
    for f in sorted(d.glob("*.safetensors")):
        tensors.update(st.load_file(str(f)))
    assert set(tensors) == set(desc), "every tensor described, every description a tensor"
    assert set(desc.values()) <= {"W8A8", "FLOAT"}
    layers = {}
    for name, kind in desc.items():
        if not name.endswith(".weight") or kind != "W8A8":
            continue
        prefix = name[: -len(".weight")]
        p = {k: tensors[f"{prefix}.{k}"] for k in W8A8_PARAMS}
        assert all(desc[f"{prefix}.{k}"] == "W8A8" for k in W8A8_PARAMS)
        n, k = p["weight"].shape
        for key, dt in W8A8_PARAMS.items():
            if dt is not None:
                assert p[key].dtype == np.dtype(dt), (prefix, key, p[key].dtype)
        assert p["input_scale"].shape == (1,) and p["input_offset"].shape == (1,)
        assert p["quant_bias"].shape == (n,) and p["deq_scale"].shape == (n,)
        assert p["weight_scale"].shape == (n, 1) and p["weight_offset"].shape == (n, 1)
        assert np.all(p["deq_scale"] >> 32 == 0), "upper 32 bits of the int64 deq_scale are zero"
        layers[prefix] = p
    for prefix in layers:  # shards of a fused vLLM layer carry one type
        for group in FUSED:
            leaf = prefix.rsplit(".", 1)[-1]
            if leaf in group:
                for other in group:
                    sib = prefix[: -len(leaf)] + other + ".weight"
                    if sib in desc:
                        assert desc[sib] == "W8A8", f"{sib} differs from its fused shard {prefix}"
    return desc, tensors, layers


def deq_scale_f32(p) -> np.ndarray:
    return (p["deq_scale"] & 0xFFFFFFFF).astype(np.uint32).view(np.float32)


def engine_linear(p, x):
    """What npu_quantize + npu_quant_matmul compute (int32 accumulation exact in int64 here)."""
    xs = float(p["input_scale"][0])
    xq = np.clip(np.rint(x / xs + float(p["input_offset"][0])), -128, 127).astype(np.int64)
    acc = xq @ p["weight"].astype(np.int64).T + p["quant_bias"].astype(np.int64)
    return acc * deq_scale_f32(p).astype(np.float64)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint
    from ascend_adapt.quant.msmodelslim import export_msmodelslim
    from ascend_adapt.quant.smoothquant import plan_w8a8

    root = tmp_path_factory.mktemp("msmodelslim")
    out = {}
    # llama with one KV head per query head (o_proj's smoothing folds into v_proj's rows), and
    # ChatGLM2 (fused query_key_value with biases, fused dense_h_to_4h, multi-query attention)
    for arch, over in (("llama", {"num_key_value_heads": 4}), ("chatglm2", {})):
        src = make_tiny_checkpoint(root / f"{arch}-src", arch, config_overrides=over)
        plan = plan_w8a8(src, rule="edge_layers=0;outlier_ratio=off")
        out[arch] = (src, plan, export_msmodelslim(src, root / f"{arch}-w8a8", plan))
    return out


@pytest.mark.parametrize("arch", ["llama", "chatglm2"])
def test_export_follows_the_contract(exported, arch):
    src, plan, d = exported[arch]
    desc, tensors, layers = read_modelslim(d)
    orig = st.load_file(str(src / "model.safetensors"))
    # every decoder Linear is W8A8 under this rule; the head and everything else stays float
    n_linear_tensors = len({lp.hf_name for lp in plan.linears.values()})
    assert len(layers) == n_linear_tensors > 0
    assert all(desc[n] == "FLOAT" and tensors[n].dtype == np.float16 for n in desc
               if n not in {f"{p}.{k}" for p in layers for k in W8A8_PARAMS})
    qparams = {f"{p}.{k}" for p in layers for k in W8A8_PARAMS}
    # every other source tensor, float (rotary inv_freq buffers are not parameters: engines skip them)
    assert set(tensors) - qparams == {n for n in orig if "inv_freq" not in n} - {f"{p}.weight" for p in layers}
    for prefix, p in layers.items():
        w_q = p["weight"].astype(np.int32)
        # symmetric per-channel minmax: codes in [-127, 127], each row reaches ±127
        assert np.abs(w_q).max() <= 127 and np.all(np.abs(w_q).max(1) == 127)
        assert p["input_offset"][0] == 0 and np.all(p["weight_offset"] == 0)
        # deq_scale = input_scale · weight_scale (weight_scale stored fp16: 1 fp16 rounding)
        np.testing.assert_allclose(deq_scale_f32(p), p["input_scale"][0] * p["weight_scale"][:, 0].astype(np.float32),
                                   rtol=U16)
        bias = orig.get(f"{prefix}.bias")
        if bias is not None:  # quant_bias = round(bias / deq_scale): within half a step
            assert np.all(np.abs(p["quant_bias"] * deq_scale_f32(p).astype(np.float64) - bias)
                          <= deq_scale_f32(p) / 2 * (1 + 4 * U32))
            assert desc[f"{prefix}.bias"] == "FLOAT"
    assert json.loads((d / "config.json").read_text())["torch_dtype"] == "float16"
    assert any(f.name.startswith("tokenizer") for f in d.iterdir())


def _expected_scalings(prefix, plan, orig, tensors, notes):
    """(s_in, r_out) of an exported Linear: the engine computes y_orig(x_e · s_in) / r_out.

    s_in: the norm's original / exported weight for norm-fed Linears (read from the files);
    otherwise the plan's smoothing vector, or 1 where the export notes say "unsmoothed".
    r_out: the consumer's smoothing vector on the rows that feed it (v → o, up → down), else 1;
    fused tensors are [q; k; v] and [gate; up] (ChatGLM2's layout)."""
    lps = [lp for lp in plan.linears.values() if lp.hf_name == prefix + ".weight"]
    norm = next((m.group(1) + nm for rx, nm in NORM_OF if (m := rx.match(prefix))), None)
    if norm is not None:
        s_in = orig[norm + ".weight"].astype(np.float64) / tensors[norm + ".weight"].astype(np.float64)
    elif any(n.startswith(lps[0].name + ":") for n in notes):
        s_in = np.ones_like(lps[0].smooth, dtype=np.float64)
    else:
        s_in = lps[0].smooth.astype(np.float64)
    consumer = {"attn.v": "attn.o", "mlp.up": "mlp.down"}
    r = []
    for lp in lps:  # in canonical order = the fused tensor's row order
        layer, part = lp.name.split(".", 2)[1:]
        c = plan.linears.get(f"layers.{layer}.{consumer.get(part, '-')}")
        folded = c is not None and not any(n.startswith(c.name + ":") for n in notes)
        r.append(c.smooth.astype(np.float64) if folded else np.ones(_PART_ROWS[lp.name]))
    return s_in, np.concatenate(r)


_PART_ROWS: dict = {}  # canonical Linear → its output rows (filled from the source checkpoint)


@pytest.mark.parametrize("arch", ["llama", "chatglm2"])
def test_exported_linears_compute_the_original_function(exported, arch):
    """For every W8A8 Linear: the engine's int8 computation on what the engine feeds it,
    x_e = x / s_in, equals the original Linear on x with its rows divided by r_out (the smoothing
    folded into norms and producer rows, see `_expected_scalings`), within

        Σ_k (input_scale/2)|Ŵ_ok|  + Σ_k |x_e,k| (weight_scale_o/2)   (int8 rounding, x and W)
      + U16 · Σ_k |x_k W_ok| / r_o                                     (s from an fp16 norm weight)
      + deq_scale_o / 2 · (1 + 4u) + (k + 4)·u · Σ_k |x_k W_ok| / r_o   (quant_bias, fp32 arithmetic)

    with Ŵ = weight_q · weight_scale; x_e inside ±126·input_scale (no clipping)."""
    from ascend_adapt.quant.accuracy import read_canonical

    src, plan, d = exported[arch]
    _, tensors, layers = read_modelslim(d)
    orig = st.load_file(str(src / "model.safetensors"))
    notes = json.loads((d / "ascend_adapt_quant.json").read_text())["export_notes"]
    _, canon = read_canonical(src)
    _PART_ROWS.update({lp.name: canon[lp.weight_name].shape[0] for lp in plan.linears.values()})
    rng = np.random.default_rng(0)
    for prefix, p in layers.items():
        s_in, r = _expected_scalings(prefix, plan, orig, tensors, notes)
        xs = float(p["input_scale"][0])
        x_e = rng.uniform(-126.0, 126.0, (8, s_in.size)) * xs
        x = x_e * s_in
        w = orig[prefix + ".weight"].astype(np.float64)
        b = orig.get(prefix + ".bias", np.zeros(w.shape[0])).astype(np.float64)
        want = (x @ w.T + b) / r
        got = engine_linear(p, x_e)
        w_hat = p["weight"].astype(np.float64) * p["weight_scale"].astype(np.float64)
        ws = p["weight_scale"][:, 0].astype(np.float64)
        mag = (np.abs(x) @ np.abs(w).T + np.abs(b)) / r
        bound = (xs / 2 * np.abs(w_hat).sum(1) + np.abs(x_e).sum(1, keepdims=True) * ws / 2
                 + U16 * mag + deq_scale_f32(p) / 2 * (1 + 4 * U32) + (s_in.size + 4) * U32 * mag)
        assert np.all(np.abs(got - want) <= bound), prefix
        # the bound means something: ignoring the smoothing (x fed unscaled, rows unscaled) breaks it
        if not (np.allclose(s_in, 1) and np.allclose(r, 1)):
            assert np.any(np.abs(engine_linear(p, x) - (x @ w.T + b)) > bound), prefix


def test_export_folds_down_and_o_smoothing_into_the_producer_rows(exported):
    """Llama (MHA): down_proj's and o_proj's vectors divide up_proj's / v_proj's rows, so the
    engine needs no Mul: the exported up/v rows are the original ones / s (up to int8 rounding)."""
    from ascend_adapt.quant.msmodelslim import export_recipes

    src, plan, d = exported["llama"]
    recipes, notes = export_recipes(plan, plan_spec(src))
    assert recipes["layers.0.mlp.down"].row_fold == "layers.0.mlp.up"
    assert recipes["layers.0.attn.o"].row_fold == "layers.0.attn.v" and notes == []
    note = json.loads((d / "ascend_adapt_quant.json").read_text())
    assert note["export_notes"] == [] and any("Linears int8" in line for line in note["plan"])
    _, _, c2 = exported["chatglm2"]
    notes2 = json.loads((c2 / "ascend_adapt_quant.json").read_text())["export_notes"]
    # multi-query attention: o_proj has no exact fold and is exported unsmoothed, said so
    assert notes2 and all("attn.o" in n and "unsmoothed" in n for n in notes2)


def plan_spec(src):
    from ascend_adapt.quant.accuracy import read_canonical

    return read_canonical(src)[0]


def test_export_refuses_chatglm6b_and_an_existing_output(tmp_path, exported):
    from ascend_adapt.errors import OutputExistsError
    from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint
    from ascend_adapt.quant.msmodelslim import export_msmodelslim

    glm = make_tiny_checkpoint(tmp_path / "glm", "chatglm")
    with pytest.raises(UnsupportedError, match="ChatGLM-6B"):
        export_msmodelslim(glm, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    src, plan, d = exported["llama"]
    with pytest.raises(OutputExistsError):
        export_msmodelslim(src, d, plan)


def test_deq_scale_packing_round_trips():
    from ascend_adapt.quant.msmodelslim import pack_deq_scale, unpack_deq_scale

    v = np.array([1e-6, 0.5, 3.25e-3, 1.0], np.float32)
    packed = pack_deq_scale(v)
    assert packed.dtype == np.int64 and np.all(packed >> 32 == 0)
    np.testing.assert_array_equal(unpack_deq_scale(packed), v)
    assert packed[1] == 0x3F000000  # 0.5f


def test_cli_export_format_msmodelslim(exported, tmp_path, capsys):
    """`ascend-adapt export --format msmodelslim --quantize w8a8` writes the directory the parser
    reads; without --quantize w8a8, or onto an existing output, it exits 2 with the reason
    (before any calibration run)."""
    from ascend_adapt.cli.main import main

    src, _, _ = exported["llama"]
    out = tmp_path / "cli-w8a8"
    assert main(["export", str(src), "-o", str(out), "--format", "msmodelslim", "--quiet"]) == 2
    assert "--quantize w8a8" in capsys.readouterr().err and not out.exists()
    assert main(["export", str(src), "-o", str(out), "--format", "msmodelslim", "--quantize", "w8a8",
                 "--keep-fp16", "edge_layers=0;outlier_ratio=off", "--smooth-alpha", "0.6", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "SmoothQuant α=0.6" in printed and "quant_model_description.json" in printed
    _, _, layers = read_modelslim(out)
    assert len(layers) == 7 * 2
    assert main(["export", str(src), "-o", str(out), "--format", "msmodelslim", "--quantize", "w8a8",
                 "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
