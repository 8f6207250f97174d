"""The recurrent state carried between views and the per-view outputs of `TTT3RModel.step`."""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch

__all__ = ["RecurrentState", "StepOutput", "INTERMEDIATE_NAMES", "finite_streams"]

# Names of StepOutput.intermediates, the same as in the parity vector files.
INTERMEDIATE_NAMES = ("enc_feat", "pose_feat_in", "state_in", "state_new", "mem_in", "mem_new",
                      "head_in_1", "head_in_2", "head_in_3")


@dataclasses.dataclass
class RecurrentState:
    """Per-stream recurrent state; every tensor has the streams on dim 0.

    state: [B, S, D] state tokens (post dec_norm_state), mem: [B, M, 2D] pose memory,
    fresh: [B] bool, True where the next view starts a chunk (first view, or the view after a reset): that
    view takes the learned pose token instead of querying the memory, and replaces the state fully.
    """

    state: torch.Tensor
    mem: torch.Tensor
    fresh: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.state.shape[0]

    def clone(self) -> "RecurrentState":
        return RecurrentState(self.state.clone(), self.mem.clone(), self.fresh.clone())

    def select(self, index: int) -> "RecurrentState":
        """Stream `index` alone, as a batch of one (views, not copies)."""
        return RecurrentState(self.state[index:index + 1], self.mem[index:index + 1], self.fresh[index:index + 1])

    @staticmethod
    def stack(states: Sequence["RecurrentState"]) -> "RecurrentState":
        """Concatenate several states (each with any batch size) into one batch, in order."""
        if not states:
            raise ValueError("RecurrentState.stack needs at least one state")
        return RecurrentState(torch.cat([s.state for s in states]), torch.cat([s.mem for s in states]),
                              torch.cat([s.fresh for s in states]))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "RecurrentState":
        """Move to a device and/or change the float dtype (fresh stays bool)."""
        return RecurrentState(self.state.to(device=device, dtype=dtype), self.mem.to(device=device, dtype=dtype),
                              self.fresh.to(device=device))


@dataclasses.dataclass
class StepOutput:
    """Outputs of one view for every stream of the batch (float32 unless noted; heads not asked for are None).

    camera_pose: [B, 7] (tx, ty, tz, qw, qx, qy, qz) camera-to-world, OpenCV camera axes, qw >= 0.
    c2w: [B, 4, 4] the same pose as a matrix. rgb in [-1, 1]. Confidences >= 1.
    gate_logit/gate: [B, S] the TTT3R gate of this view (computed under every rule);
    update_rate: [B, S] the rate actually applied to the state (1 on fresh views and for cut3r, 0 where
    update=False).
    """

    pts3d_in_self_view: Optional[torch.Tensor]
    conf_self: Optional[torch.Tensor]
    pts3d_in_other_view: Optional[torch.Tensor]
    conf: Optional[torch.Tensor]
    rgb: Optional[torch.Tensor]
    camera_pose: torch.Tensor
    c2w: torch.Tensor
    gate_logit: torch.Tensor
    gate: torch.Tensor
    update_rate: torch.Tensor
    intermediates: Optional[dict[str, torch.Tensor]] = None


# StepOutput fields checked by finite_streams (those of heads that did not run are None and skipped).
_CHECKED_OUTPUTS = ("c2w", "pts3d_in_self_view", "conf_self", "pts3d_in_other_view", "conf", "rgb")


def finite_streams(out: StepOutput, state: RecurrentState) -> torch.Tensor:
    """[B] bool on the outputs' device: per stream, whether the view's pose, the outputs of the heads that ran and
    the new state and memory are all finite. Device-side reductions only (no host synchronisation), so it can run
    inside a CUDA graph; a float16 overflow anywhere upstream ends up here as inf or NaN."""
    tensors = [t for t in (getattr(out, name) for name in _CHECKED_OUTPUTS) if t is not None]
    tensors += [state.state, state.mem]
    flags = [torch.isfinite(t).flatten(1).all(dim=1) for t in tensors]
    return torch.stack(flags).all(dim=0)
