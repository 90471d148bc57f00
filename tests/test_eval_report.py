"""`stma eval --report`: the HTML folder is written atomically, opens in a real headless browser with
every image loaded, and holds the table, bars, curves and worst-frame thumbnails of one or two runs."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from stma_cli.app import app
from stma_core.eval.report_html import difference_image, worst_frames
from stma_core.eval.scoring import ObjectResult

SEQUENCES = ("car-shadow", "motocross-jump")
FRAMES = 10
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def run(*args: object):
    return CliRunner().invoke(app, ["eval", *(str(a) for a in args)])


def browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no headless browser installed (apt-get install chromium); the report itself is still "
                "checked by the tests that do not render it")


@pytest.fixture(scope="module")
def small_root(davis16: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real DAVIS 2016 val sequences cut to 10 frames."""
    root = tmp_path_factory.mktemp("davis16report")
    for seq in SEQUENCES:
        for kind, ext in (("JPEGImages", "jpg"), ("Annotations", "png")):
            dst = root / kind / "480p" / seq
            dst.mkdir(parents=True)
            for i in range(FRAMES):
                (dst / f"{i:05d}.{ext}").symlink_to(davis16 / kind / "480p" / seq / f"{i:05d}.{ext}")
    (root / "ImageSets" / "2016").mkdir(parents=True)
    (root / "ImageSets" / "2016" / "val.txt").write_text("\n".join(SEQUENCES) + "\n")
    return root


