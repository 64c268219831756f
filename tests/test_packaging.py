"""Both the editable install and a built wheel import every mapped package."""

import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["ascend_adapt", "ascend_adapt.operators", "ascend_adapt.model_zoo", "ascend_adapt.om_convert",
            "ascend_adapt.model_zoo.llama", "ascend_adapt.model_zoo.chatglm", "ascend_adapt.checkpoint",
            "ascend_adapt.cli"]


def test_editable_install_maps_top_level_folders():
    import ascend_adapt.model_zoo
    import ascend_adapt.om_convert
    import ascend_adapt.operators

    assert Path(ascend_adapt.operators.__file__).parent == ROOT / "operators"
    assert Path(ascend_adapt.model_zoo.__file__).parent == ROOT / "model_zoo"
    assert Path(ascend_adapt.om_convert.__file__).parent == ROOT / "om_convert"


def test_wheel_contains_and_imports_every_package(tmp_path):
    wheel_dir = tmp_path / "wheel"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(wheel_dir), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    wheel = next(wheel_dir.glob("ascend_adapt-*.whl"))
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    probe = (
        "import sys, importlib, json; sys.path.insert(0, sys.argv[1]);"
        "mods = [importlib.import_module(m) for m in sys.argv[2:]];"
        "print(json.dumps([m.__file__ for m in mods]))"
    )
    r = subprocess.run([sys.executable, "-c", probe, str(target), *PACKAGES], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    files = json.loads(r.stdout)
    assert all(f.startswith(str(target)) for f in files), files
    # package data travels with the wheel
    assert (target / "ascend_adapt" / "model_zoo" / "tiny_corpus.txt").exists()
