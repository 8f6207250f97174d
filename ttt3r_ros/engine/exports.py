"""File exports, all written atomically by ``ttt3r_ros.atomic_io.atomic_write`` (a temporary file in the destination
folder, fsync, then os.replace), so a crash never leaves a half-written file under the final name.

- TUM trajectory: one line per pose, ``timestamp tx ty tz qx qy qz qw`` (scalar-last quaternion).
- PLY: binary little-endian, vertex properties x, y, z (float32), red, green, blue (uchar), confidence (float32).
- Per-frame depth/confidence: ``.npy`` (float32, exact) or 16-bit PNG with documented scales:
  depth PNG = round(depth_m * 1000) (millimetres, 0 = invalid, clipped to 65535);
  confidence PNG = round(confidence * 1000) clipped to 65535 (so conf up to 65.5).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from ..atomic_io import atomic_write
from .geometry import matrix_to_quat_xyzw, quat_xyzw_to_wxyz, quat_wxyz_to_matrix

DEPTH_PNG_SCALE = 1000.0       # depth PNG value = depth in metres * 1000
CONFIDENCE_PNG_SCALE = 1000.0  # confidence PNG value = confidence * 1000

_PLY_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                       ("blue", "u1"), ("confidence", "<f4")])


# ----------------------------------------------------------------------------------------------------- TUM
def write_tum(path: str | os.PathLike, timestamps: Sequence[float], camera_to_world: Sequence[np.ndarray]) -> None:
    """TUM trajectory: ``timestamp tx ty tz qx qy qz qw`` per line (timestamps in seconds, 9 decimals)."""
    poses = np.asarray(camera_to_world, dtype=np.float64).reshape(-1, 4, 4)
    ts = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    if ts.shape[0] != poses.shape[0]:
        raise ValueError(f"write_tum: {ts.shape[0]} timestamps but {poses.shape[0]} poses")
    if not (np.all(np.isfinite(ts)) and np.all(np.isfinite(poses))):
        raise ValueError("write_tum: non-finite timestamp or pose")
    q = matrix_to_quat_xyzw(poses[:, :3, :3]) if len(poses) else np.zeros((0, 4))
    lines = [f"{t:.9f} {p[0, 3]:.9g} {p[1, 3]:.9g} {p[2, 3]:.9g} {qq[0]:.9g} {qq[1]:.9g} {qq[2]:.9g} {qq[3]:.9g}\n"
             for t, p, qq in zip(ts, poses, q)]
    text = "# timestamp tx ty tz qx qy qz qw\n" + "".join(lines)
    atomic_write(path, lambda f: f.write(text.encode()))


def read_tum(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """-> (timestamps [N], camera_to_world [N,4,4])."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 8:
                raise ValueError(f"read_tum: {path}:{n}: expected 8 columns, got {len(parts)}")
            rows.append([float(v) for v in parts])
    data = np.asarray(rows, dtype=np.float64).reshape(-1, 8)
    poses = np.tile(np.eye(4), (data.shape[0], 1, 1))
    if data.shape[0]:
        poses[:, :3, :3] = quat_wxyz_to_matrix(quat_xyzw_to_wxyz(data[:, 4:8]))
        poses[:, :3, 3] = data[:, 1:4]
    return data[:, 0], poses


# ----------------------------------------------------------------------------------------------------- PLY
def write_ply(path: str | os.PathLike, points: np.ndarray, colours_uint8: np.ndarray,
              confidences: np.ndarray | None = None) -> None:
    """Binary little-endian PLY: x y z float32, red green blue uchar, confidence float32 (1 if not given)."""
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    col = np.asarray(colours_uint8)
    if col.dtype != np.uint8:
        raise TypeError(f"write_ply: colours must be uint8, got {col.dtype}")
    col = col.reshape(-1, 3)
    conf = np.ones(len(pts), np.float32) if confidences is None else np.asarray(confidences, np.float32).reshape(-1)
    if not (len(col) == len(pts) == len(conf)):
        raise ValueError(f"write_ply: {len(pts)} points, {len(col)} colours, {len(conf)} confidences")
    rec = np.empty(len(pts), dtype=_PLY_DTYPE)
    rec["x"], rec["y"], rec["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
    rec["red"], rec["green"], rec["blue"] = col[:, 0], col[:, 1], col[:, 2]
    rec["confidence"] = conf
    header = ("ply\nformat binary_little_endian 1.0\ncomment written by ttt3r_ros\n"
              f"element vertex {len(pts)}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\n"
              "property float confidence\nend_header\n").encode("ascii")

    def _write(f):
        f.write(header)
        f.write(rec.tobytes())
    atomic_write(path, _write)


def read_ply(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a PLY written by ``write_ply`` -> (points [N,3] float32, colours [N,3] uint8, confidences [N])."""
    with open(path, "rb") as f:
        data = f.read()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise ValueError(f"read_ply: {path} is not a PLY file")
    header = data[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in header:
        raise ValueError(f"read_ply: {path}: only binary_little_endian is supported")
    n = next(int(line.split()[2]) for line in header if line.startswith("element vertex"))
    props = [line.split()[2] for line in header if line.startswith("property")]
    if props != list(_PLY_DTYPE.names):
        raise ValueError(f"read_ply: {path}: unexpected vertex properties {props}")
    body = data[end + len(b"end_header\n"):]
    if len(body) != n * _PLY_DTYPE.itemsize:
        raise ValueError(f"read_ply: {path}: truncated ({len(body)} bytes for {n} vertices)")
    rec = np.frombuffer(body, dtype=_PLY_DTYPE, count=n)
    pts = np.stack([rec["x"], rec["y"], rec["z"]], axis=1)
    col = np.stack([rec["red"], rec["green"], rec["blue"]], axis=1)
    return pts, col, rec["confidence"].copy()


# ------------------------------------------------------------------------------------------ per-frame maps
def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    arr = np.asarray(array)

    def _write(f):
        np.save(f, arr, allow_pickle=False)
    atomic_write(path, _write)


def _write_png16(path: str | os.PathLike, values_u16: np.ndarray) -> None:
    from PIL import Image

    def _write(f):
        Image.fromarray(values_u16.astype("<u2"), mode=None).save(f, format="PNG")
    atomic_write(path, _write)


def write_depth_png(path: str | os.PathLike, depth_m: np.ndarray) -> None:
    """16-bit PNG, value = round(depth_m * 1000) (mm), clipped to [0, 65535]; non-finite or <= 0 -> 0."""
    d = np.asarray(depth_m, dtype=np.float64)
    v = np.where(np.isfinite(d) & (d > 0), np.rint(d * DEPTH_PNG_SCALE), 0)
    _write_png16(path, np.clip(v, 0, 65535).astype(np.uint16))


def write_confidence_png(path: str | os.PathLike, confidence: np.ndarray) -> None:
    """16-bit PNG, value = round(confidence * 1000) clipped to [0, 65535]; non-finite -> 0."""
    c = np.asarray(confidence, dtype=np.float64)
    v = np.where(np.isfinite(c), np.rint(c * CONFIDENCE_PNG_SCALE), 0)
    _write_png16(path, np.clip(v, 0, 65535).astype(np.uint16))


def read_png16(path: str | os.PathLike, scale: float) -> np.ndarray:
    """Read a 16-bit PNG written above and divide by ``scale`` (DEPTH_PNG_SCALE or CONFIDENCE_PNG_SCALE)."""
    from PIL import Image
    with Image.open(path) as img:
        return np.asarray(img).astype(np.float64) / scale
