"""LLM graph builder: contract, op set, streaming to one external-data file, manifest, errors."""

from __future__ import annotations

import csv
import json
import tracemalloc

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from conftest import left_pad, tiny_prompts  # noqa: E402
from tolerances import fp16_rel  # noqa: E402

from ascend_adapt.errors import ConfigError, OutputExistsError, UnsupportedError  # noqa: E402
from ascend_adapt.om_convert.builder import MASK_FILL, build_llm_onnx, io_spec  # noqa: E402
from ascend_adapt.om_convert.builder.weights import ExternalWeights  # noqa: E402
from ascend_adapt.targets import load_target  # noqa: E402
from ascend_adapt.targets.optable import DATA_DIR  # noqa: E402

B, S, M = 2, 12, 48
ARCHS = ("llama", "chatglm")


@pytest.fixture(scope="module")
def export(tiny_dir, tmp_path_factory):
    """export(arch, **options) -> BuildResult (cached per arguments)."""
    cache = {}

    def make(arch, **options):
        opts = dict(batch=B, seq_len=S, max_len=M, progress=False, **options)
        key = (arch, repr(sorted((k, type(v).__name__, getattr(v, "name", v)) for k, v in opts.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"export-{arch}") / "onnx"
            cache[key] = build_llm_onnx(tiny_dir(arch, unit_head=True), out, **opts)
        return cache[key]

    return make


def atc_allowlist(opset: int) -> set[str]:
    """ONNX op types ATC parses at `opset` (the project's derived table of the reference sheet
    ../shared/reference/atc_onnx_op_support.csv)."""
    from ascend_adapt.targets.optable import parse_opsets

    rows = [r for r in csv.reader(open(DATA_DIR / "atc_onnx_ops.csv")) if r and not r[0].startswith("#")]
    head = rows[0]
    i_op, i_dom, i_opsets = head.index("op_type"), head.index("domain"), head.index("opsets")
    return {r[i_op] for r in rows[1:] if r[i_dom] == "ai.onnx" and opset in parse_opsets(r[i_opsets])}


def load(path):
    return onnx.load(str(path), load_external_data=False)


def dims(vi):
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]


# ---- the contract --------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_graph_io_matches_the_contract_and_is_static(export, arch):
    r = export(arch, target="Ascend310P3")
    spec_dict = r.manifest["spec"]
    for kind, path in (("prefill", r.prefill_path), ("decode", r.decode_path)):
        m = load(path)
        assert m.opset_import[0].version == 17 and m.ir_version <= 8
        want = r.manifest["graphs"][kind]
        got_in = [{"name": i.name, "shape": dims(i), "dtype": onnx.helper.tensor_dtype_to_np_dtype(
            i.type.tensor_type.elem_type).name} for i in m.graph.input]
        got_out = [{"name": o.name, "shape": dims(o), "dtype": onnx.helper.tensor_dtype_to_np_dtype(
            o.type.tensor_type.elem_type).name} for o in m.graph.output]
        assert got_in == want["inputs"] and got_out == want["outputs"]
        assert all(isinstance(d, int) and d > 0 for v in list(m.graph.input) + list(m.graph.output) for d in dims(v))
    L, KVH, D, V = (spec_dict[k] for k in ("num_layers", "num_kv_heads", "head_dim", "vocab_size"))
    pre = {i["name"]: i["shape"] for i in r.manifest["graphs"]["prefill"]["inputs"]}
    dec = {i["name"]: i["shape"] for i in r.manifest["graphs"]["decode"]["inputs"]}
    assert pre["position_ids"] == ([B, 2, S] if arch == "chatglm" else [B, S])
    assert pre["attention_mask"] == [B, 1, S, S] and dec["attention_mask"] == [B, 1, 1, M + 1]
    assert dec["past_keys"] == [L, B, KVH, M, D]
    outs = {o["name"]: o["shape"] for o in r.manifest["graphs"]["decode"]["outputs"]}
    assert outs == {"logits": [B, 1, V], "present_keys": [L, B, KVH, 1, D], "present_values": [L, B, KVH, 1, D],
                    "next_token": [B, 1], "logits_sum": [B, 1]}
    assert r.manifest["mask_fill"] == MASK_FILL == -10000.0


@pytest.mark.parametrize("arch", ARCHS)
def test_only_ops_atc_accepts_and_analyze_accepts_them(export, arch):
    r = export(arch, target="Ascend310P3")
    assert set(r.op_types) <= atc_allowlist(17), set(r.op_types) - atc_allowlist(17)
    try:
        from ascend_adapt.om_convert.analyze import analyze_model
    except ImportError:  # pragma: no cover - the analyzer is optional here
        return
    for path in (r.prefill_path, r.decode_path):
        report = analyze_model(str(path), "Ascend310P3", rules=False)
        assert report.accepted_as_is, report.blocking


def test_layer_norm_is_fused_at_17_and_decomposed_at_13(export):
    assert "LayerNormalization" in export("chatglm", opset=17).op_types
    r13 = export("chatglm", opset=13)
    assert "LayerNormalization" not in r13.op_types and set(r13.op_types) <= atc_allowlist(13)


@pytest.mark.parametrize("arch", ARCHS)
def test_node_names_and_layer_output_tensors(export, arch):
    r = export(arch)
    m = load(r.prefill_path)
    L = r.manifest["spec"]["num_layers"]
    produced = {o for n in m.graph.node for o in n.output}
    assert {"embed", "final_norm", "logits"} | {f"layers.{i}" for i in range(L)} <= produced
    assert r.manifest["layer_outputs"] == ["embed"] + [f"layers.{i}" for i in range(L)] + ["final_norm", "logits"]
    names = [n.name for n in m.graph.node]
    assert len(names) == len(set(names))
    assert f"layers.{L - 1}/attn/q_proj/MatMul" in names and "layers.0/attn/sdpa/Softmax" in names
    prefixes = {n.split("/")[0] for n in names}
    assert prefixes <= {"inputs", "embed", "rotary_tables", "final_norm", "lm_head", "outputs"} | {f"layers.{i}" for i in range(L)}
    tagged = {p.value for n in m.graph.node for p in n.metadata_props if p.key == "ascend_adapt.op"}
    assert {"attention", "rotary"} <= tagged


# ---- weights: streamed to one shared external-data file --------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_weights_live_in_one_shared_file_and_protos_are_small(export, arch):
    r = export(arch)
    refs = {}
    for path in (r.prefill_path, r.decode_path):
        m = load(path)
        inline = sum(len(t.raw_data) for t in m.graph.initializer)
        assert inline < 64 * 1024  # only small constants are inline
        for t in m.graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                info = {e.key: e.value for e in t.external_data}
                assert info["location"] == "weights.bin"
                refs.setdefault(t.name, set()).add((info["offset"], info["length"]))
        assert path.stat().st_size < 128 * 1024
    assert all(len(v) == 1 for v in refs.values())  # both graphs point at the same bytes
    assert r.weights_path.stat().st_size == r.weights_bytes
    spec = r.manifest["spec"]
    n_params = sum(int(np.prod(s)) for s in _shapes(spec))
    assert r.weights_bytes >= n_params * 4 and r.weights_bytes < n_params * 4 * 1.1
    assert r.prefill_path.stat().st_size < r.weights_bytes / 4


def _shapes(spec_dict):
    from ascend_adapt.spec import ModelSpec

    spec = ModelSpec.from_dict(spec_dict)
    shapes = spec.canonical_shapes()
    if spec.tie_word_embeddings:
        shapes.pop("embed.weight" if spec.tied_source == "lm_head.weight" else "lm_head.weight")
    return shapes.values()


def test_tied_head_is_stored_once_and_uses_gemm(export):
    r = export("chatglm")
    m = load(r.prefill_path)
    names = {t.name for t in m.graph.initializer}
    assert "lm_head.weight" in names and "embed.weight" not in names  # ChatGLM: lm_head wins (§1.12)
    gemm = [n for n in m.graph.node if n.op_type == "Gemm"]
    assert len(gemm) == 1 and gemm[0].input[1] == "lm_head.weight"
    assert [n for n in m.graph.node if n.op_type == "Gather" and n.input[0] == "lm_head.weight"]


def test_the_build_holds_about_one_tensor(tmp_path):
    """tracemalloc sees numpy's buffers: the build's peak stays near the largest tensor, far below
    the weights' total."""
    from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "ckpt", "llama", layout="safetensors-sharded", config_overrides={
        "hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 8, "vocab_size": 2048})
    tracemalloc.start()
    try:
        r = build_llm_onnx(ckpt, tmp_path / "onnx", seq_len=8, max_len=16, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.weights_bytes > 25e6 and r.max_tensor_bytes == 2048 * 256 * 4
    assert peak < 3 * r.max_tensor_bytes + 2e6, (peak, r.max_tensor_bytes)
    assert peak < r.weights_bytes / 4
    assert r.proto_bytes["prefill"] < 300_000


def test_external_weights_writer_aligns_and_dedups(tmp_path):
    with ExternalWeights(tmp_path / "w.bin") as w:
        a = w.add("a", np.arange(3, dtype=np.float32))
        b = w.add("b", np.ones((1 << 18,), np.float32))  # 1 MiB: page aligned
        again = w.add("a", np.arange(3, dtype=np.float32))
    assert a.offset == 0 and b.offset % 4096 == 0 and again == a
    raw = (tmp_path / "w.bin").read_bytes()
    assert np.frombuffer(raw[b.offset:b.offset + b.length], np.float32).sum() == 1 << 18
    with pytest.raises(ConfigError):
        with ExternalWeights(tmp_path / "x.bin") as w:
            w.add("a", np.zeros(2, np.float32))
            w.add("a", np.zeros(3, np.float32))


# ---- manifest and side files -----------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_manifest_keep_dtype_and_copied_files(export, arch):
    r = export(arch, weight_dtype="float16", target="Ascend310P3")
    man = json.loads((r.out_dir / "export.json").read_text())
    assert man == r.manifest
    for k in ("spec", "batch", "seq_len", "max_len", "opset", "weight_dtype", "graphs", "keep_dtype", "op_types"):
        assert k in man
    assert (man["batch"], man["seq_len"], man["max_len"], man["weight_dtype"]) == (B, S, M, "float16")
    assert (r.out_dir / "config.json").is_file() and "config.json" in man["copied_files"]
    assert any(f.endswith(".model") for f in man["copied_files"])  # the SentencePiece tokenizer
    for kind, path in (("prefill", r.prefill_path), ("decode", r.decode_path)):
        names = {n.name for n in load(path).graph.node}
        keep = man["keep_dtype"][kind]
        assert keep and set(keep) <= names
        assert (r.out_dir / man["keep_dtype_files"][kind]).read_text().split() == keep
        assert "layers.0/attn/sdpa/Softmax" in keep and "layers.0/attn_norm/Cast_up" in keep


def test_fp16_export_halves_the_weights_and_keeps_the_cache_in_fp16(export):
    r32, r16 = export("llama"), export("llama", weight_dtype="float16")
    assert abs(r16.weights_bytes / r32.weights_bytes - 0.5) < 0.02
    m = load(r16.decode_path)
    f32, f16, i32 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT32
    io = {v.name: v.type.tensor_type.elem_type for v in list(m.graph.input) + list(m.graph.output)}
    # the KV cache crosses the graph boundary in the activation dtype (no widened copy on the host)
    cache = {"past_keys", "past_values", "present_keys", "present_values"}
    assert {io[n] for n in cache} == {f16}
    assert {t for n, t in io.items() if n not in cache} <= {f32, i32}
    assert all(g["inputs"][-1]["dtype"] == "float16" for g in r16.manifest["graphs"].values() if len(g["inputs"]) > 3)
    m32 = load(r32.decode_path)
    assert {v.type.tensor_type.elem_type for v in m32.graph.input if v.name in cache} == {f32}
    assert {t.data_type for t in m.graph.initializer if t.name.endswith(".weight")} == {onnx.TensorProto.FLOAT16}


@pytest.mark.parametrize("arch", ARCHS)
def test_fp16_export_runs_and_tracks_the_golden(export, tiny_backend, arch):
    pytest.importorskip("onnxruntime")
    from ascend_adapt.backends.onnxruntime.session import OrtLMBackend

    golden = tiny_backend(arch)
    ids, mask = left_pad(tiny_prompts(golden.spec), golden.spec.pad_token_id or 0)
    ref = golden.full_logits(ids, mask)
    got = OrtLMBackend(export(arch, weight_dtype="float16").out_dir).full_logits(ids, mask)
    valid = mask.astype(bool)
    # fp16 weights and activations (+ ChatGLM's fp16 rotary angles, as the original in fp16):
    # relative 2^-11·(18·L + 4) + 2·P·2^-11 of max|logits| (tests/tolerances.py); a wrong mask or
    # position moves logits by ≥ 1e-1 of their scale
    rel = fp16_rel(golden.spec, rotary_positions=ids.shape[1] if arch == "chatglm" else 0)
    assert np.abs(got - ref)[valid].max() <= rel * np.abs(ref[valid]).max()
    assert (got.argmax(-1) == ref.argmax(-1))[valid].mean() > 0.9


# ---- options and errors ----------------------------------------------------------------------
def test_existing_output_needs_force(export, tiny_dir):
    r = export("llama")
    with pytest.raises(OutputExistsError):
        build_llm_onnx(tiny_dir("llama", unit_head=True), r.out_dir, seq_len=S, max_len=M, progress=False)


def test_force_replaces_atomically(tiny_dir, tmp_path):
    out = tmp_path / "o"
    build_llm_onnx(tiny_dir("llama"), out, seq_len=4, max_len=8, progress=False)
    build_llm_onnx(tiny_dir("llama"), out, seq_len=6, max_len=8, progress=False, force=True)
    assert json.loads((out / "export.json").read_text())["seq_len"] == 6
    assert [p.name for p in tmp_path.iterdir()] == ["o"]  # no temporary left behind


@pytest.mark.parametrize("kwargs,err", [
    (dict(seq_len=9, max_len=8), ConfigError),
    (dict(opset=19), ConfigError),
    (dict(opset=12), ConfigError),
    (dict(weight_dtype="int8"), ConfigError),
    (dict(target="MLU370", opset=17), UnsupportedError),  # its converter parses opsets 9-13
])
def test_bad_options_raise_before_writing(tiny_dir, tmp_path, kwargs, err):
    opts = dict(seq_len=4, max_len=8, progress=False)
    opts.update(kwargs)
    with pytest.raises(err):
        build_llm_onnx(tiny_dir("llama"), tmp_path / "o", **opts)
    assert not (tmp_path / "o").exists()


def test_io_spec_rejects_unknown_kind():
    from ascend_adapt.model_zoo.base import ADAPTERS
    from ascend_adapt.model_zoo.tiny import tiny_config

    spec = ADAPTERS.get("llama").spec_from_config(tiny_config("llama"))
    with pytest.raises(ValueError):
        io_spec(spec, "encode", 1, 4, 8)


def test_target_object_and_name_are_equivalent(export):
    by_object = export("llama", target=load_target("Ascend310P3"))
    assert by_object.manifest["target"] == "Ascend310P3"
    assert by_object.op_types == export("llama", target="Ascend310P3").op_types
