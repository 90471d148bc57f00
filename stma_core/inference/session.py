"""Per-video inference state around an engine that runs the network: the memory policy, nothing else.

    from stma_core import VideoSession
    session = VideoSession.from_pretrained(device="auto")      # the shipped model; or checkpoint="m.safetensors"
    session.add_mask(0, first_mask)                             # HxW uint8, pixel = object id 1..254
    for index, mask in session.propagate(frames):               # frames: HxWx3 uint8 RGB
        ...                                                     # mask: HxW uint8 with the same ids

The session decides what is memorized when (spatial memory: reference frames; temporal memory: keys
and ID values), which objects exist and in which group, and resizing; an engine (TorchEngine,
ExportedEngine) runs the network steps. Memory is bounded: the spatial memory holds at most
`spatial_capacity` frames plus the frames on which objects first appeared, the temporal memory
`temporal_capacity` plus those, so time and memory per frame stop growing once the memories are full.
Objects first given on the same frame form a group that reads only the memory written since it arrived.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from stma_core.config import TOKEN_CELL, Direction, InferenceConfig
from stma_core.device import resolve_device
from stma_core.errors import StmaInputError
from stma_core.ids import MAX_OBJECTS
from stma_core.inference.engine import Engine, MemoryState, TorchEngine
from stma_core.inference.object_manager import ObjectManager
from stma_core.inference.spatial_memory import SpatialMemory
from stma_core.inference.temporal_memory import TemporalMemory
from stma_core.model.network import FrameFeatures, MemoryGroup, STMANetwork

__all__ = ["Direction", "VideoSession", "late_object_gaps", "processing_size", "resolve_device",
           "session_factory"]


def processing_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """Size the network sees: short side scaled to `short_side` (never up-scaled past the input, except that
    a side below one 16-pixel token cell is stretched to it)."""
    scale = min(short_side / min(height, width), 1.0) if short_side > 0 else 1.0
    return max(TOKEN_CELL, round(height * scale)), max(TOKEN_CELL, round(width * scale))


class VideoSession:
    """One video's segmentation state. Not thread-safe; make one per video (they share the engine's model).

    engine: an Engine (see stma_core.inference.engine), or an STMANetwork to run with a TorchEngine.
    config: per-video settings (InferenceConfig); None = its defaults. A setting below its minimum (such as
    a size under MIN_SIZE set on the config after it was made) is a ValueError naming it, raised where frames
    and masks come in (step, add_mask, propagate, reset); so is a size that changes the processing size mid-video.
    """

    def __init__(self, engine: Engine | STMANetwork, config: InferenceConfig | None = None) -> None:
        self.engine: Engine = TorchEngine(engine) if isinstance(engine, STMANetwork) else engine
        self.config = config or InferenceConfig()
        self.device = self.engine.device
        self.reset()

    @classmethod
    def from_pretrained(cls, checkpoint: str | Path | None = None, device: str = "auto",
                        config: InferenceConfig | None = None) -> "VideoSession":
        """A session on a checkpoint (None = the shipped model) with the settings it recommends.

        device: 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'. config: settings that replace the recommended
        ones. To segment many videos, load once with `session_factory` instead.
        """
        return session_factory(checkpoint, device, config=config)()

    # ---- public API -----------------------------------------------------------------------
    def reset(self) -> None:
        """Forgets every object, mask and memory: the session is as new (the model stays loaded)."""
        self.config.check()  # InferenceConfig checks when made; its fields may have been changed since
        self.objects = ObjectManager()
        self.spatial = SpatialMemory(self.config.spatial_capacity)
        self.temporal = TemporalMemory(self.config.temporal_capacity)
        self.pending_masks: dict[int, np.ndarray] = {}
        self.frame_index = 0
        self.probabilities: torch.Tensor | None = None
        self._frame_shape: tuple[int, int] | None = None  # (H, W) of this video's frames, from its first one
        self._seen: list[bytes] = []  # a digest of each processed frame: propagate skips frames given again
        self._size: int | None = None  # config.size this video's first frame was processed at
        self._last_spatial = -1
        self._last_temporal = -1
        # memory versions restart with the memories; the epoch keeps engine caches from matching old ones
        self._backward = False  # set by a backward pass: its memories end at frame 0, nothing may follow on
        self._epoch = getattr(self, "_epoch", -1) + 1
        self._memory_version = 0

    def add_mask(self, frame_index: int, mask: np.ndarray, object_id: int | None = None) -> None:
        """Gives a mask (HxW uint8, pixel = object id 1..254, 0 = background) for a frame not yet processed.

        object_id: the mask is one object's (bool, or nonzero = the object), SAM 2 style: its pixels get this id.
        Without it a boolean mask is object 1, so two boolean masks for one frame are one object (a warning).

        New ids become objects from that frame on (ids given together form one group). Ids that
        already exist are corrections: the given pixels replace the prediction on that frame, which
        then enters the memories, so the frames after it follow the correction.
        Masks given for the same frame are merged (a later mask's nonzero pixels win), so objects can be
        added one call at a time. Raises ValueError if the frame was already processed or the mask is not
        an HxW array of ids 0..254, or not at the frames' size (checked here once a frame was processed, else
        on the first frame); TypeError for a frame index that is not an integer.
        """
        if isinstance(frame_index, bool) or not isinstance(frame_index, (int, np.integer)):
            raise TypeError(f"frame index must be an integer; got {frame_index!r}")
        frame_index = int(frame_index)
        self._check_forward()
        self.config.check()
        if frame_index < 0:
            raise ValueError(f"frame index {frame_index} is negative; frames count from 0")
        if frame_index < self.frame_index:
            raise ValueError(f"frame {frame_index} was already processed (next is {self.frame_index}); "
                             "add masks before stepping past their frame, or reset() and start again")
        boolean = np.asarray(mask).dtype == bool
        if object_id is not None:
            if isinstance(object_id, bool) or not isinstance(object_id, (int, np.integer)) \
                    or not 1 <= object_id <= MAX_OBJECTS:
                raise ValueError(f"object_id must be an integer 1..{MAX_OBJECTS}; got {object_id!r}")
            arr = np.asarray(mask)
            whole = arr.dtype.kind in "biu" or (arr.dtype.kind == "f" and _whole_numbers(arr))
            binary = check_mask(arr != 0 if whole else arr)  # a soft (fractional) mask is refused as ever
            mask = np.where(binary != 0, int(object_id), 0).astype(np.uint8)
        else:
            mask = check_mask(mask).copy()  # kept until its frame: a caller reusing its array must not change it
        if self._frame_shape is not None:
            _check_mask_size(mask, self._frame_shape, frame_index)
        earlier = self.pending_masks.get(frame_index)
        if boolean and object_id is None and earlier is not None and (earlier == 1).any() and (mask == 1).any():
            warnings.warn(f"frame {frame_index}: a boolean mask is object 1, and an earlier mask of this frame has "
                          "object 1 too, so both are one object; pass object_id=N (or an id mask) to add another "
                          "object", stacklevel=2)
        self.pending_masks[frame_index] = merge_masks(earlier, mask)

    def remove_objects(self, ids: Iterable[int] | int) -> None:
        """Stops tracking these user ids, or this one id (their memory goes too), and drops them from the masks given
        with add_mask for frames not processed yet (also objects given there only); ValueError for unknown ids.

        The last frame's `probabilities` lose their rows (their probability goes to the background), so
        they stay in `objects.user_ids` order."""
        if isinstance(ids, (int, np.integer)) and not isinstance(ids, bool):
            ids = [ids]
        ids = [int(i) for i in ids]
        pending = {int(i) for m in self.pending_masks.values() for i in np.unique(m) if i}
        unknown = [i for i in ids if i not in self.objects.user_ids and i not in pending]
        if unknown:
            raise ValueError(f"object ids {unknown[:5]} are not in this video; known ids: "
                             f"{sorted(set(self.objects.user_ids) | pending)}")
        waiting = [i for i in ids if i in pending]
        for index, mask in list(self.pending_masks.items()):  # masks given for later frames would bring them back
            self.pending_masks[index] = np.where(np.isin(mask, waiting), 0, mask).astype(np.uint8)
        gone = self.objects.remove([i for i in ids if i in self.objects.user_ids])
        self.temporal.remove_objects(gone)
        if gone:  # the frames pinned for objects no longer tracked are freed: memory stays bounded
            self.temporal.release(self.objects.groups)
            self.spatial.unpin({g.frame for g in self.objects.groups})
        if self.probabilities is not None and gone:
            rows = [i + 1 for i in gone]
            keep = [r for r in range(self.probabilities.shape[0]) if r not in rows]
            prob = self.probabilities[keep].clone()
            prob[0] += self.probabilities[rows].sum(0)
            self.probabilities = prob
        self._memory_version += 1

    def propagate(self, frames: Iterable[np.ndarray] | Sequence[np.ndarray] | str | Path,
                  masks: dict[int, np.ndarray] | None = None,
                  direction: Direction | str = Direction.FORWARD) -> Iterator[tuple[int, np.ndarray]]:
        """Yields (frame index, HxW uint8 user-id mask) once for every frame.

        frames: HxWx3 uint8 RGB arrays or PIL images; or the path of a video file or frame folder (or a
        FrameSource from stma_core.io.frames.open_frames), read as `stma segment` reads it (StmaInputError
        for an unreadable one). masks: optional {frame index: id mask}, as add_mask.
        direction: FORWARD streams any iterable, in order, from the session's next frame (`frame_index`):
        after breaking out of the loop (to correct a frame with add_mask), pass the frames still to do, or
        the whole video again: frames given from frame 0 that are the frames already segmented (the same
        pixels) are skipped, so it continues where it stopped; ValueError if they start like the video and
        then differ. BACKWARD and BOTH need `frames` with len()
        and indexing (a list, or anything that reads frame i on demand, so memory stays bounded) and a
        fresh session; they yield in processing order: BACKWARD from the last frame down to 0, BOTH
        first the frames from the first mask on (forward), then the frames before it, nearest first
        (propagated backward from the last mask); objects first given after the first mask are missing from
        the frames between it and their own mask (a UserWarning from late_object_gaps names them).
        After BACKWARD or BOTH, reset() before reusing the session (add_mask, step and propagate raise
        ValueError until then, also between the frames of the backward pass).
        A frame folder has indexing; a video file is read in order only, so BACKWARD and BOTH want its frames
        as a list. Raises ValueError for an unknown direction or when there is nothing to track (no mask, or
        only empty ones, and no object from earlier steps), TypeError for frames without indexing.
        """
        try:
            direction = Direction(direction)
        except ValueError:
            raise ValueError(f"unknown direction {direction!r}; use one of "
                             f"{', '.join(d.value for d in Direction)}") from None
        self.config.check()
        self._check_forward()
        if masks is not None and not isinstance(masks, Mapping):
            raise TypeError(f"masks must be a dict {{frame index: id mask}}; got {type(masks).__name__}")
        for index, mask in (masks or {}).items():
            self.add_mask(index, mask)
        if not self.objects.count and not any(m.any() for m in self.pending_masks.values()):
            given = " (the masks given are all background, 0)" if self.pending_masks else ""
            raise ValueError(f"no object to track{given}: add_mask(frame, mask) with the object's pixels set to its "
                             "id before propagating")
        frames = _source_frames(frames)
        if self.frame_index == 0:  # an export's fixed memory must hold what these masks pin: say so now
            self.check_annotations([self.pending_masks[i] for i in sorted(self.pending_masks)], direction)
        if direction is Direction.FORWARD:
            done = len(self._seen)  # frames given again from frame 0 (the whole video, after a break) are skipped
            skipped, start = 0, self.frame_index
            for position, frame in enumerate(frames):
                if position < done and done == self.frame_index:
                    arr = _as_frame(frame, position)
                    if _digest(arr) == self._seen[position]:
                        skipped = position + 1
                        continue  # this video's frame `position`, already segmented: go on after it
                    if position:
                        raise ValueError(
                            f"frames 0..{position - 1} given are this video's frames already processed, but frame "
                            f"{position} differs from the frame {position} processed; pass the whole video again "
                            f"(it continues at frame {self.frame_index}) or only the frames from frame "
                            f"{self.frame_index} on")
                    done = 0  # new frames: the ones after the last processed
                    frame = arr
                index = self.frame_index
                yield index, self.step(frame)
            if skipped and self.frame_index == start:
                warnings.warn(f"nothing segmented: the {skipped} frame(s) given are frames this session already "
                              f"segmented (it is at frame {start}); reset() to segment the video again",
                              stacklevel=2)
            unused = sorted(i for i in self.pending_masks if i >= self.frame_index)
            if unused:
                warnings.warn(f"masks given for frame(s) {unused} were not used: the video ended at frame "
                              f"{self.frame_index - 1}", stacklevel=2)
            return
        if not (hasattr(frames, "__len__") and hasattr(frames, "__getitem__")):
            video = " (a video file is read in order only: pass its frames as a list, or a frame folder)" \
                if isinstance(frames, _SourceFrames) else ""
            raise TypeError(f"backward propagation reads frames out of order: pass a list or another sequence "
                            f"with len() and indexing{video} (or use direction='forward' to stream)")
        if self.frame_index != 0:
            raise ValueError("backward propagation needs a fresh session; call reset() first")
        given = dict(self.pending_masks)
        if not given:
            raise ValueError("no mask given; add_mask(frame, mask) before propagating")
        count = len(frames)  # type: ignore[arg-type]
        first, last = min(given), max(given)
        if last >= count:
            raise ValueError(f"a mask is given for frame {last} but the video has {count} frames (0..{count - 1})")
        if direction is Direction.BOTH:
            gaps = late_object_gaps(given)
            if gaps:
                warnings.warn(gaps, stacklevel=2)
            yield from self._run(frames, range(first, count), given)
            if first > 0:  # the backward pass only yields frames before the first mask
                yield from ((i, m) for i, m in self._run(frames, range(last, -1, -1), given) if i < first)
        else:
            yield from self._run(frames, range(count - 1, -1, -1), given)

    def _run(self, frames: Sequence[np.ndarray], order: Iterable[int], given: dict[int, np.ndarray]
             ) -> Iterator[tuple[int, np.ndarray]]:
        """One pass from empty memories over the frames in `order` (video indices), masks from `given`."""
        self.reset()
        backward = isinstance(order, range) and order.step < 0
        shape: tuple[int, ...] = ()
        for index in order:  # errors name the video's frame index, not the pass's step count
            frame = _as_frame(frames[index], index)
            if not shape:  # every mask at the frames' size, before any frame is done
                shape = frame.shape[:2]
                for k in sorted(given):
                    _check_mask_size(given[k], shape, k)
            elif frame.shape[:2] != shape:
                raise ValueError(f"frame {index} is {frame.shape[1]}x{frame.shape[0]} but this video's frames are "
                                 f"{shape[1]}x{shape[0]}; give frames of one size")
            self._backward = False  # the pass's own steps
            try:
                mask = self.step(frame, given.get(index))
            finally:
                self._backward = backward
            yield index, mask

    def _check_forward(self) -> None:
        """ValueError after a backward pass: stepping on would continue from frame 0's memories as if the video
        went on (frame indices past its end), and a mask would be taken for a frame already segmented."""
        if self._backward:
            raise ValueError("this session ran a backward pass (direction 'backward' or 'both'); call reset() "
                             "before adding masks, stepping or propagating again")

    def check_annotations(self, masks: Sequence[np.ndarray], direction: Direction | str = Direction.FORWARD) -> None:
        """Raises StmaInputError before any frame is processed when the engine's fixed memory (an `stma
        export`) cannot hold what these annotations (id masks in frame order) will keep: one frame for good
        per frame giving new objects, one slot for the latest correction, beside the recent frames. Without
        it the run stops mid-video. So does an export made for fewer objects than the masks give.
        Engines without fixed sizes (PyTorch) accept anything."""
        most = getattr(self.engine, "object_limit", None)
        limits = getattr(self.engine, "memory_limits", None)
        if (most is None and limits is None) or not masks:  # PyTorch: nothing to check, no mask read
            return
        id_sets = [{int(i) for i in np.unique(m) if i} for m in masks]  # each mask's object ids, in frame order
        if most is not None:
            ids = sorted(set(self.objects.user_ids).union(*id_sets))
            if len(ids) > most:
                raise StmaInputError(f"{len(masks)} annotated frame(s) give {len(ids)} objects ({ids[:8]}) but this "
                                     f"export handles at most {most}; re-export with `stma export --objects "
                                     f"{len(ids)}`")
        if limits is None:
            return
        direction = Direction(direction)
        orders = {Direction.FORWARD: [id_sets], Direction.BACKWARD: [id_sets[::-1]],
                  Direction.BOTH: [id_sets, id_sets[::-1]]}[direction]
        for ordered in orders:
            seen: set[int] = set()
            pins = corrections = 0
            for ids in ordered:
                if ids - seen:
                    pins += 1
                elif ids:
                    corrections += 1
                seen |= ids
            self._check_room(pins, corrections > 0,
                             f"{len(masks)} annotated frame(s) ({pins} giving new objects, {corrections} "
                             f"correction(s))")

    def _check_room(self, pins: int, correction: bool, cause: str) -> None:
        """StmaInputError naming the real cause and the `stma export` options when the engine's fixed
        memory holds fewer frames than `pins` pinned frames + the correction slot + the capacities."""
        limits = getattr(self.engine, "memory_limits", None)
        if limits is None:
            return
        kept = pins + int(correction)
        needs = [("--refs", "reference frames", kept + self.config.spatial_capacity, limits[0]),
                 ("--memory-frames", "temporal-memory frames", kept + self.config.temporal_capacity, limits[1])]
        short = [(flag, what, need, have) for flag, what, need, have in needs if need > have]
        if not short:
            return
        held = "; ".join(f"up to {need} {what} but this export holds {have}" for _, what, need, have in short)
        fix = " ".join(f"{flag} {need}" for flag, _, need, _ in short)
        raise StmaInputError(
            f"{cause}: each frame where objects are first given (or re-added) keeps a memory slot for good, and "
            f"so does the latest correction, beside the recent frames: {held}; re-export with `stma export "
            f"{fix}` (one more per further frame that gives new objects)")

    def step(self, frame: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Segments the next frame (HxWx3 uint8 RGB array, or a PIL image of any mode) -> its HxW uint8 user-id mask.

        mask: optional id mask for this frame (as add_mask); an object in it smaller than one 16x16 cell of the
        network at the processing size is a UserWarning (it is likely lost within a few frames). After the call, `probabilities` holds
        this frame's (n+1, H, W) float32 probabilities (background first, then objects in
        `objects.user_ids` order) on the session's device.
        """
        self._check_forward()
        frame = _as_frame(frame, self.frame_index)
        self.config.check()
        if self._frame_shape is not None and frame.shape[:2] != self._frame_shape:
            raise ValueError(f"frame {self.frame_index} is {frame.shape[1]}x{frame.shape[0]} but this video's frames "
                             f"are {self._frame_shape[1]}x{self._frame_shape[0]}; give frames of one size, or reset() "
                             "to start another video")
        if self._size is not None and self.config.size != self._size:
            before, now = (processing_size(*self._frame_shape, s) for s in (self._size, self.config.size))
            if now != before:  # the memories hold features at the old size: reading them at another one is garbage
                raise ValueError(f"InferenceConfig.size changed mid-video ({self._size} -> {self.config.size}: frame "
                                 f"{self.frame_index} would be processed at {now[1]}x{now[0]}, the frames before it "
                                 f"were at {before[1]}x{before[0]}); set it back to {self._size}, or reset() to "
                                 "start the video again")
        if self._frame_shape is None:  # the first frame gives the size: a mask for a later frame is checked now,
            for index in sorted(self.pending_masks):  # not after the frames before it were segmented
                _check_mask_size(self.pending_masks[index], frame.shape[:2], index)
        pending = self.pending_masks.get(self.frame_index)
        mask = pending if mask is None else merge_masks(pending, check_mask(mask))
        if mask is not None:
            _check_mask_size(mask, frame.shape[:2], self.frame_index)
        # a step that fails (a bad frame, an export without room for this frame's objects) leaves the session as
        # it was, its pending mask included, so the same call with a fixed frame or session does what it says
        user_ids, groups = list(self.objects.user_ids), list(self.objects.groups)
        try:
            with torch.inference_mode(), self._autocast():
                labels = self._step(frame, mask)
        except BaseException:
            self.objects.user_ids, self.objects.groups = user_ids, groups
            raise
        if mask is not None:
            _warn_small_objects(mask, frame.shape[:2], self.config.size, self.frame_index)
        self.pending_masks.pop(self.frame_index, None)
        self._frame_shape = frame.shape[:2]
        self._seen.append(_digest(frame))
        if self._size is None:
            self._size = self.config.size
        self.frame_index += 1
        return self.objects.to_user_mask(labels)

    # ---- soft output ---------------------------------------------------------------------------
    def object_probabilities(self) -> dict[int, np.ndarray]:
        """Soft masks of the last `step`: user id -> HxW uint8 at the frame's size, value = round(255 * p).

        p is the softmax probability of the object (background and all objects sum to 1 per pixel);
        the id mask `step` returned is the argmax over background and objects. The float form is
        `self.probabilities` ((n+1, H, W), background first). Raises RuntimeError before any step.
        """
        if self.probabilities is None:
            raise RuntimeError("no frame segmented yet; call step() first")
        soft = (self.probabilities[1:].float() * 255).round_().to(torch.uint8).cpu().numpy()
        return {user_id: soft[i] for i, user_id in enumerate(self.objects.user_ids)}

    # ---- internals -------------------------------------------------------------------------
    def _autocast(self):
        if self.device.type == "cuda" and self.config.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        return contextlib.nullcontext()

    def _to_tensor(self, frame: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"a frame must be an HxWx3 uint8 RGB array; got {frame.dtype} {frame.shape}")
        h, w = frame.shape[:2]
        ph, pw = processing_size(h, w, self.config.size)
        fixed = self.engine.frame_size
        if fixed is not None and (-(-fixed[0] // 16), -(-fixed[1] // 16)) != (-(-ph // 16), -(-pw // 16)):
            # graphs see frames padded to multiples of 16: any size that pads to the export's runs on it
            raise StmaInputError(f"a {w}x{h} frame is processed at {pw}x{ph} but this export is for "
                                 f"{fixed[1]}x{fixed[0]}; re-export with --size {ph} {pw} (or pass frames that "
                                 f"scale to {fixed[1]}x{fixed[0]})")
        if (ph, pw) != (h, w):
            frame = cv2.resize(frame, (pw, ph), interpolation=cv2.INTER_AREA)
        if not frame.flags.writeable:  # e.g. np.frombuffer over decoder bytes; torch wants a writable array
            frame = frame.copy()
        image = torch.from_numpy(np.ascontiguousarray(frame)).to(self.device).permute(2, 0, 1)[None].float() / 255
        pad_h, pad_w = (-ph) % 16, (-pw) % 16
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h), mode="replicate")
        return image, (ph, pw)

    def _given_probabilities(self, mask: np.ndarray, size: tuple[int, int], padded: tuple[int, int]) -> torch.Tensor:
        """One-hot (n, H, W) float of a user mask at processing size (only the ids it contains)."""
        ph, pw = size
        small = cv2.resize(mask, (pw, ph), interpolation=cv2.INTER_NEAREST) if mask.shape != (ph, pw) else mask
        out = torch.zeros(self.objects.count, *padded, device=self.device)
        small_t = torch.from_numpy(small.astype(np.int64)).to(self.device)
        for user_id in np.unique(small):
            if user_id == 0:
                continue
            out[self.objects.index_of(int(user_id)), :ph, :pw] = (small_t == int(user_id)).float()
        return out

    def _memory(self) -> MemoryState:
        """The memories of the groups that have any (a group given on this frame has none yet: it comes last)."""
        keys, groups = self.temporal.read([g for g in self.objects.groups if g.frame < self.frame_index])
        version = (id(self), self._epoch, self.spatial.version, self.temporal.version, self._memory_version,
                   self.objects.count)
        return MemoryState(self.spatial.tokens(), keys, groups, version)

    def _first_key(self, frame: FrameFeatures, values: torch.Tensor) -> torch.Tensor:
        """Memory key of a frame that had nothing to read yet: STML with itself as the reference."""
        memory = MemoryState(frame.tokens[:, None], None, [MemoryGroup(values.flatten(3))])
        return self.engine.predict(frame, memory, self.config.top_k, self.config.kernel_sigma).key

    def _step(self, frame_np: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        height, width = frame_np.shape[:2]
        image, size = self._to_tensor(frame_np)
        padded = image.shape[-2:]
        frame = self.engine.encode_frame(image)
        new_ids: list[int] = []
        given_ids: list[int] = []
        if mask is not None:
            given_ids = [int(i) for i in np.unique(mask) if i != 0]
            adds = any(i not in self.objects.user_ids for i in given_ids)
            if given_ids and (adds or not self.spatial.correction):  # this frame takes a new slot
                what = "objects first given" if adds else f"a correction of object(s) {given_ids}"
                self._check_room(len(self.spatial.pinned) + int(adds),
                                 bool(self.spatial.correction) or not adds, f"frame {self.frame_index}: {what}")
            new_ids = self.objects.add(given_ids, self.frame_index)
        n = self.objects.count
        key = None
        if len(self.temporal) and n and self.objects.groups[0].frame < self.frame_index:
            prediction = self.engine.predict(frame, self._memory(), self.config.top_k, self.config.kernel_sigma)
            prob, key = prediction.probabilities[0], prediction.key
            self.temporal.record_usage(prediction.usage)
            if prob.shape[0] < n + 1:  # objects first given on this frame
                prob = torch.cat([prob, prob.new_zeros(n + 1 - prob.shape[0], *prob.shape[1:])], 0)
        else:
            prob = torch.zeros(n + 1, *padded, device=self.device)
            prob[0] = 1
        if mask is not None:
            given = self._given_probabilities(mask, size, padded)
            covered = given.sum(0).clamp(max=1)
            prob[1:] = prob[1:] * (1 - covered)
            for user_id in given_ids:
                idx = self.objects.index_of(user_id)
                prob[idx + 1] = given[idx]
            prob[0] = (1 - prob[1:].sum(0)).clamp(min=0)
        if n:
            corrected = bool(given_ids) and not new_ids
            self._memorize(frame, prob, key, pin=bool(new_ids), correction=corrected)
        prob = prob[:, : size[0], : size[1]]
        if (size[0], size[1]) != (height, width):
            prob = F.interpolate(prob[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        if given_ids:  # the user's own pixels, not their round trip through the processing scale
            ids = torch.from_numpy(mask.astype(np.int64)).to(prob.device)
            rows = torch.tensor([self.objects.index_of(i) + 1 for i in given_ids], device=prob.device)
            given_full = ids[None] == torch.tensor(given_ids, device=prob.device)[:, None, None]  # (g, H, W)
            prob = prob.clone()
            prob[1:, given_full.any(0)] = 0
            prob[rows] = given_full.to(prob.dtype)  # a given object is exactly its mask on this frame
            prob[0] = (1 - prob[1:].sum(0)).clamp(min=0)
        self.probabilities = prob
        # argmax over a contiguous last dim: same labels (first max wins), ~8x faster than over dim 0 on CPU
        labels = prob.movedim(0, -1).contiguous().argmax(-1)
        return labels.to(torch.uint8 if n < 255 else torch.int64).cpu().numpy()

    def _memorize(self, frame: FrameFeatures, prob: torch.Tensor, key: torch.Tensor | None, pin: bool,
                  correction: bool = False) -> None:
        """Writes this frame to the memories when due; `pin` (new objects) keeps it for good, a
        `correction` is written now and kept until the next correction."""
        t = self.frame_index
        cfg = self.config
        if pin or correction or t - self._last_temporal >= cfg.temporal_every:
            values = self.engine.encode_value(frame, prob[None, 1:])
            if key is None:
                key = self._first_key(frame, values)
            self.temporal.add(key, values.flatten(3), pin=pin, frame=t, correction=correction and not pin)
            self._last_temporal = t
        if pin or correction or t - self._last_spatial >= cfg.spatial_every:
            self.spatial.add(frame.tokens, pin=pin, correction=correction and not pin, frame=t)
            self._last_spatial = t


def check_mask(mask: np.ndarray) -> np.ndarray:
    """A user mask as an HxW uint8 id array (bool masks become ids 0/1, float masks with integer values their
    ids); ValueError naming the problem for anything else (colour images, soft masks, ids outside 0..254:
    files from other tools go through stma_core.io.masks.load_mask, which renumbers wide ids)."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        hint = "; for a colour mask use stma_core.io.masks.load_mask (or take one channel)" if arr.ndim == 3 else ""
        raise ValueError(f"a mask must be a 2-D HxW array of object ids (0 = background); got shape {arr.shape}{hint}")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.dtype.kind == "f" and _whole_numbers(arr):
        arr = arr.astype(np.int64)  # 0.0/1.0 (a float label map) is ids, as the CLI reads float masks
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"a mask must hold integer object ids (0 = background, 1..{MAX_OBJECTS} objects); got dtype "
                         f"{arr.dtype}: threshold a soft mask first, e.g. (mask > 0.5).astype(np.uint8)")
    ids = np.unique(arr)
    bad = ids[(ids < 0) | (ids > MAX_OBJECTS)]
    if bad.size:
        raise ValueError(f"object ids must be 1..{MAX_OBJECTS}; got {bad[:5].tolist()} (0 is background, "
                         "255 is void): relabel the mask")
    return arr.astype(np.uint8, copy=False)


