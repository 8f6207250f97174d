"""`ttt3r-ros bench --node` on the CPU with the tiny model: the real node process, a publisher process and a
subscriber process over DDS; the JSON line must carry every field, with values that hang together."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("rclpy", reason="rclpy (ROS 2 Python wheels) not installed")
pytest.importorskip("ttt3r_ros.msg", reason="ttt3r_ros interfaces not built (run scripts/setup.sh)")
pytest.importorskip("tf2_msgs.msg", reason="tf2_msgs not built (run scripts/setup.sh)")

from ttt3r_ros.ros import node_bench  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]

RATE_HZ = 15.0
TINY_NODE = node_bench.NodeOptions(model_config="tiny", weights="random", device="cpu", image_size=64)


def _check_consistent(run: dict[str, Any], rate_hz: float) -> None:
    """What holds for every successful run, whatever the machine's speed."""
    assert "error" not in run, run.get("error")
    lat = run["latency_ms"]
    assert lat["n"] > 0 and 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"], lat
    frames = run["frames"]
    assert 0 < frames["processed"] <= frames["received"] <= frames["sent"], frames
    assert frames["lost_before_node"] == frames["sent"] - frames["received"]
    assert frames["dropped"] >= 0 and frames["rejected"] == 0, frames
    # the node cannot process more frames than the camera offers
    assert 0 < run["processed_fps"] <= rate_hz * 1.1, run["processed_fps"]
    assert abs(run["offered_fps"] - rate_hz) < 0.2 * rate_hz, run["offered_fps"]
    assert run["node_cpu_ms_per_frame"] > 0 and run["node_cpu_cores"] > 0
    assert run["drained"] is True
    assert run["device"] == "cpu" and run["device_name"]
    assert run["gpu_memory_mib"] is None                      # CPU run: no GPU figure, not a made-up one
    rss = run["node_rss_mib_window"]                         # sampled every second over the window
    assert 0 < rss["start"] <= rss["peak"] and 0 < rss["end"] <= rss["peak"], rss
    assert rss["timeline"][0][1] == rss["start"] and rss["timeline"][-1][1] == rss["end"]
    assert len(rss["timeline"]) >= 1 and rss["timeline"][-1][0] <= run["window_s"], rss
    params = run["node_params"]                              # as the running node reports them
    assert (params["model_config"], params["device"], params["image_size"]) == ("tiny", "cpu", 64)


