"""ttt3r_node over DDS for the test_node_dds_*.py files: a node process (tiny parity model, CPU) and the probe that
talks to it, the two node set-ups those files share, and the frames they publish.

  live_session(tmp)    keep-latest node at /live, raw images + CameraInfo, camera mounted on base_link through
                       /tf_static (published before it starts); the generator the `live_node` fixture runs
  replay_session(tmp)  in-order (bag replay) node at /replay, JPEG input, camera_is_base, sim time; `replay_node`
Each fixture is module-scoped (conftest.py): one node process per test file, stopped with SIGINT at the end, which
must exit 0 with no traceback in its log.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from nav_msgs.msg import Odometry
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from tf2_msgs.msg import TFMessage

import test_node_harness as h
from ttt3r_ros.engine import geometry
from ttt3r_ros.msg import Status
from ttt3r_ros.ros import conversions as conv

IN_H, IN_W = 96, 128          # published image size; the tiny model runs at 64x48
MODEL_H, MODEL_W = 48, 64
CONF_THRESHOLD = 1.5
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
TF_STATIC_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)
FRAMES, K_IN = h.synthetic_frames(40, IN_H, IN_W)
# The live node's camera mount, as /tf_static gives it: base_link -> camera_link -> camera_optical
BASE_TO_CAMERA_LINK = geometry.make_se3(np.eye(3), [0.3, 0.0, 0.4])
CAMERA_LINK_TO_OPTICAL = geometry.make_se3(geometry.R_BODY_FROM_OPTICAL, [0.0, 0.0, 0.0])
# What the live node may log as failed on purpose: test_node_dds_services.py asks to save into a missing folder.
EXPECTED_LIVE_FAILURE = "save_map failed: SavePathError: folder does not exist"


def camera_mount_message() -> TFMessage:
    """The live node's camera mount as a /tf_static message."""
    return TFMessage(transforms=[
        conv.transform_stamped(BASE_TO_CAMERA_LINK, conv.Header(frame_id="base_link"), "camera_link"),
        conv.transform_stamped(CAMERA_LINK_TO_OPTICAL, conv.Header(frame_id="camera_link"), "camera_optical")])


class Session:
    """A running node process and the probe that talks to it."""

    def __init__(self, proc: subprocess.Popen, probe: h.Probe, log: Path, ns: str, tmp: Path) -> None:
        self.proc, self.probe, self.log, self.ns, self.tmp = proc, probe, log, ns, tmp
        self.node_fqn = f"{ns}/ttt3r_node"
        self.status = probe.subscribe(f"{ns}/status", Status)
        self.odom = probe.subscribe(f"{ns}/odom", Odometry)
        self.image_pub: Any = None   # set by live_session / replay_session
        self.info_pub: Any = None    # live_session only

    def tail(self) -> str:
        return h.log_tail(self.log)

    def wait(self, predicate: Any, timeout_s: float, what: str) -> None:
        assert h.wait_for(predicate, timeout_s, self.proc), f"timed out waiting for {what}\n{self.tail()}"

    def latest_status(self) -> Any:
        return self.status[-1][1] if self.status else None

    def odom_for(self, stamp: float) -> Any:
        for _, m in list(self.odom):
            if h.stamp_s(m.header) == round(stamp, 6):
                return m
        return None


def start_session(tmp: Path, ns: str, *extra: str) -> Session:
    log = tmp / f"node{ns.replace('/', '_')}.log"
    args = h.tiny_node_args(h.tiny_weights(), "-r", f"__ns:={ns}", "-p", f"confidence_threshold:={CONF_THRESHOLD}",
                            "-p", "map_publish_period_s:=0.2", *extra)
    proc = h.start_node(args, log)
    probe = h.Probe(f"probe{ns.replace('/', '_')}")
    s = Session(proc, probe, log, ns, tmp)
    try:
        state = probe.autostart_outcome(s.node_fqn, timeout_s=60)
        assert state == "active", f"node state {state}\n{s.tail()}"
    except BaseException:
        # a failed start must not leave the node or the probe's spin thread behind (a thread of rclpy alive at
        # interpreter exit aborts pytest: "terminate called without an active exception")
        probe.close()
        h.stop(proc)
        raise
    return s


