"""Frame conventions through the node's own code path (decode -> engine -> odometry/TF/clouds/services), with the
engine's exact synthetic room and its OracleNetwork in place of the weights, so the expected motion is known:
a camera moving along its optical +z must give odometry +x (REP 103: x forward, y left, z up), turning left must
give a positive yaw, and odom -> base_link starts at identity. The node runs in this process; its publishers are
replaced by recorders after activation (the DDS transport itself is covered by test_node_dds_*.py).
"""
from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

# rclpy is third-party (absent from a ROS-free `pip install -e .`); the package's own interfaces and tf2_msgs are
# built by scripts/setup.sh or colcon and imported by the node module below, so a broken rosidl build fails here.
pytest.importorskip("rclpy", reason="rclpy (ROS 2) not installed: the node tests need ROS 2 (scripts/setup.sh)")

import rclpy  # noqa: E402
import torch  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from ttt3r_ros.engine import exports, geometry  # noqa: E402
from ttt3r_ros.engine.preprocess import preprocess  # noqa: E402
from support.oracle import OracleNetwork  # noqa: E402
from ttt3r_ros.engine.synthetic import BoxRoom, pinhole  # noqa: E402
from ttt3r_ros.session.message_codec import cloud_to_numpy, unpack_rgb  # noqa: E402
from ttt3r_ros.ros import conversions as conv  # noqa: E402
from ttt3r_ros.ros import node as node_module  # noqa: E402
from ttt3r_ros.session.build import Session, WeightsChoice  # noqa: E402
from ttt3r_ros.session.settings import SessionConfig  # noqa: E402

H, W = 48, 64
STEP_M = 0.1
YAW_STEP_RAD = 0.05


class _Recorder:
    """Stands in for a lifecycle publisher: keeps what the node publishes; `subscribers` is what the node sees
    (heavy outputs are only built for topics with subscribers)."""

    def __init__(self, msg_type: Any, subscribers: int = 1) -> None:
        self.msgs: list[Any] = []
        self.msg_type = msg_type
        self.subscribers = subscribers
        self.published = threading.Event()   # set at the first message: tests wait on it, not on a clock

    def publish(self, msg: Any) -> None:
        if isinstance(msg, bytes):   # dense outputs are published as serialized CDR
            from rclpy.serialization import deserialize_message

            msg = deserialize_message(msg, self.msg_type)
        self.msgs.append(msg)
        self.published.set()

    def get_subscription_count(self) -> int:
        return self.subscribers


def _render(poses: list[np.ndarray]) -> tuple[list[np.ndarray], OracleNetwork, BoxRoom]:
    room = BoxRoom()
    k = pinhole(0.9 * W, H, W)
    images, points = [], []
    for pose in poses:
        rgb, _, pts = room.render(k, H, W, pose)
        images.append(rgb)
        points.append(pts)
    tensors = torch.cat([preprocess(image, size=W).images for image in images])
    return images, OracleNetwork(tensors, np.stack(points), np.stack(poses)), room


class _OracleNode(node_module.Ttt3rNode):
    """ttt3r_node with the oracle network instead of a checkpoint (everything after the model is the node's)."""
    oracle: OracleNetwork

    def _load_engine(self) -> None:
        # the session the node would open, with the oracle as its model (weights: none, it needs no checkpoint)
        self._session = Session(config=SessionConfig.from_values(self._p), model=self.oracle,
                                device=torch.device("cpu"), precision="fp32", dtype=torch.float32,
                                weights=WeightsChoice(None, "oracle network"))
        self._device = "cpu"


@pytest.fixture()
def ros_context() -> Iterator[None]:
    rclpy.init()
    try:
        yield
    finally:
        rclpy.try_shutdown()


