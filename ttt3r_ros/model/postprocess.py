"""Post-processing of the raw head outputs (SPEC §5.4), always in float32."""
from __future__ import annotations

import torch

__all__ = ["points_from_raw", "confidence_from_raw", "rgb_from_raw", "pose_from_raw", "quaternion_to_matrix",
           "pose_to_c2w"]


def points_from_raw(raw_xyz: torch.Tensor) -> torch.Tensor:
    """depth_mode 'exp': v / max(|v|, 1e-8) * expm1(|v|)."""
    norm = raw_xyz.norm(dim=-1, keepdim=True)
    return raw_xyz / norm.clip(min=1e-8) * torch.expm1(norm)


def confidence_from_raw(raw: torch.Tensor, vmin: float, vmax: float) -> torch.Tensor:
    """conf_mode ('exp', vmin, vmax): vmin + exp(raw), clipped at vmax - vmin."""
    return vmin + raw.exp().clip(max=vmax - vmin)


def rgb_from_raw(raw: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RGB head: sigmoid squeezed into (eps, 1-eps), mapped to [-1, 1]."""
    rgb = torch.sigmoid(raw)
    rgb = rgb * (1 - 2 * eps) + eps
    return (rgb - 0.5) * 2


def pose_from_raw(raw: torch.Tensor) -> torch.Tensor:
    """[B, 7] raw -> camera_pose (tx, ty, tz, qw, qx, qy, qz): expm1 translation norm, unit quaternion, qw >= 0."""
    trans, quat = raw[:, :3], raw[:, 3:7]
    trans = points_from_raw(trans)
    quat = quat / quat.norm(dim=-1, keepdim=True)
    quat = torch.where(quat[:, 0:1] < 0, -quat, quat)
    return torch.cat([trans, quat], dim=-1)


def quaternion_to_matrix(quat_wxyz: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 3, 3] from scalar-first quaternions (Hamilton convention)."""
    r, i, j, k = torch.unbind(quat_wxyz, -1)
    two_s = 2.0 / (quat_wxyz * quat_wxyz).sum(-1)
    matrix = torch.stack((
        1 - two_s * (j * j + k * k), two_s * (i * j - k * r), two_s * (i * k + j * r),
        two_s * (i * j + k * r), 1 - two_s * (i * i + k * k), two_s * (j * k - i * r),
        two_s * (i * k - j * r), two_s * (j * k + i * r), 1 - two_s * (i * i + j * j),
    ), -1)
    return matrix.reshape(quat_wxyz.shape[:-1] + (3, 3))


def pose_to_c2w(camera_pose: torch.Tensor) -> torch.Tensor:
    """camera_pose [B, 7] -> camera-to-world [B, 4, 4] (OpenCV camera axes)."""
    batch = camera_pose.shape[0]
    c2w = torch.zeros(batch, 4, 4, dtype=camera_pose.dtype, device=camera_pose.device)
    c2w[:, :3, :3] = quaternion_to_matrix(camera_pose[:, 3:7])
    c2w[:, :3, 3] = camera_pose[:, :3]
    c2w[:, 3, 3] = 1.0
    return c2w
