"""Transformer building blocks (SPEC §3.1): pre-norm ViT blocks, decoder blocks with cross-attention, and the
pose-conditioned blocks of final_transform. Parameter names match the reference's state_dict.

All attention goes through torch.nn.functional.scaled_dot_product_attention (no attention matrix is built).
The cross-attention can also return the TTT3R gate term of its queries (SPEC §6.1): the pre-softmax logit
averaged over keys and heads, computed as q~ . mean_j(k~_j) after RoPE.

`attention_impl = "explicit"` on an Attention/CrossAttention module (``set_attention_impl`` for every one under a
module) switches it to the reference's explicit path (q@k^T*scale, softmax, @v; the gate then averages the
materialised logits): for benchmarks that mimic the reference's execution only (``ttt3r-ros bench --baseline
reference``).
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .rope import RopeTable, apply_rope, apply_rope_fp16_recipe

__all__ = ["Mlp", "Attention", "CrossAttention", "EncoderBlock", "DecoderBlock", "ModLN",
           "ConditionModulationBlock", "RopeMode", "AttentionImpl", "ATTENTION_IMPLS", "set_attention_impl"]

# "fp32": rotate in float32 (decoders); "fp16_recipe": the image encoder's float16 rounding (SPEC §3.2.1);
# "none": no RoPE (pose memory).
RopeMode = Literal["fp32", "fp16_recipe", "none"]
AttentionImpl = Literal["sdpa", "explicit"]
ATTENTION_IMPLS: tuple[str, ...] = ("sdpa", "explicit")


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
            impl: AttentionImpl) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """softmax(q k^T * scale) v; the explicit path also returns its logits [B, H, Nq, Nk]."""
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, scale=scale), None
    if impl != "explicit":
        raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
    logits = (q @ k.transpose(-2, -1)) * scale
    return logits.softmax(dim=-1) @ v, logits


def _rope(tokens: torch.Tensor, table: Optional[RopeTable], mode: RopeMode) -> torch.Tensor:
    if mode == "none" or table is None:
        return tokens
    if mode == "fp16_recipe":
        return apply_rope_fp16_recipe(tokens, table)
    return apply_rope(tokens, table)


class Mlp(nn.Module):
    """fc1 -> GELU (exact erf) -> fc2."""

    def __init__(self, dim: int, hidden_dim: int, out_dim: Optional[int] = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_dim or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a float32 stream into reduced-precision weights: the matmul runs in the weights' dtype (no-op otherwise)
        return self.fc2(self.act(self.fc1(x.to(self.fc1.weight.dtype))))


class Attention(nn.Module):
    """Self-attention with one fused qkv projection laid out [q heads | k heads | v heads]."""

    def __init__(self, dim: int, num_heads: int, rope_mode: RopeMode) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.rope_mode: RopeMode = rope_mode
        self.attention_impl: AttentionImpl = "sdpa"
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: Optional[RopeTable]) -> torch.Tensor:
        batch, tokens, channels = x.shape
        x = x.to(self.qkv.weight.dtype)  # float32 stream, reduced weights: matmul in the weights' dtype
        # Same view layout as the reference ([B, H, 3, N, hd] then slices), so the encoder's float32 arithmetic
        # (which feeds the float16 casts) sees the same operations.
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).transpose(1, 3)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        q = _rope(q, rope, self.rope_mode)
        k = _rope(k, rope, self.rope_mode)
        out, _ = _attend(q, k, v, self.scale, self.attention_impl)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, channels))


class CrossAttention(nn.Module):
    """Cross-attention with separate q/k/v projections; RoPE on q (query positions) and k (key positions)."""

    def __init__(self, dim: int, num_heads: int, rope_mode: RopeMode) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.rope_mode: RopeMode = rope_mode
        self.attention_impl: AttentionImpl = "sdpa"
        self.projq = nn.Linear(dim, dim)
        self.projk = nn.Linear(dim, dim)
        self.projv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                qrope: Optional[RopeTable], krope: Optional[RopeTable],
                with_gate: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Returns (output [B, Nq, C], gate term [B, Nq] float32 or None).

        The gate term is mean over heads and keys of the scaled pre-softmax logits q~.k~ / sqrt(d), obtained
        exactly as q~ . mean_j(k~_j) (RoPE acts on each key alone, so the mean commutes with it; SPEC §6.1).
        """
        batch, n_query, channels = query.shape
        weights_dtype = self.projq.weight.dtype  # float32 stream, reduced weights: matmuls in the weights' dtype
        query = query.to(weights_dtype)
        key, value = (key.to(weights_dtype),) * 2 if value is key else (key.to(weights_dtype), value.to(weights_dtype))
        q = _rope(self._heads(self.projq(query)), qrope, self.rope_mode)
        k = _rope(self._heads(self.projk(key)), krope, self.rope_mode)
        v = self._heads(self.projv(value))
        out, logits = _attend(q, k, v, self.scale, self.attention_impl)
        out = self.proj(out.transpose(1, 2).reshape(batch, n_query, channels))
        gate_term = None
        if with_gate and logits is not None:  # explicit path: mean of the materialised logits
            gate_term = logits.to(torch.float32).mean(dim=(1, 3))
        elif with_gate:
            # float32 whatever the model dtype: the gate is a mean of many small products.
            key_mean = k.to(torch.float32).mean(dim=2, keepdim=True)  # [B, H, 1, d]
            per_head = (q.to(torch.float32) * key_mean).sum(dim=-1) * self.scale  # [B, H, Nq]
            gate_term = per_head.mean(dim=1)  # [B, Nq]
        return out, gate_term


