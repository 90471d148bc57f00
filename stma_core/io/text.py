"""Text files a user names (configs, split lists, meta.json): read as UTF-8 or a one-line input error."""

from __future__ import annotations

from pathlib import Path

from stma_core.errors import StmaInputError


def read_user_text(path: Path, what: str, fix: str) -> str:
    """The UTF-8 text of `path`; StmaInputError naming the file, `what` it should be and the `fix` when
    it is binary (an image given as a config, say) or cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise StmaInputError(f"{path}: not a text file, so not a {what}; {fix}") from None
    except OSError as exc:
        raise StmaInputError(f"{path}: cannot read the {what} ({exc.strerror or exc}); {fix}") from None


def read_split_names(path: Path) -> list[str]:
    """The sequence names a split file lists: one per line, blank lines skipped (as read_user_text errs)."""
    text = read_user_text(path, "split file", "write one sequence name per line")
    return [line.strip() for line in text.splitlines() if line.strip()]
