"""DPT adapter (SPEC §5.3): four token maps -> a dense [B, out, H, W] map.

Key names follow the reference, including the aliases `scratch.layer_rn.{0..3}` that register the same four
convolutions a second time (a checkpoint written from state_dict() holds both names) and refinenet4's unused
first residual unit.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DPTAdapter"]


class ResidualConvUnit(nn.Module):
    """x + conv2(ReLU(conv1(ReLU(x)))); the ReLU is not in place, so the skip sees the un-activated x."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class FeatureFusionBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(channels, channels, 1)
        self.resConfUnit1 = ResidualConvUnit(channels)
        self.resConfUnit2 = ResidualConvUnit(channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class Scratch(nn.Module):
    def __init__(self, layer_dims: tuple[int, ...], feature_dim: int) -> None:
        super().__init__()
        self.layer1_rn = nn.Conv2d(layer_dims[0], feature_dim, 3, padding=1, bias=False)
        self.layer2_rn = nn.Conv2d(layer_dims[1], feature_dim, 3, padding=1, bias=False)
        self.layer3_rn = nn.Conv2d(layer_dims[2], feature_dim, 3, padding=1, bias=False)
        self.layer4_rn = nn.Conv2d(layer_dims[3], feature_dim, 3, padding=1, bias=False)
        # Same modules under a second name, as in the reference (strict loading needs both key sets).
        self.layer_rn = nn.ModuleList([self.layer1_rn, self.layer2_rn, self.layer3_rn, self.layer4_rn])
        self.refinenet1 = FeatureFusionBlock(feature_dim)
        self.refinenet2 = FeatureFusionBlock(feature_dim)
        self.refinenet3 = FeatureFusionBlock(feature_dim)
        self.refinenet4 = FeatureFusionBlock(feature_dim)  # resConfUnit1 unused: refinenet4 has no skip input


class DPTAdapter(nn.Module):
    def __init__(self, in_dims: tuple[int, int, int, int], out_channels: int, feature_dim: int, last_dim: int,
                 layer_dims: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.scratch = Scratch(layer_dims, feature_dim)
        self.head = nn.Sequential(
            nn.Conv2d(feature_dim, feature_dim // 2, 3, padding=1),
            _Upsample2x(),
            nn.Conv2d(feature_dim // 2, last_dim, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(last_dim, out_channels, 1),
        )
        d0, d1, d2, d3 = layer_dims
        self.act_postprocess = nn.ModuleList([
            nn.Sequential(nn.Conv2d(in_dims[0], d0, 1), nn.ConvTranspose2d(d0, d0, kernel_size=4, stride=4)),
            nn.Sequential(nn.Conv2d(in_dims[1], d1, 1), nn.ConvTranspose2d(d1, d1, kernel_size=2, stride=2)),
            nn.Sequential(nn.Conv2d(in_dims[2], d2, 1)),
            nn.Sequential(nn.Conv2d(in_dims[3], d3, 1), nn.Conv2d(d3, d3, 3, stride=2, padding=1)),
        ])

    def forward(self, taps: list[torch.Tensor], grid_hw: tuple[int, int]) -> torch.Tensor:
        """taps: four [B, h*w, c_i] token maps (row-major) -> [B, out_channels, 16h, 16w]."""
        h, w = grid_hw
        levels = []
        for index, tokens in enumerate(taps):
            fmap = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)
            levels.append(self.scratch.layer_rn[index](self.act_postprocess[index](fmap)))
        # refinenet4 doubles level 3 (ceil(h/2)) which can overshoot level 2 by one row/column for odd h, w.
        path = self.scratch.refinenet4(levels[3])[:, :, : levels[2].shape[2], : levels[2].shape[3]]
        path = self.scratch.refinenet3(path, levels[2])
        path = self.scratch.refinenet2(path, levels[1])
        path = self.scratch.refinenet1(path, levels[0])
        return self.head(path)


class _Upsample2x(nn.Module):
    """Bilinear x2 with align_corners=True (parameter-free, keeps head.0/2/4 indices as in the reference)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
