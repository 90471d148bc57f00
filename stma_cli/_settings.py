"""The inference-setting flags `segment` and `eval` share, and how they become InferenceConfig overrides.

Every flag defaults to "not given": the checkpoint's recommended InferenceConfig (or an export's) then
decides, and InferenceConfig's defaults where it says nothing. `stma_core.config.resolve_inference_config`
does the merging; this module only names flags and reports bad values with the flag's name.
"""

from __future__ import annotations

from typing import Any, Optional

import typer

from stma_cli._common import fail
from stma_core.config import MIN_SIZE, SETTING_MINIMUMS, SIZE_TOO_SMALL, InferenceConfig

_D = InferenceConfig()
FLAGS = {"size": "--size", "top_k": "--top-k", "kernel_sigma": "--kernel-sigma",
         "spatial_capacity": "--spatial-capacity",
         "spatial_every": "--spatial-every", "temporal_capacity": "--temporal-capacity",
         "temporal_every": "--temporal-every"}


def _shown(value: object) -> str:
    return f"{value} or the checkpoint's"


SIZE = typer.Option(None, "--size", show_default="the checkpoint's: 480 for the shipped model",
                    help=f"Short side the model works at, at least {MIN_SIZE}; never above the input's (frames are not "
                         "upscaled). Outputs always keep the input size.")
TOP_K = typer.Option(None, "--top-k", show_default=_shown(_D.top_k),
                     help="Memory readout keeps the k best matches per position (0 = all).")
KERNEL_SIGMA = typer.Option(None, "--kernel-sigma", show_default=_shown(_D.kernel_sigma),
                            help="Memory readout favours each memory entry's best match and its surroundings "
                                 "(Gaussian of this sigma in 16-pixel cells; 0 = off), so look-alikes "
                                 "elsewhere in the frame are not taken for the object.")
SPATIAL_CAPACITY = typer.Option(None, "--spatial-capacity", show_default=_shown(_D.spatial_capacity),
                                help="Reference frames kept, besides frames where objects were first given.")
SPATIAL_EVERY = typer.Option(None, "--spatial-every", show_default=_shown(_D.spatial_every),
                             help="A frame becomes a reference every N frames.")
TEMPORAL_CAPACITY = typer.Option(None, "--temporal-capacity", show_default=_shown(_D.temporal_capacity),
                                 help="Memory frames kept, besides frames where objects were first given.")
TEMPORAL_EVERY = typer.Option(None, "--temporal-every", show_default=_shown(_D.temporal_every),
                              help="A frame enters the temporal memory every N frames.")


def settings_from_flags(size: Optional[int] = None, top_k: Optional[int] = None,
                        spatial_capacity: Optional[int] = None, spatial_every: Optional[int] = None,
                        temporal_capacity: Optional[int] = None, temporal_every: Optional[int] = None,
                        kernel_sigma: Optional[int] = None) -> dict[str, Any]:
    """-> the InferenceConfig overrides the user gave (None = not given); exits 2 naming a bad flag."""
    given = dict(size=size, top_k=top_k, spatial_capacity=spatial_capacity, spatial_every=spatial_every,
                 temporal_capacity=temporal_capacity, temporal_every=temporal_every, kernel_sigma=kernel_sigma)
    for name, value in given.items():
        if value is not None and value < SETTING_MINIMUMS[name]:
            if name == "size":  # the network's floor, not a range: say why and what works
                fail(f"--size: {value} is {SIZE_TOO_SMALL}; use at least {MIN_SIZE}, e.g. {_D.size} (the default), "
                     "or leave it out")
            fail(f"{FLAGS[name]}: {value} is too small; use at least {SETTING_MINIMUMS[name]} (or leave it out)")
    return given


def refuse_model_flags_for_baseline(method: str, checkpoint: object, settings: dict[str, Any]) -> None:
    """`--method copy|flow` runs no model: a --checkpoint or a model setting given with it changed nothing and
    was dropped without a word (a user comparing their checkpoint got the baseline's numbers under its name).
    One line naming the flags instead, as `stma eval --pred` does for flags that would set up segmenting."""
    if method == "stma":
        return
    unused = (["--checkpoint"] if checkpoint is not None else []) + [
        FLAGS[name] for name, value in settings.items() if value is not None]
    if unused:
        fail(f"{', '.join(unused)}: not used by --method {method} (a baseline, no model); drop "
             f"{'it' if len(unused) == 1 else 'them'}, or use --method stma to run the model")
