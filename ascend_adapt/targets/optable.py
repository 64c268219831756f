"""The shared ATC ONNX op table: which ONNX op types ATC's parser registers, at which opsets.

The table is a derived data file, `data/atc_onnx_ops.csv`, built from the project's reference sheet
(`../shared/reference/atc_onnx_op_support.csv`, which merges msit analyze's `onnx.yaml` map and the
`REGISTER_CUSTOM_OP` lines of the open hicann/ops-nn and ops-math ONNX plugins) plus the `npu::1::*`
keys of `../shared/reference/msit_onnx_map.yaml`. Rebuild it with::

    python -m ascend_adapt.targets.optable ../shared/reference/atc_onnx_op_support.csv \
        --yaml ../shared/reference/msit_onnx_map.yaml -o ascend_adapt/targets/data/atc_onnx_ops.csv

Columns of the derived file: ``op_type, domain, opsets, ge_op_type, standard, opsets_msit_yaml,
opsets_hicann_plugins``. ``opsets`` is the union of both sources ("registered by either"), written
compactly ("8-18", "1,6,8-18"). Lines starting with ``#`` are comments.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..errors import ConfigError

DATA_DIR = Path(__file__).resolve().parent / "data"
ATC_TABLE = "atc_onnx_ops.csv"
COLUMNS = (
    "op_type", "domain", "opsets", "ge_op_type", "standard", "opsets_msit_yaml", "opsets_hicann_plugins",
)


@dataclass(frozen=True)
class OpRow:
    """One row of an op table file: an op type a parser registers, and at which opsets.

    Attributes:
        op_type: ONNX op type, e.g. "MatMul".
        domain: "ai.onnx" for the default domain, or a custom one ("npu").
        opsets: the opset versions a parser is registered for.
        ge_op_type: the Ascend IR type it maps to ("BatchMatMulV2"), "PartitionedCall" when the
            parser expands it to a subgraph, "" when unknown.
        standard: True for ops of the ONNX standard, False for vendor custom ops.
    """

    op_type: str
    domain: str
    opsets: frozenset[int]
    ge_op_type: str
    standard: bool


def parse_opsets(text: str) -> frozenset[int]:
    """Parse "8-18", "1,6,8-18" or "" into a set of opset versions."""
    out: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi:
                raise ValueError(f"bad opset range '{part}'")
            out.update(range(lo, hi + 1))
        elif part.isdigit():
            out.add(int(part))
        else:
            raise ValueError(f"bad opset list '{text}'")
    return frozenset(out)


def format_opsets(opsets: Iterable[int]) -> str:
    """Write a set of opsets compactly: {1, 6, 8, 9, 10} -> "1,6,8-10"."""
    vals = sorted(set(opsets))
    parts: list[str] = []
    i = 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        parts.append(str(vals[i]) if i == j else f"{vals[i]}-{vals[j]}")
        i = j + 1
    return ",".join(parts)


def read_table(path: str | Path) -> dict[tuple[str, str], OpRow]:
    """Read an op table file (the derived CSV format) into {(domain, op_type): OpRow}.

    Raises:
        ConfigError: the file is missing, has other columns, or has a bad opset field.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read op table '{p}': {exc}", "reinstall ascend-adapt or rebuild the table") from exc
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    reader = csv.DictReader(io.StringIO("\n".join(lines)))
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise ConfigError(
            f"op table '{p}' has columns {reader.fieldnames}, expected {list(COLUMNS)}",
            "rebuild it with `python -m ascend_adapt.targets.optable`",
        )
    table: dict[tuple[str, str], OpRow] = {}
    for lineno, rec in enumerate(reader, start=2):
        try:
            opsets = parse_opsets(rec["opsets"])
        except ValueError as exc:
            raise ConfigError(f"{p}: row {lineno} ({rec['op_type']}): {exc}", "fix the opsets field") from None
        row = OpRow(rec["op_type"], rec["domain"] or "ai.onnx", opsets, rec["ge_op_type"], rec["standard"] == "Y")
        table[(row.domain, row.op_type)] = row
    return table


