"""The synthetic box room (ttt3r_ros.engine.synthetic) as the engine tests use it: the standard sequence, the
stand-in network that returns its exact point maps, and its ground truth in the engine's first-camera frame."""
from __future__ import annotations

import numpy as np
import torch

from support.oracle import OracleNetwork
from ttt3r_ros.engine import geometry
from ttt3r_ros.engine.preprocess import preprocess_pil
from ttt3r_ros.engine.synthetic import SyntheticSequence, _rot_xyz, make_sequence

MODEL_SIZE = 64  # the long side the engine tests run the stand-in at; the standard sequence is rendered at it
# The real model's first pose is not exactly the identity: a stand-in given this offset checks the engine does not
# assume it is.
WORLD_OFFSET = geometry.make_se3(_rot_xyz(0.05, -0.1, 0.02), [0.02, -0.03, 0.01])


def box_room_sequence() -> SyntheticSequence:
    """The standard sequence: 10 frames, 48x64 (model resolution), focal 50 px."""
    return make_sequence(10, 48, MODEL_SIZE, focal=50.0)


def oracle_for(seq: SyntheticSequence, size: int = MODEL_SIZE, world_offset: np.ndarray | None = None,
               intrinsics_model: np.ndarray | None = None) -> OracleNetwork:
    """Stand-in network for a sequence rendered at model resolution (or re-rendered at it via intrinsics_model)."""
    imgs = torch.cat([preprocess_pil(im, size).images for im in seq.images])
    if intrinsics_model is None:
        pts = seq.points_camera
    else:
        h, w = imgs.shape[2:]
        pts = np.stack([seq.room.render(intrinsics_model, h, w, p)[2] for p in seq.camera_to_world])
    return OracleNetwork(imgs, pts, seq.camera_to_world, world_offset=world_offset)


def relative_ground_truth(seq: SyntheticSequence) -> np.ndarray:
    """[N, 4, 4] true camera-to-world poses relative to the first camera (the engine's odometry frame)."""
    return np.linalg.inv(seq.camera_to_world[0]) @ seq.camera_to_world
