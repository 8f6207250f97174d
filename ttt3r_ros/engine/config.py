"""The engine's options (``EngineConfig``, validated once) and the check of a calibrated camera matrix.

``BatchedReconstructor(model, **options)`` and ``StreamingReconstructor(model, **options)`` accept the same names
as ``EngineConfig``'s fields; ``EngineConfig`` itself documents each default.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..model.update_rules import UPDATE_RULES
from . import geometry

# The update rules the engine accepts: the model's (ttt3r_ros.model.update_rules owns the list).
UPDATE_RULE_NAMES: tuple[str, ...] = tuple(UPDATE_RULES)


@dataclass
class EngineConfig:
    """Engine options (all have defaults; ``StreamingReconstructor(model, **options)`` accepts the same names).

    update_rule: 'ttt3r' (default) or 'cut3r'. reset_interval: None (never) or R >= 1 (reference demo chaining).
    size: long side of the model image (512 for the official checkpoint). confidence_threshold: map points need
    conf_self > threshold. voxel_size (m, up to the model's scale) and map_max_points: the VoxelMap.
    camera_to_base: 4x4 T_base_cam (camera optical frame -> robot base); None means a camera at the base origin
    looking along base x (the REP 103 axis swap). build_map: accumulate the voxel map in ``step``.
    map_pixel_stride: feed every k-th pixel (rows and columns) of each frame to the map (1 = all; 2 quarters the
    map's per-frame cost and loses little at voxel sizes above the pixel footprint).
    preprocess_precision: 'exact' (bit-identical to PIL) or 'fast' (float32, within 1 uint8 level) for tensor
    input. preprocess_on_device: numpy frames are uploaded as uint8 and resized on the model's device with the
    tensor path (bit-identical to PIL in 'exact' precision); None = only when the model is on CUDA.
    sync_timings: synchronise CUDA around each phase so ``timings_ms`` are device times (costs overlap).
    focal_pixel_stride: 1 (default) = the reference's Weiszfeld focal estimate on every pixel, bit for bit;
    k > 1 is an explicit opt-in approximation on every k-th pixel of every k-th row (~k*k less work; at 512x384
    k=2 moved the synthetic box room's focal by ~1e-5 relative). Only used when no calibration is given, and only
    computed when ``intrinsics_model``/``intrinsics_input`` is read.
    fast_path: None (default) = on for a CUDA model, off on CPU; True = required (an error on a CPU model);
    False = ``model.step`` eagerly (the pre-fast-path engine; also what fp32 parity checks compare against).
    """
    update_rule: str = "ttt3r"
    reset_interval: int | None = None
    size: int = 512
    confidence_threshold: float = 3.0
    voxel_size: float = 0.02
    map_max_points: int = 2_000_000
    camera_to_base: Any = None
    build_map: bool = True
    map_pixel_stride: int = 1
    preprocess_precision: str = "exact"
    preprocess_on_device: bool | None = None
    sync_timings: bool = False
    focal_pixel_stride: int = 1
    fast_path: bool | None = None

    def validated(self) -> "EngineConfig":
        if self.update_rule not in UPDATE_RULE_NAMES:
            raise ValueError(f"update_rule must be one of {UPDATE_RULE_NAMES}, got {self.update_rule!r}")
        if self.reset_interval is not None and (int(self.reset_interval) != self.reset_interval
                                                or self.reset_interval < 1):
            raise ValueError(f"reset_interval must be None or an integer >= 1, got {self.reset_interval!r}")
        if not (isinstance(self.size, int) and self.size >= 16):
            raise ValueError(f"size must be an integer >= 16, got {self.size!r}")
        if not np.isfinite(self.confidence_threshold):
            raise ValueError(f"confidence_threshold must be finite, got {self.confidence_threshold}")
        if not (self.voxel_size > 0 and np.isfinite(self.voxel_size)):
            raise ValueError(f"voxel_size must be a positive finite number, got {self.voxel_size}")
        if int(self.map_max_points) < 1:
            raise ValueError(f"map_max_points must be >= 1, got {self.map_max_points}")
        if not (isinstance(self.map_pixel_stride, int) and self.map_pixel_stride >= 1):
            raise ValueError(f"map_pixel_stride must be an integer >= 1, got {self.map_pixel_stride!r}")
        if not (isinstance(self.focal_pixel_stride, int) and self.focal_pixel_stride >= 1):
            raise ValueError(f"focal_pixel_stride must be an integer >= 1, got {self.focal_pixel_stride!r}")
        if self.fast_path not in (None, True, False):
            raise ValueError(f"fast_path must be None (auto), True or False, got {self.fast_path!r}")
        if self.preprocess_precision not in ("exact", "fast"):
            raise ValueError(f"preprocess_precision must be 'exact' or 'fast', got {self.preprocess_precision!r}")
        t = geometry.T_BODY_FROM_OPTICAL if self.camera_to_base is None else np.asarray(self.camera_to_base, float)
        if t.shape != (4, 4) or not np.all(np.isfinite(t)):
            raise ValueError(f"camera_to_base must be a finite 4x4 matrix, got shape {t.shape}")
        r = t[:3, :3]
        if not np.allclose(r @ r.T, np.eye(3), atol=1e-6) or not np.allclose(t[3], [0, 0, 0, 1]):
            raise ValueError("camera_to_base must be a rigid transform (orthonormal rotation, last row 0 0 0 1)")
        return replace(self, camera_to_base=t)


def validate_intrinsics(k: Any) -> np.ndarray:
    """A calibrated 3x3 camera matrix, checked: finite, fx > 0, fy > 0, last row (0, 0, 1)."""
    arr = np.asarray(k, dtype=np.float64)
    if arr.shape != (3, 3):
        raise ValueError(f"intrinsics: expected a 3x3 matrix, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"intrinsics: contains NaN or inf: {arr.tolist()}")
    if arr[0, 0] <= 0 or arr[1, 1] <= 0:
        raise ValueError(f"intrinsics: focal lengths must be positive, got fx={arr[0, 0]}, fy={arr[1, 1]}")
    if not np.allclose(arr[2], [0.0, 0.0, 1.0]) or arr[1, 0] != 0 or arr[2, 0] != 0:
        raise ValueError(f"intrinsics: not an upper-triangular camera matrix with last row 0 0 1: {arr.tolist()}")
    return arr
