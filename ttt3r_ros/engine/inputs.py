"""The engine's first stage: validate one call's frames and turn them into the model's input batch (``ModelInput``).

Three routes, chosen per call:

- raw: uint8 frames (numpy or tensors) of one size, preprocessing on the device, and a step runner that runs the
  resize/crop/normalisation inside its CUDA graph (``raw_frames_accepted``). The frames are stacked into one
  [B,H,W,3] uint8 batch (numpy frames copied into a fresh pinned buffer that the runner uploads asynchronously);
  the model-size colour then comes out of the step.
- uint8 frames otherwise: ``preprocess`` per frame (numpy through the reference's PIL path, or uploaded first when
  preprocessing runs on the device; tensors through the tensor path), concatenated into [B,3,h,w].
- float tensors already normalised to [-1, 1] at model resolution (the reference's ``load_images`` output): used
  as they are.

Every route gives the same resize/crop bookkeeping (``geometry.ResizeCrop``) per frame.

Lens distortion (``camera_model``): a uint8 frame whose camera has a non-zero D is undistorted before anything
else, at its input size: with cv2.remap on the host where a numpy frame is preprocessed on the host; on the device
otherwise, and on the raw route inside the step runner's CUDA graph (``ModelInput.undistortion`` tells the runner
which frames; its grids are static buffers of the graph). A frame without a camera model, or a rectified one, is
untouched. Pre-normalised float frames are at model size already and cannot carry a camera model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .camera_model import CameraModel, UndistortionRequest, _grid_on, undistort_torch
from .config import EngineConfig
from .geometry import ResizeCrop
from .preprocess import Preprocessed, plan_resize_crop, preprocess, validate_image


@dataclass
class ModelInput:
    """One call's frames as the model step takes them.

    images: normalised float [B,3,h,w] on the model's device, or (``raw``) uint8 [B,H,W,3] frames that the step
    preprocesses. colour: [B,h,w,3] uint8 at model size, None when ``raw`` (the step computes it). undistortion:
    on the raw route, the frames the step undistorts first (None: none).
    """
    images: torch.Tensor
    raw: bool
    transforms: list[ResizeCrop]
    colour: torch.Tensor | None
    undistortion: UndistortionRequest | None = None

    @property
    def batch_size(self) -> int:
        return len(self.transforms)


def _label(j: int, n: int) -> str:
    return "image" if n == 1 else f"image[{j}]"


def preprocess_on_device(config: EngineConfig, device: torch.device) -> bool:
    """Whether numpy frames are uploaded as uint8 and preprocessed on the model's device (default: on CUDA)."""
    return device.type == "cuda" if config.preprocess_on_device is None else bool(config.preprocess_on_device)


def prepare_inputs(images: Sequence[Any], config: EngineConfig, device: torch.device,
                   raw_frames_accepted: Callable[..., bool] | None,
                   camera_models: Sequence[CameraModel | None] | None = None) -> ModelInput:
    """Validate ``images`` and build the model input. ``raw_frames_accepted(batch, H, W, undistort)``: whether the
    step runner preprocesses (and, with ``undistort``, first undistorts) raw uint8 frames of that size itself (see
    the module docstring); None: a runner that never does. ``camera_models``: per image its camera or None."""
    n = len(images)
    models = [None] * n if camera_models is None else list(camera_models)
    for j, (img, m) in enumerate(zip(images, models)):
        if m is not None and not m.is_rectified:
            if isinstance(img, torch.Tensor) and img.is_floating_point():
                raise ValueError(f"{_label(j, n)}: a pre-normalised float image cannot be undistorted; give the "
                                 "uint8 frame with its distorted camera model")
            m.check_frame(tuple(img.shape), _label(j, n))
    raw = None if raw_frames_accepted is None else _raw_batch(images, config, device, raw_frames_accepted, models)
    if raw is not None:
        return raw
    prepared = [_prepare(img, _label(j, n), config, device, models[j]) for j, img in enumerate(images)]
    sizes = {p.transform.model_size for p in prepared}
    if len(sizes) != 1:
        raise ValueError(f"step_batch: images give different model sizes {sorted(sizes)}; batch streams "
                         "with the same input size, or use one reconstructor per size")
    batch = prepared[0].images if n == 1 else torch.cat([p.images for p in prepared])
    colour = prepared[0].colour if n == 1 else torch.cat([p.colour for p in prepared])
    return ModelInput(images=batch, raw=False, transforms=[p.transform for p in prepared], colour=colour)


