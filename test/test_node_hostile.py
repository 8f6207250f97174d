"""ttt3r_node over DDS against the hostile-input audit (issue 13): a stray frame_id, an image that decodes to
20000x20000, absurd CameraInfo, unconfined saves, parameter changes that would break the next configure, and a
second node under the same name. The node runs in its own process (tiny parity model, CPU); this process
publishes and calls services through a probe node. Tests run in file order on one node (the first needs a node
that has not seen a frame yet)."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy (ROS 2) not installed: the node tests need ROS 2 (scripts/setup.sh)")

import test_node_harness as h  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from rcl_interfaces.msg import Parameter as ParameterMsg, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from test_map_hostile import huge_png  # noqa: E402
from ttt3r_ros.msg import Status  # noqa: E402
from ttt3r_ros.ros import conversions as conv  # noqa: E402
from ttt3r_ros.srv import SaveToFile  # noqa: E402

NS = "/hostile"
FQN = f"{NS}/ttt3r_node"
IN_H, IN_W = 96, 128
FRAMES, K_IN = h.synthetic_frames(12, IN_H, IN_W)
RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)


class Node:
    def __init__(self, proc: subprocess.Popen, probe: h.Probe, log: Path, tmp: Path) -> None:
        self.proc, self.probe, self.log, self.tmp = proc, probe, log, tmp
        self.status = probe.subscribe(f"{NS}/status", Status)
        self.odom = probe.subscribe(f"{NS}/odom", Odometry)
        self.depth_info = probe.subscribe(f"{NS}/depth/camera_info", CameraInfo)
        self.image_pub = probe.node.create_publisher(CompressedImage, f"{NS}/image/compressed",
                                                     qos_profile_sensor_data)
        self.info_pub = probe.node.create_publisher(CameraInfo, f"{NS}/camera_info", qos_profile_sensor_data)

    def wait(self, predicate: Any, timeout_s: float, what: str) -> None:
        assert h.wait_for(predicate, timeout_s, self.proc), f"timed out waiting for {what}\n{h.log_tail(self.log)}"

    def odom_for(self, stamp: float) -> Any:
        return next((m for _, m in list(self.odom) if h.stamp_s(m.header) == round(stamp, 6)), None)

    def status_for(self, stamp: float) -> Any:
        return next((m for _, m in list(self.status) if h.stamp_s(m.header) == round(stamp, 6)), None)

    def send(self, index: int, frame_id: str = "camera_optical", data: bytes | None = None) -> float:
        stamp = round(time.time(), 6)
        msg = h.jpeg_msg(FRAMES[index % len(FRAMES)], stamp, frame_id)
        if data is not None:
            msg.format, msg.data = "png", data
        self.image_pub.publish(msg)
        return stamp

    def processed(self, index: int, frame_id: str = "camera_optical", timeout_s: float = 20.0) -> float:
        """Send a good frame and wait for its odometry."""
        stamp = self.send(index, frame_id)
        self.wait(lambda: self.odom_for(stamp) is not None, timeout_s, f"odometry of frame {index} ({frame_id})")
        return stamp

    def rejected_count(self) -> int:
        return int(self.status[-1][1].frames_rejected) if self.status else 0

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def call(self, srv: Any, name: str, request: Any) -> Any:
        return self.probe.call(srv, f"{FQN}/{name}", request)

    def set_parameter(self, name: str, value: Any) -> Any:
        kinds = {bool: (ParameterType.PARAMETER_BOOL, "bool_value"), int: (ParameterType.PARAMETER_INTEGER,
                 "integer_value"), float: (ParameterType.PARAMETER_DOUBLE, "double_value"),
                 str: (ParameterType.PARAMETER_STRING, "string_value")}
        kind, field = kinds[type(value)]
        parameter_value = ParameterValue(type=kind, **{field: value})
        request = SetParameters.Request(parameters=[ParameterMsg(name=name, value=parameter_value)])
        return self.call(SetParameters, "set_parameters", request).results[0]


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("hostile")
    saves = tmp / "saves"
    args = h.tiny_node_args(h.tiny_weights(), "-r", f"__ns:={NS}", "-p", "image_transport:=compressed",
                            "-p", "camera_is_base:=true", "-p", "process_all_frames:=true", "-p", "queue_size:=50",
                            "-p", "input_qos_depth:=50", "-p", f"save_directory:={saves}",
                            "-p", "confidence_threshold:=1.5")
    log = tmp / "node.log"
    proc = h.start_node(args, log)
    probe = h.Probe("hostile_probe")
    n = Node(proc, probe, log, tmp)
    try:
        assert probe.autostart_outcome(FQN, timeout_s=90) == "active", h.log_tail(log)
        n.wait(lambda: probe.node.count_subscribers(f"{NS}/image/compressed") > 0, 10, "image subscription")
        yield n
    finally:
        probe.close()
        rc = h.stop(proc)
        assert rc == 0, f"node exited with {rc}\n{h.log_tail(log)}"


def test_a_stray_frame_id_first_does_not_lock_the_camera_out_after_reset(node: Node) -> None:
    """The first frame comes from another frame_id: it owns the stream (the first frame_id seen), the real camera
    is rejected with a reason naming the service that frees it, and ~/reset_odometry lets the real camera take
    over. (~/reset keeps odometry continuous, and with it the camera and its mount: switching cameras restarts
    odometry, REP 105.)"""
    node.processed(0, frame_id="stray_cam")
    before = node.rejected_count()
    node.send(1, frame_id="camera_optical")
    node.wait(lambda: "differs from the stream's camera 'stray_cam'" in node.log_text(), 15, "the rejection")
    assert "~/reset_odometry lets the next frame's camera take over" in node.log_text()
    response = node.call(Trigger, "reset_odometry", Trigger.Request())
    assert response.success, response.message
    stamp = node.processed(2, frame_id="camera_optical")
    node.wait(lambda: node.status_for(stamp) is not None, 5, "status of the real camera's frame")
    assert node.status_for(stamp).frames_rejected == before + 1
    node.processed(3, frame_id="camera_optical")


def test_an_image_that_decodes_to_20000x20000_is_refused_from_its_header(node: Node) -> None:
    node.processed(4)
    rejected, peak_before_mb = node.rejected_count(), _peak_rss_mb(node.proc.pid)
    node.send(5, data=huge_png(20000, 20000))
    after = node.processed(6, timeout_s=15)   # odometry goes on with the next good frame, at once
    node.wait(lambda: node.status_for(after) is not None, 5, "status of the next good frame")
    assert node.status_for(after).frames_rejected == rejected + 1
    assert "too large (20000x20000 = 400.0 MP > max_image_pixels = 33.2 MP)" in node.log_text()
    assert _peak_rss_mb(node.proc.pid) - peak_before_mb < 300   # decoding it would take 1.2 GB


def test_absurd_camera_info_is_refused_and_never_reaches_the_outputs(node: Node) -> None:
    depth_info = node.probe.subscribe(f"{NS}/depth/camera_info", CameraInfo, RELIABLE)
    node.wait(lambda: node.probe.node.count_publishers(f"{NS}/depth/camera_info") > 0, 5, "depth/camera_info")
    k = np.array([[1e30, 0.0, IN_W / 2], [0.0, 1.7e308, IN_H / 2], [0.0, 0.0, 1.0]])
    # camera_info is best effort: publish it until the node has logged its refusal (the event), then send a frame
    node.wait(lambda: node.info_pub.publish(h.camera_info_msg(k, IN_H, IN_W, time.time(), "camera_optical")) or
              "ignoring camera_info: focal length fx=1e+30" in node.log_text(), 15, "the camera_info refusal")
    stamp = node.processed(7)
    node.wait(lambda: any(h.stamp_s(m.header) == stamp for _, m in list(depth_info)), 10, "depth/camera_info")
    info = next(m for _, m in list(depth_info) if h.stamp_s(m.header) == stamp)
    assert np.all(np.isfinite(info.k)) and 0 < info.k[0] < 1e4
    assert "ignoring camera_info: focal length fx=1e+30" in node.log_text() and "absurd" in node.log_text()


def test_saves_stay_inside_save_directory_and_never_follow_links(node: Node) -> None:
    saves = node.tmp / "saves"
    victim = node.tmp / "victim.ply"
    victim.write_text("precious")
    refused = {"../escape.ply": "'..' is not allowed", "~/.bashrc.ply": "'~' is not expanded",
               str(node.tmp / "outside.ply"): "outside save_directory", "notes.txt": "must end in .ply"}
    for path, reason in refused.items():
        response = node.call(SaveToFile, "save_map", SaveToFile.Request(path=path))
        assert not response.success and reason in response.message, (path, response.message)
    response = node.call(SaveToFile, "save_map", SaveToFile.Request(path=""))   # default: inside save_directory
    assert response.success, response.message
    assert Path(response.path) == saves / "ttt3r_map.ply" and (saves / "ttt3r_map.ply").is_file()
    (saves / "link.ply").symlink_to(victim)
    os.mkfifo(saves / "fifo.tum")
    for service, path, reason in (("save_map", "link.ply", "symbolic link"),
                                  ("save_trajectory", "fifo.tum", "a FIFO")):
        response = node.call(SaveToFile, service, SaveToFile.Request(path=path))
        assert not response.success and reason in response.message, response.message
    assert victim.read_text() == "precious" and (saves / "link.ply").is_symlink()
    response = node.call(SaveToFile, "save_trajectory", SaveToFile.Request(path="run1.tum"))
    assert response.success and (saves / "run1.tum").is_file(), response.message
    assert not list(node.tmp.glob("escape*")) and not (node.tmp / "outside.ply").exists()


def test_parameter_changes_that_would_break_configure_are_refused_when_set(node: Node) -> None:
    result = node.set_parameter("tracking_lost_fraction", 0.5)   # above tracking_degraded_fraction (0.3)
    assert not result.successful and "must be <= tracking_degraded_fraction" in result.reason
    assert node.set_parameter("tracking_lost_fraction", 0.1).successful
    result = node.set_parameter("default_map_path", "")
    assert not result.successful and "empty" in result.reason
    # configure-time parameters are checked while the node is unconfigured (where they can be set)
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    for transition in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_CLEANUP):
        response = node.call(ChangeState, "change_state",
                             ChangeState.Request(transition=Transition(id=transition)))
        assert response.success
    result = node.set_parameter("image_size", 16)
    assert not result.successful and "32" in result.reason, result.reason
    result = node.set_parameter("update_rule", "nope")
    assert not result.successful and "update_rule='nope' is not one of" in result.reason
    result = node.set_parameter("model_config", "no_such_preset")
    assert not result.successful and "unknown model config 'no_such_preset'" in result.reason
    result = node.set_parameter("model_config", str(node.tmp / "missing.json"))
    assert not result.successful and "not found" in result.reason
    for transition in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
        response = node.call(ChangeState, "change_state",
                             ChangeState.Request(transition=Transition(id=transition)))
        assert response.success, h.log_tail(node.log)


def test_a_second_node_with_the_same_name_exits_non_zero(node: Node) -> None:
    from ttt3r_ros.ros.name_guard import GUARD_DONE_MESSAGE

    # the first node has finished its own start-up check (two started within one window both exit: documented)
    node.wait(lambda: GUARD_DONE_MESSAGE in node.log_text(), 30, "the first node's name check")
    log = node.tmp / "second.log"
    second = h.start_node(h.tiny_node_args(h.tiny_weights(), "-r", f"__ns:={NS}"), log)
    try:
        second.wait(timeout=60)
    finally:
        if second.poll() is None:
            second.kill()
            second.wait(timeout=5)
    assert second.returncode == 1, h.log_tail(log)
    assert f"another node named {FQN} is already running" in log.read_text(errors="replace")
    assert node.proc.poll() is None
    node.processed(8)   # the first node goes on
