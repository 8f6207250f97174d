"""ttt3r_node over DDS: the node in its own process (tiny parity model, CPU), this test process publishes
rendered camera images (+ CameraInfo, + static TF) and checks every output, the frame policies, the services,
bad input and the lifecycle. One node process is shared by the tests of each fixture.
"""
from __future__ import annotations

import math
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

# rclpy is third-party (absent from a ROS-free `pip install -e .`); the package's own interfaces and tf2_msgs are
# built by scripts/setup.sh or colcon and imported plainly below, so a broken rosidl build fails instead of skipping.
pytest.importorskip("rclpy", reason="rclpy (ROS 2) not installed: the node tests need ROS 2 (scripts/setup.sh)")

import test_node_harness as h  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from nav_msgs.msg import Odometry, Path as PathMsg  # noqa: E402
from rclpy.qos import (DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data)  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

from ttt3r_ros.msg import Status  # noqa: E402
from ttt3r_ros.ros import conversions as conv  # noqa: E402
from ttt3r_ros.ros.static_tf import StaticTransformBuffer  # noqa: E402
from ttt3r_ros.srv import SaveToFile  # noqa: E402

IN_H, IN_W = 96, 128          # published image size; the tiny model runs at 64x48
MODEL_H, MODEL_W = 48, 64
CONF_THRESHOLD = 1.5
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
TF_STATIC_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)
FRAMES, K_IN = h.synthetic_frames(40, IN_H, IN_W)


class Session:
    """A running node process and the probe that talks to it."""

    def __init__(self, proc: subprocess.Popen, probe: h.Probe, log: Path, ns: str) -> None:
        self.proc, self.probe, self.log, self.ns = proc, probe, log, ns
        self.node_fqn = f"{ns}/ttt3r_node"
        self.status = probe.subscribe(f"{ns}/status", Status)
        self.odom = probe.subscribe(f"{ns}/odom", Odometry)

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


def _start(tmp: Path, ns: str, *extra: str) -> Session:
    log = tmp / f"node{ns.replace('/', '_')}.log"
    args = h.tiny_node_args(h.tiny_weights(), "-r", f"__ns:={ns}", "-p", f"confidence_threshold:={CONF_THRESHOLD}",
                            "-p", "map_publish_period_s:=0.2", *extra)
    proc = h.start_node(args, log)
    probe = h.Probe(f"probe{ns.replace('/', '_')}")
    s = Session(proc, probe, log, ns)
    state = probe.autostart_outcome(s.node_fqn, timeout_s=60)
    assert state == "active", f"node state {state}\n{s.tail()}"
    return s


def _stop(s: Session) -> None:
    """SIGINT (Ctrl-C) an active node that has processed frames: it must exit 0, quietly, with its worker joined."""
    s.probe.close()
    rc = h.stop(s.proc)
    assert rc == 0, f"node exited with {rc} on SIGINT\n{s.tail()}"
    assert "Traceback" not in s.log.read_text(errors="replace"), s.tail()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    """Keep-latest node, raw images, camera mounted on base_link via /tf_static (published before it starts)."""
    tmp = tmp_path_factory.mktemp("live")
    static_probe = h.Probe("static_tf_probe")
    tf_static = static_probe.node.create_publisher(TFMessage, "/tf_static", TF_STATIC_QOS)
    from ttt3r_ros.engine import geometry

    t_base_link = geometry.make_se3(np.eye(3), [0.3, 0.0, 0.4])
    t_link_optical = geometry.make_se3(geometry.R_BODY_FROM_OPTICAL, [0.0, 0.0, 0.0])
    tf_static.publish(TFMessage(transforms=[
        conv.transform_stamped(t_base_link, conv.Header(frame_id="base_link"), "camera_link"),
        conv.transform_stamped(t_link_optical, conv.Header(frame_id="camera_link"), "camera_optical")]))
    s = _start(tmp, "/live", "-p", f"default_map_path:={tmp / 'default_map.ply'}", "-p", f"save_directory:={tmp}",
               "-p", "extrinsic_timeout_s:=0.0",
               "-p", "input_timeout_s:=1.5")
    s.tmp = tmp  # type: ignore[attr-defined]
    s.image_pub = s.probe.node.create_publisher(Image, "/live/image", qos_profile_sensor_data)  # type: ignore
    s.info_pub = s.probe.node.create_publisher(CameraInfo, "/live/camera_info", qos_profile_sensor_data)  # type: ignore
    s.wait(lambda: s.probe.node.count_subscribers("/live/image") > 0, 10, "image subscription")
    yield s
    _stop(s)
    static_probe.close()


