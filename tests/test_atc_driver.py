"""run_atc / write_atc_script / find_atc against fake `atc` executables put first on PATH.

The fakes record their argv (one JSON list per call) so the tests can assert the exact command
line, print ATC's real failure or success output, and write `<output>.om` with the `IMOD` magic.
A last test runs the real ATC when `find_atc()` finds one (marker `atc`).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ascend_adapt import fsutil
from ascend_adapt.om_convert.atc import (
    AtcError,
    AtcNotFoundError,
    AtcOptions,
    AtcValidationError,
    find_atc,
    find_om,
    run_atc,
    write_atc_script,
)
from ascend_adapt.om_convert.atc import driver

FAIL_BODY = r'''
print("ATC start working now, please wait for a moment.")
print("ATC run failed, Please check the detail log, Try 'atc --help' for more information")
print("E19010: No parser is registered for Op [Gelu_3, optype [ai.onnx::20::Gelu]].")
print("        Solution: Check the version of the installation package and reinstall the package.")
print("        TraceBack (most recent call last):")
print("        Model parse to graph failed, graph name:Graph. [FILE: onnx_parser.cc]")
sys.exit(1)
'''

SUCCEED_BODY = r'''
if args.get("mode") == "3":
    with open(args["check_report"], "w") as fh:
        json.dump({"model_name": "m", "op": [{"op_name": "Gelu_3", "op_type": "Gelu", "result": "success"}]}, fh)
    print("ATC run success, welcome to the next use.")
    sys.exit(0)
with open(args["output"] + ".om", "wb") as fh:
    fh.write(b"IMOD" + struct.pack("<II", 256, 0x20000000) + bytes(248))
print("W11001: Op Add_1 does not hit the high-priority operator information library, which might result in compromised performance.")
print("ATC run success, welcome to the next use.")
'''

PRECHECK_FAILS_BODY = r'''
if args.get("mode") == "3":
    with open(args["check_report"], "w") as fh:
        json.dump({"op": [{"op_name": "Gelu_3", "op_type": "Gelu", "result": "failed", "reason": "no kernel"}]}, fh)
    print("E19010: No parser is registered for Op [Gelu_3, optype [ai.onnx::20::Gelu]].")
    sys.exit(2)
sys.exit(0)
'''

SLOW_BODY = r'''
import time
print("working", flush=True)
time.sleep(30)
'''


def make_fake_atc(bindir: Path, record: Path, body: str) -> Path:
    bindir.mkdir(parents=True, exist_ok=True)
    exe = bindir / "atc"
    exe.write_text(
        f"#!{sys.executable}\n"
        "import json, struct, sys\n"
        f"with open({str(record)!r}, 'a') as fh:\n"
        "    fh.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "args = dict(a[2:].split('=', 1) for a in sys.argv[1:])\n" + body
    )
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return exe


def recorded(record: Path) -> list[list[str]]:
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """tmp_path as cwd, with a model file and an empty PATH entry for the fake first."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"not really onnx")
    monkeypatch.setenv("PATH", str(tmp_path / "bin") + os.pathsep + os.environ.get("PATH", ""))
    return tmp_path


def options(tmp_path: Path, **kw) -> AtcOptions:
    base = AtcOptions(model=str(tmp_path / "model.onnx"), output=str(tmp_path / "out" / "prefill"),
                      soc_version="Ascend310P3", input_format="ND", input_shape="input_ids:1,-1",
                      dynamic_dims="16;32;64")
    return base.replace(**kw)


