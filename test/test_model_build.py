"""build_model: deterministic random init, loading weights from a file, precision. Errors for missing or bad
weights files belong to the checkpoint loader that build_model calls: test_checkpoint_*.py."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ttt3r_ros.model import ModelConfig, build_model

TINY = ModelConfig(enc_embed_dim=32, enc_depth=1, enc_num_heads=2, dec_embed_dim=32, dec_depth=4, dec_num_heads=2,
                   state_dec_num_heads=2, state_size=16, local_mem_size=4, dpt_feature_dim=16, dpt_last_dim=8,
                   dpt_layer_dims=(4, 8, 12, 16), ray_enc_num_heads=2)


def save_weights(model: torch.nn.Module, path: Path) -> None:
    # clone: safetensors refuses the 12 aliased (shared) DPT tensors
    tensors = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path))


def test_random_init_is_deterministic_and_keeps_global_rng() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = build_model(TINY, seed=5)
    after_build = torch.rand(1)
    second = build_model(TINY, seed=5)
    other = build_model(TINY, seed=6)
    assert torch.equal(after_build, expected_next), "build_model must not disturb the global RNG"
    for (name, a), (_, b), (_, c) in zip(first.state_dict().items(), second.state_dict().items(),
                                         other.state_dict().items()):
        assert torch.equal(a, b), name
    assert not torch.equal(first.pose_retriever.mem, other.pose_retriever.mem)
    assert not first.training


def test_weights_file_round_trip(tmp_path: Path) -> None:
    source = build_model(TINY, seed=2)
    path = tmp_path / "tiny.safetensors"
    save_weights(source, path)
    loaded = build_model(TINY, weights=path)
    for name, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    # the aliases are still one module after loading
    scratch = loaded.downstream_head.dpt_self.scratch
    assert scratch.layer_rn[0] is scratch.layer1_rn
    images = torch.rand(1, 3, 32, 48) * 2 - 1
    out_a, _ = source.step(images, source.initial_state(1))
    out_b, _ = loaded.step(images, loaded.initial_state(1))
    assert torch.equal(out_a.pts3d_in_other_view, out_b.pts3d_in_other_view)
    assert torch.equal(out_a.gate, out_b.gate)


def test_initial_state_cache_follows_weight_loading(tmp_path: Path) -> None:
    model = build_model(TINY, seed=1)
    s0_before = model.initial_state(1).state
    other = build_model(TINY, seed=9)
    model.load_state_dict(other.state_dict())
    assert torch.equal(model.initial_state(1).state, other.initial_state(1).state)
    assert not torch.equal(model.initial_state(1).state, s0_before)


def test_dtype_argument() -> None:
    model = build_model(TINY, dtype=torch.bfloat16)
    assert model.enc_blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert model.pose_retriever.mem.dtype == torch.bfloat16
    assert model.downstream_head.pose_head.mlp.fc1.weight.dtype == torch.float32
    model16 = build_model(TINY, dtype=torch.float16, head_dtype=torch.float16)
    assert model16.downstream_head.dpt_rgb.head[0].weight.dtype == torch.float16
    with pytest.raises(ValueError, match="dtype"):
        build_model(TINY, dtype=torch.float64)
