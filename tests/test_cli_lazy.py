"""The CLI imports no torch / mindspore / onnxruntime for --help, and degrades per command."""

import json
import subprocess
import sys
import textwrap


from ascend_adapt.cli.main import COMMANDS, LazyGroup

HEAVY = ("torch", "mindspore", "onnxruntime", "transformers", "onnx", "ray")  # ray: serve --devices only

_PROBE = textwrap.dedent("""
    import json, sys, io, contextlib
    from ascend_adapt.cli.main import main
    argv = json.loads(sys.argv[1])
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    heavy = sorted({m.split('.')[0] for m in sys.modules} & set(json.loads(sys.argv[2])))
    print(json.dumps({"rc": rc, "heavy": heavy, "out": buf.getvalue()}))
""")


def _run(argv):
    out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(argv), json.dumps(HEAVY)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _all_help_argvs():
    argvs = [["--help"]]
    group = LazyGroup()
    for name in group.list_commands(None):
        argvs.append([name, "--help"])
        cmd = group.get_command(None, name)
        for sub in getattr(cmd, "commands", {}) or {}:
            argvs.append([name, sub, "--help"])
    return argvs


def test_every_help_is_light():
    argvs = _all_help_argvs()
    assert len(argvs) >= 3
    # one subprocess checks them all (imports accumulate, so any heavy import is caught)
    probe = textwrap.dedent("""
        import json, sys, io, contextlib
        from ascend_adapt.cli.main import main
        bad = {}
        for argv in json.loads(sys.argv[1]):
            with contextlib.redirect_stdout(io.StringIO()):
                rc = main(argv)
            assert rc == 0, (argv, rc)
            heavy = sorted({m.split('.')[0] for m in sys.modules} & set(json.loads(sys.argv[2])))
            if heavy:
                bad[' '.join(argv)] = heavy
                break
        print(json.dumps(bad))
    """)
    out = subprocess.run([sys.executable, "-c", probe, json.dumps(argvs), json.dumps(HEAVY)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {}


def test_top_level_help_lists_commands():
    res = _run(["--help"])
    assert res["rc"] == 0 and res["heavy"] == []
    assert "inspect" in res["out"]


def test_every_listed_command_has_help_text():
    for name, (module, attr, helptext) in COMMANDS.items():
        assert helptext and module.startswith("ascend_adapt.cli.cmd_"), name


_BLOCK_TORCH = textwrap.dedent("""
    import sys, importlib.abc
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] == 'torch':
                raise ImportError("No module named 'torch' (blocked by test)")
    sys.meta_path.insert(0, Block())
    from ascend_adapt.cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


def test_missing_optional_dependency_names_package_and_rest_keeps_working(tmp_path):
    from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint

    binary = make_tiny_checkpoint(tmp_path / "bin", "llama", "bin")
    st = make_tiny_checkpoint(tmp_path / "st", "llama", "safetensors")
    bad = subprocess.run([sys.executable, "-c", _BLOCK_TORCH, "inspect", str(binary)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "the package 'torch' is not installed" in bad.stderr and "pip install" in bad.stderr
    good = subprocess.run([sys.executable, "-c", _BLOCK_TORCH, "inspect", str(st)],
                          capture_output=True, text=True, timeout=120)
    assert good.returncode == 0, good.stderr
    assert "LlamaForCausalLM" in good.stdout


def test_error_exit_code_and_message(tmp_path):
    res = _run(["inspect", str(tmp_path / "nope")])
    assert res["rc"] == 2