def _whole_numbers(arr: np.ndarray) -> bool:
    """True if a float array holds only finite whole numbers (a label map stored as float, not a soft mask)."""
    return bool(np.isfinite(arr).all() and (arr == np.round(arr)).all())


def late_object_gaps(given: Mapping[int, np.ndarray], name: Callable[[int], str] = str) -> str | None:
    """What direction BOTH leaves out, in words, or None: objects first given after the first mask are not
    segmented on the frames between the first mask and theirs (the forward pass starts at the first mask,
    before they are given), yet the backward pass segments them on the frames before the first mask.
    given: {frame index: id mask}; name: how to call frame i in the message."""
    first = min(given)
    if first == 0:  # no backward pass: objects given later simply start there
        return None
    since: dict[int, int] = {}
    for index in sorted(given):
        for object_id in np.unique(given[index]):
            since.setdefault(int(object_id), index)
    late: dict[int, list[int]] = {}
    for object_id, index in since.items():
        if object_id and index > first:
            late.setdefault(index, []).append(object_id)
    if not late:
        return None
    parts = "; ".join(f"object(s) {ids} first given on frame {name(index)} are missing from frames {name(first)} to "
                      f"{name(index - 1)}" for index, ids in sorted(late.items()))
    return (f"direction both: {parts}, although the backward pass segments them on the frames before frame "
            f"{name(first)}: the forward pass starts at the first mask (frame {name(first)}), before they are given; "
            f"if they are in view there, give them on frame {name(first)} too")


