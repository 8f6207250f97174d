"""The CUT3R network with the TTT3R state update: `TTT3RModel` and its streaming `step` (SPEC §4).

Module and parameter names are the reference's (`ARCroco3DStereo`), so its checkpoints load with strict=True.
Several streams can share one batch: every stream has its own state, pose memory, gate and fresh/reset flags
(the reference mixes the gate across the batch; this implementation does not).

The step has no host synchronisation and no branching on tensor values: fresh views, resets and update=False
are per-stream masks applied with torch.where, so the step can be captured in a CUDA graph or compiled.
"""
from __future__ import annotations

from typing import Collection, Optional

import torch
from torch import nn

from .blocks import DecoderBlock, EncoderBlock
from .config import ModelConfig
from .heads import HEAD_NAMES, DownstreamHead
from .memory import PoseMemory
from .rope import RopeTable, rope_table
from .state import RecurrentState, StepOutput
from .update_rules import get_update_rule

__all__ = ["TTT3RModel", "PatchEmbed", "RopeTables"]


class PatchEmbed(nn.Module):
    """Conv2d with kernel = stride = patch size, tokens row-major (reference PatchEmbedDust3R, no norm)."""

    def __init__(self, in_channels: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)


class RopeTables:
    """cos/sin tables for one token grid, per head dim, shared by all layers of a step."""

    def __init__(self, cfg: ModelConfig, grid_hw: tuple[int, int], device: torch.device) -> None:
        h, w = grid_hw
        ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        patch_pos = torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=-1)  # [N, 2] (y, x), row-major
        pose_pos = torch.full((1, 2), -1, dtype=patch_pos.dtype, device=device)  # the pose token at (-1, -1)
        image_pos = torch.cat([pose_pos, patch_pos])  # image-decoder stream: pose token first
        state_index = torch.arange(cfg.state_size, device=device)
        width = cfg.state_grid_width
        state_pos = torch.stack([state_index // width, state_index % width], dim=-1)
        base = cfg.rope_base
        enc_dim = cfg.enc_embed_dim // cfg.enc_num_heads
        img_dim = cfg.dec_embed_dim // cfg.dec_num_heads
        state_dim = cfg.dec_embed_dim // cfg.state_dec_num_heads
        self.encoder: RopeTable = rope_table(patch_pos, enc_dim, base)
        # image decoder and final_transform (same head dim); the image decoder's keys/queries include the pose
        self.image_with_pose: RopeTable = rope_table(image_pos, img_dim, base)
        self.image: RopeTable = rope_table(patch_pos, img_dim, base)
        # state decoder: queries at the state positions, keys at the image positions incl. the pose token
        self.state: RopeTable = rope_table(state_pos, state_dim, base)
        self.image_with_pose_for_state: RopeTable = rope_table(image_pos, state_dim, base)
        # image decoder's cross-attention keys: the state tokens, at the image decoder's head dim
        self.state_for_image: RopeTable = rope_table(state_pos, img_dim, base)


class TTT3RModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        enc, dec, eps, ratio = cfg.enc_embed_dim, cfg.dec_embed_dim, cfg.norm_eps, cfg.mlp_ratio
        # Registration order reproduces the reference's state_dict order.
        self.pose_token = nn.Parameter(torch.zeros(1, 1, dec))
        self.masked_img_token = nn.Parameter(torch.zeros(1, enc))  # training only (masking)
        self.masked_ray_map_token = nn.Parameter(torch.zeros(1, enc))  # training only
        self.patch_embed = PatchEmbed(3, enc, cfg.patch_size)
        self.patch_embed_ray_map = PatchEmbed(6, enc, cfg.patch_size)  # ray-map queries: unused for images
        # Image encoder: its q, k are rounded to float16 around RoPE (SPEC §3.2.1).
        self.enc_blocks = nn.ModuleList([
            EncoderBlock(enc, cfg.enc_num_heads, ratio, eps, "fp16_recipe") for _ in range(cfg.enc_depth)])
        self.enc_norm = nn.LayerNorm(enc, eps=eps)
        self.decoder_embed = nn.Linear(enc, dec)
        self.dec_blocks = nn.ModuleList([
            DecoderBlock(dec, cfg.dec_num_heads, ratio, eps, "fp32") for _ in range(cfg.dec_depth)])
        self.dec_norm = nn.LayerNorm(dec, eps=eps)
        self.enc_blocks_ray_map = nn.ModuleList([  # unused for images, kept for strict loading
            EncoderBlock(enc, cfg.ray_enc_num_heads, ratio, eps, "fp32") for _ in range(cfg.ray_enc_depth)])
        self.enc_norm_ray_map = nn.LayerNorm(enc, eps=eps)
        self.pose_retriever = PoseMemory(cfg.local_mem_size, enc, dec, cfg.dec_num_heads, ratio, eps)
        self.register_tokens = nn.Embedding(cfg.state_size, enc)
        self.decoder_embed_state = nn.Linear(enc, dec)
        self.dec_blocks_state = nn.ModuleList([
            DecoderBlock(dec, cfg.state_dec_num_heads, ratio, eps, "fp32") for _ in range(cfg.dec_depth)])
        self.dec_norm_state = nn.LayerNorm(dec, eps=eps)
        self.downstream_head = DownstreamHead(cfg)
        self._rope_cache: dict[tuple[int, int, str], RopeTables] = {}
        self._initial_state_tokens: Optional[torch.Tensor] = None
        # Fast path (ttt3r_ros.model.fast): run each decoder layer's state block on a side CUDA stream,
        # concurrently with its image block. None = one stream (the default, and always on CPU).
        self.decoder_side_stream: Optional[torch.cuda.Stream] = None
        self.register_load_state_dict_post_hook(lambda module, keys: module.refresh_constants())

    # -- constants ------------------------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.decoder_embed.weight.dtype

    @property
    def stream_dtype(self) -> torch.dtype:
        """dtype of the residual stream, LayerNorms, recurrent state and pose memory: `dtype`, or float32 where
        `set_precision` kept the stream in float32 under reduced-precision weights."""
        return self.enc_norm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.decoder_embed.weight.device

    def refresh_constants(self) -> None:
        """Forget cached values derived from the weights (S0). Call after editing parameters in place;
        load_state_dict and .to() do it automatically."""
        self._initial_state_tokens = None

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # device/dtype moves invalidate the cached S0 and RoPE tables
        self._initial_state_tokens = None
        self._rope_cache = {}
        return super()._apply(fn, recurse)

    @torch.no_grad()
    def initial_state_tokens(self) -> torch.Tensor:
        """S0 = decoder_embed_state(register_tokens.weight) [S, D]: constant, computed once and cached."""
        if self._initial_state_tokens is None:
            # in the stream's dtype (the weights' unless the stream is kept in float32): S0 is where the state starts
            stream, linear = self.stream_dtype, self.decoder_embed_state
            bias = None if linear.bias is None else linear.bias.to(stream)
            self._initial_state_tokens = torch.nn.functional.linear(
                self.register_tokens.weight.to(stream), linear.weight.to(stream), bias)
        return self._initial_state_tokens

    def rope_tables(self, grid_hw: tuple[int, int]) -> RopeTables:
        key = (grid_hw[0], grid_hw[1], str(self.device))
        tables = self._rope_cache.get(key)
        if tables is None:
            tables = RopeTables(self.cfg, grid_hw, self.device)
            self._rope_cache[key] = tables
        return tables

    @torch.no_grad()
    def initial_state(self, batch_size: int = 1) -> RecurrentState:
        """State of streams that have seen nothing: S0, the learned memory, fresh=True."""
        s0 = self.initial_state_tokens()
        return RecurrentState(
            state=s0.unsqueeze(0).expand(batch_size, -1, -1).clone(),
            mem=self.pose_retriever.mem.detach().expand(batch_size, -1, -1).clone(),
            fresh=torch.ones(batch_size, dtype=torch.bool, device=self.device),
        )

    # -- stages ---------------------------------------------------------------------------------------------------
    def encode(self, images: torch.Tensor, tables: RopeTables) -> torch.Tensor:
        """Image [B, 3, H, W] -> encoder tokens F [B, N, C] (after enc_norm)."""
        x = self.patch_embed(images).to(self.stream_dtype)
        for block in self.enc_blocks:
            x = block(x, tables.encoder)
        return self.enc_norm(x)

    def decode(self, state_tokens: torch.Tensor, enc_feat: torch.Tensor, pose_feat: torch.Tensor,
               tables: RopeTables) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Lock-step state/image decoders (SPEC §4 step 4).

        Returns (candidate state [B, S, D], the three decoder head taps [Y_a', Y_b', dec_norm(Y_L)],
        gate logit [B, S] float32: mean over layers, heads and keys of the state cross-attention logits).
        """
        embedded = self.decoder_embed(enc_feat.to(self.dtype)).to(self.stream_dtype)
        y = torch.cat([pose_feat, embedded], dim=1)
        x = state_tokens
        hooks = self.cfg.dpt_hooks
        taps: list[torch.Tensor] = []
        gate_terms: list[torch.Tensor] = []
        side = self.decoder_side_stream if state_tokens.is_cuda else None
        main = torch.cuda.current_stream(state_tokens.device) if side is not None else None
        for layer, (state_block, image_block) in enumerate(zip(self.dec_blocks_state, self.dec_blocks), start=1):
            # both stacks read the previous layer's outputs
            if side is None:
                x_next, gate_term = state_block(x, y, tables.state, tables.image_with_pose_for_state,
                                                with_gate=True)
                y, _ = image_block(y, x, tables.image_with_pose, tables.state_for_image)
            else:
                # The two blocks of a layer are independent and each too small (~768 tokens) to fill a big GPU:
                # the state block runs on the side stream while the image block runs here. record_stream stops
                # the caching allocator from reusing a tensor's memory before the other stream is done with it.
                assert main is not None
                side.wait_stream(main)
                x.record_stream(side)
                y.record_stream(side)
                with torch.cuda.stream(side):
                    x_next, gate_term = state_block(x, y, tables.state, tables.image_with_pose_for_state,
                                                    with_gate=True)
                y, _ = image_block(y, x, tables.image_with_pose, tables.state_for_image)
                main.wait_stream(side)
                x_next.record_stream(main)
                assert gate_term is not None
                gate_term.record_stream(main)
            x = x_next
            assert gate_term is not None
            gate_terms.append(gate_term)
            for hook in hooks[1:3]:
                if layer == hook:
                    taps.append(y[:, 1:])  # raw layer output, pose token removed
        taps.append(self.dec_norm(y))
        gate_logit = torch.stack(gate_terms).mean(dim=0)
        return self.dec_norm_state(x), taps, gate_logit

    # -- the streaming step -------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, images: torch.Tensor, state: RecurrentState, update_rule: str = "ttt3r",
             reset: Optional[torch.Tensor] = None, update: Optional[torch.Tensor] = None,
             heads: Collection[str] = HEAD_NAMES,
             return_intermediates: bool = False) -> tuple[StepOutput, RecurrentState]:
        """Process one view per stream.

        images: [B, 3, H, W] in [-1, 1], H and W multiples of the patch size.
        reset: optional bool [B]: after this view, the stream's state and memory go back to the initial ones and
        its next view is fresh (learned pose token, rate 1). update: optional bool [B] (default True): False
        produces outputs but leaves that stream's state and memory as they were (a reset still applies).
        heads: which DPT heads to run, any of "self", "cross", "rgb" (pose is always computed).
        """
        rule = get_update_rule(update_rule)
        unknown_heads = set(heads) - set(HEAD_NAMES)
        if unknown_heads:
            raise ValueError(f"unknown heads {sorted(unknown_heads)}; known: {list(HEAD_NAMES)}")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        batch, _, height, width = images.shape
        patch = self.cfg.patch_size
        if height % patch or width % patch:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {patch}")
        if state.batch_size != batch:
            raise ValueError(f"state holds {state.batch_size} streams but images hold {batch}")
        device = images.device
        update_mask = (torch.ones(batch, dtype=torch.bool, device=device) if update is None
                       else update.to(device=device, dtype=torch.bool))
        reset_mask = (torch.zeros(batch, dtype=torch.bool, device=device) if reset is None
                      else reset.to(device=device, dtype=torch.bool))
        grid_hw = (height // patch, width // patch)
        tables = self.rope_tables(grid_hw)
        dtype, stream = self.dtype, self.stream_dtype
        state_in = state.state.to(stream)
        mem_in = state.mem.to(stream)
        fresh = state.fresh.to(device=device, dtype=torch.bool)

        enc_feat = self.encode(images.to(dtype), tables)
        image_feat = enc_feat.mean(dim=1, keepdim=True)
        # Fresh streams take the learned pose token; the memory is queried for all streams (static shapes).
        inquired = self.pose_retriever.inquire(image_feat, mem_in)
        pose_in = torch.where(fresh[:, None, None], self.pose_token.expand(batch, -1, -1), inquired)

        state_new, taps, gate_logit = self.decode(state_in, enc_feat, pose_in, tables)
        mem_new = self.pose_retriever.update_mem(mem_in, image_feat, taps[-1][:, 0:1])
        head_out = self.downstream_head([enc_feat] + taps, grid_hw, tables.image, heads)

        # State update (SPEC §6): rate from the rule, zero where update is False; memory never gated.
        gate = torch.sigmoid(gate_logit)
        rate = rule(gate, fresh) * update_mask[:, None].to(gate.dtype)
        rate_tokens = rate[..., None]
        next_state = (state_new * rate_tokens + state_in * (1 - rate_tokens)).to(stream)
        next_mem = torch.where(update_mask[:, None, None], mem_new, mem_in)
        # Reset (SPEC §4 step 8): after this view, back to the initial state; the next view is fresh.
        s0 = self.initial_state_tokens().to(stream)
        next_state = torch.where(reset_mask[:, None, None], s0.unsqueeze(0), next_state)
        next_mem = torch.where(reset_mask[:, None, None], self.pose_retriever.mem.to(stream), next_mem)
        next_recurrent = RecurrentState(next_state, next_mem, reset_mask.clone())

        intermediates = None
        if return_intermediates:
            intermediates = {
                "enc_feat": enc_feat, "pose_feat_in": pose_in, "state_in": state_in, "state_new": state_new,
                "mem_in": mem_in, "mem_new": mem_new, "head_in_1": taps[0], "head_in_2": taps[1],
                "head_in_3": taps[2],
            }
        output = StepOutput(
            pts3d_in_self_view=head_out["pts3d_in_self_view"], conf_self=head_out["conf_self"],
            pts3d_in_other_view=head_out["pts3d_in_other_view"], conf=head_out["conf"], rgb=head_out["rgb"],
            camera_pose=head_out["camera_pose"], c2w=head_out["c2w"],  # type: ignore[arg-type]
            gate_logit=gate_logit, gate=gate, update_rate=rate, intermediates=intermediates,
        )
        return output, next_recurrent
