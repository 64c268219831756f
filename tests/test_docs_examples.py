"""The guides cannot rot: their examples run, and the commands they show exist.

- docs/adding_an_architecture.md: the ```python title="example"``` blocks are executed in order
  (a new adapter `my_llama` for "MyLlamaForCausalLM" with a fused gate_up tensor, and a tiny
  checkpoint in its layout); then the new family is checked end to end (lookup, bit-exact
  weight round trip, torch golden equal to the Llama golden, convert + simulator parity), and the
  adapter is unregistered (registry and the `_BY_ARCH` / `_BY_TYPE` indexes) so no other test
  sees it.
- README.md: every command of the command table is in `ascend_adapt.cli.main.COMMANDS` (and the
  subcommand of a group exists).
- docs/user_guide.md: every `ascend-adapt …` command line uses an existing command and only
  options that command has; its python snippets run.
"""

from __future__ import annotations

import importlib
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ARCH_DOC = REPO / "docs" / "adding_an_architecture.md"
GUIDE = REPO / "docs" / "user_guide.md"
README = REPO / "README.md"

EXAMPLE_BLOCK = re.compile(r'```python title="example"\n(.*?)```', re.S)


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of every fenced block."""
    return re.findall(r"^```([^\n]*)\n(.*?)^```", text, re.S | re.M)


# ---- docs/adding_an_architecture.md -------------------------------------------------------------

def _forget_adapter(name: str, modules: list[str]) -> None:
    from ascend_adapt.model_zoo import base

    base.ADAPTERS.unregister(name)
    for index in (base._BY_ARCH, base._BY_TYPE):
        for key in [k for k, v in index.items() if v == name]:
            del index[key]
    for m in modules:
        sys.modules.pop(m, None)


@pytest.fixture
def arch_example(tmp_path, monkeypatch):
    """Run the page's example blocks in `tmp_path`; yield their namespace; unregister afterwards."""
    from ascend_adapt.model_zoo import ADAPTERS

    blocks = EXAMPLE_BLOCK.findall(ARCH_DOC.read_text(encoding="utf-8"))
    assert len(blocks) == 2, "adding_an_architecture.md should have two python title=\"example\" blocks"
    assert "my_llama" not in ADAPTERS
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "docs_example"}
    aliases = ["ascend_adapt.model_zoo.my_llama.torch_model"]
    try:
        for code in blocks:
            exec(compile(code, str(ARCH_DOC), "exec"), ns)  # noqa: S102
        yield ns
    finally:
        _forget_adapter("my_llama", aliases)


def test_architecture_example_registers_and_round_trips(arch_example, tmp_path):
    from ascend_adapt.checkpoint import open_checkpoint
    from ascend_adapt.inspect_model import inspect_checkpoint
    from ascend_adapt.model_zoo import ADAPTERS, adapter_for_config

    adapter = ADAPTERS.get("my_llama")
    assert type(adapter).__name__ == "MyLlamaAdapter"
    assert adapter_for_config({"architectures": ["MyLlamaForCausalLM"]}) is adapter
    assert adapter_for_config({"architectures": ["LlamaForCausalLM"]}).name == "llama"  # built-ins untouched

    d = tmp_path / "tiny-my-llama"
    reader = open_checkpoint(d)
    spec = adapter.spec_from_config(reader.config)
    assert spec.arch == "my_llama" and spec.num_layers == 2
    names = set(reader.infos())
    assert {f"model.layers.{i}.mlp.gate_up_proj.weight" for i in range(spec.num_layers)} <= names
    assert not any(".mlp.gate_proj." in n or ".mlp.up_proj." in n for n in names)

    # checkpoint -> canonical -> checkpoint is bit-exact, tensor by tensor
    canon = dict(adapter.iter_canonical(reader, spec))
    again = dict(adapter.iter_source(canon.__getitem__, spec, "hf", available=canon.__contains__))
    assert set(again) == names
    for name, arr in again.items():
        src = reader.get(name)
        assert arr.dtype == src.dtype and arr.tobytes() == np.ascontiguousarray(src).tobytes(), name

    # canonical gate / up are the halves of the fused tensor
    fused = reader.get("model.layers.1.mlp.gate_up_proj.weight")
    np.testing.assert_array_equal(canon["layers.1.mlp.gate.weight"], fused[: spec.intermediate_size])
    np.testing.assert_array_equal(canon["layers.1.mlp.up.weight"], fused[spec.intermediate_size:])

    assert inspect_checkpoint(d).adapter == "my_llama"


