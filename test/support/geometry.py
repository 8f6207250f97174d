"""Geometry used only by tests: reference transcriptions and axis-convention helpers (the production conventions
live in ttt3r_ros.engine.geometry; these are written on top of them)."""
from __future__ import annotations

import numpy as np

from ttt3r_ros.engine.geometry import (R_BODY_FROM_OPTICAL, T_BODY_FROM_OPTICAL, invert_se3, odom_from_camera,
                                       quat_wxyz_to_matrix)


def pose7_wxyz_to_matrix(pose: np.ndarray) -> np.ndarray:
    """Model `camera_pose` (tx, ty, tz, qw, qx, qy, qz) -> 4x4. Works on [..., 7]."""
    pose = np.asarray(pose, dtype=np.float64)
    out = np.zeros(pose.shape[:-1] + (4, 4))
    out[..., :3, :3] = quat_wxyz_to_matrix(pose[..., 3:7])
    out[..., :3, 3] = pose[..., :3]
    out[..., 3, 3] = 1.0
    return out


def optical_to_body(t_optical: np.ndarray) -> np.ndarray:
    """A motion expressed with optical axes on both sides -> the same motion with REP 103 body axes.

    Same as ``odom_from_camera`` with a pure axis-swap mounting (camera at the base origin, looking along x).
    """
    return odom_from_camera(T_BODY_FROM_OPTICAL, t_optical)


def body_to_optical(t_body: np.ndarray) -> np.ndarray:
    """Inverse of ``optical_to_body``: a motion in REP 103 body axes -> the same motion in optical axes."""
    return odom_from_camera(invert_se3(T_BODY_FROM_OPTICAL), t_body)


def optical_points_to_body(points: np.ndarray) -> np.ndarray:
    """Points [..., 3] in optical axes -> the same points in REP 103 body axes."""
    return np.asarray(points) @ R_BODY_FROM_OPTICAL.T


def chain_demo_poses(c2w_views: np.ndarray, reset_flags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference demo's chunk chaining (SPEC §6.3), from per-view poses of the streaming loop.

    ``c2w_views``: [T, 4, 4] poses of every processed view (including the overlap copies); ``reset_flags``: [T].
    Drops every view whose predecessor is reset-flagged, then walks the kept views with a running base B
    (identity at start): pose = B @ c2w; after a flagged view, B <- B @ c2w(that view).
    Returns (kept view indices [K], chained poses [K, 4, 4]).
    """
    c2w_views = np.asarray(c2w_views, dtype=np.float64)
    flags = np.asarray(reset_flags).astype(bool)
    kept = [t for t in range(len(flags)) if not (t > 0 and flags[t - 1])]
    base = np.eye(4)
    chained = []
    for t in kept:
        chained.append(base @ c2w_views[t])
        if flags[t]:
            base = base @ c2w_views[t]
    return np.asarray(kept, dtype=np.int64), np.stack(chained) if chained else np.zeros((0, 4, 4))
