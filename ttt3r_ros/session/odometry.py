"""Per-frame odometry bookkeeping: pose, velocity, uncertainty and tracking state from the engine's results
(pure numpy, no ROS).

One `OdometryTracker` serves the live node (`odom`, TF, `status`, `/diagnostics`, `~/save_trajectory`) and the
offline result bag (`/odom`, `/tf`), so a bag mapped offline carries the poses, covariances and twists the node
would have published. This module is the only place that holds the covariance model and the lost-tracking rule.

Tracking state. The model gives no calibrated pose uncertainty; what it does give is a per-pixel confidence. The
fraction of pixels that pass the confidence threshold is a usable proxy for how much geometry supports the pose:
below `tracking_degraded_fraction` tracking is DEGRADED, below `tracking_lost_fraction` it is LOST.

Pose covariance (random walk, REP 105: odom drifts). The published pose is the sum of per-frame increments, each
with an error independent of the others, so its variance grows with the path since the odometry origin:
    position variance += translation_noise_m_per_sqrt_m**2 * |increment translation m| / confident fraction
    rotation variance += rotation_noise_rad_per_sqrt_rad**2 * |increment angle rad| / confident fraction
starting from `position_variance_m2` / `rotation_variance_rad2` at the origin (so it is never zero). The sigma
after d metres is therefore noise * sqrt(d) (defaults: 3 cm after 1 m, 30 cm after 100 m), independent of the frame
rate. A model-state reset (`~/reset`, `reset_interval`) keeps the pose and its variance (the pose continues);
only an odometry restart (`OdometryTracker.reset`) starts the growth again. Every axis gets the same variance
(the model tells nothing about direction).

Twist covariance. The twist is one frame's increment over its dt, so its variance is that increment's variance
(the terms above) over dt**2, clamped to [TWIST_SIGMA_FLOOR, TWIST_SIGMA_CEILING]: about 0.1 m/s for 0.5 m/s at
30 Hz with the defaults, not the 2*var/dt**2 of two absolute poses (which made sigma ~4 m/s). Unknown (first frame,
stamps not increasing, the frame after a loss) -> 9999.

Lost tracking (Nav2 consumes TF, not covariance). While LOST, the published pose holds the last good one (no
jumps), with 9999 pose and twist variances (rtabmap's BAD_COVARIANCE convention: robot_localization and Nav2 treat
it as "ignore"). When tracking returns, the first good frame is placed at the held pose and later frames add the
model's motion relative to that frame: the model's own pose is not trusted across the gap (it may have diverged),
so the motion during the loss is dropped, and its size is added to the variances (we do not know whether it was
real). Before any good frame, the first frame's pose (the odometry origin) is what is held.

Model-state resets (`~/reset`, the precision guard's model swap): the engine starts a new chunk at its last pose,
but the model's first pose in a chunk is only nearly the identity, so its pose can jump at the boundary. The frame
that starts the chunk (`new_chunk`, FrameResult.was_reset) is re-anchored like a frame after a loss: odometry goes on
from the last good pose without a jump (REP 105), the jump becomes uncertainty, the twist across it is unknown.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

import numpy as np

from ..engine import Trajectory, geometry
from .settings import DEFAULTS, SessionConfig

LOST_VARIANCE = 9999.0
# Below this stamp difference a finite-difference twist is noise divided by ~0 (two stamps 1 ns apart gave
# 7.7e7 m/s): the twist is reported unknown (zero, 9999 covariance) instead. 1 ms = a 1 kHz camera.
MIN_TWIST_DT_S = 1e-3
# The twist sigma never goes below this (a still camera still has frame-to-frame jitter in the model's pose)
# nor above the ceiling (one frame's increment is bounded by what a camera can move in one frame; a larger sigma
# only says "unreliable", which 9999 says when it is unknown).
TWIST_SIGMA_FLOOR_MPS, TWIST_SIGMA_FLOOR_RADPS = 0.01, 0.01
TWIST_SIGMA_CEILING_MPS, TWIST_SIGMA_CEILING_RADPS = 10.0, 10.0
# A confident fraction below this is taken as this when scaling the increments (LOST is below it anyway).
_MIN_FRACTION = 1e-3

# Values of ttt3r_ros/Status tracking_state (msg/Status.msg)
TRACKING_INITIALIZING, TRACKING_OK, TRACKING_DEGRADED, TRACKING_LOST = 0, 1, 2, 3
TRACKING_NAMES = {TRACKING_INITIALIZING: "initializing", TRACKING_OK: "ok", TRACKING_DEGRADED: "degraded",
                  TRACKING_LOST: "lost"}
HOLDING_TEXT = "holding last good pose"


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


@dataclass(frozen=True)
class OdometryLimits:
    """The settings the bookkeeping reads per frame (all live node parameters; offline: the table's defaults)."""
    confidence_threshold: float = DEFAULTS.confidence_threshold
    tracking_degraded_fraction: float = DEFAULTS.tracking_degraded_fraction
    tracking_lost_fraction: float = DEFAULTS.tracking_lost_fraction
    position_variance_m2: float = DEFAULTS.position_variance_m2
    rotation_variance_rad2: float = DEFAULTS.rotation_variance_rad2
    translation_noise_m_per_sqrt_m: float = DEFAULTS.translation_noise_m_per_sqrt_m
    rotation_noise_rad_per_sqrt_rad: float = DEFAULTS.rotation_noise_rad_per_sqrt_rad

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "OdometryLimits":
        """The limits among `values` (e.g. the node's live parameters, or a SessionConfig's fields); missing
        names keep the table's defaults."""
        return cls(**{f.name: float(values[f.name]) for f in fields(cls) if f.name in values})

    @classmethod
    def from_config(cls, config: SessionConfig) -> "OdometryLimits":
        return cls.from_values({f.name: getattr(config, f.name) for f in fields(cls)})


@dataclass(frozen=True)
class IncrementVariance:
    """Variances (m^2, rad^2) of one frame's pose increment under the random-walk model."""
    translation_m2: float
    rotation_rad2: float


def increment_variance(delta: np.ndarray, fraction: float, limits: OdometryLimits) -> IncrementVariance:
    """The random-walk variance of the increment `delta` (4x4, motion in the previous base frame) of a frame whose
    confident fraction is `fraction`: noise**2 * size / fraction (see the module docstring)."""
    scale = 1.0 / max(fraction, _MIN_FRACTION)
    distance_m = float(np.linalg.norm(delta[:3, 3]))
    angle_rad = geometry.rotation_angle_rad(delta[:3, :3])
    return IncrementVariance(limits.translation_noise_m_per_sqrt_m ** 2 * distance_m * scale,
                             limits.rotation_noise_rad_per_sqrt_rad ** 2 * angle_rad * scale)


def twist_covariance_diagonal(increment: IncrementVariance | None, dt_s: float | None) -> list[float]:
    """(vx, vy, vz, wx, wy, wz) variances of a velocity that is one increment over dt_s: the increment's variance
    / dt^2, clamped to the sigma floor and ceiling; 9999 while unknown (`increment` None, dt unknown or below
    MIN_TWIST_DT_S)."""
    if increment is None or dt_s is None or not dt_s >= MIN_TWIST_DT_S:
        return [LOST_VARIANCE] * 6
    linear = min(max(increment.translation_m2 / dt_s ** 2, TWIST_SIGMA_FLOOR_MPS ** 2), TWIST_SIGMA_CEILING_MPS ** 2)
    angular = min(max(increment.rotation_rad2 / dt_s ** 2, TWIST_SIGMA_FLOOR_RADPS ** 2),
                  TWIST_SIGMA_CEILING_RADPS ** 2)
    return [linear] * 3 + [angular] * 3


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
class OdometryEstimate:
    """What one frame's odometry message, TF and status report: t_odom_base (4x4, REP 103 base in the odometry
    frame; the held pose while lost), twist in the base frame, diagonal covariances over (x, y, z, rot x, rot y,
    rot z). `holding`: the pose is the last good one held while tracking is lost; `model_t_odom_base`: the
    engine's own pose for this frame (what it said, before the hold and re-anchoring)."""
    stamp_s: float
    t_odom_base: np.ndarray
    twist_linear_mps: np.ndarray
    twist_angular_radps: np.ndarray
    pose_covariance_diagonal: list[float]
    twist_covariance_diagonal: list[float]
    tracking_state: int
    confident_fraction: float
    holding: bool = False
    model_t_odom_base: np.ndarray | None = None

    @property
    def tracking_name(self) -> str:
        return TRACKING_NAMES[self.tracking_state]

    @property
    def summary(self) -> str:
        """One line for status and diagnostics, e.g. 'lost; holding last good pose; confident 0.01'."""
        hold = f"; {HOLDING_TEXT}" if self.holding else ""
        return f"{self.tracking_name}{hold}; confident {self.confident_fraction:.2f}"


class OdometryTracker:
    """Turns each processed frame into an `OdometryEstimate` (hold while lost, re-anchor after, random-walk
    covariance; module docstring) and keeps the published trajectory (compactly: the engine's `Trajectory`,
    104 bytes per frame). Not thread-safe: callers that read `trajectory` from another thread hold their own
    lock around `update` and `reset`."""

    def __init__(self) -> None:
        self.trajectory = Trajectory()   # (stamp_s, published T_odom_base) of every frame since the last reset
        self.reset()

    def reset(self) -> None:
        """Odometry restarts (the engine restarted at identity): no previous pose (the next twist is unknown),
        no held pose, the variance growth starts over, empty trajectory. A model-state reset that keeps the pose
        (the engine's default) needs no call here: the pose, its variance and the twist continue."""
        self._previous: tuple[float, np.ndarray] | None = None   # (stamp_s, published pose) of the last good frame
        self._held: np.ndarray | None = None          # the pose published while lost (last good, or the origin)
        self._model_at_held: np.ndarray | None = None  # the model's pose at that frame
        self._correction = np.eye(4)   # T_published_model: identity until a re-anchoring after a loss
        self._holding = False
        self._position_growth_m2 = 0.0   # accumulated random-walk variances since the origin
        self._rotation_growth_rad2 = 0.0
        self.trajectory.clear()

    @property
    def holding(self) -> bool:
        """True while tracking is lost and the last good pose is held."""
        return self._holding

    # Poses of the bookkeeping a snapshot carries (4x4 float64; absent = None: before the first frame, or no
    # previous good frame for the twist)
    STATE_POSES = ("previous_pose", "held", "model_at_held", "correction")

    def export_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON values, float64 arrays) of everything the next `update` depends on, and the trajectory, for a
        session snapshot (session/snapshot.py); `from_state` continues exactly."""
        previous = self._previous
        poses = {"previous_pose": None if previous is None else previous[1], "held": self._held,
                 "model_at_held": self._model_at_held, "correction": self._correction}
        arrays = {name: np.array(pose, dtype=np.float64) for name, pose in poses.items() if pose is not None}
        arrays.update({f"trajectory.{k}": v for k, v in self.trajectory.export_arrays().items()})
        values = {"previous_stamp_s": None if previous is None else float(previous[0]), "holding": self._holding,
                  "position_growth_m2": self._position_growth_m2, "rotation_growth_rad2": self._rotation_growth_rad2}
        return values, arrays

    @classmethod
    def from_state(cls, values: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> "OdometryTracker":
        """A new tracker from `export_state`'s output; ValueError naming what is missing or malformed."""
        tracker = cls()
        poses: dict[str, np.ndarray | None] = {}
        for name in cls.STATE_POSES:
            pose = arrays.get(name)
            if pose is not None:
                pose = np.array(pose, dtype=np.float64)
                if pose.shape != (4, 4) or not np.all(np.isfinite(pose)):
                    raise ValueError(f"odometry state: {name} must be a finite 4x4, got shape {pose.shape}")
            poses[name] = pose
        if poses["correction"] is None:
            raise ValueError("odometry state: correction is missing")
        if (values.get("previous_stamp_s") is None) != (poses["previous_pose"] is None):
            raise ValueError("odometry state: previous_stamp_s and previous_pose must both be present or absent")
        if (poses["held"] is None) != (poses["model_at_held"] is None):
            raise ValueError("odometry state: held and model_at_held must both be present or absent")
        try:
            tracker.trajectory = Trajectory.from_arrays({k: np.asarray(arrays[f"trajectory.{k}"])
                                                         for k in ("timestamps", "poses")})
            previous_stamp = values.get("previous_stamp_s")
            tracker._previous = None if previous_stamp is None else (float(previous_stamp), poses["previous_pose"])
            tracker._held, tracker._model_at_held = poses["held"], poses["model_at_held"]
            tracker._correction = poses["correction"]
            tracker._holding = bool(values["holding"])
            tracker._position_growth_m2 = float(values["position_growth_m2"])
            tracker._rotation_growth_rad2 = float(values["rotation_growth_rad2"])
        except KeyError as err:
            raise ValueError(f"odometry state: {err.args[0]} is missing") from None
        return tracker

    def update(self, stamp_s: float, t_odom_base: np.ndarray, confidence: np.ndarray | None,
               limits: OdometryLimits = OdometryLimits(), new_chunk: bool = False) -> OdometryEstimate:
        """One frame: the engine's `t_odom_base` (FrameResult.base_in_odom), its self-view `confidence` (None:
        unknown, taken as fully confident), the current limits, and whether it starts a new model chunk after a
        reset (FrameResult.was_reset: then it continues from the last good pose; module docstring)."""
        t_model = np.asarray(t_odom_base, dtype=np.float64)
        if confidence is None:
            fraction, state = 1.0, TRACKING_OK
        else:
            fraction = confident_fraction(confidence, limits.confidence_threshold)
            state = tracking_state(fraction, limits.tracking_degraded_fraction, limits.tracking_lost_fraction)
        if self._held is None:   # the first frame since the origin: what is held until a good frame comes
            self._held, self._model_at_held = self._correction @ t_model, t_model
        elif new_chunk:
            self._holding = True   # re-anchored at the held (last good) pose by the first good frame
            self._previous = None  # the twist across the chunk boundary is unknown

        if state == TRACKING_LOST:
            self._holding = True
            self._previous = None   # the twist across the loss is unknown
            published = self._held.copy()
            self.trajectory.append(stamp_s, published)
            return OdometryEstimate(stamp_s=stamp_s, t_odom_base=published, twist_linear_mps=np.zeros(3),
                                    twist_angular_radps=np.zeros(3), pose_covariance_diagonal=[LOST_VARIANCE] * 6,
                                    twist_covariance_diagonal=[LOST_VARIANCE] * 6, tracking_state=state,
                                    confident_fraction=fraction, holding=True, model_t_odom_base=t_model)

        if self._holding:
            # Re-anchor (after a loss or at a new chunk): this frame sits at the held pose; the model's motion across
            # the gap is dropped and its size becomes uncertainty.
            dropped = geometry.invert_se3(self._model_at_held) @ t_model
            self._position_growth_m2 += float(np.sum(dropped[:3, 3] ** 2))
            self._rotation_growth_rad2 += geometry.rotation_angle_rad(dropped[:3, :3]) ** 2
            self._correction = self._held @ geometry.invert_se3(t_model)
            self._holding = False
        published = self._correction @ t_model

        increment = None
        linear, angular, dt_s = np.zeros(3), np.zeros(3), None   # the twist is unknown until two poses exist
        if self._previous is not None:
            increment = increment_variance(geometry.invert_se3(self._previous[1]) @ published, fraction, limits)
            self._position_growth_m2 += increment.translation_m2
            self._rotation_growth_rad2 += increment.rotation_rad2
            if stamp_s - self._previous[0] >= MIN_TWIST_DT_S:   # closer stamps: the twist stays unknown
                dt_s = stamp_s - self._previous[0]
                linear, angular = body_twist_from_poses(self._previous[1], published, dt_s)
        self._previous = (stamp_s, published)
        self._held, self._model_at_held = published, t_model
        self.trajectory.append(stamp_s, published)
        position = limits.position_variance_m2 + self._position_growth_m2
        rotation = limits.rotation_variance_rad2 + self._rotation_growth_rad2
        return OdometryEstimate(stamp_s=stamp_s, t_odom_base=published, twist_linear_mps=linear,
                                twist_angular_radps=angular,
                                pose_covariance_diagonal=[position] * 3 + [rotation] * 3,
                                twist_covariance_diagonal=twist_covariance_diagonal(increment, dt_s),
                                tracking_state=state, confident_fraction=fraction, holding=False,
                                model_t_odom_base=t_model)

    def update_from_result(self, result: Any, stamp_s: float,
                           limits: OdometryLimits = OdometryLimits()) -> OdometryEstimate:
        """`update` from an engine FrameResult (base_in_odom and the self-view confidence)."""
        return self.update(stamp_s, np.asarray(result.base_in_odom, dtype=np.float64),
                           np.asarray(result.confidence, dtype=np.float32), limits, new_chunk=bool(result.was_reset))
