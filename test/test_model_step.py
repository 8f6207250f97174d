"""Behaviour of TTT3RModel.step on a tiny random model: the TTT3R gate shortcut, independent streams in one
batch, update=False, reset/fresh semantics, attention through SDPA, reduced precision."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ttt3r_ros.model import UPDATE_RULES, ModelConfig, RecurrentState, build_model
from ttt3r_ros.model.blocks import set_attention_impl
from ttt3r_ros.model.rope import apply_rope

TINY = ModelConfig(enc_embed_dim=64, enc_depth=2, enc_num_heads=4, dec_embed_dim=48, dec_depth=4, dec_num_heads=3,
                   state_dec_num_heads=4, state_size=27, local_mem_size=8, dpt_feature_dim=32, dpt_last_dim=16,
                   dpt_layer_dims=(8, 16, 24, 32), img_size=(64, 64))
HEIGHT, WIDTH = 48, 64


@pytest.fixture(scope="module")
def model():
    model = build_model(TINY, seed=3)
    with torch.no_grad():
        # Spread the gate logits (as the reference's parity weights do) so that gates differ between tokens.
        for block in model.dec_blocks_state:
            block.cross_attn.projq.weight.mul_(20.0)
            block.cross_attn.projk.weight.mul_(20.0)
    model.refresh_constants()
    return model


def frames(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 1, 3, HEIGHT, WIDTH, generator=generator) * 2 - 1


def test_gate_shortcut_equals_materialised_logit_mean(model) -> None:
    captured: list[tuple] = []

    def hook(module, args, kwargs, output):
        captured.append((module, args))

    handles = [block.cross_attn.register_forward_hook(hook, with_kwargs=True) for block in model.dec_blocks_state]
    try:
        state = model.initial_state(1)
        views = frames(3, seed=11)
        for view in views:
            captured.clear()
            out, state = model.step(view, state, update_rule="ttt3r")
            assert len(captured) == TINY.dec_depth
            per_layer = []
            for module, (query, key, _value, qrope, krope, _with_gate) in captured:
                heads, head_dim = module.num_heads, module.head_dim
                with torch.no_grad():
                    q = apply_rope(module.projq(query).reshape(1, -1, heads, head_dim).permute(0, 2, 1, 3), qrope)
                    k = apply_rope(module.projk(key).reshape(1, -1, heads, head_dim).permute(0, 2, 1, 3), krope)
                assert k.shape[2] == (HEIGHT // 16) * (WIDTH // 16) + 1, "keys must include the pose token"
                logits = (q @ k.transpose(-2, -1)) * head_dim ** -0.5  # [1, H, S, K] pre-softmax, after RoPE
                per_layer.append(logits.mean(dim=(1, 3)))
            explicit = torch.stack(per_layer).mean(dim=0)
            assert explicit.abs().max() > 0.3, "gate logits too small to make this test meaningful"
            torch.testing.assert_close(out.gate_logit, explicit, atol=2e-6, rtol=0)
            torch.testing.assert_close(out.gate, torch.sigmoid(explicit), atol=1e-6, rtol=0)
    finally:
        for handle in handles:
            handle.remove()


def run_single(model, views, resets, updates, rule):
    state = model.initial_state(1)
    outputs = []
    for view, reset, update in zip(views, resets, updates):
        out, state = model.step(view, state, update_rule=rule, reset=torch.tensor([reset]),
                                update=torch.tensor([update]), return_intermediates=True)
        outputs.append(out)
    return outputs, state


@pytest.mark.parametrize("rule", sorted(UPDATE_RULES))
def test_batch_of_two_equals_two_single_runs(model, rule: str) -> None:
    count = 4
    views_a, views_b = frames(count, seed=1), frames(count, seed=2)
    resets_a, resets_b = [False, True, False, False], [False, False, True, False]
    updates_a, updates_b = [True, True, False, True], [True, True, True, False]
    singles_a, state_a = run_single(model, views_a, resets_a, updates_a, rule)
    singles_b, state_b = run_single(model, views_b, resets_b, updates_b, rule)
    state = model.initial_state(2)
    tolerance = dict(atol=2e-5, rtol=1e-4)
    for t in range(count):
        out, state = model.step(torch.cat([views_a[t], views_b[t]]), state, update_rule=rule,
                                reset=torch.tensor([resets_a[t], resets_b[t]]),
                                update=torch.tensor([updates_a[t], updates_b[t]]), return_intermediates=True)
        for index, single in enumerate((singles_a[t], singles_b[t])):
            for name in ("pts3d_in_self_view", "conf_self", "pts3d_in_other_view", "conf", "rgb", "camera_pose",
                         "c2w", "gate_logit", "gate", "update_rate"):
                torch.testing.assert_close(getattr(out, name)[index], getattr(single, name)[0], **tolerance,
                                           msg=lambda m: f"view {t} stream {index} {name}: {m}")
            for name, value in out.intermediates.items():
                torch.testing.assert_close(value[index], single.intermediates[name][0], **tolerance,
                                           msg=lambda m: f"view {t} stream {index} {name}: {m}")
    # the two streams really differ (otherwise the comparison above proves nothing)
    assert (singles_a[-1].gate - singles_b[-1].gate).abs().max() > 1e-2
    final_single = RecurrentState.stack([state_a, state_b])
    torch.testing.assert_close(state.state, final_single.state, **tolerance)
    torch.testing.assert_close(state.mem, final_single.mem, **tolerance)
    assert torch.equal(state.fresh, final_single.fresh)


def test_update_false_leaves_state_and_memory(model) -> None:
    views = frames(3, seed=5)
    state = model.initial_state(2)
    _, state = model.step(torch.cat([views[0], views[1]]), state)
    before = state.clone()
    out, after = model.step(torch.cat([views[2], views[2]]), state, update=torch.tensor([False, True]))
    assert torch.equal(after.state[0], before.state[0])
    assert torch.equal(after.mem[0], before.mem[0])
    assert not torch.equal(after.state[1], before.state[1])
    assert not torch.equal(after.mem[1], before.mem[1])
    assert torch.equal(out.update_rate[0], torch.zeros_like(out.update_rate[0]))
    assert torch.equal(out.update_rate[1], out.gate[1])
    assert out.pts3d_in_self_view is not None and torch.isfinite(out.pts3d_in_self_view).all()
    assert not after.fresh.any()
    # the input state object is not modified in place
    assert torch.equal(state.state, before.state) and torch.equal(state.mem, before.mem)


def test_fresh_and_reset_semantics(model) -> None:
    views = frames(4, seed=7)
    initial = model.initial_state(1)
    assert initial.fresh.all()
    out0, state = model.step(views[0], initial, update_rule="ttt3r", return_intermediates=True)
    # first view: learned pose token, full update
    assert torch.equal(out0.intermediates["pose_feat_in"][0], model.pose_token[0])
    assert torch.equal(out0.update_rate, torch.ones_like(out0.update_rate))
    assert torch.equal(state.state, out0.intermediates["state_new"])
    assert torch.equal(state.mem, out0.intermediates["mem_new"])
    out1, state = model.step(views[1], state, update_rule="ttt3r", return_intermediates=True)
    # later views: pose from the memory, gated update
    assert not torch.equal(out1.intermediates["pose_feat_in"][0], model.pose_token[0])
    assert torch.equal(out1.update_rate, out1.gate)
    # a reset view is processed with the current state, then the stream returns to the initial state
    out2, state = model.step(views[2], state, update_rule="ttt3r", reset=torch.tensor([True]),
                             return_intermediates=True)
    assert not torch.equal(out2.intermediates["state_in"], initial.state)
    assert torch.equal(state.state, initial.state) and torch.equal(state.mem, initial.mem)
    assert state.fresh.all()
    out3, state = model.step(views[3], state, update_rule="ttt3r", return_intermediates=True)
    assert torch.equal(out3.intermediates["pose_feat_in"][0], model.pose_token[0])
    assert torch.equal(out3.update_rate, torch.ones_like(out3.update_rate))
    # the view after a reset gives the same outputs as the first view of a new stream
    out_new, _ = model.step(views[3], model.initial_state(1), update_rule="ttt3r")
    torch.testing.assert_close(out3.pts3d_in_self_view, out_new.pts3d_in_self_view, atol=0, rtol=0)


def test_cut3r_rule_replaces_fully(model) -> None:
    views = frames(2, seed=9)
    _, state = model.step(views[0], model.initial_state(1), update_rule="cut3r")
    out, state = model.step(views[1], state, update_rule="cut3r", return_intermediates=True)
    assert torch.equal(out.update_rate, torch.ones_like(out.update_rate))
    assert torch.equal(state.state, out.intermediates["state_new"])


class _OpLog(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def test_attention_never_materialised(model) -> None:
    view = frames(1, seed=4)[0]
    with _OpLog() as log:
        model.step(view, model.initial_state(1))
    assert not [op for op in log.ops if "softmax" in op], "a softmax means an attention matrix was built"
    assert [op for op in log.ops if "scaled_dot_product" in op], sorted(log.ops)


def test_heads_argument_skips_heads(model) -> None:
    view = frames(1, seed=6)[0]
    out, _ = model.step(view, model.initial_state(1), heads=("self",))
    assert out.pts3d_in_self_view.shape == (1, HEIGHT, WIDTH, 3)
    assert out.conf_self.shape == (1, HEIGHT, WIDTH)
    assert out.pts3d_in_other_view is None and out.conf is None and out.rgb is None
    assert out.camera_pose.shape == (1, 7) and out.c2w.shape == (1, 4, 4)
    with pytest.raises(ValueError, match="unknown heads"):
        model.step(view, model.initial_state(1), heads=("depth",))


def test_output_conventions(model) -> None:
    out, _ = model.step(frames(1, seed=8)[0], model.initial_state(1))
    quat = out.camera_pose[:, 3:]
    torch.testing.assert_close(quat.norm(dim=-1), torch.ones(1))
    assert (quat[:, 0] >= 0).all()
    rotation = out.c2w[0, :3, :3]
    torch.testing.assert_close(rotation @ rotation.T, torch.eye(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.c2w[0, :3, 3], out.camera_pose[0, :3])
    assert torch.equal(out.c2w[0, 3], torch.tensor([0.0, 0.0, 0.0, 1.0]))
    assert (out.conf_self >= 1).all() and (out.conf >= 1).all()
    assert out.rgb.min() > -1 and out.rgb.max() < 1


def test_bad_arguments(model) -> None:
    state = model.initial_state(1)
    with pytest.raises(ValueError, match="unknown update rule"):
        model.step(frames(1, 0)[0], state, update_rule="nope")
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model.step(torch.zeros(1, 3, 40, 64), state)
    with pytest.raises(ValueError, match="streams"):
        model.step(torch.zeros(2, 3, 48, 64), state)


def test_state_select_and_stack(model) -> None:
    state = model.initial_state(3)
    parts = [state.select(i) for i in range(3)]
    assert all(p.batch_size == 1 for p in parts)
    merged = RecurrentState.stack(parts)
    assert torch.equal(merged.state, state.state) and torch.equal(merged.mem, state.mem)
    copy = state.clone()
    copy.state.add_(1.0)
    assert not torch.equal(copy.state, state.state)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_runs_close_to_float32(dtype: torch.dtype) -> None:
    reference = build_model(TINY, seed=3)
    reduced = build_model(TINY, seed=3, dtype=dtype)
    assert reduced.dtype == dtype
    assert reduced.downstream_head.dpt_self.head[0].weight.dtype == torch.float32  # heads stay float32
    views = frames(2, seed=12)
    state_ref, state_red = reference.initial_state(1), reduced.initial_state(1)
    assert state_red.state.dtype == dtype
    for view in views:
        out_ref, state_ref = reference.step(view, state_ref, heads=("self",))
        out_red, state_red = reduced.step(view, state_red, heads=("self",))
        assert out_red.pts3d_in_self_view.dtype == torch.float32
        assert out_red.gate.dtype == torch.float32
        torch.testing.assert_close(out_red.pts3d_in_self_view, out_ref.pts3d_in_self_view, atol=5e-2, rtol=5e-2)
        torch.testing.assert_close(out_red.camera_pose, out_ref.camera_pose, atol=2e-2, rtol=0)
        torch.testing.assert_close(out_red.gate, out_ref.gate, atol=2e-2, rtol=0)


@pytest.mark.parametrize("precision", ["bf16-fp32state", "fp16-fp32state"])
def test_float32_state_precisions_keep_stream_and_state_in_float32(precision: str, tmp_path) -> None:
    """Weights (matmuls) reduced, LayerNorms, learned tokens, S0, state and memory float32; closer to float32 than
    the uniform precision of the same weights dtype, where the carried state is concerned; loading a checkpoint
    keeps the float32 LayerNorm parameters exact."""
    from torch import nn

    from ttt3r_ros.model.checkpoint import save_safetensors
    from ttt3r_ros.model.fast import precision_spec

    spec = precision_spec(precision)
    reference = build_model(TINY, seed=3)
    mixed = build_model(TINY, seed=3, dtype=spec.weights, head_dtype=spec.heads, stream_dtype=spec.stream)
    uniform = build_model(TINY, seed=3, dtype=spec.weights, head_dtype=spec.weights)
    assert (mixed.dtype, mixed.stream_dtype) == (spec.weights, torch.float32)
    assert mixed.enc_blocks[0].attn.qkv.weight.dtype == spec.weights
    trunk_norms = [m for name, m in mixed.named_modules()
                   if isinstance(m, nn.LayerNorm) and not name.startswith("downstream_head")]
    assert trunk_norms and all(m.weight.dtype == torch.float32 for m in trunk_norms)
    assert mixed.pose_retriever.mem.dtype == mixed.pose_token.dtype == torch.float32
    assert mixed.downstream_head.dpt_self.head[0].weight.dtype == spec.heads
    state_ref, state_mixed, state_uniform = (m.initial_state(1) for m in (reference, mixed, uniform))
    assert state_mixed.state.dtype == state_mixed.mem.dtype == torch.float32
    for view in frames(4, seed=13):
        out_ref, state_ref = reference.step(view, state_ref, heads=("self",))
        out_mixed, state_mixed = mixed.step(view, state_mixed, heads=("self",))
        _, state_uniform = uniform.step(view, state_uniform, heads=("self",))
        assert state_mixed.state.dtype == torch.float32 and out_mixed.pts3d_in_self_view.dtype == torch.float32
        torch.testing.assert_close(out_mixed.camera_pose, out_ref.camera_pose, atol=2e-2, rtol=0)
    error_mixed = (state_mixed.state - state_ref.state).abs().max()
    error_uniform = (state_uniform.state.float() - state_ref.state).abs().max()
    print(f"\n{precision}: state max error {error_mixed:.3g} vs {error_uniform:.3g} with a {spec.weights} state")
    assert error_mixed < error_uniform
    path = tmp_path / "tiny.safetensors"
    with torch.no_grad():  # values that bf16/fp16 cannot hold exactly (the random init's LayerNorms are all 1)
        reference.enc_norm.weight.copy_(1 + torch.linspace(0, 1e-3, reference.enc_norm.weight.numel()))
    save_safetensors(reference.state_dict(), path)
    loaded = build_model(TINY, weights=path, dtype=spec.weights, head_dtype=spec.heads, stream_dtype=spec.stream)
    assert torch.equal(loaded.enc_norm.weight, reference.enc_norm.weight)  # float32, not rounded to the weights'
    assert not torch.equal(reference.enc_norm.weight.to(spec.weights).float(), reference.enc_norm.weight)
    assert loaded.stream_dtype == torch.float32 and loaded.dtype == spec.weights


def test_explicit_attention_impl_matches_sdpa(model) -> None:
    """attention_impl="explicit" (benchmarks mimicking the reference) gives the same outputs and gate."""
    views = frames(2, seed=10)
    outputs = {}
    try:
        for impl in ("sdpa", "explicit"):
            assert set_attention_impl(model, impl) > 2 * TINY.dec_depth
            assert {m.attention_impl for m in model.modules() if hasattr(m, "attention_impl")} == {impl}
            state = model.initial_state(1)
            for view in views:
                out, state = model.step(view, state)
            outputs[impl] = out
    finally:
        set_attention_impl(model, "sdpa")
    with pytest.raises(ValueError, match="attention_impl"):
        set_attention_impl(model, "flash")
    for name in ("pts3d_in_other_view", "camera_pose", "gate_logit", "update_rate"):
        torch.testing.assert_close(getattr(outputs["explicit"], name), getattr(outputs["sdpa"], name),
                                   atol=2e-5, rtol=1e-4)
