"""Image preprocessing identical to the reference's ``load_images(..., size=512)`` (SPEC §7).

Two implementations of the same arithmetic:

- ``preprocess_pil``: the reference path itself (PIL resize with LANCZOS when the long side shrinks, BICUBIC
  otherwise, then the centre crop to multiples of 16, then (x/255 - 0.5)/0.5 in float32).
- ``preprocess_torch``: a batched tensor path for the live node (uint8 HxWx3 or BxHxWx3 on any device). It builds
  PIL's own resampling coefficients (same filters, support, normalisation and 22-bit fixed-point rounding, horizontal
  pass first with a uint8 intermediate) as two small dense matrices restricted to the cropped output, and applies
  them with matmuls. In ``precision="exact"`` (float64, the default) every sum is an exact integer, so the result
  is bit-identical to PIL (test_engine_preprocess checks this). ``precision="fast"`` uses float32 (for GPUs
  with slow float64, e.g. Jetson); it differs from PIL by at most one uint8 level on a small fraction of pixels
  (measured in the test and printed there).

Both return the exact resize/crop bookkeeping (``geometry.ResizeCrop``) so intrinsics map both ways.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .geometry import ResizeCrop

LANCZOS_SUPPORT = 3.0
BICUBIC_SUPPORT = 2.0
_PRECISION_BITS = 32 - 8 - 2  # PIL's fixed-point precision for 8-bit images


@dataclass
class Preprocessed:
    """A preprocessed batch: ``images`` [B,3,h,w] float32 in [-1,1] (what the network sees), ``colour`` [B,h,w,3]
    uint8 (the same pixels before normalisation), and the resize/crop bookkeeping."""
    images: torch.Tensor
    colour: torch.Tensor
    transform: ResizeCrop


def plan_resize_crop(input_h: int, input_w: int, size: int = 512) -> ResizeCrop:
    """The reference's resize-and-crop geometry for an input of input_h x input_w (long side -> ``size``).

    Resize: (round(W*size/S), round(H*size/S)), S = max(W, H), Python's round (half to even) as the reference.
    Crop: cx = W'//2, cy = H'//2, half-width 8*floor(2cx/16), half-height 8*floor(2cy/16); a square resized image
    gets half-height = 3/4 half-width. Box (cx - hw, cy - hh, cx + hw, cy + hh): off-centre by one pixel for odd
    sizes, exactly as the reference.
    """
    if input_h <= 0 or input_w <= 0:
        raise ValueError(f"preprocess: empty image ({input_h}x{input_w} pixels)")
    if size <= 0:
        raise ValueError(f"preprocess: size must be positive, got {size}")
    s = max(input_w, input_h)
    new_w = int(round(input_w * size / s))
    new_h = int(round(input_h * size / s))
    cx, cy = new_w // 2, new_h // 2
    half_w = ((2 * cx) // 16) * 8
    half_h = ((2 * cy) // 16) * 8
    if new_w == new_h:
        half_h = 3 * half_w / 4  # the reference's square-image rule (a float there, integral for multiples of 8)
    x0, y0 = cx - half_w, cy - half_h
    x1, y1 = cx + half_w, cy + half_h
    # PIL's crop rounds a float box
    x0, y0, x1, y1 = (int(round(v)) for v in (x0, y0, x1, y1))
    if x1 - x0 < 16 or y1 - y0 < 16:
        raise ValueError(f"preprocess: a {input_w}x{input_h} (WxH) image resized to {new_w}x{new_h} leaves a "
                         f"{x1 - x0}x{y1 - y0} crop; both sides must reach 16 pixels (aspect ratio too extreme)")
    return ResizeCrop(input_h=input_h, input_w=input_w, resized_h=new_h, resized_w=new_w, x0=x0, y0=y0,
                      model_h=y1 - y0, model_w=x1 - x0)


def normalise_uint8(colour_bhwc: torch.Tensor) -> torch.Tensor:
    """uint8 [B,h,w,3] -> float32 [B,3,h,w] with the reference's op order: x/255 then (x - 0.5)/0.5 (the one
    normalisation: both preprocessing paths and ``ttt3r-ros bench`` use it)."""
    x = colour_bhwc.permute(0, 3, 1, 2).to(torch.float32).div(255)
    return x.sub(0.5).div(0.5)


def validate_image(image: np.ndarray | torch.Tensor, what: str = "image") -> None:
    """Raise a ValueError/TypeError naming the problem for anything but a non-empty HxWx3 (or BxHxWx3) uint8."""
    if isinstance(image, np.ndarray):
        ok_dtype = image.dtype == np.uint8
    elif isinstance(image, torch.Tensor):
        ok_dtype = image.dtype == torch.uint8
    else:
        raise TypeError(f"{what}: expected a numpy array or torch tensor, got {type(image).__name__}")
    dtype = image.dtype
    if not ok_dtype:
        raise TypeError(f"{what}: expected dtype uint8 (RGB 0..255), got {dtype}")
    if image.ndim not in (3, 4) or image.shape[-1] != 3:
        raise ValueError(f"{what}: expected shape HxWx3 (or BxHxWx3) RGB, got {tuple(image.shape)}")
    if any(int(d) == 0 for d in image.shape):
        raise ValueError(f"{what}: empty image, shape {tuple(image.shape)}")


def preprocess_pil(image: np.ndarray, size: int = 512) -> Preprocessed:
    """The reference path on one HxWx3 uint8 RGB numpy image -> [1,3,h,w] float32 CPU tensor."""
    validate_image(image)
    if image.ndim != 3:
        raise ValueError(f"image: preprocess_pil takes one HxWx3 image, got {tuple(image.shape)}")
    rc = plan_resize_crop(image.shape[0], image.shape[1], size)
    img = Image.fromarray(np.ascontiguousarray(image))
    if (rc.resized_w, rc.resized_h) != img.size:
        resample = Image.LANCZOS if max(img.size) > size else Image.BICUBIC
        img = img.resize((rc.resized_w, rc.resized_h), resample)
    img = img.crop((rc.x0, rc.y0, rc.x0 + rc.model_w, rc.y0 + rc.model_h))
    colour = torch.from_numpy(np.asarray(img).copy()).unsqueeze(0)
    return Preprocessed(images=normalise_uint8(colour), colour=colour, transform=rc)


# ---------------------------------------------------------------------------------------- tensor (GPU) path
def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    return np.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1,
                    np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def _sinc(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        px = x * math.pi
        return np.where(x == 0.0, 1.0, np.sin(px) / np.where(x == 0.0, 1.0, px))


def _lanczos(x: np.ndarray) -> np.ndarray:
    return np.where((x >= -3.0) & (x < 3.0), _sinc(x) * _sinc(x / 3.0), 0.0)


def pil_resample_matrix(in_size: int, out_size: int, downscale_filter: bool, quantised: bool = True) -> np.ndarray:
    """PIL's resampling coefficients (``precompute_coeffs`` + ``normalize_coeffs_8bpc``) as a dense
    [out_size, in_size] float64 matrix. ``quantised``: the 22-bit fixed-point integers PIL uses for 8-bit images
    (scaled by 2**22), else the normalised real weights."""
    filt, support0 = (_lanczos, LANCZOS_SUPPORT) if downscale_filter else (_bicubic, BICUBIC_SUPPORT)
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = support0 * filterscale
    mat = np.zeros((out_size, in_size))
    for xx in range(out_size):  # out_size <= a few thousand, once per (in, out) pair: cached by the caller
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        xs = np.arange(xmin, xmax)
        w = filt((xs - center + 0.5) / filterscale)
        total = w.sum()
        if total != 0.0:
            w = w / total
        mat[xx, xmin:xmax] = w
    if quantised:
        mat = np.trunc(mat * (1 << _PRECISION_BITS) + np.where(mat < 0, -0.5, 0.5))
    return mat


@functools.lru_cache(maxsize=32)  # a node sees one or two input sizes; keep the cache bounded anyway
def _pass_matrices(rc: ResizeCrop, size: int, device: torch.device, dtype: torch.dtype, quantised: bool
                   ) -> tuple[torch.Tensor | None, torch.Tensor | None, int, int]:
    """(horizontal matrix [W_in, w] or None, vertical matrix [h, rows] or None, first and end input row the kept
    output rows read), on ``device``; shared between callers, never modified."""
    downscale = max(rc.input_w, rc.input_h) > size
    mh = mv = None
    row_lo, row_hi = rc.y0, rc.y0 + rc.model_h
    if rc.resized_w != rc.input_w:
        mh = pil_resample_matrix(rc.input_w, rc.resized_w, downscale, quantised)[rc.x0:rc.x0 + rc.model_w]
    if rc.resized_h != rc.input_h:
        full_v = pil_resample_matrix(rc.input_h, rc.resized_h, downscale, quantised)[rc.y0:rc.y0 + rc.model_h]
        nz = np.nonzero(np.any(full_v != 0, axis=0))[0]
        row_lo, row_hi = int(nz[0]), int(nz[-1]) + 1  # input rows the kept output rows read
        mv = full_v[:, row_lo:row_hi]
    return (None if mh is None else torch.as_tensor(mh.T.copy(), dtype=dtype, device=device),
            None if mv is None else torch.as_tensor(mv, dtype=dtype, device=device), row_lo, row_hi)


def resize_matrices(input_h: int, input_w: int, size: int, device: torch.device | str,
                    precision: str = "exact") -> tuple:
    """The device matrices ``preprocess_torch`` uses for this input size (built and cached now). A CUDA graph
    that captured ``preprocess_torch`` must hold this tuple: the bounded cache may drop its entry later."""
    rc = plan_resize_crop(input_h, input_w, size)
    if (rc.resized_h, rc.resized_w) == (input_h, input_w):
        return ()
    dtype = torch.float64 if precision == "exact" else torch.float32
    return _pass_matrices(rc, size, torch.device(device), dtype, quantised=True)


def preprocess_torch(images: torch.Tensor, size: int = 512, precision: str = "exact",
                     device: torch.device | str | None = None) -> Preprocessed:
    """Batched preprocessing of uint8 RGB tensors [H,W,3] or [B,H,W,3] on their device (or ``device``).

    ``precision="exact"``: float64 matmuls over PIL's integer coefficients, bit-identical to ``preprocess_pil``.
    ``precision="fast"``: float32, within one uint8 level of PIL.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"image: preprocess_torch takes a torch uint8 tensor, got {type(images).__name__}")
    validate_image(images)
    if precision not in ("exact", "fast"):
        raise ValueError(f"preprocess: precision must be 'exact' or 'fast', got {precision!r}")
    x = images if images.dim() == 4 else images.unsqueeze(0)
    if device is not None:
        x = x.to(device, non_blocking=True)
    b, h, w, _ = x.shape
    rc = plan_resize_crop(h, w, size)
    if (rc.resized_h, rc.resized_w) == (h, w):
        colour = x[:, rc.y0:rc.y0 + rc.model_h, rc.x0:rc.x0 + rc.model_w].contiguous()
        return Preprocessed(images=normalise_uint8(colour), colour=colour, transform=rc)
    dtype = torch.float64 if precision == "exact" else torch.float32
    mh, mv, row_lo, row_hi = _pass_matrices(rc, size, x.device, dtype, quantised=True)
    inv = 1.0 / (1 << _PRECISION_BITS)
    half = float(1 << (_PRECISION_BITS - 1))
    # [B,H,W,3] -> [B,3,H,W] float
    t = x.permute(0, 3, 1, 2).to(dtype)
    if mh is not None:
        t = t[:, :, row_lo:row_hi] if mv is not None else t[:, :, rc.y0:rc.y0 + rc.model_h]
        t = torch.matmul(t, mh)                            # horizontal pass: [B,3,rows,w_out]
        t = torch.floor((t + half) * inv).clamp_(0, 255)   # PIL's uint8 intermediate
    else:
        t = t[:, :, :, rc.x0:rc.x0 + rc.model_w]
        if mv is None:
            t = t[:, :, rc.y0:rc.y0 + rc.model_h]
    if mv is not None:
        t = torch.matmul(mv, t)                            # vertical pass: [B,3,h_out,w_out]
        t = torch.floor((t + half) * inv).clamp_(0, 255)
    colour = t.to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return Preprocessed(images=normalise_uint8(colour), colour=colour, transform=rc)


def preprocess(image: np.ndarray | torch.Tensor, size: int = 512, device: torch.device | str | None = None,
               precision: str = "exact") -> Preprocessed:
    """One entry point: numpy -> the reference PIL path (then moved to ``device``); tensor -> the tensor path."""
    validate_image(image)
    if isinstance(image, np.ndarray):
        out = preprocess_pil(image, size)
        if device is not None and torch.device(device).type != "cpu":
            out = Preprocessed(images=out.images.to(device, non_blocking=True),
                               colour=out.colour.to(device, non_blocking=True), transform=out.transform)
        return out
    return preprocess_torch(image, size, precision=precision, device=device)
