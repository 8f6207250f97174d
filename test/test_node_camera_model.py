"""ttt3r_node over DDS with a distorted camera (plumb_bob CameraInfo): it undistorts before the model, publishes
depth/camera_info as the network's pinhole camera with D = 0, reports the focal health figure against the
undistorted calibration, and refuses an unknown distortion model with a log line while it keeps processing.
"""
from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy (ROS 2) not installed: the node tests need ROS 2 (scripts/setup.sh)")

import cv2  # noqa: E402
import test_node_harness as h  # noqa: E402
import torch  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402

from ttt3r_ros.engine import geometry  # noqa: E402
from ttt3r_ros.engine.camera_model import CameraModel  # noqa: E402
from ttt3r_ros.engine.preprocess import plan_resize_crop, preprocess_pil  # noqa: E402
from ttt3r_ros.msg import Status  # noqa: E402
from ttt3r_ros.ros import conversions as conv  # noqa: E402
from ttt3r_ros.session.message_codec import unpack_rgb  # noqa: E402

IN_H, IN_W, MODEL_SIZE = 96, 128, 64
FRAMES, K_IN = h.synthetic_frames(12, IN_H, IN_W)
D_IN = [-0.2, 0.04, 0.001, -0.001, 0.0]
NS = "/distorted"


class Node:
    def __init__(self, proc: subprocess.Popen, probe: h.Probe, log: Path) -> None:
        self.proc, self.probe, self.log = proc, probe, log

    def wait(self, predicate: Any, timeout_s: float, what: str) -> None:
        assert h.wait_for(predicate, timeout_s, self.proc), f"timed out waiting for {what}\n{h.log_tail(self.log)}"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("distorted")
    log = tmp / "node.log"
    # confidence_threshold 1 (its minimum; confidence is 1 + exp(.)): every point of the cloud is published, so the
    # test can fit the focal of the whole cloud itself
    proc = h.start_node(h.tiny_node_args(h.tiny_weights(), "-r", f"__ns:={NS}", "-p", "camera_is_base:=true",
                                         "-p", "confidence_threshold:=1.0"), log)
    probe = h.Probe("probe_distorted")
    n = Node(proc, probe, log)
    stopped_cleanly = False
    try:
        # autostart: the state service may answer while configure still runs (the model loads)
        states: list[str] = []
        n.wait(lambda: states.append(probe.lifecycle_state(f"{NS}/ttt3r_node", timeout_s=60)) or states[-1] == "active",
               90, "the active state")
        n.image_pub = probe.node.create_publisher(Image, f"{NS}/image", qos_profile_sensor_data)  # type: ignore
        n.info_pub = probe.node.create_publisher(CameraInfo, f"{NS}/camera_info", qos_profile_sensor_data)  # type: ignore
        n.wait(lambda: probe.node.count_subscribers(f"{NS}/image") > 0, 10, "image subscription")
        yield n
        stopped_cleanly = True
    finally:
        # always: a probe left spinning keeps an rclpy thread alive, and pytest aborts at exit
        probe.close()
        exit_code = h.stop(proc)
    if stopped_cleanly:
        assert exit_code == 0, h.log_tail(log)


def _camera_info(stamp_s: float, d: list[float], model: str) -> CameraInfo:
    msg = h.camera_info_msg(K_IN, IN_H, IN_W, stamp_s, "camera_optical")
    msg.d, msg.distortion_model = list(d), model
    return msg


def _send(n: Node, frames: Any, d: list[float], model: str) -> list[float]:
    stamps = []
    for rgb in frames:
        st = round(time.time(), 6)
        n.info_pub.publish(_camera_info(st, d, model))  # type: ignore[attr-defined]
        n.image_pub.publish(h.image_msg(rgb, st, "camera_optical"))  # type: ignore[attr-defined]
        stamps.append(st)
        time.sleep(0.15)
    return stamps


def _by_stamp(box: list[tuple[float, Any]], stamp: float) -> Any:
    return next((m for _, m in list(box) if h.stamp_s(m.header) == stamp), None)