def _send(s: Session, frames: Any, rate_hz: float, with_info: bool = True, frame_id: str = "camera_optical",
          compressed: bool = False) -> list[float]:
    stamps = []
    period = 1.0 / rate_hz
    t_next = time.monotonic()
    for rgb in frames:
        st = round(time.time(), 6)
        if with_info:
            s.info_pub.publish(h.camera_info_msg(K_IN, IN_H, IN_W, st, frame_id))  # type: ignore[attr-defined]
        msg = h.jpeg_msg(rgb, st, frame_id) if compressed else h.image_msg(rgb, st, frame_id)
        s.image_pub.publish(msg)  # type: ignore[attr-defined]
        stamps.append(st)
        t_next += period
        time.sleep(max(0.0, t_next - time.monotonic()))
    return stamps


def _processed(s: Session) -> int:
    st = s.latest_status()
    return int(st.frames_processed) if st is not None else 0


def test_every_output_with_input_stamps_and_frames(live: Session) -> None:
    p = live.probe
    ns = live.ns
    boxes = {
        "path": p.subscribe(f"{ns}/path", PathMsg, LATCHED),
        "points": p.subscribe(f"{ns}/points", PointCloud2, 5),
        "map_points": p.subscribe(f"{ns}/map_points", PointCloud2, LATCHED),
        "depth": p.subscribe(f"{ns}/depth/image", Image, 5),
        "depth_info": p.subscribe(f"{ns}/depth/camera_info", CameraInfo, 5),
        "confidence": p.subscribe(f"{ns}/confidence/image", Image, 5),
        "tf": p.subscribe("/tf", TFMessage, QoSProfile(depth=100)),
        "diagnostics": p.subscribe("/diagnostics", DiagnosticArray, 10),
    }
    live.wait(lambda: p.node.count_publishers(f"{ns}/points") > 0 and
              all(p.node.count_subscribers(t) > 0 for t in (f"{ns}/points", f"{ns}/depth/image")), 10,
              "output subscriptions matched")
    # before any image: diagnostics say so (WARN), naming the topic to check
    live.wait(lambda: any("no image on /live/image" in d.status[0].message and "none since activation" in
                          d.status[0].message and d.status[0].level == d.status[0].WARN
                          for _, d in list(boxes["diagnostics"])), 8, "stale-input diagnostics")
    stamps = _send(live, FRAMES[:15], rate_hz=10)
    live.wait(lambda: any(h.stamp_s(m.header) == stamps[-1] for _, m in list(live.odom)), 30, "odom of last frame")
    live.wait(lambda: all(len(b) > 0 for b in boxes.values()), 10, f"all outputs ({[k for k, b in boxes.items()]})")
    sent = set(stamps)

    # Frame ids, the first pose at identity and exact stamps are test_node_conventions.py's (in-process, known
    # motion); here: every output that crossed DDS carries the stamp of an image that was sent.
    odoms = [m for _, m in live.odom]
    assert len(odoms) >= 5
    for m in odoms:
        assert h.stamp_s(m.header) in sent
        cov = np.array(m.pose.covariance).reshape(6, 6)
        assert np.all(np.diag(cov) > 0), cov

    for name in ("points", "depth", "depth_info", "confidence"):
        for _, m in boxes[name]:
            assert h.stamp_s(m.header) in sent, name
            assert m.header.frame_id == "camera_optical", name
    for _, m in boxes["path"]:
        assert m.header.frame_id == "odom" and h.stamp_s(m.header) in sent
    # status: stamped and framed like the image
    for _, m in live.status:
        assert h.stamp_s(m.header) in sent and m.header.frame_id == "camera_optical"
    st = live.latest_status()
    assert st.frames_processed >= 5 and st.frame_index >= 5 and st.inference_latency_ms > 0
    assert st.map_points > 0
    live.wait(lambda: "no image" not in boxes["diagnostics"][-1][1].status[0].message, 3, "fresh diagnostics")
    diag = boxes["diagnostics"][-1][1]
    keys = {kv.key: kv.value for kv in diag.status[0].values}
    assert "ttt3r_node" in diag.status[0].name and int(keys["frames_processed"]) >= 5

    # TF: odom -> base_link on /tf with the image stamps, and it chains to the camera through /tf_static
    tf_msgs = [t for _, m in boxes["tf"] for t in m.transforms if t.child_frame_id == "base_link"]
    assert tf_msgs and all(t.header.frame_id == "odom" and h.stamp_s(t.header) in sent for t in tf_msgs)
    # REP 105: the node owns odom -> base_link only; map -> odom is never published by default
    assert not [t for _, m in boxes["tf"] for t in m.transforms if t.child_frame_id == "odom"]
    buf = StaticTransformBuffer()
    from ttt3r_ros.engine import geometry
    buf.add_message(TFMessage(transforms=[
        conv.transform_stamped(geometry.make_se3(np.eye(3), [0.3, 0.0, 0.4]), conv.Header(frame_id="base_link"),
                               "camera_link"),
        conv.transform_stamped(geometry.make_se3(geometry.R_BODY_FROM_OPTICAL, [0, 0, 0]),
                               conv.Header(frame_id="camera_link"), "camera_optical")]))
    buf.add_message(TFMessage(transforms=[tf_msgs[-1]]))
    t_odom_cam = buf.lookup("odom", "camera_optical")
    assert t_odom_cam is not None and np.all(np.isfinite(t_odom_cam))
    last_odom = live.odom_for(h.stamp_s(tf_msgs[-1].header))
    assert np.allclose(conv.matrix_from_transform(tf_msgs[-1].transform)[:3, 3],
                       [last_odom.pose.pose.position.x, last_odom.pose.pose.position.y,
                        last_odom.pose.pose.position.z])

    # points: organised at model resolution, NaN exactly where confidence < the node's threshold (the field layout
    # itself is test_node_conversions.py's)
    cloud_msg = boxes["points"][-1][1]
    assert (cloud_msg.height, cloud_msg.width, cloud_msg.is_dense) == (MODEL_H, MODEL_W, False)
    cloud = conv.point_cloud_to_numpy(cloud_msg)
    low = cloud["confidence"] < CONF_THRESHOLD
    assert np.all(np.isnan(cloud["z"][low])) and np.all(np.isfinite(cloud["z"][~low]))
    assert (~low).sum() > 0, "no confident point at all: the test threshold does not fit the tiny model"

    # depth (REP 118: 32FC1, NaN = invalid) agrees with the cloud and with its camera_info
    stamp = h.stamp_s(cloud_msg.header)
    depth_msg = next(m for _, m in boxes["depth"] if h.stamp_s(m.header) == stamp)
    info = next(m for _, m in boxes["depth_info"] if h.stamp_s(m.header) == stamp)
    depth = conv.image_to_numpy(depth_msg)
    assert depth_msg.encoding == "32FC1" and depth.shape == (MODEL_H, MODEL_W)
    assert (info.height, info.width) == depth.shape
    assert np.array_equal(np.isnan(depth), low) and np.allclose(depth[~low], cloud["z"][~low])
    k = np.array(info.k).reshape(3, 3)
    # the network's own pinhole (its focal estimate, reference principal point), not the calibration: the camera
    # the depth back-projects with into the cloud (test_node_camera_model.py fits it from the cloud); D = 0
    assert k[0, 0] == k[1, 1] > 0 and (k[0, 2], k[1, 2]) == (MODEL_W // 2, MODEL_H // 2)
    assert info.distortion_model == "plumb_bob" and list(info.d) == [0.0] * 5
    conf_img = conv.image_to_numpy(next(m for _, m in boxes["confidence"] if h.stamp_s(m.header) == stamp))
    assert np.allclose(conf_img, cloud["confidence"])

    # map_points: latched, in odom, unorganised
    mp = boxes["map_points"][-1][1]
    assert mp.header.frame_id == "odom" and mp.height == 1 and mp.width > 0

    # offered QoS (REP 2003 / tf2_ros): maps and path latched, /tf reliable + volatile, image input best effort
    def offered(topic: str) -> Any:
        (info,) = [i for i in p.node.get_publishers_info_by_topic(topic) if i.node_name == "ttt3r_node"]
        return info.qos_profile

    for topic in (f"{ns}/map_points", f"{ns}/path"):
        q = offered(topic)
        assert (q.durability, q.reliability) == (DurabilityPolicy.TRANSIENT_LOCAL, ReliabilityPolicy.RELIABLE), topic
    q = offered("/tf")
    assert (q.durability, q.reliability) == (DurabilityPolicy.VOLATILE, ReliabilityPolicy.RELIABLE)  # graph: no depth
    (sub,) = [i for i in p.node.get_subscriptions_info_by_topic(f"{ns}/image") if i.node_name == "ttt3r_node"]
    assert sub.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT   # SensorDataQoS default


def test_latency_image_publish_to_odometry(live: Session, capsys: pytest.CaptureFixture) -> None:
    n0 = len(live.odom)
    stamps = _send(live, FRAMES[15:35], rate_hz=10)
    live.wait(lambda: live.odom_for(stamps[-1]) is not None, 20, "odom of the last latency frame")
    latencies_ms = []
    for t_rx, m in list(live.odom)[n0:]:
        st = h.stamp_s(m.header)
        if st in stamps:
            latencies_ms.append((t_rx - st) * 1e3)
    assert len(latencies_ms) >= 15, f"only {len(latencies_ms)} of 20 frames processed at 10 Hz"
    st = live.latest_status()
    with capsys.disabled():
        print(f"\n[ttt3r_node latency] tiny model, CPU, {IN_W}x{IN_H} rgb8 -> {MODEL_W}x{MODEL_H}: image publish -> "
              f"odom receive median {statistics.median(latencies_ms):.1f} ms, max {max(latencies_ms):.1f} ms "
              f"over {len(latencies_ms)} frames; node inference {st.inference_latency_ms:.1f} ms")
    assert statistics.median(latencies_ms) < 2000


def test_keep_latest_drops_frames_under_load_and_reports_them(live: Session) -> None:
    before = live.latest_status()
    stamps = _send(live, np.concatenate([FRAMES, FRAMES]), rate_hz=1000, with_info=False)
    live.wait(lambda: live.odom_for(stamps[-1]) is not None, 30, "the newest frame to be processed")
    live.wait(lambda: h.stamp_s(live.latest_status().header) == stamps[-1], 5, "status of the newest frame")
    after = live.latest_status()
    processed = after.frames_processed - before.frames_processed
    dropped = after.frames_dropped - before.frames_dropped
    assert dropped > 0, f"no drops reported at 1000 Hz (processed {processed})"
    assert processed < len(stamps)
    assert processed + dropped <= len(stamps)
    diag_counts = after.frames_received - before.frames_received
    assert diag_counts >= processed + dropped


def test_bad_input_keeps_node_processing(live: Session) -> None:
    pub = live.image_pub  # type: ignore[attr-defined]
    info_pub = live.info_pub  # type: ignore[attr-defined]
    good = FRAMES[0]
    # Start from a node that has processed a good frame (camera mount known from /tf_static, a status to compare
    # with), so the test does not depend on which tests ran before it.
    first_stamp = round(time.time(), 6)
    pub.publish(h.image_msg(good, first_stamp, "camera_optical"))
    live.wait(lambda: live.odom_for(first_stamp) is not None, 15, "a good frame before the bad input")
    live.wait(lambda: h.stamp_s(live.latest_status().header) == first_stamp, 5, "status of that frame")
    before = live.latest_status()
    log_start = len(live.log.read_text(errors="replace"))

    def log_since_start() -> str:
        return live.log.read_text(errors="replace")[log_start:]

    t = time.time()
    bad_encoding = h.image_msg(good, t, "camera_optical")
    bad_encoding.encoding = "yuv422"
    short = h.image_msg(good, t + 0.001, "camera_optical")
    short.data = bytes(short.data)[: len(short.data) - 7]
    empty = Image(height=0, width=0, encoding="rgb8", step=0)
    empty.header = conv.Header(stamp=conv.seconds_to_stamp(t + 0.002), frame_id="camera_optical")
    zeros_info = CameraInfo(height=IN_H, width=IN_W)
    skewed_info = h.camera_info_msg(K_IN, IN_H, IN_W, t, "camera_optical")
    skewed_info.k[6] = 5.0   # last row not (0, 0, 1): the engine would refuse it
    nan_info = h.camera_info_msg(K_IN, IN_H, IN_W, t, "camera_optical")
    nan_info.k[0] = float("nan")
    unmounted = h.image_msg(good, t + 0.003, "unmounted_optical")   # no base_link -> unmounted_optical in TF
    cases = ((bad_encoding, zeros_info, "yuv422"), (short, skewed_info, "data length"),
             (empty, zeros_info, "zero-sized"), (unmounted, zeros_info, "no transform base_link -> unmounted_optical"))
    for bad, info, logged in cases:
        seen = live.log.read_text(errors="replace").count(logged)
        info_pub.publish(info)
        pub.publish(bad)
        # keep-latest would let a later frame replace this one while the worker is busy: wait until it is rejected
        live.wait(lambda: live.log.read_text(errors="replace").count(logged) > seen, 10, f"rejection: {logged}")
    info_pub.publish(nan_info)
    # Each refused camera_info is logged when it is handled (a reason at most once per throttle period, so the
    # three zero-K messages give one line): wait until every reason has been logged since this test started.
    camera_info_reasons = ("ignoring camera_info", "uncalibrated", "last row 0 0 1", "non-finite")
    live.wait(lambda: all(reason in log_since_start() for reason in camera_info_reasons), 10,
              f"camera_info refusals logged: {camera_info_reasons}")
    good_stamp = round(time.time(), 6)
    pub.publish(h.image_msg(good, good_stamp, "camera_optical"))
    live.wait(lambda: live.odom_for(good_stamp) is not None, 15, "a good frame after bad input")
    live.wait(lambda: h.stamp_s(live.latest_status().header) == good_stamp, 5, "status of the good frame")
    assert live.proc.poll() is None
    after = live.latest_status()
    assert after.frames_rejected - before.frames_rejected == 4, (before.frames_rejected, after.frames_rejected)
    log = log_since_start()
    assert "yuv422" in log and "data length" in log and "zero-sized" in log
    assert "no transform base_link -> unmounted_optical" in log and "camera_is_base:=true" in log


def test_services_reset_save_pause_resume(live: Session) -> None:
    p = live.probe
    tmp: Path = live.tmp  # type: ignore[attr-defined]
    _send(live, FRAMES[:6], rate_hz=8)
    live.wait(lambda: _processed(live) > 0, 10, "frames")
    # save_map: a readable PLY, atomically written
    from ttt3r_ros.engine import exports

    out = tmp / "map.ply"
    r = p.call(SaveToFile, f"{live.node_fqn}/save_map", SaveToFile.Request(path=str(out)))
    assert r.success, r.message
    assert Path(r.path) == out and out.is_file()
    pts, cols, confs = exports.read_ply(out)
    assert len(pts) > 0 and np.all(np.isfinite(pts)) and len(cols) == len(pts) and len(confs) == len(pts)
    assert not list(tmp.glob("*.tmp*"))
    r = p.call(SaveToFile, f"{live.node_fqn}/save_map", SaveToFile.Request(path=""))
    assert r.success and Path(r.path) == tmp / "default_map.ply" and (tmp / "default_map.ply").is_file()
    r = p.call(SaveToFile, f"{live.node_fqn}/save_map", SaveToFile.Request(path=str(tmp / "missing" / "m.ply")))
    assert not r.success and "does not exist" in r.message
    # save_trajectory: TUM with one pose per processed frame
    traj = tmp / "traj.tum"
    r = p.call(SaveToFile, f"{live.node_fqn}/save_trajectory", SaveToFile.Request(path=str(traj)))
    assert r.success, r.message
    stamps_tum, poses = exports.read_tum(traj)
    assert len(stamps_tum) == len(poses) > 0
    # reset: odometry restarts at identity with the next frame
    r = p.call(Trigger, f"{live.node_fqn}/reset", Trigger.Request())
    assert r.success, r.message
    stamps = _send(live, FRAMES[20:24], rate_hz=5)
    live.wait(lambda: live.odom_for(stamps[0]) is not None, 10, "odom after reset")
    first = live.odom_for(stamps[0]).pose.pose
    assert abs(first.position.x) + abs(first.position.y) + abs(first.position.z) < 1e-6
    assert abs(abs(first.orientation.w) - 1.0) < 1e-9
    live.wait(lambda: live.latest_status().resets >= 1, 5, "resets counted")
    # keep-latest always processes the newest frame: once its odom is here, nothing sent so far is in flight
    live.wait(lambda: live.odom_for(stamps[-1]) is not None, 10, "odom of the last frame before pausing")

    # pause: frames are ignored; resume: processing continues
    diagnostics = p.subscribe("/diagnostics", DiagnosticArray, 10)
    r = p.call(Trigger, f"{live.node_fqn}/pause", Trigger.Request())
    assert r.success and r.message.startswith("paused"), r.message
    n_odom_paused = len(live.odom)

    def paused_input(stale: bool) -> bool:
        """The node's latest diagnostics say paused and whether an image arrived within input_timeout_s (the image
        callback notes every image, paused or not)."""
        if not diagnostics:
            return False
        message = diagnostics[-1][1].status[0].message
        return "(paused)" in message and ("no image on /live/image" in message) == stale

    # Proof that a frame reached the paused node (not just that it was sent): wait until the input is reported
    # stale, send one frame, and wait until it no longer is. Only then resume, so it cannot arrive after resume.
    live.wait(lambda: paused_input(stale=True), 15, "paused node reporting stale input")
    (paused_stamp,) = _send(live, FRAMES[24:25], rate_hz=10)
    live.wait(lambda: paused_input(stale=False), 15, "paused node noticing the paused frame")
    r = p.call(Trigger, f"{live.node_fqn}/resume", Trigger.Request())
    assert r.success and r.message == "resumed"
    (marker_stamp,) = _send(live, FRAMES[27:28], rate_hz=10)
    live.wait(lambda: live.odom_for(marker_stamp) is not None, 10, "odom of the marker frame after resume")
    after_pause = [h.stamp_s(m.header) for _, m in list(live.odom)[n_odom_paused:]]
    assert after_pause[0] == marker_stamp and paused_stamp not in after_pause, (paused_stamp, after_pause)


def test_parameters_validated_live(live: Session) -> None:
    from rcl_interfaces.msg import Parameter as ParamMsg, ParameterType, ParameterValue
    from rcl_interfaces.srv import DescribeParameters, SetParameters

    p = live.probe
    d = p.call(DescribeParameters, f"{live.node_fqn}/describe_parameters",
               DescribeParameters.Request(names=["weights", "confidence_threshold", "device"]))
    by_name = {x.name: x for x in d.descriptors}
    assert "only while the node is unconfigured" in by_name["weights"].additional_constraints
    assert "only while the node is unconfigured" in by_name["device"].additional_constraints
    assert not by_name["confidence_threshold"].read_only
    assert "unconfigured" not in by_name["confidence_threshold"].additional_constraints
    assert by_name["confidence_threshold"].floating_point_range[0].from_value == 1.0
    assert by_name["weights"].description

    def set_param(name: str, value: ParameterValue) -> Any:
        req = SetParameters.Request(parameters=[ParamMsg(name=name, value=value)])
        return p.call(SetParameters, f"{live.node_fqn}/set_parameters", req).results[0]

    res = set_param("confidence_threshold", ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=0.5))
    assert not res.successful and res.reason
    # configure-time parameters are refused while the node is configured (active here)
    res = set_param("device", ParameterValue(type=ParameterType.PARAMETER_STRING, string_value="cuda"))
    assert not res.successful and "unconfigured" in res.reason
    res = set_param("confidence_threshold", ParameterValue(type=ParameterType.PARAMETER_DOUBLE,
                                                           double_value=CONF_THRESHOLD))
    assert res.successful


