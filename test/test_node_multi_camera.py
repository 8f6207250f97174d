"""ttt3r_node with `cameras` (issue 14) over DDS: one node process (tiny parity model, CPU), this process publishes
each camera's images and the rig's mounts on /tf_static, and checks the per-camera outputs (frames, stamps), that
odometry is the primary's, that the map holds every camera's points where its mount and the primary's odometry put
them, and that a camera going silent, sending bad images or missing its mount leaves the others running.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy (ROS 2) not installed: the node tests need ROS 2 (scripts/setup.sh)")

import test_node_harness as h  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

from ttt3r_ros.engine import geometry  # noqa: E402
from ttt3r_ros.msg import Status  # noqa: E402
from ttt3r_ros.ros import conversions as conv  # noqa: E402

IN_H, IN_W = 96, 128
MODEL_H, MODEL_W = 48, 64
CONF_THRESHOLD = 1.5
VOXEL_M = 0.05
INPUT_TIMEOUT_S = 1.5
# camera c's images are stamped this much before the primary's of the same cycle: every output's stamp then names
# its camera, and the map places the frame at (practically) the primary's pose of that cycle
STAMP_OFFSET_S = 1e-5
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
FRAMES, K_IN = h.synthetic_frames(30, IN_H, IN_W)
OUTPUTS = {"points": (PointCloud2, "points"), "depth": (Image, "depth/image"),
           "depth_info": (CameraInfo, "depth/camera_info"), "confidence": (Image, "confidence/image"),
           "rgb": (Image, "rgb/image")}


def _yawed_mount(yaw_rad: float, lever_m: tuple[float, float, float]) -> np.ndarray:
    """T_base_optical of a camera looking along the base's x axis turned by yaw (about z, REP 103) at lever_m."""
    c, s = np.cos(yaw_rad), np.sin(yaw_rad)
    r_yaw = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return geometry.make_se3(r_yaw @ geometry.R_BODY_FROM_OPTICAL, list(lever_m))


# front, left, back: each sees another side, so each camera's points land in their own region of odom
MOUNTS = {"front": _yawed_mount(0.0, (0.3, 0.0, 0.4)), "left": _yawed_mount(np.pi / 2, (0.0, 0.2, 0.4)),
          "back": _yawed_mount(np.pi, (-0.3, 0.0, 0.4))}


class Rig:
    """A running multi-camera node, the probe, and per camera its publishers and the outputs it received."""

    def __init__(self, proc: subprocess.Popen, probe: h.Probe, log: Path, ns: str, cameras: list[str],
                 frames: dict[str, str]) -> None:
        self.proc, self.probe, self.log, self.ns, self.cameras, self.frames = proc, probe, log, ns, cameras, frames
        self.node_fqn = f"{ns}/ttt3r_node"
        self.odom = probe.subscribe(f"{ns}/odom", Odometry)
        self.status = probe.subscribe(f"{ns}/status", Status)
        self.map = probe.subscribe(f"{ns}/map_points", PointCloud2, LATCHED)
        self.tf = probe.subscribe("/tf", TFMessage, QoSProfile(depth=100))
        self.diagnostics = probe.subscribe("/diagnostics", DiagnosticArray, 50)
        self.out = {c: {k: probe.subscribe(f"{ns}/{c}/{topic}", t, 10) for k, (t, topic) in OUTPUTS.items()}
                    for c in cameras}
        self.image_pub = {c: probe.node.create_publisher(Image, f"{ns}/{c}/image", qos_profile_sensor_data)
                          for c in cameras}
        self.info_pub = {c: probe.node.create_publisher(CameraInfo, f"{ns}/{c}/camera_info", qos_profile_sensor_data)
                         for c in cameras}
        self.sent: dict[str, list[float]] = {c: [] for c in cameras}

    def tail(self) -> str:
        return h.log_tail(self.log, 60)

    def wait(self, predicate: Any, timeout_s: float, what: str) -> None:
        assert h.wait_for(predicate, timeout_s, self.proc), f"timed out waiting for {what}\n{self.tail()}"

    def send(self, cameras: list[str], cycles: int, rate_hz: float = 4.0, first_frame: int = 0) -> None:
        """`cycles` cycles of one image per camera (camera i shows frame (t + 7 i) of the sequence: other views)."""
        t_next = time.monotonic()
        for t in range(cycles):
            base = round(time.time(), 4)
            for c in cameras:
                i = self.cameras.index(c)
                stamp = round(base - i * STAMP_OFFSET_S, 6)
                rgb = FRAMES[(first_frame + t + 7 * i) % len(FRAMES)]
                self.info_pub[c].publish(h.camera_info_msg(K_IN, IN_H, IN_W, stamp, self.frames[c]))
                self.image_pub[c].publish(h.image_msg(rgb, stamp, self.frames[c]))
                self.sent[c].append(stamp)
            t_next += 1.0 / rate_hz
            time.sleep(max(0.0, t_next - time.monotonic()))

    def camera_status(self, camera: str) -> dict[str, str] | None:
        """The latest diagnostics status '<node>: camera <camera>' as {key: value} plus 'message' and 'level'."""
        name = f"{self.node_fqn}: camera {camera}"
        for _, arr in reversed(list(self.diagnostics)):
            for st in arr.status:
                if st.name == name:
                    return {**{kv.key: kv.value for kv in st.values}, "message": st.message, "level": st.level}
        return None

    def outputs_since(self, camera: str, key: str, after_wall_s: float) -> list[Any]:
        return [m for t, m in list(self.out[camera][key]) if t > after_wall_s]


