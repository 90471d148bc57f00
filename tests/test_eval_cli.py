"""`stma eval` end to end on real DAVIS frames: scoring, named datasets, YouTube-VOS layout, input errors."""

from __future__ import annotations

import csv
import json
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import EXAMPLES, example_frames, moving_object_sequence
from stma_cli.app import app
from stma_core.errors import StmaInputError
from stma_core.eval.datasets import get_dataset, resolve_root
from stma_core.io.writers import save_palette_png

SEQUENCES = ("car-shadow", "motocross-jump")
FRAMES = 12


def run(*args: str):
    return CliRunner().invoke(app, ["eval", *args])


def assert_input_error(result, *fragments: str) -> str:
    """Exit 2 and exactly one `error: ...` line on stderr containing every fragment."""
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DAVIS 2016 root of two generated 12-frame sequences with exact ground truth (moving textured
    objects over the example clip), so these tests run without the dataset."""
    root = tmp_path_factory.mktemp("davis16small")
    for seed, seq in enumerate(SEQUENCES):
        frames, masks = moving_object_sequence(FRAMES, seed)
        images, annotations = root / "JPEGImages" / "480p" / seq, root / "Annotations" / "480p" / seq
        images.mkdir(parents=True)
        annotations.mkdir(parents=True)
        for i, (frame, mask) in enumerate(zip(frames, masks)):
            Image.fromarray(frame).save(images / f"{i:05d}.jpg", quality=95)
            save_palette_png(mask, annotations / f"{i:05d}.png")
    (root / "ImageSets" / "2016").mkdir(parents=True)
    (root / "ImageSets" / "2016" / "val.txt").write_text("\n".join(SEQUENCES) + "\n")
    return root


@pytest.fixture()
def perfect_pred(small_root: Path, tmp_path: Path) -> Path:
    """Predictions equal to the GT (real masks), to be broken by individual tests."""
    pred = tmp_path / "pred"
    for seq in SEQUENCES:
        shutil.copytree(small_root / "Annotations" / "480p" / seq, pred / seq)
    return pred


def _write(path: Path, mask: np.ndarray, mode: str | None = None) -> None:
    path.unlink(missing_ok=True)
    image = Image.fromarray(mask)
    (image.convert(mode) if mode else image).save(path)


# ----------------------------------------------------------------------------------------------------
# Scoring and outputs
# ----------------------------------------------------------------------------------------------------

def test_dataset_copy_then_rescore_with_pred(small_root: Path, tmp_path: Path) -> None:
    pred = tmp_path / "copy"
    result = run("--dataset", "davis16-val", "--root", str(small_root), "--method", "copy",
                 "--pred-out", str(pred), "--quiet")
    assert result.exit_code == 0, result.stderr
    assert "Global" in result.stdout and "car-shadow_1" in result.stdout
    for seq in SEQUENCES:
        files = sorted((pred / seq).glob("*.png"))
        assert len(files) == FRAMES  # every frame, so the folder can be scored again
        with Image.open(files[-1]) as image:
            assert image.mode == "P"
    with (pred / "global_results-val.csv").open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
    assert all(len(v.split(".")[1]) == 3 for v in rows[1])  # official "%.3f"
    with (pred / "per-sequence_results-val.csv").open() as fh:
        per_seq = list(csv.reader(fh))
    assert per_seq[0] == ["Sequence", "J-Mean", "F-Mean"]
    assert [r[0] for r in per_seq[1:]] == ["car-shadow_1", "motocross-jump_1"]

    out = tmp_path / "csv"
    again = run("--pred", str(pred), "--gt", str(small_root), "--split", "val", "--json", "--out", str(out), "-q")
    assert again.exit_code == 0, again.stderr
    payload = json.loads(again.stdout)  # stdout is exactly one JSON object
    assert payload["objects"] == 2 and payload["split"] == "val"
    jf = payload["global"]["J&F-Mean"]
    assert abs(jf - float(rows[1][0])) <= 0.0005
    assert 0.0 < jf < 1.0  # copy is imperfect on moving objects
    assert (out / "per-sequence_results-val.csv").is_file()
    assert again.stderr == ""  # --quiet


def test_failure_mid_sequence_leaves_no_half_written_folder(small_root: Path, tmp_path: Path) -> None:
    """A frame that cannot be read halfway through a sequence: one-line error, exit 2, and the
    sequence's prediction folder is neither half written nor a leftover `.partial`; a complete folder
    from an earlier run of that sequence is kept as it was."""
    root = tmp_path / "root"
    shutil.copytree(small_root, root)
    pred = tmp_path / "pred"
    assert run("--dataset", "davis16-val", "--root", str(root), "--method", "copy", "--pred-out", str(pred),
               "--quiet").exit_code == 0
    before = {p.name: p.read_bytes() for p in (pred / SEQUENCES[1]).iterdir()}
    again = run("--dataset", "davis16-val", "--root", str(root), "--method", "copy", "--pred-out", str(pred), "-q")
    assert_input_error(again, str(pred), "already holds predictions", "--overwrite")  # nothing replaced unasked
    (root / "JPEGImages" / "480p" / SEQUENCES[1] / "00006.jpg").write_bytes(b"not a jpeg")
    result = run("--dataset", "davis16-val", "--root", str(root), "--method", "copy", "--pred-out", str(pred),
                 "--quiet", "--overwrite")
    assert_input_error(result, "00006.jpg", "not a readable image")
    assert {p.name: p.read_bytes() for p in (pred / SEQUENCES[1]).iterdir()} == before
    assert not list(pred.glob("*.partial")) and len(list((pred / SEQUENCES[0]).glob("*.png"))) == FRAMES
    shutil.rmtree(pred / SEQUENCES[1])
    result = run("--dataset", "davis16-val", "--root", str(root), "--method", "copy", "--pred-out", str(pred),
                 "--quiet", "--overwrite")
    assert result.exit_code == 2 and not (pred / SEQUENCES[1]).exists() and not list(pred.glob("*.partial"))
    whole = (root / "JPEGImages" / "480p" / SEQUENCES[1] / "00005.jpg").read_bytes()  # a JPEG cut short
    (root / "JPEGImages" / "480p" / SEQUENCES[1] / "00006.jpg").write_bytes(whole[: len(whole) // 2])
    result = run("--dataset", "davis16-val", "--root", str(root), "--method", "copy", "--pred-out", str(pred),
                 "--quiet", "--overwrite")
    assert_input_error(result, "00006.jpg", "truncated")


def test_perfect_predictions_score_one(small_root: Path, perfect_pred: Path) -> None:
    result = run("--pred", str(perfect_pred), "--gt", str(small_root), "--json", "-q")
    assert result.exit_code == 0, result.stderr
    g = json.loads(result.stdout)["global"]
    assert g["J&F-Mean"] == g["J-Mean"] == g["F-Mean"] == g["J-Recall"] == 1.0
    assert g["J-Decay"] == 0.0


def test_split_file_path(small_root: Path, perfect_pred: Path, tmp_path: Path) -> None:
    split = tmp_path / "mine.txt"
    split.write_text("motocross-jump\n\n")
    result = run("--pred", str(perfect_pred), "--gt", str(small_root), "--split", str(split), "-q")
    assert result.exit_code == 0, result.stderr
    rows = (perfect_pred / "per-sequence_results-mine.csv").read_text().splitlines()
    assert rows == ["Sequence,J-Mean,F-Mean", "motocross-jump_1,1.000,1.000"]
    binary = tmp_path / "split.bin"
    binary.write_bytes(bytes(range(128, 256)))
    assert_input_error(run("--pred", str(perfect_pred), "--gt", str(small_root), "--split", str(binary), "-q"),
                       "split.bin: not a text file, so not a split file")


def test_a_sequence_listed_twice_in_the_split_is_refused(small_root: Path, perfect_pred: Path, tmp_path: Path) -> None:
    """A split file naming a sequence twice scored it twice: its objects weighed double in the global means
    (the official toolkit reads the list into a dict and counts it once), with nothing said."""
    split = tmp_path / "twice.txt"
    split.write_text("car-shadow\nmotocross-jump\ncar-shadow\n")
    assert_input_error(run("--pred", str(perfect_pred), "--gt", str(small_root), "--split", str(split), "-q"),
                       "twice.txt lists car-shadow more than once; list each sequence once")
    assert not list(perfect_pred.glob("*.csv"))


def test_flow_method_through_the_factory(small_root: Path, tmp_path: Path) -> None:
    result = run("--dataset", "davis16-val", "--root", str(small_root), "--method", "flow",
                 "--pred-out", str(tmp_path / "flow"), "--json")
    assert result.exit_code == 0, result.stderr
    # Not a terminal: one plain progress line per video on stderr, stdout stays pure JSON.
    assert f"davis16-val/flow car-shadow: {FRAMES} frames" in result.stderr
    assert "frames/s" in result.stderr
    payload = json.loads(result.stdout)
    assert payload["method"] == "flow" and payload["dataset"] == "davis16-val"
    assert 0.3 < payload["global"]["J&F-Mean"] < 1.0


def test_env_var_root(small_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STMA_DAVIS16_ROOT", str(small_root))
    result = run("--dataset", "davis16-val", "--method", "copy", "--pred-out", str(tmp_path / "p"), "--json", "-q")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["objects"] == 2
    # --root wins over the variable; a wrong variable is reported by name.
    assert resolve_root(get_dataset("davis16-val"), small_root, {"STMA_DAVIS16_ROOT": "/nowhere"}) == small_root
    with pytest.raises(StmaInputError, match=r"\$STMA_DAVIS16_ROOT=/nowhere"):
        resolve_root(get_dataset("davis16-val"), None, {"STMA_DAVIS16_ROOT": "/nowhere"})


def test_a_root_one_folder_off_names_the_right_one(small_root: Path, perfect_pred: Path, tmp_path: Path) -> None:
    """The folder a zip was unpacked into (holding DAVIS/), Annotations/480p given as --gt, or YouTube-VOS's
    valid_all_frames/ given as the root: the error used to say only what is missing; now it also names the
    folder next to it that is the root."""
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "DAVIS").symlink_to(small_root, target_is_directory=True)
    assert_input_error(run("--dataset", "davis16-val", "--root", str(tmp_path / "downloads"), "--method", "copy"),
                       f"(did you mean {tmp_path / 'downloads' / 'DAVIS'}?)")
    assert_input_error(run("--pred", str(perfect_pred), "--gt", str(small_root / "Annotations" / "480p")),
                       "not a DAVIS layout", f"(did you mean {small_root}?)")
    root, _ = _ytvos_root(tmp_path)
    (root / "valid_all_frames" / "JPEGImages").mkdir(parents=True)
    assert_input_error(run("--dataset", "ytvos-valid", "--root", str(root / "valid_all_frames"), "--method", "copy"),
                       f"(did you mean {root}?)")
    line = assert_input_error(run("--pred", str(perfect_pred), "--gt", str(tmp_path / "downloads" / "DAVIS" / "ImageSets")),
                              f"(did you mean {tmp_path / 'downloads' / 'DAVIS'}?)")
    assert "did you mean" not in assert_input_error(run("--dataset", "davis16-val", "--root", str(root)))
    assert line.count("did you mean") == 1


def test_predictions_are_never_written_over_the_datasets_annotations(tmp_path: Path) -> None:
    """--pred-out given as DAVIS Annotations/480p (or YouTube-VOS valid/) with --overwrite replaced the
    ground truth with predictions: the copy baseline then scored 100.0 against itself, and the dataset was
    damaged. Now one error line, and the annotations are untouched."""
    names = [f"{i:05d}" for i in range(6)]
    davis = _tiny_root(tmp_path / "davis", names)
    annotations = davis / "Annotations" / "480p"
    before = {p: p.read_bytes() for p in annotations.rglob("*.png")}
    for target in (annotations, annotations / "sub"):
        result = run("--dataset", "davis17-val", "--root", str(davis), "--method", "copy", "--pred-out", str(target),
                     "--overwrite")
        assert_input_error(result, str(annotations), "own annotations")
    root, video = _ytvos_root(tmp_path)
    before.update({p: p.read_bytes() for p in (root / "valid" / "Annotations").rglob("*.png")})
    for dataset_root in (root, root / "valid"):
        result = run("--dataset", "ytvos-valid", "--root", str(dataset_root), "--method", "copy", "--pred-out",
                     str(root / "valid"), "--overwrite")
        assert_input_error(result, str(root / "valid" / "Annotations"), "own annotations")
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(annotations.rglob("*.png")) == sorted(p for p in before if annotations in p.parents)
    # a folder inside the dataset but beside its annotations is fine
    ok, _ = _copy_eval(davis, davis / "predictions", "-q")
    assert ok["global"]["J&F-Mean"] < 1.0


def test_later_appearing_object_is_given_on_its_first_frame(tennis: Path, tmp_path: Path) -> None:
    """davis17 layout: object 2 first annotated on frame 1 is propagated from there (copy method)."""
    root = tmp_path / "d17"
    jpgs = sorted((tennis / "JPEGImages" / "480p" / "tennis").glob("*.jpg"))
    pngs = sorted((tennis / "Annotations" / "480p" / "tennis").glob("*.png"))
    (root / "JPEGImages" / "480p" / "tennis").mkdir(parents=True)
    (root / "Annotations" / "480p" / "tennis").mkdir(parents=True)
    for i in range(4):
        shutil.copy(jpgs[1], root / "JPEGImages" / "480p" / "tennis" / f"{i:05d}.jpg")
        with Image.open(pngs[1]) as image:
            mask = np.array(image)
            palette = image.getpalette()
        if i == 0:
            mask[mask == 2] = 0  # object 2 not there yet
        out = Image.fromarray(mask)
        out.putpalette(palette)
        out.save(root / "Annotations" / "480p" / "tennis" / f"{i:05d}.png")
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("tennis\n")
    pred = tmp_path / "pred"
    result = run("--dataset", "davis17-val", "--root", str(root), "--method", "copy", "--pred-out", str(pred),
                 "--json", "-q")
    assert result.exit_code == 0, result.stderr
    first = np.array(Image.open(pred / "tennis" / "00000.png"))
    later = np.array(Image.open(pred / "tennis" / "00002.png"))
    assert set(np.unique(first)) == {0, 1} and set(np.unique(later)) == {0, 1, 2}
    objects = {o["object"]: o for o in json.loads(result.stdout)["per_object"]}
    assert objects[2]["J-Mean"] == 1.0 and objects[1]["J-Mean"] == 1.0  # void stays background in GT


# ----------------------------------------------------------------------------------------------------
# YouTube-VOS: server layout, no local scoring
# ----------------------------------------------------------------------------------------------------

def test_ytvos_writes_listed_frames_in_server_layout(tmp_path: Path) -> None:
    valid = tmp_path / "ytvos" / "valid"
    video = "0a1b2c3d4e"
    frames = example_frames(30)  # the bundled example clip (DAVIS car-shadow)
    (valid / "JPEGImages" / video).mkdir(parents=True)
    for i in range(0, 30, 5):  # YouTube-VOS valid/ keeps every 5th frame
        Image.fromarray(frames[i]).save(valid / "JPEGImages" / video / f"{i:05d}.jpg")
    (valid / "Annotations" / video).mkdir(parents=True)
    car = np.array(Image.open(EXAMPLES / "car-shadow_mask.png"))
    Image.fromarray(car).save(valid / "Annotations" / video / "00000.png")
    later = np.zeros_like(car)
    later[10:60, 10:90] = 2  # object 2 first appears at frame 00010
    Image.fromarray(later).save(valid / "Annotations" / video / "00010.png")
    listed = {"1": ["00000", "00005", "00010", "00015", "00020"], "2": ["00010", "00015", "00020"]}
    meta = {"videos": {video: {"objects": {k: {"frames": v} for k, v in listed.items()}}}}
    (valid / "meta.json").write_text(json.dumps(meta))

    out = tmp_path / "sub"
    result = run("--dataset", "ytvos-valid", "--root", str(tmp_path / "ytvos"), "--method", "copy",
                 "--pred-out", str(out))
    assert result.exit_code == 0, result.stderr
    assert "cannot be scored locally" in result.stderr
    assert result.stdout.strip() == str(out / "submission.zip")
    written = sorted(p.stem for p in (out / "Annotations" / video).glob("*.png"))
    assert written == listed["1"]  # 00025 exists as a JPEG but is not listed in meta.json
    assert set(np.unique(np.array(Image.open(out / "Annotations" / video / "00005.png")))) == {0, 1}
    assert 2 in np.unique(np.array(Image.open(out / "Annotations" / video / "00015.png")))
    with zipfile.ZipFile(out / "submission.zip") as zf:
        assert sorted(zf.namelist()) == [f"Annotations/{video}/{f}.png" for f in written]

    refused = run("--dataset", "ytvos-valid", "--root", str(tmp_path / "ytvos"), "--pred", str(out))
    assert_input_error(refused, "no public ground truth")
    # --out (score CSVs) was silently ignored: nothing is scored here
    refused = run("--dataset", "ytvos-valid", "--root", str(tmp_path / "ytvos"), "--method", "copy",
                  "--pred-out", str(tmp_path / "sub2"), "--out", str(tmp_path / "csv"))
    assert_input_error(refused, "--out", "not scored locally", "--pred-out")
    assert not (tmp_path / "sub2").exists() and not (tmp_path / "csv").exists()


def _ytvos_root(tmp_path: Path) -> tuple[Path, str]:
    """A YouTube-VOS valid root of one video (every 5th frame of the example clip): object 1 annotated on
    00000, object 2 on 00010 only, as the valid set ships them."""
    root, video = tmp_path / "ytvos", "0a1b2c3d4e"
    valid = root / "valid"
    frames = example_frames(25)
    (valid / "JPEGImages" / video).mkdir(parents=True)
    for i in range(0, 25, 5):
        Image.fromarray(frames[i]).save(valid / "JPEGImages" / video / f"{i:05d}.jpg")
    (valid / "Annotations" / video).mkdir(parents=True)
    car = np.array(Image.open(EXAMPLES / "car-shadow_mask.png"))
    save_palette_png(car, valid / "Annotations" / video / "00000.png")
    later = np.zeros_like(car)
    later[10:60, 10:90] = 2
    save_palette_png(later, valid / "Annotations" / video / "00010.png")
    listed = {"1": ["00000", "00005", "00010", "00015", "00020"], "2": ["00010", "00015", "00020"]}
    (valid / "meta.json").write_text(json.dumps({"videos": {video: {"objects": {
        k: {"category": "car", "frames": v} for k, v in listed.items()}}}}))
    return root, video


def test_ytvos_annotations_disagreeing_with_meta_json_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    """An id on an annotation PNG that meta.json does not list (or a listed object without pixels on its
    first frame) used to be dropped without a word: that object was never segmented, an empty mask in every
    submitted frame. Now one line names the PNG, and nothing is written."""
    root, video = _ytvos_root(tmp_path)
    annotations, meta_path = root / "valid" / "Annotations" / video, root / "valid" / "meta.json"
    meta = json.loads(meta_path.read_text())
    out = tmp_path / "sub"

    def refused(*fragments: str) -> None:
        result = run("--dataset", "ytvos-valid", "--root", str(root), "--method", "copy", "--pred-out", str(out))
        assert_input_error(result, *fragments)
        assert not (out / "Annotations").exists() and not (out / "submission.zip").exists()

    later = np.array(Image.open(annotations / "00010.png"))
    save_palette_png(np.where(later == 2, 3, later).astype(np.uint8), annotations / "00010.png")  # id 3, meta says 2
    refused(str(annotations / "00010.png"), "id(s) [3]", "does not list", "[1, 2]")
    save_palette_png(np.zeros_like(later), annotations / "00010.png")  # object 2 listed from 00010, no pixels there
    refused(str(annotations / "00010.png"), "no pixels of object(s) [2]")
    save_palette_png(later, annotations / "00010.png")
    extra = np.zeros_like(later)
    extra[:4, :4] = 5  # a PNG on a frame that is no object's first: its ids are checked too
    save_palette_png(extra, annotations / "00015.png")
    refused(str(annotations / "00015.png"), "id(s) [5]")
    (annotations / "00015.png").unlink()

    meta["videos"][video]["objects"]["one"] = {"frames": ["00000"]}  # was a traceback (int('one'))
    meta_path.write_text(json.dumps(meta))
    refused(str(meta_path), "not a YouTube-VOS meta.json")
    del meta["videos"][video]["objects"]["one"]
    meta["videos"]["ffffffffff"] = {"objects": {"1": {"frames": ["00000"]}}}  # listed, but no JPEG folder
    meta_path.write_text(json.dumps(meta))
    refused("video ffffffffff", str(root / "valid" / "JPEGImages" / "ffffffffff"))


def test_annotations_of_another_resolution_stop_the_run_before_any_video_is_written(tmp_path: Path) -> None:
    """Frames of another release than the annotations (DAVIS Full-Resolution JPEGs with 480p PNGs, a
    resized YouTube-VOS video) used to stop the run only when that video was reached: the videos before
    it were written, the zip was not, and a rerun needed --overwrite. Now the sizes are checked first."""
    root, video = _ytvos_root(tmp_path)
    second = root / "valid" / "JPEGImages" / "ffffffffff"  # sorted after the first video in meta.json
    shutil.copytree(root / "valid" / "JPEGImages" / video, second)
    shutil.copytree(root / "valid" / "Annotations" / video, root / "valid" / "Annotations" / "ffffffffff")
    meta = json.loads((root / "valid" / "meta.json").read_text())
    meta["videos"]["ffffffffff"] = meta["videos"][video]
    (root / "valid" / "meta.json").write_text(json.dumps(meta))
    for jpg in second.glob("*.jpg"):
        Image.open(jpg).resize((320, 180)).save(jpg)
    out = tmp_path / "sub"
    result = run("--dataset", "ytvos-valid", "--root", str(root), "--method", "copy", "--pred-out", str(out))
    png = root / "valid" / "Annotations" / "ffffffffff" / "00000.png"
    assert_input_error(result, f"annotation {png} is 854x480 but its frame {second / '00000.jpg'} is 320x180")
    assert not out.exists()

    names = [f"{i:05d}" for i in range(4)]
    davis = _tiny_root(tmp_path / "davis", names, seq="a")
    shutil.copytree(davis / "JPEGImages" / "480p" / "a", davis / "JPEGImages" / "480p" / "b")
    shutil.copytree(davis / "Annotations" / "480p" / "a", davis / "Annotations" / "480p" / "b")
    (davis / "ImageSets" / "2017" / "val.txt").write_text("a\nb\n")
    for jpg in (davis / "JPEGImages" / "480p" / "b").glob("*.jpg"):
        Image.open(jpg).resize((128, 96)).save(jpg)
    result = run("--dataset", "davis17-val", "--root", str(davis), "--method", "copy", "--pred-out", str(out))
    assert_input_error(result, str(davis / "Annotations" / "480p" / "b" / "00000.png"), "64x48", "128x96")
    assert not out.exists()


def test_ytvos_says_which_frames_it_read_and_reads_valid_all_frames_when_present(tmp_path: Path) -> None:
    """valid_all_frames/ beside valid/ was read instead of valid/JPEGImages without a word (the results
    change with the frames the model sees, and nothing was tested); now the run names the folder it read
    (stderr, and `frames` in --json), and it writes the same frames either way."""
    root, video = _ytvos_root(tmp_path)
    listed = ["00000", "00005", "00010", "00015", "00020"]
    for dense in (False, True):
        if dense:
            folder = root / "valid_all_frames" / "JPEGImages" / video
            folder.mkdir(parents=True)
            for i, frame in enumerate(example_frames(21)):
                Image.fromarray(frame).save(folder / f"{i:05d}.jpg")
        out = tmp_path / f"sub{int(dense)}"
        args = ("--dataset", "ytvos-valid", "--root", str(root), "--method", "copy", "--pred-out", str(out))
        result = run(*args)
        assert result.exit_code == 0, result.stderr
        frames_dir = root / ("valid_all_frames" if dense else "valid") / "JPEGImages"
        assert f"read frames from {frames_dir} (every {'frame' if dense else '5th frame'};" in result.stderr
        assert f"{video}: {21 if dense else 5} frames" in result.stderr
        assert sorted(p.stem for p in (out / "Annotations" / video).glob("*.png")) == listed
        as_json = run(*args, "--json", "--overwrite", "-q")
        assert json.loads(as_json.stdout)["frames"] == str(frames_dir) and as_json.stderr == ""


def test_ytvos_meta_json_with_a_bom_is_read_and_one_without_videos_is_named(tmp_path: Path) -> None:
    """A meta.json saved with a UTF-8 BOM (Windows editors) was 'not a YouTube-VOS meta.json'; one listing no
    video ended in 'cannot write submission.zip (No such file or directory)', blaming --pred-out."""
    root, video = _ytvos_root(tmp_path)
    meta_path = root / "valid" / "meta.json"
    meta_path.write_bytes(b"\xef\xbb\xbf" + meta_path.read_bytes())
    out = tmp_path / "sub"
    result = run("--dataset", "ytvos-valid", "--root", str(root), "--method", "copy", "--pred-out", str(out))
    assert result.exit_code == 0, result.stderr
    assert len(list((out / "Annotations" / video).glob("*.png"))) == 5
    for meta in ({"videos": {}}, {"videos": {video: {"objects": {}}}}):
        meta_path.write_text(json.dumps(meta))
        result = run("--dataset", "ytvos-valid", "--root", str(root), "--method", "copy", "--pred-out",
                     str(tmp_path / "empty"))
        assert_input_error(result, str(meta_path), "lists no video")
        assert not (tmp_path / "empty").exists()


def test_size_check_reads_frames_upright_as_they_are_segmented(tmp_path: Path) -> None:
    """The up-front size check compares the annotation with the frame as it is read (EXIF orientation
    applied): a phone JPEG stored 48x64 with orientation 6 is shown (and read) as a 64x48 frame, so its 64x48
    mask is right, and a mask of the stored 48x64 is the mismatch."""
    names = [f"{i:05d}" for i in range(4)]
    root = _tiny_root(tmp_path / "d", names, seq="a")
    for name in names:
        jpg, png = (root / kind / "480p" / "a" / f"{name}{ext}" for kind, ext in (("JPEGImages", ".jpg"),
                                                                                  ("Annotations", ".png")))
        image = Image.open(jpg)
        exif = image.getexif()
        exif[0x0112] = 6  # shown turned a quarter clockwise
        image.rotate(90, expand=True).save(jpg, exif=exif)  # stored turned back: shown as before
        assert Image.open(jpg).size == (48, 64)  # stored; the masks (64x48) are those of the shown frame
    result = run("--dataset", "davis17-val", "--root", str(root), "--method", "copy", "--pred-out",
                 str(tmp_path / "p"), "-q")
    assert result.exit_code == 0, result.stderr
    (root / "Annotations" / "480p" / "a" / "00000.png").unlink()
    mask = np.zeros((64, 48), np.uint8)  # drawn on the stored pixels
    mask[:8, :8] = 1
    save_palette_png(mask, root / "Annotations" / "480p" / "a" / "00000.png")
    result = run("--dataset", "davis17-val", "--root", str(root), "--method", "copy", "--pred-out",
                 str(tmp_path / "p2"), "-q")
    assert_input_error(result, "is 48x64 but its frame", "is 64x48")
    assert not (tmp_path / "p2").exists()


def test_ytvos_zip_holds_exactly_this_runs_videos(tmp_path: Path) -> None:
    """The zip used to take every PNG under Annotations/: a video folder left by an earlier run on another
    meta.json (--overwrite keeps folders this run does not write) or a killed run's `.partial` folder went
    to the server as part of the submission."""
    root, video = _ytvos_root(tmp_path)
    out = tmp_path / "sub"
    for stale in ("ffffffffff", f"{video}.partial"):
        (out / "Annotations" / stale).mkdir(parents=True)
        save_palette_png(np.zeros((8, 8), np.uint8), out / "Annotations" / stale / "00000.png")
    result = run("--dataset", "ytvos-valid", "--root", str(root), "--method", "copy", "--pred-out", str(out),
                 "--overwrite")
    assert result.exit_code == 0, result.stderr
    frames = ["00000", "00005", "00010", "00015", "00020"]
    with zipfile.ZipFile(out / "submission.zip") as zf:
        assert zf.namelist() == [f"Annotations/{video}/{f}.png" for f in frames]
    assert not list(out.glob("*.partial"))


# ----------------------------------------------------------------------------------------------------
# Input errors: one line, exit 2
# ----------------------------------------------------------------------------------------------------

def test_missing_sequence_and_frames_are_listed(small_root: Path, perfect_pred: Path) -> None:
    shutil.rmtree(perfect_pred / "car-shadow")
    for i in (3, 4):
        (perfect_pred / "motocross-jump" / f"{i:05d}.png").unlink()
    (perfect_pred / "motocross-jump" / f"{FRAMES - 1:05d}.png").unlink()  # last frame is not scored: fine
    line = assert_input_error(run("--pred", str(perfect_pred), "--gt", str(small_root)),
                              "car-shadow/ (no folder)", "motocross-jump/ (2 frames: 00003, 00004)")
    assert f"{FRAMES - 1:05d}" not in line


def test_predictions_one_folder_down_are_pointed_at(small_root: Path, perfect_pred: Path, tmp_path: Path) -> None:
    """Many codebases write results as RUN/Annotations/<sequence>/ (the YouTube-VOS layout) or RUN/<split>/:
    given RUN, the error listed every sequence as missing; now it names the folder that holds them."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "log.txt").write_text("")
    shutil.move(str(perfect_pred), run_dir / "Annotations")
    assert_input_error(run("--pred", str(run_dir), "--gt", str(small_root)),
                       f"predictions missing in {run_dir} (did you mean --pred {run_dir / 'Annotations'}?)")
    assert run("--pred", str(run_dir / "Annotations"), "--gt", str(small_root), "-q").exit_code == 0
    (run_dir / "Annotations" / SEQUENCES[0]).rename(run_dir / SEQUENCES[0])  # one sequence there: no guess
    assert "did you mean" not in assert_input_error(run("--pred", str(run_dir), "--gt", str(small_root)))


