"""The session API: from_pretrained, corrections on later frames, both directions, remove_objects, reset."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch

from conftest import EXAMPLES
from regression_cases import case_inputs
from stma_core import InferenceConfig, VideoSession
from stma_core.config import ModelConfig
from stma_core.inference.session import Direction
from stma_core.model.network import STMANetwork

TINY = ModelConfig(embed_dim=32, stml_depth=1, num_heads=2, key_dim=16, value_dim=32, decoder_dims=(16, 16, 8))
FRAMES = 12


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


@pytest.fixture(scope="module")
def clip() -> tuple[list[np.ndarray], np.ndarray, InferenceConfig, list[np.ndarray]]:
    """car-shadow (examples/), its first-frame mask, settings, and the plain forward masks."""
    frames, mask, config = case_inputs("car_shadow", None)  # type: ignore[arg-type]
    frames = frames[:FRAMES]
    session = VideoSession.from_pretrained(device="cpu", config=config)
    forward = [m for _, m in session.propagate(frames, {0: mask})]
    return frames, mask, config, forward


def test_a_correction_changes_the_frames_after_it_and_not_those_before(clip):
    """A poor first mask (the car's left half) tracked, then corrected on frame k with a whole-car mask."""
    frames, mask, config, forward = clip
    k = 5  # not a frame the memories would take anyway (every 2nd): the correction itself must enter them
    half = mask.copy()
    half[:, int(np.median(np.nonzero(mask)[1])):] = 0
    poor = [m for _, m in VideoSession.from_pretrained(device="cpu", config=config).propagate(frames, {0: half})]
    session = VideoSession.from_pretrained(device="cpu", config=config)
    corrected = [m for _, m in session.propagate(frames, {0: half, k: forward[k]})]
    for t in range(k):
        assert np.array_equal(corrected[t], poor[t]), f"frame {t} before the correction changed"
    assert _iou(corrected[k] == 1, forward[k] == 1) > 0.95  # the correction replaces the prediction there
    for t in range(k + 1, FRAMES):
        changed = _iou(corrected[t] == 1, poor[t] == 1)
        better, before = _iou(corrected[t] == 1, forward[t] == 1), _iou(poor[t] == 1, forward[t] == 1)
        # the two frames right after the correction still read much of the pinned half-car frame 0
        # (shipped Lite2 model: IoU 0.47, 0.56 vs 0.41; the Lite0 model before it 0.53, 0.87 vs 0.46-0.49);
        # from the third frame on the whole car wins (Lite2 0.88-0.98 vs 0.42-0.49)
        margin = 0.05 if t <= k + 2 else 0.3
        assert changed < 0.9 and better > before + margin, (t, changed, better, before)


def test_both_directions_segment_the_frames_before_the_annotation(clip):
    frames, _, config, forward = clip
    k = 6  # the only mask is on frame 6 (forward's own result there)
    session = VideoSession.from_pretrained(device="cpu", config=config)
    out = list(session.propagate(frames, {k: forward[k]}, direction="both"))
    assert [i for i, _ in out] == list(range(k, FRAMES)) + list(range(k - 1, -1, -1))
    masks = dict(out)
    for t in range(k):
        assert _iou(masks[t] == 1, forward[t] == 1) > 0.8, t
    assert len(session.temporal) <= config.temporal_capacity + 1  # memory stays bounded going backward
    only_forward = dict(VideoSession.from_pretrained(device="cpu", config=config).propagate(frames, {k: forward[k]}))
    assert not any((only_forward[t] != 0).any() for t in range(k))
    backward = list(VideoSession.from_pretrained(device="cpu", config=config).propagate(
        frames, {k: forward[k]}, direction=Direction.BACKWARD))
    assert [i for i, _ in backward] == list(range(FRAMES - 1, -1, -1))
    assert not any((m != 0).any() for i, m in backward if i > k)


def test_direction_errors_say_what_to_do():
    session = VideoSession(STMANetwork(TINY, pretrained_trunk=False), InferenceConfig(size=64))
    frames = [np.zeros((64, 96, 3), np.uint8)] * 3
    with pytest.raises(ValueError, match="forward, backward, both"):
        list(session.propagate(frames, direction="sideways"))
    with pytest.raises(ValueError, match="add_mask"):
        list(session.propagate(frames, direction="both"))
    with pytest.raises(TypeError, match="sequence"):
        list(session.propagate(iter(frames), {0: np.ones((64, 96), np.uint8)}, direction="backward"))


def test_remove_objects_and_reset():
    torch.manual_seed(0)
    session = VideoSession(STMANetwork(TINY, pretrained_trunk=False), InferenceConfig(size=64, temporal_every=1))
    frame = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    mask = np.zeros((64, 96), np.uint8)
    mask[5:30, 5:40], mask[35:60, 50:90] = 4, 9
    session.step(frame, mask)
    session.step(frame)
    assert session.probabilities is not None and session.probabilities.shape == (3, 64, 96)
    session.remove_objects([4])
    out = session.step(frame)
    assert session.objects.user_ids == [9] and set(np.unique(out)) <= {0, 9}
    assert all(e.value.shape[1] == 1 for e in session.temporal.entries)
    with pytest.raises(ValueError, match="not in this video"):
        session.remove_objects([4])
    session.reset()
    assert session.objects.count == 0 and len(session.temporal) == 0 and session.frame_index == 0
    assert set(np.unique(session.step(frame))) == {0}


def test_probabilities_after_remove_objects_belong_to_the_ids_still_tracked():
    """object_probabilities() right after remove_objects: no removed object's soft mask under another id."""
    torch.manual_seed(0)
    session = VideoSession(STMANetwork(TINY, pretrained_trunk=False), InferenceConfig(size=64))
    frame = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    mask = np.zeros((64, 96), np.uint8)
    mask[:, :30], mask[:, 60:] = 1, 2
    session.step(frame, mask)
    before = session.object_probabilities()
    session.remove_objects([1])
    after = session.object_probabilities()
    assert list(after) == [2] and np.array_equal(after[2], before[2])
    assert session.probabilities.shape == (2, 64, 96)
    assert torch.allclose(session.probabilities.sum(0), torch.ones(64, 96), atol=1e-5)  # object 1 became background


def test_both_directions_read_each_frame_once_when_the_first_mask_is_on_frame_0():
    """Nothing lies before frame 0: 'both' must not run a backward pass (from the last correction) for nothing."""

    class Counted(list):
        reads = 0

        def __getitem__(self, index):
            Counted.reads += 1
            return super().__getitem__(index)

    torch.manual_seed(0)
    session = VideoSession(STMANetwork(TINY, pretrained_trunk=False), InferenceConfig(size=64))
    rng = np.random.default_rng(0)
    frames = Counted(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8) for _ in range(6))
    mask = np.zeros((64, 96), np.uint8)
    mask[10:40, 10:50] = 1
    out = list(session.propagate(frames, {0: mask, 4: mask}, direction="both"))
    assert [i for i, _ in out] == list(range(6))
    assert Counted.reads == 6


