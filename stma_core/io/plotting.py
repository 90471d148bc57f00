"""matplotlib helpers shared by the eval report and the training curves."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def glyph_warnings_ignored() -> Iterator[None]:
    """Drawing text the font lacks (a sequence or run named `chién-犬`) makes matplotlib emit a raw
    'Glyph N missing from font' UserWarning on stderr; the plot is still right (a box stands in for the
    glyph), so that warning alone is silenced while drawing and saving."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from", category=UserWarning)
        yield
