"""`ttt3r-ros bench` on CPU at the tiny model size: the JSON line, every mode, the host outputs, bad arguments.

GPU-only behaviour (CUDA-graph replay equals eager stepping) is tested when a GPU is present and skipped with a
printed reason otherwise.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

import reference_data
from ttt3r_ros import bench, cli
from ttt3r_ros.engine.preprocess import normalise_uint8


def _tiny_config() -> str:
    """The tiny configuration parity_tiny.json (test/reference_data.py finds it, or skips/fails the test)."""
    return str(reference_data.tiny_config_file())


def _run_cli(capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    rc = cli.main(["bench", "--model-config", _tiny_config(), "--device", "cpu", "--height", "48", "--width", "64",
                   *extra])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = [ln for ln in captured.out.splitlines() if ln.strip()]
    assert len(lines) == 1, f"bench must print exactly one line, got {lines!r}"
    return json.loads(lines[0])


def test_speed_line_has_the_documented_fields(capsys: pytest.CaptureFixture[str]) -> None:
    result = _run_cli(capsys, "--frames", "4", "--warmup", "1", "--batch", "2")
    for key in ("fps", "images_per_s", "step_ms_p50", "step_ms_p95", "step_ms_max", "peak_allocated_mib",
                "peak_reserved_mib", "precision", "resolution", "batch", "torch", "device", "baseline",
                "cuda_graphs", "heads", "update_rule"):
        assert key in result, key
    assert result["precision"] == "fp32"  # auto precision on CPU
    assert result["resolution"] == "64x48" and result["batch"] == 2
    assert result["device"] == "cpu" and result["torch"] == torch.__version__
    assert result["cuda_graphs"] is False and result["heads"] == "self" and result["levers"] == ""
    assert result["fps"] > 0 and result["images_per_s"] == pytest.approx(2 * result["fps"], rel=0.01)
    assert 0 < result["step_ms_p50"] <= result["step_ms_p95"] <= result["step_ms_max"]
    assert result["peak_allocated_mib"] is None  # no GPU allocator on CPU: reported as null, not as 0


def test_bench_levers_are_the_models_fast_path_levers() -> None:
    from ttt3r_ros.model.fast import FAST_LEVERS, FLOAT32_LEVERS, PARITY_SAFE_LEVERS, default_levers

    assert bench.LEVERS == FAST_LEVERS
    # the float32 (parity) path never compiles: compiled float32 misses parity (docs/speed_notes.md)
    assert set(default_levers(torch.float32)) <= set(PARITY_SAFE_LEVERS)
    assert "compile" not in default_levers(torch.float32) and default_levers(torch.float32) == FLOAT32_LEVERS
    assert default_levers(torch.bfloat16) == FAST_LEVERS


def test_reference_baseline_runs_all_heads_in_fp32(capsys: pytest.CaptureFixture[str]) -> None:
    result = _run_cli(capsys, "--baseline", "reference", "--frames", "2", "--warmup", "0")
    assert result["baseline"] == "reference" and result["precision"] == "fp32"
    assert result["heads"] == "self,cross,rgb"


def test_memory_mode_samples_every_k_frames(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "mem.json"
    result = _run_cli(capsys, "--mode", "memory", "--frames", "6", "--memory-every", "3", "--json-out", str(out))
    assert result["mode"] == "memory" and result["frames"] == 6
    full = json.loads(out.read_text())
    assert [s["frame"] for s in full["samples"]] == [1, 3, 6]
    assert full["summary"] == result


def test_drift_mode_compares_bf16_with_fp32(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "drift.json"
    result = _run_cli(capsys, "--mode", "drift", "--precision", "bf16", "--frames", "3", "--json-out", str(out))
    assert result["mode"] == "drift" and result["precision"] == "bf16"
    per_frame = json.loads(out.read_text())["per_frame"]
    assert len(per_frame) == 3
    for frame in per_frame:
        for key in ("translation_abs", "rotation_deg", "depth_rel_median", "depth_rel_p95"):
            assert frame[key] == frame[key] and frame[key] >= 0, (key, frame)  # finite-ish, not NaN
    # bf16 really ran: the depth cannot be bit-identical to float32 on every frame
    assert max(f["depth_rel_median"] for f in per_frame) > 0


def test_profile_mode_reports_per_step_time(capsys: pytest.CaptureFixture[str]) -> None:
    result = _run_cli(capsys, "--mode", "profile", "--warmup", "1")
    assert result["mode"] == "profile" and result["wall_ms_per_step"] > 0


def test_node_outputs_are_world_points_depth_and_colours() -> None:
    opts = _options(batch=2)
    model = bench.build_bench_model(opts)
    frames = bench.synthetic_frames(2, 2, 48, 64, seed=3)
    assert frames.dtype == torch.uint8 and frames.shape == (2, 2, 48, 64, 3)
    assert not torch.equal(frames[0], frames[1]) and not torch.equal(frames[0, 0], frames[0, 1])
    with torch.inference_mode():
        state = model.initial_state(batch_size=2)
        out, _ = model.step(normalise_uint8(frames[0]), state, heads=("self",))
        outputs = bench.node_outputs(out, frames[0])
    pts = out.pts3d_in_self_view
    assert torch.equal(outputs["depth"], pts[..., 2])
    assert torch.equal(outputs["confidence"], out.conf_self)
    assert torch.equal(outputs["colours"], frames[0])
    for b in range(2):
        c2w = out.c2w[b]
        expected = pts[b].reshape(-1, 3) @ c2w[:3, :3].T + c2w[:3, 3]
        torch.testing.assert_close(outputs["points"][b].reshape(-1, 3), expected, rtol=1e-5, atol=1e-5)


def test_normalise_uint8_matches_reference_formula() -> None:
    frame = torch.tensor([[[[0, 128, 255]]]], dtype=torch.uint8)  # [1, 1, 1, 3]
    x = normalise_uint8(frame)
    assert x.shape == (1, 3, 1, 1)
    expected = (torch.tensor([0.0, 128.0, 255.0]) / 255.0 - 0.5) / 0.5
    torch.testing.assert_close(x.flatten(), expected)


@pytest.mark.parametrize("extra, message", [
    (["--height", "50"], "multiples of 16"),
    (["--batch", "0"], "--batch"),
    (["--heads", "cross"], "include 'self'"),
    (["--heads", "depth"], "--heads"),
    (["--mode", "drift", "--precision", "fp32"], "drift mode"),
    (["--cuda-graphs", "on", "--device", "cpu"], "CUDA"),
    (["--levers", "channels_last", "--device", "cpu"], "CUDA"),
    (["--levers", "warp_drive"], "unknown"),
])
def test_bad_arguments_exit_2_with_a_reason(capsys: pytest.CaptureFixture[str], extra: list[str],
                                            message: str) -> None:
    rc = cli.main(["bench", "--model-config", "unused", "--device", "cpu", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and message in err


def _options(**overrides: object) -> bench.BenchOptions:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--model-config", _tiny_config(), "--device", "cpu", "--height", "48",
                              "--width", "64"])
    for key, value in overrides.items():
        setattr(args, key, value)
    return bench.BenchOptions.from_args(args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-graph replay needs a CUDA GPU (none here)")
def test_graph_replay_equals_eager_steps_on_cuda() -> None:
    opts = _options(batch=2)
    opts.device = torch.device("cuda")
    model = bench.build_bench_model(opts)
    frames = bench.synthetic_frames(4, 2, 48, 64, seed=1).pin_memory()
    with torch.inference_mode(), bench.tf32_mode(False):
        eager = bench.EagerStepper(model, opts, torch.float32)
        graph = bench.GraphStepper(model, opts, torch.float32)
        for i in range(4):
            a = {k: v.clone() for k, v in eager(frames[i]).items()}
            b = graph(frames[i])
            for name in a:
                torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-4, msg=f"frame {i} {name}")


def test_reference_style_attention_materialises_logits_and_reproduces_the_gate() -> None:
    """The baseline runs the decoders' attention explicitly (logits materialised, the gate averaged from them) and
    the encoder's through SDPA, only during its step; it computes the same function as the fused path: same gate
    (within float rounding) and depth."""
    opts = _options(baseline="reference", precision="fp32")
    model = bench.build_bench_model(opts)
    frames = bench.synthetic_frames(3, 1, 48, 64, seed=5)
    seen: dict[str, list[str]] = {"decoder": [], "state_cross": [], "encoder": []}
    hooks = [module.register_forward_pre_hook(lambda m, _, key=key: seen[key].append(m.attention_impl))
             for key, module in (("decoder", model.dec_blocks[0].attn),
                                 ("state_cross", model.dec_blocks_state[-1].cross_attn),
                                 ("encoder", model.enc_blocks[0].attn))]
    with torch.inference_mode():
        reference = bench.ReferenceStepper(model, opts, torch.float32)
        fast_opts = _options(precision="fp32", heads="all")
        fast = bench.EagerStepper(model, fast_opts, torch.float32)
        sdpa_state = model.initial_state(1)
        for i in range(3):
            ref_host = reference(frames[i])
            assert seen == {"decoder": ["explicit"], "state_cross": ["explicit"], "encoder": ["sdpa"]}, seen
            for calls in seen.values():
                calls.clear()
            fast_host = fast(frames[i])
            sdpa_out, sdpa_state = model.step(normalise_uint8(frames[i]), sdpa_state)
            assert seen == {key: ["sdpa", "sdpa"] for key in seen}, seen  # both steps fused
            for calls in seen.values():
                calls.clear()
            torch.testing.assert_close(ref_host["gate"], sdpa_out.gate.cpu(), rtol=0, atol=2e-6)
            torch.testing.assert_close(fast_host["depth"], ref_host["pts3d_in_self_view"][..., 2],
                                       rtol=1e-4, atol=1e-5)
    for hook in hooks:
        hook.remove()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fast path is CUDA-only (no CUDA GPU here)")
def test_fast_path_keeps_parity_on_cuda() -> None:
    """The float32 fast path's parity-safe levers (channels-last heads, concurrent decoders; the CUDA graph replays
    the same kernels), TF32 off: the reference's parity vectors still pass within their tolerances."""
    from ttt3r_ros.model import parity
    from ttt3r_ros.model.fast import PARITY_SAFE_LEVERS, enable_fast_path

    vectors = parity.load_parity_vectors(reference_data.parity_file())
    with bench.tf32_mode(False):
        model = parity.build_parity_model(vectors, "cuda")
        assert set(enable_fast_path(model, PARITY_SAFE_LEVERS)) == set(PARITY_SAFE_LEVERS)
        results = []
        for run in vectors.runs:
            results.extend(parity.compare_run(vectors, run, parity.replay_run(model, vectors, run),
                                              skip=parity.ENGINE_NAMES))
    print("\n" + parity.format_results(results))
    failed = [f"{r.run}/{r.name} ratio {r.worst_ratio:.3g}" for r in results if not r.passed]
    assert not failed, failed


