"""Device -> host copies of one step's outputs into fresh pinned host memory, asynchronously, with events to wait on.

A pinned buffer is never reused while it is referenced: torch's caching host allocator recycles a block only once
its tensor is freed and its copy has finished, so a consumer may keep the arrays of an old frame as long as it
likes. On a CPU device the copies are plain synchronous copies and there is nothing to wait for.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class HostCopies:
    """One step's outputs on their way to the host: ``first`` (e.g. the pose) and ``with_first`` (e.g. the step's
    finite flags) behind their own event, so a caller can wait for them alone, and the rest behind a second event."""
    first: torch.Tensor
    first_ready: Any  # torch.cuda.Event, or None on a CPU
    tensors: dict[str, torch.Tensor]
    ready: Any
    with_first: dict[str, torch.Tensor] = field(default_factory=dict)

    def wait_first(self) -> torch.Tensor:
        if self.first_ready is not None:
            self.first_ready.synchronize()
        return self.first

    def wait(self) -> dict[str, torch.Tensor]:
        """Every copy complete (the first one included)."""
        if self.ready is not None:
            self.ready.synchronize()
        return self.tensors

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """numpy views of ``tensors`` (no copy; valid to read once ``ready`` has completed)."""
        return {name: t.numpy() for name, t in self.tensors.items()}


def _event(device: torch.device) -> Any:
    if device.type != "cuda":
        return None
    event = torch.cuda.Event()
    event.record()
    return event


def copy_to_host(first: torch.Tensor, others: dict[str, torch.Tensor],
                 with_first: dict[str, torch.Tensor] | None = None) -> HostCopies:
    """Issue the copies on the current stream (after the kernels that produce the sources, before anything that
    overwrites them): ``first`` and ``with_first``, their event, then ``others`` in order, then the second event. All
    sources must be on one device."""
    device = first.device
    pin = device.type == "cuda"

    def fresh(src: torch.Tensor) -> torch.Tensor:
        dst = torch.empty(src.shape, dtype=src.dtype, pin_memory=pin)
        dst.copy_(src, non_blocking=pin)
        return dst

    first_host = fresh(first)
    with_first_host = {name: fresh(src) for name, src in (with_first or {}).items()}
    first_ready = _event(device)
    tensors = {name: fresh(src) for name, src in others.items()}
    return HostCopies(first_host, first_ready, tensors, _event(device), with_first_host)