def test_failure_is_decoded_and_shows_the_exact_command(workdir):
    record = workdir / "argv.jsonl"
    exe = make_fake_atc(workdir / "bin", record, FAIL_BODY)
    opts = options(workdir)
    lines: list[str] = []
    registered = list(fsutil._CLEANUPS)
    during: list[int] = []

    def on_line(line):
        lines.append(line)
        during.append(len(fsutil._CLEANUPS))

    with pytest.raises(AtcError) as exc:
        run_atc(opts, log_path=workdir / "atc.log", on_line=on_line, precheck=False)
    err = exc.value
    # while ATC runs, a signal that ends the program kills it (fsutil.exit_on_signal); not after
    assert set(during) == {len(registered) + 1} and fsutil._CLEANUPS == registered

    # the documented command line, exactly
    assert recorded(record) == [[
        "--framework=5", f"--model={workdir / 'model.onnx'}", f"--output={workdir / 'out' / 'prefill'}",
        "--soc_version=Ascend310P3", "--input_format=ND", "--input_shape=input_ids:1,-1",
        "--dynamic_dims=16;32;64"]]
    assert err.returncode == 1 and err.stage == "build"
    assert err.command.startswith(str(exe) + " --framework=5 ")

    # decoded op and code, with a fix
    (gelu,) = [d for d in err.diagnostics if d.code == "E19010"]
    assert (gelu.op_name, gelu.op_type) == ("Gelu_3", "ai.onnx::20::Gelu")
    assert "opset <= 18" in err.hint
    text = str(err)
    assert "exit code 1" in text and err.command in text
    assert "| E19010: No parser is registered for Op [Gelu_3, optype [ai.onnx::20::Gelu]]." in text
    assert "E19010 (error) [op Gelu_3, type ai.onnx::20::Gelu]" in text
    assert "fix:" in text

    # streamed to the callback and the log; the script is there for a CANN host
    assert lines[0] == "ATC start working now, please wait for a moment." and len(lines) == 6
    log = (workdir / "atc.log").read_text()
    assert "# ascend-adapt: build: " in log and "E19010" in log
    assert (workdir / "out" / "atc_command.sh").is_file()


def test_success_with_precheck_writes_om(workdir):
    record = workdir / "argv.jsonl"
    make_fake_atc(workdir / "bin", record, SUCCEED_BODY)
    opts = options(workdir)
    result = run_atc(opts, log_path=workdir / "atc.log")

    pre, build = recorded(record)
    assert "--mode=3" in pre and not any(a.startswith("--output=") for a in pre)
    report = f"{workdir / 'out' / 'prefill'}_check_result.json"
    assert f"--check_report={report}" in pre
    assert build == opts.to_argv()[1:]

    assert result.returncode == 0
    assert result.om_path == str(workdir / "out" / "prefill.om")
    assert Path(result.om_path).read_bytes()[:4] == b"IMOD"
    assert result.check_report["op"][0]["result"] == "success"
    assert [d.code for d in result.warnings] == ["W11001"]
    assert result.precheck_command and "--mode=3" in result.precheck_command
    assert result.script_path == str(workdir / "out" / "atc_command.sh")
    assert "ATC run success" in result.log_tail[-1]


def test_failing_precheck_stops_before_the_build(workdir):
    record = workdir / "argv.jsonl"
    make_fake_atc(workdir / "bin", record, PRECHECK_FAILS_BODY)
    with pytest.raises(AtcError) as exc:
        run_atc(options(workdir))
    assert exc.value.stage == "pre-check" and exc.value.returncode == 2
    assert len(recorded(record)) == 1
    codes = {d.code for d in exc.value.diagnostics}
    assert {"E19010", "PRECHECK"} <= codes


def test_exit_0_without_om_is_an_error(workdir):
    make_fake_atc(workdir / "bin", workdir / "argv.jsonl", "print('ATC run success')\n")
    with pytest.raises(AtcError, match="was not written"):
        run_atc(options(workdir), precheck=False)


def test_timeout(workdir):
    make_fake_atc(workdir / "bin", workdir / "argv.jsonl", SLOW_BODY)
    with pytest.raises(AtcError, match="timed out"):
        run_atc(options(workdir), precheck=False, timeout_s=1.0)


def test_invalid_options_never_reach_atc(workdir):
    record = workdir / "argv.jsonl"
    make_fake_atc(workdir / "bin", record, SUCCEED_BODY)
    with pytest.raises(AtcValidationError) as exc:
        run_atc(options(workdir, dynamic_dims="16"))
    assert exc.value.code == "E10035"
    with pytest.raises(AtcValidationError) as exc:
        run_atc(options(workdir, model=str(workdir / "missing.onnx")))
    assert exc.value.code == "E10410"
    assert recorded(record) == []


