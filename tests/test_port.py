"""MindSpore route, weights: streamed HF <-> MindSpore port, .ckpt I/O, bad inputs, MindIR export."""

from __future__ import annotations

import json
import math
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from ascend_adapt.checkpoint import open_checkpoint
from ascend_adapt.errors import CheckpointError, OutputExistsError, ShapeMismatchError
from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint
from ascend_adapt.port import MANIFEST_NAME, port_to_hf, port_to_mindspore, read_manifest
from ascend_adapt.port.ckpt import CkptReader, CkptWriter
from tolerances import fp32_atol

pytestmark = pytest.mark.mindspore

ARCHS = ("llama", "chatglm")


def _params(reader, adapter_name=None):
    """name -> (dtype, bytes) of the tensors a model loads (ignored buffers left out)."""
    from ascend_adapt.model_zoo.base import ADAPTERS

    ad = ADAPTERS.get(adapter_name) if adapter_name else None
    return {n: (reader.info(n).dtype, reader.get(n).tobytes()) for n in reader.names()
            if not (ad and ad.is_ignored(n))}


def _no_leftovers(parent: Path, name: str) -> bool:
    return not any(p.name == name or p.name.startswith(f".{name}.") for p in parent.iterdir())


# ---- round trips --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
@pytest.mark.parametrize("naming", ["ours", "mindformers"])
@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_is_bit_exact(arch, naming, fmt, tiny_dir, tmp_path):
    src = tiny_dir(arch)
    ms_dir = port_to_mindspore(src, tmp_path / "ms", naming=naming, fmt=fmt, progress=False)
    back = port_to_hf(ms_dir, tmp_path / "hf", progress=False)
    assert _params(open_checkpoint(back)) == _params(open_checkpoint(src), arch)
    for f in ("config.json", "tokenizer_config.json"):
        assert (back / f).read_bytes() == (src / f).read_bytes()


@pytest.mark.parametrize("layout,dtype", [("safetensors-sharded", "bfloat16"), ("bin-sharded", "float16")])
def test_round_trip_other_layouts_and_dtypes(layout, dtype, tmp_path):
    src = make_tiny_checkpoint(tmp_path / "src", "llama", layout, dtype=dtype)
    ms_dir = port_to_mindspore(src, tmp_path / "ms", progress=False)
    back = port_to_hf(ms_dir, tmp_path / "hf", progress=False, max_shard_bytes=64 * 1024)
    assert len(list(back.glob("model-*.safetensors"))) > 1 and (back / "model.safetensors.index.json").exists()
    assert _params(open_checkpoint(back)) == _params(open_checkpoint(src))


def test_meta_source_ports_to_mindspore(tmp_path):
    from ascend_adapt.errors import UnsupportedError
    from ascend_adapt.port import open_weights

    src = make_tiny_checkpoint(tmp_path / "meta", "llama", "meta")
    out = port_to_mindspore(src, tmp_path / "ms", naming="mindformers", progress=False)
    assert (out / "params.json").exists() and (out / "tokenizer.model").exists()
    want = dict(open_weights(src).iter_canonical())
    got = dict(open_weights(out).iter_canonical())
    assert want.keys() == got.keys() and all(np.array_equal(want[k], got[k]) for k in want)
    with pytest.raises(UnsupportedError, match="Meta"):
        port_to_hf(out, tmp_path / "hf", progress=False)


def test_port_output_layout_and_manifest(tiny_dir, tmp_path):
    src = tiny_dir("chatglm")
    out = port_to_mindspore(src, tmp_path / "ms", naming="mindformers", progress=False)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([MANIFEST_NAME, "config.json", "ice_text.model", "model.ckpt", "tokenizer_config.json"])
    m = read_manifest(out)
    assert (m["arch"], m["naming"], m["format"], m["dtype"]) == ("chatglm", "mindformers", "ckpt", "source")
    assert m["spec"]["residual_alpha"] == math.sqrt(56)  # exact: sqrt is correctly rounded, JSON keeps repr
    assert m["source"]["files"][0]["name"] == "model.safetensors" and m["source"]["config_sha256"]
    reader = CkptReader(out / "model.ckpt")
    assert set(m["tensors"]) == set(reader.names())
    # MindFormers GLM names (§4.2): embedding_table, LayerNorm gamma/beta, fused QKV kept
    assert "transformer.word_embeddings.embedding_table" in m["tensors"]
    assert "transformer.layers.0.input_layernorm.gamma" in m["tensors"]
    assert "transformer.layers.1.attention.query_key_value.bias" in m["tensors"]
    assert not any("inv_freq" in n for n in m["tensors"])


