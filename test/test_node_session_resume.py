"""~/save_session and resume_session over DDS (tiny model, CPU, fp32): a node that saves its session, stops, and
is restarted from the snapshot continues exactly like a node that never stopped.

Node A processes frames 0..N-1, saves its session and is stopped; node B starts with resume_session and gets
frames N..M-1; node C, never stopped, gets 0..M-1. Every frame is processed in order (process_all_frames, reliable
input) with fixed stamps and no camera_info (each frame's focal is its own estimate), so the node path is
deterministic and B's odometry for N..M-1 must equal C's bit for bit (pose, covariance, twist). B's map starts as
A's (the same PLY, byte for byte) and keeps every voxel of it. A snapshot made at another image size fails
configure with the difference named; the node stays alive and unconfigured, and configures once fixed.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy (ROS 2) not installed: the node tests need ROS 2 (scripts/setup.sh)")

import test_node_harness as h  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from rcl_interfaces.msg import Parameter as ParameterMsg, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image, PointCloud2  # noqa: E402

from ttt3r_ros.engine import exports  # noqa: E402
from ttt3r_ros.msg import Status  # noqa: E402
from ttt3r_ros.ros import conversions as conv  # noqa: E402
from ttt3r_ros.srv import SaveToFile  # noqa: E402

IN_H, IN_W = 96, 128
N_SAVED, M_TOTAL = 6, 12               # A: frames 0..5; B: 6..11; C: 0..11
FRAMES, _ = h.synthetic_frames(M_TOTAL, IN_H, IN_W)
STAMPS = [1000.0 + 0.1 * i for i in range(M_TOTAL)]
FRAME_ID = "camera_optical"
RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
VOXEL_SIZE_M = 0.05


class Node:
    """A node process in namespace `ns` and the probe talking to it."""

    def __init__(self, tmp: Path, ns: str, *extra: str) -> None:
        self.ns, self.fqn, self.log = ns, f"{ns}/ttt3r_node", tmp / f"node_{ns.strip('/')}.log"
        args = h.tiny_node_args(h.tiny_weights(), "-r", f"__ns:={ns}", "-p", "camera_is_base:=true",
                                "-p", "use_camera_info:=false", "-p", "process_all_frames:=true",
                                "-p", "queue_size:=100", "-p", "input_qos:=reliable", "-p", "input_qos_depth:=100",
                                "-p", f"save_directory:={tmp}", "-p", "confidence_threshold:=1.5",
                                "-p", f"voxel_size_m:={VOXEL_SIZE_M}", "-p", "map_publish_period_s:=0.2", *extra)
        self.proc = h.start_node(args, self.log)
        self.probe = h.Probe(f"probe_{ns.strip('/')}")
        self.odom = self.probe.subscribe(f"{ns}/odom", Odometry, RELIABLE)
        self.status = self.probe.subscribe(f"{ns}/status", Status, RELIABLE)
        self.map_points = self.probe.subscribe(f"{ns}/map_points", PointCloud2, LATCHED)
        self.diagnostics = self.probe.subscribe("/diagnostics", DiagnosticArray, RELIABLE)
        self.image_pub = self.probe.node.create_publisher(Image, f"{ns}/image", RELIABLE)

    def tail(self) -> str:
        return h.log_tail(self.log)

    def wait(self, predicate: Any, timeout_s: float, what: str) -> None:
        assert h.wait_for(predicate, timeout_s, self.proc), f"{self.ns}: timed out waiting for {what}\n{self.tail()}"

    def wait_active(self) -> None:
        state = self.probe.autostart_outcome(self.fqn, timeout_s=120)
        assert state == "active", f"{self.ns}: state {state}\n{self.tail()}"
        self.wait(lambda: self.probe.node.count_subscribers(f"{self.ns}/image") > 0, 10, "image subscription")

    def send(self, indices: range) -> None:
        for i in indices:
            self.image_pub.publish(h.image_msg(FRAMES[i], STAMPS[i], FRAME_ID))

    def odom_by_stamp(self) -> dict[float, Any]:
        return {h.stamp_s(m.header): m for _, m in list(self.odom)}

    def status_by_stamp(self) -> dict[float, Any]:
        return {h.stamp_s(m.header): m for _, m in list(self.status)}

    def wait_odometry(self, indices: range) -> None:
        want = {round(STAMPS[i], 6) for i in indices}
        self.wait(lambda: want <= set(self.odom_by_stamp()), 120, f"odometry of frames {indices}")

    def call(self, srv: Any, name: str, request: Any) -> Any:
        return self.probe.call(srv, f"{self.fqn}/{name}", request, timeout_s=30.0)

    def save(self, service: str, path: str) -> Any:
        response = self.call(SaveToFile, service, SaveToFile.Request(path=path))
        assert response.success, f"{service}: {response.message}\n{self.tail()}"
        return response

    def set_parameter(self, name: str, value: Any) -> Any:
        kind, field = {int: (ParameterType.PARAMETER_INTEGER, "integer_value"),
                       str: (ParameterType.PARAMETER_STRING, "string_value")}[type(value)]
        request = SetParameters.Request(parameters=[ParameterMsg(name=name, value=ParameterValue(
            type=kind, **{field: value}))])
        return self.call(SetParameters, "set_parameters", request).results[0]

    def stop(self) -> None:
        self.probe.close()
        rc = h.stop(self.proc)
        assert rc == 0, f"{self.ns}: exited with {rc}\n{self.tail()}"
        assert "Traceback" not in self.log.read_text(errors="replace"), self.tail()


def _start_all(tmp: Path, specs: list[tuple[str, tuple[str, ...]]]) -> list[Node]:
    """Start several nodes at once (their model loads overlap) and wait until each is active."""
    nodes = [Node(tmp, ns, *extra) for ns, extra in specs]
    errors: list[BaseException] = []

    def wait(node: Node) -> None:
        try:
            node.wait_active()
        except BaseException as exc:   # re-raised in the test thread below
            errors.append(exc)
    threads = [threading.Thread(target=wait, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for n in nodes:
            n.stop()
        raise errors[0]
    return nodes


def _voxel_keys(points: np.ndarray) -> set[tuple[int, int, int]]:
    return set(map(tuple, np.floor(points.astype(np.float64) / VOXEL_SIZE_M).astype(np.int64).tolist()))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A (saved, stopped), C (whole sequence), then B (resumed from A's snapshot, rest of the sequence)."""
    tmp = tmp_path_factory.mktemp("session_resume")
    node_a, node_c = _start_all(tmp, [("/resume_a", ()), ("/resume_c", ())])
    try:
        node_a.send(range(N_SAVED))
        node_c.send(range(M_TOTAL))
        node_a.wait_odometry(range(N_SAVED))
        saved = node_a.save("save_session", "a_session.safetensors")
        node_a.save("save_map", "a_map.ply")   # after the save: the map thread has taken in every frame
        odom_a = node_a.odom_by_stamp()
        node_c.wait_odometry(range(M_TOTAL))
        node_c.save("save_map", "c_map.ply")
    finally:
        node_a.stop()
    node_b = None
    try:
        (node_b,) = _start_all(tmp, [("/resume_b", ("-p", "resume_session:=a_session.safetensors"))])
        # before any new frame: B holds A's map
        node_b.save("save_map", "b_map_at_resume.ply")
        node_b.wait(lambda: len(node_b.map_points) > 0, 10, "map_points of the resumed map")
        map_points_at_resume = node_b.map_points[-1][1]
        node_b.send(range(N_SAVED, M_TOTAL))
        node_b.wait_odometry(range(N_SAVED, M_TOTAL))
        node_b.save("save_map", "b_map.ply")
        node_b.save("save_trajectory", "b_trajectory.tum")
        yield {"tmp": tmp, "saved": saved, "odom_a": odom_a, "b": node_b, "c": node_c,
               "map_points_at_resume": map_points_at_resume}
    finally:
        if node_b is not None:
            node_b.stop()
        node_c.stop()


