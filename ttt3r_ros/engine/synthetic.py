"""A procedural synthetic scene with exact geometry, and a stand-in network that returns its exact point maps.

The scene is the inside of a textured box room (axis-aligned, centred at the origin, OpenCV-like world axes).
``render`` ray-casts a pinhole camera: for each pixel centre (u, v) (integer coordinates, the reference's pixel
grid) the ray d = K^-1 (u, v, 1) has z = 1, so the hit distance along it is exactly the depth. Everything is numpy,
deterministic and fast (320x240 in a few ms).

``OracleNetwork`` has the model's ``initial_state`` / ``step`` signature (CONTRACTS.md). It recognises each image it
is fed among the frames it was built with (exact match of the preprocessed tensor) and returns that frame's exact
camera-frame point map and the pose relative to the first view of the current chunk, as CUT3R is trained to do,
optionally left-multiplied by a fixed ``world_offset`` (the real model's first pose is not exactly identity).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .geometry import invert_se3, make_se3, matrix_to_quat_wxyz


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
        return rgb, depth, pts_cam

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


# ------------------------------------------------------------------------------------------ stand-in network
@dataclass
class OracleState:
    """Recurrent state of the stand-in: the chunk's first frame per stream (-1: none yet) and the fresh flag."""
    anchor: torch.Tensor   # [B] int64
    fresh: torch.Tensor    # [B] bool

    def clone(self) -> "OracleState":
        return OracleState(self.anchor.clone(), self.fresh.clone())

    def select(self, i: int) -> "OracleState":
        return OracleState(self.anchor[i:i + 1].clone(), self.fresh[i:i + 1].clone())

    @staticmethod
    def stack(states: list["OracleState"]) -> "OracleState":
        return OracleState(torch.cat([s.anchor for s in states]), torch.cat([s.fresh for s in states]))


@dataclass
class OracleOutput:
    pts3d_in_self_view: torch.Tensor
    conf_self: torch.Tensor
    camera_pose: torch.Tensor
    c2w: torch.Tensor
    update_rate: torch.Tensor
    gate: torch.Tensor
    pts3d_in_other_view: torch.Tensor | None = None
    conf: torch.Tensor | None = None
    rgb: torch.Tensor | None = None


class OracleNetwork:
    """Stand-in for ``TTT3RModel`` returning the exact point maps and chunk-relative poses of known frames.

    ``images``: [T,3,h,w] preprocessed frames (exactly what the engine will feed); ``points_camera`` [T,h,w,3];
    ``camera_to_world`` [T,4,4]; ``confidence`` [T,h,w] or None (then 5.0 everywhere except a left band of 1.5,
    so a threshold has something to reject). ``world_offset``: fixed 4x4 left-multiplied on every output pose.
    """

    def __init__(self, images: torch.Tensor, points_camera, camera_to_world, confidence=None,
                 world_offset: np.ndarray | None = None, state_tokens: int = 4, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.images = torch.as_tensor(images, dtype=torch.float32).to(self.device)
        self.points = torch.as_tensor(np.asarray(points_camera), dtype=torch.float32).to(self.device)
        self.poses = np.asarray(camera_to_world, dtype=np.float64)
        t, h, w = self.points.shape[:3]
        if confidence is None:
            conf = torch.full((t, h, w), 5.0)
            conf[:, :, : max(1, w // 8)] = 1.5
        else:
            conf = torch.as_tensor(np.asarray(confidence), dtype=torch.float32)
        self.conf = conf.to(self.device)
        self.world_offset = np.eye(4) if world_offset is None else np.asarray(world_offset, dtype=np.float64)
        self.state_tokens = state_tokens
        self.calls = 0
        self.views = 0
        # cheap fingerprint to find the frame: a strided subsample of each image
        self._fp = self.images.flatten(1)[:, ::7]

    def initial_state(self, batch_size: int = 1) -> OracleState:
        return OracleState(torch.full((batch_size,), -1, dtype=torch.int64), torch.ones(batch_size, dtype=torch.bool))

    def identify(self, images: torch.Tensor) -> list[int]:
        fp = images.to(self.device, torch.float32).flatten(1)[:, ::7]
        idx = []
        for row in fp:
            err = (self._fp - row).abs().amax(dim=1)
            i = int(err.argmin())
            if float(err[i]) > 1e-6 or not torch.equal(self.images[i], images[len(idx)].to(self.device)):
                raise ValueError("OracleNetwork: image is not one of the frames this stand-in was built with")
            idx.append(i)
        return idx

    def step(self, images: torch.Tensor, state: OracleState, update_rule: str = "ttt3r", reset=None, update=None,
             heads=("self", "cross", "rgb"), return_intermediates: bool = False):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"OracleNetwork.step: images must be [B,3,H,W], got {tuple(images.shape)}")
        b = images.shape[0]
        if state.anchor.shape[0] != b:
            raise ValueError(f"OracleNetwork.step: state batch {state.anchor.shape[0]} != images batch {b}")
        self.calls += 1
        self.views += b
        idx = self.identify(images)
        anchor, fresh = state.anchor.clone(), state.fresh.clone()
        upd = torch.ones(b, dtype=torch.bool) if update is None else update.cpu().bool()
        rst = torch.zeros(b, dtype=torch.bool) if reset is None else reset.cpu().bool()
        c2w = np.zeros((b, 4, 4))
        rate = torch.empty(b, self.state_tokens)
        for j, i in enumerate(idx):
            a = i if bool(fresh[j]) else int(anchor[j])
            c2w[j] = self.world_offset @ invert_se3(self.poses[a]) @ self.poses[i]
            # a varying gate (exactly 1 on the first view of a chunk, as the real rule)
            rate[j] = 1.0 if bool(fresh[j]) else torch.linspace(0.1, 0.9, self.state_tokens) * (0.5 + 0.5 * (i % 2))
            if bool(upd[j]):
                anchor[j], fresh[j] = a, False
            if bool(rst[j]):
                anchor[j], fresh[j] = -1, True
        q = matrix_to_quat_wxyz(c2w[:, :3, :3])
        pose7 = np.concatenate([c2w[:, :3, 3], q], axis=1)
        out = OracleOutput(
            pts3d_in_self_view=self.points[idx].clone(), conf_self=self.conf[idx].clone(),
            camera_pose=torch.as_tensor(pose7, dtype=torch.float32, device=self.device),
            c2w=torch.as_tensor(c2w, dtype=torch.float32, device=self.device),
            update_rate=rate.to(self.device), gate=rate.to(self.device))
        return out, OracleState(anchor, fresh)
