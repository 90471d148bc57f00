"""Regenerates the example clip: DAVIS 2016 `car-shadow` (val) as an H.264 mp4 plus its first-frame mask.

    python examples/make_example.py [--data ../shared/data]

Frames are the original 854x480 DAVIS JPEGs, encoded at 24 fps with libx264 (CRF 18, yuv420p);
the mask is DAVIS's own 00000.png annotation re-saved as a DAVIS palette PNG (id 1 = the car).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image

from stma_core.io.writers import save_palette_png

SEQUENCE = "car-shadow"
FPS = 24
CRF = 18
HERE = Path(__file__).resolve().parent


def default_data() -> Path:
    return Path(os.environ.get("STMA_SHARED_DATA", HERE.parents[1] / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data(), help="the shared data folder")
    args = parser.parse_args()
    frames_dir = args.data / "davis2016" / "JPEGImages" / "480p" / SEQUENCE
    mask_path = args.data / "davis2016" / "Annotations" / "480p" / SEQUENCE / "00000.png"
    frames = sorted(frames_dir.glob("*.jpg"))
    if not frames or not mask_path.is_file():
        raise SystemExit(f"{frames_dir}: DAVIS 2016 {SEQUENCE} not found; pass --data with the shared data folder")
    width, height = Image.open(frames[0]).size
    video = HERE / f"{SEQUENCE}.mp4"
    writer = imageio_ffmpeg.write_frames(
        str(video), (width, height), fps=FPS, quality=None, macro_block_size=1, ffmpeg_log_level="error",
        output_params=["-crf", str(CRF), "-preset", "slow", "-movflags", "+faststart"])
    writer.send(None)
    for path in frames:
        writer.send(np.asarray(Image.open(path).convert("RGB")).tobytes())
    writer.close()
    mask = np.array(Image.open(mask_path))
    save_palette_png(mask, HERE / f"{SEQUENCE}_mask.png")
    print(f"{video} ({video.stat().st_size / 1e6:.2f} MB, {len(frames)} frames, {width}x{height})")
    print(HERE / f"{SEQUENCE}_mask.png")


if __name__ == "__main__":
    main()