def test_unknown_id_in_prediction(small_root: Path, perfect_pred: Path) -> None:
    path = perfect_pred / "car-shadow" / "00005.png"
    mask = np.array(Image.open(path))
    mask[:5, :5] = 3
    _write(path, mask)
    assert_input_error(run("--pred", str(perfect_pred), "--gt", str(small_root)), str(path), "id(s) [3]")


def test_void_in_prediction(small_root: Path, perfect_pred: Path) -> None:
    path = perfect_pred / "motocross-jump" / "00002.png"
    mask = np.array(Image.open(path))
    mask[0, :] = 255
    _write(path, mask)
    assert_input_error(run("--pred", str(perfect_pred), "--gt", str(small_root)), str(path), "id 255")


def test_size_mismatch(small_root: Path, perfect_pred: Path) -> None:
    path = perfect_pred / "car-shadow" / "00001.png"
    mask = np.array(Image.open(path))[:240, :427]
    _write(path, mask)
    assert_input_error(run("--pred", str(perfect_pred), "--gt", str(small_root)), str(path), "427x240", "854x480")


def test_rgb_prediction(small_root: Path, perfect_pred: Path) -> None:
    path = perfect_pred / "car-shadow" / "00001.png"
    _write(path, np.array(Image.open(path)), mode="RGB")
    assert_input_error(run("--pred", str(perfect_pred), "--gt", str(small_root)), str(path), "palette")