def test_covariance_grows_as_confidence_falls_and_lost_is_reported(live: Session) -> None:
    from rcl_interfaces.msg import Parameter as ParamMsg, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    diags = live.probe.subscribe("/diagnostics", DiagnosticArray, 10)

    def set_threshold(value: float) -> None:
        req = SetParameters.Request(parameters=[ParamMsg(name="confidence_threshold", value=ParameterValue(
            type=ParameterType.PARAMETER_DOUBLE, double_value=value))])
        assert live.probe.call(SetParameters, f"{live.node_fqn}/set_parameters", req).results[0].successful

    def one_frame(i: int) -> tuple[Any, Any]:
        st = round(time.time(), 6)
        live.image_pub.publish(h.image_msg(FRAMES[i], st, "camera_optical"))  # type: ignore[attr-defined]
        live.wait(lambda: live.odom_for(st) is not None, 15, "odom")
        live.wait(lambda: h.stamp_s(live.latest_status().header) == st, 5, "status")
        return live.odom_for(st), live.latest_status()

    try:
        variances = []
        for i, thr in enumerate((1.0, 1e5)):
            set_threshold(thr)
            odom, status = one_frame(10 + i)
            var = np.diag(np.array(odom.pose.covariance).reshape(6, 6))
            variances.append(var)
            if status.tracking_state != Status.TRACKING_LOST:
                # position_variance_m2 (default 0.01) scaled by 1 / confident fraction
                assert np.allclose(var[:3], 0.01 / max(status.confident_fraction, 1e-3), rtol=1e-5)
        assert variances[0][0] < 0.011
        assert live.latest_status().tracking_state == Status.TRACKING_LOST
        assert live.latest_status().confident_fraction == 0.0
        assert np.all(variances[1] == 9999.0) and np.all(variances[1] > variances[0])
        live.wait(lambda: any(d.status[0].level == d.status[0].ERROR and "lost" in d.status[0].message
                              for _, d in list(diags)), 5, "diagnostics ERROR: tracking lost")
    finally:
        set_threshold(CONF_THRESHOLD)