def _run_node(oracle: OracleNetwork, images: list[np.ndarray], static_tf: list[Any] | None = None,
              unsubscribed: tuple[str, ...] = (), **params: Any) -> tuple[_OracleNode, dict[str, _Recorder]]:
    _OracleNode.oracle = oracle
    overrides = [Parameter("weights", value="unused"), Parameter("image_size", value=W),
                 Parameter("device", value="cpu"), Parameter("warmup_frames", value=0),
                 Parameter("confidence_threshold", value=3.0)]
    overrides += [Parameter(name, value=value) for name, value in params.items()]
    node = _OracleNode(parameter_overrides=overrides)
    node.trigger_configure()
    node.trigger_activate()
    assert node._running, "node did not reach active"
    if static_tf:
        ext = node._extrinsic
        for ts in static_tf:   # what /tf_static would deliver (tf2_ros buffer on full installs, else ours)
            if ext._tf2_buffer is not None:
                ext._tf2_buffer.set_transform_static(ts, "test")
            else:
                ext._static.add_message(type("TFMessage", (), {"transforms": [ts]})())
    recorders = {name: _Recorder(pub.msg_type, 0 if name in unsubscribed else 1) for name, pub in node._pubs.items()}
    node._pubs.update(recorders)
    for i, rgb in enumerate(images):
        msg = conv.numpy_to_image(rgb, "rgb8", Header(stamp=conv.seconds_to_stamp(1000.0 + 0.1 * i),
                                                      frame_id="camera_optical"))
        node._process(node_module._Frame(msg=msg, received_wall_s=time.monotonic()))
        # the dense outputs and the map are handed to their threads (newest frame only): let each frame through
        assert node._outputs.wait_idle(30.0) and node._mapper.wait_idle(30.0)
    return node, recorders


def _stop(node: _OracleNode) -> None:
    node._stop_input()
    node.destroy_node()


def _xyz(msg: Any) -> np.ndarray:
    p = msg.pose.pose.position
    return np.array([p.x, p.y, p.z])


def _yaw(q: Any) -> float:
    return math.atan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z))


def test_forward_camera_gives_odometry_plus_x_and_left_turn_positive_yaw(ros_context: None, tmp_path: Path) -> None:
    forward = [geometry.make_se3(np.eye(3), [0.0, 0.0, -0.5 + STEP_M * i]) for i in range(4)]
    # turning left = rotating about the up axis, which is optical -y
    turn = [geometry.make_se3(geometry.quat_wxyz_to_matrix(
        np.array([math.cos(-YAW_STEP_RAD * i / 2), 0.0, math.sin(-YAW_STEP_RAD * i / 2), 0.0])), [0.0, 0.0, 0.3])
        for i in range(1, 3)]
    images, oracle, room = _render(forward + turn)
    node, rec = _run_node(oracle, images, camera_is_base=True,
                          default_trajectory_path="traj.tum", save_directory=str(tmp_path))
    try:
        odoms = rec["odom"].msgs
        assert len(odoms) == 6
        stamps = [conv.stamp_to_seconds(m.header.stamp) for m in odoms]
        assert stamps == pytest.approx([1000.0 + 0.1 * i for i in range(6)], abs=1e-9)  # input stamps, not now()
        assert all((m.header.frame_id, m.child_frame_id) == ("odom", "base_link") for m in odoms)
        # starts at identity; forward motion is +x only
        assert np.allclose(_xyz(odoms[0]), 0.0, atol=1e-9) and abs(odoms[0].pose.pose.orientation.w) == 1.0
        for i in range(4):
            np.testing.assert_allclose(_xyz(odoms[i]), [STEP_M * i, 0.0, 0.0], atol=1e-5)
        # twist in the child frame: forward speed STEP_M / 0.1 s
        assert odoms[2].twist.twist.linear.x == pytest.approx(STEP_M / 0.1, rel=1e-4)
        # left turn: positive yaw about z (up), no roll/pitch
        assert _yaw(odoms[4].pose.pose.orientation) == pytest.approx(YAW_STEP_RAD, abs=1e-5)
        assert _yaw(odoms[5].pose.pose.orientation) == pytest.approx(2 * YAW_STEP_RAD, abs=1e-5)
        assert odoms[5].twist.twist.angular.z == pytest.approx(YAW_STEP_RAD / 0.1, rel=1e-3)
        # TF: the same pose, odom -> base_link, input stamps
        tfs = [m.transforms[0] for m in rec["tf"].msgs]
        assert [(t.header.frame_id, t.child_frame_id) for t in tfs] == [("odom", "base_link")] * 6
        np.testing.assert_allclose(conv.matrix_from_transform(tfs[3].transform)[:3, 3], [3 * STEP_M, 0, 0],
                                   atol=1e-5)
        # per-frame cloud: camera optical frame, organised, colours are the image's pixels
        cloud_msg = rec["points"].msgs[0]
        assert cloud_msg.header.frame_id == "camera_optical" and (cloud_msg.height, cloud_msg.width) == (H, W)
        cloud = cloud_to_numpy(cloud_msg).reshape(H, W)
        assert np.array_equal(unpack_rgb(cloud["rgb"]), images[0])
        confident = cloud["confidence"] >= 3.0
        assert np.all(cloud["z"][confident] > 0)   # optical: z forward
        # map_points: only built while someone subscribes; in odom (REP 103): moved back into the room it lies
        # on the walls
        rec["map_points"].subscribers = 0
        node._map_dirty = True
        node._publish_map()
        assert rec["map_points"].msgs == [] and node._map_dirty
        rec["map_points"].subscribers = 1
        node._publish_map()
        map_cloud = cloud_to_numpy(rec["map_points"].msgs[-1])
        assert rec["map_points"].msgs[-1].header.frame_id == "odom" and len(map_cloud) > 100
        pts_odom = np.stack([map_cloud[k] for k in ("x", "y", "z")], axis=1).astype(np.float64)
        t_room_odom = forward[0] @ geometry.invert_se3(geometry.T_BODY_FROM_OPTICAL)
        pts_room = geometry.transform_points(t_room_odom, pts_odom)
        assert np.percentile(room.surface_distance(pts_room), 95) < 0.05
        # save_trajectory writes the same base_link-in-odom poses
        from ttt3r_ros.srv import SaveToFile
        response = node._srv_save_trajectory(SaveToFile.Request(path=""), SaveToFile.Response())
        assert response.success, response.message
        _, poses = exports.read_tum(tmp_path / "traj.tum")
        np.testing.assert_allclose(np.asarray(poses)[:4, :3, 3], [[STEP_M * i, 0, 0] for i in range(4)], atol=1e-5)
    finally:
        _stop(node)