def test_segmenting_flags_with_pred_are_refused(small_root: Path, perfect_pred: Path) -> None:
    """`--pred P --gt G --method flow` (or --size 288, --checkpoint, --pred-out) scored P and ignored the
    flag without a word: a user could believe they had scored the flow baseline or another size."""
    for flags, named in ((("--method", "flow"), "--method"), (("--size", "288"), "--size"),
                         (("--checkpoint", "x.safetensors", "--top-k", "20"), "--checkpoint, --top-k"),
                         (("--pred-out", "p"), "--pred-out"), (("--device", "cpu"), "--device")):
        assert_input_error(run("--pred", str(perfect_pred), "--gt", str(small_root), *flags), named,
                           "--pred scores existing predictions")
        assert_input_error(run("--dataset", "davis16-val", "--root", str(small_root), "--pred", str(perfect_pred),
                               *flags), named)
    assert not list(perfect_pred.glob("*.csv"))
    assert run("--pred", str(perfect_pred), "--gt", str(small_root), "-q").exit_code == 0


def test_gt_root_not_davis(perfect_pred: Path, tmp_path: Path) -> None:
    (tmp_path / "notdavis").mkdir()
    assert_input_error(run("--pred", str(perfect_pred), "--gt", str(tmp_path / "notdavis")),
                       "not a DAVIS layout", "Annotations")


