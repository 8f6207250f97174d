"""ttt3r_node's odometry and frame-tree behaviour through its own code path, with the oracle network of
test_node_conventions.py (known motion: the camera moves STEP_M along its optical axis per frame = +x in odom):
- `~/reset` restarts the model's state while odometry continues (no jump in odom -> base_link); `~/reset_odometry`
  restarts at identity;
- while tracking is lost, odom and TF hold the last good pose; when it returns they continue from the held pose;
- `camera_is_base` publishes base -> optical frame on /tf_static, so the optical-frame outputs resolve;
- `rgb/image` is the colour image aligned with `depth/image` (same size, stamp, frame).
The DDS transport, the lifecycle /diagnostics and exit_on_configure_failure are in test_node_dds_*.py.
"""
from __future__ import annotations

import time
from typing import Any, Iterator

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy (ROS 2) not installed: the node tests need ROS 2 (scripts/setup.sh)")

from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CameraInfo  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from test_node_conventions import STEP_M, W, _OracleNode, _Recorder, _render, _xyz, ros_context  # noqa: E402,F401
from ttt3r_ros.engine import geometry  # noqa: E402
from ttt3r_ros.ros import conversions as conv  # noqa: E402
from ttt3r_ros.ros import node as node_module  # noqa: E402
from ttt3r_ros.session import odometry  # noqa: E402

CONF_THRESHOLD = 3.0   # the oracle's confidence is 5 (1.5 in a left band): OK at 3, LOST at 1e5


class _Driver:
    """An active oracle node whose publishers are recorders; frames are fed one at a time."""

    def __init__(self, n_frames: int, frame_id: str = "camera_optical", **params: Any) -> None:
        poses = [geometry.make_se3(np.eye(3), [0.0, 0.0, -0.5 + STEP_M * i]) for i in range(n_frames)]
        self.images, oracle, _ = _render(poses)
        _OracleNode.oracle = oracle
        overrides = [Parameter("weights", value="unused"), Parameter("image_size", value=W),
                     Parameter("device", value="cpu"), Parameter("warmup_frames", value=0),
                     Parameter("confidence_threshold", value=CONF_THRESHOLD)]
        overrides += [Parameter(name, value=value) for name, value in params.items()]
        self.node = _OracleNode(parameter_overrides=overrides)
        self.node.trigger_configure()
        self.node.trigger_activate()
        assert self.node._running, "node did not reach active"
        self.rec = {name: _Recorder(pub.msg_type) for name, pub in self.node._pubs.items()}
        self.node._pubs.update(self.rec)
        self.frame_id = frame_id

    def feed(self, i: int) -> None:
        msg = conv.numpy_to_image(self.images[i], "rgb8", Header(stamp=conv.seconds_to_stamp(1000.0 + 0.1 * i),
                                                                 frame_id=self.frame_id))
        self.node._process(node_module._Frame(msg=msg, received_wall_s=time.monotonic()))

    def set_threshold(self, value: float) -> None:
        self.node.set_parameters([Parameter("confidence_threshold", value=value)])

    def odom_x(self) -> list[float]:
        return [float(_xyz(m)[0]) for m in self.rec["odom"].msgs]

    def tf_x(self) -> list[float]:
        return [float(conv.matrix_from_transform(m.transforms[0].transform)[0, 3]) for m in self.rec["tf"].msgs]

    def stop(self) -> None:
        self.node._stop_input()
        self.node.destroy_node()


@pytest.fixture()
def driver_factory(ros_context: None) -> Iterator[Any]:
    made: list[_Driver] = []

    def make(*args: Any, **kwargs: Any) -> _Driver:
        made.append(_Driver(*args, **kwargs))
        return made[-1]
    yield make
    for d in made:
        d.stop()


def test_reset_keeps_odometry_continuous_and_reset_odometry_restarts_at_identity(driver_factory: Any) -> None:
    d = driver_factory(9, camera_is_base=True)
    for i in range(4):
        d.feed(i)
    before = d.odom_x()
    np.testing.assert_allclose(before, [STEP_M * i for i in range(4)], atol=1e-5)
    response = d.node._srv_reset(Trigger.Request(), Trigger.Response())
    assert response.success and "continues" in response.message
    for i in range(4, 7):
        d.feed(i)
    after = d.odom_x()[4:]
    # no jump back to identity: the new chunk starts at the last frame's pose and keeps moving forward
    assert after[0] >= before[-1] - 1e-5, (before, after)
    assert np.all(np.diff(d.odom_x()) >= -1e-5) and np.all(np.diff(d.odom_x()) <= STEP_M + 1e-5)
    np.testing.assert_allclose(np.diff(after), STEP_M, atol=1e-5)
    np.testing.assert_allclose(d.tf_x(), d.odom_x(), atol=1e-9)   # TF is the same pose
    assert d.rec["status"].msgs[-1].resets == 1   # the reset is counted
    # the pose uncertainty did not restart either (the pose continues)
    variances = [m.pose.covariance[0] for m in d.rec["odom"].msgs]
    assert np.all(np.diff(variances) >= 0) and variances[-1] > variances[0]

    response = d.node._srv_reset_odometry(Trigger.Request(), Trigger.Response())
    assert response.success and "identity" in response.message
    d.feed(7)
    d.feed(8)
    np.testing.assert_allclose(d.odom_x()[-2:], [0.0, STEP_M], atol=1e-5)   # explicit restart at identity
    assert d.rec["odom"].msgs[-2].pose.covariance[0] == pytest.approx(
        d.node.get_parameter("position_variance_m2").value)   # the growth restarts with it
    assert d.rec["status"].msgs[-1].resets == 2


