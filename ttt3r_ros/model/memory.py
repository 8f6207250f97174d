"""The pose retriever memory (reference `LocalMemory`, SPEC §4 steps 3 and 5).

A bank of learned memory slots [M, 2D] that is read with the image-level feature to predict the pose token of
the next view (`inquire`) and written with the image-level feature and the decoded pose token (`update_mem`).
Its DecoderBlocks work at width 2D with the image decoder's head count and no RoPE.
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import DecoderBlock

__all__ = ["PoseMemory"]


class PoseMemory(nn.Module):
    def __init__(self, size: int, key_dim: int, value_dim: int, num_heads: int, mlp_ratio: float, eps: float,
                 depth: int = 2) -> None:
        super().__init__()
        self.value_dim = value_dim
        # Parameter registration order is the reference's (masked_token, mem, proj_q, write/read blocks).
        self.masked_token = nn.Parameter(torch.zeros(1, 1, value_dim))
        self.mem = nn.Parameter(torch.zeros(1, size, 2 * value_dim))
        self.proj_q = nn.Linear(key_dim, value_dim)
        self.write_blocks = nn.ModuleList(
            [DecoderBlock(2 * value_dim, num_heads, mlp_ratio, eps, "none") for _ in range(depth)])
        self.read_blocks = nn.ModuleList(
            [DecoderBlock(2 * value_dim, num_heads, mlp_ratio, eps, "none") for _ in range(depth)])

    def _project(self, image_feat: torch.Tensor) -> torch.Tensor:
        """proj_q in the weights' dtype, back in the stream's (the masked token's dtype; the same unless the model
        keeps a float32 stream with reduced weights)."""
        return self.proj_q(image_feat.to(self.proj_q.weight.dtype)).to(self.masked_token.dtype)

    def inquire(self, image_feat: torch.Tensor, mem: torch.Tensor) -> torch.Tensor:
        """Pose token [B, 1, D] from the image-level feature [B, 1, C_enc] and the memory [B, M, 2D]."""
        x = self._project(image_feat)
        x = torch.cat([x, self.masked_token.expand(x.shape[0], -1, -1)], dim=-1)
        for block in self.read_blocks:
            x, _ = block(x, mem, None, None)
        return x[..., -self.value_dim:]

    def update_mem(self, mem: torch.Tensor, image_feat: torch.Tensor, pose_feat: torch.Tensor) -> torch.Tensor:
        """New memory [B, M, 2D]: the slots attend to [proj_q(image feature) ; decoded pose token]."""
        feat = torch.cat([self._project(image_feat), pose_feat], dim=-1)
        for block in self.write_blocks:
            mem, _ = block(mem, feat, None, None)
        return mem
