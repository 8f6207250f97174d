"""The engine's CUDA fast path (one GraphedStep runner per batch x model size, per-stream states loaded/kept).

On CPU the state bookkeeping is checked with a stand-in runner that keeps GraphedStep's contract (static state
advanced in place, outputs in static buffers that the next step overwrites): trajectories and depth must equal the
eager engine's bit for bit through reset intervals, engine.reset(), update_state=False and two batched streams
stepped in changing subsets, and the single-stream case must never copy a state into the runner after the first
frame. On a GPU the real GraphedStep (fp32, TF32 off) must match fast_path=False within 1e-5.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ttt3r_ros.engine import BatchedReconstructor, StreamingReconstructor
from ttt3r_ros.engine.step_runner import GraphStepRunner
from ttt3r_ros.model import fast, parity
from ttt3r_ros.model.state import finite_streams



@pytest.fixture(scope="module")
def vectors(parity_file: Path):
    return parity.load_parity_vectors(parity_file)


def _frames(vectors) -> list[torch.Tensor]:
    return [f for f in vectors.tensors["input/frames"]]


class StaticBufferRunner:
    """CPU stand-in for fast.GraphedStep with the same contract (see module docstring), including the engine's
    in-graph preprocessing (prepare, raw uint8 input) and postprocess extras, all in "static" buffers."""

    loads = 0

    def __init__(self, model: Any, batch_size: int, height: int, width: int, update_rule: str = "ttt3r",
                 heads: Any = ("self",), postprocess: Any = None, prepare: Any = None, input_size: Any = None,
                 **_: Any) -> None:
        self.model, self.update_rule, self.heads = model, update_rule, tuple(heads)
        self.postprocess, self.prepare = postprocess, prepare
        self.shape = (batch_size, *input_size, 3) if prepare is not None else (batch_size, 3, height, width)
        self._state = model.initial_state(batch_size)
        self._out: Any = None
        self._extras: dict[str, torch.Tensor] = {}
        self._finite = torch.ones(batch_size, dtype=torch.bool)

    def step(self, images: torch.Tensor, reset: Any = None, update: Any = None) -> Any:
        assert tuple(images.shape) == self.shape
        x, extras = self.prepare(images) if self.prepare is not None else (images, {})
        out, new = self.model.step(x, self._state, update_rule=self.update_rule, reset=reset, update=update,
                                   heads=self.heads)
        if self.postprocess is not None:
            extras = {**extras, **self.postprocess(out, images)}
        self.load_state(new, count=False)
        self._finite.copy_(finite_streams(out, new))
        if self._out is None:
            self._out, self._extras = out, extras
        else:  # overwrite the "static" buffers, as a replay does
            for name in ("pts3d_in_self_view", "conf_self", "update_rate", "c2w", "camera_pose"):
                getattr(self._out, name).copy_(getattr(out, name))
            for name, t in extras.items():
                self._extras[name].copy_(t)
        return self._out

    @property
    def extras(self) -> dict[str, torch.Tensor]:
        return self._extras

    @property
    def finite(self) -> torch.Tensor:
        return self._finite

    @property
    def state(self) -> Any:
        return self._state

    def load_state(self, state: Any, count: bool = True) -> None:
        StaticBufferRunner.loads += int(count)
        self._state.state.copy_(state.state)
        self._state.mem.copy_(state.mem)
        self._state.fresh.copy_(state.fresh)


def _force_fast(engine: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Route a CPU engine through the graph step runner with the stand-in GraphedStep."""
    monkeypatch.setattr(fast, "GraphedStep", StaticBufferRunner)
    inner = getattr(engine, "_batched", engine)
    inner._runner = GraphStepRunner(inner.model, inner.config, inner.device, "cuda-graph (CPU stand-in)")
    return engine


def _graph_keys(engine: Any) -> list[Any]:
    return list(getattr(engine, "_batched", engine)._runner.graphs)


