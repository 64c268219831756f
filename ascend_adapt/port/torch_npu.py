"""`port DIR --to torch-npu | torch-mlu`: a runnable porting script and the op-coverage report.

The script (written for the device host) places the Hugging Face model on `npu:N` / `mlu:N` with
the SoC's dtype policy (fp16 on 310 / 310P, which have no bf16; the checkpoint's bf16 allowed on
910B and MLU370), and runs the HF `generate` call. The op-coverage report beside it comes from
running the model's golden on this CPU under the op recorder (`ascend_adapt.coverage`) and checking
every ATen op against the package releases' public kernel lists.

Device API used by the script (documented by the vendors):
- torch_npu: `import torch_npu` registers the "npu" device; tensors and modules go to "npu:0";
  `torch.npu.set_device(device)` (Ascend/pytorch README.md "import torch_npu ... .npu()",
  torch_npu/npu/utils.py `set_device`, master 9e73e708, 2026-08-21). TORCH_NPU_FALLBACK_CPU_DISABLE=1
  turns the silent CPU fallback into an error (docs/zh/api/environment_variable/op_execution/).
- torch_mlu: `import torch_mlu`; "mlu:0"; `torch.mlu.set_device` (Cambricon/torch_mlu README.md,
  torch_mlu/mlu/device.py, branch r1.22_pt2.4.0); ENABLE_FALLBACK_TO_CPU=0 makes a missing kernel
  an error (torch_mlu/csrc/aten/MLUFallback.cpp).
"""

from __future__ import annotations

import json
from pathlib import Path

from ascend_adapt.errors import ConfigError
from ascend_adapt.fsutil import atomic_output, check_output

# package -> (device type, strict env var and value, SDK)
DEVICES = {
    "torch_npu": ("npu", ("TORCH_NPU_FALLBACK_CPU_DISABLE", "1"), "CANN"),
    "torch_mlu": ("mlu", ("ENABLE_FALLBACK_TO_CPU", "0"), "Neuware (CTR)"),
}

_SCRIPT = '''#!/usr/bin/env python3
"""Run {model_name} on {soc} through {package} (written by {written_by}).

Needs: {package} {release_line}, the matching PyTorch, transformers, and the model at --model.
{coverage_line}

    python {script_name} --prompt "Hello" --max-new-tokens 32
    python {script_name} --strict      # a missing device kernel is an error, not a silent CPU fallback
"""

import argparse
import os
import sys

MODEL_DIR = {model_dir}
DEVICE = {device}                 # {device_type}:N
DTYPE = {dtype}                   # {dtype_reason}
STRICT_ENV = {strict_env}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=MODEL_DIR, help="Hugging Face checkpoint directory")
    ap.add_argument("--device", default=DEVICE, help="{device_type}:N")
    ap.add_argument("--dtype", default=DTYPE, choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--prompt", default="Hello")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--strict", action="store_true",
                    help="set " + STRICT_ENV[0] + "=" + STRICT_ENV[1] + ": ops without a device kernel fail")
    a = ap.parse_args()
    if a.strict:  # read once by {package} when it loads: set before the import
        os.environ[STRICT_ENV[0]] = STRICT_ENV[1]

    import torch
    try:
        import {package}  # noqa: F401  registers the "{device_type}" device
    except ImportError as exc:
        sys.exit("{package} is not importable (" + str(exc) + "): install {package} {release_line} "
                 "with its {sdk} on this host")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.{device_type}.set_device(a.device)
    dtype = getattr(torch, a.dtype)
    tok = AutoTokenizer.from_pretrained(a.model, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=dtype, trust_remote_code=True)
    model = model.to(a.device).eval()
    inputs = tok(a.prompt, return_tensors="pt").to(a.device)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=a.max_new_tokens, do_sample=False)
    print(tok.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True))


if __name__ == "__main__":
    main()
'''


