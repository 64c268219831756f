"""Build the op-coverage data files from torch_npu's and torch_mlu's public op lists.

Reads git mirrors of the public repositories (github `Ascend/pytorch`, `Ascend/op-plugin`,
`Cambricon/torch_mlu`) and writes

    ascend_adapt/coverage/data/torch_npu_ops.json
    ascend_adapt/coverage/data/torch_mlu_ops.json

Each release records its package version, PyTorch version, CANN / CTR (Neuware) version, the
branch, commit and commit date of every file read, and the sorted ATen overload names with an
NPU / MLU kernel ("mm", "add.Tensor", ...).

torch_npu: the kernels of a release are the union of
  - `op_plugin/config/op_plugin_functions.yaml` of the op-plugin commit the release pins as its
    `third_party/op-plugin` submodule, sections official / symint / autograd, entries whose
    `acl_op`, `op_api` or `internal_format_opapi` version spec covers the release's PyTorch
    version (specs: `all_version`, `vA`, `vA, vB`, `[vA, newest]`, `[vA, vB]`);
  - `torch_npu/csrc/aten/npu_native_functions.yaml` of the release branch, sections supported /
    symint (kernels written in torch_npu itself: views, copies, empty, ...).
  Older op-plugin files also carry `tocpu:` and `unsupported:` sections (recorded as such).
torch_mlu: `codegen/mlu_functions.yaml`, section `aten:` of the release branch.

Usage (mirrors are bare git directories; the ones this was built from are named in the output):

    python tools/build_op_coverage_data.py --op-plugin OP_PLUGIN.git --pytorch PYTORCH.git \
        --torch-mlu TORCH_MLU.git
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import yaml

OUT_DIR = Path(__file__).resolve().parents[1] / "ascend_adapt" / "coverage" / "data"

# torch_npu releases: (package version, Ascend/pytorch branch, PyTorch version key, CANN version)
# from Ascend/pytorch COMPATIBILITY.en.md (master 9e73e708, 2026-08-21), "TorchNPU version mapping table".
NPU_RELEASES = [
    ("2.1.0.post10", "v2.1.0-6.0.0", "v2.1", "CANN 8.0.0"),
    ("2.6.0.post5", "v2.6.0-7.3.0", "v2.6", "CANN 8.5.0"),
    ("2.9.0.post2", "v2.9.0-26.0.0", "v2.9", "CANN 9.0.0"),
]
# torch_mlu releases: (package version, branch, PyTorch version, CTR (Neuware SDK) version)
# from Cambricon/torch_mlu README.md "版本配套关系" (CTR 2.15 <-> torch_mlu 1.22.0).
MLU_RELEASES = [
    ("1.22.0+torch2.1.0", "r1.22_pt2.1.0", "2.1.0", "CTR 2.15"),
    ("1.22.0+torch2.4.0", "r1.22_pt2.4.0", "2.4.0", "CTR 2.15"),
]


def git(repo: str, *args: str) -> str:
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True).stdout


def commit_info(repo: str, rev: str) -> tuple[str, str]:
    sha, date = git(repo, "log", "-1", "--format=%H %cs", rev).split()
    return sha, date


def op_key(entry) -> str | None:
    """"add.Tensor(Tensor self, ...) -> Tensor" / {"func": ...} -> "add.Tensor"."""
    func = entry.get("func") if isinstance(entry, dict) else entry
    if not isinstance(func, str):
        return None
    return func.split("(", 1)[0].strip()


def covers(spec, version: str, all_versions: list[str]) -> bool:
    """Whether an op-plugin version spec covers `version` ("v2.6")."""
    if spec is None:
        return False
    if isinstance(spec, str):
        spec = spec.strip()
        if spec == "all_version":
            return version in all_versions
        return version in [s.strip() for s in spec.split(",")]
    if isinstance(spec, list) and len(spec) == 2:
        lo, hi = (str(s).strip() for s in spec)
        order = list(all_versions)
        if version not in order or lo not in order:
            return False
        top = len(order) - 1 if hi == "newest" else order.index(hi) if hi in order else -1
        return order.index(lo) <= order.index(version) <= top
    return False


def npu_release(op_plugin: str, pytorch: str, pkg: str, branch: str, tv: str, cann: str) -> dict:
    sub = git(pytorch, "ls-tree", branch, "third_party/op-plugin").split()[2]
    pt_sha, pt_date = commit_info(pytorch, branch)
    op_sha, op_date = commit_info(op_plugin, sub)
    cfg = yaml.safe_load(git(op_plugin, "show", f"{sub}:op_plugin/config/op_plugin_functions.yaml"))
    all_versions = [str(v) for v in cfg["all_version"]]
    if tv not in all_versions:
        raise SystemExit(f"{pkg}: {tv} not in op-plugin all_version {all_versions}")
    kernels: set[str] = set()
    for section in ("official", "symint", "autograd"):
        for e in cfg.get(section) or []:
            if any(covers(e.get(k), tv, all_versions) for k in ("acl_op", "op_api", "internal_format_opapi")):
                kernels.add(op_key(e))
    to_cpu = sorted({op_key(e) for e in cfg.get("tocpu") or [] if covers(e.get("version"), tv, all_versions)})
    unsupported = sorted({op_key(e) for e in cfg.get("unsupported") or []
                          if covers(e.get("version"), tv, all_versions)})
    native = yaml.safe_load(git(pytorch, "show", f"{branch}:torch_npu/csrc/aten/npu_native_functions.yaml"))
    for section in ("supported", "symint"):
        for e in native.get(section) or []:
            kernels.add(op_key(e))
    kernels.discard(None)
    return {
        "torch_npu": pkg, "torch": tv.lstrip("v"), "cann": cann,
        "sources": [
            {"repo": "github.com/Ascend/pytorch", "branch": branch, "commit": pt_sha, "date": pt_date,
             "file": "torch_npu/csrc/aten/npu_native_functions.yaml (supported, symint)"},
            {"repo": "github.com/Ascend/op-plugin", "commit": op_sha, "date": op_date,
             "pinned_by": f"Ascend/pytorch {branch} third_party/op-plugin",
             "file": f"op_plugin/config/op_plugin_functions.yaml (official, symint, autograd; "
                     f"acl_op / op_api / internal_format_opapi covering {tv})"},
        ],
        "kernels": sorted(kernels), "to_cpu": to_cpu, "unsupported": unsupported,
    }


def mlu_release(torch_mlu: str, pkg: str, branch: str, tv: str, ctr: str) -> dict:
    sha, date = commit_info(torch_mlu, branch)
    cfg = yaml.safe_load(git(torch_mlu, "show", f"{branch}:codegen/mlu_functions.yaml"))
    kernels = sorted({k for k in (op_key(e) for e in cfg.get("aten") or []) if k})
    return {
        "torch_mlu": pkg, "torch": tv, "neuware": ctr,
        "sources": [{"repo": "github.com/Cambricon/torch_mlu", "branch": branch, "commit": sha, "date": date,
                     "file": "codegen/mlu_functions.yaml (aten)"}],
        "kernels": kernels, "to_cpu": [], "unsupported": [],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--op-plugin", required=True, help="git dir of github.com/Ascend/op-plugin")
    ap.add_argument("--pytorch", required=True, help="git dir of github.com/Ascend/pytorch")
    ap.add_argument("--torch-mlu", required=True, help="git dir of github.com/Cambricon/torch_mlu")
    a = ap.parse_args()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    npu = {
        "schema_version": 1, "package": "torch_npu",
        "fallback": ("ops without an NPU kernel hit torch_npu's PrivateUse1 boxed fallback `npu_cpu_fallback` "
                     "(torch_npu/csrc/aten/VariableFallbackKernel.cpp): a warning 'will fall back to run on the "
                     "CPU', inputs copied to the host and back; TORCH_NPU_FALLBACK_CPU_DISABLE=1 turns it into an "
                     "error (releases that have the switch); sparse tensors hit `npu_Sparse_fallback`, an error"),
        "built_by": "tools/build_op_coverage_data.py",
        "releases": [npu_release(a.op_plugin, a.pytorch, *r) for r in NPU_RELEASES],
    }
    mlu = {
        "schema_version": 1, "package": "torch_mlu",
        "fallback": ("ops without an MLU kernel hit torch_mlu's PrivateUse1 fallback `mlu_fallback` "
                     "(torch_mlu/csrc/aten/MLUFallback.cpp): runs on the CPU with a warning while "
                     "ENABLE_FALLBACK_TO_CPU is unset or 1 (the default); ENABLE_FALLBACK_TO_CPU=0 makes it an error"),
        "built_by": "tools/build_op_coverage_data.py",
        "releases": [mlu_release(a.torch_mlu, *r) for r in MLU_RELEASES],
    }
    for name, data in (("torch_npu_ops.json", npu), ("torch_mlu_ops.json", mlu)):
        tmp = OUT_DIR / (name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        tmp.replace(OUT_DIR / name)
        print(f"wrote {OUT_DIR / name}: " + ", ".join(f"{len(r['kernels'])} kernels" for r in data["releases"]))


if __name__ == "__main__":
    main()
