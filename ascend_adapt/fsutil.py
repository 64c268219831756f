"""Filesystem helpers: outputs appear complete or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from .errors import OutputExistsError


def check_output(path: str | os.PathLike, force: bool) -> Path:
    """Return `path` as a Path; raise OutputExistsError if it exists and not `force`."""
    p = Path(path)
    if p.exists() and not force:
        raise OutputExistsError(p)
    return p


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, force: bool = False, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it to `path`.

    On any exception the temporary file or directory is removed and `path` is untouched.
    With `force`, an existing `path` is replaced only after the new output is complete.

    Args:
        path: the final file or directory.
        force: allow replacing an existing `path`.
        is_dir: create the temporary path as a directory.
    """
    final = check_output(path, force)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    if is_dir:
        tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
        os.replace(tmp, final)
        _remove(old)
    else:
        os.replace(tmp, final)
