"""A target given as a file path (`convert --soc path/to/MyChip.json`) is found again by whatever
reopens the artifact (issue #12 leftover).

convert loads the file without registering it, records it in the simulator manifest
(`target_file`, an absolute path), and the simulator (verify, `run`, `generate`, `compare`,
`serve`) resolves the artifact's target from that record when the name is unknown in the
process. MyChip is a copy of Ascend310P3.json under another name, so everything the simulator
computes on it must equal, bit for bit, what it computes on an Ascend310P3 artifact of the same
model (same graph, same settings, same chip data): no tolerance is involved. When the recorded
file is gone (or now declares another name) the error names the artifact, the target and the
file.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ascend_adapt.cli.main import main as cli

PROMPT = ["--prompt-ids", "1,5,9,2", "--output-ids", "--max-new-tokens", "6"]


def _my_chip(where):
    """MyChip.json in `where`: Ascend310P3's profile under another name (its `extends` is found
    in the built-in data directory)."""
    from ascend_adapt.targets import DATA_DIR

    d = json.loads((DATA_DIR / "Ascend310P3.json").read_text(encoding="utf-8"))
    d["name"] = "MyChip"
    p = where / "MyChip.json"
    p.write_text(json.dumps(d), encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def converted(tiny_dir, tmp_path_factory):
    """(root, MyChip artifact, Ascend310P3 artifact) of the tiny llama; MyChip's given as a path
    relative to the working directory, verified on the simulator."""
    import os

    from ascend_adapt.targets import TARGETS

    root = tmp_path_factory.mktemp("target-file")
    chip = root / "chips"
    chip.mkdir()
    _my_chip(chip)
    assert "MyChip" not in TARGETS
    cwd = os.getcwd()
    os.chdir(root)
    try:
        code = cli(["convert", str(tiny_dir("llama")), "--soc", "chips/MyChip.json", "-o", "mine", "--max-len", "48",
                    "--json"])
    finally:
        os.chdir(cwd)
    assert code == 0
    code = cli(["convert", str(tiny_dir("llama")), "--soc", "Ascend310P3", "-o", str(root / "ref"), "--max-len", "48",
                "--no-verify", "--json"])
    assert code == 0
    assert "MyChip" not in TARGETS  # convert loaded the file; it registered nothing
    return root, root / "mine", root / "ref"


def test_convert_records_the_target_file_and_verifies_on_it(converted):
    root, mine, _ = converted
    manifest = json.loads((mine / "model.omsim" / "manifest.json").read_text())
    assert manifest["target"] == "MyChip" and manifest["soc_version"] == "Ascend310P3"
    assert manifest["target_file"] == str((root / "chips" / "MyChip.json").resolve())  # absolute, not as typed
    report = json.loads((mine / "convert.json").read_text())
    assert report["target"] == "MyChip"


def test_generate_and_run_reopen_it_without_registering_it(converted, capsys, tmp_path):
    from ascend_adapt.targets import TARGETS

    _, mine, ref = converted
    capsys.readouterr()
    assert cli(["generate", str(mine), "--backend", "sim", *PROMPT]) == 0
    out = capsys.readouterr()
    assert "simulated on MyChip" in out.err
    assert cli(["generate", str(ref), "--backend", "sim", *PROMPT]) == 0
    out_ref = capsys.readouterr()
    assert out.out.split() == out_ref.out.split() and len(out.out.split(",")) == 6
    # run: every output of the step graph equals the Ascend310P3 artifact's, bit for bit
    assert cli(["run", str(mine), "--save", str(tmp_path / "mine")]) == 0
    assert cli(["run", str(ref), "--save", str(tmp_path / "ref")]) == 0
    names = sorted(p.name for p in (tmp_path / "ref").glob("*.npy"))
    assert names and names == sorted(p.name for p in (tmp_path / "mine").glob("*.npy"))
    for n in names:
        np.testing.assert_array_equal(np.load(tmp_path / "mine" / n), np.load(tmp_path / "ref" / n), err_msg=n)
    assert "MyChip" not in TARGETS


def test_a_fresh_process_runs_it_and_serve_decodes_on_it(converted):
    _, mine, ref = converted
    res = subprocess.run([sys.executable, "-m", "ascend_adapt", "run", str(mine)], capture_output=True, text=True,
                         timeout=600, check=False)
    assert res.returncode == 0, res.stderr
    assert "simulated device time" in res.stdout

    pytest.importorskip("fastapi")
    from ascend_adapt.serve.engine import Request
    from ascend_adapt.serve.server import build

    tokens = []
    for art in (mine, ref):  # serve decodes on MyChip what it decodes on Ascend310P3
        engine = build(str(art), "sim").engine.start()
        req = engine.submit(Request(prompt_ids=[1, 5, 9, 2], max_tokens=6))
        assert engine.shutdown(drain=True, timeout_s=120)
        tokens.append(list(req.token_ids))
    assert tokens[0] == tokens[1] and tokens[0]


def test_a_gone_target_file_is_named_with_the_artifact_and_the_target(converted, tmp_path, capsys):
    import shutil

    from ascend_adapt.backends.sim.artifact import read_omsim
    from ascend_adapt.errors import ConfigError

    root, mine, _ = converted
    art = tmp_path / "mine"
    shutil.copytree(mine, art)
    chip = root / "chips" / "MyChip.json"
    moved = root / "MyChip.json.away"
    chip.rename(moved)
    try:
        with pytest.raises(ConfigError) as e:
            read_omsim(art / "model.omsim").resolve_target()
        msg = str(e.value)
        assert str(art / "model.omsim") in msg and "'MyChip'" in msg and str(chip.resolve()) in msg
        assert "is gone" in msg and "ASCEND_ADAPT_TARGETS_PATH" in msg
        capsys.readouterr()
        assert cli(["run", str(art)]) == 2
        err = capsys.readouterr().err
        assert "is gone" in err and "MyChip" in err and "fix:" in err
        # a file there that now declares another target is not taken for MyChip
        d = json.loads(moved.read_text())
        d["name"] = "OtherChip"
        chip.write_text(json.dumps(d))
        with pytest.raises(ConfigError, match="now declares target 'OtherChip'"):
            read_omsim(art / "model.omsim").resolve_target()
    finally:
        moved.replace(chip)


def test_a_registered_name_wins_over_the_recorded_file(converted, tmp_path):
    from ascend_adapt.backends.sim.artifact import read_omsim
    from ascend_adapt.targets import TARGETS, register_target_file

    _, mine, ref = converted
    assert read_omsim(ref / "model.omsim").resolve_target() is TARGETS.get("Ascend310P3")
    registered = register_target_file(_my_chip(tmp_path))
    try:
        assert read_omsim(mine / "model.omsim").resolve_target() is registered
    finally:
        TARGETS.unregister("MyChip")
