"""`ttt3r-ros bench` on CPU at the tiny model size: the JSON line, every mode, the host outputs, bad arguments.

GPU-only behaviour (CUDA-graph replay equals eager stepping) is tested when a GPU is present and skipped with a
printed reason otherwise.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
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


def test_drift_mode_prints_one_line_per_candidate_and_ratios_to_autocast(capsys: pytest.CaptureFixture[str],
                                                                        tmp_path: Path) -> None:
    out = tmp_path / "drift.json"
    rc = cli.main(["bench", "--model-config", _tiny_config(), "--device", "cpu", "--height", "48", "--width", "64",
                   "--mode", "drift", "--precisions", "fp32,bf16", "--frames", "4", "--warmup", "1",
                   "--json-out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = [json.loads(ln) for ln in captured.out.splitlines() if ln.strip()]
    *candidates, summary = lines
    autocast = bench.AUTOCAST_CANDIDATE
    assert [c["candidate"] for c in candidates] == [autocast, "fp32", "bf16"]  # autocast always runs, first
    for line in candidates:
        for key in ("translation_pct_mean", "translation_pct_max", "rotation_deg_mean", "rotation_deg_max",
                    "depth_rel_median_pct_mean", "depth_rel_median_pct_max", "fps", "step_ms_p50"):
            assert isinstance(line[key], float) and line[key] >= 0, (line["candidate"], key, line[key])
        assert line["frames"] == 4 and line["fps"] > 0 and len(line["rotation_deg_per_block"]) == 1
        assert line["mode"] == "drift" and line["device"] == "cpu"
    by_name = {c["candidate"]: c for c in candidates}
    fp32 = by_name["fp32"]
    # the same model in the same precision on the same path: not one bit of difference
    assert fp32["translation_pct_max"] == fp32["rotation_deg_max"] == fp32["depth_rel_median_pct_max"] == 0.0
    assert by_name["bf16"]["depth_rel_median_pct_mean"] > 0 and by_name[autocast]["rotation_deg_mean"] > 0
    assert summary["summary"] is True and summary["ratios_to"] == autocast
    assert summary["candidates"] == [autocast, "fp32", "bf16"] and summary["reference_fp32_fps"] > 0
    ratios = summary["ratios"]
    assert ratios["fp32"]["rotation_deg"] == 0.0
    # the target: <= 0.5 of autocast's drift (fp32: 0) at >= 95% of bf16's FPS (CPU timing: either way)
    assert ratios["fp32"]["meets_target"] is (ratios["fp32"]["fps_vs_bf16"] >= 0.95)
    assert ratios["bf16"]["meets_target"] is False  # more drift than autocast on these frames
    assert ratios[autocast]["translation_pct"] == 1.0
    for key in ("translation_pct", "rotation_deg", "depth_rel_median_pct"):
        expected = by_name["bf16"][f"{key}_mean"] / by_name[autocast][f"{key}_mean"]
        assert ratios["bf16"][key] == pytest.approx(expected, rel=2e-3), key
    assert ratios["bf16"]["fps_vs_bf16"] == 1.0
    assert ratios["fp32"]["fps_vs_bf16"] == pytest.approx(fp32["fps"] / by_name["bf16"]["fps"], rel=2e-3)
    full = json.loads(out.read_text())
    assert full["summary"] == summary and [len(full["per_frame"][c]) for c in summary["candidates"]] == [4, 4, 4]


def test_drift_line_normalises_translation_and_averages_rotation_per_block() -> None:
    """Translation in percent of the fp32 camera's mean distance from the first view; rotation averaged over
    blocks of DRIFT_BLOCK_FRAMES frames (the last one partial); FPS from the timed steps only."""
    n = bench.DRIFT_BLOCK_FRAMES + 10
    rows = [{"translation_abs": 0.01 * (i % 2), "translation_ref": 2.0 * (i % 2), "rotation_deg": float(i),
             "depth_rel_median": 0.002} for i in range(n)]
    run = bench._DriftRun("fp16", stepper=None, levers=(), graphs=False,  # type: ignore[arg-type]
                          step_ms=[1000.0] * 5 + [10.0] * (n - 5), per_frame=rows)
    line = bench._drift_line(_options(), run, timed_from=5)
    assert line["translation_pct_max"] == pytest.approx(100 * 0.01 / 1.0)  # mean |t_ref| is 1.0
    assert line["translation_pct_mean"] == pytest.approx(0.5, rel=1e-3)
    assert line["depth_rel_median_pct_mean"] == pytest.approx(0.2)
    blocks = line["rotation_deg_per_block"]
    assert blocks == [pytest.approx((bench.DRIFT_BLOCK_FRAMES - 1) / 2), pytest.approx(bench.DRIFT_BLOCK_FRAMES + 4.5)]
    assert line["rotation_deg_max"] == n - 1 and line["fps"] == 100.0


def test_drift_scene_is_a_closed_loop_inside_the_room() -> None:
    from ttt3r_ros.engine.synthetic import BoxRoom

    loop = bench.ROOM_LOOP_FRAMES
    poses = bench.room_camera_path(loop + 1)
    np.testing.assert_allclose(poses[loop], poses[0], atol=1e-9)  # periodic: long runs go round again
    assert (np.abs(poses[:, :3, 3]) < np.asarray(BoxRoom().half_extents) - 0.5).all()  # half a metre from walls
    step_m = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)
    assert 0.01 < step_m.min() and step_m.max() < 0.1  # moving every frame, at hand-held speed
    frames = bench.room_frames(3, 48, 64)
    assert frames.shape == (3, 1, 48, 64, 3) and frames.dtype == torch.uint8
    assert not torch.equal(frames[0], frames[1]) and frames.float().std() > 20  # textured, not flat


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
    (["--mode", "drift", "--precisions", "int8"], "--precisions"),
    (["--mode", "drift", "--batch", "2"], "drift mode"),
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


@pytest.mark.gpu
def test_drift_mode_runs_every_precision_through_the_fast_path_on_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    """On a GPU every candidate but autocast runs as a CUDA graph with its default levers; the fp32 candidate
    (graph, concurrent decoders) stays within float rounding of the eager fp32 reference."""
    if not torch.cuda.is_available():
        reason = "no CUDA device: drift mode's CUDA-graph candidates are not run here"
        print(reason)
        pytest.skip(reason)
    from ttt3r_ros.model.fast import PRECISIONS, default_levers

    rc = cli.main(["bench", "--model-config", _tiny_config(), "--height", "48", "--width", "64", "--mode", "drift",
                   "--precisions", ",".join(PRECISIONS), "--frames", "6", "--warmup", "2"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    *candidates, summary = [json.loads(ln) for ln in captured.out.splitlines() if ln.startswith("{")]
    print("\n" + "\n".join(f"{c['candidate']}: rot {c['rotation_deg_mean']} deg, depth "
                           f"{c['depth_rel_median_pct_mean']}%, {c['fps']} FPS" for c in candidates))
    by_name = {c["candidate"]: c for c in candidates}
    assert set(by_name) == {bench.AUTOCAST_CANDIDATE, *PRECISIONS}
    assert by_name[bench.AUTOCAST_CANDIDATE]["cuda_graphs"] is False
    for name, spec in PRECISIONS.items():
        assert by_name[name]["cuda_graphs"] is True, name
        enabled = set(by_name[name]["levers"].split(",")) - {""}
        assert enabled <= set(default_levers(spec.weights)) and "concurrent_decoders" in enabled, (name, enabled)
    assert by_name["fp32"]["rotation_deg_max"] < 1e-2 and by_name["fp32"]["depth_rel_median_pct_max"] < 1e-2
    assert all(summary["ratios"][name]["rotation_deg"] is not None for name in PRECISIONS)
