"""A calibrated camera as sensor_msgs/CameraInfo describes it, and the removal of its lens distortion.

``CameraModel`` holds K, D, the distortion model and the image size (CameraInfo's fields, read by name, so an rclpy
message, a rosbags message or plain values all work). The network expects a pinhole image, so a distorted frame
is resampled first ("undistorted") onto a pinhole camera with matrix ``new_camera_matrix``; the engine then treats
that K as the frame's calibration.

- ``is_rectified``: D empty or all zero. Such a frame is passed on unchanged, bit for bit, and costs nothing (the
  engine never builds maps for it); its model name is then irrelevant and not checked (drivers publish '' or
  'none' with D = []).
- Distortion models (REP 104 names, as image_geometry uses them): 'plumb_bob' (k1 k2 t1 t2 k3) and
  'rational_polynomial' (k1 k2 t1 t2 k3 k4 k5 k6) through ``cv2.initUndistortRectifyMap``; 'equidistant'
  (k1 k2 k3 k4, the fisheye model) through ``cv2.fisheye.initUndistortRectifyMap``. Any other name with a non-zero
  D raises ``UnknownDistortionModel`` (a ValueError naming the supported models).
- New camera matrix: OpenCV's alpha = 0 choice (``getOptimalNewCameraMatrix(alpha=0)``; for 'equidistant'
  ``fisheye.estimateNewCameraMatrixForUndistortRectify(balance=0)``): the undistorted image shows only pixels that
  exist in the distorted one. Keeping K instead would leave black (zero) regions at the borders of a pincushion or
  fisheye image, which the network would take for scene content (a dark wall, a hole). alpha = 0 is also what ROS's
  camera_calibration writes into a monocular camera's P, so the image matches image_proc's ``image_rect`` up to
  interpolation. The principal point is not forced to the centre (that would crop more for an off-centre one).
- R and P are ignored: ttt3r is monocular, so the undistorted image is the camera's own view (R = I); a stereo
  rectification (R != I) is not applied.

Two samplers of the same maps: ``undistort`` (cv2.remap on a uint8 numpy frame, the CPU path; the fixed-point maps
``cv2.undistort`` uses, so the result is OpenCV's own) and ``undistort_torch`` (``torch.nn.functional.grid_sample``,
bilinear, zeros outside, on the uint8 frame converted to float, then rounded back to uint8: the device path, which
the engine captures in its CUDA graph with the grid as a static buffer). The two agree within one uint8 level on
almost every pixel (OpenCV interpolates with 5-bit weights; test_engine_camera_model measures it).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .config import validate_intrinsics

# distortion model -> the D lengths accepted (CameraInfo.msg / REP 104; plumb_bob drivers sometimes send 4)
DISTORTION_MODELS: dict[str, tuple[int, ...]] = {
    "plumb_bob": (4, 5),
    "rational_polynomial": (8,),
    "equidistant": (4,),
}
# the model a rectified (undistorted) camera is published with, with D all zero
RECTIFIED_DISTORTION_MODEL = "plumb_bob"
RECTIFIED_D = (0.0, 0.0, 0.0, 0.0, 0.0)


class UnknownDistortionModel(ValueError):
    """A CameraInfo with non-zero D in a distortion model this package cannot undo."""


@dataclass(frozen=True, eq=False)
class CameraModel:
    """K (3x3, pixels), D, distortion_model and the image size (width x height) of a calibrated camera.

    Build it with ``CameraModel.create`` or ``from_camera_info`` (both validate); instances are immutable and their
    maps are computed once, on first use.
    """
    k: np.ndarray
    d: np.ndarray
    distortion_model: str
    width: int
    height: int

    @classmethod
    def create(cls, k: Any, d: Any, distortion_model: str, width: int, height: int) -> "CameraModel":
        """Validated: K as ``validate_intrinsics``, width/height >= 2, and for a non-zero D a known model with a D
        of the length that model takes. Raises ValueError (UnknownDistortionModel for an unknown model)."""
        k_checked = validate_intrinsics(k).copy()
        d_arr = np.asarray(d if d is not None else (), dtype=np.float64).reshape(-1).copy()
        width, height = int(width), int(height)
        if width < 2 or height < 2:
            raise ValueError(f"camera model: image size {width}x{height} is too small (at least 2x2)")
        if not np.all(np.isfinite(d_arr)):
            raise ValueError(f"camera model: D has non-finite entries: {d_arr.tolist()}")
        name = str(distortion_model)
        if d_arr.size and np.any(d_arr != 0.0):
            if name not in DISTORTION_MODELS:
                raise UnknownDistortionModel(
                    f"unknown distortion model {name!r} with non-zero D {d_arr.tolist()}: supported are "
                    f"{', '.join(DISTORTION_MODELS)} (or D all zero for a rectified image)")
            if d_arr.size not in DISTORTION_MODELS[name]:
                raise ValueError(f"distortion model {name!r} takes {' or '.join(map(str, DISTORTION_MODELS[name]))}"
                                 f" coefficients, D has {d_arr.size}: {d_arr.tolist()}")
        k_checked.setflags(write=False)
        d_arr.setflags(write=False)
        return cls(k=k_checked, d=d_arr, distortion_model=name, width=width, height=height)

    @classmethod
    def from_camera_info(cls, msg: Any) -> "CameraModel":
        """From a sensor_msgs/CameraInfo (any object with k, d, distortion_model, width, height); R and P ignored."""
        k = np.asarray(msg.k, dtype=np.float64).reshape(-1)
        if k.size != 9:
            raise ValueError(f"camera model: K has {k.size} entries, not 9")
        return cls.create(k.reshape(3, 3), np.asarray(msg.d, dtype=np.float64), str(msg.distortion_model),
                          int(msg.width), int(msg.height))

    # ----------------------------------------------------------------------------------------- properties
    @property
    def is_rectified(self) -> bool:
        """D empty or all zero: frames pass unchanged."""
        return self.d.size == 0 or not np.any(self.d != 0.0)

    @property
    def size_hw(self) -> tuple[int, int]:
        return (self.height, self.width)

    @functools.cached_property
    def key(self) -> tuple:
        """Equal for two models with the same K, D, model and size (the engine reuses maps across messages)."""
        return (self.k.tobytes(), self.d.tobytes(), self.distortion_model, self.width, self.height)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CameraModel) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    @functools.cached_property
    def new_camera_matrix(self) -> np.ndarray:
        """K of the undistorted image (alpha = 0, see the module docstring); K itself when rectified."""
        if self.is_rectified:
            return self.k
        import cv2

        size = (self.width, self.height)
        if self.distortion_model == "equidistant":
            new_k = cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(
                self.k, self.d.reshape(1, -1), size, np.eye(3), balance=0.0)
        else:
            new_k, _ = cv2.getOptimalNewCameraMatrix(self.k, self.d, size, 0.0, size)
        new_k = validate_intrinsics(new_k).copy()
        new_k.setflags(write=False)
        return new_k

    # -------------------------------------------------------------------------------------------- maps
    def _maps(self, map_type: int) -> tuple[np.ndarray, np.ndarray]:
        if self.is_rectified:
            raise ValueError("camera model: a rectified camera has no undistortion maps (frames pass unchanged)")
        import cv2

        size = (self.width, self.height)
        if self.distortion_model == "equidistant":
            return cv2.fisheye.initUndistortRectifyMap(self.k, self.d.reshape(1, -1), np.eye(3),
                                                       self.new_camera_matrix, size, map_type)
        return cv2.initUndistortRectifyMap(self.k, self.d, None, self.new_camera_matrix, size, map_type)

    @functools.cached_property
    def undistort_maps(self) -> tuple[np.ndarray, np.ndarray]:
        """(map_x, map_y) float32 [H, W]: the distorted-image pixel (centres at integers) that each undistorted
        pixel samples."""
        import cv2

        return self._maps(cv2.CV_32FC1)

    @functools.cached_property
    def _fixed_point_maps(self) -> tuple[np.ndarray, np.ndarray]:
        # computed directly in OpenCV's fixed-point format (not converted from the float maps, which rounds a few
        # coordinates differently): the maps cv2.undistort / cv2.fisheye.undistortImage build themselves
        import cv2

        return self._maps(cv2.CV_16SC2)

    @functools.cached_property
    def sampling_grid(self) -> np.ndarray:
        """[H, W, 2] float32 (x, y) in grid_sample's normalised coordinates (align_corners=True: -1 and +1 are the
        centres of the first and last pixel)."""
        map_x, map_y = self.undistort_maps
        gx = map_x.astype(np.float64) * (2.0 / (self.width - 1)) - 1.0
        gy = map_y.astype(np.float64) * (2.0 / (self.height - 1)) - 1.0
        return np.stack([gx, gy], axis=-1).astype(np.float32)

    def check_frame(self, shape: tuple[int, ...], what: str = "image") -> None:
        """ValueError unless ``shape`` is an H x W x 3 frame of this camera's size."""
        if len(shape) != 3 or (int(shape[0]), int(shape[1])) != self.size_hw:
            raise ValueError(f"{what}: shape {tuple(shape)} does not match the camera model's "
                             f"{self.width}x{self.height} (WxH) image")

    # -------------------------------------------------------------------------------------------- samplers
    def undistort(self, rgb: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 -> the undistorted H x W x 3 uint8 (cv2.remap, bilinear, zeros outside: exactly what
        ``cv2.undistort`` computes with ``new_camera_matrix``). A rectified camera returns ``rgb`` itself."""
        if self.is_rectified:
            return rgb
        import cv2

        self.check_frame(rgb.shape)
        map_a, map_b = self._fixed_point_maps
        return cv2.remap(np.ascontiguousarray(rgb), map_a, map_b, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=0)


def undistort_torch(frames: torch.Tensor, grid: torch.Tensor, enabled: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 [B, H, W, 3] frames resampled through ``grid`` ([B, H, W, 2] or [H, W, 2], ``CameraModel.sampling_grid``)
    -> uint8 [B, H, W, 3] (bilinear, zeros outside, rounded). ``enabled`` [B] bool: where False the frame is passed
    through unchanged (a rectified stream batched with a distorted one). Only tensor ops of fixed shapes, so a CUDA
    graph can capture it with ``grid`` and ``enabled`` as static buffers."""
    b = frames.shape[0]
    x = frames.permute(0, 3, 1, 2).to(torch.float32)
    g = grid if grid.dim() == 4 else grid.unsqueeze(0).expand(b, -1, -1, -1)
    out = torch.nn.functional.grid_sample(x, g.to(torch.float32), mode="bilinear", padding_mode="zeros",
                                          align_corners=True)
    out = out.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    if enabled is not None:
        out = torch.where(enabled.view(-1, 1, 1, 1), out, frames)
    return out.contiguous()


def _grid_on(model: CameraModel, device: torch.device) -> torch.Tensor:
    """The model's sampling grid on ``device``, uploaded once per model and device (kept on the model)."""
    cache: dict[str, torch.Tensor] = model.__dict__.setdefault("_grids_on_device", {})
    grid = cache.get(str(device))
    if grid is None:
        grid = torch.from_numpy(model.sampling_grid).to(device)
        cache[str(device)] = grid
    return grid


@dataclass(frozen=True)
class UndistortionRequest:
    """Per frame of one raw uint8 batch, its distorted camera, or None where the frame passes unchanged (at least
    one is not None). Carried from the input stage to the step runner, which undistorts on the device."""
    models: tuple[CameraModel | None, ...]

    @classmethod
    def for_batch(cls, models: "list[CameraModel | None]") -> "UndistortionRequest | None":
        """None when no frame of the batch needs undistortion (the rectified path: nothing changes)."""
        kept = tuple(None if m is None or m.is_rectified else m for m in models)
        return cls(kept) if any(m is not None for m in kept) else None

    def select(self, rows: list[int]) -> "UndistortionRequest | None":
        return UndistortionRequest.for_batch([self.models[j] for j in rows])

    def apply(self, frames: torch.Tensor) -> torch.Tensor:
        """Eagerly, on the frames' device (uint8 [B, H, W, 3])."""
        grids = torch.stack([_grid_on(m, frames.device) if m is not None
                             else torch.zeros(frames.shape[1], frames.shape[2], 2, device=frames.device)
                             for m in self.models])
        enabled = torch.tensor([m is not None for m in self.models], device=frames.device)
        return undistort_torch(frames, grids, enabled)


class StaticUndistortion:
    """The static buffers a captured step undistorts with: grid [B, H, W, 2] float32 and enabled [B] bool.

    ``load`` writes a batch's cameras into them in place before a replay, and only where a slot's camera changed
    (a new CameraInfo with other coefficients): the graph is never captured again for new coefficients."""

    def __init__(self, batch: int, height: int, width: int, device: torch.device) -> None:
        self.grid = torch.zeros(batch, height, width, 2, dtype=torch.float32, device=device)
        self.enabled = torch.zeros(batch, dtype=torch.bool, device=device)
        self._loaded: list[tuple | None] = [None] * batch

    def load(self, request: UndistortionRequest | None) -> None:
        models = request.models if request is not None else (None,) * len(self._loaded)
        if len(models) != len(self._loaded):
            raise ValueError(f"undistortion: {len(models)} cameras for a batch of {len(self._loaded)}")
        for j, m in enumerate(models):
            key = None if m is None else m.key
            if key == self._loaded[j]:
                continue
            if m is not None:
                m.check_frame(tuple(self.grid.shape[1:3]) + (3,), f"undistortion slot {j}")
                self.grid[j].copy_(torch.from_numpy(m.sampling_grid))
            self.enabled[j] = m is not None
            self._loaded[j] = key

    def prepare(self, frames: torch.Tensor) -> torch.Tensor:
        """Inside the graph: the frames undistorted through the static buffers."""
        return undistort_torch(frames, self.grid, self.enabled)