def test_mounted_camera_via_tf_and_invert_tf(ros_context: None) -> None:
    """base_link -> camera_link (0.3 m forward, 0.4 m up) -> camera_optical (the standard optical rotation):
    odometry still starts at identity and moves +x; invert_tf publishes base_link -> odom (the inverse); heavy
    outputs without subscribers are not built."""
    forward = [geometry.make_se3(np.eye(3), [0.0, 0.0, -0.5 + STEP_M * i]) for i in range(3)]
    images, oracle, _ = _render(forward)
    static_tf = [
        conv.transform_stamped(geometry.make_se3(np.eye(3), [0.3, 0.0, 0.4]), Header(frame_id="base_link"),
                               "camera_link"),
        conv.transform_stamped(geometry.T_BODY_FROM_OPTICAL, Header(frame_id="camera_link"), "camera_optical")]
    heavy = ("points", "depth", "depth_info", "confidence")
    node, rec = _run_node(oracle, images, static_tf=static_tf, unsubscribed=heavy, invert_tf=True,
                          extrinsic_timeout_s=0.0)
    try:
        odoms = rec["odom"].msgs
        assert len(odoms) == 3, "frames were not processed (extrinsic not found?)"
        for i, m in enumerate(odoms):
            np.testing.assert_allclose(_xyz(m), [STEP_M * i, 0.0, 0.0], atol=1e-5)
            assert abs(m.pose.pose.orientation.w) == pytest.approx(1.0, abs=1e-9)
        tfs = [m.transforms[0] for m in rec["tf"].msgs]
        assert [(t.header.frame_id, t.child_frame_id) for t in tfs] == [("base_link", "odom")] * 3
        np.testing.assert_allclose(conv.matrix_from_transform(tfs[2].transform)[:3, 3], [-2 * STEP_M, 0, 0],
                                   atol=1e-5)
        assert conv.stamp_to_seconds(tfs[2].header.stamp) == pytest.approx(1000.2, abs=1e-9)
        # nobody listens to the heavy outputs: they are not built or sent
        assert all(rec[name].msgs == [] for name in heavy)
    finally:
        _stop(node)
