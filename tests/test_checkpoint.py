"""Streaming checkpoint I/O: every layout, every bad input, and listing without reading data."""

import json
import os
import pickle
import struct

import numpy as np
import pytest

from ascend_adapt.checkpoint import SafetensorsWriter, open_checkpoint, read_safetensors_header, save_safetensors
from ascend_adapt.errors import CheckpointError, OutputExistsError
from ascend_adapt.model_zoo import adapter_for_config
from ascend_adapt.model_zoo.tiny import LAYOUTS, make_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for arch in ("llama", "chatglm"):
        for layout in LAYOUTS:
            if layout == "meta" and arch != "llama":
                continue
            out[arch, layout] = make_tiny_checkpoint(root / f"{arch}-{layout}", arch, layout)
    return out


@pytest.mark.parametrize("arch", ["llama", "chatglm"])
def test_every_layout_yields_identical_canonical_tensors(tiny_dirs, arch):
    ref = None
    for (a, layout), d in tiny_dirs.items():
        if a != arch:
            continue
        reader = open_checkpoint(d)
        adapter = adapter_for_config(reader.config)
        canon = dict(adapter.iter_canonical(reader))
        if layout.endswith("sharded") or layout == "meta":
            assert len(reader.shards) >= 2, layout
        if ref is None:
            ref = canon
            continue
        assert canon.keys() == ref.keys(), layout
        for k in ref:
            assert np.array_equal(canon[k], ref[k]), (layout, k)


def test_safetensors_header_matches_safetensors_library(tiny_dirs):
    from safetensors.numpy import load_file

    d = tiny_dirs["llama", "safetensors"]
    theirs = load_file(str(d / "model.safetensors"))
    reader = open_checkpoint(d)
    assert set(theirs) == set(reader.names())
    for k, v in theirs.items():
        assert np.array_equal(reader.get(k), v)


def test_writer_roundtrip_dtypes(tmp_path):
    import ml_dtypes

    arrays = {
        "a": np.arange(12, dtype=np.float32).reshape(3, 4),
        "b": np.arange(6, dtype=np.float16),
        "c": np.arange(5, dtype=np.int64),
        "d": np.array([1.5, -2.25], dtype=ml_dtypes.bfloat16),
        "e": np.array([True, False]),
    }
    p = save_safetensors(tmp_path / "x.safetensors", arrays)
    infos, _ = read_safetensors_header(p)
    assert [infos[k].dtype for k in arrays] == ["float32", "float16", "int64", "bfloat16", "bool"]
    from safetensors.torch import load_file  # independent reader (bf16 support)

    theirs = load_file(str(p))
    assert theirs["d"].float().tolist() == [1.5, -2.25]
    assert (os.path.getsize(p) - 8 - struct.unpack("<Q", open(p, "rb").read(8))[0]) == sum(
        a.nbytes for a in arrays.values())


def test_writer_is_atomic_and_refuses_overwrite(tmp_path):
    target = tmp_path / "w.safetensors"
    with pytest.raises(RuntimeError):
        with SafetensorsWriter(target, [("x", (4,), "float32"), ("y", (2,), "float32")]) as w:
            w.write("x", np.zeros(4, np.float32))
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    with pytest.raises(CheckpointError, match="never written"):
        with SafetensorsWriter(target, [("x", (4,), "float32")]):
            pass
    assert list(tmp_path.iterdir()) == []
    save_safetensors(target, {"x": np.zeros(2, np.float32)})
    with pytest.raises(OutputExistsError):
        save_safetensors(target, {"x": np.ones(2, np.float32)})
    save_safetensors(target, {"x": np.ones(2, np.float32)}, force=True)
    assert open_checkpoint(tmp_path, require_config=False).get("x").tolist() == [1.0, 1.0]


# ---- bad input: one test per case --------------------------------------------------------------

def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_missing_config(tiny_dirs, tmp_path):
    d = _copy(tiny_dirs["llama", "safetensors"], tmp_path / "m")
    (d / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json is missing") as e:
        open_checkpoint(d)
    assert "fix:" in str(e.value)


def test_truncated_safetensors(tiny_dirs, tmp_path):
    d = _copy(tiny_dirs["llama", "safetensors"], tmp_path / "t")
    f = d / "model.safetensors"
    os.truncate(f, os.path.getsize(f) - 100)
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor '.*' ends at byte \d+ but the file has"):
        open_checkpoint(d)


def test_corrupt_safetensors_header(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    blob = b'{"x": {"dtype": "F32", '
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * 64)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        open_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 10 ** 9) + b"{}")
    with pytest.raises(CheckpointError, match="exceeds the file size"):
        open_checkpoint(tmp_path)


