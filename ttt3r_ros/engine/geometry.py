"""Frame conventions and small geometry helpers: the ONE place that owns axes and quaternion orders.

Conventions used throughout ttt3r_ros:
- Camera poses from the model are camera-to-world 4x4 matrices in OpenCV *optical* axes
  (x right, y down, z forward). The model's quaternions are scalar-first (w, x, y, z).
- ROS messages and TUM files are scalar-last (x, y, z, w).
- ROS body frames follow REP 103 (x forward, y left, z up). A vector given in optical axes is expressed in body
  axes by ``R_BODY_FROM_OPTICAL @ v``.
- Pixel coordinates: pixel centres sit at integer coordinates (OpenCV / the reference's pixel grid), so a resize
  by factor s maps u -> (u + 0.5) * s - 0.5 and a crop with offset x0 maps u -> u - x0.

All functions take numpy arrays (float64 recommended) unless they say otherwise; the focal estimator is torch so it
runs on the device that holds the point map.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

# Rotation taking optical-axis coordinates to REP 103 body-axis coordinates:
# optical z (forward) -> body x, optical x (right) -> body -y, optical y (down) -> body -z.
R_BODY_FROM_OPTICAL = np.array([[0.0, 0.0, 1.0],
                                [-1.0, 0.0, 0.0],
                                [0.0, -1.0, 0.0]])
T_BODY_FROM_OPTICAL = np.eye(4)
T_BODY_FROM_OPTICAL[:3, :3] = R_BODY_FROM_OPTICAL


# ----------------------------------------------------------------------------------------------- quaternions
def quat_wxyz_to_xyzw(q: np.ndarray) -> np.ndarray:
    """Scalar-first (model) -> scalar-last (ROS/TUM). Works on [..., 4]."""
    q = np.asarray(q)
    return np.concatenate([q[..., 1:4], q[..., 0:1]], axis=-1)


def quat_xyzw_to_wxyz(q: np.ndarray) -> np.ndarray:
    """Scalar-last (ROS/TUM) -> scalar-first (model). Works on [..., 4]."""
    q = np.asarray(q)
    return np.concatenate([q[..., 3:4], q[..., 0:3]], axis=-1)


def quat_wxyz_to_matrix(q: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> 3x3 rotation (Hamilton convention, normalised first). Works on [..., 4]."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    r = np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], axis=-1)
    return r.reshape(q.shape[:-1] + (3, 3))


def matrix_to_quat_wxyz(r: np.ndarray) -> np.ndarray:
    """3x3 rotation -> unit quaternion (w, x, y, z) with w >= 0 (the model's sign convention). Works on [..., 3, 3].

    Uses the largest of the four diagonal combinations for the square root (Shepperd), so it is accurate for
    every rotation, including 180 degree turns.
    """
    r = np.asarray(r, dtype=np.float64)
    batch = r.shape[:-2]
    m = r.reshape(-1, 3, 3)
    tr = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    cand = np.stack([tr, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], axis=1)
    best = np.argmax(cand, axis=1)
    q = np.empty((m.shape[0], 4))
    for case in range(4):  # 4 cases, vectorised within each
        sel = best == case
        if not np.any(sel):
            continue
        a = m[sel]
        if case == 0:
            s = np.sqrt(1.0 + tr[sel]) * 2
            q[sel] = np.stack([0.25 * s, (a[:, 2, 1] - a[:, 1, 2]) / s, (a[:, 0, 2] - a[:, 2, 0]) / s,
                               (a[:, 1, 0] - a[:, 0, 1]) / s], axis=1)
        elif case == 1:
            s = np.sqrt(1.0 + a[:, 0, 0] - a[:, 1, 1] - a[:, 2, 2]) * 2
            q[sel] = np.stack([(a[:, 2, 1] - a[:, 1, 2]) / s, 0.25 * s, (a[:, 0, 1] + a[:, 1, 0]) / s,
                               (a[:, 0, 2] + a[:, 2, 0]) / s], axis=1)
        elif case == 2:
            s = np.sqrt(1.0 + a[:, 1, 1] - a[:, 0, 0] - a[:, 2, 2]) * 2
            q[sel] = np.stack([(a[:, 0, 2] - a[:, 2, 0]) / s, (a[:, 0, 1] + a[:, 1, 0]) / s, 0.25 * s,
                               (a[:, 1, 2] + a[:, 2, 1]) / s], axis=1)
        else:
            s = np.sqrt(1.0 + a[:, 2, 2] - a[:, 0, 0] - a[:, 1, 1]) * 2
            q[sel] = np.stack([(a[:, 1, 0] - a[:, 0, 1]) / s, (a[:, 0, 2] + a[:, 2, 0]) / s,
                               (a[:, 1, 2] + a[:, 2, 1]) / s, 0.25 * s], axis=1)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[q[:, 0] < 0] *= -1
    return q.reshape(batch + (4,))


def matrix_to_quat_xyzw(r: np.ndarray) -> np.ndarray:
    """3x3 rotation -> (x, y, z, w) for ROS messages and TUM files."""
    return quat_wxyz_to_xyzw(matrix_to_quat_wxyz(r))


# ----------------------------------------------------------------------------------------------------- SE(3)
def make_se3(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = rotation
    t[:3, 3] = np.asarray(translation).reshape(3)
    return t


def invert_se3(t: np.ndarray) -> np.ndarray:
    """Inverse of rigid transforms [..., 4, 4] using the transpose (exact for rotations, no general inverse)."""
    t = np.asarray(t, dtype=np.float64)
    out = np.zeros_like(t)
    rt = np.swapaxes(t[..., :3, :3], -1, -2)
    out[..., :3, :3] = rt
    out[..., :3, 3] = -(rt @ t[..., :3, 3:4])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def transform_points(t: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 to points [..., 3]."""
    return points @ t[:3, :3].T + t[:3, 3]


def odom_from_camera(t_base_cam: np.ndarray, t_cam0_camt: np.ndarray) -> np.ndarray:
    """Odometry of the robot base from camera motion: T_odom_base = T_base_cam @ T_cam0_camt @ inv(T_base_cam).

    ``t_cam0_camt`` is the camera pose relative to the first camera (optical axes, first frame identity);
    ``t_base_cam`` is the camera's mounting in the base frame (camera optical frame -> base). The result starts
    at identity and expresses base motion in the first base frame (the odom frame).
    """
    t_base_cam = np.asarray(t_base_cam, dtype=np.float64)
    return t_base_cam @ np.asarray(t_cam0_camt, dtype=np.float64) @ invert_se3(t_base_cam)


# ------------------------------------------------------------------------------------------------ intrinsics
@dataclass(frozen=True)
class ResizeCrop:
    """How an input image became the model image: resize to (resized_w, resized_h), then crop at (x0, y0).

    ``scale_x = resized_w / input_w`` and ``scale_y = resized_h / input_h`` (after the reference's rounding, so the
    two can differ slightly). Pixel centres at integer coordinates: u_model = (u_in + 0.5) * scale_x - 0.5 - x0.
    """
    input_h: int
    input_w: int
    resized_h: int
    resized_w: int
    x0: int
    y0: int
    model_h: int
    model_w: int

    @property
    def scale_x(self) -> float:
        return self.resized_w / self.input_w

    @property
    def scale_y(self) -> float:
        return self.resized_h / self.input_h

    @property
    def input_size(self) -> tuple[int, int]:
        return (self.input_h, self.input_w)

    @property
    def model_size(self) -> tuple[int, int]:
        return (self.model_h, self.model_w)


def intrinsics_input_to_model(k_input: np.ndarray, rc: ResizeCrop) -> np.ndarray:
    """3x3 intrinsics at input resolution -> at model resolution (resize then crop; skew scaled with x)."""
    k = np.asarray(k_input, dtype=np.float64)
    out = k.copy()
    out[0, 0] = k[0, 0] * rc.scale_x
    out[0, 1] = k[0, 1] * rc.scale_x
    out[1, 1] = k[1, 1] * rc.scale_y
    out[0, 2] = (k[0, 2] + 0.5) * rc.scale_x - 0.5 - rc.x0
    out[1, 2] = (k[1, 2] + 0.5) * rc.scale_y - 0.5 - rc.y0
    return out


def intrinsics_model_to_input(k_model: np.ndarray, rc: ResizeCrop) -> np.ndarray:
    """Exact inverse of ``intrinsics_input_to_model``."""
    k = np.asarray(k_model, dtype=np.float64)
    out = k.copy()
    out[0, 0] = k[0, 0] / rc.scale_x
    out[0, 1] = k[0, 1] / rc.scale_x
    out[1, 1] = k[1, 1] / rc.scale_y
    out[0, 2] = (k[0, 2] + rc.x0 + 0.5) / rc.scale_x - 0.5
    out[1, 2] = (k[1, 2] + rc.y0 + 0.5) / rc.scale_y - 0.5
    return out


def reference_principal_point(h: int, w: int) -> tuple[float, float]:
    """The reference demo's principal point: (W//2, H//2) at model resolution (integer, no half-pixel shift)."""
    return (float(w // 2), float(h // 2))


def intrinsics_matrix(focal: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]])


@functools.lru_cache(maxsize=16)  # a few image sizes per process
def _pixel_grid(h: int, w: int, stride: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[1, h*w, 2] pixel coordinates (u, v) of the pixels u = 0, s, 2s, ... and v = 0, s, 2s, ... (s = ``stride``),
    cached per size, stride, dtype and device (a stream sees one size: built once, not every frame). Shared: never
    modify it in place."""
    ys, xs = torch.meshgrid(torch.arange(0, h * stride, stride, device=device),
                            torch.arange(0, w * stride, stride, device=device), indexing="ij")
    return torch.stack([xs, ys], dim=-1).to(dtype).view(1, -1, 2)


def estimate_focal_weiszfeld(pts3d: torch.Tensor | np.ndarray, pp: torch.Tensor | np.ndarray | tuple,
                             iterations: int = 10, pixel_stride: int = 1) -> torch.Tensor:
    """The reference demo's focal recovery (dust3r ``estimate_focal_knowing_depth``, mode 'weiszfeld').

    ``pts3d``: [B, H, W, 3] or [H, W, 3] points in the camera frame; ``pp``: principal point(s) (cx, cy), [B, 2] or
    [2]. Pixel grid u = 0..W-1, v = 0..H-1 without half-pixel offset; r = (x/z, y/z) with NaN/±inf -> 0;
    initial f = mean(r.p)/mean(r.r); ``iterations`` reweighted least-squares steps with weights
    1/max(|p - f r|, 1e-8); clipped at >= 0. Runs in the dtype/device of ``pts3d``. Returns [B] (or a 0-d tensor).

    ``pixel_stride`` 1 (default) is the reference computation, bit for bit (same torch ops on the same layouts; the
    two-element sums are written as plane additions, which torch's last-dim sum of two elements equals exactly,
    test_engine_geometry checks against the unoptimised transcription). ``pixel_stride`` k > 1 is an explicit
    approximation: the estimate uses every k-th pixel of every k-th row (at their true pixel coordinates), about
    k*k times less work; not the reference's number.
    """
    pts = torch.as_tensor(pts3d)
    single = pts.dim() == 3
    if single:
        pts = pts.unsqueeze(0)
    if pts.dim() != 4 or pts.shape[-1] != 3:
        raise ValueError(f"estimate_focal_weiszfeld: pts3d must be [B,H,W,3] or [H,W,3], got {tuple(pts.shape)}")
    if not (isinstance(pixel_stride, int) and pixel_stride >= 1):
        raise ValueError(f"estimate_focal_weiszfeld: pixel_stride must be an integer >= 1, got {pixel_stride!r}")
    if pixel_stride > 1:
        pts = pts[:, ::pixel_stride, ::pixel_stride]
    b, h, w, _ = pts.shape
    pp_t = torch.as_tensor(pp, dtype=pts.dtype, device=pts.device).reshape(-1, 2)
    if pp_t.shape[0] == 1 and b > 1:
        pp_t = pp_t.expand(b, 2)
    pixels = _pixel_grid(h, w, pixel_stride, pts.dtype, pts.device) - pp_t.view(-1, 1, 2)
    flat = pts.flatten(1, 2)
    xy_over_z = (flat[..., :2] / flat[..., 2:3]).nan_to_num_(posinf=0.0, neginf=0.0)
    # (a * b).sum(-1) over the last dim of 2 is (a*b)[..., 0] + (a*b)[..., 1] exactly; planes avoid the slow
    # size-2 reduction kernel
    prod = xy_over_z * pixels
    dot_xy_px = prod[..., 0] + prod[..., 1]
    torch.square(xy_over_z, out=prod)
    dot_xy_xy = prod[..., 0] + prod[..., 1]
    focal = dot_xy_px.mean(dim=1) / dot_xy_xy.mean(dim=1)
    residual = prod  # reused buffer [B, N, 2]
    dis = torch.empty_like(dot_xy_px)
    weighted = torch.empty_like(dot_xy_px)
    for _ in range(iterations):
        torch.mul(xy_over_z, focal.view(-1, 1, 1), out=residual)
        torch.sub(pixels, residual, out=residual)
        # the norm itself stays torch's [.., 2] last-dim kernel: its rounding differs from sqrt(x*x + y*y)
        torch.linalg.vector_norm(residual, dim=-1, out=dis)
        weight = dis.clamp_(min=1e-8).reciprocal_()
        num = torch.mul(weight, dot_xy_px, out=weighted).mean(dim=1)
        focal = num / torch.mul(weight, dot_xy_xy, out=weighted).mean(dim=1)
    focal = focal.clip(min=0.0)
    return focal[0] if single else focal


def rotation_angle_rad(r: np.ndarray) -> float:
    """Angle of a rotation matrix (robust near 0 and pi)."""
    c = (np.trace(r) - 1.0) / 2.0
    return float(math.acos(max(-1.0, min(1.0, c))))