def _check_mask_size(mask: np.ndarray, frame_shape: tuple[int, ...], index: int) -> None:
    """ValueError when the mask for frame `index` is not at the frames' (H, W)."""
    if mask.shape != tuple(frame_shape):
        raise ValueError(f"the mask for frame {index} is {mask.shape[1]}x{mask.shape[0]} but the frames are "
                         f"{frame_shape[1]}x{frame_shape[0]}; give masks at the frame's size")


def _as_frame(frame: object, index: int) -> np.ndarray:
    """A frame as the HxWx3 uint8 RGB array the network reads: numpy arrays as they are, PIL images upright and
    RGB (as frame folders read), other array-likes (a torch tensor) through np.asarray. TypeError for a path or
    a (name, frame) pair; ValueError for an array of another shape or dtype."""
    if isinstance(frame, (str, bytes, Path)):
        raise TypeError(f"frame {index} is a path ({frame!r}), not an image: pass the path itself as `frames` to "
                        "propagate (a video file or frame folder), or read the image first")
    if isinstance(frame, tuple) and len(frame) == 2 and isinstance(frame[0], str):
        raise TypeError(f"frame {index} is a (name, frame) pair, as stma_core.io.frames.open_frames yields: pass "
                        "the source itself as `frames` to propagate, or its frames ([f for _, f in source])")
    if not isinstance(frame, np.ndarray):  # e.g. a PIL image: upright and RGB, as frame folders read
        frame = np.asarray(_pil_frame(frame))
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"a frame must be an HxWx3 uint8 RGB array; got {frame.dtype} {frame.shape} (frame {index})")
    return frame