def test_llama_mindformers_names(tiny_dir, tmp_path):
    out = port_to_mindspore(tiny_dir("llama"), tmp_path / "ms", naming="mindformers", progress=False)
    names = set(CkptReader(out / "model.ckpt").names())
    for n in ("model.tok_embeddings.embedding_weight", "model.layers.0.attention.wq.weight",
              "model.layers.1.attention.wk.weight", "model.layers.0.feed_forward.w1.weight",
              "model.layers.0.feed_forward.w2.weight", "model.layers.0.feed_forward.w3.weight",
              "model.layers.0.attention_norm.weight", "model.layers.0.ffn_norm.weight",
              "model.norm_out.weight", "lm_head.weight"):
        assert n in names, n
    assert not any(n.startswith("model.embed_tokens") or "self_attn" in n for n in names)


def test_dtype_cast(tiny_dir, tmp_path):
    src = tiny_dir("llama")
    out = port_to_mindspore(src, tmp_path / "ms", dtype="fp16", fmt="safetensors", progress=False)
    r = open_checkpoint(out, require_config=False)
    assert {i.dtype for i in r.infos().values()} == {"float16"}
    a = open_checkpoint(src)
    np.testing.assert_array_equal(r.get("embed.weight"), a.get("model.embed_tokens.weight").astype(np.float16))
    back = port_to_hf(out, tmp_path / "hf", progress=False)
    assert json.loads((back / "config.json").read_text())["torch_dtype"] == "float16"


def test_conversion_holds_about_one_tensor(tmp_path):
    """Peak traced memory of a port stays near the largest tensor, far below the model."""
    src = make_tiny_checkpoint(tmp_path / "src", "llama", "safetensors-sharded",
                               config_overrides={"hidden_size": 256, "intermediate_size": 704,
                                                 "num_hidden_layers": 6, "num_attention_heads": 4,
                                                 "num_key_value_heads": 4, "vocab_size": 2048})
    reader = open_checkpoint(src)
    total, largest = reader.total_bytes(), max(i.nbytes for i in reader.infos().values())
    assert total > 10 * largest
    for fmt in ("ckpt", "safetensors"):
        tracemalloc.start()
        port_to_mindspore(src, tmp_path / fmt, fmt=fmt, progress=False)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 3 * largest + (1 << 20), f"{fmt}: peak {peak} B for a largest tensor of {largest} B"


# ---- .ckpt I/O against MindSpore itself ----------------------------------------------------------------
def test_ckpt_writer_loads_in_mindspore_and_reader_reads_mindspore_files(tmp_path):
    ms = pytest.importorskip("mindspore")
    import ml_dtypes

    arrays = {"a.weight": np.random.rand(5, 7).astype(np.float32), "b": np.arange(10, dtype=np.int64),
              "c": np.random.rand(300).astype(np.float16), "d": np.random.rand(4, 4).astype(ml_dtypes.bfloat16)}
    with CkptWriter(tmp_path / "ours.ckpt", slice_bytes=64) as w:  # several slices per tensor
        for k, v in arrays.items():
            w.write(k, v)
    loaded = ms.load_checkpoint(str(tmp_path / "ours.ckpt"))
    for k, v in arrays.items():
        got = loaded[k].float().asnumpy() if k == "d" else loaded[k].asnumpy()
        assert got.shape == v.shape and np.array_equal(got, v.astype(got.dtype)), k
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in arrays.items() if k != "d"],
                       str(tmp_path / "theirs.ckpt"), crc_check=True)
    r = CkptReader(tmp_path / "theirs.ckpt")
    for k in ("a.weight", "b", "c"):
        assert np.array_equal(r.get(k), arrays[k])


@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
def test_port_output_loads_with_mindspore(fmt, tiny_dir, tmp_path):
    ms = pytest.importorskip("mindspore")
    out = port_to_mindspore(tiny_dir("llama"), tmp_path / "ms", naming="mindformers", fmt=fmt, progress=False)
    f = out / f"model.{fmt}"
    loaded = ms.load_checkpoint(str(f), format=fmt)
    src = open_checkpoint(tiny_dir("llama"))
    np.testing.assert_array_equal(loaded["model.layers.1.attention.wq.weight"].asnumpy(),
                                  src.get("model.layers.1.self_attn.q_proj.weight"))
    assert len(loaded) == len(src.names())