def test_invert_tf_and_publish_tf_switches(live: Session) -> None:
    from rcl_interfaces.msg import Parameter as ParamMsg, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    tf = live.probe.subscribe("/tf", TFMessage, QoSProfile(depth=100))

    def set_bool(name: str, value: bool) -> None:
        req = SetParameters.Request(parameters=[ParamMsg(name=name, value=ParameterValue(
            type=ParameterType.PARAMETER_BOOL, bool_value=value))])
        assert live.probe.call(SetParameters, f"{live.node_fqn}/set_parameters", req).results[0].successful

    def send_frame(i: int) -> float:
        st = round(time.time(), 6)
        live.image_pub.publish(h.image_msg(FRAMES[i], st, "camera_optical"))  # type: ignore[attr-defined]
        live.wait(lambda: live.odom_for(st) is not None, 15, "odom")
        return st

    def tf_with_stamp(st: float) -> list[Any]:
        return [t for _, m in list(tf) for t in m.transforms if h.stamp_s(t.header) == st]

    try:
        set_bool("invert_tf", True)
        inverted = send_frame(30)
        live.wait(lambda: tf_with_stamp(inverted), 10, "the inverted transform on /tf")
        (t,) = tf_with_stamp(inverted)
        assert (t.header.frame_id, t.child_frame_id) == ("base_link", "odom")
        set_bool("publish_tf", False)
        silent = send_frame(31)
        # Marker: with publish_tf back on, the next frame's transform arrives on /tf. The node's one /tf writer
        # delivers in order, so a transform for the silent frame would have arrived before it.
        set_bool("publish_tf", True)
        marker = send_frame(32)
        live.wait(lambda: tf_with_stamp(marker), 10, "the marker frame's transform on /tf")
        assert tf_with_stamp(silent) == []
    finally:
        set_bool("invert_tf", False)
        set_bool("publish_tf", True)


