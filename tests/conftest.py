"""Shared fixtures: real tokenizer files (skipped cleanly when absent) and tiny models made in code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_ASSETS = REPO_ROOT.parent / "shared" / "assets"


@pytest.fixture(scope="session")
def shared_assets() -> Path:
    """`../shared/assets/` (relative to the repo root): real tokenizer files; skip when absent."""
    if not SHARED_ASSETS.is_dir():
        pytest.skip(f"real tokenizer files are not available ({SHARED_ASSETS} does not exist)")
    return SHARED_ASSETS


@pytest.fixture(scope="session")
def shared_asset(shared_assets):
    """shared_asset(name) -> path of one file in ../shared/assets/, or skip naming it."""

    def get(name: str) -> Path:
        p = shared_assets / name
        if not p.is_file():
            pytest.skip(f"{name} is not in {shared_assets}")
        return p

    return get


def unit_head_weights(arch: str, seed: int = 0, untied: bool = False) -> dict[str, np.ndarray]:
    """Random canonical weights of the tiny `arch` whose logits are O(1–10).

    `random_canonical_weights` draws an N(0, 1) output head, which gives logits of ~40–70, where
    one fp32 ulp is already ~4e-6; scaling the head by 0.1 keeps a 1e-5 absolute tolerance
    meaningful (several ulps) for cache-vs-recompute checks. (ChatGLM's tied embedding is scaled
    with it; its first LayerNorm undoes the scale.)

    `untied`: a ChatGLM config with `tie_word_embeddings: false`. A random *tied* ChatGLM greedily
    repeats its input token (the α·LN(x) residual keeps the token's own embedding dominant), so
    tests that need varied greedy tokens use the untied variant.
    """
    from ascend_adapt.model_zoo.base import ADAPTERS
    from ascend_adapt.model_zoo.tiny import random_canonical_weights, tiny_config

    spec = ADAPTERS.get(arch).spec_from_config(tiny_config(arch, **_untied(untied)))
    w = random_canonical_weights(spec, seed)
    w["lm_head.weight"] = (w["lm_head.weight"] * 0.1).astype(np.float32)
    if spec.tie_word_embeddings:
        w["embed.weight"] = w["lm_head.weight"]
    return w


def _untied(untied: bool) -> dict:
    return {"tie_word_embeddings": False} if untied else {}


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """tiny_dir(arch, layout="safetensors", seed=0, dtype="float32", unit_head=False, untied=False)
    -> a cached tiny checkpoint directory (made once per session; see `unit_head_weights`)."""
    from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint

    cache: dict[tuple, Path] = {}

    def make(arch: str, layout: str = "safetensors", seed: int = 0, dtype: str = "float32",
             unit_head: bool = False, untied: bool = False) -> Path:
        key = (arch, layout, seed, dtype, unit_head, untied)
        if key not in cache:
            d = tmp_path_factory.mktemp(f"{arch}-{layout}") / "model"
            weights = unit_head_weights(arch, seed, untied) if unit_head else None
            cache[key] = make_tiny_checkpoint(d, arch, layout, seed=seed, dtype=dtype, weights=weights,
                                              config_overrides=_untied(untied))
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_backend(tiny_dir):
    """tiny_backend(arch, dtype="float32", untied=False) -> a cached torch backend on the unit-head
    tiny model."""
    from ascend_adapt.backends.torch.session import TorchBackend

    cache: dict[tuple, object] = {}

    def get(arch: str, dtype: str = "float32", untied: bool = False):
        if (arch, dtype, untied) not in cache:
            cache[(arch, dtype, untied)] = TorchBackend(tiny_dir(arch, unit_head=True, untied=untied), dtype=dtype)
        return cache[(arch, dtype, untied)]

    return get


def tiny_prompts(spec, tokenizer=None) -> list[list[int]]:
    """Two prompts of different lengths in the family's format (ChatGLM: … [gMASK] <sop>)."""
    rng = np.random.default_rng(1)
    lo, hi = 10, min(spec.vocab_size, 300)
    bodies = [rng.integers(lo, hi, 7).tolist(), rng.integers(lo, hi, 3).tolist()]
    if spec.arch == "chatglm":
        return [b + [spec.gmask_token_id, spec.bos_token_id] for b in bodies]
    return [[spec.bos_token_id] + b for b in bodies]


def left_pad(prompts, pad_id: int):
    S = max(map(len, prompts))
    ids = np.full((len(prompts), S), pad_id, np.int64)
    mask = np.zeros((len(prompts), S), np.int64)
    for b, p in enumerate(prompts):
        ids[b, S - len(p):] = p
        mask[b, S - len(p):] = 1
    return ids, mask


def forced_decode_logits(backend, ids, mask, forced) -> np.ndarray:
    """Prefill, then feed `forced` [B, n] one column per decode step (teacher forcing).

    Returns float32 logits [B, n + 1, V]: the prefill's last position, then each decode step.
    (Random tied-embedding tiny models tend to repeat one token under greedy decoding; forcing
    random tokens exercises every cache slot and position with distinct tokens.)
    """
    forced = np.asarray(forced, np.int64)
    session = backend.new_session(ids.shape[0], ids.shape[1] + forced.shape[1])
    out = [session.prefill(ids, mask)]
    for i in range(forced.shape[1]):
        out.append(session.decode(forced[:, i]))
    return np.stack(out, axis=1)


def full_recompute_logits(backend, ids, mask, forced) -> np.ndarray:
    """The same positions as `forced_decode_logits`, from one full forward without cache."""
    forced = np.asarray(forced, np.int64)
    full_ids = np.concatenate([ids, forced], 1)
    full_mask = np.concatenate([mask, np.ones_like(forced)], 1)
    return backend.full_logits(full_ids, full_mask)[:, ids.shape[1] - 1:]