def test_objects_added_one_call_at_a_time_on_the_same_frame_are_all_tracked(clip):
    """add_mask(0, car) then add_mask(0, box): both objects, as one mask with both would give (the
    second call used to replace the first, silently dropping the car)."""
    frames, mask, config, _ = clip
    box = np.zeros_like(mask)
    box[20:120, 20:160] = 2
    together = VideoSession.from_pretrained(device="cpu", config=config)
    both = np.where(box != 0, box, mask)
    expected = [m for _, m in together.propagate(frames[:4], {0: both})]
    session = VideoSession.from_pretrained(device="cpu", config=config)
    session.add_mask(0, mask)
    session.add_mask(0, box)
    got = [m for _, m in session.propagate(frames[:4])]
    assert session.objects.user_ids == [1, 2]
    for a, b in zip(got, expected):
        assert np.array_equal(a, b)
    assert set(np.unique(got[-1])) == {0, 1, 2}
    stepped = VideoSession.from_pretrained(device="cpu", config=config)  # a pending mask and step(mask) merge too
    stepped.add_mask(0, mask)
    assert np.array_equal(stepped.step(frames[0], box), expected[0])


def test_bad_masks_and_arguments_are_refused_where_they_are_given():
    session = VideoSession(STMANetwork(TINY, pretrained_trunk=False), InferenceConfig(size=64))
    frame = np.zeros((64, 96, 3), np.uint8)
    with pytest.raises(ValueError, match=r"2-D HxW array .* shape \(64, 96, 3\); for a colour mask"):
        session.add_mask(0, frame)
    soft = np.zeros((64, 96), np.float32)
    soft[10:20, 10:20] = 0.8
    with pytest.raises(ValueError, match="integer object ids .* float32: threshold"):
        session.add_mask(0, soft)
    with pytest.raises(ValueError, match=r"1..254; got \[300\]"):
        session.add_mask(0, np.full((64, 96), 300, np.int32))
    with pytest.raises(TypeError, match="frame index must be an integer; got '0'"):
        session.add_mask("0", np.zeros((64, 96), np.uint8))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="masks must be a dict"):
        list(session.propagate([frame], [np.zeros((64, 96), np.uint8)]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="differ in size"):
        session.add_mask(0, np.ones((64, 96), np.uint8))
        session.add_mask(0, np.ones((32, 48), np.uint8))
    session.reset()
    with pytest.raises(ValueError, match="frame 9 but the video has 3 frames"):
        list(session.propagate([frame] * 3, {9: np.ones((64, 96), np.uint8)}, direction="both"))
    session.reset()
    with pytest.warns(UserWarning, match=r"frame\(s\) \[9\] were not used: the video ended at frame 2"):
        out = list(session.propagate([frame] * 3, {0: np.ones((64, 96), bool), 9: np.ones((64, 96), np.uint8)}))
    assert len(out) == 3 and session.objects.user_ids == [1]  # a bool mask is object 1
    session.reset()
    label_map = np.zeros((64, 96), np.float32)  # a float label map (0.0 / 3.0), as the CLI reads float masks
    label_map[10:30, 10:40] = 3.0
    assert np.array_equal(session.step(frame, label_map), label_map.astype(np.uint8))
    assert session.objects.user_ids == [3]


def test_a_frame_of_another_size_mid_video_is_refused():
    session = VideoSession(STMANetwork(TINY, pretrained_trunk=False), InferenceConfig(size=64))
    mask = np.zeros((64, 96), np.uint8)
    mask[10:40, 10:50] = 1
    session.step(np.zeros((64, 96, 3), np.uint8), mask)
    with pytest.raises(ValueError, match="frame 1 is 96x48 but this video's frames are 96x64"):
        session.step(np.zeros((48, 96, 3), np.uint8))
    assert session.frame_index == 1
    session.reset()  # another video may have another size
    assert session.step(np.zeros((48, 96, 3), np.uint8), mask[:48]).shape == (48, 96)
    with pytest.raises(ValueError, match="negative"):
        session.add_mask(-1, mask)


def test_removed_objects_free_their_memory():
    """An annotation tool adds an object and the user deletes it on the next frame, again and again: each
    new object pinned its arrival frame in both memories, and removing it left the pin, so memory grew
    with every add/remove (README: memory does not grow with video length). Removal frees the pins;
    with no object left the temporal memory is empty."""
    config = InferenceConfig(size=64, spatial_capacity=2, spatial_every=1, temporal_capacity=3, temporal_every=1)
    session = VideoSession(STMANetwork(TINY, pretrained_trunk=False), config)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (64, 96, 3), dtype=np.uint8) for _ in range(4)]
    kept = np.zeros((64, 96), np.uint8)
    kept[10:40, 10:50] = 1
    sizes = []
    for t in range(30):
        extra = None
        if t % 2 == 0 and t:  # a new object on every other frame, removed right after that frame
            extra = np.zeros((64, 96), np.uint8)
            extra[40:60, 60:90] = 2 + t
        session.step(frames[t % 4], kept if t == 0 else extra)
        if extra is not None:
            session.remove_objects([2 + t])
        sizes.append((len(session.spatial), len(session.temporal)))
    assert session.objects.user_ids == [1]
    # frame 0 pinned for object 1, plus the FIFO / least-used entries within their capacities
    assert max(s for s, _ in sizes[5:]) == 1 + 2 and max(t for _, t in sizes[5:]) == 1 + 3, sizes
    assert session.spatial.pinned_frames == [0] and [e.frame for e in session.temporal.entries if e.pinned] == [0]
    session.remove_objects([1])
    assert len(session.temporal) == 0 and len(session.spatial.pinned) == 0 and len(session.spatial) <= 2