def test_live_node_log_has_no_unexpected_failures(live: Session) -> None:
    text = live.log.read_text(errors="replace")
    assert "frame failed" not in text and "Traceback" not in text and "failed:" not in text.replace(
        "save_map failed: SavePathError: folder does not exist", ""), live.tail()
    assert live.proc.poll() is None


# ------------------------------------------------------------------------------- in-order (bag) node, jpeg input
@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    tmp = tmp_path_factory.mktemp("replay")
    s = _start(tmp, "/replay", "-p", "process_all_frames:=true", "-p", "queue_size:=200",
               "-p", "image_transport:=compressed", "-p", "camera_is_base:=true", "-p", "input_qos_depth:=100",
               "-p", "use_camera_info:=false", "-p", "use_sim_time:=true")
    s.image_pub = s.probe.node.create_publisher(  # type: ignore[attr-defined]
        CompressedImage, "/replay/image/compressed", qos_profile_sensor_data)
    s.wait(lambda: s.probe.node.count_subscribers("/replay/image/compressed") > 0, 10, "compressed subscription")
    yield s
    _stop(s)


def test_process_all_frames_drops_none_in_order(replay: Session) -> None:
    tf = replay.probe.subscribe("/tf", TFMessage, QoSProfile(depth=100))
    stamps = _send(replay, FRAMES, rate_hz=60, with_info=False, compressed=True)
    replay.wait(lambda: replay.odom_for(stamps[-1]) is not None, 60, "all frames processed")
    replay.wait(lambda: h.stamp_s(replay.latest_status().header) == stamps[-1], 5, "status of the last frame")
    got = [h.stamp_s(m.header) for _, m in replay.odom if h.stamp_s(m.header) in set(stamps)]
    assert got == stamps, f"{len(got)} of {len(stamps)} frames, in order: {got == sorted(got)}"
    st = replay.latest_status()
    assert st.frames_dropped == 0 and st.frames_processed >= len(stamps)
    # camera_is_base: odom -> base_link is published without any /tf_static
    assert any(t.child_frame_id == "base_link" and t.header.frame_id == "odom" for _, m in tf for t in m.transforms)


