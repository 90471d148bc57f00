"""The one device resolver: a device name -> torch.device, with one-line errors that say what to use."""

from __future__ import annotations

import os
import re

import torch

DEVICE_NAMES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' (CUDA, else MPS, else CPU), 'cpu', 'cuda', 'cuda:N' or 'mps' -> torch.device.

    Under torchrun (WORLD_SIZE > 1), 'auto' and 'cuda' pick this process's GPU, cuda:LOCAL_RANK.
    Raises ValueError naming the device and the fix when it is unknown or not available here.
    """
    if isinstance(name, torch.device):
        return name
    if name not in ("auto", "cpu", "cuda", "mps") and not re.fullmatch(r"cuda:\d+", name):
        raise ValueError(f"unknown device {name!r}; use one of {', '.join(DEVICE_NAMES)}")
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if cuda else "mps" if mps else "cpu"
    if name.startswith("cuda"):
        if not cuda:
            raise ValueError(f"device {name!r} requested but CUDA is not available; use device 'cpu' or 'auto'")
        if name == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            name = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist; "
                             "use a smaller index")
    if name == "mps" and not mps:
        raise ValueError("device 'mps' requested but MPS is not available; use device 'cpu' or 'auto'")
    return torch.device(name)
