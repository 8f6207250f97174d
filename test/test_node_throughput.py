"""ttt3r_node's start and delivery over real DDS (issue 11 items 2-3, issue 13 items 3-4): services and parameters
answer while configure loads the weights, SIGTERM and SIGHUP end the node like SIGINT, `path` is published at its
own rate (not per frame), and with process_all_frames the images lost before the node are counted in status."""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("rclpy", reason="rclpy (ROS 2) not installed: the node tests need ROS 2 (scripts/setup.sh)")

import test_node_harness as h  # noqa: E402
from nav_msgs.msg import Odometry, Path as PathMsg  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from ttt3r_ros.msg import Status  # noqa: E402

FRAMES, _K = h.synthetic_frames(30, 96, 128)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def _args(ns: str, *extra: str) -> list[str]:
    return h.tiny_node_args(h.tiny_weights(), "-r", f"__ns:={ns}", "-p", "camera_is_base:=true",
                            "-p", "warmup_camera_info_wait_s:=0.0", *extra)


def _start_active(tmp: Path, ns: str, probe: h.Probe, *extra: str) -> subprocess.Popen:
    log = tmp / f"node{ns.replace('/', '_')}.log"
    proc = h.start_node(_args(ns, *extra), log)
    assert h.wait_for(lambda: probe.lifecycle_state(f"{ns}/ttt3r_node") == "active", 60, proc), h.log_tail(log)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def test_services_and_parameters_answer_while_configuring(tmp_path: Path) -> None:
    from rcl_interfaces.srv import GetParameters

    gate = tmp_path / "release_load"
    log = tmp_path / "slow.log"
    proc = h.start_slow_configure_node(_args("/slow"), log, gate)
    probe = h.Probe("probe_slow")
    try:
        assert h.wait_for(lambda: Path(f"{gate}.loading").exists(), 30, proc), h.log_tail(log)
        # the load is blocked: lifecycle and parameter services must answer now
        assert probe.lifecycle_state("/slow/ttt3r_node", timeout_s=10) == "configuring"
        r = probe.call(GetParameters, "/slow/ttt3r_node/get_parameters", GetParameters.Request(names=["image_size"]),
                       timeout_s=10)
        assert r.values[0].integer_value == 64
        gate.write_text("go\n")
        assert h.wait_for(lambda: probe.lifecycle_state("/slow/ttt3r_node") == "active", 60, proc), h.log_tail(log)
    finally:
        probe.close()
        gate.write_text("go\n")
        rc = h.stop(proc)
    assert rc == 0, h.log_tail(log)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_end_the_node_cleanly(tmp_path: Path, signum: int) -> None:
    ns = f"/sig{int(signum)}"
    probe = h.Probe(f"probe_sig{int(signum)}")
    proc = _start_active(tmp_path, ns, probe)
    try:
        odom = probe.subscribe(f"{ns}/odom", Odometry)
        pub = probe.node.create_publisher(Image, f"{ns}/image", qos_profile_sensor_data)
        assert h.wait_for(lambda: probe.node.count_subscribers(f"{ns}/image") > 0, 10, proc)

        def frame_processed() -> bool:   # best effort: the first images may go out before the match is complete
            pub.publish(h.image_msg(FRAMES[0], time.time(), "camera_optical"))
            return len(odom) > 0
        assert h.wait_for(frame_processed, 30, proc), h.log_tail(proc.log)  # type: ignore[attr-defined]
    except BaseException:
        h.stop(proc)
        raise
    finally:
        probe.close()
    proc.send_signal(signum)
    try:
        rc = proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"node still running 20 s after {signal.Signals(signum).name}")
    text = proc.log.read_text(errors="replace")  # type: ignore[attr-defined]
    assert rc == 0, f"exit code {rc} after {signal.Signals(signum).name}\n{text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]