def test_use_sim_time_latency_uses_clock(replay: Session) -> None:
    """With use_sim_time the node's clock is /clock: end-to-end latency = /clock - image stamp, and outputs keep the
    image stamps."""
    from rosgraph_msgs.msg import Clock

    clock_pub = replay.probe.node.create_publisher(Clock, "/clock", 10)
    replay.wait(lambda: replay.probe.node.count_subscribers("/clock") > 0, 10, "the node's /clock subscription")
    sim_now_s = 1_700_000_000.75
    # /clock and the images are separate topics, so a frame may be handled before the node has seen any /clock;
    # the node then reports the latency as NaN (no time yet). Send the clock and a frame until a frame comes back
    # with a latency: from then on the node's clock is sim_now_s, and the latency must be exactly clock - stamp.
    latencies_ms: list[float] = []
    deadline = time.monotonic() + 30
    while not latencies_ms or math.isnan(latencies_ms[-1]):
        assert time.monotonic() < deadline, f"no frame got a sim-time latency: {latencies_ms}\n{replay.tail()}"
        stamp = sim_now_s - 0.25 + 0.001 * len(latencies_ms)
        clock_pub.publish(Clock(clock=conv.seconds_to_stamp(sim_now_s)))
        replay.image_pub.publish(h.jpeg_msg(FRAMES[7], stamp, "camera_optical"))  # type: ignore[attr-defined]
        replay.wait(lambda: replay.odom_for(stamp) is not None, 15, "odom of the sim-time frame")
        replay.wait(lambda: h.stamp_s(replay.latest_status().header) == round(stamp, 6), 5, "its status")
        latencies_ms.append(replay.latest_status().end_to_end_latency_ms)
    expected_ms = (sim_now_s - stamp) * 1e3
    assert abs(latencies_ms[-1] - expected_ms) < 1.0, (latencies_ms, expected_ms)