def _publish_mounts(probe: h.Probe, frames: dict[str, str], cameras: list[str]) -> None:
    pub = probe.node.create_publisher(TFMessage, "/tf_static", LATCHED)
    pub.publish(TFMessage(transforms=[conv.transform_stamped(MOUNTS[c], conv.Header(frame_id="base_link"), frames[c])
                                      for c in cameras]))


def _start(tmp: Path, ns: str, cameras: list[str], frames: dict[str, str], mounted: list[str],
           *extra: str) -> Iterator[Rig]:
    static_probe = h.Probe(f"static_tf{ns.replace('/', '_')}")
    _publish_mounts(static_probe, frames, mounted)
    log = tmp / f"node{ns.replace('/', '_')}.log"
    args = h.tiny_node_args(h.tiny_weights(), "-r", f"__ns:={ns}", "-p", f"confidence_threshold:={CONF_THRESHOLD}",
                            "-p", "map_publish_period_s:=0.2", "-p", f"voxel_size_m:={VOXEL_M}",
                            "-p", f"input_timeout_s:={INPUT_TIMEOUT_S}", "-p", "extrinsic_timeout_s:=0.0",
                            # never "lost": odom then reports the model's own pose, the one the map is placed with
                            "-p", "tracking_lost_fraction:=0.0", "-p", "tracking_degraded_fraction:=0.0",
                            "-p", "cameras:=[" + ",".join(cameras) + "]", *extra)
    proc = h.start_node(args, log)
    probe = h.Probe(f"probe{ns.replace('/', '_')}")
    rig = Rig(proc, probe, log, ns, cameras, frames)
    try:   # from here on the node and the probes are always stopped, also when the start-up checks fail
        state = probe.autostart_outcome(rig.node_fqn, timeout_s=60)
        assert state == "active", f"node state {state}\n{rig.tail()}"
        rig.wait(lambda: all(probe.node.count_subscribers(f"{ns}/{c}/image") > 0 for c in cameras), 10,
                 "every camera's image subscription")
        rig.wait(lambda: all(probe.node.count_publishers(f"{ns}/{c}/points") > 0 for c in cameras), 10,
                 "every camera's outputs")
        yield rig
    finally:
        probe.close()
        static_probe.close()
        rc = h.stop(proc)
        assert rc == 0, f"node exited with {rc} on SIGINT\n{rig.tail()}"
        assert "Traceback" not in log.read_text(errors="replace"), rig.tail()


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """front (primary), left, back; optical frames from the images' frame_ids; every mount on /tf_static."""
    cameras = ["front", "left", "back"]
    frames = {c: f"{c}_optical" for c in cameras}
    yield from _start(tmp_path_factory.mktemp("rig3"), "/rig3", cameras, frames, cameras)


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """front (primary) and left, frames given by camera_frames (other names than `three`'s, whose mounts are on
    /tf_static too); left's mount is NOT in TF."""
    cameras = ["front", "left"]
    frames = {"front": "rig2_front_optical", "left": "rig2_left_optical"}
    yield from _start(tmp_path_factory.mktemp("rig2"), "/rig2", cameras, frames, ["front"],
                      "-p", "camera_frames:=[rig2_front_optical,rig2_left_optical]")