def test_pil_images_are_frames():
    from PIL import Image

    session = VideoSession(STMANetwork(TINY, pretrained_trunk=False), InferenceConfig(size=64))
    frame = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    mask = np.zeros((64, 96), np.uint8)
    mask[10:40, 10:50] = 1
    as_array = session.step(frame, mask)
    session.reset()
    assert np.array_equal(session.step(Image.fromarray(frame), mask), as_array)
    # PIL images of other modes (grayscale, RGBA: what Image.open gives for such files) are converted to RGB,
    # as frame folders are; they were refused as "not an HxWx3 uint8 RGB array"
    for mode in ("L", "RGBA"):
        image = Image.fromarray(frame).convert(mode)
        session.reset()
        expected = session.step(np.asarray(image.convert("RGB")), mask)
        session.reset()
        assert np.array_equal(session.step(image, mask), expected), mode


def test_a_config_changed_after_the_session_was_made_is_checked_where_frames_and_masks_come_in(clip):
    """The shipped model on the bundled clip: a size set on `session.config` after from_pretrained (32: empty
    masks; 0 and -1: silently full resolution) is a ValueError at add_mask, step, propagate and reset, and a size
    that changes the processing size mid-video (480 -> 64) is refused like a frame of another size."""
    frames, mask, _, _ = clip
    session = VideoSession.from_pretrained(device="cpu")
    for size in (32, 0, -1):
        session.config.size = size
        for call in (lambda: session.add_mask(0, mask), lambda: session.step(frames[0], mask),
                     lambda: list(session.propagate(frames[:2], {0: mask})), session.reset):
            with pytest.raises(ValueError, match=rf"InferenceConfig.size is {size}, too small .*at least 64"):
                call()
        assert session.frame_index == 0 and not session.pending_masks
    session.config.size = 480
    first = session.step(frames[0], mask)
    session.config.size = 720  # the clip is 480 high: still processed at 854x480, nothing changes
    assert session.step(frames[1]).shape == first.shape
    session.config.size = 64
    with pytest.raises(ValueError, match=r"InferenceConfig.size changed mid-video \(480 -> 64: frame 2 would be "
                                         r"processed at 114x64, the frames before it were at 854x480\); set it back "
                                         r"to 480, or reset\(\)"):
        session.step(frames[2])
    assert session.frame_index == 2
    session.reset()  # a new video may use another size
    masks = [m for _, m in session.propagate(frames[:3], {0: mask})]
    assert len(masks) == 3 and (masks[2] == 1).sum() > 0.5 * mask.sum()