def test_split_not_found(small_root: Path, perfect_pred: Path) -> None:
    assert_input_error(run("--pred", str(perfect_pred), "--gt", str(small_root), "--split", "test-dev"),
                       "ImageSets/2017/test-dev.txt", "ImageSets/2016/test-dev.txt")


def test_too_short_sequence(tennis: Path, perfect_pred: Path, tmp_path: Path) -> None:
    split = tmp_path / "t.txt"
    split.write_text("tennis\n")
    assert_input_error(run("--pred", str(perfect_pred), "--gt", str(tennis), "--split", str(split)),
                       "at least 3")


def test_a_sequence_too_short_to_score_stops_dataset_before_segmenting(tmp_path: Path) -> None:
    """A sequence annotated on its first frame only (a test-dev style GT) was found only after the whole
    split had been segmented; now before any sequence is, and no prediction is written."""
    names = [f"{i:05d}" for i in range(6)]
    root = _tiny_root(tmp_path / "d", names, seq="a")
    shutil.copytree(root / "JPEGImages" / "480p" / "a", root / "JPEGImages" / "480p" / "b")
    (root / "Annotations" / "480p" / "b").mkdir()
    shutil.copy(root / "Annotations" / "480p" / "a" / "00000.png", root / "Annotations" / "480p" / "b")
    (root / "ImageSets" / "2017" / "val.txt").write_text("a\nb\n")
    pred = tmp_path / "pred"
    result = run("--dataset", "davis17-val", "--root", str(root), "--method", "copy", "--pred-out", str(pred))
    assert_input_error(result, str(root / "Annotations" / "480p" / "b"), "1 annotated frame(s)", "at least 3")
    assert not pred.exists()


