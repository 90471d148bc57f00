"""Typed training configuration; saved with every checkpoint (train_config.json in the run folder)."""

from __future__ import annotations

from dataclasses import dataclass, field

from stma_core.config import ModelConfig

STAGES = ("static", "main")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    stage: str = "main"  # "static" (synthetic clips from still images) or "main" (video clips)
    split: str = "train"  # split file name under ImageSets/2016 or ImageSets/2017
    cache_features: bool = True  # frozen lite trunk: cache its maps once (much faster steps)
    train_trunk: bool = False
    # learning rate of the lite trunk's top stages (the blocks from the stride-8 to the stride-16 map),
    # trained on cached stride-8 maps with BatchNorm statistics frozen; 0 keeps them frozen. It follows
    # the same decay schedule as `lr`.
    trunk_top_lr: float = 0.0
    steps: int = 2000
    batch_size: int = 4
    clip_length: int = 5
    crop: tuple[int, int] = (256, 384)  # H, W (multiples of 16)
    frame_size: tuple[int, int] = (288, 512)  # frames are resized to this before cropping
    multi_object_prob: float = 0.5
    num_refs: int = 2
    lr: float = 2e-4
    weight_decay: float = 0.05
    lr_decay_steps: tuple[int, ...] = (1600,)
    lr_decay_factor: float = 0.1
    grad_clip: float = 3.0
    bootstrap_warmup: int = 200
    bootstrap_ramp: int = 800
    max_gap_low: int = 3
    max_gap_high: int = 20
    checkpoint_every: int = 100
    log_every: int = 10
    seed: int = 0
    threads: int = 0  # torch threads (0 = leave torch's default)
    data_threads: int = 0  # threads that synthesize a batch's static clips (0 = in the training thread); same clips
    amp: bool = True  # autocast on CUDA (bfloat16 where supported, else float16 with loss scaling)
    init_from: str | None = None  # model.safetensors to start from (e.g. the static stage's); fresh runs only
    static_max_objects: int = 3  # static stage: multi-object clips have 2..this many objects
    static_frame_every: int = 1  # static stage: use every k-th frame of each sequence as a still
    static_images: str | None = None  # static stage: still-image folder (e.g. DUTS-TR-Image) instead of DAVIS frames
    static_masks: str | None = None  # its masks, same stems as the images (.png; soft masks cut at 128)
    static_holdout: int = 0  # static stage: the last k stills (by name) are never trained on (for validation)
    static_distractor_prob: float = 0.0  # static stage: chance of an unannotated copy of a target in a clip
    static_region_prob: float = 0.0  # static stage: chance that object 1 is a random background region
    static_mix_prob: float = 0.0  # main stage: share of batches that are static clips (needs static_images)