def _run_single(engine: Any, frames: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    depths = []
    for i, f in enumerate(frames + frames[::-1]):  # 12 frames: 4 reset-interval chunks of 3
        if i == 5:
            engine.reset()                                 # the node's reset service: continue odometry
        if i == 9:
            engine.reset(restart_odometry=True)
        depths.append(engine.step(f, 0.1 * i, update_state=(i != 3)).depth)
    return np.stack([p for _, p in engine.trajectory_model]), np.stack(depths)


def test_fast_path_bookkeeping_equals_eager_single_stream(vectors, monkeypatch) -> None:
    model = parity.build_parity_model(vectors, "cpu")
    frames = _frames(vectors)
    eager = StreamingReconstructor(model, reset_interval=3, build_map=False)
    assert not eager.fast_path_active and "cpu" in eager.fast_path_status
    traj_e, depth_e = _run_single(eager, frames)
    fast_eng = _force_fast(StreamingReconstructor(model, reset_interval=3, build_map=False), monkeypatch)
    StaticBufferRunner.loads = 0
    traj_f, depth_f = _run_single(fast_eng, frames)
    assert fast_eng.fast_path_active
    np.testing.assert_array_equal(traj_f, traj_e)
    np.testing.assert_array_equal(depth_f, depth_e)
    # loads: the first frame, after reset() and after reset(restart_odometry=True); reset-interval frames and
    # update_state=False go through the runner's masks without copies
    assert StaticBufferRunner.loads == 3, StaticBufferRunner.loads


def test_fast_path_bookkeeping_equals_eager_two_streams(vectors, monkeypatch) -> None:
    model = parity.build_parity_model(vectors, "cpu")
    frames = _frames(vectors)

    def run(engine: BatchedReconstructor) -> list[np.ndarray]:
        engine.step_batch([frames[0]], [0.0], streams=[0])
        for i in range(1, len(frames)):
            engine.step_batch([frames[i], frames[i - 1]], [0.1 * i, 0.1 * (i - 1)],
                              update_state=[True, i != 4])
            if i == 3:
                engine.reset(1)
        engine.step_batch([frames[-1]], [9.0], streams=[1])
        engine.step_batch([frames[0], frames[1]], [10.0, 10.0], streams=[1, 0])  # slots swapped
        return [np.stack([p for _, p in engine.trajectory_model_of(s)]) for s in range(2)]

    eager = run(BatchedReconstructor(model, 2, reset_interval=3, build_map=False))
    fast_run = run(_force_fast(BatchedReconstructor(model, 2, reset_interval=3, build_map=False), monkeypatch))
    for s in range(2):
        np.testing.assert_array_equal(fast_run[s], eager[s])


def _uint8_frames(count: int, h: int = 96, w: int = 128) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(count)]


def test_fast_path_uint8_frames_preprocessed_in_graph_equal_eager(vectors, monkeypatch) -> None:
    """The node's input (host uint8 frames, resized): preprocessing runs inside the runner, outputs are prefetched
    into fresh host arrays per frame. Every result, read only after all frames ran, must equal the eager engine's
    bit for bit (no later frame may overwrite an earlier frame's host arrays or device tensors)."""
    model = parity.build_parity_model(vectors, "cpu")
    frames = _uint8_frames(7)
    opts = dict(size=64, reset_interval=3, build_map=False, preprocess_on_device=True)

    def run(engine: Any) -> list[Any]:
        results = []
        for i, f in enumerate(frames):
            if i == 4:
                engine.reset()
            results.append(engine.step(f, 0.1 * i, update_state=(i != 2)))
        return results

    eager_res = run(StreamingReconstructor(model, fast_path=False, **opts))
    fast_eng = _force_fast(StreamingReconstructor(model, **opts), monkeypatch)
    fast_res = run(fast_eng)
    assert fast_eng.fast_path_active
    assert _graph_keys(fast_eng) == [(1, 96, 128, "uint8")]  # one runner, raw-frame input
    for e, f in zip(eager_res, fast_res):
        assert f.model_size == e.model_size == (48, 64)
        np.testing.assert_array_equal(f.camera_to_world_model, e.camera_to_world_model)
        for name in ("depth", "confidence", "colour", "points_camera", "points_world"):
            np.testing.assert_array_equal(f.numpy(name), e.numpy(name), err_msg=name)
        assert (f.gate_mean, f.gate_min, f.gate_max) == (e.gate_mean, e.gate_min, e.gate_max)
        np.testing.assert_array_equal(f.intrinsics_model, e.intrinsics_model)
    # each frame got its own host arrays
    assert len({id(r.depth) for r in fast_res}) == len(fast_res)
    assert not np.shares_memory(fast_res[0].depth, fast_res[1].depth)


