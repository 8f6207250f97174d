"""The session layer: weights/device resolution, opening a session (tiny random model on the CPU), the odometry
bookkeeping shared by the node and the result bag, and the message layouts filled with rclpy or rosbags classes."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ttt3r_ros.engine import Trajectory, geometry
from ttt3r_ros.session import odometry
from ttt3r_ros.session.build import (PLUMBING_LABEL, WEIGHTS_ENV, SessionError, open_session, resolve_device,
                                     resolve_weights)
from ttt3r_ros.session.odometry import OdometryLimits, OdometryTracker
from ttt3r_ros.session.settings import SessionConfig

TINY = dict(model_config="tiny", image_size=64, device="cpu", warmup_frames=0)


# ------------------------------------------------------------------------------------------------ weights
def test_weights_from_a_path_the_environment_or_random_by_name(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"x")
    chosen = resolve_weights(str(checkpoint))
    assert chosen.path == checkpoint and chosen.source == "--weights" and chosen.label is None
    # the environment is read only when the front end passes one (the offline tools; the node does not)
    env = {WEIGHTS_ENV: str(checkpoint)}
    assert resolve_weights(None, environment=env).source == f"${WEIGHTS_ENV}"
    with pytest.raises(SessionError, match="no model weights"):
        resolve_weights(None)
    # --weights beats the environment; 'random' and --random-weights both mean random, and say so
    other = tmp_path / "other.pth"
    other.write_bytes(b"x")
    assert resolve_weights(str(other), environment=env).path == other
    assert resolve_weights("random").is_random and resolve_weights("random").label == PLUMBING_LABEL
    assert resolve_weights(None, random_weights=True, environment=env).is_random
    with pytest.raises(SessionError, match="exclude each other"):
        resolve_weights(str(checkpoint), random_weights=True)


def test_weights_errors_name_the_path_the_source_and_the_front_ends_option(tmp_path: Path) -> None:
    with pytest.raises(SessionError) as err:
        resolve_weights(None, environment={WEIGHTS_ENV: str(tmp_path / "gone.pth")})
    assert f"checkpoint not found: {tmp_path / 'gone.pth'} (from ${WEIGHTS_ENV})" in str(err.value)
    with pytest.raises(SessionError, match="is a folder, not a checkpoint file"):
        resolve_weights(str(tmp_path))
    with pytest.raises(SessionError) as err:
        resolve_weights("", weights_usage="weights:=PATH", random_usage="weights:=random")
    text = str(err.value)
    assert "weights:=PATH" in text and "weights:=random" in text and WEIGHTS_ENV not in text
    assert "cut3r_512_dpt_4_64" in text   # where the checkpoint comes from (the model package's hint)


def test_device_resolution_refuses_what_is_not_there() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(SessionError, match="not a torch device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(SessionError, match="CUDA is not available"):
            resolve_device("cuda:0")


# ------------------------------------------------------------------------------------------------ sessions
def test_open_session_builds_the_configured_model_and_engines() -> None:
    lines: list[str] = []
    config = SessionConfig(weights="random", update_rule="cut3r", reset_interval=3, voxel_size_m=0.05,
                           map_max_points=1000, **TINY)
    session = open_session(config, log=lines.append)
    assert session.device == torch.device("cpu") and session.precision == "fp32"
    assert session.dtype == torch.float32 and next(session.model.parameters()).dtype == torch.float32
    assert session.label == PLUMBING_LABEL and lines == ["precision:=auto resolved to fp32"]
    engine = session.new_engine()
    c = engine.config
    assert (c.update_rule, c.reset_interval, c.size, c.voxel_size, c.map_max_points, c.confidence_threshold) == (
        "cut3r", 3, 64, 0.05, 1000, config.confidence_threshold)
    np.testing.assert_array_equal(c.camera_to_base, geometry.T_BODY_FROM_OPTICAL)  # camera at the base
    mount = geometry.make_se3(np.eye(3), [0.1, 0.0, 0.2]) @ geometry.T_BODY_FROM_OPTICAL
    other = session.new_engine(mount, confidence_threshold=7.0)
    assert other.config.confidence_threshold == 7.0 and np.allclose(other.config.camera_to_base, mount)
    assert session.new_engine(reset_interval=None).config.reset_interval is None
    elapsed_ms, path = session.warm_up(2)
    assert elapsed_ms > 0 and "eager" in path
    assert SessionConfig(**TINY).reset_interval == 0 and session.new_engine().frames_processed == 0
    session.close()
    assert session.model is None


def test_open_session_refuses_bad_settings_and_missing_weights_with_reasons() -> None:
    with pytest.raises(SessionError) as err:
        open_session(SessionConfig(weights="random", image_size=70, precision="fp8", **{
            k: v for k, v in TINY.items() if k != "image_size"}))
    assert "image_size=70 must be a multiple of 16" in str(err.value) and "precision='fp8'" in str(err.value)
    with pytest.raises(SessionError, match="no model weights.*weights:=random"):
        open_session(SessionConfig(**TINY))   # the node's rule: an empty `weights` is an error, no environment
    with pytest.raises(SessionError, match="model_config no_such_preset"):
        open_session(SessionConfig(weights="random", **{**TINY, "model_config": "no_such_preset"}))


# ------------------------------------------------------------------------------------------------ odometry
def _pose(yaw_rad: float, x_m: float) -> np.ndarray:
    c, s = math.cos(yaw_rad), math.sin(yaw_rad)
    return geometry.make_se3(np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]), [x_m, 0.0, 0.0])


def test_tracker_twist_covariance_tracking_state_and_trajectory() -> None:
    tracker = OdometryTracker()
    confident = np.full((4, 5), 5.0, np.float32)
    first = tracker.update(10.0, _pose(0.0, 0.0), confident)
    assert first.tracking_state == odometry.TRACKING_OK and first.confident_fraction == 1.0
    assert first.twist_covariance_diagonal == [odometry.LOST_VARIANCE] * 6   # no velocity from one pose
    assert first.pose_covariance_diagonal == [0.01] * 6
    # 0.2 m forward and 0.1 rad left in 0.5 s; 5 of 20 pixels confident: degraded, variances x4
    half = confident.copy()
    half.reshape(-1)[5:] = 1.0
    second = tracker.update(10.5, _pose(0.1, 0.2), half)
    np.testing.assert_allclose(second.twist_linear_mps, [0.4, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(second.twist_angular_radps, [0.0, 0.0, 0.2], atol=1e-12)
    assert second.confident_fraction == 0.25 and second.tracking_state == odometry.TRACKING_DEGRADED
    np.testing.assert_allclose(second.pose_covariance_diagonal, [0.04] * 6)
    np.testing.assert_allclose(second.twist_covariance_diagonal, [2 * 0.04 / 0.25] * 6)
    # live limits: a stricter lost fraction makes the same frame LOST (9999), an older stamp gives no twist
    lost = tracker.update(10.4, _pose(0.1, 0.2), half, OdometryLimits(tracking_lost_fraction=0.3,
                                                                      tracking_degraded_fraction=0.5))
    assert lost.tracking_state == odometry.TRACKING_LOST and lost.tracking_name == "lost"
    assert lost.pose_covariance_diagonal == [odometry.LOST_VARIANCE] * 6
    assert np.all(lost.twist_linear_mps == 0) and lost.twist_covariance_diagonal == [odometry.LOST_VARIANCE] * 6
    # the trajectory: every frame, compactly
    assert isinstance(tracker.trajectory, Trajectory) and len(tracker.trajectory) == 3
    np.testing.assert_allclose(tracker.trajectory.timestamps(), [10.0, 10.5, 10.4])
    np.testing.assert_allclose(tracker.trajectory.poses()[1], _pose(0.1, 0.2))
    tracker.reset()
    assert len(tracker.trajectory) == 0
    again = tracker.update(11.0, _pose(0.0, 1.0), None)   # unknown confidence: taken as fully confident
    assert again.tracking_state == odometry.TRACKING_OK and again.twist_covariance_diagonal[0] == 9999.0


# ------------------------------------------------------------------------------------------------ codecs
def test_odometry_and_tf_are_the_same_messages_live_and_in_a_result_bag() -> None:
    """One builder, two factories: the rosbags message the result bag writes, read back as rclpy's message, equals
    the one the node publishes (compared field by field: CDR padding bytes are not defined, so not the bytes)."""
    from builtin_interfaces.msg import Time
    from geometry_msgs.msg import TransformStamped
    from nav_msgs.msg import Odometry
    from rclpy.serialization import deserialize_message
    from std_msgs.msg import Header

    from ttt3r_ros.offline.bag_writing import MessageFactory
    from ttt3r_ros.ros import conversions as conv
    from ttt3r_ros.session import message_codec

    tracker = OdometryTracker()
    tracker.update(1.0, _pose(0.0, 0.0), None)
    estimate = tracker.update(1.25, _pose(0.3, 0.5), np.linspace(0.5, 6.0, 30).reshape(5, 6))
    stamp_ns = 1_700_000_000_123_456_789
    live_header = Header(stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id="odom")
    factory = MessageFactory()
    bag_header = factory.header(stamp_ns, "odom")
    live = conv.odometry(estimate.t_odom_base, live_header, "base_link", estimate.pose_covariance_diagonal,
                         estimate.twist_covariance_diagonal, estimate.twist_linear_mps, estimate.twist_angular_radps)
    offline = message_codec.odometry_from_estimate(factory, bag_header, "base_link", estimate)
    assert deserialize_message(bytes(factory.ts.serialize_cdr(offline, "nav_msgs/msg/Odometry")), Odometry) == live
    live_tf = conv.transform_stamped(estimate.t_odom_base, live_header, "base_link")
    offline_tf = factory.transform_stamped(estimate.t_odom_base, stamp_ns, "odom", "base_link")
    assert deserialize_message(bytes(factory.ts.serialize_cdr(offline_tf, "geometry_msgs/msg/TransformStamped")),
                               TransformStamped) == live_tf
    with pytest.raises(ValueError, match="finite 4x4"):
        message_codec.pose(factory, np.full((4, 4), np.nan))
