"""Image intake off the executor (issue 11 item 2, ros/intake.py), the signals that end the node (SIGINT during
configure and while active: exit 0), and the bounded live trajectory (issue 13 item 10, engine/trajectory.py)."""
from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ttt3r_ros.engine.trajectory import Trajectory

pytest.importorskip("rclpy", reason="rclpy (ROS 2) not installed: the node tests need ROS 2 (scripts/setup.sh)")

import rclpy  # noqa: E402
import test_node_harness as h  # noqa: E402
from rclpy.duration import Duration  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from std_msgs.msg import UInt32  # noqa: E402

from ttt3r_ros.ros.frame_queue import FrameQueue  # noqa: E402
from ttt3r_ros.ros.input_loss import InputLossCounter  # noqa: E402
from ttt3r_ros.ros.intake import ImageIntake, image_history_depth  # noqa: E402


# ------------------------------------------------------------------------------------------ trajectory bound
def _pose(i: int) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, 3] = (i, -i, 0.5 * i)
    return pose


def test_bounded_trajectory_keeps_the_newest_poses_in_order() -> None:
    bound, total = 300, 5_000   # many compactions (slack 256 past the bound)
    trajectory = Trajectory(max_poses=bound)
    for i in range(total):
        trajectory.append(float(i), _pose(i))
        assert len(trajectory) == min(i + 1, bound)
    assert trajectory.dropped == total - bound
    kept = np.arange(total - bound, total, dtype=np.float64)
    np.testing.assert_array_equal(trajectory.timestamps(), kept)
    np.testing.assert_array_equal(trajectory.poses()[:, 0, 3], kept)
    assert trajectory[0][0] == total - bound and trajectory[-1][0] == total - 1
    np.testing.assert_array_equal(trajectory.export_arrays()["poses"][:, 1, 3], -kept)
    # memory stays within the bound's slack, whatever the length of the run
    assert trajectory._t.shape[0] <= bound + 256


def test_trajectory_bound_can_shrink_and_clear_restarts_the_count() -> None:
    trajectory = Trajectory()
    for i in range(50):
        trajectory.append(float(i), _pose(i))
    assert trajectory.dropped == 0 and len(trajectory) == 50   # unbounded by default
    trajectory.set_max_poses(10)
    assert len(trajectory) == 10 and trajectory.dropped == 40
    np.testing.assert_array_equal(trajectory.timestamps(), np.arange(40, 50, dtype=np.float64))
    trajectory.clear()
    assert len(trajectory) == 0 and trajectory.dropped == 0 and trajectory.max_poses == 10
    with pytest.raises(ValueError):
        trajectory.set_max_poses(0)


# ------------------------------------------------------------------------------------------ intake pieces
def test_skip_to_advances_without_counting_a_gap() -> None:
    loss = InputLossCounter()
    info = {"publisher_gid": {"data": b"cam"}}
    loss.note({**info, "publication_sequence_number": 1})
    assert loss.skip_to({**info, "publication_sequence_number": 7}) == 5
    assert loss.note({**info, "publication_sequence_number": 7}) == 0
    assert loss.note({**info, "publication_sequence_number": 9}) == 1
    assert loss.sequence_gaps == 1


def test_wait_for_demand_follows_a_waiting_worker() -> None:
    queue: FrameQueue[int] = FrameQueue(process_all=False)
    assert not queue.wait_for_demand(timeout_s=0.0)   # nobody asks
    got: list[int | None] = []
    worker = threading.Thread(target=lambda: got.append(queue.get(timeout_s=10.0)))
    worker.start()
    assert queue.wait_for_demand(timeout_s=10.0)
    queue.count_dropped_upstream(3)
    queue.put(42)
    worker.join(timeout=10.0)
    assert got == [42]
    counts = queue.snapshot()
    assert (counts["received"], counts["dropped"], counts["taken"]) == (4, 3, 1)
    assert image_history_depth(False, 5) == 1 and image_history_depth(True, 5) == 5


# ------------------------------------------------------------------------------------------ intake over DDS
@pytest.fixture()
def ros_nodes():
    context = rclpy.Context()
    rclpy.init(context=context)
    sub_node = rclpy.create_node("intake_under_test", context=context)
    pub_node = rclpy.create_node("intake_camera", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(sub_node)   # the executor must never dispatch the intake's subscription
    errors: list[BaseException] = []

    def spin() -> None:
        try:
            while context.ok():
                executor.spin_once(timeout_sec=0.05)
        except BaseException as exc:   # an intake subscription dispatched: _never_called raises
            if context.ok():
                errors.append(exc)
    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    try:
        yield sub_node, pub_node, errors
    finally:
        context.try_shutdown()
        spinner.join(timeout=5.0)
        executor.shutdown()
        sub_node.destroy_node()
        pub_node.destroy_node()


def _start_intake(node, queue: FrameQueue, loss: InputLossCounter, depth: int,
                  received: list[bytes]) -> ImageIntake:
    reliable = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)

    def on_image(raw: bytes, info: dict) -> None:
        loss.note(info)
        queue.put(raw)
        received.append(raw)
    return ImageIntake(node, UInt32, "/intake_test/image", reliable, on_image, queue, loss)