def test_fast_path_uint8_two_streams_equal_eager(vectors, monkeypatch) -> None:
    model = parity.build_parity_model(vectors, "cpu")
    frames = _uint8_frames(5)
    opts = dict(size=64, reset_interval=2, build_map=False, preprocess_on_device=True)

    def run(engine: BatchedReconstructor) -> list[Any]:
        out = list(engine.step_batch([frames[0]], [0.0], streams=[1]))
        for i in range(1, len(frames)):
            out += engine.step_batch([frames[i], frames[i - 1]], [0.1 * i] * 2)
        return out

    eager_res = run(BatchedReconstructor(model, 2, fast_path=False, **opts))
    fast_res = run(_force_fast(BatchedReconstructor(model, 2, **opts), monkeypatch))
    for e, f in zip(eager_res, fast_res):
        np.testing.assert_array_equal(f.camera_to_world_model, e.camera_to_world_model)
        for name in ("depth", "confidence", "colour"):
            np.testing.assert_array_equal(f.numpy(name), e.numpy(name), err_msg=name)
        assert (f.gate_mean, f.gate_max) == (e.gate_mean, e.gate_max)


def test_fast_path_option_is_validated_and_refused_on_cpu(vectors) -> None:
    model = parity.build_parity_model(vectors, "cpu")
    with pytest.raises(ValueError, match="fast_path"):
        StreamingReconstructor(model, fast_path="yes")
    with pytest.raises(ValueError, match="CUDA"):
        StreamingReconstructor(model, fast_path=True)
    assert StreamingReconstructor(model, fast_path=False).fast_path_status == "eager (fast_path=False)"