def test_a_step_that_fails_keeps_its_mask_for_the_retry():
    """add_mask(0, m), then a step on a bad frame (grayscale) raised, and the retry with the right frame ran
    without the mask: the pending mask was dropped by the failed call, so the video came out empty."""
    session = VideoSession(STMANetwork(TINY, pretrained_trunk=False), InferenceConfig(size=64))
    frame = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    mask = np.zeros((64, 96), np.uint8)
    mask[10:40, 10:50] = 7
    session.add_mask(0, mask)
    with pytest.raises(ValueError, match=r"HxWx3 uint8 RGB array; got uint8 \(64, 96\) \(frame 0\)"):
        session.step(frame[..., 0])
    assert session.frame_index == 0 and session.objects.user_ids == [] and 0 in session.pending_masks
    assert np.array_equal(session.step(frame), mask) and session.objects.user_ids == [7]


def test_propagate_reads_a_video_file_or_a_frame_folder(tmp_path):
    """A path (as SAM 2's init_state takes one) used to be iterated character by character ('not enough values
    to unpack'), and open_frames' (name, frame) pairs failed deep in numpy; both are read now, as stma segment reads."""
    from PIL import Image

    from stma_core.io.frames import open_frames

    config = InferenceConfig(size=64)
    session = VideoSession(STMANetwork(TINY, pretrained_trunk=False), config)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (64, 96, 3), dtype=np.uint8) for _ in range(4)]
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / f"{i:05d}.png")
    mask = np.zeros((64, 96), np.uint8)
    mask[10:40, 10:50] = 1
    for direction in ("forward", "backward"):
        session.reset()
        expected = list(session.propagate(frames, {2: mask}, direction))
        for given in (str(tmp_path), tmp_path, open_frames(tmp_path)):
            session.reset()
            got = list(session.propagate(given, {2: mask}, direction))
            assert [i for i, _ in got] == [i for i, _ in expected]
            assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, expected)), (direction, given)
    video = str(EXAMPLES / "car-shadow.mp4")
    car = np.zeros((480, 854), np.uint8)
    car[200:300, 300:500] = 1
    session.reset()
    first = [m for _, m in session.propagate([f for _, f in open_frames(video)][:2], {0: car})]
    session.reset()
    from_path = itertools.islice(session.propagate(video, {0: car}), 2)
    assert all(np.array_equal(a, b) for a, (_, b) in zip(first, from_path))
    session.reset()
    with pytest.raises(TypeError, match="a video file is read in order only: pass its frames as a list"):
        list(session.propagate(video, {0: car}, "backward"))
    session.reset()
    session.add_mask(0, mask)
    with pytest.raises(TypeError, match=r"frame 0 is a path \('a.jpg'\), not an image"):
        list(session.propagate(["a.jpg"]))
    with pytest.raises(TypeError, match=r"frame 0 is a \(name, frame\) pair"):
        list(session.propagate([("00000", frames[0])]))
    assert 0 in session.pending_masks


