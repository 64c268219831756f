"""fp32 islands for ATC: write `--keep_dtype` and `--modify_mixlist` files.

- `--keep_dtype FILE`: one entry per line, a node name or `OpType::<Type>`; those ops keep their
  original precision (ignored under must_keep_origin_dtype / origin). Prefix from
  hicann/ge compiler/api/aclgrph/attr_options/utils.cc (`CFG_PRE_OPTYPE = "OpType::"`).
- `--modify_mixlist FILE` (with allow_mix_precision / mixed_float16): JSON
  ``{"black-list": {"to-add": [...]}}`` moves op types to the black list (kept in fp32); the
  format, with "to-remove" and "white-list" / "gray-list" sections, is the one in Ascend's
  ops_info.json examples (TF adapter docs, ModelZoo m2m_100 `--modify_mixlist=../ops_info.json`).

Both name op types in Ascend IR after ATC's parse ("SoftmaxV2", "RealDiv", "BatchMatMulV2"), not
ONNX names; with `map_onnx_types=True` (default) ONNX names are mapped through the ATC op table's
`ge_op_type` column where it names a single IR type (ops that expand to a subgraph,
"PartitionedCall", keep their ONNX name, which is usually also the IR name). The mapping for
`--keep_dtype` types is an assumption (M): the docs show only the prefix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from ascend_adapt.fsutil import atomic_output

KEEP_PREFIX = "OpType::"


def _ge_map() -> dict[str, str]:
    from ascend_adapt.targets import DATA_DIR
    from ascend_adapt.targets.optable import ATC_TABLE, read_table

    return {op: row.ge_op_type for (dom, op), row in read_table(DATA_DIR / ATC_TABLE).items()
            if dom == "ai.onnx" and row.ge_op_type and row.ge_op_type != "PartitionedCall"}


def ascend_op_types(op_types: Iterable[str]) -> list[str]:
    """Map ONNX op types to Ascend IR types ("Softmax" -> "SoftmaxV2"); unknown names pass through."""
    m = _ge_map()
    return [m.get(t, t) for t in op_types]


def _is_onnx_op(name: str) -> bool:
    import onnx.defs

    return onnx.defs.has(name)


def write_keep_dtype(path: str | os.PathLike, node_names_or_optypes: Iterable[str], *,
                     map_onnx_types: bool = True, force: bool = True) -> list[str]:
    """Write an ATC `--keep_dtype` file.

    Args:
        path: output file.
        node_names_or_optypes: node names, or op types written as "OpType::Softmax" or as a bare
            ONNX op type name ("Softmax"; any name onnx.defs knows is taken as a type).
        map_onnx_types: map ONNX type names to Ascend IR names.
        force: replace an existing file.

    Returns:
        The lines written.
    """
    lines: list[str] = []
    for entry in node_names_or_optypes:
        e = str(entry).strip()
        if not e:
            continue
        if e.startswith(KEEP_PREFIX) or _is_onnx_op(e):
            t = e[len(KEEP_PREFIX):] if e.startswith(KEEP_PREFIX) else e
            if map_onnx_types:
                t = ascend_op_types([t])[0]
            e = KEEP_PREFIX + t
        if e not in lines:
            lines.append(e)
    with atomic_output(path, force=force) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return lines


def write_modify_mixlist(path: str | os.PathLike, black_list_optypes: Iterable[str], *,
                         map_onnx_types: bool = True, force: bool = True) -> dict:
    """Write an ATC `--modify_mixlist` JSON that adds op types to the mixed-precision black list.

    Args:
        path: output file.
        black_list_optypes: op types to keep in fp32 (ONNX or Ascend IR names).
        map_onnx_types: map ONNX type names to Ascend IR names.
        force: replace an existing file.

    Returns:
        The JSON object written: {"black-list": {"to-add": [...]}}.
    """
    types = [str(t).strip() for t in black_list_optypes if str(t).strip()]
    if map_onnx_types:
        types = ascend_op_types(types)
    doc = {"black-list": {"to-add": list(dict.fromkeys(types))}}
    with atomic_output(path, force=force) as tmp:
        Path(tmp).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return doc
