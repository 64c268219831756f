"""What "the model fails" means for `debug reduce`: built-in checks and user commands.

A check is called with a candidate model (a ModelProto, and a directory to write it to when it
needs a file) and answers a `CheckOutcome`: failed or not, a set of *failure keys* that name the
failure independently of node names ("unsupported:GroupNormalization: no atc ONNX parser …"),
and a detail text. The reducer keeps a candidate only when it fails *the same way* as the
original model: one of the original keys reappears, or `--fail-regex` matches the detail.

Built-ins (`CHECKS`):
    sim-rejects   the simulator's acceptance check refuses the model (op table / opset / attribute
                  / dtype restrictions of the target); falls back to the target's op table when
                  the simulator's acceptance module is not installed.
    atc-fails     the real ATC (`run_atc`) fails; needs CANN's `atc` (else a clear error).
    accuracy      the simulator under a precision mode (default force_fp16) differs from
                  onnxruntime fp32 by more than atol + rtol·|ref|, fed with the original model's
                  fp32 values of the subgraph's inputs.
A user command: `CommandCheck("my_tool {model}", fail_regex)`.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx

from ascend_adapt.errors import AscendAdaptError, ConfigError
from ascend_adapt.fsutil import run_child, scratch_dir
from ascend_adapt.registry import Registry


@dataclass(frozen=True)
class CheckOutcome:
    """The answer of a check on one candidate.

    Attributes:
        failed: the candidate fails the check.
        keys: names of the failures, free of node names (used to match the original failure).
        detail: human-readable text (the regex of --fail-regex is searched in it).
    """

    failed: bool
    keys: frozenset = field(default_factory=frozenset)
    detail: str = ""


class Check:
    """Base class: `name`, `needs_file`, `prepare(model)` once, then `__call__` per candidate."""

    name = "check"
    needs_file = False

    def prepare(self, model: onnx.ModelProto, index: Any = None) -> None:  # noqa: D401 - hook
        """Called once with the full (folded) model before any candidate."""

    def __call__(self, model: onnx.ModelProto, path: Path | None) -> CheckOutcome:  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


CHECKS: Registry[type] = Registry("reduce check")


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    return {(o.domain or "ai.onnx"): o.version for o in model.opset_import}


def _attr_values(node: onnx.NodeProto) -> dict[str, Any]:
    out = {}
    for a in node.attribute:
        if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            continue
        v = onnx.helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _iter_all_nodes(g: onnx.GraphProto):
    for n in g.node:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _iter_all_nodes(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sg in a.graphs:
                    yield from _iter_all_nodes(sg)


@CHECKS.register("sim-rejects")
class SimRejects(Check):
    """The simulator / analyzer refuses the model on `target`.

    Uses the simulator's acceptance check (`ascend_adapt.sim.acceptance.check_model`, without
    the load-time memory check: a too-big model cannot be reduced to a small failing one) or,
    where the simulator is not installed, the target's op table directly (`Target.op_support`
    for every node, with the model's opset, attributes, input dtypes and ranks).
    `self.engine` says which one ran. Failure keys are "<code>:<op type>" (E19010:Gelu).
    """

    name = "sim-rejects"

    def __init__(self, target: str = "Ascend310P3", cann_version: str | None = None, **_: Any):
        from ascend_adapt.targets import load_target

        self.target_name = target
        self.target = load_target(target)
        self.cann_version = cann_version
        self.engine = "op-table"
        self._sim = None
        try:  # the simulator's acceptance check, when installed
            from ascend_adapt.sim.acceptance import check_model  # type: ignore[import-not-found]

            self._sim = check_model
            self.engine = "sim.acceptance"
        except ImportError:
            pass

    def describe(self) -> str:
        return f"sim-rejects (target {self.target.name}, {self.engine})"

    def _from_sim(self, model: onnx.ModelProto) -> CheckOutcome:
        from ascend_adapt.sim import SimSettings

        settings = SimSettings(target=self.target.name, cann_version=self.cann_version)
        report = self._sim(model, self.target, settings, memory=False)
        keys, lines = set(), []
        for p in report.problems:
            # node labels carry node indices that change between candidates: key on code + op type
            keys.add(f"{p.code}:{p.op_type or p.kind}")
            lines.append(str(p))
        return CheckOutcome(bool(report.problems), frozenset(keys), "\n".join(lines) or "accepted")

    def __call__(self, model: onnx.ModelProto, path: Path | None) -> CheckOutcome:
        if self._sim is not None:
            return self._from_sim(model)
        return self._op_table(model)

    def _op_table(self, model: onnx.ModelProto) -> CheckOutcome:
        from .subgraph import GraphIndex

        opsets = _opsets(model)
        idx = GraphIndex(model, fold=False)
        keys, lines = set(), []
        for n in _iter_all_nodes(model.graph):
            dom = n.domain or "ai.onnx"
            opset = opsets.get(dom, opsets.get("ai.onnx", 0))
            dtypes, ranks = [], []
            for i in n.input:
                t = idx._types.get(i) if i else None
                if t is None and i in idx.initializers:
                    init = idx.initializers[i]
                    dtypes.append(init.data_type)
                    ranks.append(len(init.dims))
                    continue
                tt = t.tensor_type if t is not None else None
                dtypes.append(tt.elem_type if tt is not None else None)
                ranks.append(len(tt.shape.dim) if tt is not None and tt.HasField("shape") else None)
            v = self.target.op_support(n.op_type, opset, _attr_values(n), dtypes, domain=dom,
                                       cann_version=self.cann_version, num_inputs=len(n.input),
                                       num_outputs=len(n.output), input_ranks=ranks)
            if not v.supported:
                keys.add(f"unsupported:{n.op_type}:{v.reason}")
                lines.append(f"{n.name or '?'} ({n.op_type}): {v.reason}")
        return CheckOutcome(bool(keys), frozenset(keys), "\n".join(lines) or "accepted")


@CHECKS.register("atc-fails")
class AtcFails(Check):
    """The real ATC fails to build the candidate (E-codes become the failure keys)."""

    name = "atc-fails"
    needs_file = True

    def __init__(self, target: str = "Ascend310P3", timeout_s: float | None = 1800, **_: Any):
        from ascend_adapt.om_convert.atc import find_atc

        self.atc = find_atc()
        if self.atc is None:
            raise AscendAdaptError(
                "the check 'atc-fails' needs CANN's atc, which was not found (PATH, $ASCEND_TOOLKIT_HOME, "
                "/usr/local/Ascend/ascend-toolkit/latest)",
                "run this on a host with CANN (source set_env.sh), or use --check sim-rejects here")
        from ascend_adapt.targets import load_target

        self.soc = load_target(target).soc_version
        self.timeout_s = timeout_s

    def describe(self) -> str:
        return f"atc-fails (soc {self.soc}, {self.atc})"

    def __call__(self, model: onnx.ModelProto, path: Path | None) -> CheckOutcome:
        from ascend_adapt.om_convert.atc import AtcError, AtcOptions, run_atc

        assert path is not None
        opts = AtcOptions(model=str(path), output=str(path.with_suffix("")), soc_version=self.soc, framework=5)
        try:
            run_atc(opts, log_path=str(path.with_suffix(".atc.log")), precheck=False, atc=self.atc,
                    timeout_s=self.timeout_s, script=False)
        except AtcError as exc:
            keys = {f"{d.code}:{d.op_type or ''}" for d in exc.diagnostics if d.level == "error"}
            return CheckOutcome(True, frozenset(keys or {"atc-failed"}), str(exc))
        return CheckOutcome(False, frozenset(), "ATC run success")


def _ort_session(model: onnx.ModelProto):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def all_tensor_values(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run `model` in onnxruntime fp32 and return every tensor (inputs, intermediates, outputs)."""
    from ascend_adapt.sim.graph import expose_all_outputs

    m = onnx.ModelProto()
    m.CopyFrom(model)
    expose_all_outputs(m)
    sess = _ort_session(m)
    names = [o.name for o in sess.get_outputs()]
    vals = dict(zip(names, sess.run(names, {k: v for k, v in feeds.items()
                                             if k in {i.name for i in sess.get_inputs()}})))
    vals.update(feeds)
    return vals