class EncoderBlock(nn.Module):
    """Pre-norm ViT block: x += Attn(LN1 x); x += MLP(LN2 x)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float, rope_mode: RopeMode) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, rope_mode)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, rope: Optional[RopeTable]) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """x += SelfAttn(LN1 x); x += CrossAttn(LN2 x, norm_y(y)); x += MLP(LN3 x). y passes through unchanged."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float, rope_mode: RopeMode) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, rope_mode)
        self.cross_attn = CrossAttention(dim, num_heads, rope_mode)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.norm3 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, y: torch.Tensor, xrope: Optional[RopeTable], yrope: Optional[RopeTable],
                with_gate: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        x = x + self.attn(self.norm1(x), xrope)
        y_normed = self.norm_y(y)
        cross, gate_term = self.cross_attn(self.norm2(x), y_normed, y_normed, xrope, yrope, with_gate)
        x = x + cross
        return x + self.mlp(self.norm3(x)), gate_term


class ModLN(nn.Module):
    """LayerNorm modulated by a condition vector: LN(x) * (1 + scale) + shift, [shift | scale] = Linear(SiLU(c))."""

    def __init__(self, dim: int, cond_dim: int, eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, dim * 2))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = self.mlp(cond.to(self.mlp[1].weight.dtype)).chunk(2, dim=-1)
        return self.norm(x) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class ConditionModulationBlock(nn.Module):
    """final_transform block (SPEC §5.2): x += Attn(ModLN1(x, p)); x += MLP(ModLN2(x, p)); RoPE in float32."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float) -> None:
        super().__init__()
        self.norm1 = ModLN(dim, dim, eps)
        self.attn = Attention(dim, num_heads, "fp32")
        self.norm2 = ModLN(dim, dim, eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, rope: Optional[RopeTable]) -> torch.Tensor:
        x = x + self.attn(self.norm1(x, cond), rope)
        return x + self.mlp(self.norm2(x, cond))


def set_attention_impl(root: nn.Module, impl: AttentionImpl) -> int:
    """Switch every Attention/CrossAttention under ``root`` (itself included) to ``impl``; returns how many."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
    modules = [m for m in root.modules() if isinstance(m, (Attention, CrossAttention))]
    for module in modules:
        module.attention_impl = impl
    return len(modules)
