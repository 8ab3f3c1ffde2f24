"""Atomic file writes: a reader, or a resume after a crash, sees the old file or the whole new one, never half.

One helper for every checkpoint, cache, run file and plot rankrl writes (write to a temp file in the same
directory, then ``os.replace``, which is atomic on POSIX and Windows).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], suffix: str = ".tmp") -> Path:
    """Call ``write(tmp)`` on a temp path beside ``path``, then move it into place.

    Args:
        path: the final file.
        write: writes the content to the path it is given.
        suffix: the temp file's suffix (some writers append their own, e.g. SB3 adds ``.zip`` unless present).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda p: p.write_text(text))


def atomic_write_json(path: str | os.PathLike, data: object, indent: int = 1) -> Path:
    """``data`` as JSON (``default=str``) written to ``path`` atomically."""
    import json

    text = json.dumps(data, indent=indent, default=str)
    return atomic_write(path, lambda p: p.write_text(text), ".json")


def replace_dir(new: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Move the complete directory ``new`` into ``final``'s place; the old ``final`` is never deleted first.

    The old directory is renamed aside, the new one moved in, and only then is the old one removed; if the move
    fails the old one is put back. At no moment is there no ``final`` directory but the one being swapped, and a
    crash in between leaves the old content beside it (``.NAME-old-*``), never nothing. ``new`` must be on the
    same file system (create it in ``final``'s parent).
    """
    import shutil
    import uuid

    new, final = Path(new), Path(final)
    old = None
    if final.exists():
        old = final.parent / f".{final.name}-old-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
    try:
        os.replace(new, final)
    except BaseException:
        if old is not None:
            os.rename(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final