def _raw_batch(images: Sequence[Any], config: EngineConfig, device: torch.device,
               raw_frames_accepted: Callable[..., bool], models: list[CameraModel | None]) -> ModelInput | None:
    """The raw route, or None when it does not apply (then the per-frame route runs)."""
    if not preprocess_on_device(config, device):
        return None
    if not all(isinstance(im, np.ndarray) or (isinstance(im, torch.Tensor) and not im.is_floating_point())
               for im in images):
        return None
    n = len(images)
    for j, im in enumerate(images):
        validate_image(im, _label(j, n))
        if im.ndim != 3:
            raise ValueError(f"{_label(j, n)}: expected one HxWx3 image, got shape {tuple(im.shape)}")
    shapes = {tuple(int(d) for d in im.shape) for im in images}
    if len(shapes) != 1:
        return None
    h, w, _ = shapes.pop()
    try:
        transform = plan_resize_crop(h, w, config.size)
    except ValueError as exc:
        raise ValueError(f"{'image' if n == 1 else 'images'}: {exc}") from None
    undistortion = UndistortionRequest.for_batch(models)
    if not raw_frames_accepted(n, h, w, undistortion is not None):
        return None
    if all(isinstance(im, np.ndarray) for im in images):
        frames = torch.empty((n, h, w, 3), dtype=torch.uint8, pin_memory=device.type == "cuda")
        frames_np = frames.numpy()
        for j, im in enumerate(images):
            frames_np[j] = im
    else:
        frames = torch.stack([torch.as_tensor(im).to(device) for im in images])
    return ModelInput(images=frames, raw=True, transforms=[transform] * n, colour=None, undistortion=undistortion)


def _prepare(image: Any, what: str, config: EngineConfig, device: torch.device,
             camera_model: CameraModel | None = None) -> Preprocessed:
    if isinstance(image, torch.Tensor) and image.is_floating_point():
        return _prenormalised(image, what, device)
    if not isinstance(image, (np.ndarray, torch.Tensor)):
        raise TypeError(f"{what}: expected an HxWx3 uint8 numpy array or tensor, got {type(image).__name__}")
    validate_image(image, what)
    if image.ndim != 3:
        raise ValueError(f"{what}: expected one HxWx3 image, got shape {tuple(image.shape)}")
    distorted = camera_model is not None and not camera_model.is_rectified
    if isinstance(image, np.ndarray) and not preprocess_on_device(config, device):
        if distorted:  # host preprocessing: OpenCV's own undistortion (cv2.remap)
            image = camera_model.undistort(image)
    else:
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(np.ascontiguousarray(image)).to(device, non_blocking=True)
        if distorted:  # on the frame's device, the same sampler the CUDA graph captures
            image = undistort_torch(image.unsqueeze(0), _grid_on(camera_model, image.device))[0]
    try:
        return preprocess(image, config.size, device=device, precision=config.preprocess_precision)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


def _prenormalised(x: torch.Tensor, what: str, device: torch.device) -> Preprocessed:
    """A float tensor [3,h,w] or [1,3,h,w] already normalised to [-1,1] (the reference's load_images output,
    e.g. the parity file's input/frames): used as is, at model resolution (no resize, no crop)."""
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 3 or x.shape[0] != 3:
        raise ValueError(f"{what}: a float image must be a normalised [3,H,W] or [1,3,H,W] tensor, "
                         f"got {tuple(x.shape)}")
    h, w = int(x.shape[1]), int(x.shape[2])
    if h == 0 or w == 0 or h % 16 or w % 16:
        raise ValueError(f"{what}: a pre-normalised image needs H and W multiples of 16, got {h}x{w}")
    if not bool(torch.isfinite(x).all()) or float(x.abs().max()) > 1.0 + 1e-6:
        raise ValueError(f"{what}: a pre-normalised image must be finite and within [-1, 1]")
    x = x.to(device, torch.float32).unsqueeze(0)
    colour = ((x[0].permute(1, 2, 0) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).unsqueeze(0)
    rc = ResizeCrop(input_h=h, input_w=w, resized_h=h, resized_w=w, x0=0, y0=0, model_h=h, model_w=w)
    return Preprocessed(images=x, colour=colour, transform=rc)
