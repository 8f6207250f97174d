"""The float16 overflow guard, on the CPU with a forced overflow (tiny model).

A weight set to 6e4 (float16's range ends at 65504) makes the encoder's activations inf: the engine must report the
frame with valid=False (finite flags computed on the device and read with the pose), the session must switch once
to the safe precision (weights loaded again from their source, one log line, precision_fallbacks == 1), and the next
frames must be valid in that precision, odometry continuing. Precisions with float32's range never switch.
"""
from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from ttt3r_ros.model import fast
from ttt3r_ros.model.checkpoint import save_safetensors
from ttt3r_ros.model.state import finite_streams
from ttt3r_ros.session.build import open_session
from ttt3r_ros.session.settings import SessionConfig

TINY = dict(model_config="tiny", image_size=64, device="cpu", warmup_frames=0, seed=4)
OVERFLOW_VALUE = 6e4  # representable in float16; any sum of a few such products is not


def _frames(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(count)]


def _force_overflow(model: torch.nn.Module) -> torch.Tensor:
    weight = model.enc_blocks[0].mlp.fc2.weight
    with torch.no_grad():
        weight.fill_(OVERFLOW_VALUE)
    return weight


def test_finite_streams_flags_each_stream_on_its_own() -> None:
    from ttt3r_ros.model import build_model

    model = build_model("tiny", seed=2)
    state = model.initial_state(2)
    out, new_state = model.step(torch.zeros(2, 3, 48, 64), state, heads=("self",))
    assert finite_streams(out, new_state).tolist() == [True, True]
    new_state.mem[1, 0, 0] = float("inf")       # the state alone is enough
    assert finite_streams(out, new_state).tolist() == [True, False]
    out.pts3d_in_self_view[0, 3, 3, 2] = float("nan")
    assert finite_streams(out, new_state).tolist() == [False, False]


def test_fp16_overflow_marks_the_frame_invalid_and_falls_back_once() -> None:
    session = open_session(SessionConfig(weights="random", precision="fp16", **TINY))
    engine = session.new_engine(build_map=False)
    frames = _frames(6)
    good = [session.step(engine, frames[i], 0.1 * i) for i in range(2)]
    assert all(r.valid for r in good)
    _force_overflow(session.model)
    old_model = weakref.ref(session.model)
    lines: list[str] = []
    bad = session.step(engine, frames[2], 0.2, log=lines.append)
    gc.collect()
    assert old_model() is None  # not kept beside the new one
    assert not bad.valid  # the node must not publish it
    np.testing.assert_array_equal(bad.camera_to_world, good[-1].camera_to_world)  # the last good pose
    assert session.precision_fallbacks == 1 and session.precision == fast.OVERFLOW_FALLBACK_PRECISION
    assert len(lines) == 1 and "fp16" in lines[0] and fast.OVERFLOW_FALLBACK_PRECISION in lines[0], lines
    spec = fast.precision_spec(fast.OVERFLOW_FALLBACK_PRECISION)
    assert engine.model is session.model
    assert (session.model.dtype, session.model.stream_dtype) == (spec.weights, spec.stream)
    # reloaded from the source (the seed here), not cast from the overflowing model
    assert float(session.model.enc_blocks[0].mlp.fc2.weight.detach().abs().max()) < 1.0
    results = [session.step(engine, frames[i], 0.1 * i, log=lines.append) for i in range(3, 6)]
    assert all(r.valid for r in results) and all(np.isfinite(r.depth).all() for r in results)
    assert session.precision_fallbacks == 1 and len(lines) == 1
    # odometry continues: the bad frame is not in the trajectory, the next frame opens a new chunk
    assert len(engine.trajectory) == 5 and engine.frames_processed == 6
    assert results[0].was_reset and results[0].chunk_index == bad.chunk_index + 1


def test_fallback_reloads_the_checkpoint(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from ttt3r_ros.model import build_model

    source = build_model("tiny", seed=9)
    checkpoint = tmp_path / "tiny.safetensors"
    save_safetensors(source.state_dict(), checkpoint)
    session = open_session(SessionConfig(**{**TINY, "weights": str(checkpoint), "precision": "fp16-fp32state"}))
    engine = session.new_engine(build_map=False)
    frames = _frames(3)
    assert session.step(engine, frames[0], 0.0).valid
    # a float32 stream does not stop a float16 matmul from overflowing: all of this layer's outputs are inf
    _force_overflow(session.model)
    with caplog.at_level("WARNING", logger="ttt3r_ros.session"):
        assert not session.step(engine, frames[1], 0.1).valid
    assert session.precision_fallbacks == 1
    assert [r.getMessage() for r in caplog.records if "precision fallback" in r.getMessage()] != []
    assert str(checkpoint) in caplog.text  # the line names where the weights came from
    expected = source.enc_blocks[0].mlp.fc2.weight.to(fast.precision_spec(session.precision).weights)
    assert torch.equal(session.model.enc_blocks[0].mlp.fc2.weight, expected)
    assert session.step(engine, frames[2], 0.2).valid


def test_precisions_with_float32_range_do_not_switch() -> None:
    session = open_session(SessionConfig(weights="random", precision="fp32", **TINY))
    engine = session.new_engine(build_map=False)
    with torch.no_grad():
        session.model.enc_blocks[0].mlp.fc2.weight.fill_(float("inf"))
    lines: list[str] = []
    result = session.step(engine, _frames(1)[0], 0.0, log=lines.append)
    assert not result.valid and engine.invalid_frames == 1
    assert session.precision_fallbacks == 0 and session.precision == "fp32" and not lines


@pytest.mark.gpu
def test_fp16_overflow_falls_back_on_cuda_with_the_fast_path() -> None:
    """The same guard on a GPU: fp16 CUDA graph, a forced overflow, one fallback to the safe precision; the next
    frames run through a newly captured graph of the new model and are valid."""
    if not torch.cuda.is_available():
        reason = "no CUDA device: the guard's GPU path (in-graph finite flags, recapture) is not run here"
        print(reason)
        pytest.skip(reason)
    session = open_session(SessionConfig(weights="random", precision="fp16", **{**TINY, "device": "cuda"}))
    engine = session.new_engine(build_map=False)
    frames = _frames(4)
    assert session.step(engine, frames[0], 0.0).valid and engine.fast_path_active
    _force_overflow(session.model)
    lines: list[str] = []
    assert not session.step(engine, frames[1], 0.1, log=lines.append).valid
    assert session.precision_fallbacks == 1 and len(lines) == 1
    after = [session.step(engine, f, 0.2 + 0.1 * i, log=lines.append) for i, f in enumerate(frames[2:])]
    assert all(r.valid for r in after) and engine.fast_path_active, engine.fast_path_status
    assert session.precision == fast.overflow_fallback("fp16", "cuda") and len(lines) == 1