def test_architecture_example_runs_through_golden_export_and_simulator(arch_example, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from ascend_adapt.model_zoo.llama import torch_model as llama_reference
    from ascend_adapt.model_zoo.tiny import random_canonical_weights
    from ascend_adapt.om_convert.convert import convert
    from ascend_adapt.runtime.generate import greedy_tokens
    from ascend_adapt.backends.torch.session import TorchBackend

    # what model_zoo/my_llama/torch_model.py would contain (the page shows the one-line file)
    sys.modules["ascend_adapt.model_zoo.my_llama.torch_model"] = llama_reference

    d = tmp_path / "tiny-my-llama"
    golden = TorchBackend(d)
    assert golden.spec.arch == "my_llama"
    ids = np.array([[1, 15, 27, 99, 200, 7]])
    logits = golden.full_logits(ids)

    # the same canonical weights under the stock Llama adapter give the same logits
    llama_spec = golden.spec.__class__.from_dict({**golden.spec.to_dict(), "arch": "llama"})
    weights = random_canonical_weights(golden.spec, seed=0)
    np.testing.assert_array_equal(logits, TorchBackend.from_canonical(llama_spec, weights).full_logits(ids))

    _, steps = greedy_tokens(golden, ids, 3, return_logits=True)
    # cached first step vs full pass, both fp32 torch: 2·u·Σn·max|logits| (tests/tolerances.py);
    # refuses a bound that would not catch a 1e-1 error (a stale cache slot, a wrong position)
    from tolerances import fp32_atol

    tol = fp32_atol(golden.spec, np.abs(logits).max(), keys=ids.shape[1] + 3)
    np.testing.assert_allclose(steps[:, 0], logits[:, -1], rtol=0, atol=tol)

    report = convert(d, tmp_path / "out", soc="Ascend310P3", use_atc="never", seq_len=16, max_len=24,
                     verify_tokens=4)
    assert report.passed and report.verify["tokens_identical"], report.verify["summary"]
    assert report.artifact["simulated"]


def test_architecture_example_is_gone_afterwards(arch_example):
    """The fixture's cleanup leaves the registry and its indexes as they were."""
    from ascend_adapt.model_zoo import ADAPTERS, base

    assert "my_llama" in ADAPTERS
    _forget_adapter("my_llama", [])
    assert "my_llama" not in ADAPTERS
    assert "MyLlamaForCausalLM" not in base._BY_ARCH and "my_llama" not in base._BY_TYPE


def test_no_example_adapter_leaks_into_the_registry():
    from ascend_adapt.errors import UnsupportedError
    from ascend_adapt.model_zoo import ADAPTERS, adapter_for_config

    assert "my_llama" not in ADAPTERS
    with pytest.raises(UnsupportedError):
        adapter_for_config({"architectures": ["MyLlamaForCausalLM"], "model_type": "my_llama"})


# ---- README.md command table ----------------------------------------------------------------------

def _click_command(name: str):
    from ascend_adapt.cli.main import COMMANDS

    module, attr, _ = COMMANDS[name]
    return getattr(importlib.import_module(module), attr)


def test_readme_command_table_matches_the_cli():
    import click

    from ascend_adapt.cli.main import COMMANDS

    rows = re.findall(r"^\| `ascend-adapt ([a-z][a-z-]*)((?: [a-z][a-z-]*)?)", README.read_text(encoding="utf-8"), re.M)
    assert len(rows) >= 10, "README.md's command table was not found"
    listed = set()
    for name, sub in rows:
        assert name in COMMANDS, f"README.md lists `ascend-adapt {name}`, which is not in COMMANDS"
        listed.add(name)
        cmd = _click_command(name)
        if isinstance(cmd, click.Group):
            assert sub.strip() in cmd.commands, f"README.md lists `ascend-adapt {name}{sub}`: no such subcommand"
    assert listed == set(COMMANDS), f"commands missing from README.md's table: {sorted(set(COMMANDS) - listed)}"


# ---- docs/user_guide.md -----------------------------------------------------------------------------

def _guide_command_lines() -> list[str]:
    lines = []
    for info, body in _fenced_blocks(GUIDE.read_text(encoding="utf-8")):
        if info.strip() in ("python", "py"):
            continue
        for line in body.splitlines():
            s = line.strip()
            if s.startswith("$ "):
                s = s[2:]
            if s.startswith("ascend-adapt "):
                lines.append(s)
    return lines


def test_user_guide_commands_and_options_exist():
    import click

    from ascend_adapt.cli.main import COMMANDS

    lines = _guide_command_lines()
    assert len(lines) >= 25
    used = set()
    for line in lines:
        argv = shlex.split(line, comments=True)[1:]
        name = argv[0]
        assert name in COMMANDS, f"user_guide.md: `{line}`: no command '{name}'"
        used.add(name)
        cmd, rest = _click_command(name), argv[1:]
        if isinstance(cmd, click.Group):
            assert rest and rest[0] in cmd.commands, f"user_guide.md: `{line}`: no such subcommand"
            cmd, rest = cmd.commands[rest[0]], rest[1:]
        options = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}
        for token in rest:
            if token.startswith("-") and not re.fullmatch(r"-?\d[\d.e-]*", token):
                assert token.split("=", 1)[0] in options, \
                    f"user_guide.md: `{line}`: `ascend-adapt {name}` has no option {token}"
    # the guide walks the whole pipeline
    assert {"make-tiny", "inspect", "estimate", "port", "generate", "export", "analyze", "convert",
            "compare", "run", "debug"} <= used