def build_rows(reference_csv: str | Path, msit_yaml: str | Path | None = None) -> list[dict[str, str]]:
    """Derive the op table rows from the reference sheet's CSV (and msit's yaml for `npu::` keys).

    Args:
        reference_csv: `atc_onnx_op_support.csv` with columns onnx_op, standard_onnx_op,
            opsets_msit_yaml, opsets_hicann_plugins, ge_op_type_msit_yaml.
        msit_yaml: optional `msit_onnx_map.yaml`; its `npu::<opset>::<Op>: <GEType>` keys add rows
            for the "npu" domain (ops exported by torch_npu).

    Returns:
        Rows as dicts keyed by COLUMNS, sorted by (domain, op_type), duplicates merged.
    """
    merged: dict[tuple[str, str], dict[str, str]] = {}
    with open(reference_csv, newline="", encoding="utf-8") as fh:
        for rec in csv.DictReader(fh):
            op = rec["onnx_op"].strip()
            a, b = rec["opsets_msit_yaml"].strip(), rec["opsets_hicann_plugins"].strip()
            union = parse_opsets(a) | parse_opsets(b)
            key = ("ai.onnx", op)
            prev = merged.get(key)
            if prev is not None:
                union |= parse_opsets(prev["opsets"])
            merged[key] = {
                "op_type": op, "domain": "ai.onnx", "opsets": format_opsets(union),
                "ge_op_type": rec["ge_op_type_msit_yaml"].strip() or (prev or {}).get("ge_op_type", ""),
                "standard": "Y" if rec["standard_onnx_op"].strip().startswith("Y") else "N",
                "opsets_msit_yaml": a, "opsets_hicann_plugins": b,
            }
    if msit_yaml is not None:
        pat = re.compile(r"^npu::(\d+)::(\w+)\s*:\s*(\S+)\s*$")
        for line in Path(msit_yaml).read_text(encoding="utf-8").splitlines():
            m = pat.match(line)
            if not m:
                continue
            opset, op, ge = int(m.group(1)), m.group(2), m.group(3)
            key = ("npu", op)
            prev = merged.get(key)
            sets = {opset} | (parse_opsets(prev["opsets"]) if prev else set())
            merged[key] = {
                "op_type": op, "domain": "npu", "opsets": format_opsets(sets), "ge_op_type": ge,
                "standard": "N", "opsets_msit_yaml": format_opsets(sets), "opsets_hicann_plugins": "",
            }
    return [merged[k] for k in sorted(merged)]


HEADER = """\
# ATC ONNX op table (derived data file; do not edit by hand).
# Built by `python -m ascend_adapt.targets.optable` from the reference sheet
# ../shared/reference/atc_onnx_op_support.csv (msit analyze map_conf/onnx.yaml merged with the
# REGISTER_CUSTOM_OP lines of hicann/ops-nn and hicann/ops-math *_onnx_plugin.cpp) and the npu::1::*
# keys of ../shared/reference/msit_onnx_map.yaml. `opsets` = union of both sources.
# "Not listed" means "no parser found in these sources", not "proven unsupported": CANN also ships
# partly closed op packages (ops-cv, ops-transformer, opp). Confidence: V (read in source code).
"""


def write_table(rows: list[dict[str, str]], out: str | Path) -> None:
    """Write derived rows with the provenance header."""
    buf = io.StringIO()
    buf.write(HEADER)
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    Path(out).write_text(buf.getvalue(), encoding="utf-8")


def _main(argv: list[str] | None = None) -> int:  # pragma: no cover - maintenance entry point
    import argparse

    ap = argparse.ArgumentParser(description="Rebuild the derived ATC ONNX op table.")
    ap.add_argument("reference_csv")
    ap.add_argument("--yaml", default=None, help="msit_onnx_map.yaml for npu:: keys")
    ap.add_argument("-o", "--output", default=str(DATA_DIR / ATC_TABLE))
    args = ap.parse_args(argv)
    rows = build_rows(args.reference_csv, args.yaml)
    write_table(rows, args.output)
    print(f"wrote {len(rows)} rows to {args.output}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