def _warn_small_objects(mask: np.ndarray, frame_shape: tuple[int, ...], size: int, index: int) -> None:
    """UserWarning naming the objects of a given mask that cover less than one TOKEN_CELL x TOKEN_CELL cell of
    the network at the processing size: the network cannot see them and they vanish within a few frames
    (car-shadow at size 128: a 30x30-pixel object is gone on the next frame), which was silent."""
    h, w = frame_shape[:2]
    ph, pw = processing_size(h, w, size)
    ids, counts = np.unique(mask, return_counts=True)
    small = [(int(i), int(c), c * ph * pw / (h * w)) for i, c in zip(ids, counts)
             if i and c * ph * pw / (h * w) < TOKEN_CELL * TOKEN_CELL]
    if not small:
        return
    least = min(a for _, _, a in small)
    need = int(np.ceil(size * np.sqrt(TOKEN_CELL * TOKEN_CELL / max(least, 1e-6)) / 16) * 16)
    if need > min(h, w):  # more than the frame's own pixels: a larger size only blows up the same pixels
        fix = f"even the frame's own resolution (size {min(h, w)}) is too coarse for it; track a larger region"
    else:
        fix = f"use a larger size (about {need}: InferenceConfig(size=...), --size) or track a larger region"
    what = ", ".join(f"object {i} ({c} pixels, {a:.0f} at the processing size)" for i, c, a in small)
    verb = "covers" if len(small) == 1 else "cover"
    warnings.warn(f"frame {index}: {what} {verb} less than one {TOKEN_CELL}x{TOKEN_CELL} cell the network sees at "
                  f"the processing size {pw}x{ph} (size {size}), so it is likely lost within a few frames; {fix}",
                  stacklevel=3)