def test_missing_dataset_lists_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STMA_DAVIS17_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert_input_error(run("--dataset", "davis17-val", "--method", "copy"),
                       "--root (not given)", "$STMA_DAVIS17_ROOT (not set)", "data/DAVIS2017",
                       "davischallenge.org")


def test_usage_errors() -> None:
    assert_input_error(run(), "--pred", "--dataset")
    assert_input_error(run("--dataset", "davis99-val"), "unknown dataset")
    assert_input_error(run("--dataset", "davis16-val", "--split", "val", "--root", "/x"), "--split")


# ----------------------------------------------------------------------------------------------------
# GT ids with gaps, frame names and frame types (a new-user trial)
# ----------------------------------------------------------------------------------------------------

def _square(shape: tuple[int, int], top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top:top + side, left:left + side] = True
    return mask


def _tiny_root(root: Path, names: list[str], frame_ext: str = ".jpg", ids: tuple[int, int] = (1, 2),
               seq: str = "toy") -> Path:
    """A DAVIS 2017 root of one 48x64 sequence: object ids[0] a square moving right 2 px a frame from
    frame 0, object ids[1] a static square first annotated on frame 2 (a later object)."""
    images, annotations = root / "JPEGImages" / "480p" / seq, root / "Annotations" / "480p" / seq
    images.mkdir(parents=True)
    annotations.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for t, name in enumerate(names):
        frame = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(frame).save(images / f"{name}{frame_ext}")
        mask = np.zeros((48, 64), np.uint8)
        mask[_square(mask.shape, 4, 2 + 2 * t, 12)] = ids[0]
        if t >= 2:
            mask[_square(mask.shape, 30, 40, 10)] = ids[1]
        save_palette_png(mask, annotations / f"{name}.png")
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text(f"{seq}\n")
    return root