def test_distorted_camera_is_undistorted_and_depth_camera_info_is_the_networks(node: Node) -> None:
    p = node.probe
    boxes = {"points": p.subscribe(f"{NS}/points", PointCloud2, 20),
             "depth": p.subscribe(f"{NS}/depth/image", Image, 20),
             "info": p.subscribe(f"{NS}/depth/camera_info", CameraInfo, 20),
             "status": p.subscribe(f"{NS}/status", Status, 20),
             "diagnostics": p.subscribe("/diagnostics", DiagnosticArray, 20)}
    node.wait(lambda: all(p.node.count_subscribers(f"{NS}/{t}") > 0 for t in ("points", "depth/camera_info")), 10,
              "output subscriptions matched")
    stamps = _send(node, FRAMES[:6], D_IN, "plumb_bob")
    # a frame whose cloud, depth, camera_info and status all arrived (the first frames may precede camera_info)
    complete = lambda: [s for s in stamps[2:] if all(_by_stamp(boxes[k], s) is not None  # noqa: E731
                                                    for k in ("points", "depth", "info", "status"))]
    node.wait(lambda: complete(), 30, "a frame with all its outputs")
    stamp = complete()[-1]
    frame = FRAMES[stamps.index(stamp)]
    cloud = conv.point_cloud_to_numpy(_by_stamp(boxes["points"], stamp))
    info = _by_stamp(boxes["info"], stamp)
    status = _by_stamp(boxes["status"], stamp)
    depth = conv.image_to_numpy(_by_stamp(boxes["depth"], stamp))

    # the model saw OpenCV's undistortion of the frame: the cloud's colours are that image at model size
    camera = CameraModel.create(K_IN, D_IN, "plumb_bob", IN_W, IN_H)
    undistorted = cv2.undistort(frame, K_IN, np.array(D_IN), None, camera.new_camera_matrix)
    expected = preprocess_pil(undistorted, MODEL_SIZE).colour[0].numpy()
    assert np.array_equal(unpack_rgb(cloud["rgb"]), expected)
    assert not np.array_equal(preprocess_pil(frame, MODEL_SIZE).colour[0].numpy(), expected)

    # depth/camera_info: a pinhole with D = 0 (the input was undistorted), K = the network's own camera: the
    # Weiszfeld focal of the published cloud with the reference principal point (W//2, H//2)
    assert info.distortion_model == "plumb_bob" and list(info.d) == [0.0] * 5
    assert (info.height, info.width) == depth.shape == cloud.shape
    k = np.array(info.k).reshape(3, 3)
    xyz = np.stack([cloud["x"], cloud["y"], cloud["z"]], -1).astype(np.float32)
    assert np.all(np.isfinite(xyz)) and np.allclose(depth, cloud["z"])
    f_cloud = float(geometry.estimate_focal_weiszfeld(torch.from_numpy(xyz), (info.width // 2, info.height // 2)))
    assert k[0, 0] == k[1, 1] and math.isclose(k[0, 0], f_cloud, rel_tol=1e-4), (k, f_cloud)
    assert (k[0, 2], k[1, 2]) == (info.width // 2, info.height // 2)

    # health: |f_network / f_calibrated - 1| against the UNDISTORTED calibration at model resolution
    k_cal = geometry.intrinsics_input_to_model(camera.new_camera_matrix, plan_resize_crop(IN_H, IN_W, MODEL_SIZE))
    f_cal = 0.5 * (k_cal[0, 0] + k_cal[1, 1])
    assert math.isclose(status.focal_disagreement, abs(k[0, 0] / f_cal - 1.0), rel_tol=1e-4), status
    node.wait(lambda: any("focal_disagreement" in {kv.key for kv in d.status[0].values} and
                          math.isfinite(float({kv.key: kv.value for kv in d.status[0].values}["focal_disagreement"]))
                          for _, d in list(boxes["diagnostics"])), 5, "focal_disagreement in /diagnostics")


def test_unknown_distortion_model_is_refused_with_a_log_and_frames_go_on(node: Node) -> None:
    status = node.probe.subscribe(f"{NS}/status", Status, 20)
    stamps = _send(node, FRAMES[6:10], [0.1, 0.01, 0.0, 0.0], "kannala_brandt")
    node.wait(lambda: _by_stamp(status, stamps[-1]) is not None, 30, "status of the last frame")
    last = _by_stamp(status, stamps[-1])
    assert math.isnan(last.focal_disagreement)   # no usable calibration: nothing to compare with
    text = node.log.read_text(errors="replace")
    assert "ignoring camera_info: unknown distortion model 'kannala_brandt'" in text
    assert "Traceback" not in text
