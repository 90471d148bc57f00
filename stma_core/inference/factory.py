"""Builds the propagator a command asked for: the STMA model or one of the baselines."""

from __future__ import annotations

from typing import Any, Callable

from stma_core.baselines import CopyPropagator, FlowPropagator
from stma_core.inference.propagator import Propagator

METHODS = ("stma", "copy", "flow")


def make_propagator_factory(
    method: str = "stma",
    checkpoint: str | None = None,
    device: str = "auto",
    size: int | None = None,
    settings: dict[str, Any] | None = None,
) -> Callable[[], Propagator]:
    """Returns a function that makes a fresh per-video propagator; the network is loaded once.

    method: 'stma' (the model; checkpoint None = the shipped default), 'copy' or 'flow'.
    size: short side the model processes; None = the size the checkpoint recommends.
    settings: other InferenceConfig overrides (None values = not given); see resolve_inference_config.
    """
    if method == "copy":
        return CopyPropagator
    if method == "flow":
        return FlowPropagator
    if method == "stma":
        from stma_core.inference.session import session_factory

        given = dict(settings or {})
        if size is not None:
            given["size"] = size
        return session_factory(checkpoint=checkpoint, device=device, **given)
    raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")


def make_propagator(method: str = "stma", checkpoint: str | None = None, device: str = "auto",
                    size: int | None = None) -> Propagator:
    return make_propagator_factory(method, checkpoint, device, size)()