# ---- bad inputs leave nothing behind -------------------------------------------------------------------
def _corrupt_copy(src: Path, dst: Path, **config_changes) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(config_changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
def test_shape_mismatch_names_tensor_and_shapes(fmt, tiny_dir, tmp_path):
    bad = _corrupt_copy(tiny_dir("llama"), tmp_path / "bad", intermediate_size=192)
    with pytest.raises(ShapeMismatchError) as e:
        port_to_mindspore(bad, tmp_path / "out", fmt=fmt, progress=False)
    msg = str(e.value)
    assert "model.layers.0.mlp.gate_proj.weight" in msg and "(176, 64)" in msg and "(192, 64)" in msg
    assert _no_leftovers(tmp_path, "out")


def test_missing_layer_names_tensor(tiny_dir, tmp_path):
    bad = _corrupt_copy(tiny_dir("chatglm"), tmp_path / "bad", num_layers=3)
    with pytest.raises(CheckpointError, match=r"transformer\.layers\.2\..*\(layer 2\) is missing"):
        port_to_mindspore(bad, tmp_path / "out", progress=False)
    assert _no_leftovers(tmp_path, "out")


def test_existing_output_needs_force(tiny_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(OutputExistsError):
        port_to_mindspore(tiny_dir("llama"), out, progress=False)
    assert (out / "keep").exists()
    port_to_mindspore(tiny_dir("llama"), out, force=True, progress=False)
    assert not (out / "keep").exists() and (out / MANIFEST_NAME).exists()


def test_corrupt_ckpt_is_caught_on_the_way_back(tiny_dir, tmp_path):
    out = port_to_mindspore(tiny_dir("llama"), tmp_path / "ms", progress=False)
    ckpt = out / "model.ckpt"
    data = bytearray(ckpt.read_bytes())
    reader = CkptReader(ckpt)
    name = "layers.1.attn.k.weight"
    # flip one byte inside that tensor's data: the manifest CRC names the tensor
    offset = reader._entries[name].chunks[0][0] + 5
    data[offset] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"'layers\.1\.attn\.k\.weight' does not match the CRC32"):
        port_to_hf(out, tmp_path / "hf", progress=False)
    assert _no_leftovers(tmp_path, "hf")
    # truncated file: refused while scanning, before anything is written
    ckpt.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointError, match="truncated"):
        port_to_hf(out, tmp_path / "hf", progress=False)
    assert _no_leftovers(tmp_path, "hf")


def test_port_to_hf_needs_a_port_output(tiny_dir, tmp_path):
    from ascend_adapt.errors import ConfigError

    with pytest.raises(ConfigError, match="not a MindSpore port output"):
        port_to_hf(tiny_dir("llama"), tmp_path / "hf", progress=False)


# ---- CLI --------------------------------------------------------------------------------------------------
def test_cli_round_trip_and_errors(tiny_dir, tmp_path, capsys):
    from ascend_adapt.cli.main import main

    src = tiny_dir("llama")
    assert main(["port", str(src), "--to", "mindspore", "-o", str(tmp_path / "ms"), "--naming", "mindformers",
                 "--format", "safetensors", "--no-progress"]) == 0
    assert main(["port", str(tmp_path / "ms"), "--to", "hf", "-o", str(tmp_path / "hf"), "--no-progress"]) == 0
    assert _params(open_checkpoint(tmp_path / "hf")) == _params(open_checkpoint(src))
    assert main(["port", str(src), "--to", "mindspore", "-o", str(tmp_path / "ms"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err


# ---- MindIR -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_mindir_prefill_decode_match_the_eager_cell(arch, tiny_dir, tmp_path):
    pytest.importorskip("mindspore")
    from ascend_adapt.port.mindir import MindIRSession, export_mindir
    from ascend_adapt.backends import get_backend
    from ascend_adapt.runtime.generate import greedy_tokens

    eager = get_backend("mindspore", tiny_dir(arch, unit_head=True, untied=arch == "chatglm"), mode="pynative")
    out = export_mindir(None, tmp_path / "mindir", seq_len=12, max_len=32, backend=eager)
    assert {p.name for p in out.iterdir()} == {"prefill.mindir", "decode.mindir", "mindir.json"}
    spec = eager.spec
    prompt = [11, 12, 13, 14, spec.gmask_token_id, spec.bos_token_id] if arch == "chatglm" else [1, 11, 12, 13, 14]
    ids = np.array([prompt])
    got, got_logits = greedy_tokens(lambda b, m: MindIRSession(out), ids, 16, return_logits=True)
    want, want_logits = greedy_tokens(eager, ids, 16, return_logits=True)
    assert np.array_equal(got, want)
    # same MindSpore kernels, compiled graph vs eager (other fusions, the static 32-slot cache): the
    # fp32 accumulation bound of tests/tolerances.py, 2·u·Σn·max|logits| ≈ 1e-3 on the unit-head
    # logits; it refuses a bound that would not catch a 1e-1 error (a stale slot, a wrong position)
    assert np.abs(got_logits - want_logits).max() <= fp32_atol(spec, np.abs(want_logits).max(), keys=32)