def test_save_session_writes_the_confined_snapshot(runs: dict[str, Any]) -> None:
    from ttt3r_ros.session.snapshot import read_snapshot

    saved, tmp = runs["saved"], runs["tmp"]
    assert saved.path == str(tmp / "a_session.safetensors")
    snapshot = read_snapshot(saved.path)
    assert snapshot.frames_processed == N_SAVED
    assert snapshot.extra["front_end"] == "ttt3r_node" and snapshot.extra["camera_frame"] == FRAME_ID
    assert snapshot.extra["frame_index"] == N_SAVED
    assert snapshot.input_position["last_stamp_s"] == pytest.approx(STAMPS[N_SAVED - 1], abs=1e-9)
    assert len(snapshot.extra_tensors["odometry.trajectory.timestamps"]) == N_SAVED
    assert snapshot.provenance.image_size == 64 and snapshot.provenance.precision == "fp32"


def test_resumed_odometry_equals_a_node_that_never_stopped(runs: dict[str, Any]) -> None:
    odom_b, odom_c = runs["b"].odom_by_stamp(), runs["c"].odom_by_stamp()
    odom_a = runs["odom_a"]
    for i in range(N_SAVED):   # A and C saw the same first frames: the same odometry
        s = round(STAMPS[i], 6)
        assert odom_a[s].pose == odom_c[s].pose, i
    for i in range(N_SAVED, M_TOTAL):
        s = round(STAMPS[i], 6)
        b, c = odom_b[s], odom_c[s]
        assert b.header.frame_id == c.header.frame_id and b.child_frame_id == c.child_frame_id
        # bit for bit: fp32 on the CPU, the same frames in the same order from the same state
        assert b.pose.pose == c.pose.pose, (i, b.pose.pose, c.pose.pose)
        assert list(b.pose.covariance) == list(c.pose.covariance), i
        assert b.twist.twist == c.twist.twist, i
        assert list(b.twist.covariance) == list(c.twist.covariance), i
    # the first resumed frame moved on from A's last pose (not a restart at identity)
    first = odom_b[round(STAMPS[N_SAVED], 6)].pose.pose.position
    assert abs(first.x) + abs(first.y) + abs(first.z) > 0