def test_lost_tracking_holds_the_last_good_pose_then_continues_from_it(driver_factory: Any) -> None:
    d = driver_factory(10, camera_is_base=True)
    for i in range(3):
        d.feed(i)
    held_x = d.odom_x()[-1]
    d.set_threshold(1e5)   # nothing is confident: LOST
    for i in range(3, 6):
        d.feed(i)   # the model keeps moving (+STEP each frame) ...
    lost_odom = d.rec["odom"].msgs[3:]
    # ... odom and TF do not: they hold the last good pose, with "ignore me" variances
    np.testing.assert_allclose(d.odom_x()[3:], held_x, atol=1e-9)
    np.testing.assert_allclose(d.tf_x()[3:], held_x, atol=1e-9)
    assert all(m.pose.covariance[0] == odometry.LOST_VARIANCE for m in lost_odom)
    status = d.rec["status"].msgs[-1]
    assert status.tracking_state == odometry.TRACKING_LOST and "holding last good pose" in status.message
    assert "holding last good pose" in d.node._summary.message   # what /diagnostics reports
    d.set_threshold(CONF_THRESHOLD)
    for i in range(6, 9):
        d.feed(i)
    # back: the first good frame sits at the held pose (the model's motion during the loss is not trusted), then the
    # model's relative motion continues from there
    np.testing.assert_allclose(d.odom_x()[6:], [held_x, held_x + STEP_M, held_x + 2 * STEP_M], atol=1e-5)
    np.testing.assert_allclose(d.tf_x()[6:], d.odom_x()[6:], atol=1e-9)
    assert "holding" not in d.rec["status"].msgs[-1].message


def _tf_static_transforms(d: _Driver) -> dict[tuple[str, str], np.ndarray]:
    return {(t.header.frame_id, t.child_frame_id): conv.matrix_from_transform(t.transform)
            for m in d.rec["tf_static"].msgs for t in m.transforms}


def test_camera_is_base_publishes_the_optical_frame_and_rgb_matches_depth(driver_factory: Any) -> None:
    d = driver_factory(3, camera_is_base=True)
    d.feed(0)
    d.feed(1)
    static = _tf_static_transforms(d)
    assert set(static) == {("base_link", "camera_optical")}   # the image's frame_id, under base_frame
    np.testing.assert_allclose(static[("base_link", "camera_optical")], geometry.T_BODY_FROM_OPTICAL, atol=1e-12)
    # the optical-frame outputs resolve: base -> optical on /tf_static, odom -> base on /tf
    assert d.rec["odom"].msgs[-1].child_frame_id == "base_link"
    # rgb/image: the model-resolution colour, pixel-aligned with depth/image (same size, stamp and frame)
    assert d.rec["rgb"].published.wait(10), "no rgb/image"   # the output thread publishes it (rgb last)
    rgb = d.rec["rgb"].msgs[-1]
    (depth,) = [m for m in d.rec["depth"].msgs if m.header.stamp == rgb.header.stamp]
    (info,) = [m for m in d.rec["depth_info"].msgs if m.header.stamp == rgb.header.stamp]
    assert isinstance(info, CameraInfo)
    assert rgb.encoding == "rgb8" and depth.encoding == "32FC1"
    assert (rgb.height, rgb.width) == (depth.height, depth.width) == (info.height, info.width)
    assert rgb.header == depth.header and rgb.header.frame_id == "camera_optical"
    colours = conv.image_to_numpy(rgb)
    assert colours.shape == (depth.height, depth.width, 3) and colours.std() > 0


def test_camera_is_base_with_the_base_frame_as_image_frame_names_an_optical_frame(driver_factory: Any) -> None:
    d = driver_factory(2, frame_id="base_link", camera_is_base=True)
    d.feed(0)
    static = _tf_static_transforms(d)
    assert set(static) == {("base_link", "base_link_optical_frame")}   # never a frame as its own child
    assert d.rec["status"].msgs[-1].header.frame_id == "base_link_optical_frame"


def test_a_body_frame_given_as_the_camera_frame_is_reported(driver_factory: Any) -> None:
    from ttt3r_ros.ros import camera_frames

    # camera_is_base false and the images in base_link: base -> camera is identity, i.e. body axes
    problem = camera_frames.body_frame_problem("base_link", "base_link", np.eye(4))
    assert problem and "OPTICAL" in problem
    # a camera_link (body axes) mounted 0.3 m ahead of base_link: same axes in TF -> reported
    mount = geometry.make_se3(np.eye(3), [0.3, 0.0, 0.4])
    assert "camera_link" in camera_frames.body_frame_problem("camera_link", "base_link", mount)
    # a real optical frame is not
    optical = geometry.make_se3(geometry.R_BODY_FROM_OPTICAL, [0.3, 0.0, 0.4])
    assert camera_frames.body_frame_problem("camera_color_optical_frame", "base_link", optical) is None
    logged: list[str] = []
    d = driver_factory(2, frame_id="base_link", camera_is_base=False)
    d.node._log_throttled = lambda level, text, **kw: logged.append(f"{level}: {text}")  # type: ignore[method-assign]
    d.feed(0)
    assert any(line.startswith("error: ") and "not optical" in line for line in logged), logged