def test_keep_latest_intake_takes_only_the_newest_when_the_worker_asks(ros_nodes) -> None:
    from rclpy.serialization import deserialize_message

    sub_node, pub_node, errors = ros_nodes
    queue: FrameQueue[bytes] = FrameQueue(process_all=False)
    loss = InputLossCounter()
    received: list[bytes] = []
    intake = _start_intake(sub_node, queue, loss, image_history_depth(False, 5), received)
    pub = pub_node.create_publisher(UInt32, "/intake_test/image", QoSProfile(depth=50,
                                                                             reliability=ReliabilityPolicy.RELIABLE))
    try:
        assert h.wait_for(lambda: pub.get_subscription_count() > 0, 10)
        pub.publish(UInt32(data=0))
        first = queue.get(timeout_s=10.0)   # the worker asks: the intake takes it
        assert first is not None and deserialize_message(first, UInt32).data == 0
        # the worker is busy now: nothing is taken while it does not ask, DDS keeps only the newest
        for i in range(1, 21):
            pub.publish(UInt32(data=i))
        assert pub.wait_for_all_acked(Duration(seconds=10))
        time.sleep(0.2)   # let the intake act if it (wrongly) listened while nobody asked
        assert intake.taken == 1 and len(received) == 1
        newest = queue.get(timeout_s=10.0)
        assert newest is not None and deserialize_message(newest, UInt32).data == 20
        counts = queue.snapshot()
        # the 19 replaced in DDS are keep-latest drops, not losses
        assert (counts["received"], counts["dropped"], counts["taken"]) == (21, 19, 2)
        assert loss.sequence_gaps == 0
        assert not errors
    finally:
        intake.stop()


def test_process_all_intake_takes_every_image_in_order(ros_nodes) -> None:
    from rclpy.serialization import deserialize_message

    sub_node, pub_node, errors = ros_nodes
    queue: FrameQueue[bytes] = FrameQueue(process_all=True, max_size=5)
    loss = InputLossCounter()
    received: list[bytes] = []
    intake = _start_intake(sub_node, queue, loss, image_history_depth(True, 100), received)
    pub = pub_node.create_publisher(UInt32, "/intake_test/image", QoSProfile(depth=100,
                                                                             reliability=ReliabilityPolicy.RELIABLE))
    try:
        assert h.wait_for(lambda: pub.get_subscription_count() > 0, 10)
        for i in range(40):   # more than the queue holds: the intake waits on it (back-pressure), DDS keeps the rest
            pub.publish(UInt32(data=i))
        values = []
        while len(values) < 40:
            raw = queue.get(timeout_s=10.0)
            assert raw is not None, f"only {values} arrived"
            values.append(deserialize_message(raw, UInt32).data)
        assert values == list(range(40))
        assert loss.sequence_gaps == 0 and queue.snapshot()["refused"] == 0
        assert not errors
    finally:
        intake.stop()


# ------------------------------------------------------------------------------------------ signals
def test_intake_without_a_queue_pushes_every_image_to_its_callback_in_order(ros_nodes) -> None:
    """The multi-camera node's mode: no FrameQueue (the rig keeps each camera's frames); every image is handed to
    the callback from the intake thread, never from the executor (the fixture's executor raises if it dispatches)."""
    from rclpy.serialization import deserialize_message

    sub_node, pub_node, errors = ros_nodes
    loss = InputLossCounter()
    received: list[int] = []
    threads: set[str] = set()

    def on_image(raw: bytes, info: dict) -> None:
        loss.note(info)
        threads.add(threading.current_thread().name)
        received.append(deserialize_message(raw, UInt32).data)
    reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    intake = ImageIntake(sub_node, UInt32, "/intake_test/image", reliable, on_image, None, loss,
                         thread_name="intake_cam0")
    pub = pub_node.create_publisher(UInt32, "/intake_test/image", reliable)
    try:
        assert h.wait_for(lambda: pub.get_subscription_count() > 0, 10)
        for i in range(30):
            pub.publish(UInt32(data=i))
        assert h.wait_for(lambda: len(received) == 30, 10), received
        assert received == list(range(30)) and intake.taken == 30
        assert threads == {"intake_cam0"} and loss.sequence_gaps == 0
        assert not errors
    finally:
        intake.stop()
    assert not intake._thread.is_alive()


def test_sigint_during_configure_ends_the_node_with_status_0(tmp_path: Path) -> None:
    gate = tmp_path / "release_load"
    log = tmp_path / "slow.log"
    proc = h.start_slow_configure_node(h.tiny_node_args(h.tiny_weights(), "-r", "__ns:=/sigcfg", "-p",
                                                        "camera_is_base:=true", "-p", "warmup_camera_info_wait_s:=0.0"),
                                       log, gate)
    try:
        assert h.wait_for(lambda: Path(f"{gate}.loading").exists(), 60, proc), h.log_tail(log)
        proc.send_signal(signal.SIGINT)
        assert h.wait_for(lambda: "stopping: shutting down" in log.read_text(errors="replace"), 30, proc), \
            h.log_tail(log)
        gate.write_text("go\n")   # the load ends (as a real one would) while the node is shutting down
        rc = proc.wait(timeout=60)
    except BaseException:
        gate.write_text("go\n")
        h.stop(proc)
        raise
    text = log.read_text(errors="replace")
    assert rc == 0, f"exit code {rc}\n{text[-3000:]}"
    assert "terminate called" not in text and "Traceback" not in text, text[-3000:]


def test_sigint_while_active_ends_the_node_with_status_0(tmp_path: Path) -> None:
    log = tmp_path / "node.log"
    probe = h.Probe("probe_sigint")
    proc = h.start_node(h.tiny_node_args(h.tiny_weights(), "-r", "__ns:=/sigint", "-p", "camera_is_base:=true",
                                         "-p", "warmup_camera_info_wait_s:=0.0"), log)
    try:
        assert h.wait_for(lambda: probe.lifecycle_state("/sigint/ttt3r_node") == "active", 60, proc), \
            h.log_tail(log)
    finally:
        probe.close()
    proc.send_signal(signal.SIGINT)
    try:
        rc = proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("node still running 20 s after SIGINT")
    text = log.read_text(errors="replace")
    assert rc == 0, f"exit code {rc}\n{text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]
