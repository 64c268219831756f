#!/usr/bin/env python3
"""Regenerate `om_convert/atc/data/ge_error_codes.json` from the GE error-code sheet.

The sheet (`../shared/reference/ge_error_codes.txt`) holds one section per code, written as

    ### E10035-Invalid_Argument_Tensor_Dynamic_Shape
    The following is error format. The meanings of the placeholders %s in sequence are: a, b.
    ```text
    --dynamic_batch_size, ... has %s profiles, which is less than the minimum %s.
    ```
    1. optional suggestions, one per line

This script keeps only derived facts: code, title, level, module, message template, the named
placeholders and the suggestions the sheet gives. It uses the standard library only.

Usage:
    python tools/gen_ge_error_codes.py [--source PATH] [--output PATH] [--check]

`--check` exits with status 1 when the packaged JSON differs from what the sheet gives (for CI).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "reference" / "ge_error_codes.txt"
DEFAULT_OUTPUT = REPO / "om_convert" / "atc" / "data" / "ge_error_codes.json"

_HEADER = re.compile(r"^###\s+(?P<code>[EWI][0-9A-Z]\d{4})-(?P<title>\S+)\s*$")
_PLACEHOLDERS = re.compile(r"placeholders? %s (?:in sequence )?(?:are|indicates?)\s*:?\s*(?P<names>.+?)\.?$")
_PLACEHOLDER_ONE = re.compile(r"The placeholder %s indicates the (?P<names>.+?)\.?$")
_LEVELS = {"E": "error", "W": "warning", "I": "info"}
_MODULES = {
    "1": "GE", "2": "FE", "3": "AI CPU", "4": "TE fusion", "7": "vector op plugin", "8": "vector op",
    "B": "TBE pass", "C": "AutoTune", "E": "Runtime", "G": "AOE", "H": "ACL", "I": "HCCL",
    "K": "profiling", "L": "driver", "N": "DVPP", "O": "AMCT", "P": "dump", "Z": "common operator",
}


def _unescape(text: str) -> str:
    """Drop the Markdown backslash escapes the sheet uses (`\\_`, `\\(`)."""
    return re.sub(r"\\([_()\[\]*])", r"\1", text).strip()


def _placeholders(line: str) -> list[str]:
    m = _PLACEHOLDER_ONE.search(line) or _PLACEHOLDERS.search(line)
    if not m:
        return []
    names = _unescape(m.group("names"))
    # "error stage (or API name), parameter value, parameter name" -> keep the parenthesis whole
    parts, depth, cur = [], 0, ""
    for ch in names:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return [re.sub(r"^(?:the|an?)\s+", "", p) for p in parts]


def parse_sheet(text: str) -> dict[str, dict]:
    """Parse the sheet into {code: facts}.

    Args:
        text: the whole content of ge_error_codes.txt.

    Returns:
        A dict keyed by code (sorted), each value with the keys `title`, `level`, `module`,
        `template`, `placeholders` (list of names, possibly empty) and `fixes` (list of strings).
    """
    codes: dict[str, dict] = {}
    current: dict | None = None
    in_block = False
    block: list[str] = []
    for raw in text.splitlines():
        line = raw.rstrip()
        header = _HEADER.match(line)
        if line.startswith("### "):
            current = None
            in_block = False
            if header:
                code = header.group("code")
                current = {
                    "title": header.group("title"),
                    "level": _LEVELS[code[0]],
                    "module": _MODULES.get(code[1], "unknown"),
                    "template": "",
                    "placeholders": [],
                    "fixes": [],
                }
                codes[code] = current
            continue
        if current is None:
            continue
        if line.startswith("```"):
            if in_block:
                current["template"] = " ".join(s.strip() for s in block if s.strip())
                block = []
            in_block = not in_block
            continue
        if in_block:
            block.append(line)
            continue
        if not line.strip():
            continue
        if not current["template"] and "placeholder" in line:
            current["placeholders"] = _placeholders(line)
            continue
        if current["template"]:
            fix = re.sub(r"^\s*\d+\.\s*", "", _unescape(line))
            if fix:
                current["fixes"].append(fix)
    return dict(sorted(codes.items()))


def render(codes: dict[str, dict], source_name: str) -> str:
    doc = {
        "source": source_name,
        "note": "Derived facts (code, title, message template, suggestions) from the GE error-code "
        "sheet; regenerate with tools/gen_ge_error_codes.py.",
        "codes": codes,
    }
    return json.dumps(doc, indent=1, ensure_ascii=False, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    if not args.source.is_file():
        print(f"error: {args.source} not found\n  fix: pass --source PATH/ge_error_codes.txt", file=sys.stderr)
        return 2
    text = render(parse_sheet(args.source.read_text(encoding="utf-8")), args.source.name)
    if args.check:
        same = args.output.is_file() and args.output.read_text(encoding="utf-8") == text
        print(f"{args.output}: {'up to date' if same else 'OUT OF DATE'}")
        return 0 if same else 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(args.output.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(args.output)
    print(f"wrote {args.output} ({text.count(chr(10))} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
