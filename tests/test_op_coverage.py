"""Op coverage for the torch_npu / torch_mlu routes (issue #16): the recorder, the release data
files, the verdicts, and `port --to torch-npu`."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from ascend_adapt.coverage import (FALLBACK, SUPPORTED, UNSUPPORTED, coverage_report, format_report,  # noqa: E402
                                   load_releases, record_model_ops, record_ops)
from ascend_adapt.targets import load_target  # noqa: E402


def _ops_of(fn) -> set[str]:
    return record_ops({"run": fn}).keys()


# ----------------------------------------------------------------------------- data files
@pytest.mark.parametrize("package", ["torch_npu", "torch_mlu"])
def test_release_data_names_its_sources(package):
    rels = load_releases(package)
    assert len(rels) >= 2
    for r in rels:
        assert r.sources and r.sdk and r.torch
        for s in r.sources:
            assert re.fullmatch(r"[0-9a-f]{40}", s["commit"]), s
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", s["date"]), s
            assert s["repo"].startswith("github.com/") and s["file"]
        # the lists are the vendors' kernels: matmul and softmax kernels are in every release
        assert {"mm", "bmm", "_softmax"} <= r.kernels


# ----------------------------------------------------------------------------- the recorder
def test_tiny_llama_trace_contains_the_ops_of_its_own_modules(tiny_dir):
    """The expected ops are derived from the model: each kind of leaf module (Embedding, Linear,
    the norm, the activation), run alone under the recorder, must reappear in the model's trace, and
    the eager attention's softmax and batched matmul too."""
    from ascend_adapt.backends.torch.session import TorchBackend

    d = tiny_dir("llama")
    trace = record_model_ops(d, "float32", prompt_len=5, new_tokens=2)
    keys = trace.keys()
    model = TorchBackend(d).model
    hidden = model.config.hidden_size
    seen_kinds = set()
    for module in model.modules():
        kind = type(module).__name__
        if list(module.children()) or kind in seen_kinds:
            continue
        if isinstance(module, torch.nn.Embedding):
            expect = _ops_of(lambda: module(torch.tensor([[1, 2]])))
        elif isinstance(module, torch.nn.Linear):
            expect = _ops_of(lambda: module(torch.randn(1, 2, module.in_features)))
        elif "Norm" in kind:
            expect = _ops_of(lambda: module(torch.randn(1, 2, hidden)))
        elif "Activation" in kind or kind in ("SiLU", "SiLUActivation", "GELUActivation"):
            expect = _ops_of(lambda: module(torch.randn(1, 2, 4)))
        else:
            continue
        seen_kinds.add(kind)
        expect -= {"lift_fresh", "randn", "normal_", "empty.memory_format"}  # the test's own inputs
        assert expect <= keys, (kind, expect - keys)
    assert {"Embedding", "Linear"} <= seen_kinds and any("Norm" in k for k in seen_kinds)
    if model.config._attn_implementation == "eager":
        q = torch.randn(1, 2, 3, 4)
        attn = _ops_of(lambda: torch.softmax(q @ q.transpose(-1, -2), dim=-1))
        assert {"_softmax"} <= keys and (attn & {"bmm", "mm"}) <= keys and attn & {"bmm", "mm"}
    # prefill and decode both ran and were labelled
    assert any(r.phases == {"prefill", "decode"} for r in trace.ops.values())


@pytest.mark.parametrize("arch", ["llama", "chatglm", "qwen2"])
def test_report_gives_every_recorded_op_a_verdict_per_release(tiny_dir, arch):
    trace = record_model_ops(tiny_dir(arch), "float16", prompt_len=4, new_tokens=1)
    rep = coverage_report(trace, "torch_npu", load_target("Ascend310P3"))
    rels = [r.version for r in load_releases("torch_npu")]
    assert len(rep.data["ops"]) == len(trace.ops) > 10
    for o in rep.data["ops"]:
        assert set(o["releases"]) == set(rels)
        assert all(v["verdict"] in (SUPPORTED, FALLBACK, UNSUPPORTED) for v in o["releases"].values())
    text = format_report(rep)
    for o in rep.data["ops"]:
        assert o["op"] in text
    # the JSON round-trips
    assert json.loads(json.dumps(rep.data)) == rep.data


# ----------------------------------------------------------------------------- planted ops
class _Logit(torch.nn.Module):
    def forward(self, x):
        return torch.logit(x.sigmoid(), eps=1e-6) * 2


def test_planted_op_missing_from_one_release_is_reported():
    """aten::logit has no kernel in torch_npu 2.1.0.post10's lists and one in 2.6.0.post5's (data
    premise checked first): the older release must report it as a CPU fallback, the newer as supported."""
    rels = {r.version: r for r in load_releases("torch_npu")}
    old, new = rels["2.1.0.post10"], rels["2.6.0.post5"]
    assert "logit" not in old.kernels and "logit" in new.kernels
    m = _Logit()
    trace = record_ops({"forward": lambda: m(torch.randn(3, 4, dtype=torch.float16))})
    assert "logit" in trace.keys()
    rep = coverage_report(trace, "torch_npu", load_target("Ascend910B4"))
    assert rep.verdicts(old.version)["logit"] == FALLBACK
    assert rep.verdicts(new.version)["logit"] == SUPPORTED
    assert "logit" in rep.ops(FALLBACK, old.version)
    assert re.search(r"aten::logit \[2\.1\.0\.post10\]: falls back to CPU", format_report(rep))


