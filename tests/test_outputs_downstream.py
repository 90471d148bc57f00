"""`stma segment` outputs as other tools and scripts take them: videos that play (or no video at all),
machine-readable summaries that say which object is which."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import EXAMPLES
from stma_core.io.writers import FrameEncoder, decode_rle

CLI = [sys.executable, "-m", "stma_cli.app"]
VIDEO, MASK = EXAMPLES / "car-shadow.mp4", EXAMPLES / "car-shadow_mask.png"


def test_an_encoder_that_cannot_finish_its_file_raises_with_ffmpegs_reason() -> None:
    """/dev/full takes the open and refuses every byte, as a full disk does: an OSError that says so,
    not a silent return (imageio-ffmpeg's writer ignored ffmpeg's exit status)."""
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full (Linux) to stand in for a full disk")
    encoder = FrameEncoder(Path("/dev/full"), (64, 48), 24.0, output_params=["-f", "mp4"])
    try:
        with pytest.raises(OSError, match=r"ffmpeg could not write /dev/full \(.*No space left on device"):
            for _ in range(5):
                encoder.send(np.zeros((48, 64, 3), np.uint8))
            encoder.finish()
    finally:
        encoder.close()


@pytest.mark.skipif(sys.platform == "win32", reason="file size limits (RLIMIT_FSIZE) are POSIX")
def test_a_video_output_cut_off_by_a_file_size_limit_fails_the_video(tmp_path: Path) -> None:
    """A file size limit (`ulimit -f`, like a full disk) stopped ffmpeg before the mp4's index was written:
    the run said "done", exited 0 and kept a 150000-byte overlay.mp4 that no player opens, and ffmpeg's
    own lines reached the terminal. Now the video fails with one error line naming the file and the cause,
    exit 2, and nothing of it is kept."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    out = tmp_path / "out"
    proc = subprocess.run([*CLI, "segment", str(VIDEO), "--mask", str(MASK), "--method", "copy", "-o", str(out),
                           "-f", "png", "-f", "overlay", "--json"], capture_output=True, text=True, preexec_fn=limit,
                          cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 2, proc.stderr
    video = json.loads(proc.stdout)["videos"][0]
    assert video["status"] == "failed" and video["outputs"] == []
    expected = (f"error: {out}: writing outputs failed (ffmpeg could not write {out / 'car-shadow.overlay.mp4'} "
                "(stopped by signal SIGXFSZ)); check free space and permissions of --out")
    assert proc.stderr.splitlines() == [expected]
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.skipif(sys.platform == "win32", reason="file size limits (RLIMIT_FSIZE) are POSIX")
def test_an_rle_json_cut_off_by_a_file_size_limit_is_an_output_error(tmp_path: Path) -> None:
    """Python's own writes hitting the limit: the error of the RLE JSON's write was replaced by the same
    OSError again while its buffered rest was flushed on the way out, so the user read "segmentation failed
    (OSError: [Errno 27] File too large); rerun, or report a bug" (exit 1). Now it is the output error."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    out = tmp_path / "out"
    proc = subprocess.run([*CLI, "segment", str(VIDEO), "--mask", str(MASK), "--method", "copy", "-o", str(out),
                           "-f", "rle"], capture_output=True, text=True, preexec_fn=limit, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [f"error: {out}: writing outputs failed ([Errno 27] File too large); "
                                        "check free space and permissions of --out"]
    assert not out.exists() or list(out.iterdir()) == []


@pytest.fixture(scope="module")
def small_frames(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """The example clip's first 6 frames at 214x120 as a frame folder named like a DAVIS clip cut at frame 10
    (00010.jpg ...), and its car mask at that size."""
    import imageio_ffmpeg
    from PIL import Image

    root = tmp_path_factory.mktemp("small")
    folder = root / "clip"
    folder.mkdir()
    reader = imageio_ffmpeg.read_frames(str(VIDEO))
    width, height = next(reader)["size"]
    for i, raw in zip(range(6), reader):
        frame = np.frombuffer(raw, np.uint8).reshape(height, width, 3)
        Image.fromarray(frame).resize((214, 120), Image.BILINEAR).save(folder / f"{i + 10:05d}.jpg", quality=95)
    reader.close()
    car = np.array(Image.open(MASK).resize((214, 120), Image.NEAREST))
    return folder, car


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools' own, numpy 2
def test_user_ids_given_on_different_frames_are_the_ids_of_every_output(tmp_path: Path, small_frames) -> None:
    """Ids 3 (on the first frame) and 7 (first given on a later frame) stay 3 and 7 in the palette PNGs, the
    RLE JSON (decoded with pycocotools as the README says), the per-object outputs and the --json summary,
    whose object_ids say so."""
    from PIL import Image
    from pycocotools import mask as coco

    from stma_core.io.writers import save_palette_png

    folder, car = small_frames
    columns = np.flatnonzero(car.any(0))
    middle = (columns.min() + columns.max()) // 2
    left, right = car.copy(), car.copy()
    left[:, middle:], right[:, :middle] = 0, 0
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    save_palette_png(np.where(left > 0, 3, 0).astype(np.uint8), annotations / "00010.png")
    save_palette_png(np.where(right > 0, 7, 0).astype(np.uint8), annotations / "00013.png")
    out = tmp_path / "out"
    proc = subprocess.run([*CLI, "segment", str(folder), "--mask-dir", str(annotations), "-o", str(out), "-f", "png",
                           "-f", "rle", "-f", "matte", "-f", "prob-npz", "--json", "-q"], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    video = json.loads(proc.stdout)["videos"][0]
    assert (video["objects"], video["object_ids"], "id_map" in video) == (2, [3, 7], False)
    rle = json.loads((out / "clip.rle.json").read_text())
    names = [f"{i:05d}" for i in range(10, 16)]
    assert [f["frame"] for f in rle["frames"]] == names
    for entry in rle["frames"]:
        png = Image.open(out / "clip" / f"{entry['frame']}.png")
        assert png.mode == "P" and png.size == (214, 120) == (rle["width"], rle["height"])
        ids = np.array(png)
        assert set(np.unique(ids)) - {0} <= {3, 7}
        assert set(entry["objects"]) == {str(i) for i in np.unique(ids) if i}
        for key, obj in entry["objects"].items():
            assert obj["size"] == [120, 214] and isinstance(obj["counts"], str)
            assert np.array_equal(coco.decode({"size": obj["size"], "counts": obj["counts"].encode()}),
                                  (ids == int(key)).astype(np.uint8))
        if entry["frame"] >= "00013":
            assert set(entry["objects"]) == {"3", "7"}
        soft = np.load(out / "clip.prob-npz" / f"{entry['frame']}.npz")
        assert soft["ids"].tolist() == [3, 7]
    assert "7" not in rle["frames"][0]["objects"]  # given on 00013, forward from 00010: absent before it
    assert sorted(p.name for p in (out / "clip.matte").iterdir()) == ["3", "7"]


def test_json_says_which_output_id_each_instance_id_became_also_with_quiet(tmp_path: Path, small_frames) -> None:
    """A 16-bit instance mask (ids 300 and 1000) is renumbered 1, 2 for the palette outputs; the mapping was only
    a note, which --quiet hides, so a script had no way to tell which RLE object was instance 1000. --json
    now carries it."""
    from PIL import Image

    folder, car = small_frames
    columns = np.flatnonzero(car.any(0))
    middle = (columns.min() + columns.max()) // 2
    instances = np.zeros(car.shape, np.uint16)
    instances[(car > 0) & (np.arange(car.shape[1]) < middle)] = 1000
    instances[(car > 0) & (np.arange(car.shape[1]) >= middle)] = 300
    mask = tmp_path / "instances.png"
    Image.fromarray(instances).save(mask)
    out = tmp_path / "out"
    proc = subprocess.run([*CLI, "segment", str(folder), "--mask", str(mask), "--method", "copy", "-o", str(out),
                           "-f", "rle", "--json", "-q"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    video = json.loads(proc.stdout)["videos"][0]
    assert video["object_ids"] == [1, 2] and video["id_map"] == {"gray 300": 1, "gray 1000": 2}
    first = json.loads((out / "clip.rle.json").read_text())["frames"][0]["objects"]
    assert np.array_equal(decode_rle(first, 120, 214) == video["id_map"]["gray 1000"], instances == 1000)


def test_json_entries_carry_the_videos_warnings(tmp_path: Path, small_frames) -> None:
    """`stma eval --json` has a warnings list; `stma segment --json` had none, so a script never learnt that its
    mask was resized or that an object is missing from some frames (direction both). Each video's entry now
    lists its warning lines, the same as stderr got."""
    folder, _ = small_frames
    out = tmp_path / "out"
    proc = subprocess.run([*CLI, "segment", str(folder), "--mask", str(MASK), "--method", "copy", "-o", str(out),
                           "--json", "-q"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    video = json.loads(proc.stdout)["videos"][0]
    assert video["warnings"] == [f"{MASK}: mask is 854x480, resized (nearest) to the video's 214x120"]
    assert proc.stderr.splitlines() == [f"warning: {line}" for line in video["warnings"]]
    again = subprocess.run([*CLI, "segment", str(folder), "--mask", str(MASK), "--method", "copy", "-o", str(out),
                            "--json", "-q"], capture_output=True, text=True, timeout=300)  # refused: outputs exist
    assert again.returncode == 2
    refused = json.loads(again.stdout)["videos"][0]
    assert refused["status"] == "failed" and refused["object_ids"] == [] and "warnings" not in refused


def test_an_annotation_folder_of_every_frame_warns_that_nothing_is_segmented(tmp_path: Path, small_frames) -> None:
    """`stma segment JPEGImages/480p --mask-dir Annotations/480p` on a DAVIS-layout folder (ground truth on every
    frame) took each mask as a correction: the outputs were the ground truth itself, scored 100% by eval, with
    no word. Now a warning says so and how to segment; one frame left unannotated is a real run, no warning."""
    from stma_core.io.writers import save_palette_png

    folder, car = small_frames
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    for i in range(10, 16):
        save_palette_png(np.roll(car, 2 * (i - 10), axis=1), annotations / f"{i:05d}.png")
    out = tmp_path / "out"
    proc = subprocess.run([*CLI, "segment", str(folder), "--mask-dir", str(annotations), "--method", "copy",
                           "-o", str(out), "--json", "-q"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    expected = (f"{annotations}: annotates every frame segmented (6 of 6), and a mask of an object already given "
                "replaces its prediction, so the outputs are these masks, not segmentation (e.g. a DAVIS ground-truth "
                "folder); to segment, give only the masks of the frames where objects first appear (for this video "
                f"alone: --mask {annotations / '00010.png'})")
    assert json.loads(proc.stdout)["videos"][0]["warnings"] == [expected]
    assert proc.stderr.splitlines() == [f"warning: {expected}"]
    (annotations / "00015.png").unlink()
    proc = subprocess.run([*CLI, "segment", str(folder), "--mask-dir", str(annotations), "--method", "copy",
                           "-o", str(tmp_path / "out2"), "--json", "-q"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "" and "warnings" not in json.loads(proc.stdout)["videos"][0]


def test_a_file_given_as_mask_dir_says_it_is_a_file(tmp_path: Path, small_frames) -> None:
    """`--mask-dir out/clip.rle.json` (or a mask PNG) said "annotation folder not found" of a file that is there."""
    folder, _ = small_frames
    proc = subprocess.run([*CLI, "segment", str(folder), "--mask-dir", str(MASK), "--method", "copy",
                           "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr == (f"error: {MASK}: is a file, not an annotation folder; pass --mask-dir with a folder of "
                           "<frame>.png masks (one first-frame mask goes to --mask)\n")


def test_segmenting_the_current_folder_names_outputs_after_it(tmp_path: Path, small_frames) -> None:
    """`cd frames && stma segment . --mask m.png -o ~/results --overwrite`: `.` has no name, so the png output was
    --out itself: the run replaced the whole results folder (every earlier result in it gone) with this video's
    PNGs, then failed on `.rle.json`. Outputs are now named after the folder, as for `stma segment ../clip`."""
    folder, _ = small_frames
    results = tmp_path / "results"
    results.mkdir()
    (results / "earlier.rle.json").write_text("{}")
    proc = subprocess.run([*CLI, "segment", ".", "--mask", str(MASK), "--method", "copy", "-o", str(results),
                           "-f", "png", "-f", "rle", "--overwrite", "--json", "-q"], capture_output=True, text=True,
                          cwd=folder, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["videos"][0]["name"] == "clip"
    assert sorted(p.name for p in results.iterdir()) == ["clip", "clip.rle.json", "earlier.rle.json"]
    assert len(list((results / "clip").iterdir())) == 6
    sub = folder / "sub"  # `..` from a sub-folder is the same folder, by the same name
    sub.mkdir()
    try:
        proc = subprocess.run([*CLI, "segment", "..", "--mask", str(MASK), "--method", "copy", "-o",
                               str(tmp_path / "again"), "-q"], capture_output=True, text=True, cwd=sub, timeout=300)
    finally:
        sub.rmdir()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(tmp_path / "again" / "clip")]


def test_overwrite_never_replaces_the_current_folder(tmp_path: Path, small_frames) -> None:
    """From inside a video's png output (`cd out/clip`), `stma segment CLIP -o .. --overwrite` replaced the
    current folder under the shell; now refused with one line, like an output that would replace the input."""
    folder, _ = small_frames
    out = tmp_path / "out"
    first = subprocess.run([*CLI, "segment", str(folder), "--mask", str(MASK), "--method", "copy", "-o", str(out),
                            "-q"], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    (out / "clip" / "notes.txt").write_text("mine")
    proc = subprocess.run([*CLI, "segment", str(folder), "--mask", str(MASK), "--method", "copy", "-o", "..",
                           "--overwrite", "-q"], capture_output=True, text=True, cwd=out / "clip", timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == "error: ../clip: the png output would replace the current folder; choose another --out"
    assert (out / "clip" / "notes.txt").read_text() == "mine"


def test_the_current_folder_reached_through_a_link_is_named_as_the_shell_names_it(tmp_path: Path,
                                                                                 small_frames) -> None:
    """`cd clips/mylink && stma segment .` (mylink a link to a frame folder elsewhere) named the outputs after the
    link's target and looked for its mask beside the target: 'no mask given and no clip.png beside .', while
    `stma segment mylink` from clips/ found clips/mylink.png. `.` is now the folder the shell is in ($PWD), as
    `pwd` shows it."""
    folder, mask = small_frames
    from PIL import Image

    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "mylink").symlink_to(folder, target_is_directory=True)
    Image.fromarray(mask).save(clips / "mylink.png")
    env = {**os.environ, "PWD": str(clips / "mylink")}  # what a shell's `cd clips/mylink` sets
    proc = subprocess.run([*CLI, "segment", ".", "--method", "copy", "-o", str(tmp_path / "out"), "--json", "-q"],
                          capture_output=True, text=True, cwd=clips / "mylink", env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["videos"][0]["name"] == "mylink"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["mylink"]
    env["PWD"] = str(tmp_path)  # a stale $PWD (another folder) is not taken: the folder's own name
    proc = subprocess.run([*CLI, "segment", ".", "--mask", str(clips / "mylink.png"), "--method", "copy", "-o",
                           str(tmp_path / "out2"), "-q"], capture_output=True, text=True, cwd=clips / "mylink",
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(tmp_path / "out2" / folder.name)]


def test_overwrite_never_replaces_the_folder_holding_a_linked_mask_or_input(tmp_path: Path) -> None:
    """`stma segment clip.mp4 --mask out/clip/first.png -o out --overwrite`, with first.png a link to the mask kept
    elsewhere, replaced out/clip, the link with it: only the link's target was compared with the outputs. The
    mask and the input as given are protected too: one error line, nothing replaced."""
    out = tmp_path / "out"
    (out / "car-shadow").mkdir(parents=True)
    (out / "car-shadow" / "first.png").symlink_to(MASK)
    (out / "car-shadow" / "car-shadow.mp4").symlink_to(VIDEO)
    for args, what in (([str(VIDEO), "--mask", str(out / "car-shadow" / "first.png")],
                        f"mask {out / 'car-shadow' / 'first.png'}"),
                       ([str(out / "car-shadow" / "car-shadow.mp4"), "--mask", str(MASK)],
                        f"input {out / 'car-shadow' / 'car-shadow.mp4'}")):
        proc = subprocess.run([*CLI, "segment", *args, "--method", "copy", "-o", str(out), "--overwrite", "--end", "2",
                               "-q"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr == (f"error: {out / 'car-shadow'}: the png output would replace the {what}; "
                               "choose another --out\n")
    assert sorted(p.name for p in (out / "car-shadow").iterdir()) == ["car-shadow.mp4", "first.png"]
