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
from stma_core.io.writers import FrameEncoder

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