def test_path_is_published_at_its_period_not_per_frame(tmp_path: Path) -> None:
    ns = "/pathrate"
    probe = h.Probe("probe_pathrate")
    proc = _start_active(tmp_path, ns, probe, "-p", "path_publish_period_s:=1.0")
    try:
        paths = probe.subscribe(f"{ns}/path", PathMsg, LATCHED)
        odom = probe.subscribe(f"{ns}/odom", Odometry)
        pub = probe.node.create_publisher(Image, f"{ns}/image", qos_profile_sensor_data)
        assert h.wait_for(lambda: probe.node.count_subscribers(f"{ns}/image") > 0, 10, proc)
        t0 = time.monotonic()
        stamps = []
        for rgb in FRAMES[:25]:   # ~2.5 s at 10 Hz
            stamps.append(round(time.time(), 6))
            pub.publish(h.image_msg(rgb, stamps[-1], "camera_optical"))
            time.sleep(0.1)
        assert h.wait_for(lambda: any(h.stamp_s(m.header) == stamps[-1] for _, m in list(odom)), 30, proc)
        # the path catches up with the last pose within one period
        assert h.wait_for(lambda: paths and h.stamp_s(paths[-1][1].header) == stamps[-1], 3, proc)
        elapsed_s = time.monotonic() - t0
        odom_stamps = [h.stamp_s(m.header) for _, m in odom]
        assert len(odom) >= 10, "too few frames processed to tell a per-frame path from a timed one"
        # one path per period (plus the first), far fewer than frames
        assert len(paths) <= elapsed_s / 1.0 + 2, (len(paths), len(odom), elapsed_s)
        last = paths[-1][1]
        assert [h.stamp_s(p.header) for p in last.poses] == odom_stamps
    finally:
        probe.close()
        assert h.stop(proc) == 0


def test_process_all_frames_counts_images_lost_before_the_node(tmp_path: Path) -> None:
    ns = "/lossy"
    probe = h.Probe("probe_lossy")
    proc = _start_active(tmp_path, ns, probe, "-p", "process_all_frames:=true", "-p", "queue_size:=1",
                         "-p", "input_qos_depth:=1")
    try:
        status = probe.subscribe(f"{ns}/status", Status, 50)
        pub = probe.node.create_publisher(Image, f"{ns}/image", qos_profile_sensor_data)
        assert h.wait_for(lambda: probe.node.count_subscribers(f"{ns}/image") > 0, 10, proc)

        def first_frame_processed() -> bool:   # also completes discovery before the counted flood
            pub.publish(h.image_msg(FRAMES[0], time.time(), "camera_optical"))
            return bool(status)
        assert h.wait_for(first_frame_processed, 30, proc, period_s=0.3)
        assert h.wait_for(lambda: _idle(status), 30, proc)
        before = status[-1][1]
        frames = [FRAMES[i % len(FRAMES)] for i in range(300)]
        for rgb in frames:    # a flood: the node (and its 1-deep history) cannot keep up
            pub.publish(h.image_msg(rgb, time.time(), "camera_optical"))
        # a last frame sent once the node is idle, so every earlier loss shows as a gap before it
        assert h.wait_for(lambda: _idle(status), 60, proc)
        marker = round(time.time(), 6)
        pub.publish(h.image_msg(frames[0], marker, "camera_optical"))
        assert h.wait_for(lambda: status and h.stamp_s(status[-1][1].header) == marker, 30, proc)
        st = status[-1][1]
        sent = len(frames) + 1
        assert st.frames_lost_before_node > 0, f"a flood into a 1-deep history lost nothing? {st}"
        received = st.frames_received - before.frames_received
        lost = st.frames_lost_before_node - before.frames_lost_before_node
        # every image is accounted for: taken by the callback, or lost before it
        assert received + lost == sent, (received, lost, sent)
        assert st.frames_processed + st.frames_refused + st.frames_rejected == st.frames_received
        log = proc.log.read_text(errors="replace")  # type: ignore[attr-defined]
        assert "lost before reaching the node" in log
    finally:
        probe.close()
        assert h.stop(proc) == 0


def _idle(status: list[tuple[float, Any]]) -> bool:
    """No status for 1 s: the worker has nothing left to do."""
    return bool(status) and time.time() - status[-1][0] > 1.0