def test_nothing_to_track_is_an_error_not_empty_masks():
    """propagate without a mask (or with only empty ones) yielded an empty mask for every frame, although its
    docstring promised a ValueError; a mask of the wrong size for a later frame failed only when that frame
    came, after all the frames before it; remove_objects(5) failed with "'int' object is not iterable"."""
    session = VideoSession(STMANetwork(TINY, pretrained_trunk=False), InferenceConfig(size=64))
    frames = [np.zeros((64, 96, 3), np.uint8)] * 3
    with pytest.raises(ValueError, match="no object to track: add_mask"):
        list(session.propagate(frames))
    with pytest.raises(ValueError, match=r"no object to track \(the masks given are all background, 0\)"):
        list(session.propagate(frames, {0: np.zeros((64, 96), np.uint8)}, direction="backward"))
    session.reset()
    mask = np.zeros((64, 96), np.uint8)
    mask[10:40, 10:50] = 5
    session.add_mask(0, mask)
    session.add_mask(2, mask[:32, :48])
    with pytest.raises(ValueError, match="the mask for frame 2 is 48x32 but the frames are 96x64"):
        list(session.propagate(frames))
    assert session.frame_index == 0
    session.reset()
    with pytest.raises(ValueError, match="the mask for frame 2 is 48x32 but the frames are 96x64"):
        list(session.propagate(frames, {0: mask, 2: mask[:32, :48]}, direction="backward"))  # said as frame 2
    session.reset()
    session.step(frames[0], mask)
    with pytest.raises(ValueError, match="the mask for frame 4 is 48x32 but the frames are 96x64"):
        session.add_mask(4, mask[:32, :48])
    session.remove_objects(5)
    assert session.objects.user_ids == []


