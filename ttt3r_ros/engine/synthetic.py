"""A procedural synthetic scene with exact geometry (``ttt3r-ros demo`` renders it; tests use its ground truth).

The scene is the inside of a textured box room (axis-aligned, centred at the origin, OpenCV-like world axes).
``render`` ray-casts a pinhole camera: for each pixel centre (u, v) (integer coordinates, the reference's pixel
grid) the ray d = K^-1 (u, v, 1) has z = 1, so the hit distance along it is exactly the depth. Everything is numpy,
deterministic and fast (320x240 in a few ms).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .geometry import make_se3


def _rot_xyz(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    r_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    r_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return r_z @ r_y @ r_x


@dataclass
class BoxRoom:
    """Axis-aligned room [-hx,hx] x [-hy,hy] x [-hz,hz] seen from inside; walls textured by world position."""
    half_extents: tuple[float, float, float] = (2.0, 1.5, 3.0)

    def render(self, k: np.ndarray, h: int, w: int, camera_to_world: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> (rgb uint8 [h,w,3], depth [h,w] float64, points in the camera frame [h,w,3] float64)."""
        v, u = np.mgrid[0:h, 0:w].astype(np.float64)
        kinv = np.linalg.inv(k)
        d_cam = np.stack([u, v, np.ones_like(u)], axis=-1) @ kinv.T  # z = 1 for a standard K
        rgb, depth, pts_cam, _ = self.render_rays(d_cam, camera_to_world)
        return rgb, depth, pts_cam

    def render_rays(self, d_cam: np.ndarray, camera_to_world: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Any camera: per pixel its ray in the camera frame [..., 3] (z > 0; e.g. a distorted lens's rays) ->
        (rgb uint8, depth, points in the camera frame, wall index 0..5 = 2 * axis + (ray along +axis))."""
        d_cam = d_cam / d_cam[..., 2:3]
        r, o = camera_to_world[:3, :3], camera_to_world[:3, 3]
        d_w = d_cam @ r.T
        ext = np.asarray(self.half_extents)
        with np.errstate(divide="ignore", invalid="ignore"):
            t_axis = np.where(d_w > 0, (ext - o) / d_w, np.where(d_w < 0, (-ext - o) / d_w, np.inf))
        depth = t_axis.min(axis=-1)
        axis = t_axis.argmin(axis=-1)
        pts_cam = d_cam * depth[..., None]
        pts_w = o + d_w * depth[..., None]
        rgb = self._texture(pts_w, axis, d_w)
        wall = axis * 2 + (np.take_along_axis(d_w, axis[..., None], axis=-1)[..., 0] > 0)
        return rgb, depth, pts_cam, wall

    def _texture(self, p: np.ndarray, axis: np.ndarray, d_w: np.ndarray) -> np.ndarray:
        # per-wall base colour, a checkerboard (25 cm) and two smooth sinusoids so every view is distinct
        sign = np.take_along_axis(np.sign(d_w), axis[..., None], axis=-1)[..., 0] > 0
        wall = axis * 2 + sign
        base = np.array([[200, 80, 60], [60, 160, 200], [90, 190, 90], [210, 200, 80], [160, 90, 200],
                         [120, 120, 120]], np.float64)[wall]
        checker = (np.floor(p[..., 0] / 0.25) + np.floor(p[..., 1] / 0.25) + np.floor(p[..., 2] / 0.25)) % 2
        wave = np.sin(3.1 * p[..., 0] + 1.7 * p[..., 2]) * np.cos(2.3 * p[..., 1] - 0.9 * p[..., 0])
        shade = 0.55 + 0.3 * checker + 0.15 * wave
        return np.clip(base * shade[..., None], 0, 255).astype(np.uint8)

    def surface_distance(self, points_world: np.ndarray) -> np.ndarray:
        """Distance of each point to the nearest wall (0 on the surface)."""
        ext = np.asarray(self.half_extents)
        p = np.asarray(points_world, dtype=np.float64)
        inside_gap = np.min(ext - np.abs(p), axis=-1)       # >0 inside, distance to nearest wall
        outside = np.linalg.norm(np.maximum(np.abs(p) - ext, 0), axis=-1)
        return np.where(outside > 0, outside, np.abs(inside_gap))


def camera_path(n_frames: int, start_offset: bool = True) -> np.ndarray:
    """A smooth camera path inside the room: forward drift, lateral sway, yaw/pitch/roll wobble. [n,4,4] c2w.

    The first pose is deliberately not the identity (``start_offset``) so tests catch a missing normalisation.
    """
    poses = []
    for i in range(n_frames):
        s = i / max(n_frames - 1, 1)
        pos = np.array([0.4 * np.sin(2 * np.pi * s), 0.15 * np.sin(4 * np.pi * s), -0.8 + 1.2 * s])
        rot = _rot_xyz(0.08 * np.sin(2 * np.pi * s), 0.35 * np.sin(np.pi * s), 0.05 * np.cos(3 * np.pi * s))
        if start_offset:
            pos = pos + np.array([0.1, -0.05, 0.0])
            rot = _rot_xyz(0.02, 0.1, -0.03) @ rot
        poses.append(make_se3(rot, pos))
    return np.stack(poses)


def pinhole(focal: float, h: int, w: int) -> np.ndarray:
    """Intrinsics with the reference principal point (W//2, H//2)."""
    return np.array([[focal, 0.0, w // 2], [0.0, focal, h // 2], [0.0, 0.0, 1.0]])


@dataclass
class SyntheticSequence:
    images: np.ndarray          # [T,h,w,3] uint8
    depth: np.ndarray           # [T,h,w]
    points_camera: np.ndarray   # [T,h,w,3]
    camera_to_world: np.ndarray  # [T,4,4] ground truth in the room frame
    intrinsics: np.ndarray      # [3,3]
    timestamps: np.ndarray      # [T] seconds
    room: BoxRoom = field(default_factory=BoxRoom)


def make_sequence(n_frames: int = 8, h: int = 48, w: int = 64, focal: float | None = None, fps: float = 10.0,
                  room: BoxRoom | None = None, intrinsics: np.ndarray | None = None) -> SyntheticSequence:
    """Render ``n_frames`` of the box room along ``camera_path``."""
    room = room or BoxRoom()
    k = intrinsics if intrinsics is not None else pinhole(focal if focal is not None else 0.9 * w, h, w)
    poses = camera_path(n_frames)
    imgs, depths, pts = [], [], []
    for p in poses:
        rgb, d, pc = room.render(k, h, w, p)
        imgs.append(rgb)
        depths.append(d)
        pts.append(pc)
    return SyntheticSequence(images=np.stack(imgs), depth=np.stack(depths), points_camera=np.stack(pts),
                             camera_to_world=poses, intrinsics=k, timestamps=np.arange(n_frames) / fps, room=room)
