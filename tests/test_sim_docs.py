"""docs/simulator.md: its python snippets run, and it states what is emulated and what is not."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

DOC = Path(__file__).resolve().parents[1] / "docs" / "simulator.md"


def test_simulator_doc_snippets_run():
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 2
    for code in blocks:
        exec(compile(code, str(DOC), "exec"), {})  # noqa: S102


def test_simulator_doc_covers_the_three_faithfulness_axes_and_gaps():
    text = DOC.read_text(encoding="utf-8")
    for heading in ("## Acceptance", "## Numerics", "## Cost", "## Known gaps", "Not emulated"):
        assert heading in text
    for code in ("E10036", "E10055", "E19010", "207001"):
        assert code in text
