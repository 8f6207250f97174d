"""`ttt3r-ros map` end to end on bags written with rosbags (tiny random-weight model on CPU), result bags,
corrupt input, interrupts, periodic outputs, determinism, and the engine + eval on an exact synthetic scene."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from test_offline_support import (PERIOD_NS, STAMP0_NS, TINY_MODEL_CONFIG, map_args, parse_map_args, write_bag,
                                  write_image_folder)
from ttt3r_ros.cli import main
from ttt3r_ros.engine import exports
from ttt3r_ros.offline.bag_io import open_bag
from ttt3r_ros.offline.map_command import map_input
from ttt3r_ros.session.message_codec import cloud_to_numpy
from ttt3r_ros.session.odometry import OdometryTracker
from ttt3r_ros.offline.readers import Frame, FrameSource
from ttt3r_ros.offline.result_bag import ResultBagWriter


@pytest.fixture(scope="module")
def tiny():
    return TINY_MODEL_CONFIG


def read_run(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


@pytest.mark.parametrize("storage,compressed,camera_info", [("sqlite3", False, True), ("sqlite3", True, False),
                                                            ("mcap", False, False), ("mcap", True, True)])
def test_bag_maps_end_to_end(tmp_path, tiny, storage, compressed, camera_info):
    bag = tmp_path / "bag"
    stamps = write_bag(bag, storage=storage, n_frames=5, compressed=compressed, camera_info=camera_info)
    out = tmp_path / "out"
    # sqlite3 names the CameraInfo topic, mcap relies on finding it next to the image topic
    extra = ["--camera-info-topic", "/cam/camera_info"] if camera_info and storage == "sqlite3" else []
    assert main(map_args(bag, out, tiny, *extra)) == 0
    timestamps, poses = exports.read_tum(out / "trajectory.tum")
    assert len(timestamps) == len(stamps) == 5
    np.testing.assert_allclose(timestamps, np.asarray(stamps) * 1e-9, rtol=0, atol=1e-6)
    np.testing.assert_allclose(poses[0], np.eye(4), atol=1e-6)  # first frame is the identity
    points, colours, confidences = exports.read_ply(out / "map.ply")
    assert len(points) > 0 and np.isfinite(points).all() and colours.dtype == np.uint8
    assert (confidences >= 1.0).all()
    run = read_run(out)
    assert run["status"] == "completed" and run["frames_processed"] == 5 and run["frames_skipped"] == 0
    assert run["label"].startswith("PLUMBING CHECK")
    assert run["weights"]["random"] is True
    assert run["input"]["storage"] == storage
    assert run["input"]["camera_info_auto"] == (camera_info and storage == "mcap")
    assert run["intrinsics_frames"] == ({"calibrated": 5} if camera_info else {"estimated": 5})
    for key in ("torch", "ttt3r_ros", "rosbags"):
        assert run["versions"][key]
    assert run["device"]["type"] == "cpu" and run["device"]["name"]
    assert run["timings"]["engine_ms"]["model"]["mean"] > 0
    assert run["parameters"]["update_rule"] == "ttt3r" and run["parameters"]["voxel_size"] == 0.02


def test_no_camera_info_ignores_the_calibration(tmp_path, tiny):
    bag = tmp_path / "bag"
    write_bag(bag, n_frames=3, camera_info=True)
    assert main(map_args(bag, tmp_path / "out", tiny, "--no-camera-info")) == 0
    run = read_run(tmp_path / "out")
    assert run["intrinsics_frames"] == {"estimated": 3} and run["input"]["camera_info_topic"] is None
    assert main(map_args(bag, tmp_path / "out2", tiny, "--no-camera-info", "--camera-info-topic", "/x")) == 2


def test_result_bag_holds_odometry_tf_path_clouds_and_map(tmp_path, tiny):
    bag = tmp_path / "bag"
    write_bag(bag, n_frames=4)
    out, result = tmp_path / "out", tmp_path / "result_bag"
    assert main(map_args(bag, out, tiny, "--result-bag", str(result), "--cloud-stride", "2",
                         "--save-depth")) == 0
    assert (result / "metadata.yaml").is_file()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging folder left behind
    reader = open_bag(result)
    try:
        counts = {c.topic: c.msgcount for c in reader.connections}
        assert counts["/odom"] == counts["/tf"] == counts["/points"] == 4
        assert counts["/tf_static"] == 1 and counts["/map_points"] == 1 and counts["/path"] >= 1
        messages = [(c.topic, t, reader.deserialize(raw, c.msgtype)) for c, t, raw in reader.messages()]
    finally:
        reader.close()
    stamps_ns = [t for topic, t, _ in messages if topic == "/odom"]
    assert stamps_ns == [STAMP0_NS + i * PERIOD_NS for i in range(4)]
    odom = [m for topic, _, m in messages if topic == "/odom"]
    assert odom[0].header.frame_id == "odom" and odom[0].child_frame_id == "base_link"
    q = odom[0].pose.pose.orientation
    assert (q.x, q.y, q.z, q.w) == pytest.approx((0, 0, 0, 1), abs=1e-6)
    assert all(odom_msg.pose.covariance[0] > 0 for odom_msg in odom)
    static = next(m for topic, _, m in messages if topic == "/tf_static").transforms[0]
    assert (static.header.frame_id, static.child_frame_id) == ("base_link", "camera_optical_frame")
    tf = [m.transforms[0] for topic, _, m in messages if topic == "/tf"]
    assert (tf[0].header.frame_id, tf[0].child_frame_id) == ("odom", "base_link")
    cloud = next(m for topic, _, m in messages if topic == "/points")
    assert cloud.header.frame_id == "camera_optical_frame"
    assert (cloud.height, cloud.width) == (24, 32)  # model resolution 48x64, stride 2
    assert len(cloud_to_numpy(cloud)) == 24 * 32     # the field layout: test_node_conversions.py (one packer)
    path = [m for topic, _, m in messages if topic == "/path"][-1]
    assert len(path.poses) == 4
    map_cloud = next(m for topic, _, m in messages if topic == "/map_points")
    assert map_cloud.header.frame_id == "odom"
    assert map_cloud.width == len(exports.read_ply(out / "map.ply")[0])
    depth = exports.read_png16(out / "depth" / "000003_depth.png", exports.DEPTH_PNG_SCALE)
    assert depth.shape == (48, 64)


def test_corrupt_messages_are_skipped_counted_and_the_run_continues(tmp_path, tiny):
    bag = tmp_path / "bag"
    good = write_bag(bag, n_frames=7, corrupt={2: "garbage", 4: "truncated"})
    out = tmp_path / "out"
    assert main(map_args(bag, out, tiny)) == 0
    timestamps, _ = exports.read_tum(out / "trajectory.tum")
    assert len(timestamps) == len(good) == 5
    run = read_run(out)
    assert run["frames_processed"] == 5 and run["frames_skipped"] == 2
    assert sum(run["skipped"]["by_reason"].values()) == 2
    reasons = [r["reason"] for r in run["skipped"]["records"]]
    assert any("undecodable" in r for r in reasons) and any("data length" in r for r in reasons)


def test_bad_inputs_give_clear_errors_and_write_nothing(tmp_path, tiny, capsys):
    out = tmp_path / "out"
    assert main(map_args(tmp_path / "missing_bag", out, tiny)) == 2
    assert "no such file or folder" in capsys.readouterr().err
    fake = tmp_path / "fake.db3"
    fake.write_bytes(b"garbage")
    assert main(map_args(fake, out, tiny)) == 2
    assert "as a rosbag2" in capsys.readouterr().err
    bag = tmp_path / "bag"
    write_bag(bag, n_frames=2)
    assert main(map_args(bag, out, tiny, "--image-topic", "/nope")) == 2
    err = capsys.readouterr().err
    assert "/nope" in err and "/cam/image_raw [sensor_msgs/msg/Image]" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(map_args(empty, out, tiny, "--fps", "10")) == 2
    assert "no images in" in capsys.readouterr().err
    assert not out.exists()


def test_without_weights_the_error_says_where_they_come_from(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TTT3R_WEIGHTS", raising=False)
    bag = tmp_path / "bag"
    write_bag(bag, n_frames=2)
    assert main(["map", str(bag), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--weights" in err and "TTT3R_WEIGHTS" in err and "cut3r_512_dpt_4_64" in err
    assert "--random-weights" in err
    monkeypatch.setenv("TTT3R_WEIGHTS", str(tmp_path / "nowhere.safetensors"))
    assert main(["map", str(bag), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "checkpoint not found" in (err := capsys.readouterr().err) and "(from $TTT3R_WEIGHTS)" in err
    assert not (tmp_path / "out").exists()


class InterruptingSource(FrameSource):
    """Yields frames of an image folder, then raises KeyboardInterrupt (as Ctrl-C would) before frame `stop_at`;
    at `check_at` it asserts what the periodic checkpoint left on disk (what a kill -9 would keep)."""
    kind = "test"

    def __init__(self, inner: FrameSource, stop_at: int, out: Path, check_at: int | None = None,
                 expect_rows: int = 0) -> None:
        super().__init__()
        self.inner, self.stop_at, self.out, self.check_at, self.expect_rows = inner, stop_at, out, check_at, expect_rows
        self.checked = False

    @property
    def expected_frames(self):
        return self.inner.expected_frames

    def __iter__(self):
        for i, frame in enumerate(self.inner):
            if i == self.check_at:
                timestamps, _ = exports.read_tum(self.out / "trajectory.tum")
                assert len(timestamps) == self.expect_rows
                exports.read_ply(self.out / "map.ply")
                assert json.loads((self.out / "run.json").read_text())["status"] == "running"
                self.checked = True
            if i == self.stop_at:
                raise KeyboardInterrupt
            yield Frame(frame.timestamp_s, frame.rgb, frame.intrinsics)


def test_interrupt_leaves_valid_trajectory_and_map(tmp_path, tiny):
    from ttt3r_ros.offline.readers import open_frame_source

    folder = tmp_path / "imgs"
    write_image_folder(folder, 8)
    out, result = tmp_path / "out", tmp_path / "result"
    args = parse_map_args(map_args(folder, out, tiny, "--fps", "10", "--checkpoint-every", "2",
                                   "--checkpoint-min-seconds", "0",
                                   "--result-bag", str(result), "--prefetch", "0"))
    source = InterruptingSource(open_frame_source(folder, fps=10), stop_at=5, out=out, check_at=5, expect_rows=4)
    summary = map_input(args, source=source)
    assert source.checked  # the periodic rewrite after 4 frames was on disk
    assert summary.status == "interrupted" and summary.frames_processed == 5
    timestamps, _ = exports.read_tum(out / "trajectory.tum")
    assert list(timestamps) == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    points, _, _ = exports.read_ply(out / "map.ply")
    assert len(points) > 0
    run = read_run(out)
    assert run["status"] == "interrupted" and run["frames_processed"] == 5
    reader = open_bag(result)  # the result bag was closed properly and holds the processed frames
    try:
        assert {c.topic: c.msgcount for c in reader.connections}["/odom"] == 5
    finally:
        reader.close()
    assert not list(out.glob(".*.tmp"))  # no temporary files left


class _BagCutAtFrame(ResultBagWriter):
    """A result bag whose `cut_at`-th frame is interrupted (a forcing second Ctrl-C) after the engine's step
    recorded the pose but before anything of the frame reached the bag."""

    def __init__(self, *args, cut_at: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cut_at, self.calls = cut_at, 0

    def add_frame(self, *args, **kwargs) -> None:
        self.calls += 1
        if self.calls == self.cut_at:
            raise KeyboardInterrupt
        super().add_frame(*args, **kwargs)


def test_an_interrupt_inside_a_frames_bookkeeping_leaves_that_frame_out_of_every_output(tmp_path, tiny):
    """The trajectory rows, frames_processed and the result bag's odometry hold the same frames even when the
    interrupt lands between the engine's step and the frame's writes (it did, with a SIGTERM in CI)."""
    from ttt3r_ros.offline.mapping import MapRunOptions, OfflineMapper
    from ttt3r_ros.offline.readers import open_frame_source
    from ttt3r_ros.session.build import open_session, resolve_weights

    folder = tmp_path / "imgs"
    write_image_folder(folder, 8)
    options = parse_map_args(map_args(folder, tmp_path / "unused", tiny))
    weights = resolve_weights(options.weights, options.random_weights, environment={})
    engine = open_session(options.session_config(), weights=weights).new_engine()
    result_bag = _BagCutAtFrame(tmp_path / "result", camera_to_base=engine.config.camera_to_base, cut_at=4)
    out = tmp_path / "out"
    summary = OfflineMapper(engine, MapRunOptions(out_dir=out, progress=False), result_bag).run(
        open_frame_source(folder, fps=10.0))
    assert len(engine.trajectory) == 4          # the engine did record the cut frame's pose ...
    assert summary.status == "interrupted" and summary.frames_processed == 3
    timestamps, _ = exports.read_tum(out / "trajectory.tum")
    assert list(timestamps) == pytest.approx([0.0, 0.1, 0.2])   # ... which no output holds
    assert read_run(out)["trajectory_poses"] == read_run(out)["frames_processed"] == 3
    reader = open_bag(tmp_path / "result")
    try:
        assert {c.topic: c.msgcount for c in reader.connections}["/odom"] == 3
    finally:
        reader.close()


def test_interrupt_raised_in_the_prefetch_thread_reaches_the_run(tmp_path, tiny):
    from ttt3r_ros.offline.readers import open_frame_source

    folder = tmp_path / "imgs"
    write_image_folder(folder, 8)
    out = tmp_path / "out"
    args = parse_map_args(map_args(folder, out, tiny, "--fps", "10", "--prefetch", "3"))
    summary = map_input(args, source=InterruptingSource(open_frame_source(folder, fps=10), stop_at=5, out=out))
    assert summary.status == "interrupted" and summary.frames_processed == 5
    assert len(exports.read_tum(out / "trajectory.tum")[0]) == 5
    assert read_run(out)["input"]["prefetch"] == 3


def test_runs_are_deterministic_and_max_frames_is_honoured(tmp_path, tiny):
    bag = tmp_path / "bag"
    write_bag(bag, n_frames=6, compressed=True)
    for name in ("a", "b"):
        assert main(map_args(bag, tmp_path / name, tiny, "--max-frames", "4")) == 0
    first = (tmp_path / "a" / "trajectory.tum").read_bytes()
    assert first == (tmp_path / "b" / "trajectory.tum").read_bytes()
    assert (tmp_path / "a" / "map.ply").read_bytes() == (tmp_path / "b" / "map.ply").read_bytes()
    assert len(exports.read_tum(tmp_path / "a" / "trajectory.tum")[0]) == 4


def test_engine_and_eval_on_the_exact_synthetic_scene(tmp_path):
    """The mapping loop with the engine's oracle network (exact point maps of the synthetic room): the written
    trajectory evaluates to ATE ~ 0 against the scene's ground truth."""
    import cv2
    import torch

    from ttt3r_ros.engine.preprocess import preprocess
    from ttt3r_ros.engine.reconstructor import StreamingReconstructor
    from support.oracle import OracleNetwork
    from ttt3r_ros.engine.synthetic import make_sequence
    from ttt3r_ros.offline.eval_command import evaluate_files
    from ttt3r_ros.offline.mapping import MapRunOptions, OfflineMapper
    from ttt3r_ros.offline.readers import open_frame_source

    sequence = make_sequence(n_frames=8, h=48, w=64)
    seq_dir = tmp_path / "seq"
    seq_dir.mkdir()
    for i, image in enumerate(sequence.images):
        cv2.imwrite(str(seq_dir / f"{i:03d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    exports.write_tum(tmp_path / "gt.tum", sequence.timestamps, sequence.camera_to_world)
    images = torch.cat([preprocess(image, size=64).images for image in sequence.images])
    oracle = OracleNetwork(images, sequence.points_camera, sequence.camera_to_world)
    engine = StreamingReconstructor(oracle, size=64, confidence_threshold=3.0, voxel_size=0.05)
    out = tmp_path / "out"
    result_bag = ResultBagWriter(tmp_path / "result", camera_to_base=engine.config.camera_to_base)
    summary = OfflineMapper(engine, MapRunOptions(out_dir=out, progress=False), result_bag).run(
        open_frame_source(seq_dir, fps=10.0))
    assert summary.status == "completed" and summary.frames_processed == 8
    report = evaluate_files(tmp_path / "gt.tum", out / "trajectory.tum", tmp_path / "eval", plot=False)
    assert report["ate_rmse_m"] < 1e-4 and report["matched_poses"] == 8
    assert report["scale"] == pytest.approx(1.0, abs=1e-4)
    points, _, _ = exports.read_ply(out / "map.ply")
    assert len(points) > 100
    # map points (first-camera frame) lie on the room's walls once moved into the room frame
    room_points = points @ sequence.camera_to_world[0][:3, :3].T + sequence.camera_to_world[0][:3, 3]
    assert np.percentile(sequence.room.surface_distance(room_points), 95) < 0.05

    # The result bag's odometry is the true camera motion in REP 103 body axes (x forward, y left, z up):
    # relative optical pose inv(P0) @ Pi with axes swapped optical -> body on both sides.
    reader = open_bag(tmp_path / "result")
    try:
        odom = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages() if c.topic == "/odom"]
        cloud = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages() if c.topic == "/map_points"][-1]
    finally:
        reader.close()
    swap = np.array([[0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]], dtype=float)
    # covariance and twist as the node computes them: the session's one OdometryTracker replayed on the true poses
    # with the oracle's confident fraction (its low-confidence band is the left eighth of the image)
    tracker = OdometryTracker()
    confidence = np.array([1.0] + [10.0] * 7, dtype=np.float32)
    for i, msg in enumerate(odom):
        relative = np.linalg.inv(sequence.camera_to_world[0]) @ sequence.camera_to_world[i]
        expected = swap @ relative @ swap.T
        p = msg.pose.pose.position
        np.testing.assert_allclose([p.x, p.y, p.z], expected[:3, 3], atol=1e-4)
        estimate = tracker.update(0.1 * i, expected, confidence)
        assert estimate.confident_fraction == pytest.approx(7 / 8)
        assert msg.pose.covariance[0] == pytest.approx(estimate.pose_covariance_diagonal[0], rel=1e-4)
        assert msg.twist.covariance[0] == pytest.approx(estimate.twist_covariance_diagonal[0], rel=1e-4)
        if i == 0:   # no velocity before two poses exist: said by the covariance
            assert msg.twist.covariance[0] == 9999.0
        else:        # twist in the child (base) frame: motion since the previous frame / 0.1 s
            previous = swap @ np.linalg.inv(sequence.camera_to_world[0]) @ sequence.camera_to_world[i - 1] @ swap.T
            step = np.linalg.inv(previous) @ expected
            v = msg.twist.twist.linear
            np.testing.assert_allclose([v.x, v.y, v.z], step[:3, 3] / 0.1, atol=1e-3)
            # the pose uncertainty grows with the distance travelled (REP 105 odometry drifts)
            assert msg.pose.covariance[0] > odom[i - 1].pose.covariance[0]
    # map cloud in odom: the same points as map.ply, axes swapped
    cloud_xyz = np.stack([cloud_to_numpy(cloud)[k] for k in ("x", "y", "z")], axis=1)
    np.testing.assert_allclose(cloud_xyz, points @ swap[:3, :3].T, atol=1e-5)


