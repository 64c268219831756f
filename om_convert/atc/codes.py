"""GE / ATC error codes: the packaged table and message formatting in ATC's own wording.

The table `data/ge_error_codes.json` is generated from `../shared/reference/ge_error_codes.txt`
by `tools/gen_ge_error_codes.py`; it holds, per code, the title, the message template (with
`%s` placeholders, filled in sequence as ATC does) and the suggestions the sheet gives.
The operator-support codes that ATC prints from the public operator library (EZxxxx, E19010)
are not in that sheet; their templates come from the reference sheet §3 and live in `_EXTRA`.
"""

from __future__ import annotations

import functools
import json
import re
from importlib import resources

CODE_PATTERN = r"[EWI][0-9A-Z]\d{4}"
"""Six characters: level (E/W/I), module (digit or letter), four digits."""

_LEVELS = {"E": "error", "W": "warning", "I": "info"}

# Codes ATC prints that the GE sheet does not cover (reference sheet §3, msit's ATC parser).
_EXTRA: dict[str, dict] = {
    "E19010": {
        "title": "Unsupported_Operator",
        "template": "No parser is registered for Op [%s, optype [%s]].",
        "fixes": [],
    },
    "EZ9010": {
        "title": "Unsupported_Operator",
        "template": "No parser is registered for Op [%s, optype [%s]].",
        "fixes": [],
    },
    "EZ0501": {
        "title": "Unsupported_Operator",
        "template": "IR for Op [%s, optype [%s]], is not registered.",
        "fixes": [],
    },
    "EZ3002": {
        "title": "Unsupported_Operator",
        "template": "Optype [%s] of Ops kernel [%s] is unsupported.",
        "fixes": [],
    },
    "EZ3003": {
        "title": "Unsupported_Operator",
        "template": "No supported Ops kernel and engine are found for [%s], optype [%s].",
        "fixes": [],
    },
    "EZ9999": {
        "title": "Inner_Error",
        "template": "Unknown error occurred. Please check the log.",
        "fixes": [],
    },
}


@functools.lru_cache(maxsize=1)
def ge_error_table() -> dict[str, dict]:
    """Return {code: facts} for every known code (the GE sheet plus the operator codes).

    Each value has at least `title`, `level`, `template` and `fixes` (the sheet's suggestions).
    """
    text = resources.files(__package__ + ".data").joinpath("ge_error_codes.json").read_text("utf-8")
    table = dict(json.loads(text)["codes"])
    for code, facts in _EXTRA.items():
        table.setdefault(code, {"level": _LEVELS[code[0]], "placeholders": [], **facts})
    return table


def ge_code(code: str) -> dict | None:
    """Facts for one code, or None when the code is not in the table."""
    return ge_error_table().get(code.upper())


def level_of(code: str) -> str:
    """'error', 'warning' or 'info' from the code's first letter."""
    return _LEVELS.get(code[:1].upper(), "error")


def is_internal(code: str) -> bool:
    """True for codes in the 9000–9999 range (internal errors: collect the plog)."""
    return bool(re.fullmatch(CODE_PATTERN, code)) and code[2] == "9"


def format_ge_message(code: str, *args: object) -> str:
    """Fill a code's message template with `args` in sequence, as ATC's error manager does.

    Extra `%s` placeholders without an argument are left as they are; extra arguments are
    appended after the message, so nothing is silently lost.

    Args:
        code: e.g. "E10035".
        *args: values for the `%s` placeholders, in order.

    Returns:
        The message without the code prefix, e.g.
        "--dynamic_batch_size, --dynamic_image_size, or --dynamic_dims has 1 profiles, ...".
    """
    facts = ge_code(code)
    if facts is None or not facts.get("template"):
        return " ".join(str(a) for a in args)
    pieces = facts["template"].split("%s")
    out = [pieces[0]]
    values = [str(a) for a in args]
    for i, piece in enumerate(pieces[1:]):
        out.append(values[i] if i < len(values) else "%s")
        out.append(piece)
    text = "".join(out)
    if len(values) > len(pieces) - 1:
        text += " (" + "; ".join(values[len(pieces) - 1 :]) + ")"
    return text


def template_regex(code: str) -> re.Pattern[str] | None:
    """A regex that matches the code's message with each `%s` as a lazy capture group."""
    facts = ge_code(code)
    if facts is None or not facts.get("template"):
        return None
    parts = [re.escape(p) for p in facts["template"].rstrip(".").split("%s")]
    return re.compile("(.+?)".join(parts))