def _copy_eval(root: Path, pred: Path, *extra: str):
    result = run("--dataset", "davis17-val", "--root", str(root), "--method", "copy", "--pred-out", str(pred),
                 "--json", *extra)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def test_gt_ids_with_gaps_score_only_present_objects(tmp_path: Path) -> None:
    """GT ids 3 and 7 are two objects (ids 1, 2, 4, 5, 6 used to be scored as perfect objects: 97.1 vs
    89.8 in the trial); the numbers equal those of the same masks with ids 1 and 2, the rows keep the
    real ids, and one warning line (kept with --quiet) says the official toolkit would differ."""
    names = [f"{i:05d}" for i in range(6)]
    gap, _ = _copy_eval(_tiny_root(tmp_path / "gap", names, ids=(3, 7)), tmp_path / "pgap", "-q")
    plain, plain_err = _copy_eval(_tiny_root(tmp_path / "plain", names, ids=(1, 2)), tmp_path / "pplain", "-q")
    assert [o["object"] for o in gap["per_object"]] == [3, 7]
    assert gap["objects"] == 2 and gap["global"] == plain["global"]
    # copy of the moving square: IoU 10/14, 8/16, 6/18, 4/20 on scored frames 1..4; the static one is exact
    j_moving = np.mean([10 * 12 / (14 * 12), 8 * 12 / (16 * 12), 6 * 12 / (18 * 12), 4 * 12 / (20 * 12)])
    assert gap["global"]["J-Mean"] == pytest.approx((j_moving + 1.0) / 2, abs=1e-12)
    late = "toy: GT object(s) {} (from frame 00002) first appear after the first frame"  # see the next test
    assert len(gap["warnings"]) == 2 and gap["warnings"][0].startswith("toy: GT object ids [3, 7]")
    assert gap["warnings"][1].startswith(late.format(7))
    assert len(plain["warnings"]) == 1 and plain["warnings"][0].startswith(late.format(2))
    assert plain_err.strip().splitlines() == [f"warning: {plain['warnings'][0]}"]

    table = run("--pred", str(tmp_path / "pgap"), "--gt", str(tmp_path / "gap"), "-q")
    assert table.exit_code == 0 and "toy_3" in table.stdout and "toy_7" in table.stdout and "toy_1" not in table.stdout
    lines = table.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("warning: toy: GT object ids [3, 7]"), table.stderr
    assert "1, 2, 4, 5, 6" in lines[0] and "official DAVIS toolkit" in lines[0]
    with (tmp_path / "pgap" / "per-sequence_results-val.csv").open() as fh:
        assert [r[0] for r in list(csv.reader(fh))[1:]] == ["toy_3", "toy_7"]


def test_objects_first_appearing_after_the_first_frame_are_flagged_as_unofficial(tmp_path: Path) -> None:
    """The official DAVIS semi-supervised protocol gives and scores only the first frame's objects (its
    toolkit stops on a prediction holding another id). An object that first appears on a later GT frame
    used to be given there and scored without a word, numbers with no official counterpart; now one
    warning line per sequence names it (on stderr, kept with --quiet, and in --json). An object that
    is on the first frame, leaves and comes back is the official case: no warning."""
    names = [f"{i:05d}" for i in range(6)]
    late, late_err = _copy_eval(_tiny_root(tmp_path / "late", names), tmp_path / "plate", "-q")
    assert [o["object"] for o in late["per_object"]] == [1, 2] and late["per_object"][1]["J-Mean"] == 1.0
    assert late["warnings"] == ["toy: GT object(s) 2 (from frame 00002) first appear after the first frame; "
                                "scored here (`stma eval --dataset` gives each object on its first annotated "
                                "frame), but the official DAVIS semi-supervised protocol gives and scores only "
                                "the first frame's objects (its toolkit stops on predictions with these ids)"]
    assert late_err.strip() == f"warning: {late['warnings'][0]}"

    root = _tiny_root(tmp_path / "back", names)
    annotations = root / "Annotations" / "480p" / "toy"
    for t, name in enumerate(names):  # object 2 on frames 0-1, gone on 2-3, back on 4-5
        mask = np.array(Image.open(annotations / f"{name}.png"))
        mask[mask == 2] = 0
        if t not in (2, 3):
            mask[_square(mask.shape, 30, 40, 10)] = 2
        save_palette_png(mask, annotations / f"{name}.png")
    back, back_err = _copy_eval(root, tmp_path / "pback", "-q")
    assert "warnings" not in back and back_err == ""
    assert [o["object"] for o in back["per_object"]] == [1, 2]
    # the copy keeps object 2 on frames 2-3 where the GT has none: scored frames 1..4 give J 1, 0, 0, 1
    assert back["per_object"][1]["J-Mean"] == 0.5


def test_unpadded_frame_names_and_png_frames(tmp_path: Path) -> None:
    """Frames 0.jpg..11.jpg are read and scored in natural order (plain sorting fed 0, 1, 10, 11, 2, ...:
    the later object was given on frame 10 and frame 11 was scored as if it came before 2), and a dataset
    of PNG frames is segmented like one of JPEGs: all three score exactly alike."""
    padded, _ = _copy_eval(_tiny_root(tmp_path / "padded", [f"{i:05d}" for i in range(12)]), tmp_path / "p1", "-q")
    unpadded, _ = _copy_eval(_tiny_root(tmp_path / "unpadded", [str(i) for i in range(12)]), tmp_path / "p2", "-q")
    png, _ = _copy_eval(_tiny_root(tmp_path / "png", [f"{i:05d}" for i in range(12)], ".png"), tmp_path / "p3", "-q")
    assert unpadded["global"] == padded["global"] == png["global"]
    assert unpadded["per_object"][1]["J-Mean"] == 1.0  # the later object, given on frame 2, copied exactly
    assert padded["global"]["J-Decay"] > 0.2  # the moving object's decay: the frame order matters
    later = np.array(Image.open(tmp_path / "p2" / "toy" / "3.png"))
    assert set(np.unique(later)) == {0, 1, 2}