def _digest(frame: np.ndarray) -> bytes:
    """A 16-byte digest of a frame's pixels (about 1 ms for 480p): tells a frame given again from a new one."""
    return hashlib.blake2b(np.ascontiguousarray(frame).data, digest_size=16,
                           person=str(frame.shape).encode()[:16]).digest()


def merge_masks(earlier: np.ndarray | None, later: np.ndarray) -> np.ndarray:
    """Two masks of one frame as one: the later mask's nonzero pixels win. ValueError on size mismatch."""
    if earlier is None:
        return later
    if earlier.shape != later.shape:
        raise ValueError(f"masks given for the same frame differ in size ({earlier.shape[1]}x{earlier.shape[0]} "
                         f"and {later.shape[1]}x{later.shape[0]}); give masks at the frame's size")
    return np.where(later != 0, later, earlier)


class _SourceFrames:
    """The frames of a FrameSource (a video file), in order."""

    def __init__(self, source: object) -> None:
        self.source = source

    def __iter__(self) -> Iterator[np.ndarray]:
        return (frame for _, frame in self.source)  # type: ignore[attr-defined]


class _FolderFrames(_SourceFrames):
    """The frames of a frame folder, also by index (for backward propagation), read as the folder reads them."""

    def __len__(self) -> int:
        return len(self.source.files)  # type: ignore[attr-defined]

    def __getitem__(self, index: int) -> np.ndarray:
        return self.source.frame(index)  # type: ignore[attr-defined]


