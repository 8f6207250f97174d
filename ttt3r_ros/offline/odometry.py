"""Odometry uncertainty, tracking state and velocity from per-frame confidence and poses (pure numpy, no ROS).

Shared by the live node (`odom`, `status`, `/diagnostics`) and the offline result bag (`/odom`), so a bag mapped
offline carries the same covariances and twists the node would have published for it.

The model gives no calibrated pose uncertainty; what it does give is a per-pixel confidence. The fraction of
pixels that pass the confidence threshold is a usable proxy for how much geometry supports the pose, so variances
scale with its inverse, and below the "lost" fraction the pose is reported as lost with 9999 variances (rtabmap's
BAD_COVARIANCE convention), which robot_localization and Nav2 treat as "ignore".
"""
from __future__ import annotations

import numpy as np

from ..engine import geometry

LOST_VARIANCE = 9999.0
# Defaults of the node parameters of the same names (config/live.yaml); the offline tools use them as they are.
TRACKING_DEGRADED_FRACTION = 0.3
TRACKING_LOST_FRACTION = 0.05
POSITION_VARIANCE_M2 = 0.01
ROTATION_VARIANCE_RAD2 = 0.01

# Values of ttt3r_ros/Status tracking_state (msg/Status.msg)
TRACKING_INITIALIZING, TRACKING_OK, TRACKING_DEGRADED, TRACKING_LOST = 0, 1, 2, 3
TRACKING_NAMES = {TRACKING_INITIALIZING: "initializing", TRACKING_OK: "ok", TRACKING_DEGRADED: "degraded",
                  TRACKING_LOST: "lost"}


def confident_fraction(confidence: np.ndarray, threshold: float) -> float:
    """Share of pixels with confidence >= threshold (NaN counts as not confident)."""
    conf = np.asarray(confidence)
    return float(np.mean(conf >= threshold)) if conf.size else 0.0


def tracking_state(fraction: float, degraded_fraction: float = TRACKING_DEGRADED_FRACTION,
                   lost_fraction: float = TRACKING_LOST_FRACTION) -> int:
    if fraction < lost_fraction:
        return TRACKING_LOST
    if fraction < degraded_fraction:
        return TRACKING_DEGRADED
    return TRACKING_OK


def pose_covariance_diagonal(fraction: float, state: int, position_variance_m2: float = POSITION_VARIANCE_M2,
                             rotation_variance_rad2: float = ROTATION_VARIANCE_RAD2) -> list[float]:
    """(x, y, z, rx, ry, rz) variances: base / confident fraction; LOST -> 9999. Never zero."""
    if state == TRACKING_LOST:
        return [LOST_VARIANCE] * 6
    scale = 1.0 / max(fraction, 1e-3)
    return [position_variance_m2 * scale] * 3 + [rotation_variance_rad2 * scale] * 3


def twist_covariance_diagonal(pose_variances: list[float], dt_s: float | None) -> list[float]:
    """Variances of a finite-difference velocity between two poses with `pose_variances` each, dt_s apart;
    9999 while unknown (first frame, or stamps not increasing)."""
    if dt_s is None or dt_s <= 0:
        return [LOST_VARIANCE] * 6
    return [2.0 * v / (dt_s * dt_s) for v in pose_variances]


def body_twist_from_poses(t_prev: np.ndarray, t_curr: np.ndarray, dt_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(linear m/s, angular rad/s) of the child frame expressed in the child frame (nav_msgs/Odometry twist),
    from two consecutive poses of the child in the parent frame; finite difference over dt_s."""
    delta = geometry.invert_se3(t_prev) @ t_curr   # motion expressed in the previous child frame
    r = delta[:3, :3]
    angle = geometry.rotation_angle_rad(r)
    axis_unnorm = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    if angle < 1e-9:
        rotvec = 0.5 * axis_unnorm   # small-angle limit of the log map
    else:
        sin = np.sin(angle)
        rotvec = axis_unnorm * (angle / (2.0 * sin)) if sin > 1e-6 else axis_unnorm  # near pi: direction only
    return delta[:3, 3] / dt_s, rotvec / dt_s
