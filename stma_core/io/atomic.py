"""All-or-nothing outputs: write into a temporary sibling, rename over the final name when complete.

A crash, Ctrl-C or bad frame halfway through a video must never leave something that looks like a
finished result, because batch runs skip videos whose outputs exist.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from stma_core.errors import StmaOutputError

PARTIAL_SUFFIX = ".partial"


def partial_path(final: Path) -> Path:
    """The temporary sibling an output is written to: `name.partial` (a file or a folder)."""
    return final.with_name(final.name + PARTIAL_SUFFIX)


def remove_path(path: Path) -> None:
    """Deletes a file or folder tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def commit(partial: Path, final: Path, overwrite: bool) -> None:
    """Moves a finished partial output to its final name (replacing an old one only with `overwrite`)."""
    if final.exists() or final.is_symlink():
        if not overwrite:
            raise StmaOutputError(f"{final}: output already exists; pass --overwrite to replace it or choose another --out")
        if final.is_dir() and not final.is_symlink():
            # A non-empty folder cannot be replaced in one rename: move the old one aside first.
            old = final.with_name(final.name + ".old" + PARTIAL_SUFFIX)
            remove_path(old)
            os.replace(final, old)
            os.replace(partial, final)
            remove_path(old)
            return
    os.replace(partial, final)


def ensure_writable_dir(folder: Path) -> None:
    """Creates `folder` and proves a file can be written in it, before any compute is spent."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".stma-write-test")
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StmaOutputError(f"{folder}: output folder is not writable ({reason}); pass --out with a writable folder") from exc


def atomic_write(path: Path, write: Callable[[Path], None], mode: int = 0o644) -> None:
    """The one way a single file is written atomically: `write(tmp)` fills a temporary sibling, which
    then replaces `path` in one rename (readers see the old file or the new one, never half of one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, mode)  # mkstemp makes 0600; outputs are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))