def _source_frames(frames: object) -> object:
    """`frames` as given, or the frames of a video file / frame folder path or FrameSource."""
    from stma_core.io.frames import FrameFolderSource, FrameSource, open_frames

    if isinstance(frames, (str, Path)):
        frames = open_frames(frames)
    if isinstance(frames, FrameFolderSource):
        return _FolderFrames(frames)
    return _SourceFrames(frames) if isinstance(frames, FrameSource) else frames


def _pil_frame(frame: object) -> object:
    """A PIL image turned as its EXIF orientation says (a phone JPEG from Image.open is stored sideways
    and shown upright, and masks are drawn on what is shown) and made RGB whatever its mode (L, RGBA, P,
    CMYK, as frame folders accept); anything else unchanged."""
    from PIL import Image, ImageOps
    return ImageOps.exif_transpose(frame).convert("RGB") if isinstance(frame, Image.Image) else frame


def session_factory(checkpoint: str | Path | None = None, device: str = "auto", size: int | None = None,
                    config: InferenceConfig | None = None, **settings: int | None) -> Callable[[], VideoSession]:
    """Loads the network once; each call returns a fresh VideoSession for one video.

    checkpoint: a .safetensors file, None = the shipped model. device: 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'.
    Settings: `resolve_inference_config(the checkpoint's recommendation, config, size=size, **settings)`:
    size and settings (InferenceConfig fields; None = not given) win over config, which wins over
    what the checkpoint recommends.
    """
    from stma_core.checkpoint import load_model, recommended_inference
    from stma_core.config import resolve_inference_config
    from stma_core.model.lite_backbone import fuse_for_inference

    network, _, metadata = load_model(checkpoint, resolve_device(device))
    if network.config.backbone == "lite":  # this network is only ever run: fold BatchNorm into the convs
        network.trunk = fuse_for_inference(network.trunk)
    resolved = resolve_inference_config(recommended_inference(metadata), config, size=size, **settings)

    def make() -> VideoSession:
        return VideoSession(TorchEngine(network), InferenceConfig(**resolved.__dict__))

    return make
