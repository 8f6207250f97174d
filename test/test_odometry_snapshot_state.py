"""OdometryTracker.export_state / from_state (the node's odometry in a session snapshot): a tracker rebuilt from its
exported state continues exactly like the original, across a tracking loss and its re-anchoring; malformed state
is refused by name."""
from __future__ import annotations

import numpy as np
import pytest

from ttt3r_ros.engine import geometry
from ttt3r_ros.session.odometry import OdometryLimits, OdometryTracker

LIMITS = OdometryLimits(confidence_threshold=1.5, tracking_degraded_fraction=0.5, tracking_lost_fraction=0.2)


def _frame(i: int) -> tuple[float, np.ndarray, np.ndarray]:
    """(stamp, model pose, confidence): a turning walk; frames 4-6 are lost (confidence under the threshold)."""
    rng = np.random.default_rng(i)
    pose = geometry.make_se3(_rot_z(0.05 * i), [0.1 * i, 0.02 * i * i, 0.0])
    confidence = np.full((6, 8), 1.0 if 4 <= i <= 6 else 3.0, np.float32) + rng.random((6, 8), np.float32) * 0.1
    return 100.0 + 0.1 * i, pose, confidence


def _rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("split", [0, 1, 5, 8])   # before any frame, after one, while lost, after re-anchoring
def test_a_restored_tracker_continues_exactly(split: int) -> None:
    whole, first = OdometryTracker(), OdometryTracker()
    expected = [whole.update(*_frame(i), LIMITS) for i in range(12)]
    for i in range(split):
        first.update(*_frame(i), LIMITS)
    values, arrays = first.export_state()
    resumed = OdometryTracker.from_state(values, arrays)
    assert resumed.holding == first.holding
    for i in range(split, 12):
        got = resumed.update(*_frame(i), LIMITS)
        want = expected[i]
        assert np.array_equal(got.t_odom_base, want.t_odom_base), i
        assert got.pose_covariance_diagonal == want.pose_covariance_diagonal, i
        assert got.twist_covariance_diagonal == want.twist_covariance_diagonal, i
        assert np.array_equal(got.twist_linear_mps, want.twist_linear_mps), i
        assert np.array_equal(got.twist_angular_radps, want.twist_angular_radps), i
        assert got.tracking_state == want.tracking_state and got.holding == want.holding, i
    assert np.array_equal(resumed.trajectory.poses(), whole.trajectory.poses())
    assert np.array_equal(resumed.trajectory.timestamps(), whole.trajectory.timestamps())


def test_export_is_a_copy() -> None:
    tracker = OdometryTracker()
    for i in range(3):
        tracker.update(*_frame(i), LIMITS)
    values, arrays = tracker.export_state()
    before = {k: v.copy() for k, v in arrays.items()}
    tracker.update(*_frame(3), LIMITS)
    assert all(np.array_equal(arrays[k], before[k]) for k in before)


@pytest.mark.parametrize("damage, message", [
    (lambda v, a: a.pop("correction"), "correction is missing"),
    (lambda v, a: a.__setitem__("held", np.zeros((3, 3))), "held must be a finite 4x4"),
    (lambda v, a: a.pop("previous_pose"), "previous_stamp_s and previous_pose"),
    (lambda v, a: a.pop("model_at_held"), "held and model_at_held"),
    (lambda v, a: v.pop("holding"), "holding is missing"),
    (lambda v, a: a.pop("trajectory.poses"), "trajectory.poses is missing"),
])
def test_malformed_state_is_refused_by_name(damage, message: str) -> None:
    tracker = OdometryTracker()
    for i in range(3):
        tracker.update(*_frame(i), LIMITS)
    values, arrays = tracker.export_state()
    damage(values, arrays)
    with pytest.raises(ValueError, match=message):
        OdometryTracker.from_state(values, arrays)