def _matrix_from_pose(pose: Any) -> np.ndarray:
    q, t = pose.orientation, pose.position
    return geometry.make_se3(conv.matrix_from_quaternion_xyzw(q.x, q.y, q.z, q.w), [t.x, t.y, t.z])


def _xyz(cloud: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """[N,3] float64 of a decoded cloud's points where `keep`."""
    return np.stack([cloud[k][keep].reshape(-1) for k in ("x", "y", "z")], axis=1).astype(np.float64)


def _voxels(points: np.ndarray) -> set[tuple[int, int, int]]:
    return set(map(tuple, np.floor(points / VOXEL_M).astype(np.int64).tolist()))


def _check_outputs_odometry_and_map(rig: Rig, since_wall_s: float = 0.0) -> None:
    """After rig.send(...): every camera's outputs (received after since_wall_s) in its frame with its stamps,
    odometry/TF/status from the primary only, map_points holding every camera's points where they belong, and one
    diagnostics status per camera."""
    last = {c: rig.sent[c][-1] for c in rig.cameras}
    primary = rig.cameras[0]
    # (earlier frames' outputs may have gone out before the probe's subscriptions matched; the last one may not)
    rig.wait(lambda: all(any(h.stamp_s(m.header) == last[c] for _, m in list(rig.out[c][key]))
                         for c in rig.cameras for key in OUTPUTS), 30, "every camera's outputs of its last frame")
    rig.wait(lambda: any(h.stamp_s(m.header) == last[primary] for _, m in list(rig.odom)), 10, "odom of last frame")

    # per camera: every output in that camera's optical frame, stamped with one of that camera's images
    for c in rig.cameras:
        sent = set(rig.sent[c])
        for key in OUTPUTS:
            msgs = rig.outputs_since(c, key, since_wall_s)
            assert all(m.header.frame_id == rig.frames[c] for m in msgs), (c, key)
            assert all(h.stamp_s(m.header) in sent for m in msgs), (c, key)
        cloud = msgs[-1] if key == "points" else rig.outputs_since(c, "points", since_wall_s)[-1]
        assert (cloud.height, cloud.width) == (MODEL_H, MODEL_W)

    # odometry, /tf and status: the primary's frames only
    primary_sent = set(rig.sent[primary])
    odoms = [m for _, m in list(rig.odom)]
    assert len(odoms) >= 3 and all(h.stamp_s(m.header) in primary_sent for m in odoms)
    assert all(m.header.frame_id == "odom" and m.child_frame_id == "base_link" for m in odoms)
    tfs = [t for _, m in list(rig.tf) for t in m.transforms if t.child_frame_id == "base_link"]
    assert tfs and all(h.stamp_s(t.header) in primary_sent for t in tfs)
    statuses = [m for _, m in list(rig.status)]
    assert statuses and all(m.header.frame_id == rig.frames[primary] and h.stamp_s(m.header) in primary_sent
                            for m in statuses)

    # the map: each camera's confident points, placed by its mount and the primary's pose of the same cycle, are in
    # map_points (voxel by voxel), and not where another camera's mount would put them; each camera contributes
    # voxels no other camera's view has
    odom_at = {h.stamp_s(m.header): _matrix_from_pose(m.pose.pose) for m in odoms}
    per_camera: dict[str, set] = {}
    misplaced_of: dict[str, set] = {}   # the same points through another camera's mount: must not match the map
    for i, c in enumerate(rig.cameras):
        expected: set = set()
        misplaced: set = set()
        wrong_mount = MOUNTS[rig.cameras[(i + 1) % len(rig.cameras)]]
        for m in rig.outputs_since(c, "points", since_wall_s):
            primary_stamp = round(h.stamp_s(m.header) + i * STAMP_OFFSET_S, 6)
            if primary_stamp not in odom_at or not any(primary_stamp - 1.0 < t < primary_stamp for t in odom_at):
                continue   # the primary's frame was not processed, or no primary pose just before to interpolate from
            cloud = conv.point_cloud_to_numpy(m)
            keep = cloud["confidence"] > CONF_THRESHOLD
            expected |= _voxels(geometry.transform_points(odom_at[primary_stamp] @ MOUNTS[c], _xyz(cloud, keep)))
            misplaced |= _voxels(geometry.transform_points(odom_at[primary_stamp] @ wrong_mount, _xyz(cloud, keep)))
        assert len(expected) > 20, f"camera {c}: too few confident points to check ({len(expected)} voxels)"
        per_camera[c], misplaced_of[c] = expected, misplaced

    def coverage() -> dict[str, float]:
        map_cloud = conv.point_cloud_to_numpy(rig.map[-1][1])
        map_voxels = _voxels(_xyz(map_cloud, np.ones(map_cloud.shape, dtype=bool)))
        return {c: len(per_camera[c] & map_voxels) / len(per_camera[c]) for c in rig.cameras}
    # the map thread places a cycle's points after its outputs go out, and a camera's last frame may be stepped a
    # cycle after the primary's: wait for a map_points message that holds them (the map only grows here)
    h.wait_for(lambda: rig.map and h.stamp_s(rig.map[-1][1].header) >= last[primary]
               and min(coverage().values()) > 0.95, 10, rig.proc)
    rig.wait(lambda: rig.map and h.stamp_s(rig.map[-1][1].header) >= last[primary], 10, "map of the last cycle")
    map_msg = rig.map[-1][1]
    assert map_msg.header.frame_id == "odom"
    map_cloud = conv.point_cloud_to_numpy(map_msg)
    map_voxels = _voxels(_xyz(map_cloud, np.ones(map_cloud.shape, dtype=bool)))
    for c in rig.cameras:
        covered = len(per_camera[c] & map_voxels) / len(per_camera[c])
        assert covered > 0.95, f"camera {c}: only {covered:.1%} of its placed points are in map_points"
        misplaced = misplaced_of[c]
        assert len(misplaced & map_voxels) < 0.5 * len(misplaced), f"camera {c}: the check cannot tell the mounts"
    for c in rig.cameras:
        others = set().union(*(v for k, v in per_camera.items() if k != c))
        assert len(per_camera[c] - others) > 0.5 * len(per_camera[c]), f"camera {c}'s view overlaps the others'"

    # one diagnostics status per camera with its counters
    for c in rig.cameras:
        rig.wait(lambda: (rig.camera_status(c) or {}).get("frames_processed", "0") != "0", 5, f"{c} diagnostics")
        st = rig.camera_status(c)
        assert int(st["frames_received"]) >= int(st["frames_processed"]) >= 3, st
        assert st["optical_frame"] == rig.frames[c] and st["has_extrinsic"] == "True"
        assert int(st["map_frames_placed"]) >= 1, st


def test_three_cameras_outputs_odometry_and_one_map(three: Rig) -> None:
    three.send(three.cameras, cycles=8)
    _check_outputs_odometry_and_map(three)


def test_three_cameras_silent_and_bad_camera_leave_the_others_running(three: Rig) -> None:
    rig = three
    # The previous cycle's last left frame may still be in the node (the diagnostics lag up to 1 s behind): take
    # left's count once two successive diagnostics messages agree on it.
    marks: list[tuple[int, int]] = []

    def left_settled() -> bool:
        n = len(rig.diagnostics)
        st = rig.camera_status("left")
        if st is not None and (not marks or marks[-1][0] != n):
            marks.append((n, int(st["frames_processed"])))
        return len(marks) >= 2 and marks[-1][1] == marks[-2][1]
    rig.wait(left_settled, 15, "left's processed count to settle")
    # left goes silent: front and back go on; left's diagnostics say stale, the log names it
    t0 = time.time()
    left_processed = marks[-1][1]
    rig.send(["front", "back"], cycles=int(INPUT_TIMEOUT_S * 4) + 6)
    rig.wait(lambda: rig.outputs_since("back", "depth_info", t0) and rig.outputs_since("front", "depth_info", t0),
             15, "front and back outputs while left is silent")
    rig.wait(lambda: (rig.camera_status("left") or {}).get("message", "").startswith("stale"), 10,
             "left reported stale")
    assert rig.outputs_since("left", "depth_info", t0) == []
    assert int(rig.camera_status("left")["frames_processed"]) == left_processed
    assert int(rig.camera_status("back")["frames_processed"]) > 0
    rig.wait(lambda: "camera left" in rig.log.read_text(errors="replace") and "stale" in
             rig.log.read_text(errors="replace"), 12, "a log line naming the silent camera")

    # left sends bad images (truncated data) while front and back send good ones: left's frames are rejected and
    # counted for left alone, the others keep processing
    rejected_before = int(rig.camera_status("left")["frames_rejected"])
    t1 = time.time()
    for k in range(6):
        rig.send(["front", "back"], cycles=1, rate_hz=20.0, first_frame=k)
        stamp = round(time.time(), 6)
        bad = h.image_msg(FRAMES[0], stamp, rig.frames["left"])
        bad.data = bytes(bad.data)[:100]
        rig.image_pub["left"].publish(bad)
        time.sleep(0.25)
    rig.wait(lambda: int(rig.camera_status("left")["frames_rejected"]) > rejected_before, 10, "left's rejections")
    rig.wait(lambda: len(rig.outputs_since("back", "depth_info", t1)) >= 2, 10,
             "back's outputs during left's bad images")
    assert rig.outputs_since("left", "depth_info", t1) == []
    assert int(rig.camera_status("front")["frames_rejected"]) == 0
    assert int(rig.camera_status("back")["frames_rejected"]) == 0
    rig.wait(lambda: "camera left: bad frame" in rig.log.read_text(errors="replace"), 5, "left's rejection logged")

    # left recovers: its outputs come back
    t2 = time.time()
    rig.send(rig.cameras, cycles=4)
    rig.wait(lambda: rig.outputs_since("left", "depth_info", t2), 15, "left's outputs after it recovers")
    assert rig.proc.poll() is None


def test_two_cameras_missing_mount_skips_that_camera_only(two: Rig) -> None:
    rig = two
    rig.send(rig.cameras, cycles=6)
    rig.wait(lambda: any(h.stamp_s(m.header) == rig.sent["front"][-1] for _, m in list(rig.odom)), 30,
             "front's odometry")
    rig.wait(lambda: (rig.camera_status("left") or {}).get("frames_skipped", "0") != "0", 5,
             "left's skipped frames in diagnostics")
    for key in OUTPUTS:
        assert rig.out["left"][key] == [], key
        msgs = [m for _, m in list(rig.out["front"][key])]
        assert msgs and all(m.header.frame_id == "rig2_front_optical" and h.stamp_s(m.header) in set(rig.sent["front"])
                            for m in msgs), key
    st = rig.camera_status("left")
    assert st["has_extrinsic"] == "False" and "extrinsic" in st["message"] and int(st["frames_processed"]) == 0
    log = rig.log.read_text(errors="replace")
    assert "camera left: no transform base_link -> rig2_left_optical" in log, rig.tail()
    # the mount appears: left starts (a rigid rig may be completed late)
    late = h.Probe("late_mount")
    try:
        _publish_mounts(late, rig.frames, ["front", "left"])
        t0 = time.time()
        rig.wait(lambda: (rig.send(rig.cameras, cycles=1) or True) and rig.outputs_since("left", "points", t0), 20,
                 "left's outputs once its mount is in TF")
    finally:
        late.close()
    # from then on the two cameras are one rig: outputs, odometry and map as with every mount known
    t1 = time.time()
    rig.send(rig.cameras, cycles=6)
    _check_outputs_odometry_and_map(rig, since_wall_s=t1)