def test_cli_prints_one_json_line_with_every_output_subscribed(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "ttt3r_ros.cli", "bench", "--node", "--model-config", "tiny", "--weights", "random",
           "--device", "cpu", "--image-size", "64", "--rate", f"{RATE_HZ:g}", "--outputs", "all",
           "--settle-s", "0.5", "--duration-s", "2", "--work-dir", str(tmp_path / "work"),
           "--json-out", str(tmp_path / "runs.jsonl")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, out.stdout
    run = json.loads(lines[0])
    assert (tmp_path / "runs.jsonl").read_text().strip() == lines[0]
    _check_consistent(run, RATE_HZ)
    assert run["bench"] == "node" and run["run"] == "15hz_keep-latest_all_raw"
    assert run["params"]["rate_hz"] == RATE_HZ and run["params"]["outputs"] == "all"
    assert run["params"]["fastdds_profile"], "the repo's Fast DDS profile was not found"
    assert run["node_params"]["image_transport"] == "raw" and run["node_params"]["process_all_frames"] is False
    # a fresh node with an empty compile cache: a cold start, timed from process start to the first odometry
    assert run["node_start"] == "cold" and run["time_to_first_odom_s"] > 0
    # every output reached the subscriber; odometry (reliable, depth 10: what FPS and latency are computed from)
    # once per processed frame, the others at most once per frame (depth-2 histories may overwrite under load)
    received = run["topics_received"]
    assert set(received) == set(node_bench.ALL_OUTPUT_TOPICS), received
    assert received["odom"] == run["frames"]["processed"], received
    for topic in node_bench.ALL_OUTPUT_TOPICS:
        assert 1 <= received[topic] <= run["frames"]["processed"], (topic, received)


def test_kept_node_is_reset_and_measured_again_with_only_odom_subscribed(tmp_path: Path) -> None:
    env = node_bench.BenchEnvironment(work_dir=tmp_path, compile_cache_dir=tmp_path / "cache",
                                      domain_id=int(os.environ["ROS_DOMAIN_ID"]),
                                      fastdds_profile=node_bench.find_fastdds_profile(), startup_timeout_s=120)
    load = node_bench.LoadOptions(rate_hz=RATE_HZ, outputs="all", settle_s=0.5, duration_s=2.0)
    specs = [node_bench.RunSpec("first", TINY_NODE, load),
             node_bench.RunSpec("second", TINY_NODE, replace(load, outputs="odom"))]
    runs: list[dict[str, Any]] = []
    failures = node_bench.run_all(specs, env, runs.append)
    assert failures == 0, runs
    first, second = runs
    for run in runs:
        _check_consistent(run, RATE_HZ)
    # the second run used the same node process (reset through ~/reset); its counters are its own (received <=
    # sent in _check_consistent would fail on the node's totals since start)
    assert second["node_start"] == "reused" and second["time_to_first_odom_s"] is None
    assert first["node_start"] == "cold" and first["time_to_first_odom_s"] > 0
    assert set(first["topics_received"]) == set(node_bench.ALL_OUTPUT_TOPICS)
    assert set(second["topics_received"]) == {"odom"}
    assert second["topics_received"]["odom"] == second["frames"]["processed"]


def test_status_of_a_node_that_is_still_configuring_is_waited_for_not_an_error() -> None:
    """The node publishes /diagnostics in every lifecycle state; during a long configure (the full model compiling on
    a GPU) that status has no frame counters. The bench must wait for the active status, and still refuse an active
    status that lacks them (a renamed counter must not go unnoticed)."""
    from ttt3r_ros.ros import health
    from std_msgs.msg import Header

    configuring = health.lifecycle_diagnostics("unconfigured", "", Header(), "/n/ttt3r_node").status[0]
    assert node_bench._diagnostic_counters(configuring) is None
    active = health.diagnostics(health.HealthSummary(frames_received=5, frames_processed=4), Header(),
                                "/n/ttt3r_node").status[0]
    counters = node_bench._diagnostic_counters(active)
    assert counters is not None and counters["frames_received"] == 5 and counters["frames_processed"] == 4
    active.values = [kv for kv in active.values if kv.key != "frames_dropped"]
    with pytest.raises(node_bench.BenchError, match="frames_dropped"):
        node_bench._diagnostic_counters(active)


def test_two_cameras_one_node_then_two_single_camera_nodes(tmp_path: Path) -> None:
    """Issue 14's measurement on the CPU: one node with two cameras (one model), then two single-camera node
    processes, each camera with its own publisher and subscriber; one record per mode with per-camera results."""
    env = node_bench.BenchEnvironment(work_dir=tmp_path, compile_cache_dir=tmp_path / "cache",
                                      domain_id=int(os.environ["ROS_DOMAIN_ID"]),
                                      fastdds_profile=node_bench.find_fastdds_profile(), startup_timeout_s=120)
    rate_hz = 8.0
    load = node_bench.LoadOptions(rate_hz=rate_hz, outputs="all", settle_s=0.5, duration_s=2.5, width=128,
                                  height=96)
    records: list[dict[str, Any]] = []
    assert node_bench.run_cameras(2, TINY_NODE, load, env, records.append) == 0, records
    assert [r["mode"] for r in records] == ["one_node", "separate_nodes"]
    one, separate = records
    assert one["summary"]["node_processes"] == 1 and separate["summary"]["node_processes"] == 2
    for record in records:
        assert record["summary"]["cameras"] == 2 and len(record["per_camera"]) == 2
        assert record["summary"]["gpu_memory_mib_peak"] is None        # CPU: no made-up GPU figure
        for result in record["per_camera"]:
            lat = result["latency_ms"]
            assert lat["n"] > 0 and 0 < lat["p50"] <= lat["p95"] <= lat["max"], lat
            assert 0 < result["processed_fps"] <= rate_hz * 1.1, result
            assert 0 < result["frames"]["processed"] <= result["frames"]["received"] <= result["frames"]["sent"]
            assert result["frames"]["rejected"] == 0
    # one node: both cameras in one namespace, counted per camera from that camera's own status
    assert [r["camera"] for r in one["per_camera"]] == ["cam0", "cam1"]
    assert len({r["namespace"] for r in one["per_camera"]}) == 1
    assert list(one["per_camera"][0]["node_params"]["cameras"]) == ["cam0", "cam1"]
    # separate nodes: one namespace (process) per camera, no `cameras` parameter
    assert len({r["namespace"] for r in separate["per_camera"]}) == 2
    assert "camera" not in separate["per_camera"][0]
    assert [list(r["node_params"]["cameras"]) for r in separate["per_camera"]] == [[], []]


def test_rss_window_keeps_first_last_and_peak_of_a_long_run() -> None:
    samples = [(float(t), 100.0 + (50.0 if t == 333 else 0.0) + t * 0.01) for t in range(1000)] + [(1000.0, None)]
    window = node_bench._rss_window(samples)
    assert window["start"] == 100.0 and window["end"] == pytest.approx(109.99, abs=0.05)
    assert window["peak"] == pytest.approx(153.33, abs=0.05)          # the peak is kept even when thinned away
    assert len(window["timeline"]) <= node_bench.RSS_TIMELINE_POINTS + 1
    assert window["timeline"][0] == [0.0, 100.0] and window["timeline"][-1][0] == 999.0
    assert node_bench._rss_window([(0.0, None)]) is None              # the node's /proc entry was gone
