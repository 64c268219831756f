"""`debug reduce`: shrink a failing ONNX graph to a minimal subgraph that still fails the same way.

Algorithm (as Polygraphy's `debug reduce`, over our own extractor):

1. Fold Constant nodes into initializers; order the nodes topologically; check that the whole
   model fails (its failure keys become the signature to keep).
2. Bisect over contiguous node ranges [lo, hi): binary-search the smallest `hi` such that
   [0, hi) still fails, then the largest `lo` such that [lo, hi) still fails. (Exact when the
   failure is caused by one node or one contiguous region; otherwise it stops at a failing range
   and the linear pass continues.)
3. Linear removal: try dropping each remaining node in turn; keep the removal when the candidate
   still fails the same way (dropped nodes' outputs become graph inputs). Repeat until a pass
   removes nothing.

"Fails the same way": the check fails and, with `fail_regex`, the regex matches its detail;
without it, one of the original failure keys reappears (a check with no keys: any failure).
Every check result is cached per node set and written to the log.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import onnx

from ascend_adapt.errors import AscendAdaptError, ConfigError
from ascend_adapt.fsutil import atomic_output, check_output

from .checks import Check, CheckOutcome, make_check, temp_dir
from .subgraph import GraphIndex

MODES = ("bisect", "linear", "both")


@dataclass
class ReduceStep:
    """One check run: phase, the node set (as ranges), node count, outcome."""

    phase: str
    nodes: str
    count: int
    failed: bool
    same_failure: bool
    detail: str
    seconds: float

    def line(self) -> str:
        verdict = "FAILS (kept)" if self.same_failure else ("fails differently" if self.failed else "passes")
        return f"[{self.phase:7s}] {self.count:4d} nodes {self.nodes}: {verdict} ({self.seconds:.2f} s)"


@dataclass
class ReduceResult:
    """What `reduce_model` returns.

    Attributes:
        model: the reduced model.
        kept: indices (in the folded, topologically sorted node list) of the kept nodes.
        node_labels: "name (OpType)" of each kept node.
        original_nodes: node count of the folded original model.
        signature: the original failure's keys.
        original_detail: the check's detail on the whole model.
        final_detail: the check's detail on the reduced model.
        steps: every check run, in order.
        check: the check's description.
    """

    model: onnx.ModelProto
    kept: list[int]
    node_labels: list[str]
    original_nodes: int
    signature: list[str]
    original_detail: str
    final_detail: str
    steps: list[ReduceStep] = field(default_factory=list)
    check: str = ""

    def summary(self) -> str:
        lines = [
            f"debug reduce: {self.original_nodes} -> {len(self.kept)} nodes with {self.check}, "
            f"{len(self.steps)} checks",
            "kept: " + ", ".join(self.node_labels),
            "failure on the reduced model:",
        ]
        lines += ["  " + ln for ln in (self.final_detail or "").splitlines()]
        return "\n".join(lines)


def _ranges(ks: Sequence[int]) -> str:
    if not ks:
        return "[]"
    parts, start, prev = [], ks[0], ks[0]
    for k in list(ks[1:]) + [None]:
        if k is not None and k == prev + 1:
            prev = k
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        if k is not None:
            start = prev = k
    return "[" + ",".join(parts) + "]"


class _Reducer:
    def __init__(self, index: GraphIndex, check: Check, fail_regex: str | None,
                 on_step: Callable[[ReduceStep], None] | None, workdir: Path):
        self.index = index
        self.check = check
        self.regex = re.compile(fail_regex) if fail_regex else None
        self.on_step = on_step
        self.workdir = workdir
        self.cache: dict[frozenset, tuple[CheckOutcome, bool]] = {}
        self.signature: frozenset = frozenset()
        self.steps: list[ReduceStep] = []
        self._n = 0

    def _same(self, out: CheckOutcome) -> bool:
        if not out.failed:
            return False
        if self.regex is not None:
            return bool(self.regex.search(out.detail))
        return not self.signature or bool(out.keys & self.signature)

    def run(self, keep: Sequence[int], phase: str) -> tuple[CheckOutcome, bool]:
        key = frozenset(keep)
        if key in self.cache:
            return self.cache[key]
        ks = sorted(key)
        model = self.index.extract(ks)
        path = None
        if self.check.needs_file:
            self._n += 1
            path = self.workdir / f"candidate_{self._n:04d}.onnx"
            onnx.save(model, str(path))
        t0 = time.perf_counter()
        try:
            out = self.check(model, path)
        except AscendAdaptError:
            raise
        except Exception as exc:  # noqa: BLE001 - a crashing check on a candidate is a result
            if phase == "start":
                raise
            out = CheckOutcome(True, frozenset({f"crash:{type(exc).__name__}"}), f"{type(exc).__name__}: {exc}")
        same = self._same(out) if phase != "start" else out.failed and (
            self.regex is None or bool(self.regex.search(out.detail)))
        step = ReduceStep(phase, _ranges(ks), len(ks), out.failed, same,
                          out.detail, time.perf_counter() - t0)
        self.steps.append(step)
        if self.on_step:
            self.on_step(step)
        self.cache[key] = (out, same)
        return out, same

    def fails(self, keep: Sequence[int], phase: str) -> bool:
        return bool(keep) and self.run(keep, phase)[1]


def reduce_model(model: onnx.ModelProto | str | os.PathLike, check: Check | str, *,
                 fail_regex: str | None = None, mode: str = "both",
                 on_step: Callable[[ReduceStep], None] | None = None,
                 max_linear_passes: int = 3, **check_options) -> ReduceResult:
    """Reduce `model` to a minimal subgraph that fails `check` the same way.

    Args:
        model: a ModelProto or a path to an .onnx file (external data is loaded).
        check: a Check, a built-in name ("sim-rejects", "atc-fails", "accuracy") or a command
            with `{model}`.
        fail_regex: a candidate fails only if this regex matches the check's detail / output.
        mode: "bisect", "linear" or "both" (bisect, then linear).
        on_step: called after every check run (for progress output).
        max_linear_passes: stop the linear phase after this many passes.
        **check_options: options of the built-in check (target=, atol=, rtol=, ...).

    Returns:
        ReduceResult.

    Raises:
        ConfigError: bad mode, or the original model does not fail the check.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown reduce mode '{mode}'", f"use one of {', '.join(MODES)}")
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model))
    if isinstance(check, str):
        check = make_check(check, fail_regex=fail_regex, **check_options)
    index = GraphIndex(model)
    n = len(index)
    if n == 0:
        raise ConfigError("the model has no nodes to reduce")
    check.prepare(index.model, index)
    with temp_dir() as tmp:
        r = _Reducer(index, check, fail_regex, on_step, Path(tmp))
        full = list(range(n))
        out, failed = r.run(full, "start")
        if not failed:
            why = f" (fail regex {fail_regex!r} did not match)" if fail_regex and out.failed else ""
            raise ConfigError(f"the original model does not fail the check {check.describe()}{why}",
                              "nothing to reduce: check the --check / --fail-regex options and the target")
        r.signature = out.keys
        original_detail = out.detail
        keep = full
        if mode in ("bisect", "both") and n > 1:
            lo, hi = 0, n
            a, b = lo + 1, hi
            while a < b:
                m = (a + b) // 2
                if r.fails(list(range(lo, m)), "bisect"):
                    b = m
                else:
                    a = m + 1
            hi = b
            a, b = lo, hi - 1
            while a < b:
                m = (a + b + 1) // 2
                if r.fails(list(range(m, hi)), "bisect"):
                    a = m
                else:
                    b = m - 1
            lo = a
            keep = list(range(lo, hi))
        if mode in ("linear", "both"):
            for _ in range(max_linear_passes):
                changed = False
                for i in list(keep):
                    if len(keep) == 1:
                        break
                    cand = [k for k in keep if k != i]
                    if r.fails(cand, "linear"):
                        keep = cand
                        changed = True
                if not changed:
                    break
        final, _ = r.run(keep, "final")
    reduced = index.extract(keep, name=f"{index.model.graph.name or 'graph'}_reduced")
    return ReduceResult(reduced, keep, [index.label(i) for i in keep], n, sorted(r.signature),
                        original_detail, final.detail, r.steps, check.describe())


def write_reduced(result: ReduceResult, out_path: str | os.PathLike, *, force: bool = False,
                  command: str | None = None, inputs=()) -> tuple[Path, Path]:
    """Write the reduced model and its log (`<out>.log.json` next to it). Returns both paths.

    `inputs`: the paths the command read (the original model); neither output may be one of them.
    """
    out = check_output(out_path, force, inputs=inputs)
    log = out.with_name(out.stem + ".reduce.log")
    check_output(log, force, inputs=inputs)
    with atomic_output(out, force=force, inputs=inputs) as tmp:
        onnx.save(result.model, str(tmp))
    with atomic_output(log, force=force, inputs=inputs) as tmp:
        lines = ["# ascend-adapt debug reduce", f"# command: {command}" if command else "",
                 f"# check: {result.check}", f"# original nodes: {result.original_nodes}",
                 f"# failure signature: {json.dumps(result.signature)}"]
        lines += [s.line() for s in result.steps]
        lines += ["", result.summary()]
        tmp.write_text("\n".join(ln for ln in lines if ln is not None) + "\n", encoding="utf-8")
    return out, log