def test_user_guide_states_what_the_simulator_is_not():
    text = " ".join(GUIDE.read_text(encoding="utf-8").replace("**", "").split())
    for phrase in ("Acceptance is emulated", "Numerics are emulated", "Cost is estimated", "not bit-exact",
                   ".omsim", "simulated", "√56", "fp16", "lm_head", "[B, 2, S]", "keep_dtype", "--gears",
                   "atc/prefill.sh", "pyACL", "ais_bench", "--layerwise", "debug reduce"):
        assert phrase in text, phrase


def _guide_snippet(first_line: str) -> str:
    for info, body in _fenced_blocks(GUIDE.read_text(encoding="utf-8")):
        if info.strip() == "python" and body.startswith(first_line):
            return body
    raise AssertionError(f"user_guide.md: no python block starting with {first_line!r}")


def test_user_guide_overflow_model_snippet_runs(tmp_path, monkeypatch):
    from ascend_adapt.checkpoint import open_checkpoint

    monkeypatch.chdir(tmp_path)
    exec(compile(_guide_snippet("# make_hot.py"), str(GUIDE), "exec"), {"__name__": "guide"})  # noqa: S102
    reader = open_checkpoint(tmp_path / "tiny-llama-hot")
    assert reader.config["tie_word_embeddings"] is False
    up = reader.get("model.layers.1.mlp.up_proj.weight")
    assert np.abs(up).max() > 100  # scaled ×300: silu(gate)·up overflows fp16 in layer 1


def test_user_guide_chatglm_facts_snippet_runs(shared_asset, monkeypatch, capsys):
    shared_asset("chatglm6b_ice_text.model")
    monkeypatch.chdir(REPO)  # the snippet reads ../shared/assets/ from the repository root
    exec(compile(_guide_snippet("# glm_facts.py"), str(GUIDE), "exec"), {"__name__": "guide"})  # noqa: S102
    out = capsys.readouterr().out
    assert "ids [5, 74874, 130001, 130004] positions [[0, 1, 2, 2], [0, 0, 0, 1]]" in out
    assert "first decode step [2, 2]" in out
    assert out in GUIDE.read_text(encoding="utf-8").replace("$ python glm_facts.py\n", "")
