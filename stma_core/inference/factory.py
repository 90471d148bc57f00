"""Builds the propagator a command asked for: the STMA model or one of the baselines."""

from __future__ import annotations

from typing import Callable

from stma_core.baselines import CopyPropagator, FlowPropagator
from stma_core.inference.propagator import Propagator

METHODS = ("stma", "copy", "flow")


def make_propagator_factory(
    method: str = "stma",
    checkpoint: str | None = None,
    device: str = "auto",
    size: int | None = None,
) -> Callable[[], Propagator]:
    """Returns a function that makes a fresh per-video propagator; the network is loaded once.

    method: 'stma' (the model; checkpoint None = the shipped default), 'copy' or 'flow'.
    size: short side the model processes; None = the size the checkpoint recommends.
    """
    if method == "copy":
        return CopyPropagator
    if method == "flow":
        return FlowPropagator
    if method == "stma":
        from stma_core.inference.session import session_factory

        return session_factory(checkpoint=checkpoint, device=device, size=size)
    raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def make_propagator(method: str = "stma", checkpoint: str | None = None, device: str = "auto",
                    size: int | None = None) -> Propagator:
    return make_propagator_factory(method, checkpoint, device, size)()
