"""A stand-in network for engine tests: ``OracleNetwork`` returns the exact point maps and poses of known frames.

It has the model's ``initial_state`` / ``step`` signature (CONTRACTS.md). It recognises each image it is fed among
the frames it was built with (exact match of the preprocessed tensor) and returns that frame's exact camera-frame
point map and the pose relative to the first view of the current chunk, as CUT3R is trained to do, optionally
left-multiplied by a fixed ``world_offset`` (the real model's first pose is not exactly identity). Frames usually
come from ``ttt3r_ros.engine.synthetic.make_sequence`` (the box room with its ground truth).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ttt3r_ros.engine.geometry import invert_se3, matrix_to_quat_wxyz


@dataclass
class OracleState:
    """Recurrent state of the stand-in: the chunk's first frame per stream (-1: none yet) and the fresh flag."""
    anchor: torch.Tensor   # [B] int64
    fresh: torch.Tensor    # [B] bool

    # the engine's finite check (model.state.finite_streams) reads a state's `state` and `mem` tensors ([B, ...])
    @property
    def state(self) -> torch.Tensor:
        return self.anchor.to(torch.float32)[:, None]

    @property
    def mem(self) -> torch.Tensor:
        return self.fresh.to(torch.float32)[:, None]

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
