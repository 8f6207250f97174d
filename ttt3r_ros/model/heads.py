"""The downstream head (reference `DPTPts3dPose`, SPEC §5): pose MLP, self/cross/RGB DPTs, final_transform.

The reference runs all of it in float32 with autocast off; this module computes in the dtype of its own
parameters (float32 unless build_model was asked otherwise) and post-processes in float32.
"""
from __future__ import annotations

from typing import Collection, Optional

import torch
from torch import nn

from .blocks import ConditionModulationBlock, Mlp
from .config import ModelConfig
from .dpt import DPTAdapter
from .postprocess import confidence_from_raw, points_from_raw, pose_from_raw, pose_to_c2w, rgb_from_raw
from .rope import RopeTable

__all__ = ["DownstreamHead", "HEAD_NAMES"]

HEAD_NAMES = ("self", "cross", "rgb")


class PoseHead(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float) -> None:
        super().__init__()
        self.mlp = Mlp(dim, int(dim * mlp_ratio), 7)

    def forward(self, pose_feat: torch.Tensor) -> torch.Tensor:
        return self.mlp(pose_feat)


class DownstreamHead(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        in_dims = (cfg.enc_embed_dim, cfg.dec_embed_dim, cfg.dec_embed_dim, cfg.dec_embed_dim)
        widths = dict(feature_dim=cfg.dpt_feature_dim, last_dim=cfg.dpt_last_dim,
                      layer_dims=tuple(cfg.dpt_layer_dims))
        self.conf_bounds = (float(cfg.conf_mode[1]), float(cfg.conf_mode[2]))
        # Registration order = the reference's state_dict order.
        self.dpt_self = DPTAdapter(in_dims, 4, **widths)
        self.final_transform = nn.ModuleList([
            ConditionModulationBlock(cfg.dec_embed_dim, cfg.dec_num_heads, cfg.mlp_ratio, cfg.norm_eps)
            for _ in range(2)])
        self.dpt_cross = DPTAdapter(in_dims, 4, **widths)
        self.dpt_rgb = DPTAdapter(in_dims, 3, **widths)
        self.pose_head = PoseHead(cfg.dec_embed_dim, cfg.mlp_ratio)

    def _points_and_conf(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = raw.permute(0, 2, 3, 1).to(torch.float32)
        return points_from_raw(fmap[..., 0:3]), confidence_from_raw(fmap[..., 3], *self.conf_bounds)

    def forward(self, taps: list[torch.Tensor], grid_hw: tuple[int, int], image_rope: Optional[RopeTable],
                heads: Collection[str]) -> dict[str, Optional[torch.Tensor]]:
        """taps: [F, Y_a without pose token, Y_b without pose token, dec_norm(Y_L) with the pose token first].

        image_rope: RoPE table of the image token positions (final_transform, float32 rotation).
        Returns float32 tensors: camera_pose, c2w and, for each head asked for, its outputs.
        """
        dtype = self.pose_head.mlp.fc1.weight.dtype
        taps = [t.to(dtype) for t in taps]
        last = taps[-1]
        pose_feat = last[:, 0]
        tokens = last[:, 1:]
        camera_pose = pose_from_raw(self.pose_head(pose_feat).to(torch.float32))
        out: dict[str, Optional[torch.Tensor]] = {
            "camera_pose": camera_pose, "c2w": pose_to_c2w(camera_pose),
            "pts3d_in_self_view": None, "conf_self": None, "pts3d_in_other_view": None, "conf": None,
            "rgb": None,
        }
        shared = taps[:-1]
        if "self" in heads:
            out["pts3d_in_self_view"], out["conf_self"] = self._points_and_conf(
                self.dpt_self(shared + [tokens], grid_hw))
        if "rgb" in heads:
            raw_rgb = self.dpt_rgb(shared + [tokens], grid_hw)
            out["rgb"] = rgb_from_raw(raw_rgb.permute(0, 2, 3, 1).to(torch.float32))
        if "cross" in heads:
            cross_tokens = tokens
            for block in self.final_transform:
                cross_tokens = block(cross_tokens, pose_feat, image_rope)
            out["pts3d_in_other_view"], out["conf"] = self._points_and_conf(
                self.dpt_cross(shared + [cross_tokens], grid_hw))
        return out