def test_unknown_dtype(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    blob = json.dumps({"w": {"dtype": "F12", "shape": [2], "data_offsets": [0, 4]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * 4)
    with pytest.raises(CheckpointError, match="tensor 'w' has unknown dtype 'F12'"):
        open_checkpoint(tmp_path)


def test_index_names_missing_shard(tiny_dirs, tmp_path):
    d = _copy(tiny_dirs["llama", "safetensors-sharded"], tmp_path / "s")
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="names shard 'model-00002-of-00002.safetensors'.*does not exist"):
        open_checkpoint(d)


def test_index_names_missing_tensor(tiny_dirs, tmp_path):
    d = _copy(tiny_dirs["llama", "safetensors-sharded"], tmp_path / "s")
    idx = json.loads((d / "model.safetensors.index.json").read_text())
    idx["weight_map"]["model.layers.7.mlp.up_proj.weight"] = "model-00001-of-00002.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.raises(CheckpointError, match="maps tensor 'model.layers.7.mlp.up_proj.weight'.*does not contain it"):
        open_checkpoint(d)


def test_duplicate_tensor_across_shards(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    save_safetensors(tmp_path / "a.safetensors", {"w": np.zeros(2, np.float32)})
    save_safetensors(tmp_path / "b.safetensors", {"w": np.ones(2, np.float32)})
    with pytest.raises(CheckpointError, match="tensor 'w' appears in two shards: a.safetensors and b.safetensors"):
        open_checkpoint(tmp_path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    import torch

    (tmp_path / "config.json").write_text("{}")
    torch.save({"w": torch.zeros(2), "x": _Evil()}, tmp_path / "pytorch_model.bin", pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(CheckpointError, match="refused to load"):
        open_checkpoint(tmp_path)


def test_corrupt_bin(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        open_checkpoint(tmp_path)


def test_shape_mismatch_names_tensor(tiny_dirs, tmp_path):
    from ascend_adapt.errors import ShapeMismatchError

    d = _copy(tiny_dirs["llama", "safetensors"], tmp_path / "c")
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 200
    (d / "config.json").write_text(json.dumps(cfg))
    reader = open_checkpoint(d)
    with pytest.raises(ShapeMismatchError, match=r"mlp.gate_proj.weight.*\(176, 64\), expected \(200, 64\)"):
        list(adapter_for_config(reader.config).iter_canonical(reader))


def test_missing_layer_names_tensor(tiny_dirs, tmp_path):
    d = _copy(tiny_dirs["llama", "safetensors"], tmp_path / "l")
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (d / "config.json").write_text(json.dumps(cfg))
    reader = open_checkpoint(d)
    with pytest.raises(CheckpointError, match=r"model.layers.2.input_layernorm.weight' \(layer 2\) is missing"):
        list(adapter_for_config(reader.config).iter_canonical(reader))


# ---- listing a 7B-shaped checkpoint reads no tensor data --------------------------------------

def _sparse_7b_checkpoint(d):
    """Llama-2-7B shapes in 2 sharded safetensors files whose data regions are sparse holes."""
    from ascend_adapt.model_zoo.base import ADAPTERS

    adapter = ADAPTERS.get("llama")
    cfg = adapter.tiny_config()
    cfg.update(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, torch_dtype="float16")
    spec = adapter.spec_from_config(cfg)
    shapes = list(adapter.source_shapes(spec).items())
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    halves = [shapes[: len(shapes) // 2], shapes[len(shapes) // 2:]]
    wmap = {}
    for i, part in enumerate(halves):
        name = f"model-{i + 1:05d}-of-00002.safetensors"
        header, off = {}, 0
        for n, s in part:
            nbytes = int(np.prod(s)) * 2
            header[n] = {"dtype": "F16", "shape": list(s), "data_offsets": [off, off + nbytes]}
            off += nbytes
            wmap[n] = name
        blob = json.dumps(header).encode()
        with open(d / name, "wb") as f:
            f.write(struct.pack("<Q", len(blob)) + blob)
            f.truncate(8 + len(blob) + off)  # sparse: no data blocks written
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wmap}))
    return spec


def _io_read_bytes():
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar")).split()[1])


def test_listing_7b_sharded_reads_no_tensor_data(tmp_path):
    spec = _sparse_7b_checkpoint(tmp_path / "7b")
    before = _io_read_bytes()
    reader = open_checkpoint(tmp_path / "7b")
    infos = reader.infos()
    read = _io_read_bytes() - before
    assert len(infos) == 291
    assert sum(i.numel for i in infos.values()) == 6_738_415_616  # Llama-2-7B parameters
    assert reader.total_bytes() > 13e9
    assert read < 1_000_000, f"listing read {read} bytes"  # headers and JSON only
    # one tensor at a time: materializing a layer weight reads exactly its bytes
    before = _io_read_bytes()
    w = reader.get("model.layers.0.self_attn.q_proj.weight")
    assert w.shape == (4096, 4096) and w.dtype == np.float16
    assert _io_read_bytes() - before < 4096 * 4096 * 2 + 100_000
    assert spec.param_count() == 6_738_415_616