def test_direction_both_warns_when_an_object_given_later_misses_frames():
    """Object 1 on frame 2, object 2 first on frame 4: 'both' runs forward from frame 2 (object 2 only from 4 on)
    and backward from 4 over frames 0-1 (object 2 there too), so frames 2-3 miss it; a warning names them. With
    the first mask on frame 0 there is no backward pass, nothing to say."""
    session = VideoSession(STMANetwork(TINY, pretrained_trunk=False), InferenceConfig(size=64))
    frames = [np.random.default_rng(i).integers(0, 255, (64, 96, 3), dtype=np.uint8) for i in range(6)]
    one, two = np.zeros((64, 96), np.uint8), np.zeros((64, 96), np.uint8)
    one[5:30, 5:40], two[35:60, 50:90] = 1, 2
    with pytest.warns(UserWarning, match=r"object\(s\) \[2\] first given on frame 4 are missing from frames 2 to 3"):
        out = dict(session.propagate(frames, {2: one, 4: two}, "both"))
    assert not any((out[i] == 2).any() for i in (2, 3)) and (out[4] == 2).any()
    session.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list(session.propagate(frames, {0: one, 4: two}, "both"))


def test_after_a_backward_pass_the_session_wants_a_reset():
    """After direction='backward' (or 'both') the memories end at frame 0; step() or a forward propagate went on
    from there as if the video continued (indices past its end, masks from frame 0's memory), silently."""
    session = VideoSession(STMANetwork(TINY, pretrained_trunk=False), InferenceConfig(size=64))
    frames = [np.random.default_rng(i).integers(0, 255, (64, 96, 3), dtype=np.uint8) for i in range(4)]
    mask = np.zeros((64, 96), np.uint8)
    mask[5:30, 5:40] = 1
    for direction in ("backward", "both"):
        session.reset()
        backward = dict(session.propagate(frames, {3: mask}, direction))
        assert sorted(backward) == [0, 1, 2, 3]
        for call in (lambda: session.step(frames[0]), lambda: session.add_mask(0, mask),
                     lambda: list(session.propagate(frames, {0: mask}))):
            with pytest.raises(ValueError, match="ran a backward pass .* call reset\\(\\)"):
                call()
    session.reset()
    assert np.array_equal(session.step(frames[0], mask), mask)
    session.reset()
    out = session.propagate(frames, {3: mask}, "backward")
    next(out)
    with pytest.raises(ValueError, match="ran a backward pass"):  # also between the frames of the pass
        session.add_mask(1, mask)
    assert [i for i, _ in out] == [2, 1, 0]


def test_masks_given_ahead_are_copies_and_remove_objects_drops_them():
    """add_mask kept the caller's array: an annotation loop reusing one buffer (fill it, add_mask, clear it, fill
    it for the next frame) rewrote the masks already given, so frame 0 got the later frame's object and object 1
    was never tracked. And remove_objects refused an object only given ahead ('not in this video; known ids: []')
    and, for a tracked one, left its masks for later frames to bring it back."""
    session = VideoSession(STMANetwork(TINY, pretrained_trunk=False), InferenceConfig(size=64))
    frames = [np.random.default_rng(i).integers(0, 255, (64, 96, 3), dtype=np.uint8) for i in range(4)]
    buffer = np.zeros((64, 96), np.uint8)
    buffer[5:30, 5:40] = 1
    first = buffer.copy()
    session.add_mask(0, buffer)
    buffer[:] = 0
    buffer[35:60, 50:90] = 2
    session.add_mask(2, buffer)
    out = dict(session.propagate(frames))
    assert np.array_equal(out[0], first) and session.objects.user_ids == [1, 2]
    session.reset()
    session.add_mask(0, first)
    session.add_mask(0, buffer)
    session.add_mask(3, buffer)  # object 2 again on frame 3: given ahead
    with pytest.raises(ValueError, match=r"object ids \[7\] are not in this video; known ids: \[1, 2\]"):
        session.remove_objects([7])
    session.step(frames[0])
    session.remove_objects(2)
    assert not (session.pending_masks[3] == 2).any() and (buffer == 2).any()  # the caller's array is untouched
    assert not any((m == 2).any() for _, m in session.propagate(frames[1:]))
    session.reset()
    session.add_mask(1, buffer)
    session.remove_objects([2])  # only given ahead: nothing left to track
    with pytest.raises(ValueError, match="no object to track"):
        list(session.propagate(frames))


