"""Per-frame odometry bookkeeping: pose, velocity, uncertainty and tracking state from the engine's results
(pure numpy, no ROS).

One `OdometryTracker` serves the live node (`odom`, `status`, `/diagnostics`, `~/save_trajectory`) and the offline
result bag (`/odom`), so a bag mapped offline carries the covariances and twists the node would have published.

The model gives no calibrated pose uncertainty; what it does give is a per-pixel confidence. The fraction of
pixels that pass the confidence threshold is a usable proxy for how much geometry supports the pose, so variances
scale with its inverse, and below the "lost" fraction the pose is reported as lost with 9999 variances (rtabmap's
BAD_COVARIANCE convention), which robot_localization and Nav2 treat as "ignore". This module is the only place
that holds this covariance model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine import Trajectory, geometry
from .settings import DEFAULTS, SessionConfig

LOST_VARIANCE = 9999.0

# Values of ttt3r_ros/Status tracking_state (msg/Status.msg)
TRACKING_INITIALIZING, TRACKING_OK, TRACKING_DEGRADED, TRACKING_LOST = 0, 1, 2, 3
TRACKING_NAMES = {TRACKING_INITIALIZING: "initializing", TRACKING_OK: "ok", TRACKING_DEGRADED: "degraded",
                  TRACKING_LOST: "lost"}


def confident_fraction(confidence: np.ndarray, threshold: float) -> float:
    """Share of pixels with confidence >= threshold (NaN counts as not confident)."""
    conf = np.asarray(confidence)
    return float(np.mean(conf >= threshold)) if conf.size else 0.0


def tracking_state(fraction: float, degraded_fraction: float = DEFAULTS.tracking_degraded_fraction,
                   lost_fraction: float = DEFAULTS.tracking_lost_fraction) -> int:
    if fraction < lost_fraction:
        return TRACKING_LOST
    if fraction < degraded_fraction:
        return TRACKING_DEGRADED
    return TRACKING_OK


def pose_covariance_diagonal(fraction: float, state: int,
                             position_variance_m2: float = DEFAULTS.position_variance_m2,
                             rotation_variance_rad2: float = DEFAULTS.rotation_variance_rad2) -> list[float]:
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


@dataclass(frozen=True)
class OdometryLimits:
    """The settings the bookkeeping reads per frame (all live node parameters; offline: the table's defaults)."""
    confidence_threshold: float = DEFAULTS.confidence_threshold
    tracking_degraded_fraction: float = DEFAULTS.tracking_degraded_fraction
    tracking_lost_fraction: float = DEFAULTS.tracking_lost_fraction
    position_variance_m2: float = DEFAULTS.position_variance_m2
    rotation_variance_rad2: float = DEFAULTS.rotation_variance_rad2

    @classmethod
    def from_config(cls, config: SessionConfig) -> "OdometryLimits":
        return cls(config.confidence_threshold, config.tracking_degraded_fraction, config.tracking_lost_fraction,
                   config.position_variance_m2, config.rotation_variance_rad2)


@dataclass(frozen=True)
class OdometryEstimate:
    """What one frame's odometry message and status report: T_odom_base (4x4, REP 103 base in the odometry
    frame), twist in the base frame, diagonal covariances over (x, y, z, rot x, rot y, rot z)."""
    stamp_s: float
    t_odom_base: np.ndarray
    twist_linear_mps: np.ndarray
    twist_angular_radps: np.ndarray
    pose_covariance_diagonal: list[float]
    twist_covariance_diagonal: list[float]
    tracking_state: int
    confident_fraction: float

    @property
    def tracking_name(self) -> str:
        return TRACKING_NAMES[self.tracking_state]


class OdometryTracker:
    """Turns each processed frame into an `OdometryEstimate` and keeps the odometry trajectory (compactly: the
    engine's `Trajectory`, 104 bytes per frame). Not thread-safe: callers that read `trajectory` from another
    thread hold their own lock around `update` and `reset`."""

    def __init__(self) -> None:
        self.trajectory = Trajectory()   # (stamp_s, T_odom_base) of every frame since the last reset
        self._previous: tuple[float, np.ndarray] | None = None   # (stamp_s, T_odom_base) of the last frame

    def update(self, stamp_s: float, t_odom_base: np.ndarray, confidence: np.ndarray | None,
               limits: OdometryLimits = OdometryLimits()) -> OdometryEstimate:
        """One frame: `t_odom_base` (FrameResult.base_in_odom), its self-view `confidence` (None: unknown, taken as
        fully confident) and the current limits."""
        t_odom_base = np.asarray(t_odom_base, dtype=np.float64)
        if confidence is None:
            fraction, state = 1.0, TRACKING_OK
        else:
            fraction = confident_fraction(confidence, limits.confidence_threshold)
            state = tracking_state(fraction, limits.tracking_degraded_fraction, limits.tracking_lost_fraction)
        pose_cov = pose_covariance_diagonal(fraction, state, limits.position_variance_m2,
                                            limits.rotation_variance_rad2)
        linear, angular, dt_s = np.zeros(3), np.zeros(3), None   # the twist is unknown until two poses exist
        if self._previous is not None and stamp_s > self._previous[0]:
            dt_s = stamp_s - self._previous[0]
            linear, angular = body_twist_from_poses(self._previous[1], t_odom_base, dt_s)
        self._previous = (stamp_s, t_odom_base)
        self.trajectory.append(stamp_s, t_odom_base)
        return OdometryEstimate(stamp_s=stamp_s, t_odom_base=t_odom_base, twist_linear_mps=linear,
                                twist_angular_radps=angular, pose_covariance_diagonal=pose_cov,
                                twist_covariance_diagonal=twist_covariance_diagonal(pose_cov, dt_s),
                                tracking_state=state, confident_fraction=fraction)

    def update_from_result(self, result: Any, stamp_s: float,
                           limits: OdometryLimits = OdometryLimits()) -> OdometryEstimate:
        """`update` from an engine FrameResult (base_in_odom and the self-view confidence)."""
        return self.update(stamp_s, np.asarray(result.base_in_odom, dtype=np.float64),
                           np.asarray(result.confidence, dtype=np.float32), limits)

    def reset(self) -> None:
        """Odometry restarts: no previous pose (the next twist is unknown), empty trajectory."""
        self._previous = None
        self.trajectory.clear()