def test_status_and_diagnostics_say_fresh_or_resumed(runs: dict[str, Any]) -> None:
    node_b, node_c = runs["b"], runs["c"]
    status_b, status_c = node_b.status_by_stamp(), node_c.status_by_stamp()
    for i in range(N_SAVED, M_TOTAL):
        s = round(STAMPS[i], 6)
        assert status_b[s].resumed and not status_c[s].resumed
        assert status_b[s].frame_index == status_c[s].frame_index == i + 1   # the session's frame count goes on
    snapshot_path = str(runs["tmp"] / "a_session.safetensors")

    def session_value(node: Node) -> str | None:
        for _, array in reversed(list(node.diagnostics)):
            for status in array.status:
                if status.name.startswith(node.fqn):
                    values = {kv.key: kv.value for kv in status.values}
                    if "session" in values:
                        return values["session"]
        return None
    node_b.wait(lambda: session_value(node_b) is not None, 5, "diagnostics of B")
    node_c.wait(lambda: session_value(node_c) is not None, 5, "diagnostics of C")
    assert session_value(node_c) == "fresh"
    assert session_value(node_b).startswith(f"resumed from {snapshot_path} (after frame {N_SAVED}")


def test_the_map_comes_back_and_grows(runs: dict[str, Any]) -> None:
    tmp = runs["tmp"]
    # byte for byte: the resumed map is the saved one
    assert (tmp / "b_map_at_resume.ply").read_bytes() == (tmp / "a_map.ply").read_bytes()
    a_points, _, _ = exports.read_ply(tmp / "a_map.ply")
    assert len(a_points) > 0
    cloud = conv.point_cloud_to_numpy(runs["map_points_at_resume"]).reshape(-1)   # published once active
    assert np.array_equal(np.stack([cloud["x"], cloud["y"], cloud["z"]], axis=1), a_points)
    b_points, _, _ = exports.read_ply(tmp / "b_map.ply")
    # every voxel of A's map is still there (a voxel's point is the running mean of the points in it, so it stays
    # in its voxel), and the new frames added some
    assert _voxel_keys(a_points) <= _voxel_keys(b_points)
    assert len(b_points) > len(a_points)
    stamps, _ = exports.read_tum(tmp / "b_trajectory.tum")
    assert np.allclose(stamps, STAMPS)   # the trajectory holds A's frames and B's


def test_a_snapshot_of_another_image_size_fails_configure_and_the_node_stays_alive(
        runs: dict[str, Any]) -> None:
    tmp = runs["tmp"]
    node = Node(tmp, "/resume_refused", "-p", "image_size:=48", "-p", "resume_session:=a_session.safetensors")
    try:
        assert node.probe.autostart_outcome(node.fqn, timeout_s=120) == "unconfigured", node.tail()
        assert node.proc.poll() is None, node.tail()
        log = node.log.read_text(errors="replace")
        assert "image_size: snapshot 64, this session 48" in log, node.tail()
        # fixed (the parameter may be set while unconfigured): configure now resumes
        assert node.set_parameter("image_size", 64).successful
        answer = node.call(ChangeState, "change_state",
                           ChangeState.Request(transition=Transition(id=Transition.TRANSITION_CONFIGURE)))
        assert answer.success, node.tail()
        assert "resumed from" in node.log.read_text(errors="replace")
    finally:
        node.stop()


def test_save_session_refuses_paths_outside_the_rules(runs: dict[str, Any]) -> None:
    node_b = runs["b"]
    for path, reason in (("x.ply", "must end in .safetensors"), ("../x.safetensors", "'..' is not allowed"),
                         ("/etc/x.safetensors", "outside save_directory")):
        response = node_b.call(SaveToFile, "save_session", SaveToFile.Request(path=path))
        assert not response.success and reason in response.message, (path, response.message)