def test_missing_frame_images_are_reported_before_segmenting(tmp_path: Path) -> None:
    """A missing first frame was segmented without its annotation (every prediction empty, score 0, exit 0);
    a missing middle frame surfaced after the whole dataset was segmented, blaming the predictions."""
    names = [f"{i:05d}" for i in range(6)]
    for missing in (["00000"], ["00002", "00004"]):
        root = _tiny_root(tmp_path / f"root{missing[0]}", names)
        for name in missing:
            (root / "JPEGImages" / "480p" / "toy" / f"{name}.jpg").unlink()
        pred = tmp_path / f"pred{missing[0]}"
        result = run("--dataset", "davis17-val", "--root", str(root), "--method", "copy", "--pred-out", str(pred))
        assert_input_error(result, str(root / "JPEGImages" / "480p" / "toy" / f"{missing[0]}.jpg"),
                           f"{len(missing)} annotated frame(s)", "re-extract")
        assert not pred.exists()  # nothing was segmented
    root = _tiny_root(tmp_path / "noframes", names)
    for jpg in (root / "JPEGImages" / "480p" / "toy").iterdir():
        jpg.rename(jpg.with_suffix(".gif"))
    result = run("--dataset", "davis17-val", "--root", str(root), "--method", "copy", "--pred-out",
                 str(tmp_path / "p"))
    assert_input_error(result, "no frame images", "jpg/png/webp/tif/bmp", "toy")


def test_report_with_unicode_sequence_name_prints_no_python_warning(tmp_path: Path) -> None:
    """A sequence named chién-犬: matplotlib's raw 'UserWarning: Glyph 29356 ... missing from font' (with
    its source line) reached stderr; the report is still written, stderr holds only our own lines."""
    root = _tiny_root(tmp_path / "uni", [f"{i:05d}" for i in range(4)], seq="chién-犬")
    pred = tmp_path / "pred"
    report = tmp_path / "report"
    with warnings.catch_warnings(record=True) as caught:  # pytest would otherwise capture them itself
        warnings.simplefilter("always")
        result = run("--dataset", "davis17-val", "--root", str(root), "--method", "copy", "--pred-out", str(pred),
                     "--report", str(report))
    assert result.exit_code == 0, result.stderr
    assert not [w for w in caught if "Glyph" in str(w.message)]
    late = "warning: chién-犬: GT object(s) 2 (from frame 00002)"  # ours: the fixture's object 2 starts on frame 2
    stderr = "\n".join(line for line in result.stderr.splitlines() if not line.startswith(late))
    assert "Warning" not in stderr and "warning" not in stderr, result.stderr
    assert (report / "index.html").is_file() and (report / "assets" / "chién-犬_curves.png").is_file()


def test_report_says_where_its_scores_differ_from_the_official_toolkit(small_root: Path, tmp_path: Path) -> None:
    """The warnings (GT ids not 1..n, an object first appearing after the first frame) reached the terminal
    and --json, but the HTML report, which calls its numbers the official protocol's, showed none of them."""
    from html import escape

    root = _tiny_root(tmp_path / "gap", [f"{i:05d}" for i in range(6)], ids=(3, 7))
    result = run("--dataset", "davis17-val", "--root", str(root), "--method", "copy", "--pred-out",
                 str(tmp_path / "p"), "--report", str(tmp_path / "r"), "--json", "-q")
    assert result.exit_code == 0, result.stderr
    lines = json.loads(result.stdout)["warnings"]
    assert len(lines) == 2
    page = (tmp_path / "r" / "index.html").read_text(encoding="utf-8")
    assert "differ from the official toolkit" in page and all(f"<li>{escape(line)}</li>" in page for line in lines)
    plain = run("--dataset", "davis16-val", "--root", str(small_root), "--method", "copy", "--pred-out",
                str(tmp_path / "p2"), "--report", str(tmp_path / "r2"), "-q")
    assert plain.exit_code == 0 and plain.stderr == "", plain.stderr
    assert "differ from the official" not in (tmp_path / "r2" / "index.html").read_text(encoding="utf-8")


