"""tools/bench/serve_load.py: its section's text is a pure function of the figures — run on made-up
figures where the target is met, then missed one way or another; the text must follow."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "bench"))

import serve_load  # noqa: E402


def _phase(tps: float, lost: int = 0, ttft: float = 0.1) -> dict:
    return {"wall_s": 9600 / tps, "tokens": 9600, "lost": lost,
            "lost_reasons": ["APIConnectionError: x"] if lost else [], "tokens_per_s": tps, "ttft_s": {"p50": ttft, "p99": 2 * ttft}, "tpot_s": {"p50": 0.01, "p99": 0.02}}


def _fig(seq_tps, load_tps, lost=0, equal=200):
    return {"n": 200, "concurrency": 16, "batch": 4, "max_tokens": 48, "model": "m", "rounds": 5,
            "one_at_a_time": _phase(seq_tps), "load": _phase(load_tps, lost, ttft=1.5), "equal_answers": equal,
            "speedup": load_tps / seq_tps}


@pytest.mark.parametrize("fig, verdict, parts", [
    (_fig(60.0, 180.0), "met", ["3.00× (met", "equal answers: 200 of 200 (met)", "lost: 0 under load (met)"]),
    (_fig(60.0, 120.0), "NOT met", ["2.00× (NOT met"]),
    (_fig(60.0, 180.0, lost=3), "NOT met", ["lost: 3 under load (NOT met)", "APIConnectionError"]),
    (_fig(60.0, 180.0, equal=199), "NOT met", ["equal answers: 199 of 200 (NOT met)"]),
])
def test_serve_load_prose_follows_the_figures(fig, verdict, parts):
    text = serve_load.prose(fig)
    assert f"tokens/s ≥ 2.5× one at a time — {verdict}." in text
    for p in parts:
        assert p in text, p
    assert f"| one at a time | 0 | 100.0 / 200.0 | 10.0 / 20.0 | 9600 | {9600 / 60:.1f} | 60.0 |" in text
    assert "TTFT p50 under load is 15.0× the one-at-a-time TTFT" in text


def test_prompts_are_distinct_and_deterministic():
    a, b = serve_load.prompts(200), serve_load.prompts(200)
    assert a == b and len(set(a)) == 200
