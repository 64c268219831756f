"""Simulator memory: a model's weights stay in their file (memory-mapped once per process, fp16
widened at use), so the simulator's peak RSS is its weight bytes plus a bounded overhead — not the
several copies that once killed a 7B run — and the values are bit-identical to the weights-in-proto
path."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from ascend_adapt.om_convert.builder import build_llm_onnx
from ascend_adapt.sim.numerics import SimSession
from ascend_adapt.sim.settings import SimSettings

# a mid-size Llama shape: ~270 MB of fp16 weights, built in seconds
MID = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
           num_key_value_heads=16, vocab_size=16000)
MAX_LEN, GEARS, PROMPT = 256, [16, 32, 64], 20

_CHILD = r"""
import json, sys
import numpy, onnx, onnxruntime
import ascend_adapt.backends.sim.session
from ascend_adapt.backends import get_backend

def vm(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

out = {}
if sys.argv[1] != "baseline":
    backend = get_backend("sim", sys.argv[1], threads=2)  # the same malloc arenas on any machine
    s = backend.new_session(backend.batch, backend.max_len)
    tok = int(numpy.argmax(s.prefill(numpy.arange(1, int(sys.argv[2]) + 1)[None])[0]))
    for _ in range(2):
        tok = int(numpy.argmax(s.decode(numpy.array([tok]))[0]))
    out["tok"] = tok
out["hwm"] = vm("VmHWM")
print(json.dumps(out))
"""


def _mid_checkpoint(d: Path) -> Path:
    from ascend_adapt.checkpoint import SafetensorsWriter
    from ascend_adapt.model_zoo.base import ADAPTERS

    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **MID, "hidden_act": "silu",
           "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float16"}
    adapter = ADAPTERS.get("llama")
    specs = [(n, s, "float16") for n, s in adapter.source_shapes(adapter.spec_from_config(cfg), "hf").items()]
    block = (np.random.default_rng(0).standard_normal(1 << 20) * 0.02).astype(np.float16)
    d.mkdir(parents=True)
    with SafetensorsWriter(d / "model.safetensors", specs, metadata={"format": "pt"}) as w:
        for n, s, _ in specs:  # real bytes, tiled from one random block
            w.write(n, np.ones(s, np.float16) if n.endswith("norm.weight") else np.resize(block, s))
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.fixture(scope="module")
def mid_exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim-memory")
    ckpt = _mid_checkpoint(root / "ckpt")
    out = {}
    for layout, gears in (("step", GEARS), ("prefill+decode", None)):
        d = root / layout.replace("+", "-")
        build_llm_onnx(ckpt, d, seq_len=GEARS[-1], max_len=MAX_LEN, gears=gears, weight_dtype="float16",
                       target="Ascend310P3", progress=False)
        out[layout] = d
    return out


def _child(*args) -> dict:
    res = subprocess.run([sys.executable, "-c", _CHILD, *map(str, args)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("layout", ["step", "prefill+decode"])
def test_sim_peak_rss_is_weights_plus_bounded_overhead(mid_exports, layout):
    exp = mid_exports[layout]
    manifest = json.loads((exp / "export.json").read_text())
    spec = manifest["spec"]
    weights = (exp / "weights.bin").stat().st_size
    assert weights > 200 * 2 ** 20  # mid-size: the old copies (≥ 3 × weights) cannot hide in the margin
    baseline = _child("baseline")["hwm"]  # interpreter + numpy + onnx + onnxruntime + the package
    run = _child(exp, PROMPT)
    # Margin, from the shapes (bytes):
    # - onnxruntime widens an fp16 weight to fp32 at its use; at most two such buffers are alive at
    #   once (a widened operand and the next one), the largest being the [V, H] head: 2 × 4 × V·H;
    # - the KV cache: the host copy in fp32 + the graph's fp16 cast of it + present K/V of the step
    #   (≤ its fp32 size): 2 (K, V) × L·B·KVH·M·D × (4 + 2 + 4);
    # - logits of the largest gear: fp16 in the graph, fp32 out, fp32 on the host: B·S·V × (2 + 4 + 4),
    #   and per-layer activations of the largest gear (≤ 16 tensors of B·S·max(I, H) fp32 alive);
    # - freed widenings malloc keeps mapped: glibc raises its mmap threshold to the largest block
    #   freed, so later (smaller) widened weights come from its heaps, which hold up to one layer's
    #   weights in fp32, in each of the 2 arenas (main thread + 1 onnxruntime worker):
    #   2 × 4 × (4·H² + 3·H·I) — 2 × 4·H² for KVH = heads;
    # - 64 MiB for the sessions' graph objects and the Python objects of the backend.
    # The weights themselves count once, however many sessions read them (pages of one mapping).
    V, H, I, L = MID["vocab_size"], MID["hidden_size"], MID["intermediate_size"], MID["num_hidden_layers"]
    kv = 2 * L * 1 * spec["num_kv_heads"] * MAX_LEN * spec["head_dim"] * (4 + 2 + 4)
    acts = 1 * GEARS[-1] * V * (2 + 4 + 4) + 16 * 1 * GEARS[-1] * max(I, H) * 4
    layer_fp32 = 4 * (4 * H * H + 3 * H * I)
    margin = 2 * 4 * V * H + kv + acts + 2 * layer_fp32 + 64 * 2 ** 20
    bound = baseline + weights + margin
    over = run["hwm"] - baseline - weights
    assert run["hwm"] <= bound, (f"peak RSS {run['hwm'] / 2**20:.0f} MiB > bound {bound / 2**20:.0f} MiB "
                                 f"(baseline {baseline / 2**20:.0f} + weights {weights / 2**20:.0f} + margin "
                                 f"{margin / 2**20:.0f}; over by {over / 2**20:.0f} MiB)")


def _export_fp16(tiny_dir, tmp_path, weight_dtype, gears):
    d = tmp_path / f"exp-{weight_dtype}"
    build_llm_onnx(tiny_dir("llama", untied=True), d, max_len=40, gears=gears, weight_dtype=weight_dtype,
                   target="Ascend310P3", progress=False, seq_len=16)
    return d


def _feeds(model: onnx.ModelProto, S: int) -> dict:
    from ascend_adapt.sim.graph import graph_inputs, np_dtype

    rng = np.random.default_rng(1)
    feeds = {}
    for name, info in graph_inputs(model).items():
        shape = tuple(S if isinstance(d, str) and d == "seq" else (S + 40 if isinstance(d, str) else d)
                      for d in info.shape)
        if name == "input_ids":
            feeds[name] = rng.integers(3, 500, shape).astype(np_dtype(info.elem_type))
        elif name == "position_ids":
            feeds[name] = np.broadcast_to(np.arange(shape[-1]), shape).astype(np_dtype(info.elem_type))
        elif name == "attention_mask":
            m = np.zeros(shape, np.float32)
            m[..., :shape[-1] - S] = -1e4  # empty cache slots hidden, the step's own tokens visible
            feeds[name] = m
        else:  # past K/V: fp16-exact values, as the graph writes them
            feeds[name] = (rng.standard_normal(shape) * 0.5).astype(np.float16).astype(np_dtype(info.elem_type))
    return feeds


@pytest.mark.parametrize("weight_dtype,mode", [("float16", "force_fp16"), ("float32", "force_fp16"),
                                               ("float32", "allow_mix_precision"),
                                               ("float16", "must_keep_origin_dtype")])
def test_weights_in_file_give_the_same_values_as_weights_in_proto(tiny_dir, tmp_path, weight_dtype, mode):
    """The previous path loaded every weight into the proto; now only the fp32 ones to round are
    loaded, the rest stay in the mapped file: bit-identical outputs, every tensor."""
    exp = _export_fp16(tiny_dir, tmp_path, weight_dtype, [4, 8, 16])
    path = exp / "step.onnx"
    settings = SimSettings(target="Ascend310P3", precision_mode=mode)
    in_file = SimSession(path, settings, dump=True)
    whole = onnx.load(str(path), load_external_data=True)  # every weight inline: the previous path
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in whole.graph.initializer)
    in_proto = SimSession(whole, settings, dump=True)
    for S in (1, 8):
        feeds = _feeds(whole, S)
        a, b = in_file.run(feeds), in_proto.run(feeds)
        assert a.keys() == b.keys()
        for name in a:  # every tensor of the graph, not just the logits: exactly equal
            assert np.array_equal(a[name], b[name], equal_nan=True), name
    assert in_file.stats.to_dict() == in_proto.stats.to_dict()  # the same rewrite
    in_file.close()
    in_proto.close()


def test_sessions_of_one_weights_file_share_one_mapping(tiny_dir, tmp_path):
    from ascend_adapt.sim import numerics

    exp = _export_fp16(tiny_dir, tmp_path, "float16", None)
    settings = SimSettings(target="Ascend310P3", precision_mode="force_fp16")
    pre, dec = SimSession(exp / "prefill.onnx", settings), SimSession(exp / "decode.onnx", settings)
    weights = (exp / "weights.bin").resolve()
    maps = [m for k, m in numerics._MAPS.items() if k[0] == str(weights)]
    assert len(maps) == 1 and maps[0].size == weights.stat().st_size
    assert pre._weights and dec._weights  # the big tensors are handed over as views of that map
    lo = maps[0].ctypes.data
    for v in pre._weights + dec._weights:  # each points into the one mapping: no copy
        assert lo <= v.data_ptr() < lo + maps[0].size
    pre.close(), dec.close()


def test_weights_file_shorter_than_the_graph_says_is_a_clear_error(tiny_dir, tmp_path):
    from ascend_adapt.errors import ConfigError

    exp = _export_fp16(tiny_dir, tmp_path, "float16", [4, 8, 16])
    wf = exp / "weights.bin"
    wf.write_bytes(wf.read_bytes()[: wf.stat().st_size // 2])
    with pytest.raises(ConfigError, match="weights.bin.*re-export|re-export") as e:
        SimSession(exp / "step.onnx", SimSettings(target="Ascend310P3", precision_mode="force_fp16"))
    assert "weights.bin" in str(e.value) and e.value.hint