@pytest.fixture(scope="module")
def preds(small_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """'exact' = the GT; 'eroded' = the GT with objects eroded more on later frames (a worse model)."""
    base = tmp_path_factory.mktemp("preds")
    exact, eroded = base / "exact", base / "eroded"
    for seq in SEQUENCES:
        shutil.copytree(small_root / "Annotations" / "480p" / seq, exact / seq)
        (eroded / seq).mkdir(parents=True)
        for i in range(FRAMES):
            with Image.open(exact / seq / f"{i:05d}.png") as image:
                mask, palette = np.array(image), image.getpalette()
            worse = cv2.erode(mask, np.ones((3, 3), np.uint8), iterations=2 + 3 * i)
            out = Image.fromarray(worse)
            out.putpalette(palette)
            out.save(eroded / seq / f"{i:05d}.png")
    return exact, eroded


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.ids: set[str] = set()
        self.global_rows = 0
        self._in_global = False
        self.body: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.images.append(a)
        if tag == "table":
            self._in_global = a.get("id") == "global"
        if tag == "tr" and self._in_global:
            self.global_rows += 1
        if tag == "body":
            self.body = a


def parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


def render(index: Path) -> _Page:
    """The DOM after a headless Chromium loaded the page from the file system (no server)."""
    dom = subprocess.run([browser(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                          "--dump-dom", index.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    return parse(dom.stdout)


@pytest.fixture(scope="module")
def two_runs(small_root: Path, preds: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report folder of `--pred exact --compare eroded`."""
    exact, eroded = preds
    base = tmp_path_factory.mktemp("two-runs")
    report = base / "report"
    result = run("--pred", exact, "--gt", small_root, "--out", base / "csv", "--compare", eroded,
                 "--report", report, "--json", "-q")
    assert result.exit_code == 0, result.output
    assert not list(base.glob("*.partial"))
    return report


def test_report_of_two_runs_holds_every_part(two_runs: Path) -> None:
    report = two_runs
    assert (report / "index.html").is_file()
    page = parse((report / "index.html").read_text())
    for image in page.images:  # self-contained: every image is a file inside the folder
        assert not re.match(r"[a-z]+://", image["src"]) and (report / image["src"]).is_file(), image["src"]
        with Image.open(report / image["src"]) as png:
            assert png.format == "PNG" and min(png.size) > 20
    thumbs = [i for i in page.images if "thumb" in i.get("class", "")]
    assert len(thumbs) == len(SEQUENCES) * 3 * 6  # 3 worst frames x (frame, GT, 2 x (prediction, difference))
    assert sum("curves" in i.get("class", "") for i in page.images) == len(SEQUENCES)
    assert {"global", "sequences", *(f"seq-{s}" for s in SEQUENCES)} <= page.ids
    assert page.global_rows == 1 + 2 + 1 + 3  # header, two runs, difference, three reference baselines
    html = (report / "index.html").read_text()
    assert "exact" in html and "eroded" in html
    assert 'class="down"' in html and 'class="up"' not in html  # the eroded run is worse everywhere


def test_report_of_two_runs_renders_in_a_browser(two_runs: Path) -> None:
    page = parse((two_runs / "index.html").read_text())
    rendered = render(two_runs / "index.html")
    assert rendered.body.get("data-images-loaded") == f"{len(page.images)}/{len(page.images)}", rendered.body
    assert len(rendered.images) == len(page.images)
    assert {"global", "sequences", *(f"seq-{s}" for s in SEQUENCES)} <= rendered.ids


def test_screenshot_shows_the_report(small_root: Path, preds: tuple[Path, Path], tmp_path: Path) -> None:
    exe = browser()
    report = tmp_path / "report"
    assert run("--pred", preds[1], "--gt", small_root, "--out", tmp_path / "csv", "--report", report, "-q").exit_code == 0
    shot = tmp_path / "shot.png"
    done = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1200,1600", f"--screenshot={shot}", (report / "index.html").as_uri()],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (1600, 1200) and pixels.std() > 20  # text, plots and photos, not a blank page


def test_existing_report_is_kept_unless_overwrite(small_root: Path, preds: tuple[Path, Path], tmp_path: Path) -> None:
    report = tmp_path / "report"
    report.mkdir()
    (report / "mine.txt").write_text("keep")
    result = run("--pred", preds[0], "--gt", small_root, "--out", tmp_path / "csv", "--report", report)
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error: ") and "--overwrite" in result.stderr
    assert not (tmp_path / "csv").exists(), "refused before scoring"
    assert [p.name for p in report.iterdir()] == ["mine.txt"]
    result = run("--pred", preds[0], "--gt", small_root, "--out", tmp_path / "csv", "--report", report,
                 "--overwrite", "-q")
    assert result.exit_code == 0, result.output
    assert (report / "index.html").is_file() and not (report / "mine.txt").exists()


def test_missing_compare_folder_is_one_line(small_root: Path, preds: tuple[Path, Path], tmp_path: Path) -> None:
    result = run("--pred", preds[0], "--gt", small_root, "--compare", tmp_path / "nope", "--report", tmp_path / "r")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--compare" in lines[0] and "nope" in lines[0]
    assert not (tmp_path / "r").exists()


def test_dataset_run_with_report(small_root: Path, tmp_path: Path) -> None:
    report = tmp_path / "report"
    result = run("--dataset", "davis16-val", "--root", small_root, "--method", "copy", "--pred-out", tmp_path / "copy",
                 "--report", report, "-q")
    assert result.exit_code == 0, result.output
    html = (report / "index.html").read_text()
    assert "stma eval: copy" in html and html.count('class="row worst"') == 3 * len(SEQUENCES)


def test_worst_frames_are_lowest_and_spread() -> None:
    frames = [f"{i:05d}" for i in range(12)]
    j = np.linspace(1.0, 0.0, 12)  # frames get worse and worse
    obj = ObjectResult("s", 1, frames, j, j.copy())
    picked = worst_frames([obj], 3)
    assert picked[0] == ("00011", 0.0)
    indices = sorted(int(name) for name, _ in picked)
    assert len(indices) == 3 and min(np.diff(indices)) > 2


def test_difference_image_colours() -> None:
    frame = np.full((4, 4, 3), 200, np.uint8)
    gt = np.array([[1, 1, 0, 255]] * 4, np.uint8)
    pred = np.array([[1, 0, 1, 0]] * 4, np.uint8)
    diff = difference_image(frame, gt, pred)
    assert tuple(diff[0, 1]) == (230, 30, 30)  # missed
    assert tuple(diff[0, 2]) == (40, 90, 255)  # claimed wrongly
    assert tuple(diff[0, 3]) == (150, 150, 150)  # void
    assert diff[0, 0, 1] > diff[0, 0, 0]  # right: green tint


def test_report_needs_local_scores(tmp_path: Path) -> None:
    result = run("--dataset", "ytvos-valid", "--root", tmp_path, "--report", tmp_path / "r")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--report/--compare" in lines[0] and "ytvos-valid" in lines[0]
    assert not (tmp_path / "r").exists()


def test_overwrite_never_replaces_a_folder_of_the_run_with_the_report(tennis: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`--report PRED --overwrite` (the report beside the predictions, after "already exists; pass --overwrite")
    replaced the prediction folder, every sequence's PNGs, with the report; `--report .` failed with a
    traceback. A report folder that is or holds a folder of the run, or the current folder, is now refused
    before anything is scored, --overwrite or not; any other existing folder is still replaced with it."""
    pred = tmp_path / "pred"
    shutil.copytree(tennis / "Annotations" / "480p", pred)
    before = sorted(p.relative_to(pred) for p in pred.rglob("*"))
    for report, named in ((pred, f"--pred {pred}"), (tmp_path, f"--pred {pred}"), (tennis, f"--gt {tennis}")):
        result = run("--pred", pred, "--gt", tennis, "--report", report, "--overwrite")
        assert result.exit_code == 2, result.output
        assert result.stderr == (f"error: {report}: is or holds {named}, which --overwrite would replace with the "
                                 "report; pass --report with a folder of its own, e.g. report/\n")
    monkeypatch.chdir(tmp_path / "pred")
    result = run("--pred", pred, "--gt", tennis, "--report", ".", "--overwrite")
    assert result.exit_code == 2 and result.stderr.startswith("error: .: is or holds --pred"), result.output
    assert sorted(p.relative_to(pred) for p in pred.rglob("*")) == before  # nothing scored, written or replaced


def test_a_run_given_as_dot_is_labelled_by_its_folder(small_root: Path, preds: tuple[Path, Path], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`cd PRED && stma eval --pred . --report R`: the report labelled the run with an empty name."""
    monkeypatch.chdir(preds[0])
    result = run("--pred", ".", "--gt", small_root, "--out", tmp_path / "csv", "--report", tmp_path / "r",
                 "--compare", "../eroded", "-q")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "r" / "index.html").read_text()
    assert "<li><b>exact</b>" in page and "<li><b>eroded</b>" in page


def test_report_dash_and_unwritable_report_are_refused_before_scoring(tennis: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`--report -` made a folder named '-' (the other output options refuse '-', which is not stdout), and a
    report folder under a file was found unwritable only after scoring; both are one line before anything."""
    pred = tmp_path / "pred"
    shutil.copytree(tennis / "Annotations" / "480p", pred)
    monkeypatch.chdir(tmp_path)
    result = run("--pred", pred, "--gt", tennis, "--report", "-")
    assert result.exit_code == 2 and result.stderr.startswith("error: --report -: --report is a folder"), result.output
    blocked = pred / "tennis" / "00000.png" / "report"
    result = run("--pred", pred, "--gt", tennis, "--report", blocked)
    assert result.exit_code == 2
    assert result.stderr == (f"error: {blocked}: output folder is not writable ({pred / 'tennis' / '00000.png'} is a "
                             "file, not a folder); pass --report with a writable folder\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred"]
