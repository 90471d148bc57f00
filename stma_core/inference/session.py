"""Per-video inference state around the stateless STMA network.

    session = VideoSession(network, InferenceConfig())
    session.add_mask(0, first_mask)                      # any frame, any time; ids 1..254
    for index, mask in session.propagate(frames): ...    # or session.step(frame) frame by frame

Memory is bounded: the spatial memory holds at most `spatial_capacity` frames plus the frames on
which objects first appeared, the temporal memory `temporal_capacity` plus those, so time and
memory per frame stop growing once the memories are full.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from stma_core.config import InferenceConfig
from stma_core.inference.object_manager import ObjectManager
from stma_core.inference.spatial_memory import SpatialMemory
from stma_core.inference.temporal_memory import TemporalMemory
from stma_core.model.lite_backbone import fuse_for_inference
from stma_core.model.network import FrameFeatures, STMANetwork


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available; use --device cpu or auto")
    return torch.device(name)


def processing_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """Size the network sees: short side scaled to `short_side` (never up-scaled past the input)."""
    scale = min(short_side / min(height, width), 1.0) if short_side > 0 else 1.0
    return max(16, round(height * scale)), max(16, round(width * scale))


class VideoSession:
    def __init__(self, network: STMANetwork, config: InferenceConfig | None = None) -> None:
        self.config = config or InferenceConfig()
        self.device = next(network.parameters()).device
        self.network = network.eval()
        self.objects = ObjectManager()
        self.spatial = SpatialMemory(self.config.spatial_capacity)
        self.temporal = TemporalMemory(self.config.temporal_capacity)
        self.pending_masks: dict[int, np.ndarray] = {}
        self.frame_index = 0
        self._last_spatial = -1
        self._last_temporal = -1
        self._ref_cache = None
        self._ref_cache_version: tuple[int, int, int] | None = None

    # ---- public API -----------------------------------------------------------------------
    def add_mask(self, frame_index: int, mask: np.ndarray) -> None:
        """Registers a user mask (HxW uint8, pixel = object id) for a frame not yet processed."""
        if frame_index < self.frame_index:
            raise ValueError(f"frame {frame_index} was already processed; masks must be added ahead")
        self.pending_masks[frame_index] = mask

    def propagate(self, frames: Iterable[np.ndarray], masks: dict[int, np.ndarray] | None = None
                  ) -> Iterator[tuple[int, np.ndarray]]:
        """Yields (frame index, HxW uint8 user-id mask) for every frame, in order, streaming."""
        for index, mask in (masks or {}).items():
            self.add_mask(index, mask)
        for frame in frames:
            index = self.frame_index
            yield index, self.step(frame)

    def step(self, frame: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Segments one frame (HxWx3 uint8 RGB); returns the HxW uint8 user-id mask."""
        if mask is None:
            mask = self.pending_masks.pop(self.frame_index, None)
        with torch.inference_mode(), self._autocast():
            labels = self._step(frame, mask)
        self.frame_index += 1
        return self.objects.to_user_mask(labels)

    # ---- soft output (opt-in) ---------------------------------------------------------------
    keep_probabilities: bool = False
    """Set True before stepping to keep each frame's per-object probabilities (costs a copy per frame)."""
    _last_probabilities: torch.Tensor | None = None

    def probabilities(self) -> dict[int, np.ndarray]:
        """Soft masks of the last `step`: user id -> HxW uint8 at the frame's size, value = round(255 * p).

        p is the softmax probability of the object (background and all objects sum to 1 per pixel);
        the id mask `step` returned is the argmax over background and objects. Needs
        `keep_probabilities = True` before that step, else raises RuntimeError.
        """
        if self._last_probabilities is None:
            raise RuntimeError("no probabilities kept; set session.keep_probabilities = True before step()")
        return {user_id: self._last_probabilities[i].numpy() for i, user_id in enumerate(self.objects.user_ids)}

    # ---- internals -------------------------------------------------------------------------
    def _autocast(self):
        if self.device.type == "cuda" and self.config.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        return contextlib.nullcontext()

    def _to_tensor(self, frame: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        h, w = frame.shape[:2]
        ph, pw = processing_size(h, w, self.config.size)
        if (ph, pw) != (h, w):
            frame = cv2.resize(frame, (pw, ph), interpolation=cv2.INTER_AREA)
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

    def _reference_cache(self, obj_tokens: torch.Tensor):
        """The STML object/reference streams, recomputed only when memories changed."""
        version = (self.spatial.version, self.temporal.version, self.objects.count)
        if self._ref_cache is None or self._ref_cache_version != version:
            self._ref_cache = self.network.encode_references(self.spatial.tokens(), obj_tokens)
            self._ref_cache_version = version
        return self._ref_cache

    def _predict(self, frame: FrameFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """-> probabilities (n+1, Hp, Wp) incl. background, and this frame's memory key (1, N, Ck)."""
        n = self.objects.count
        keys, values = self.temporal.keys_values(n)
        cache = self._reference_cache(self.network.object_tokens(values))
        test = self.network.associate(frame, cache)
        query = self.network.key(test)
        readout, usage = self.network.read_memory(query, keys, values)
        self.temporal.record_usage(usage)
        logits = self.network.segment(frame, test, readout)
        return torch.softmax(self.network.aggregate(logits)[0].float(), 0), query

    def _first_key(self, frame: FrameFeatures, values: torch.Tensor) -> torch.Tensor:
        """Memory key of a frame that had nothing to read yet: STML with itself as the reference."""
        obj_tokens = self.network.object_tokens(values.flatten(3))
        cache = self.network.encode_references(frame.tokens[:, None], obj_tokens)
        return self.network.key(self.network.associate(frame, cache))

    def _step(self, frame_np: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        height, width = frame_np.shape[:2]
        image, size = self._to_tensor(frame_np)
        padded = image.shape[-2:]
        frame = self.network.encode_frame(image)
        new_ids: list[int] = []
        if mask is not None:
            ids = [int(i) for i in np.unique(mask) if i != 0]
            new_ids = self.objects.add(ids)
        n = self.objects.count
        key = None
        if len(self.temporal) and n:
            prob, key = self._predict(frame)
            if prob.shape[0] < n + 1:  # objects first given on this frame
                prob = torch.cat([prob, prob.new_zeros(n + 1 - prob.shape[0], *prob.shape[1:])], 0)
        else:
            prob = torch.zeros(n + 1, *padded, device=self.device)
            prob[0] = 1
        if mask is not None:
            given = self._given_probabilities(mask, size, padded)
            given_ids = [self.objects.index_of(i) for i in np.unique(mask) if i != 0]
            covered = given.sum(0).clamp(max=1)
            prob[1:] = prob[1:] * (1 - covered)
            for idx in given_ids:
                prob[idx + 1] = given[idx]
            prob[0] = (1 - prob[1:].sum(0)).clamp(min=0)
        if n:
            self._memorize(frame, prob, key, pin=bool(new_ids))
        prob = prob[:, : size[0], : size[1]]
        if (size[0], size[1]) != (height, width):
            prob = F.interpolate(prob[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        if self.keep_probabilities:  # opt-in soft output, read with probabilities()
            self._last_probabilities = (prob[1:] * 255).round_().to(torch.uint8).cpu()
        # argmax over a contiguous last dim: same labels (first max wins), ~8x faster than over dim 0 on CPU
        labels = prob.movedim(0, -1).contiguous().argmax(-1)
        return labels.to(torch.uint8 if n < 255 else torch.int64).cpu().numpy()

    def _memorize(self, frame: FrameFeatures, prob: torch.Tensor, key: torch.Tensor | None, pin: bool) -> None:
        t = self.frame_index
        cfg = self.config
        if pin or t - self._last_temporal >= cfg.temporal_every:
            values = self.network.encode_value(frame, prob[None, 1:])
            if key is None:
                key = self._first_key(frame, values)
            self.temporal.add(key, values.flatten(3), pin=pin)
            self._last_temporal = t
        if pin or t - self._last_spatial >= cfg.spatial_every:
            self.spatial.add(frame.tokens, pin=pin)
            self._last_spatial = t


def session_factory(checkpoint: str | None = None, device: str = "auto", size: int | None = None,
                    config: InferenceConfig | None = None) -> Callable[[], VideoSession]:
    """Loads the network once; each call returns a fresh VideoSession for one video."""
    from stma_core.checkpoint import load_model

    torch_device = resolve_device(device)
    network, _, metadata = load_model(checkpoint, torch_device)
    if network.config.backbone == "lite":  # this network is only ever run: fold BatchNorm into the convs
        network.trunk = fuse_for_inference(network.trunk)
    if size is None:  # the scale the model was trained at works best (see docs/MODEL.md)
        size = int(metadata.get("inference_size", InferenceConfig.size))
    base = config or InferenceConfig(size=size, device=device)

    def make() -> VideoSession:
        return VideoSession(network, InferenceConfig(**{**base.__dict__}))

    return make