def test_not_found_still_writes_the_script(workdir, monkeypatch):
    monkeypatch.setenv("PATH", str(workdir / "empty"))
    monkeypatch.delenv("ASCEND_TOOLKIT_HOME", raising=False)
    monkeypatch.delenv("ASCEND_HOME_PATH", raising=False)
    monkeypatch.setattr(driver, "DEFAULT_LOCATIONS", ())
    assert find_atc() is None
    with pytest.raises(AtcNotFoundError) as exc:
        run_atc(options(workdir))
    assert isinstance(exc.value, AtcError)
    assert "atc_command.sh" in str(exc.value)
    assert (workdir / "out" / "atc_command.sh").is_file()


def test_find_atc_order(workdir, monkeypatch):
    monkeypatch.setattr(driver, "DEFAULT_LOCATIONS", ())
    monkeypatch.setenv("PATH", str(workdir / "empty"))
    home = workdir / "toolkit"
    make_fake_atc(home / "bin", workdir / "r", "")
    monkeypatch.delenv("ASCEND_TOOLKIT_HOME", raising=False)
    monkeypatch.setenv("ASCEND_HOME_PATH", str(home))
    assert find_atc() == str(home / "bin" / "atc")
    on_path = make_fake_atc(workdir / "bin", workdir / "r", "")
    monkeypatch.setenv("PATH", str(workdir / "bin"))
    assert find_atc() == str(on_path)


def test_find_om_with_platform_suffix(tmp_path):
    out = tmp_path / "m"
    assert find_om(out) is None
    (tmp_path / "m_linux_x86_64.om").write_bytes(b"IMOD")
    assert find_om(out) == str(tmp_path / "m_linux_x86_64.om")
    (tmp_path / "m.om").write_bytes(b"IMOD")
    assert find_om(out) == str(tmp_path / "m.om")


def test_script_is_executable_and_runs_the_same_command(workdir):
    opts = options(workdir, precision_mode="allow_fp32_to_fp16")
    path = Path(write_atc_script(opts))
    assert path == workdir / "out" / "atc_command.sh"
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -e\n" in text
    assert "--soc_version=Ascend310P3" in text and "# Target: --soc_version=Ascend310P3" in text
    assert "source /usr/local/Ascend/ascend-toolkit/set_env.sh" in text
    assert "--model=../model.onnx" in text  # relative to the script
    assert path.stat().st_mode & stat.S_IXUSR
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0

    # run it from elsewhere with the fake on PATH: same flags, paths relative to the script dir
    record = workdir / "argv.jsonl"
    make_fake_atc(workdir / "bin", record, SUCCEED_BODY)
    proc = subprocess.run(["bash", str(path)], cwd="/", capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (argv,) = recorded(record)
    assert argv == AtcOptions.from_argv(["atc"] + argv).to_argv()[1:]
    assert "--model=../model.onnx" in argv and "--output=prefill" in argv
    assert (workdir / "out" / "prefill.om").read_bytes()[:4] == b"IMOD"


def test_script_quotes_awkward_paths(tmp_path):
    opts = AtcOptions(model=str(tmp_path / "my model's.onnx"), output=str(tmp_path / "o u t" / "m"),
                      soc_version="Ascend310P3", input_shape="x:1,3")
    path = Path(write_atc_script(opts, tmp_path / "o u t" / "build.sh"))
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    assert "'--model=../my model'\"'\"'s.onnx'" in path.read_text()


@pytest.mark.atc
def test_real_atc_builds_a_tiny_onnx(tmp_path):
    """Needs CANN: builds a one-op ONNX model for the soc in $ASCEND_SOC_VERSION (default Ascend310P3)."""
    if find_atc() is None:
        pytest.skip("ATC not found (PATH, $ASCEND_TOOLKIT_HOME, $ASCEND_HOME_PATH)")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, tmp_path / "tiny.onnx")
    opts = AtcOptions(model=str(tmp_path / "tiny.onnx"), output=str(tmp_path / "tiny"),
                      soc_version=os.environ.get("ASCEND_SOC_VERSION", "Ascend310P3"),
                      input_format="ND", input_shape="x:1,8")
    result = run_atc(opts, log_path=tmp_path / "atc.log", precheck=False, timeout_s=600)
    assert Path(result.om_path).read_bytes()[:4] == b"IMOD"