def render_run_script(package: str, model_dir: Path, soc_version: str, dtype: str, reason: str, releases,
                      *, device_index: int = 0, report_name: str | None = None, written_by: str | None = None) -> str:
    """The text of `run_<package>.py` (see the module docstring).

    Args:
        package: "torch_npu" or "torch_mlu".
        model_dir: the HF checkpoint the script loads by default.
        soc_version: the chip named in the docstring.
        dtype / reason: the dtype policy and its one-line reason.
        releases: the package's `Release` list (the newest is the one recommended).
        device_index: N of "npu:N" / "mlu:N".
        report_name: stem of the op-coverage report beside the script (None: say how to make one).
        written_by: the command named in the docstring.
    """
    device_type, strict_env, sdk = DEVICES[package]
    newest = releases[-1]
    return _SCRIPT.format(
        model_name=Path(model_dir).name, soc=soc_version, package=package,
        written_by=written_by or f"ascend-adapt port --to {package.replace('_', '-')}",
        release_line=f"{newest.version} ({newest.sdk}; lists checked: {', '.join(r.version for r in releases)})",
        coverage_line=(f"Op coverage of this model for the {package} releases: {report_name}.txt / .json beside "
                       "this file." if report_name else
                       f"Op coverage for the {package} releases: ascend-adapt port MODEL --to "
                       f"{package.replace('_', '-')} --soc SOC -o DIR (computed on a CPU)."),
        script_name=f"run_{package}.py",
        model_dir=json.dumps(str(model_dir)), device=json.dumps(f"{device_type}:{device_index}"),
        device_type=device_type, dtype=json.dumps(dtype), dtype_reason=reason.replace("\n", " "),
        strict_env=repr(strict_env), sdk=sdk)


def port_torch_device(src, out, *, package: str = "torch_npu", soc: str | None = None, device_index: int = 0,
                      force: bool = False, prompt_len: int = 8, new_tokens: int = 2) -> Path:
    """Write `OUT/run_<package>.py` and `OUT/op_coverage_<package>.{json,txt}`.

    Args:
        src: HF checkpoint directory (any family with an adapter) or .gguf file.
        out: output directory (written under a temporary name, renamed when complete).
        package: "torch_npu" or "torch_mlu".
        soc: target name or alias ("Ascend910B4", "Ascend310P3", "MLU370"); default Ascend910B /
            MLU370.
        device_index: N of "npu:N" / "mlu:N".
        force: replace an existing OUT.
        prompt_len / new_tokens: the prefill length and decode steps recorded for the report.

    Returns:
        The output directory.
    """
    from ascend_adapt.checkpoint import open_checkpoint
    from ascend_adapt.coverage import coverage_report, dtype_policy, load_releases, record_model_ops, write_report
    from ascend_adapt.targets import load_target

    if package not in DEVICES:
        raise ConfigError(f"unknown device package '{package}'", f"use one of: {', '.join(DEVICES)}")
    if device_index < 0:
        raise ConfigError(f"--device-index {device_index} is negative", "use 0 for the first device")
    target = load_target(soc or ("Ascend910B" if package == "torch_npu" else "MLU370"))
    vendor_ok = (target.vendor == "Huawei") if package == "torch_npu" else (target.vendor == "Cambricon")
    if not vendor_ok:
        raise ConfigError(f"--soc {target.name} is a {target.vendor} part; {package} runs on "
                          f"{'Ascend' if package == 'torch_npu' else 'Cambricon MLU'}",
                          f"pass an {'Ascend SoC (e.g. Ascend910B4)' if package == 'torch_npu' else 'MLU SoC (MLU370)'}")
    from ascend_adapt.checkpoint.gguf_io import is_gguf, resolve_source

    if is_gguf(src):  # a llama.cpp file: unpacked once into the cache (an HF layout the script can load)
        src = resolve_source(src)
    src_path = Path(src).resolve()
    out_path = check_output(out, force, inputs=[src_path])
    reader = open_checkpoint(src_path)
    from ascend_adapt.model_zoo.base import adapter_for_config

    spec = adapter_for_config(reader.config, str(src_path / "config.json")).spec_from_config(reader.config)
    dtype, reason = dtype_policy(target, spec.torch_dtype)
    releases = load_releases(package)
    trace = record_model_ops(src_path, dtype, prompt_len=prompt_len, new_tokens=new_tokens)
    report = coverage_report(trace, package, target, releases)
    stem = f"op_coverage_{package}"
    script = render_run_script(package, src_path, target.soc_version, dtype, reason, releases,
                               device_index=device_index, report_name=stem)
    with atomic_output(out_path, force=force, is_dir=True, inputs=[src_path]) as tmp:
        (tmp / f"run_{package}.py").write_text(script)
        write_report(report, tmp, stem)
    return out_path