def test_fast_path_refuses_cpu_models_with_a_reason() -> None:
    from ttt3r_ros.model.fast import GraphedStep, enable_fast_path

    model = bench.build_bench_model(_options())
    with pytest.raises(ValueError, match="CUDA"):
        enable_fast_path(model)
    with pytest.raises(ValueError, match="CUDA"):
        GraphedStep(model, 1, 48, 64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GraphedStep needs a CUDA GPU (none here)")
def test_graphed_step_follows_eager_steps_through_reset_and_update_masks() -> None:
    """Two streams; stream 0 is reset after frame 2, stream 1 skips the state update on frame 3: the graph replays
    must produce the eager outputs and states frame by frame."""
    from ttt3r_ros.model.fast import GraphedStep

    opts = _options(batch=2)
    opts.device = torch.device("cuda")
    model = bench.build_bench_model(opts)
    frames = bench.synthetic_frames(5, 2, 48, 64, seed=7).cuda()
    resets = [[False, False], [False, False], [True, False], [False, False], [False, False]]
    updates = [[True, True], [True, True], [True, True], [True, False], [True, True]]
    with torch.inference_mode(), bench.tf32_mode(False):
        runner = GraphedStep(model, 2, 48, 64, heads=("self",))
        state = model.initial_state(batch_size=2)
        for i in range(5):
            images = normalise_uint8(frames[i])
            reset = torch.tensor(resets[i], device="cuda")
            update = torch.tensor(updates[i], device="cuda")
            eager, state = model.step(images, state, reset=reset, update=update, heads=("self",))
            graphed = runner.step(images, reset=reset, update=update)
            for name in ("pts3d_in_self_view", "conf_self", "camera_pose", "update_rate"):
                torch.testing.assert_close(getattr(graphed, name), getattr(eager, name), rtol=1e-5, atol=1e-5,
                                           msg=f"frame {i} {name}")
            torch.testing.assert_close(runner.state.state, state.state, rtol=1e-5, atol=1e-5)
            assert torch.equal(runner.state.fresh, state.fresh)


def test_engine_mode_times_the_streaming_reconstructor_on_host_frames(capsys: pytest.CaptureFixture[str]) -> None:
    """--engine: StreamingReconstructor.step on host uint8 frames of the camera's size (resized to the model's),
    map off, host depth/confidence/colour/pose each frame; on CPU the engine says it runs eagerly."""
    result = _run_cli(capsys, "--engine", "--input-width", "80", "--input-height", "60", "--frames", "3",
                      "--warmup", "1")
    assert result["engine"] is True and result["input_resolution"] == "80x60"
    assert result["resolution"] == "64x48"  # 80x60 resized to long side 64, cropped to multiples of 16
    assert result["fast_path_active"] is False and result["fast_path_status"].startswith("eager")
    assert result["cuda_graphs"] is False and result["fps"] > 0
    assert set(result["breakdown"]) == {"step_ms_mean", "host_read_ms_mean", "preprocess_ms_mean", "model_ms_mean",
                                        "post_ms_mean", "total_ms_mean"}


def test_engine_mode_rejects_batches_and_the_reference_baseline(capsys: pytest.CaptureFixture[str]) -> None:
    for extra in (["--batch", "2"], ["--baseline", "reference"], ["--mode", "drift", "--precision", "bf16"]):
        rc = cli.main(["bench", "--model-config", "unused", "--device", "cpu", "--engine", *extra])
        assert rc == 2 and "--engine" in capsys.readouterr().err, extra


@pytest.mark.gpu
def test_engine_mode_runs_the_cuda_graph_fast_path(capsys: pytest.CaptureFixture[str]) -> None:
    """On a GPU, --engine with default options runs the CUDA-graph path (fp32 tiny model, 640x480 host frames)."""
    if not torch.cuda.is_available():
        reason = "no CUDA device: the engine's fast path in bench --engine is not run here"
        print(reason)
        pytest.skip(reason)
    rc = cli.main(["bench", "--model-config", _tiny_config(), "--engine", "--precision", "fp32", "--height", "384",
                   "--width", "512", "--input-width", "640", "--input-height", "480", "--frames", "5",
                   "--warmup", "3"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert result["fast_path_active"] is True and result["resolution"] == "512x384", result
    assert "cuda-graph" in result["fast_path_status"] and result["levers"] == "concurrent_decoders"