def stop_session(s: Session) -> None:
    """SIGINT (Ctrl-C) an active node that has processed frames: it must exit 0, quietly, with its worker joined."""
    s.probe.close()
    rc = h.stop(s.proc)
    assert rc == 0, f"node exited with {rc} on SIGINT\n{s.tail()}"
    assert "Traceback" not in s.log.read_text(errors="replace"), s.tail()


def live_session(tmp: Path) -> Iterator[Session]:
    """Keep-latest node, raw images, camera mounted on base_link via /tf_static (published before it starts). At the
    end its log must hold no failed frame and no failure but the expected one."""
    static_probe = h.Probe("static_tf_probe")
    tf_static = static_probe.node.create_publisher(TFMessage, "/tf_static", TF_STATIC_QOS)
    tf_static.publish(camera_mount_message())
    s = start_session(tmp, "/live", "-p", f"default_map_path:={tmp / 'default_map.ply'}",
                      "-p", f"save_directory:={tmp}", "-p", "extrinsic_timeout_s:=0.0", "-p", "input_timeout_s:=1.5")
    s.image_pub = s.probe.node.create_publisher(Image, "/live/image", qos_profile_sensor_data)
    s.info_pub = s.probe.node.create_publisher(CameraInfo, "/live/camera_info", qos_profile_sensor_data)
    try:
        s.wait(lambda: s.probe.node.count_subscribers("/live/image") > 0, 10, "image subscription")
        yield s
        text = s.log.read_text(errors="replace")
        assert "frame failed" not in text and "failed:" not in text.replace(EXPECTED_LIVE_FAILURE, ""), s.tail()
        assert s.proc.poll() is None, f"the live node ended during the tests\n{s.tail()}"
    finally:
        stop_session(s)
        static_probe.close()


def replay_session(tmp: Path) -> Iterator[Session]:
    """In-order node (process_all_frames, deep queue), JPEG input, camera_is_base, sim time, no camera_info."""
    s = start_session(tmp, "/replay", "-p", "process_all_frames:=true", "-p", "queue_size:=200",
                      "-p", "image_transport:=compressed", "-p", "camera_is_base:=true", "-p", "input_qos_depth:=100",
                      "-p", "use_camera_info:=false", "-p", "use_sim_time:=true")
    s.image_pub = s.probe.node.create_publisher(CompressedImage, "/replay/image/compressed", qos_profile_sensor_data)
    try:
        s.wait(lambda: s.probe.node.count_subscribers("/replay/image/compressed") > 0, 10, "compressed subscription")
        yield s
    finally:
        stop_session(s)


def send_frames(s: Session, frames: Any, rate_hz: float, with_info: bool = True, frame_id: str = "camera_optical",
                compressed: bool = False) -> list[float]:
    """Publish `frames` at `rate_hz`, stamped with the wall clock (to the microsecond); their stamps."""
    stamps = []
    period = 1.0 / rate_hz
    t_next = time.monotonic()
    for rgb in frames:
        st = round(time.time(), 6)
        if with_info:
            s.info_pub.publish(h.camera_info_msg(K_IN, IN_H, IN_W, st, frame_id))
        msg = h.jpeg_msg(rgb, st, frame_id) if compressed else h.image_msg(rgb, st, frame_id)
        s.image_pub.publish(msg)
        stamps.append(st)
        t_next += period
        time.sleep(max(0.0, t_next - time.monotonic()))   # pacing the publisher, not waiting for the node
    return stamps


def process_one_raw_frame(s: Session, frame_index: int = 0) -> Any:
    """Publish one good raw frame and wait for its odometry and status; that status. Tests that compare counters
    start from here, so they do not depend on which tests ran before them."""
    stamp = round(time.time(), 6)
    s.image_pub.publish(h.image_msg(FRAMES[frame_index], stamp, "camera_optical"))
    s.wait(lambda: s.odom_for(stamp) is not None, 15, "odometry of a good frame")
    s.wait(lambda: h.stamp_s(s.latest_status().header) == stamp, 5, "status of that frame")
    return s.latest_status()


def frames_processed(s: Session) -> int:
    st = s.latest_status()
    return int(st.frames_processed) if st is not None else 0