def test_custom_and_sparse_ops_are_unsupported():
    lib = torch.library.Library("aacov", "DEF")  # noqa: F841  (kept alive for the test)
    lib.define("twice(Tensor x) -> Tensor")
    lib.impl("twice", lambda x: x * 2, "CPU")
    s = torch.eye(3).to_sparse()
    trace = record_ops({"run": lambda: (torch.ops.aacov.twice(torch.ones(2)), torch.sparse.mm(s, torch.ones(3, 1)))})
    rep = coverage_report(trace, "torch_npu", load_target("Ascend910B4"))
    for rel in rep.data["releases"]:
        v = rep.verdicts(rel["version"])
        assert v["twice"] == UNSUPPORTED
        sparse_ops = [o["key"] for o in rep.data["ops"] if o["key"] != "twice"
                      and trace.ops[o["op"]].layouts - {"strided"}]
        assert sparse_ops and all(v[k] == UNSUPPORTED for k in sparse_ops)


def test_bf16_is_unsupported_on_310p_and_supported_on_910b():
    x, w = torch.randn(2, 4, dtype=torch.bfloat16), torch.randn(4, 3, dtype=torch.bfloat16)
    trace = record_ops({"run": lambda: torch.mm(x, w).t()})
    for soc, want in (("Ascend310P3", UNSUPPORTED), ("Ascend910B4", SUPPORTED)):
        rep = coverage_report(trace, "torch_npu", load_target(soc))
        for rel in rep.data["releases"]:
            assert rep.verdicts(rel["version"])["mm"] == want
            assert rep.verdicts(rel["version"])["t"] == SUPPORTED  # a view: no compute in bf16


def test_torch_mlu_report_uses_the_mlu_lists(tiny_dir):
    trace = record_model_ops(tiny_dir("llama"), "float16", prompt_len=3, new_tokens=1)
    rep = coverage_report(trace, "torch_mlu", load_target("MLU370"))
    assert [r["version"] for r in rep.data["releases"]] == [r.version for r in load_releases("torch_mlu")]
    assert "ENABLE_FALLBACK_TO_CPU" in rep.data["fallback_behaviour"]
    assert rep.verdicts("1.22.0+torch2.4.0")["mm"] == SUPPORTED


# ----------------------------------------------------------------------------- port --to torch-npu
def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ascend_adapt", *map(str, args)], capture_output=True, text=True)


def test_port_to_torch_npu_writes_script_and_report(tiny_dir, tmp_path):
    out = tmp_path / "npu"
    r = _cli("port", tiny_dir("chatglm"), "--to", "torch-npu", "--soc", "Ascend910B4", "-o", out)
    assert r.returncode == 0, r.stderr
    script = (out / "run_torch_npu.py").read_text()
    compile(script, "run_torch_npu.py", "exec")
    assert "import torch_npu" in script and 'DEVICE = "npu:0"' in script
    assert "torch.npu.set_device(a.device)" in script and "model.generate(" in script
    assert 'DTYPE = "float16"' in script  # fp32 checkpoint -> fp16 on 910B
    rep = json.loads((out / "op_coverage_torch_npu.json").read_text())
    assert rep["soc"] == "Ascend910B" and rep["soc_version"] == "Ascend910B4"
    assert (out / "op_coverage_torch_npu.txt").read_text().startswith("torch_npu op coverage")
    # the script, run here without torch_npu, names the package and the CANN it needs
    run = subprocess.run([sys.executable, out / "run_torch_npu.py"], capture_output=True, text=True)
    assert run.returncode != 0 and "torch_npu" in run.stderr and "CANN" in run.stderr
    # no overwrite without --force
    again = _cli("port", tiny_dir("chatglm"), "--to", "torch-npu", "--soc", "Ascend910B4", "-o", out)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_port_dtype_policy_follows_the_soc(tiny_dir, tmp_path):
    bf16 = tiny_dir("llama", dtype="bfloat16")
    for soc, want in (("Ascend310P3", "float16"), ("Ascend910B4", "bfloat16")):
        out = tmp_path / soc
        r = _cli("port", bf16, "--to", "torch-npu", "--soc", soc, "-o", out)
        assert r.returncode == 0, r.stderr
        assert f'DTYPE = "{want}"' in (out / "run_torch_npu.py").read_text()
        assert json.loads((out / "op_coverage_torch_npu.json").read_text())["dtype"] == want


def test_port_refuses_a_soc_of_the_other_vendor(tiny_dir, tmp_path):
    r = _cli("port", tiny_dir("llama"), "--to", "torch-npu", "--soc", "MLU370", "-o", tmp_path / "x")
    assert r.returncode == 2 and "MLU370" in r.stderr and "fix:" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()
