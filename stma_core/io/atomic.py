"""All-or-nothing outputs: write into a temporary sibling, rename over the final name when complete.

A crash, Ctrl-C or bad frame halfway through a video must never leave something that looks like a
finished result, because batch runs skip videos whose outputs exist.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from stma_core.errors import StmaOutputError

PARTIAL_SUFFIX = ".partial"


def partial_path(final: Path) -> Path:
    """The temporary sibling this process writes an output to: `name.<pid>.partial` (a file or a folder).

    The process id keeps two runs that write the same output (two `stma segment` of one video into one
    --out) out of each other's partial files; `remove_stale_partials` clears those of runs that died."""
    return final.with_name(f"{final.name}.{os.getpid()}{PARTIAL_SUFFIX}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: another user's process, alive
        return True
    return True


def _remove_dead(folder: Path, pattern: re.Pattern[str], own_is_stale: bool) -> None:
    """Deletes the entries of `folder` whose whole name matches `pattern` and whose process (group 1; no
    group: an older stma's, always stale) is gone, or is this one when `own_is_stale`."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        match = pattern.fullmatch(name)
        if match is None:
            continue
        pid = match.group(1)
        if pid is None or (own_is_stale if int(pid) == os.getpid() else not _alive(int(pid))):
            remove_path(folder / name)


def remove_stale_partials(*finals: Path) -> None:
    """Deletes the partial outputs of `finals` (outputs in one folder) that a killed run left (its process is
    gone, or an older stma's `name.partial`); a partial of a run still going on is left alone. One listing
    of the folder, whatever the number of outputs."""
    if not finals:
        return
    names = "|".join(re.escape(final.name) for final in finals)
    pattern = re.compile(f"(?:{names})" + r"(?:\.(\d+))?(?:\.old)?" + re.escape(PARTIAL_SUFFIX))
    _remove_dead(finals[0].parent, pattern, own_is_stale=True)


def remove_stale_run_folders(folder: Path, prefix: str) -> None:
    """Deletes the `<prefix><pid>-*` temporary entries of `folder` whose process is gone: what a killed run
    (SIGKILL, out of memory) could not clean up; those of a run still going on are left alone."""
    _remove_dead(folder, re.compile(re.escape(prefix) + r"(\d+)-.*", re.DOTALL), own_is_stale=False)


def remove_path(path: Path) -> None:
    """Deletes a file or folder tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def _exists_error(final: Path) -> StmaOutputError:
    return StmaOutputError(f"{final}: output already exists (another run may have written it meanwhile); "
                           "pass --overwrite to replace it or choose another --out")


def commit(partial: Path, final: Path, overwrite: bool) -> None:
    """Moves a finished partial output to its final name (replacing an old one only with `overwrite`).

    Without `overwrite` the move never replaces anything, even an output another process finished after
    this one checked: a file is published by a hard link (which fails if the name exists), a folder by a
    rename (which fails onto a non-empty folder)."""
    if not overwrite:
        if final.exists() or final.is_symlink():
            raise _exists_error(final)
        if partial.is_dir():
            try:
                os.rename(partial, final)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                    raise _exists_error(final) from exc
                raise
            return
        try:
            os.link(partial, final)
        except FileExistsError as exc:
            raise _exists_error(final) from exc
        except OSError:  # a file system without hard links: the check above has to do
            os.replace(partial, final)
            return
        os.remove(partial)
        return
    if final.is_dir() and not final.is_symlink():
        # A non-empty folder cannot be replaced in one rename: move the old one aside first.
        old = final.with_name(f"{final.name}.{os.getpid()}.old{PARTIAL_SUFFIX}")
        remove_path(old)
        os.replace(final, old)
        os.replace(partial, final)
        remove_path(old)
        return
    os.replace(partial, final)


def check_not_replacing(final: Path, keep: Sequence[tuple[str, Path | None]], output: str, fix: str) -> None:
    """Refuses to replace the folder `final` wholesale (--overwrite) when it is, or holds, one of the run's own
    folders or files `keep` ((flag, path): --pred, --checkpoint, ...), or the current folder: `--report PRED
    --overwrite` replaced the predictions being scored, `export --checkpoint RUN --out RUN --overwrite` the model
    it exported. `output` names what would replace it ("the report"), `fix` says what to pass instead."""
    if not (final.exists() or final.is_symlink()):
        return
    # As spelled (a symlink given as --checkpoint lives in the folder it is given in) and with links followed
    targets = {Path(os.path.abspath(final)), final.resolve()}
    for flag, path in (*keep, ("the current folder", Path.cwd())):
        if path is None:
            continue
        for spelled in {Path(os.path.abspath(path)), path.resolve()}:
            if any(spelled == target or target in spelled.parents for target in targets):
                what = flag if flag.startswith("the ") else f"{flag} {path}"
                raise StmaOutputError(f"{final}: is or holds {what}, which --overwrite would replace with {output}; "
                                      f"{fix}")


def ensure_writable_dir(folder: Path) -> None:
    """Creates `folder` and proves a file can be written in it, before any compute is spent."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".stma-write-test")
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        if exc.errno in (errno.ENOTDIR, errno.EEXIST) and blocker is not None:  # a file where a folder must go
            raise StmaOutputError(f"{folder}: output folder is not writable ({blocker} is a file, not a folder); "
                                  "pass --out with a writable folder") from exc
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