def test_ctrl_c_on_a_real_process_leaves_valid_outputs(tmp_path, tiny):
    """SIGINT to a running `ttt3r-ros map` process (what Ctrl-C sends): exit code 130 and complete files."""
    import os
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "imgs"
    write_image_folder(folder, 150)
    out = tmp_path / "out"
    argv = map_args(folder, out, tiny, "--fps", "10", "--checkpoint-every", "1", "--checkpoint-min-seconds", "0")
    process = subprocess.Popen([sys.executable, "-m", "ttt3r_ros.cli", *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 120
        rows = 0
        while time.monotonic() < deadline and process.poll() is None:
            try:
                rows = len(exports.read_tum(out / "trajectory.tum")[0])
            except (OSError, ValueError):
                rows = 0
            if rows >= 3:
                break
            time.sleep(0.05)
        assert rows >= 3, "the run never wrote its periodic trajectory"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr[-2000:]
    timestamps, _ = exports.read_tum(out / "trajectory.tum")
    run = read_run(out)
    assert run["status"] == "interrupted"
    # the frame in progress finished first: the files and the counts agree
    assert 3 <= len(timestamps) == run["trajectory_poses"] == run["frames_processed"] < 150
    assert "SIGINT: stopping after the frame in progress" in stderr
    exports.read_ply(out / "map.ply")
    assert not list(out.glob(".*"))


def test_folder_and_the_bag_made_from_it_map_identically(tmp_path, tiny):
    """make-bag + bag reader lose nothing: the same frames, stamps and intrinsics give the same trajectory."""
    folder = tmp_path / "imgs"
    write_image_folder(folder, 5, times=[100.0 + 0.1 * i for i in range(5)])
    intrinsics = ["--fx", "50", "--fy", "50", "--cx", "32", "--cy", "24"]
    assert main(["make-bag", str(folder), str(tmp_path / "bag"), "--storage", "mcap", *intrinsics]) == 0
    assert main(map_args(folder, tmp_path / "from_folder", tiny, *intrinsics)) == 0
    assert main(map_args(tmp_path / "bag", tmp_path / "from_bag", tiny,
                         "--camera-info-topic", "/camera/camera_info")) == 0
    assert ((tmp_path / "from_folder" / "trajectory.tum").read_bytes()
            == (tmp_path / "from_bag" / "trajectory.tum").read_bytes())
    assert read_run(tmp_path / "from_bag")["intrinsics_frames"] == {"calibrated": 5}


class ListSource(FrameSource):
    kind = "list"

    def __init__(self, frames):
        super().__init__()
        self.frames = frames

    @property
    def expected_frames(self):
        return len(self.frames)

    def __iter__(self):
        return iter(self.frames)


def test_frames_the_engine_rejects_are_counted_and_a_fully_rejected_input_fails(tmp_path, tiny, capsys):
    from test_offline_support import pattern_image

    bad = np.zeros((4, 300, 3), np.uint8)  # aspect ratio too extreme for the model's crop
    frames = [Frame(0.1 * i, bad if i == 2 else pattern_image(i), None) for i in range(5)]
    out = tmp_path / "out"
    summary = map_input(parse_map_args(map_args(tmp_path, out, tiny)), source=ListSource(frames))
    assert summary.status == "completed" and summary.frames_processed == 4
    run = read_run(out)
    assert run["frames_skipped"] == 1 and "16 pixels" in run["skipped"]["rejected_by_engine"][0]["reason"]
    assert len(exports.read_tum(out / "trajectory.tum")[0]) == 4

    out2 = tmp_path / "out2"
    summary = map_input(parse_map_args(map_args(tmp_path, out2, tiny)),
                        source=ListSource([Frame(0.1 * i, bad, None) for i in range(12)]))
    assert summary.status == "failed" and "all rejected by the engine" in summary.error
    assert read_run(out2)["status"] == "failed"


def test_update_rule_and_reset_interval_reach_the_engine(tmp_path, tiny):
    bag = tmp_path / "bag"
    write_bag(bag, n_frames=5)
    assert main(map_args(bag, tmp_path / "a", tiny)) == 0
    assert main(map_args(bag, tmp_path / "b", tiny, "--update-rule", "cut3r", "--reset-interval", "2")) == 0
    run = read_run(tmp_path / "b")
    assert run["parameters"]["update_rule"] == "cut3r" and run["parameters"]["reset_interval"] == 2
    a_t, a_poses = exports.read_tum(tmp_path / "a" / "trajectory.tum")
    b_t, b_poses = exports.read_tum(tmp_path / "b" / "trajectory.tum")
    assert len(b_t) == 5 and list(a_t) == list(b_t)
    assert not np.allclose(a_poses[2:], b_poses[2:], atol=1e-6)  # another rule/chunking gives other poses
    assert main(map_args(bag, tmp_path / "c", tiny, "--reset-interval", "-1")) == 2