def test_precision_names_resolve_by_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert fast.resolve_precision("auto", "cpu") == ("fp32", torch.float32, torch.float32)
    monkeypatch.setattr(fast, "bf16_supported", lambda device: True)
    default = fast.precision_spec(fast.CUDA_DEFAULT_PRECISION)
    assert fast.resolve_precision("auto", "cuda") == (fast.CUDA_DEFAULT_PRECISION, default.weights, default.heads)
    assert fast.resolve_precision("fp16", "cpu") == ("fp16", torch.float16, torch.float16)
    assert fast.resolve_precision("bf16-fp32state", "cpu") == ("bf16-fp32state", torch.bfloat16, torch.bfloat16)
    assert fast.precision_spec("bf16-fp32state").stream == torch.float32
    with pytest.raises(ValueError, match="precision"):
        fast.resolve_precision("int8", "cpu")
    # every name of the table is a choice; the uniform ones are the checkpoint dtypes
    assert fast.PRECISION_NAMES == ("auto", *fast.PRECISIONS)
    assert fast.PRECISION_DTYPES == {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def test_auto_precision_checks_the_cards_bf16_support(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA default that uses bf16 becomes fp16 on a card without native bf16, with one log line; an explicit
    bf16 precision there is refused."""
    monkeypatch.setattr(fast, "CUDA_DEFAULT_PRECISION", "bf16-fp32state")
    monkeypatch.setattr(fast, "bf16_supported", lambda device: torch.device(device).type != "cuda")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Old GPU")
    lines: list[str] = []
    assert fast.resolve_precision("auto", "cuda", log=lines.append) == ("fp16", torch.float16, torch.float16)
    assert len(lines) == 1 and "Old GPU" in lines[0] and "fp16" in lines[0], lines
    with pytest.raises(ValueError, match="bfloat16"):
        fast.resolve_precision("bf16", "cuda")
    monkeypatch.setattr(fast, "bf16_supported", lambda device: True)
    lines.clear()
    assert fast.resolve_precision("auto", "cuda", log=lines.append)[0] == "bf16-fp32state" and not lines


def test_overflow_fallback_is_for_float16_precisions_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast, "bf16_supported", lambda device: True)
    assert fast.overflow_fallback("fp16", "cuda") == fast.OVERFLOW_FALLBACK_PRECISION
    assert fast.overflow_fallback("fp16-fp32state", "cuda") == fast.OVERFLOW_FALLBACK_PRECISION
    assert not fast.precision_spec(fast.OVERFLOW_FALLBACK_PRECISION).uses_float16
    for name in ("fp32", "bf16", "bf16-fp32state"):  # float32's range: nothing to fall back from
        assert fast.overflow_fallback(name, "cuda") is None
    monkeypatch.setattr(fast, "bf16_supported", lambda device: False)
    assert fast.overflow_fallback("fp16", "cuda") == "fp32"


@pytest.mark.gpu
def test_engine_fast_path_equals_eager_on_cuda(vectors) -> None:
    """fp32, TF32 off: the CUDA-graph engine gives the eager engine's trajectory and depth (same kernels replayed)
    with a reset interval, engine.reset(), update_state=False, and two batched streams."""
    if not torch.cuda.is_available():
        reason = "no CUDA device: the engine's CUDA-graph fast path is not run here"
        print(reason)
        pytest.skip(reason)
    previous = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        frames = [f.cuda() for f in _frames(vectors)]
        eager_model = parity.build_parity_model(vectors, "cuda")
        fast_model = parity.build_parity_model(vectors, "cuda")
        eager = StreamingReconstructor(eager_model, reset_interval=3, build_map=False, fast_path=False)
        fast_eng = StreamingReconstructor(fast_model, reset_interval=3, build_map=False)
        assert fast_eng.fast_path_active and "cuda-graph" in fast_eng.fast_path_status, fast_eng.fast_path_status
        traj_e, depth_e = _run_single(eager, frames)
        traj_f, depth_f = _run_single(fast_eng, frames)
        assert fast_eng.fast_path_active, fast_eng.fast_path_status
        print(f"\nsingle stream: pose max diff {np.abs(traj_f - traj_e).max():.3g}, "
              f"depth max rel diff {np.max(np.abs(depth_f - depth_e) / np.maximum(np.abs(depth_e), 1e-6)):.3g}")
        np.testing.assert_allclose(traj_f, traj_e, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(depth_f, depth_e, rtol=1e-5, atol=1e-5)

        def run(engine: BatchedReconstructor) -> list[np.ndarray]:
            engine.step_batch([frames[0]], [0.0], streams=[0])
            for i in range(1, len(frames)):
                engine.step_batch([frames[i], frames[i - 1]], [0.1 * i, 0.1 * (i - 1)])
                if i == 3:
                    engine.reset(1)
            engine.step_batch([frames[-1]], [9.0], streams=[1])
            return [np.stack([p for _, p in engine.trajectory_model_of(s)]) for s in range(2)]

        two_e = run(BatchedReconstructor(eager_model, 2, reset_interval=3, build_map=False, fast_path=False))
        two_f = run(BatchedReconstructor(fast_model, 2, reset_interval=3, build_map=False))
        print(f"two streams: pose max diff {max(np.abs(two_f[s] - two_e[s]).max() for s in range(2)):.3g}")
        for s in range(2):
            np.testing.assert_allclose(two_f[s], two_e[s], rtol=1e-5, atol=1e-5)
        # host uint8 numpy frames (the node's input) through the fast engine: on-device preprocessing + graph
        rng = np.random.default_rng(0)
        eng = StreamingReconstructor(fast_model, size=64)
        r = eng.step(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), 0.0)
        assert eng.fast_path_active and r.model_size == (48, 64) and np.isfinite(r.depth).all()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


@pytest.mark.gpu
def test_engine_fast_path_uint8_frames_equal_eager_on_cuda(vectors) -> None:
    """fp32, TF32 off: host uint8 frames (resized 96x128 -> 48x64, and unresized 48x64) through the CUDA graph that
    also preprocesses, with pinned asynchronous host outputs, give the eager engine's poses, depth, confidence,
    colour and gate; every frame's host arrays are read only after all frames ran (none overwritten)."""
    if not torch.cuda.is_available():
        reason = "no CUDA device: the engine's CUDA-graph fast path is not run here"
        print(reason)
        pytest.skip(reason)
    previous = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        eager_model = parity.build_parity_model(vectors, "cuda")
        fast_model = parity.build_parity_model(vectors, "cuda")
        for h, w in ((96, 128), (48, 64)):
            frames = _uint8_frames(7, h, w)

            def run(engine: Any) -> list[Any]:
                out = []
                for i, f in enumerate(frames):
                    if i == 4:
                        engine.reset()
                    out.append(engine.step(f, 0.1 * i, update_state=(i != 2)))
                return out

            eager = run(StreamingReconstructor(eager_model, size=64, reset_interval=3, build_map=False,
                                               fast_path=False))
            fast_eng = StreamingReconstructor(fast_model, size=64, reset_interval=3, build_map=False)
            fast_res = run(fast_eng)
            assert fast_eng.fast_path_active and _graph_keys(fast_eng) == [(1, h, w, "uint8")], \
                fast_eng.fast_path_status
            for e, f in zip(eager, fast_res):
                np.testing.assert_allclose(f.camera_to_world_model, e.camera_to_world_model, rtol=1e-5, atol=1e-5)
                np.testing.assert_allclose(f.depth, e.depth, rtol=1e-5, atol=1e-5)
                np.testing.assert_allclose(f.confidence, e.confidence, rtol=1e-5, atol=1e-5)
                np.testing.assert_array_equal(f.colour, e.colour)
                np.testing.assert_allclose([f.gate_mean, f.gate_min, f.gate_max],
                                           [e.gate_mean, e.gate_min, e.gate_max], rtol=1e-5, atol=1e-6)
            worst = max(np.abs(f.camera_to_world_model - e.camera_to_world_model).max()
                        for e, f in zip(eager, fast_res))
            print(f"\nuint8 {w}x{h}: pose max diff {worst:.3g}")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


@pytest.mark.gpu
@pytest.mark.parametrize("precision", [name for name in fast.PRECISIONS if name != "fp32"])
def test_engine_fast_path_runs_each_reduced_precision_on_cuda(vectors, precision: str) -> None:
    """Every reduced precision of the table through the engine's CUDA graph with its default levers (compiled
    blocks and heads, channels-last, concurrent decoders): the graph keeps the state in the precision's stream
    dtype, every frame is valid (finite flags read with the pose), and the poses and depth follow the same
    precision run eagerly (same weights; compiled kernels round differently, hence the loose tolerance)."""
    if not torch.cuda.is_available():
        reason = "no CUDA device: the reduced precisions' fast path is not run here"
        print(reason)
        pytest.skip(reason)
    from ttt3r_ros.model import set_precision

    spec = fast.precision_spec(precision)
    models = []
    for _ in range(2):
        model = parity.build_parity_model(vectors, "cuda")
        set_precision(model, spec.weights, spec.heads, spec.stream)
        models.append(model)
    frames = _uint8_frames(6)
    eager = StreamingReconstructor(models[0], size=64, build_map=False, fast_path=False)
    graphed = StreamingReconstructor(models[1], size=64, build_map=False)
    eager_res = [eager.step(f, 0.1 * i) for i, f in enumerate(frames)]
    graph_res = [graphed.step(f, 0.1 * i) for i, f in enumerate(frames)]
    assert graphed.fast_path_active, graphed.fast_path_status
    assert str(spec.weights).replace("torch.", "") in graphed.fast_path_status
    runner = graphed._batched._runner.graphs[(1, 96, 128, "uint8")].graphed
    assert runner.state.state.dtype == spec.stream and runner.finite.dtype == torch.bool
    assert all(r.valid for r in eager_res + graph_res)
    scale = max(1.0, max(np.abs(e.camera_to_world_model).max() for e in eager_res))  # translations in model units
    worst = max(np.abs(g.camera_to_world_model - e.camera_to_world_model).max()
                for e, g in zip(eager_res, graph_res)) / scale
    depth = max(np.median(np.abs(g.depth - e.depth) / np.maximum(np.abs(e.depth), 1e-6))
                for e, g in zip(eager_res, graph_res))
    print(f"\n{precision}: graph vs eager pose max diff {worst:.3g} (relative to the poses' scale), depth median "
          f"rel diff (worst frame) {depth:.3g}")
    assert worst < 5e-2 and depth < 5e-2


@pytest.mark.gpu
def test_graph_path_reports_a_float16_overflow_as_an_invalid_frame_on_cuda(vectors) -> None:
    """A weight set to 6e4 under a captured fp16 graph (the replay reads the parameter's memory): the finite flag
    computed inside the graph marks the frame invalid, the stream resets, and the next frames are still graphed."""
    if not torch.cuda.is_available():
        reason = "no CUDA device: the in-graph finite flag is not run here"
        print(reason)
        pytest.skip(reason)
    from ttt3r_ros.model import set_precision

    model = parity.build_parity_model(vectors, "cuda")
    set_precision(model, torch.float16, torch.float16)
    engine = StreamingReconstructor(model, size=64, build_map=False)
    frames = _uint8_frames(4)
    assert engine.step(frames[0], 0.0).valid and engine.fast_path_active
    weight = model.enc_blocks[0].mlp.fc2.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.fill_(6e4)
    bad = engine.step(frames[1], 0.1)
    assert not bad.valid and engine.invalid_frames == 1 and engine.fast_path_active
    with torch.no_grad():
        weight.copy_(saved)
    after = [engine.step(f, 0.2 + 0.1 * i) for i, f in enumerate(frames[2:])]
    assert all(r.valid for r in after) and after[0].was_reset and engine.fast_path_active