def test_backward_errors_name_the_video_frame():
    """In a backward pass, a bad frame or one of another size was reported by the pass's step count (video frame
    2 of a 3-frame backward run was 'frame 0')."""
    session = VideoSession(STMANetwork(TINY, pretrained_trunk=False), InferenceConfig(size=64))
    frame = np.zeros((64, 96, 3), np.uint8)
    mask = np.zeros((64, 96), np.uint8)
    mask[10:40, 10:50] = 1
    with pytest.raises(ValueError, match=r"got uint8 \(64, 96\) \(frame 1\)"):
        list(session.propagate([frame, frame[..., 0], frame], {2: mask}, "backward"))
    session.reset()
    with pytest.raises(ValueError, match="frame 0 is 96x32 but this video's frames are 96x64"):
        list(session.propagate([frame[:32], frame, frame], {2: mask}, "backward"))


def test_one_object_masks_take_an_object_id_and_two_boolean_masks_warn():
    """SAM 2 users add each object's boolean mask in turn; here a boolean mask is object 1, so the second one was
    merged into the first object without a word. add_mask(frame, mask, object_id=N) gives it its own id (a 0/255
    or float 0/1 mask too), and two boolean masks for one frame without it warn."""
    session = VideoSession(STMANetwork(TINY, pretrained_trunk=False), InferenceConfig(size=64))
    frame = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    a, b = np.zeros((64, 96), bool), np.zeros((64, 96), bool)
    a[5:30, 5:40], b[35:60, 50:90] = True, True
    session.add_mask(0, a, object_id=5)
    session.add_mask(0, b.astype(np.uint8) * 255, object_id=42)
    session.add_mask(0, np.zeros((64, 96), np.float32), object_id=7)  # empty: no object 7
    out = session.step(frame)
    assert session.objects.user_ids == [5, 42] and np.array_equal(out, np.where(a, 5, np.where(b, 42, 0)))
    session.reset()
    session.add_mask(0, a)
    with pytest.warns(UserWarning, match="frame 0: a boolean mask is object 1, and an earlier mask of this frame"):
        session.add_mask(0, b)
    for bad in (0, 255, 1.5, True):
        with pytest.raises(ValueError, match="object_id must be an integer 1..254"):
            session.add_mask(0, a, object_id=bad)
    with pytest.raises(ValueError, match="threshold a soft mask"):
        session.add_mask(0, a * 0.7, object_id=3)


