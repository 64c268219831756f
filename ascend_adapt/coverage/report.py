"""Verdicts per recorded op and release, the dtype policy of a SoC, and the report files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ascend_adapt.errors import ConfigError

from .oplists import PACKAGES, Release, load_releases
from .record import OpTrace

SUPPORTED, FALLBACK, UNSUPPORTED = "supported", "falls back to CPU", "unsupported"

# CPU-only kernels PyTorch picks on the CPU inside a CompositeImplicitAutograd op; on the device the
# call enters at the parent op instead (torch_npu registers scaled_dot_product_attention itself:
# op-plugin op_plugin_functions.yaml lists it for every release in the data file).
CPU_ONLY_PARENT = {
    "_scaled_dot_product_flash_attention_for_cpu": "scaled_dot_product_attention",
    "_scaled_dot_product_flash_attention_for_cpu_backward": "scaled_dot_product_attention",
}

_VIEWLIKE_DTYPE_FREE = ("view", "_unsafe_view", "alias", "t", "transpose", "expand", "slice", "select",
                        "unsqueeze", "squeeze", "permute", "detach", "lift_fresh", "as_strided", "split")


def _has_composite_kernel(op: str) -> bool:
    """Whether PyTorch gives `op` ("aten::t") a backend-independent CompositeExplicitAutograd kernel."""
    import torch

    for key in ("CompositeExplicitAutograd", "CompositeExplicitAutogradNonFunctional"):
        try:
            if torch._C._dispatch_has_kernel_for_dispatch_key(op, key):
                return True
        except RuntimeError:  # an overload the local torch does not have
            return False
    return False


def _soc_has_bf16(target) -> bool:
    return target is not None and target.bf16_tflops is not None


def dtype_policy(target, model_dtype: str | None = None) -> tuple[str, str]:
    """The compute dtype to run on `target`, and why.

    fp16 on SoCs without bf16 (310 / 310P: the target's `bf16_tflops` is null), the checkpoint's
    bf16 where the SoC has bf16 (910B, MLU370), fp16 otherwise.

    Returns:
        (dtype name, one-sentence reason).
    """
    model_dtype = (model_dtype or "float32").replace("torch.", "")
    if not _soc_has_bf16(target):
        why = f"{target.name if target is not None else 'the SoC'} has no bf16 (its target profile lists no bf16 compute): fp16"
        if model_dtype == "bfloat16":
            why += ("; the checkpoint is bf16, whose range (3.4e38) fp16 (65504) does not cover: check "
                    "activations for overflow (ascend-adapt compare --layerwise)")
        return "float16", why
    if model_dtype == "bfloat16":
        return "bfloat16", f"{target.name} has bf16 and the checkpoint is bf16"
    return "float16", f"{target.name} runs fp16 at full rate; the checkpoint is {model_dtype}"


@dataclasses.dataclass
class CoverageReport:
    """The per-op verdicts of one trace against the releases of one package."""

    data: dict

    def verdicts(self, release: str) -> dict[str, str]:
        """op key -> verdict for the release labelled `release` ("2.6.0.post5")."""
        return {o["key"]: o["releases"][release]["verdict"] for o in self.data["ops"]}

    def ops(self, verdict: str, release: str) -> list[str]:
        return sorted(k for k, v in self.verdicts(release).items() if v == verdict)


def _verdict(rec, rel: Release, target, local_composite: bool) -> dict:
    key = rec.key
    bf16_trouble = "bfloat16" in rec.dtype_names() and target is not None and not _soc_has_bf16(target)
    soc = target.name if target is not None else "the SoC"
    if rec.namespace != "aten":
        return {"verdict": UNSUPPORTED, "how": f"{rec.namespace}:: op, not an ATen op",
                "todo": f"{rel.package} has kernels for ATen ops (and its own npu_/mlu ops) only: "
                        "replace the custom op or register a kernel for the device"}
    if rec.layouts - {"strided"}:
        return {"verdict": UNSUPPORTED, "how": f"layout {sorted(rec.layouts - {'strided'})}",
                "todo": "densify the tensor (.to_dense()) before the op: sparse layouts have no device kernels"}
    if key in rel.unsupported:
        return {"verdict": UNSUPPORTED, "how": "listed under 'unsupported' in the release's op-plugin file",
                "todo": "use another release or replace the op in the model code"}
    parent = CPU_ONLY_PARENT.get(key)
    if key in rel.kernels:
        out = {"verdict": SUPPORTED, "how": "device kernel"}
    elif parent and parent in rel.kernels:
        out = {"verdict": SUPPORTED, "how": f"CPU-only kernel of {parent}; on the device the call "
                                            f"enters at aten::{parent}, which has a kernel"}
    elif key in rel.to_cpu:
        out = {"verdict": FALLBACK, "how": "listed under 'tocpu' in the release's op-plugin file",
               "todo": "runs on the host; replace the op in the model code if it is on the hot path"}
    elif local_composite:
        out = {"verdict": SUPPORTED, "how": "backend-independent (CompositeExplicitAutograd) kernel in PyTorch"}
    else:
        out = {"verdict": FALLBACK, "how": "no device kernel in the release's lists",
               "todo": (f"{rel.package} runs it on the host CPU with a copy each way per call ("
                        + ("'will fall back to run on the CPU' warning; TORCH_NPU_FALLBACK_CPU_DISABLE=1 "
                           "makes it an error" if rel.package == "torch_npu" else
                           "warning; ENABLE_FALLBACK_TO_CPU=0 makes it an error")
                        + "): use a release that lists it, or replace the call in the model code")}
    if bf16_trouble and out["verdict"] == SUPPORTED and not key.startswith(_VIEWLIKE_DTYPE_FREE):
        out = {"verdict": UNSUPPORTED, "how": f"bf16 input on {soc}, which has no bf16",
               "todo": "load the model in float16 (the porting script's dtype policy for this SoC does)"}
    notes = []
    if bf16_trouble and out["verdict"] != UNSUPPORTED:
        notes.append(f"bf16 on {soc} (no bf16): views pass, compute does not")
    if "float64" in rec.dtype_names():
        notes.append("float64: Ascend / MLU compute units have no fp64; keep the model in fp32/fp16")
    if notes:
        out["note"] = "; ".join(notes)
    return out


def coverage_report(trace: OpTrace, package: str = "torch_npu", target=None,
                    releases: list[Release] | None = None) -> CoverageReport:
    """Verdict per recorded op for every release of `package`.

    Args:
        trace: from `record_model_ops` / `record_ops`.
        package: "torch_npu" or "torch_mlu".
        target: the SoC's `Target` (for the dtype notes), or None.
        releases: override the releases (default: the package's data file).
    """
    if package not in PACKAGES:
        raise ConfigError(f"no op lists for package '{package}'", f"use one of: {', '.join(PACKAGES)}")
    rels = releases if releases is not None else load_releases(package)
    ops = []
    for qual in sorted(trace.ops, key=lambda q: trace.ops[q].key):
        rec = trace.ops[qual]
        composite = rec.namespace == "aten" and _has_composite_kernel(qual)
        ops.append({
            "op": qual, "key": rec.key, "calls": rec.calls, "phases": sorted(rec.phases),
            "dtypes": rec.dtype_names(),
            "releases": {r.version: _verdict(rec, r, target, composite) for r in rels},
        })
    summary = {}
    for r in rels:
        counts = {v: 0 for v in (SUPPORTED, FALLBACK, UNSUPPORTED)}
        for o in ops:
            counts[o["releases"][r.version]["verdict"]] += 1
        summary[r.version] = counts
    return CoverageReport({
        "package": package, "soc": target.name if target is not None else None,
        "soc_version": target.soc_version if target is not None else None,
        "model": trace.model, "dtype": trace.dtype, "steps": trace.steps,
        "recorded_with_torch": trace.torch_version,
        "caveat": ("ops were recorded with the local PyTorch; a release built for another PyTorch may "
                   "decompose a few composite ops differently"),
        "releases": [{"version": r.version, "torch": r.torch, "sdk": r.sdk, "sources": list(r.sources)}
                     for r in rels],
        "fallback_behaviour": rels[0].fallback if rels else "",
        "summary": summary, "ops": ops,
    })


def format_report(report: CoverageReport) -> str:
    """A plain-text table: one row per op, one verdict column per release, then what to do."""
    d = report.data
    rels = [r["version"] for r in d["releases"]]
    short = {SUPPORTED: "ok", FALLBACK: "CPU", UNSUPPORTED: "FAIL"}
    lines = [f"{d['package']} op coverage: {d['model']} ({d['dtype']}) on {d['soc'] or 'any SoC'}; "
             f"prefill {d['steps'].get('prompt_len', '?')} tokens + {d['steps'].get('new_tokens', '?')} decode "
             f"steps; recorded with torch {d['recorded_with_torch']}"]
    for r in d["releases"]:
        src = "; ".join(f"{s['repo']} {s.get('branch', '')} {s['commit'][:10]} ({s['date']})".replace("  ", " ")
                        for s in r["sources"])
        lines.append(f"  {d['package']} {r['version']} (torch {r['torch']}, {r['sdk']}): {src}")
    width = max([len(o["op"]) for o in d["ops"]] + [10])
    lines.append("")
    lines.append(f"{'op':<{width}}  {'dtypes':<24} " + " ".join(f"{v:>18}" for v in rels))
    todo = []
    for o in d["ops"]:
        cells = " ".join(f"{short[o['releases'][v]['verdict']]:>18}" for v in rels)
        lines.append(f"{o['op']:<{width}}  {','.join(o['dtypes']) or '-':<24} {cells}")
        for v in rels:
            x = o["releases"][v]
            if x["verdict"] != SUPPORTED or x.get("note"):
                todo.append(f"  {o['op']} [{v}]: {x['verdict']} ({x['how']})"
                            + (f"; note: {x['note']}" if x.get("note") else "")
                            + (f"\n      do: {x['todo']}" if x.get("todo") else ""))
    lines.append("")
    for v in rels:
        c = d["summary"][v]
        lines.append(f"{d['package']} {v}: {c[SUPPORTED]} supported, {c[FALLBACK]} fall back to CPU, "
                     f"{c[UNSUPPORTED]} unsupported of {len(d['ops'])} ops")
    if todo:
        lines.append("")
        lines.append("to do:")
        lines.extend(todo)
    lines.append("")
    lines.append(f"fallback: {d['fallback_behaviour']}")
    return "\n".join(lines) + "\n"


def write_report(report: CoverageReport, directory: str | Path, stem: str | None = None) -> tuple[Path, Path]:
    """Write `<stem>.json` and `<stem>.txt` into `directory` (an output being assembled)."""
    directory = Path(directory)
    stem = stem or f"op_coverage_{report.data['package']}"
    j, t = directory / f"{stem}.json", directory / f"{stem}.txt"
    j.write_text(json.dumps(report.data, indent=1) + "\n")
    t.write_text(format_report(report))
    return j, t