def test_training_curves_of_a_unicode_run_folder_print_no_python_warning(tmp_path: Path, capfd) -> None:
    from stma_core.training.curves import write_curves

    run_dir = tmp_path / "犬-run"
    run_dir.mkdir()
    (run_dir / "log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / s, "lr": 1e-3}) + "\n"
                                               for s in range(1, 5)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert write_curves(run_dir / "log.jsonl", run_dir / "curves.png")
    assert not [w for w in caught if "Glyph" in str(w.message)]
    assert "Warning" not in capfd.readouterr().err and (run_dir / "curves.png").stat().st_size > 0


def test_csvs_are_replaced_in_one_rename_never_rewritten_in_place(small_root: Path, perfect_pred: Path,
                                                                   tmp_path: Path) -> None:
    """The CSVs were truncated and rewritten in place: a script reading them while a rerun wrote them (or a
    run stopped halfway) saw a half-written or empty file. Now each is a new file renamed over the old one:
    a reader that opened the old one still reads it whole, and no temporary file is left."""
    out = tmp_path / "csv"
    assert run("--pred", str(perfect_pred), "--gt", str(small_root), "--out", str(out), "-q").exit_code == 0
    before = {p.name: p.read_text() for p in out.iterdir()}
    readers = {name: (out / name).open() for name in before}  # a script in the middle of reading them
    try:
        _write(perfect_pred / SEQUENCES[0] / "00005.png", np.zeros((480, 854), np.uint8))  # another score
        again = run("--pred", str(perfect_pred), "--gt", str(small_root), "--out", str(out), "--json", "-q")
        assert again.exit_code == 0, again.stderr
        assert {name: fh.read() for name, fh in readers.items()} == before  # the old files, whole
    finally:
        for fh in readers.values():
            fh.close()
    after = {p.name: p.read_text() for p in out.iterdir()}
    assert sorted(after) == sorted(before) and after != before  # no .tmp left; new scores in place
    assert json.loads(again.stdout)["global"]["J-Mean"] < 1.0


def test_predictions_are_never_written_over_the_datasets_frames(tmp_path: Path) -> None:
    """--pred-out given as DAVIS JPEGImages/480p said "already holds predictions (toy); pass --overwrite", and
    --overwrite replaced each sequence's JPEG frames with prediction PNGs. YouTube-VOS frame folders the same.
    Now one error line, and the frames are untouched."""
    names = [f"{i:05d}" for i in range(6)]
    davis = _tiny_root(tmp_path / "davis", names)
    frames = davis / "JPEGImages"
    before = {p: p.read_bytes() for p in frames.rglob("*.jpg")}
    for target in (frames / "480p", frames / "480p" / "toy", frames):
        result = run("--dataset", "davis17-val", "--root", str(davis), "--method", "copy", "--pred-out", str(target),
                     "--overwrite")
        assert_input_error(result, f"--pred-out would write predictions into {frames}", "own frames")
    root, _ = _ytvos_root(tmp_path)
    before.update({p: p.read_bytes() for p in (root / "valid" / "JPEGImages").rglob("*.jpg")})
    result = run("--dataset", "ytvos-valid", "--root", str(root), "--method", "copy", "--pred-out",
                 str(root / "valid" / "JPEGImages"), "--overwrite")
    assert_input_error(result, str(root / "valid" / "JPEGImages"), "own frames")
    assert {p: p.read_bytes() for p in before} == before
    assert not [*frames.rglob("*.png"), *(root / "valid" / "JPEGImages").rglob("*.png")]  # no prediction written


def test_eval_json_has_the_keys_the_readme_documents(tmp_path: Path) -> None:
    """The README gave eval's --json only as `{"error": …}`; a script had to guess the rest. The keys it now
    documents are the ones a scored run prints."""
    davis = _tiny_root(tmp_path / "davis", [f"{i:05d}" for i in range(6)])
    payload, _ = _copy_eval(davis, tmp_path / "pred", "-q")
    documented = {"split", "gt_root", "pred_dir", "sequences", "objects", "global", "per_object", "seconds", "csv",
                  "warnings", "compare", "report", "dataset", "method"}
    assert {"split", "global", "per_object", "csv", "dataset", "method"} <= set(payload) <= documented
    assert set(payload["global"]) == {"J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"}
    assert set(payload["per_object"][0]) == {"sequence", "object", "frames", "J-Mean", "J-Recall", "J-Decay",
                                             "F-Mean", "F-Recall", "F-Decay"}
    assert set(payload["csv"]) == {"global", "per_sequence"} and 0 <= payload["global"]["J-Mean"] <= 1


def test_report_overwrite_never_replaces_what_the_run_reads_inside_its_folders(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`--report ROOT/Annotations/480p --overwrite` scored, then replaced every sequence's ground truth with the
    report (as did `--report PRED/toy` the toy predictions, `--report ROOT/ImageSets` the split), and with the
    dataset root found through $STMA_DAVIS17_ROOT, `--report ROOT --overwrite` replaced the whole dataset: only
    folders given by a flag were protected, and only when the report held them. Each is now one error line
    before anything is scored; a report beside the predictions (`--report PRED/report`) is still replaced."""
    names = [f"{i:05d}" for i in range(6)]
    root = _tiny_root(tmp_path / "davis", names)
    pred = tmp_path / "pred"
    _copy_eval(root, pred, "-q")
    snapshot = {p: p.read_bytes() for p in [*root.rglob("*"), *pred.rglob("*")] if p.is_file()}
    monkeypatch.chdir(tmp_path)
    for report, named in (("davis/Annotations/480p", f"ground truth {root / 'Annotations' / '480p' / 'toy'}"),
                          ("davis/JPEGImages/480p/toy/", f"frames {root / 'JPEGImages' / '480p' / 'toy'}"),
                          ("davis/ImageSets", f"split file {root / 'ImageSets' / '2017' / 'val.txt'}"),
                          ("pred/toy", f"--pred {pred / 'toy'}"), ("pred/../pred/./toy", f"--pred {pred / 'toy'}")):
        result = run("--pred", str(pred), "--gt", str(root), "--report", report, "--overwrite")
        assert_input_error(result, f"{Path(report)}: is or holds {named}, which --overwrite would replace with the "
                                   "report; pass --report with a folder of its own")
    result = run("--dataset", "davis17-val", "--root", str(root), "--method", "copy", "--pred-out", str(pred),
                 "--overwrite", "--report", "pred/toy")
    assert_input_error(result, f"pred/toy: is or holds --pred-out {pred / 'toy'}, which --overwrite")
    monkeypatch.setenv("STMA_DAVIS17_ROOT", str(root))
    result = run("--dataset", "davis17-val", "--method", "copy", "--pred-out", str(pred), "--overwrite",
                 "--report", "davis")
    assert_input_error(result, f"davis: is or holds dataset root {root}, which --overwrite would replace")
    assert {p: p.read_bytes() for p in snapshot} == snapshot
    assert sorted(p.name for p in tmp_path.iterdir()) == ["davis", "pred"]  # nothing scored, written or replaced
    (pred / "report").mkdir()
    result = run("--pred", str(pred), "--gt", str(root), "--report", "pred/report", "--overwrite", "-q")
    assert result.exit_code == 0, result.stderr
    assert (pred / "report" / "index.html").is_file()


def test_pred_out_overwrite_never_replaces_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`cd PRED/toy; stma eval --dataset ... --pred-out .. --overwrite` replaced the folder the shell is in (what
    the user kept there lost) and then failed with '..: output folder is not writable (No such file or
    directory)'. It is now refused with one line before anything is segmented."""
    root = _tiny_root(tmp_path / "davis", [f"{i:05d}" for i in range(6)])
    pred = tmp_path / "pred"
    _copy_eval(root, pred, "-q")
    (pred / "toy" / "notes.txt").write_text("mine")
    monkeypatch.chdir(pred / "toy")
    result = run("--dataset", "davis17-val", "--root", str(root), "--method", "copy", "--pred-out", "..",
                 "--overwrite")
    assert_input_error(result, "../toy: is or holds the current folder, which --overwrite would replace with this "
                               "run's predictions; run stma from outside it")
    assert (pred / "toy" / "notes.txt").read_text() == "mine"
    monkeypatch.chdir(pred)  # from the predictions folder itself: nothing of it is replaced but the sequences
    payload, _ = _copy_eval(root, Path("."), "-q", "--overwrite")
    assert payload["global"]["J-Mean"] > 0.5 and not (pred / "toy" / "notes.txt").exists()


def test_a_report_folder_that_the_run_fills_first_is_refused_before_anything(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """`--out X --report X` (X new) scored, wrote the CSVs into X and then failed 'X: report folder already exists;
    pass --overwrite to replace it', which --overwrite then refused; `--dataset ... --pred-out P --report P` did so
    after segmenting the whole dataset. A report folder that is or holds --out or --pred-out is now one error line
    before anything is segmented or scored; one inside them (X/report) is fine."""
    root = _tiny_root(tmp_path / "davis", [f"{i:05d}" for i in range(6)])
    pred = tmp_path / "pred"
    _copy_eval(root, pred, "-q")
    monkeypatch.chdir(tmp_path)
    for out, report in (("X", "X"), ("X/csv", "X/"), ("./X/csv", "X/../X")):
        for extra in ((), ("--overwrite",)):
            result = run("--pred", "pred", "--gt", "davis", "--out", out, "--report", report, *extra)
            assert_input_error(result, f"{Path(report)}: is or holds --out {Path(out)}, which this run writes before "
                                       "the report; pass --report with a folder of its own")
    result = run("--dataset", "davis17-val", "--root", "davis", "--method", "copy", "--pred-out", "P", "--report", "P")
    assert_input_error(result, "P: is or holds --pred-out P, which this run writes before the report")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["davis", "pred"]
    result = run("--pred", "pred", "--gt", "davis", "--out", "X", "--report", "X/report", "-q")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "X").iterdir()) == ["global_results-val.csv",
                                                                  "per-sequence_results-val.csv", "report"]
