"""2D rotary position embedding (RoPE, base 100) as CUT3R uses it (SPEC §3.2, §3.2.1).

Layout per attention head of dimension d: the first d/2 features encode the row (y) position, the last d/2 the
column (x) position; within each half of length m, features k and k + m/2 form a rotation pair ("rotate-half").
Angles are computed directly from the positions (the pose token sits at (-1, -1) and is rotated by the negative
angle), always in float32.
"""
from __future__ import annotations

import torch

__all__ = ["RopeTable", "rope_inv_freq", "rope_table", "apply_rope", "apply_rope_fp16_recipe"]

# (cos, sin), each [N, 2, 1, F] float32: axis 1 is y/x, axis 2 broadcasts over the (a, b) halves of a pair.
RopeTable = tuple[torch.Tensor, torch.Tensor]


def rope_inv_freq(head_dim: int, base: float) -> torch.Tensor:
    """omega_k = 1 / base^(k/F), F = head_dim/4, in float32 on the CPU.

    Evaluated on the CPU in float32 with the reference's expression so that the frequencies are the same bits
    on every device (CPU float32 pow and division are correctly rounded; GPU pow need not be).
    """
    half = head_dim // 2  # D in the reference: features per axis
    exponent = torch.arange(0, half, 2, dtype=torch.float32) / half  # = k/F
    return 1.0 / (base ** exponent)


def rope_table(positions: torch.Tensor, head_dim: int, base: float) -> RopeTable:
    """cos/sin of the angles p * omega_k for integer positions [N, 2] (y, x); float32, on positions' device."""
    inv_freq = rope_inv_freq(head_dim, base).to(positions.device)
    angles = positions.to(torch.float32)[:, :, None] * inv_freq  # [N, 2, F], one float32 product per element
    return angles.cos()[:, :, None, :], angles.sin()[:, :, None, :]


def apply_rope(tokens: torch.Tensor, table: RopeTable) -> torch.Tensor:
    """Rotate tokens [B, H, N, d] by the table of their N positions, in float32 (decoders, final_transform).

    Each output is a*cos - b*sin or b*cos + a*sin with every product and sum a separate float32 rounding
    (separate kernels, so no fused multiply-add), which is what the reference computes.
    Tokens of another dtype are rotated in float32 and rounded once to their dtype.
    """
    cos, sin = table
    in_dtype = tokens.dtype
    t = tokens.to(torch.float32) if in_dtype != torch.float32 else tokens
    t = t.unflatten(-1, (2, 2, -1))  # [B, H, N, axis(y,x), pair-half(a,b), F]
    a, b = t.unbind(-2)
    rotated_half = torch.stack((-b, a), dim=-2)
    out = (t * cos + rotated_half * sin).flatten(-3)
    return out if in_dtype == torch.float32 else out.to(in_dtype)


def apply_rope_fp16_recipe(tokens: torch.Tensor, table: RopeTable) -> torch.Tensor:
    """The image encoder's RoPE (SPEC §3.2.1): round to float16, rotate in float32, round once to float16.

    Returns the tokens' own dtype again (the reference's attention converts back before attention).
    """
    rounded = tokens.to(torch.float16).to(torch.float32)
    return apply_rope(rounded, table).to(torch.float16).to(tokens.dtype)