def test_corrupt_jpeg_then_good_frame(replay: Session) -> None:
    before = replay.latest_status()
    bad = CompressedImage(format="jpeg")
    bad.header = conv.Header(stamp=conv.seconds_to_stamp(time.time()), frame_id="camera_optical")
    bad.data = b"\xff\xd8\xff\xe0" + bytes(300)
    replay.image_pub.publish(bad)  # type: ignore[attr-defined]
    good = round(time.time() + 0.01, 6)
    replay.image_pub.publish(h.jpeg_msg(FRAMES[3], good, "camera_optical"))  # type: ignore[attr-defined]
    replay.wait(lambda: replay.odom_for(good) is not None, 15, "good jpeg after a corrupt one")
    replay.wait(lambda: h.stamp_s(replay.latest_status().header) == good, 5, "status of the good frame")
    assert replay.latest_status().frames_rejected == before.frames_rejected + 1
    assert "corrupt compressed image" in replay.log.read_text(errors="replace")


def test_lifecycle_deactivate_activate_cleanup(replay: Session) -> None:
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    p = replay.probe

    def change(tid: int) -> bool:
        return p.call(ChangeState, f"{replay.node_fqn}/change_state",
                      ChangeState.Request(transition=Transition(id=tid))).success

    assert change(Transition.TRANSITION_DEACTIVATE)
    assert p.lifecycle_state(replay.node_fqn) == "inactive"
    replay.wait(lambda: p.node.count_subscribers("/replay/image/compressed") == 0, 5, "subscription removed")
    assert change(Transition.TRANSITION_ACTIVATE)
    replay.wait(lambda: p.node.count_subscribers("/replay/image/compressed") > 0, 5, "subscription back")
    good = round(time.time(), 6)
    replay.image_pub.publish(h.jpeg_msg(FRAMES[5], good, "camera_optical"))  # type: ignore[attr-defined]
    replay.wait(lambda: replay.odom_for(good) is not None, 15, "processing after re-activation")
    assert change(Transition.TRANSITION_DEACTIVATE) and change(Transition.TRANSITION_CLEANUP)
    assert p.lifecycle_state(replay.node_fqn) == "unconfigured"
    assert "cleaned up" in replay.tail()
    assert replay.proc.poll() is None


