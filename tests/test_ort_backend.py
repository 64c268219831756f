"""onnxruntime backend + GraphLMSession: built graphs vs the torch golden, through the shared
step bookkeeping and generate loop."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conftest import forced_decode_logits, left_pad, tiny_prompts  # noqa: E402
from tolerances import fp32_atol  # noqa: E402

from ascend_adapt.errors import ConfigError  # noqa: E402
from ascend_adapt.om_convert.builder import build_llm_onnx  # noqa: E402
from ascend_adapt.backends import BACKENDS, get_backend  # noqa: E402
from ascend_adapt.runtime.generate import GenerationConfig, generate, greedy_tokens  # noqa: E402
from ascend_adapt.runtime.graph_session import GraphLMSession  # noqa: E402
from ascend_adapt.runtime.session import LMBackend, LMSession  # noqa: E402

B, S, M = 2, 12, 48


def _tol(spec, golden) -> float:
    """fp32 ONNX graph (onnxruntime kernels, attention over the M static-cache slots) vs the fp32
    torch golden: 2·u·Σn·max|golden| (tests/tolerances.py), ≈ 1e-3 on the unit-head logits (~7);
    measured ≤ 1e-5. A wrong mask, position or cache slot is ≥ 1e-1."""
    return fp32_atol(spec, np.abs(golden).max(), keys=M)
ARCHS = ("llama", "chatglm")


@pytest.fixture(scope="module")
def ort_dir(tiny_dir, tmp_path_factory):
    cache = {}

    def make(arch):
        if arch not in cache:
            out = tmp_path_factory.mktemp(f"ort-{arch}") / "onnx"
            build_llm_onnx(tiny_dir(arch, unit_head=True), out, batch=B, seq_len=S, max_len=M, progress=False,
                           target="Ascend310P3")
            cache[arch] = out
        return cache[arch]

    return make


@pytest.fixture(scope="module")
def ort(ort_dir):
    cache = {}

    def get(arch):
        if arch not in cache:
            cache[arch] = get_backend("onnxruntime", ort_dir(arch))
        return cache[arch]

    return get


def prompts(spec):
    return left_pad(tiny_prompts(spec), spec.pad_token_id or 0)


def test_registered_and_import_is_light():
    assert "onnxruntime" in BACKENDS
    code = ("import sys, ascend_adapt.backends.onnxruntime.session as m; "
            "print(sorted({'onnxruntime', 'onnx', 'torch'} & {k.split('.')[0] for k in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("arch", ARCHS)
def test_backend_and_session_satisfy_the_protocols(ort, arch):
    backend = ort(arch)
    assert isinstance(backend, LMBackend) and backend.name == "onnxruntime"
    assert (backend.batch, backend.seq_len, backend.max_len) == (B, S, M)
    assert isinstance(backend.new_session(B, M), LMSession)


@pytest.mark.parametrize("arch", ARCHS)
def test_prefill_logits_and_layer_outputs_match_the_golden(ort, tiny_backend, arch):
    golden, backend = tiny_backend(arch), ort(arch)
    ids, mask = prompts(golden.spec)
    ref, ref_layers = golden.full_logits(ids, mask, layer_outputs=True)
    got, layers = backend.full_logits(ids, mask, layer_outputs=True)
    assert got.shape == ref.shape == (B, ids.shape[1], golden.spec.vocab_size)
    valid = mask.astype(bool)  # padded positions of a left-padded batch are don't-care
    assert np.abs(got - ref)[valid].max() <= _tol(golden.spec, ref[valid])
    assert set(layers) == {"embed", "final_norm", "logits"} | {f"layers.{i}" for i in range(golden.spec.num_layers)}
    for name, arr in layers.items():
        assert arr.dtype == np.float32 and arr.shape == ref_layers[name].shape, name
        assert np.abs(arr - ref_layers[name])[valid].max() <= _tol(golden.spec, ref_layers[name][valid]), name


@pytest.mark.parametrize("arch", ARCHS)
def test_every_decode_step_matches_the_golden(ort, tiny_backend, arch):
    """Teacher-forced random tokens exercise every slot and position (greedy on random tied-embedding
    models tends to repeat one token)."""
    golden, backend = tiny_backend(arch), ort(arch)
    ids, mask = prompts(golden.spec)
    forced = np.random.default_rng(3).integers(10, min(golden.spec.vocab_size, 300), (B, M - S))
    ref = forced_decode_logits(golden, ids, mask, forced)
    got = forced_decode_logits(backend, ids, mask, forced)
    assert got.shape == ref.shape == (B, M - S + 1, golden.spec.vocab_size)
    err = np.abs(got - ref).max(axis=(0, 2))
    tol = _tol(golden.spec, ref)
    assert err.max() <= tol, f"first step over {tol:.2e}: {int(np.argmax(err > tol))} (max {err.max():.2e})"


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_tokens_identical_over_32_steps(ort, tiny_backend, arch):
    golden, backend = tiny_backend(arch), ort(arch)
    ids, mask = prompts(golden.spec)
    ref, ref_logits = greedy_tokens(golden, ids, 32, mask, return_logits=True)
    got, got_logits = greedy_tokens(backend, ids, 32, mask, return_logits=True)
    np.testing.assert_array_equal(got, ref)
    assert np.abs(got_logits - ref_logits).max() <= _tol(golden.spec, ref_logits)


@pytest.mark.parametrize("arch", ARCHS)
def test_generate_loop_with_the_tokenizer_copied_into_the_export(ort, ort_dir, tiny_backend, tiny_dir, arch):
    from ascend_adapt.model_zoo.tokenizers import load_tokenizer

    tok_export, tok_src = load_tokenizer(ort_dir(arch)), load_tokenizer(tiny_dir(arch, unit_head=True))
    texts = ["hello world", "the cat"]
    assert tok_export.encode(texts[0]) == tok_src.encode(texts[0])
    cfg = dict(max_new_tokens=8)
    ours = generate(ort(arch), tok_export, texts, GenerationConfig(**cfg))
    ref = generate(tiny_backend(arch), tok_src, texts, GenerationConfig(**cfg))
    assert [r.token_ids for r in ours] == [r.token_ids for r in ref]


# ---- GraphLMSession with any executor -------------------------------------------------------
def test_session_writes_present_kv_into_the_slots(ort, tiny_backend):
    backend = ort("llama")
    spec = backend.spec
    calls = []
    run_prefill, run_decode = backend.executor("prefill"), backend.executor("decode")

    def recording(run, kind):
        def run_and_record(feeds):  # a plain callable over numpy dicts
            out = run(feeds)
            calls.append((kind, {k: v.copy() for k, v in feeds.items()}, out))
            return out
        return run_and_record

    s = GraphLMSession(spec, recording(run_prefill, "prefill"), recording(run_decode, "decode"), B, M, S)
    ids, mask = prompts(spec)
    s.prefill(ids, mask)
    s.decode(np.array([5, 6]))
    (k1, f1, o1), (k2, f2, o2) = calls
    assert k1 == "prefill" and f1["input_ids"].dtype == np.int32 and f1["input_ids"].shape == (B, S)
    assert f1["attention_mask"].shape == (B, 1, S, S) and set(np.unique(f1["attention_mask"])) == {0.0, -10000.0}
    np.testing.assert_array_equal(s.cache_k[:, :, :, :S], o1["present_keys"])
    np.testing.assert_array_equal(s.cache_v[:, :, :, S], o2["present_values"][:, :, :, 0])
    assert f2["attention_mask"].shape == (B, 1, 1, M + 1)
    # decode sees the prompt's valid slots and itself, not the padding nor the unwritten slots
    vis = f2["attention_mask"][:, 0, 0] == 0
    pad = S - mask.shape[1]
    assert vis[1, pad:pad + int((mask[1] == 0).sum())].sum() == 0 and vis[:, S + 1:M].sum() == 0
    assert vis[:, M].all() and not vis[:, S].any()  # the new token is the ⊕ column, slot S is still empty


def test_session_errors(ort):
    backend = ort("llama")
    spec = backend.spec
    with pytest.raises(ConfigError, match="batch"):
        backend.new_session(B + 1, M)
    with pytest.raises(ConfigError, match="cache slots"):
        backend.new_session(B, M + 1)
    s = backend.new_session(B, M)
    with pytest.raises(RuntimeError):
        s.decode(np.array([1, 2]))
    with pytest.raises(ConfigError, match="--seq-len"):
        s.prefill(np.ones((B, S + 1), np.int64))
    with pytest.raises(ConfigError, match="batch"):
        s.prefill(np.ones((1, 3), np.int64))
    s.prefill(np.ones((B, S), np.int64))
    for _ in range(M - S):
        s.decode(np.array([1, 2]))
    with pytest.raises(ConfigError, match="full"):
        s.decode(np.array([1, 2]))
    bad = GraphLMSession(spec, lambda feeds: {"logits": np.zeros((B, S, spec.vocab_size))},
                         lambda feeds: {}, B, M, S)
    with pytest.raises(ConfigError, match="present_keys"):
        bad.prefill(np.ones((B, 3), np.int64))


def test_export_dir_errors(tmp_path):
    with pytest.raises(ConfigError, match="export.json"):
        get_backend("onnxruntime", tmp_path)


def test_cli_export_then_generate(tiny_dir, tmp_path):
    from ascend_adapt.cli.main import main

    out = tmp_path / "exp"
    assert main(["export", str(tiny_dir("llama")), "-o", str(out), "--seq-len", "8", "--max-len", "24",
                 "--soc", "Ascend310P3", "--weight-dtype", "fp16", "--quiet"]) == 0
    man = json.loads((out / "export.json").read_text())
    assert man["weight_dtype"] == "float16" and man["target"] == "Ascend310P3"
    assert main(["export", str(tiny_dir("llama")), "-o", str(out)]) == 2  # exists, no --force
    assert main(["generate", str(out), "--backend", "onnxruntime", "--prompt", "hello", "--max-new-tokens", "4",
                 "--max-len", "24"]) == 0
