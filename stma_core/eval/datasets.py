"""Benchmark datasets known by name, where to find them on disk, and DAVIS layout checks.

The registry is plain data so adding a split is one entry, not new code. Roots are never hard-coded to
one machine: they come from `--root`, then an environment variable, then a few conventional relative
folders; the error for a missing dataset lists every place that was tried and how to get the data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from stma_core.errors import StmaInputError
from stma_core.io.frames import IMAGE_EXTENSIONS, image_files, natural_key
from stma_core.io.text import read_split_names

DAVIS17_URL = "https://davischallenge.org/davis2017/code.html"
DAVIS16_URL = "https://davischallenge.org/davis2016/code.html"
YTVOS_URL = "https://youtube-vos.org/dataset/vos/"
DAVIS_RESOLUTION = "480p"


@dataclass(frozen=True)
class DatasetSpec:
    """One named evaluation set."""

    name: str
    family: str
    """'davis' (scored locally) or 'ytvos' (predictions only; scored by the challenge server)."""
    year: int
    split: str
    marker: str
    """Path relative to the root that must exist: the split file for DAVIS, meta.json for YouTube-VOS."""
    resolution: str
    layout: str
    env_var: str
    default_dirs: tuple[str, ...]
    obtain: str
    """How to get the data, for error messages."""

    @property
    def scorable(self) -> bool:
        return self.family == "davis"


_DAVIS16_DIRS = ("data/DAVIS2016", "~/datasets/DAVIS2016")
_DAVIS17_DIRS = ("data/DAVIS", "data/DAVIS2017", "~/datasets/DAVIS")
_DAVIS16_OBTAIN = (f"get DAVIS 2016 from {DAVIS16_URL} in the DAVIS 2017 layout (JPEGImages/480p, "
                   "Annotations/480p palette PNGs with ids 0/1, ImageSets/2016/{train,val}.txt)")
_DAVIS17_OBTAIN = f"download DAVIS-2017-trainval-480p.zip from {DAVIS17_URL} and unzip it (the folder holding JPEGImages/)"
_DAVIS_LAYOUT = "JPEGImages/480p/<seq>/*.jpg, Annotations/480p/<seq>/*.png, ImageSets/<year>/<split>.txt"

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("davis16-val", "davis", 2016, "val", "ImageSets/2016/val.txt", DAVIS_RESOLUTION,
                    _DAVIS_LAYOUT, "STMA_DAVIS16_ROOT", _DAVIS16_DIRS, _DAVIS16_OBTAIN),
        DatasetSpec("davis16-train", "davis", 2016, "train", "ImageSets/2016/train.txt", DAVIS_RESOLUTION,
                    _DAVIS_LAYOUT, "STMA_DAVIS16_ROOT", _DAVIS16_DIRS, _DAVIS16_OBTAIN),
        DatasetSpec("davis17-val", "davis", 2017, "val", "ImageSets/2017/val.txt", DAVIS_RESOLUTION,
                    _DAVIS_LAYOUT, "STMA_DAVIS17_ROOT", _DAVIS17_DIRS, _DAVIS17_OBTAIN),
        DatasetSpec("davis17-train", "davis", 2017, "train", "ImageSets/2017/train.txt", DAVIS_RESOLUTION,
                    _DAVIS_LAYOUT, "STMA_DAVIS17_ROOT", _DAVIS17_DIRS, _DAVIS17_OBTAIN),
        DatasetSpec("ytvos-valid", "ytvos", 2019, "valid", "valid/meta.json", "native",
                    "valid/JPEGImages/<video>/*.jpg, valid/Annotations/<video>/*.png, valid/meta.json",
                    "STMA_YTVOS_ROOT", ("data/YouTubeVOS", "data/ytvos", "~/datasets/YouTubeVOS"),
                    f"download the YouTube-VOS valid set from {YTVOS_URL} (the folder holding valid/)"),
    )
}


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise StmaInputError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None


def _has_marker(spec: DatasetSpec, root: Path) -> bool:
    if (root / spec.marker).is_file():
        return True
    # A YouTube-VOS root may also be given as the valid/ folder itself.
    return spec.family == "ytvos" and (root / Path(spec.marker).name).is_file()


def _nearby(path: Path, holds: Callable[[Path], bool]) -> str:
    """' (did you mean DIR?)' when a folder next to PATH (a parent up to two levels, or a child: the folder a
    zip unpacked into, the Annotations/ or valid_all_frames/ folder given instead of the root) is the root."""
    try:
        near = [path.parent, path.parent.parent] + sorted(c for c in path.iterdir() if c.is_dir())
    except OSError:
        near = [path.parent, path.parent.parent]
    found = next((c for c in near if c != path and holds(c)), None)
    return f" (did you mean {found}?)" if found is not None else ""


def resolve_root(spec: DatasetSpec, root: str | Path | None = None,
                 environ: dict[str, str] | None = None) -> Path:
    """The dataset root: --root, else $ENV_VAR, else the conventional folders; a one-line error otherwise."""
    environ = os.environ if environ is None else environ
    explicit: list[tuple[str, str]] = []
    if root is not None:
        explicit.append(("--root", str(root)))
    elif environ.get(spec.env_var):
        explicit.append((f"${spec.env_var}", environ[spec.env_var]))
    if explicit:
        source, value = explicit[0]
        path = Path(value).expanduser()
        if not _has_marker(spec, path):
            raise StmaInputError(
                f"{source}={path} is not {spec.name}: {path / spec.marker} not found"
                f"{_nearby(path, lambda c: _has_marker(spec, c))} (expected {spec.layout}); {spec.obtain}")
        return path
    tried = ["--root (not given)", f"${spec.env_var} (not set)"]
    for candidate in spec.default_dirs:
        path = Path(candidate).expanduser()
        if _has_marker(spec, path):
            return path
        tried.append(f"{path} (no {spec.marker})")
    raise StmaInputError(
        f"dataset {spec.name} not found; looked at: {', '.join(tried)}; {spec.obtain}, "
        f"then pass --root DIR or set {spec.env_var}")


def check_davis_root(root: Path) -> Path:
    """Fails with a one-line error unless `root` has the DAVIS annotation layout; returns Annotations/480p."""
    if not root.is_dir():
        raise StmaInputError(f"GT root {root} does not exist; pass the DAVIS folder holding Annotations/ "
                             f"({_DAVIS17_OBTAIN})")
    annotations = root / "Annotations" / DAVIS_RESOLUTION
    if not annotations.is_dir():
        near = _nearby(root, lambda c: (c / "Annotations" / DAVIS_RESOLUTION).is_dir())
        raise StmaInputError(f"GT root {root} is not a DAVIS layout: {annotations} not found{near} "
                             f"(expected {_DAVIS_LAYOUT}); pass the DAVIS folder itself")
    return annotations


def split_candidates(root: Path, split: str) -> list[Path]:
    """Where a split name is looked up, most recent year first (DAVIS 2017 also ships the 2016 lists)."""
    return [root / "ImageSets" / "2017" / f"{split}.txt", root / "ImageSets" / "2016" / f"{split}.txt"]


def resolve_split(root: Path, split: str) -> tuple[str, list[str]]:
    """(split name, sequence names) from a split name ('val') or a split file path; checks each exists."""
    annotations = check_davis_root(root)
    given = Path(split).expanduser()
    if given.is_file():
        split_file = given
    else:
        found = [p for p in split_candidates(root, split) if p.is_file()]
        if not found:
            looked = " or ".join(str(p) for p in split_candidates(root, split))
            raise StmaInputError(f"split {split!r} not found: no file {split!r} and no {looked}; "
                                 "pass --split with a split name or a text file of sequence names")
        split_file = found[0]
    sequences = read_split_names(split_file)
    if not sequences:
        raise StmaInputError(f"split file {split_file} lists no sequences; write one sequence name per line")
    twice = sorted({s for s in sequences if sequences.count(s) > 1})
    if twice:  # scored twice, they would weigh double in the global means (the official toolkit counts them once)
        raise StmaInputError(f"split file {split_file} lists {short_list(twice)} more than once; list each "
                             "sequence once")
    missing = [s for s in sequences if not (annotations / s).is_dir()]
    if missing:
        raise StmaInputError(f"{len(missing)} sequence(s) of {split_file} have no folder in {annotations}: "
                             f"{short_list(missing)}; fix the split file or the GT root")
    return split_file.stem, sequences


def is_davis2016_split(root: Path, split: str) -> bool:
    """True if `split` (a name or a split file) resolves to a DAVIS 2016 list (ImageSets/2016/...): there,
    original 0/255 grayscale masks mean object 1."""
    given = Path(split).expanduser()
    if given.is_file():
        return given.resolve().parent.name == "2016"
    found = [p for p in split_candidates(root, split) if p.is_file()]
    return bool(found) and found[0].parent.name == "2016"


def short_list(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def frame_images(folder: Path) -> list[Path]:
    """A sequence's frame images in natural order (0.jpg, 2.jpg, 10.jpg), any type `stma segment` reads;
    [] if the folder is missing. Two files for one frame name are an error (which one would be used?)."""
    if not folder.is_dir():
        return []
    files = image_files(folder)
    stems = [p.stem for p in files]
    if len(set(stems)) != len(stems):
        dup = next(p for p in files if stems.count(p.stem) > 1)
        raise StmaInputError(f"{folder}: two frame images are named {dup.stem!r} (different extensions); "
                             "keep one per frame")
    return files


def frame_image(folder: Path, name: str) -> Path | None:
    """The frame image called NAME (any accepted extension) in FOLDER, or None."""
    for ext in IMAGE_EXTENSIONS:
        for suffix in (ext, ext.upper()):
            path = folder / f"{name}{suffix}"
            if path.is_file():
                return path
    return None


def annotation_files(folder: Path) -> list[Path]:
    """A sequence's annotation PNGs in natural order, as `stma segment` orders frames (zero-padded DAVIS
    names sort the same either way, so official numbers are unchanged)."""
    return sorted((p for p in folder.glob("*.png") if not p.name.startswith(".")), key=lambda p: natural_key(p.name))