# ------------------------------------------------------------------------------------------ bad checkpoint
def test_missing_checkpoint_fails_configure_and_node_stays_up(tmp_path: Path) -> None:
    log = tmp_path / "node.log"
    missing = tmp_path / "no_such_model.safetensors"
    proc = h.start_node(h.tiny_node_args(missing, "-r", "__ns:=/broken"), log)
    probe = h.Probe("probe_broken")
    try:
        state = probe.autostart_outcome("/broken/ttt3r_node", timeout_s=60)
        assert h.wait_for(lambda: "configure failed" in log.read_text(errors="replace"), 20, proc), h.log_tail(log)
        assert state == "unconfigured", state
        text = log.read_text(errors="replace")
        assert f"checkpoint not found: {missing}" in text and "ros2 lifecycle set /broken/ttt3r_node configure" in text
        assert proc.poll() is None
        # recovery without a restart: while unconfigured the checkpoint can be fixed and configure retried
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState
        from rcl_interfaces.msg import Parameter as ParamMsg, ParameterType, ParameterValue
        from rcl_interfaces.srv import SetParameters

        req = SetParameters.Request(parameters=[ParamMsg(name="weights", value=ParameterValue(
            type=ParameterType.PARAMETER_STRING, string_value=str(h.tiny_weights())))])
        result = probe.call(SetParameters, "/broken/ttt3r_node/set_parameters", req).results[0]
        assert result.successful, result.reason
        for transition in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
            assert probe.call(ChangeState, "/broken/ttt3r_node/change_state",
                              ChangeState.Request(transition=Transition(id=transition))).success, h.log_tail(log)
        assert probe.lifecycle_state("/broken/ttt3r_node") == "active"
    finally:
        probe.close()
        assert h.stop(proc) == 0
