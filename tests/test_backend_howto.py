"""docs/adding_a_backend.md cannot rot: its backend package (the ```python title="onnx_ref/…"```
blocks) is written into ONE new folder of a temporary directory, its ```python title="example"```
blocks (the registration line, then a tiny model through the new backend) run in order, and the
new backend then works through the CLI's lookups (`generate --backend`, `run --backend`,
`compare PREFIX:`); afterwards it is unregistered and gone."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "adding_a_backend.md"
FILE_BLOCK = re.compile(r'```python title="(onnx_ref/[^"]+)"\n(.*?)```', re.S)
EXAMPLE_BLOCK = re.compile(r'```python title="example"\n(.*?)```', re.S)

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _forget(name: str) -> None:
    from ascend_adapt.backends import BACKENDS

    BACKENDS.unregister(name)
    for m in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[m]


@pytest.fixture
def howto(tmp_path, monkeypatch):
    """Write the package, run the examples in `tmp_path`; yield their namespace; clean up."""
    from ascend_adapt.backends import BACKENDS

    text = DOC.read_text(encoding="utf-8")
    files = FILE_BLOCK.findall(text)
    examples = EXAMPLE_BLOCK.findall(text)
    assert [f for f, _ in files] == ["onnx_ref/__init__.py", "onnx_ref/engine.py"]
    assert len(examples) == 2, "adding_a_backend.md should have two python title=\"example\" blocks"
    assert "onnx_ref" not in BACKENDS
    root = tmp_path / "my_backends"
    for rel, body in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(body, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the example's sys.path line is undone too
    ns: dict = {"__name__": "docs_backend_example"}
    try:
        for code in examples:
            exec(compile(code, str(DOC), "exec"), ns)  # noqa: S102
        yield ns
    finally:
        _forget("onnx_ref")


def test_the_new_backend_is_one_folder_and_one_line(howto, tmp_path):
    from ascend_adapt.backends import BACKENDS

    added = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "my_backends").rglob("*.py"))
    assert added == ["my_backends/onnx_ref/__init__.py", "my_backends/onnx_ref/engine.py"]
    be = BACKENDS.get("onnx_ref")
    assert be.levels == ("lm", "graph") and be.precisions == ("fp32",) and not be.simulated


def test_generate_and_run_find_it(howto, tmp_path):
    from click.testing import CliRunner

    from ascend_adapt.cli.main import cli

    cli_runner = CliRunner()

    def ids_of(backend: str) -> str:
        res = cli_runner.invoke(cli, ["generate", "tiny-export", "--backend", backend, "--prompt-ids", "1,40,50,60",
                                      "--max-new-tokens", "4", "--output-ids"], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        return res.output.strip().splitlines()[-1]

    assert ids_of("onnx_ref") == ids_of("onnxruntime")

    outs = {}
    for backend in ("onnx_ref", "onnxruntime"):
        res = cli_runner.invoke(cli, ["run", "tiny-export/prefill.onnx", "--backend", backend, "--save",
                                      f"out-{backend}"], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        assert f"on {backend}:prefill.onnx" in res.output
        outs[backend] = {p.name: np.load(p) for p in sorted((tmp_path / f"out-{backend}").glob("*.npy"))}
    assert sorted(outs["onnx_ref"]) == sorted(outs["onnxruntime"])
    for name, a in outs["onnxruntime"].items():
        b = outs["onnx_ref"][name]
        assert a.shape == b.shape and a.dtype == b.dtype, name
    # two fp32 implementations agree on the prediction at every position (not bit for bit: their
    # reduction orders differ)
    logits = next(n for n in outs["onnxruntime"] if n.startswith("logits"))
    assert (outs["onnx_ref"][logits].argmax(-1) == outs["onnxruntime"][logits].argmax(-1)).all()


def test_compare_takes_it_as_a_prefix(howto):
    from ascend_adapt.compare.sources import parse_spec, prefixes

    assert "onnx_ref" in prefixes()
    spec = parse_spec("onnx_ref:tiny-export")
    assert spec.kind == "onnx_ref" and spec.backend == "onnx_ref" and spec.runs_graphs


def test_it_is_gone_afterwards(tmp_path):
    """Run after the others (file order): nothing of the example stays registered."""
    from click.testing import CliRunner

    from ascend_adapt.backends import BACKENDS, names
    from ascend_adapt.cli.main import cli

    assert "onnx_ref" not in BACKENDS and "onnx_ref" not in names(aliases=True)
    assert not [m for m in sys.modules if m.startswith("onnx_ref")]
    res = CliRunner().invoke(cli, ["run", str(tmp_path), "--backend", "onnx_ref"])
    assert res.exit_code == 2 and "'onnx_ref' is not one of" in res.output