def mismatch(ref: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> tuple[bool, float]:
    """(outside atol + rtol·|ref| or non-finite where ref is finite, max abs error)."""
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if ref.shape != got.shape:
        return True, float("inf")
    bad_nf = np.isfinite(ref) & ~np.isfinite(got)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(got - ref)
    finite = np.isfinite(err)
    max_err = float(err[finite].max()) if finite.any() else 0.0
    if bad_nf.any():
        return True, float("inf")
    ok = err[finite] <= atol + rtol * np.abs(ref[finite])
    return (not bool(ok.all())), max_err


@CHECKS.register("accuracy")
class Accuracy(Check):
    """SimRunner (precision_mode, default force_fp16) vs OrtRunner fp32 beyond atol + rtol·|ref|.

    The subgraph's inputs are fed with the values the *original* model computed for them in fp32
    (one run on `feeds`, or seeded random inputs), so every candidate sees realistic data.
    """

    name = "accuracy"

    def __init__(self, target: str = "Ascend310P3", atol: float = 1e-3, rtol: float = 1e-3,
                 precision_mode: str = "force_fp16", keep_dtype=(), feeds: Mapping[str, np.ndarray] | None = None,
                 seed: int = 0, **_: Any):
        self.target = target
        self.atol, self.rtol = float(atol), float(rtol)
        self.precision_mode = precision_mode
        self.keep_dtype = tuple(keep_dtype)
        self.feeds = dict(feeds) if feeds else None
        self.seed = seed
        self.values: dict[str, np.ndarray] = {}

    def describe(self) -> str:
        return (f"accuracy (simulator {self.precision_mode} on {self.target} vs onnxruntime fp32, "
                f"atol {self.atol:g}, rtol {self.rtol:g})")

    def prepare(self, model: onnx.ModelProto, index: Any = None) -> None:
        from .subgraph import random_feeds

        inits = {t.name for t in model.graph.initializer}
        feeds = self.feeds or random_feeds({i.name: i for i in model.graph.input if i.name not in inits}, self.seed)
        self.values = all_tensor_values(model, feeds)

    def __call__(self, model: onnx.ModelProto, path: Path | None) -> CheckOutcome:
        from ascend_adapt.runtime.runners import OrtRunner, SimRunner

        inits = {t.name for t in model.graph.initializer}
        names = [i.name for i in model.graph.input if i.name not in inits]
        missing = [n for n in names if n not in self.values]
        if missing:
            raise ConfigError(f"accuracy check: no reference value for subgraph input '{missing[0]}'",
                              "call prepare() with the full model first")
        feeds = {n: self.values[n] for n in names}
        with OrtRunner(model, optimize=False) as r:
            ref = r.infer(feeds, check_inputs=False)
        with SimRunner(model, target=self.target, precision_mode=self.precision_mode,
                       keep_dtype=self.keep_dtype or None, check=False, cost=False) as r:
            got = r.infer(feeds, check_inputs=False)
        keys, lines = set(), []
        for name, r in ref.items():
            if not np.issubdtype(np.asarray(r).dtype, np.floating):
                continue
            bad, err = mismatch(r, got[name], self.atol, self.rtol)
            lines.append(f"{name}: max abs err {err:.3g}{' FAILED' if bad else ''}")
            if bad:
                keys.add("accuracy")
        return CheckOutcome(bool(keys), frozenset(keys), "\n".join(lines))


class CommandCheck(Check):
    """A user command run on the candidate file: `{model}` is replaced by its path.

    Without `fail_regex` the candidate fails when the command exits non-zero; with it, when the
    regex matches the command's output (stdout + stderr), whatever the exit code.
    """

    name = "command"
    needs_file = True

    def __init__(self, command: str, fail_regex: str | None = None, timeout_s: float | None = 600):
        if "{model}" not in command:
            raise ConfigError(f"--check command '{command}' has no {{model}} placeholder",
                              'write it like --check "python my_check.py {model}"')
        self.command = command
        self.regex = re.compile(fail_regex) if fail_regex else None
        self.timeout_s = timeout_s

    def describe(self) -> str:
        return f"command `{self.command}`" + (f" (fail regex {self.regex.pattern!r})" if self.regex else "")

    def __call__(self, model: onnx.ModelProto, path: Path | None) -> CheckOutcome:
        assert path is not None
        cmd = self.command.replace("{model}", shlex.quote(str(path)))
        try:
            p = run_child(cmd, shell=True, text=True, timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            return CheckOutcome(self.regex is None, frozenset({"timeout"}), f"timed out after {self.timeout_s} s")
        text = (p.stdout or "") + (p.stderr or "")
        failed = bool(self.regex.search(text)) if self.regex else p.returncode != 0
        tail = "\n".join(text.strip().splitlines()[-5:])
        return CheckOutcome(failed, frozenset({f"exit:{p.returncode}"} if failed else ()),
                            f"exit {p.returncode}\n{tail}")


def make_check(spec: str, *, fail_regex: str | None = None, **options: Any) -> Check:
    """A built-in check by name, or a user command when `spec` contains `{model}`.

    Raises:
        ConfigError: neither a known check name nor a command with `{model}`.
    """
    if "{model}" in spec:
        return CommandCheck(spec, fail_regex, options.get("timeout_s", 600))
    if spec in CHECKS:
        return CHECKS.get(spec)(**options)
    raise ConfigError(f"unknown check '{spec}'",
                      f"use one of {', '.join(CHECKS.names())}, or a command with {{model}}, "
                      f'e.g. --check "python my_check.py {{model}}"')


def temp_dir(prefix: str = "ascend-adapt-reduce-"):
    """A scratch directory (context manager yielding its Path), removed on exit and on a signal."""
    return scratch_dir(prefix, os.environ.get("ASCEND_ADAPT_TMP"))