def test_breaking_out_of_propagate_and_passing_the_whole_video_again_continues_where_it_stopped(clip):
    """SAM 2 / Cutie style interaction: stop the generator at frame k, correct frame k+1, run over the same list.

    The frames given again (0..k) are this video's frames already segmented: they are skipped, not taken for
    frames k+1, k+2, … (which yielded indices past the video's end and masks of the wrong pictures)."""
    frames, mask, config, forward = clip
    k = 4
    session = VideoSession.from_pretrained(device="cpu", config=config)
    session.add_mask(0, mask)
    for index, _ in session.propagate(frames):
        if index == k:
            break
    again = list(session.propagate(frames))  # the whole list again, no correction: exactly the plain run
    assert [i for i, _ in again] == list(range(k + 1, FRAMES))
    assert all(np.array_equal(m, forward[i]) for i, m in again)

    session = VideoSession.from_pretrained(device="cpu", config=config)
    session.add_mask(0, mask)
    for index, _ in session.propagate(frames):
        if index == k:
            break
    rest = list(session.propagate(frames[k + 1:]))  # the remaining frames only: the same continuation
    assert [i for i, _ in rest] == list(range(k + 1, FRAMES))
    assert all(np.array_equal(m, forward[i]) for i, m in rest)


def test_a_correction_after_a_break_is_used_when_the_whole_video_is_given_again(clip):
    frames, mask, config, forward = clip
    k = 4
    half = mask.copy()
    half[:, int(np.median(np.nonzero(mask)[1])):] = 0
    session = VideoSession.from_pretrained(device="cpu", config=config)
    session.add_mask(0, half)
    for index, _ in session.propagate(frames):
        if index == k:
            break
    session.add_mask(k + 1, forward[k + 1])
    out = dict(session.propagate(frames))
    assert sorted(out) == list(range(k + 1, FRAMES))
    assert np.array_equal(out[k + 1], forward[k + 1])  # the correction's own pixels on its frame
    assert _iou(out[FRAMES - 1] == 1, forward[FRAMES - 1] == 1) > 0.8


def test_other_frames_after_a_break_are_refused_when_they_only_start_like_the_video(clip):
    frames, mask, config, _ = clip
    session = VideoSession.from_pretrained(device="cpu", config=config)
    session.add_mask(0, mask)
    for index, _ in session.propagate(frames):
        if index == 3:
            break
    with pytest.raises(ValueError, match="frame 1 differs"):
        list(session.propagate([frames[0], frames[7], frames[8]]))
    assert session.frame_index == 4


def test_an_object_smaller_than_a_network_cell_at_the_processing_size_is_a_warning_not_a_silent_loss():
    """A 30x30-pixel square on car-shadow's car at size 128 (8x8 pixels there, under one 16x16 cell) was gone
    on the next frame without a word; now a warning names it and the size to use. At the frame's own size
    (480) the same square is no warning, and it is still tracked three frames on."""
    from conftest import example_frames

    frames = example_frames(4)
    from PIL import Image
    car = np.array(Image.open(EXAMPLES / "car-shadow_mask.png")) > 0
    ys, xs = np.nonzero(car)
    square = np.zeros(car.shape, np.uint8)
    square[int(ys.mean()):int(ys.mean()) + 30, int(xs.mean()):int(xs.mean()) + 30] = 3
    session = VideoSession.from_pretrained(device="cpu", config=InferenceConfig(size=128))
    with pytest.warns(UserWarning, match=r"frame 0: object 3 \(900 pixels, 64 at the processing size\).*"
                                         r"likely lost.*about 256"):
        masks = [m for _, m in session.propagate(frames, {0: square})]
    assert (masks[1] == 3).sum() == 0  # what the warning is about

    session = VideoSession.from_pretrained(device="cpu", config=InferenceConfig(size=480))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*likely lost")
        masks = [m for _, m in session.propagate(frames, {0: square})]
    assert (masks[3] == 3).sum() > 300


def test_propagating_the_same_frames_twice_says_nothing_new_was_segmented(clip):
    """A second propagate over the frames a session already did took them for frames 12..23; now they are
    skipped, and since nothing is left a warning says so and how to run again (reset)."""
    frames, mask, config, _ = clip
    session = VideoSession.from_pretrained(device="cpu", config=config)
    session.add_mask(0, mask)
    list(session.propagate(frames[:3]))
    with pytest.warns(UserWarning, match=r"nothing segmented: the 3 frame\(s\) given .* reset\(\)"):
        assert list(session.propagate(frames[:3])) == []
    assert session.frame_index == 3
