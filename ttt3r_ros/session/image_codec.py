"""sensor_msgs Image / CompressedImage / CameraInfo -> numpy, without ROS (and without torch at import).

Shared by the offline readers (rosbags message objects) and the live node (rclpy messages: it calls these through
``ttt3r_ros.ros.conversions``): both only read the fields by name, so a frame is accepted or refused, with the
same reason, whether it arrives live or from a bag.

Decoding raises FrameDecodeError with a reason that names the problem; the frame source counts those and skips
the frame, the node logs them (throttled) and goes on with the next frame.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .errors import FrameDecodeError
from .settings import DEFAULTS

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_IMAGE_TYPE)

# A focal length above this many times the image's long side is not a lens (a 1000 mm lens on a 4 um pixel
# pitch is 250000 px, ~60x a 4K frame's width): such a CameraInfo is refused instead of publishing inf downstream.
MAX_FOCAL_PER_IMAGE_SIDE = 1e4

# encoding -> (channels, index of R, G, B within a pixel); mono replicates its single channel.
RAW_ENCODINGS: dict[str, tuple[int, tuple[int, int, int]]] = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, (0, 0, 0)),
}


def stamp_to_seconds(stamp: Any) -> float:
    """builtin_interfaces/Time -> float seconds."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def stamp_to_nanoseconds(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _uint8_view(data: Any) -> np.ndarray:
    """A message's uint8[] field as a flat uint8 array without copying: bytes (rclpy), array.array('B') (rclpy),
    numpy arrays (rosbags) all expose the buffer protocol; anything else (a list) is converted."""
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError):
        return np.asarray(data, dtype=np.uint8).reshape(-1)


# ------------------------------------------------------------------------------------------ pixel limit
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic...): they carry the image size.
# C4 (DHT), C8 (JPG) and CC (DAC) share the range but are not frames.
_JPEG_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# markers without a length field: TEM, RST0-7, SOI, EOI
_JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xDA)})


def _png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG from its IHDR chunk, which the format puts first."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise FrameDecodeError("PNG without an IHDR chunk")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a JPEG from its first start-of-frame segment, walking the segments by their lengths."""
    position = 2   # after SOI (FF D8)
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise FrameDecodeError(f"JPEG segment {position} does not start with a marker")
        marker = data[position + 1]
        if marker == 0xFF:    # fill byte before a marker
            position += 1
            continue
        if marker in _JPEG_STANDALONE_MARKERS:
            position += 2
            continue
        length = int.from_bytes(data[position + 2:position + 4], "big")
        if length < 2:
            raise FrameDecodeError(f"JPEG segment length {length} at byte {position}")
        if marker in _JPEG_SOF_MARKERS:
            if length < 7 or position + 9 > len(data):
                raise FrameDecodeError("truncated JPEG frame header")
            height = int.from_bytes(data[position + 5:position + 7], "big")
            width = int.from_bytes(data[position + 7:position + 9], "big")
            return width, height
        if marker == 0xDA:    # start of scan before any frame header
            break
        position += 2 + length
    raise FrameDecodeError("JPEG without a frame header")


def encoded_image_size(data: Any) -> tuple[str, int, int]:
    """(kind "png" | "jpeg", width, height) read from the header bytes of an encoded image, without decoding it.
    FrameDecodeError when the bytes are neither PNG nor JPEG or the header is broken."""
    head = bytes(_uint8_view(data)[:65536]) if not isinstance(data, bytes) else data
    if head.startswith(_PNG_SIGNATURE):
        return ("png", *_png_size(head))
    if head[:2] == b"\xff\xd8":
        # the frame header normally sits in the first few KB; a huge EXIF block before it needs the whole buffer
        try:
            return ("jpeg", *_jpeg_size(head))
        except FrameDecodeError:
            if isinstance(data, bytes) or len(head) >= _uint8_view(data).size:
                raise
            return ("jpeg", *_jpeg_size(bytes(_uint8_view(data))))
    raise FrameDecodeError("neither PNG nor JPEG (unknown header bytes)")


def check_png_chunks(data: Any) -> None:
    """FrameDecodeError when a PNG's chunk structure is cut short or has no IEND. Walks the chunk headers only (no
    CRC, no inflate): OpenCV 5.0's PNG reader spends seconds on some truncated streams before it gives up (a 70-byte
    fuzzed file took 7-15 s), so a truncated PNG is refused here in microseconds instead."""
    buf = bytes(_uint8_view(data)) if not isinstance(data, bytes) else data
    offset = len(_PNG_SIGNATURE)
    while offset + 8 <= len(buf):
        length = int.from_bytes(buf[offset:offset + 4], "big")
        kind = buf[offset + 4:offset + 8]
        end = offset + 12 + length   # length, type, data, CRC
        if length > 0x7FFFFFFF or end > len(buf):
            raise FrameDecodeError(f"truncated png: chunk {kind!r} at byte {offset} needs {end} bytes, the data has "
                                   f"{len(buf)}")
        if kind == b"IEND":
            return
        offset = end
    raise FrameDecodeError(f"truncated png: no IEND chunk in {len(buf)} bytes")


def check_pixel_limit(width: int, height: int, max_pixels: int = DEFAULTS.max_image_pixels,
                      what: str = "image") -> None:
    """FrameDecodeError when a width x height image exceeds `max_pixels` (setting max_image_pixels) or has no
    pixels: checked before decoding or copying, so one hostile frame cannot take gigabytes and seconds."""
    if width <= 0 or height <= 0:
        raise FrameDecodeError(f"zero-sized {what} ({width}x{height})")
    if width * height > max_pixels:
        raise FrameDecodeError(
            f"{what} too large ({width}x{height} = {width * height / 1e6:.1f} MP > max_image_pixels = "
            f"{max_pixels / 1e6:.1f} MP); refused before decoding")


def raw_image_to_rgb(msg: Any, max_pixels: int = DEFAULTS.max_image_pixels) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8) -> HxWx3 uint8 RGB (a new contiguous array).

    Honours `step` (row padding). The data must be exactly height * step bytes, as Image.msg defines it. Images
    above `max_pixels` are refused before anything is copied.
    """
    encoding = str(msg.encoding).lower()
    if encoding not in RAW_ENCODINGS:
        raise FrameDecodeError(
            f"unsupported image encoding {msg.encoding!r} (supported: {', '.join(RAW_ENCODINGS)})")
    channels, rgb_index = RAW_ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise FrameDecodeError(f"zero-sized image ({width}x{height}, encoding {encoding})")
    check_pixel_limit(width, height, max_pixels, what=f"{encoding} image")
    row_bytes = width * channels
    if step < row_bytes:
        raise FrameDecodeError(f"step {step} is smaller than width*channels = {width}*{channels} for {encoding}")
    data = _uint8_view(msg.data)
    if data.size != height * step:
        raise FrameDecodeError(
            f"data length {data.size} != height*step = {height}*{step} = {height * step} ({encoding})")
    pixels = data.reshape(height, step)[:, :row_bytes].reshape(height, width, channels)
    if channels == 1:
        return np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels[..., list(rgb_index)])


def decode_encoded_image(data: Any, max_pixels: int = DEFAULTS.max_image_pixels, what: str = "image") -> np.ndarray:
    """PNG or JPEG bytes -> HxWx3 uint8 RGB. The size is read from the header first: images above `max_pixels`
    (and anything that is not PNG/JPEG) are refused with FrameDecodeError before OpenCV decodes a byte. Shared by
    CompressedImage (live and bags) and image folders."""
    import cv2  # only encoded input needs OpenCV

    data = _uint8_view(data)
    if data.size == 0:
        raise FrameDecodeError(f"empty {what}")
    try:
        kind, width, height = encoded_image_size(data)
    except FrameDecodeError as err:
        raise FrameDecodeError(f"corrupt {what} (could not decode {data.size} bytes as jpeg/png: {err})") from None
    check_pixel_limit(width, height, max_pixels, what=f"{kind} {what}")
    if kind == "png":
        try:
            check_png_chunks(data)
        except FrameDecodeError as err:
            raise FrameDecodeError(f"corrupt {what} ({err})") from None
    try:
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)  # None when the bytes are not a decodable image
    except cv2.error:   # some broken streams raise instead of returning None
        bgr = None
    if bgr is None or bgr.size == 0:
        raise FrameDecodeError(f"corrupt {what} (could not decode {data.size} bytes of {kind} "
                               f"{width}x{height})")
    return np.ascontiguousarray(bgr[..., ::-1])


def compressed_image_to_rgb(msg: Any, max_pixels: int = DEFAULTS.max_image_pixels) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg/png, as image_transport's compressed plugin writes) -> HxWx3 uint8 RGB;
    images above `max_pixels` are refused from their header, before decoding."""

    # image_transport writes e.g. "jpeg", "png" or "rgb8; jpeg compressed bgr8"; the codec is sniffed from bytes.
    fmt = str(msg.format).lower()
    data = _uint8_view(msg.data)
    if data.size == 0:
        raise FrameDecodeError(f"empty compressed image (format {msg.format!r})")
    if fmt and not any(kind in fmt for kind in ("jpeg", "jpg", "png")):
        raise FrameDecodeError(f"unsupported compressed format {msg.format!r} (supported: jpeg, png)")
    return decode_encoded_image(data, max_pixels, what="compressed image")


def image_message_to_rgb(msg: Any, msgtype: str, max_pixels: int = DEFAULTS.max_image_pixels) -> np.ndarray:
    if msgtype == IMAGE_TYPE:
        return raw_image_to_rgb(msg, max_pixels)
    if msgtype == COMPRESSED_IMAGE_TYPE:
        return compressed_image_to_rgb(msg, max_pixels)
    raise FrameDecodeError(f"not an image message type: {msgtype}")


def camera_info_intrinsics(msg: Any) -> tuple[np.ndarray | None, str]:
    """(K 3x3 float64, "") when the CameraInfo is calibrated and usable, else (None, reason).

    K[0] == 0 means uncalibrated (CameraInfo.msg). A K the engine would refuse (non-finite, non-positive focal
    lengths, last row not 0 0 1) or a principal point outside the image is refused here too, so the caller can
    fall back to the model's intrinsics instead of failing every frame.
    """
    # imported here: decoding images (the node's conversions, make-bag, bag-info) must not load torch
    from ..engine import validate_intrinsics

    k = np.asarray(msg.k, dtype=np.float64).reshape(-1)
    if k.size != 9:
        return None, f"K has {k.size} entries, not 9"
    k = k.reshape(3, 3)
    if not np.all(np.isfinite(k)):
        return None, f"K has non-finite entries: {k.ravel().tolist()}"
    if k[0, 0] == 0.0:
        return None, "uncalibrated: K[0] == 0"
    try:
        validate_intrinsics(k)
    except ValueError as err:
        return None, str(err)
    width, height = int(msg.width), int(msg.height)
    if width <= 0 or height <= 0:
        return None, f"zero image size ({width}x{height})"
    cx, cy = k[0, 2], k[1, 2]
    if not (0.0 <= cx <= width and 0.0 <= cy <= height):
        return None, f"principal point ({cx}, {cy}) lies outside the {width}x{height} image"
    focal_limit_px = MAX_FOCAL_PER_IMAGE_SIDE * max(width, height)
    if k[0, 0] > focal_limit_px or k[1, 1] > focal_limit_px:
        return None, (f"focal length fx={k[0, 0]:g}, fy={k[1, 1]:g} px is absurd for a {width}x{height} image "
                      f"(more than {MAX_FOCAL_PER_IMAGE_SIDE:g} x its long side)")
    return k.copy(), ""


def calibration_for_image(k: np.ndarray | None, calibration_size_hw: tuple[int, int] | None,
                          image_size_hw: tuple[int, int]) -> tuple[np.ndarray | None, str]:
    """The rule for a CameraInfo whose size is not the image's, the same live and offline: K describes pixels of
    the size it was calibrated at, so for other images it is ignored (None, reason; the model estimates the
    intrinsics) rather than guessed by scaling (a binned or cropped stream has the same aspect and other K)."""
    if k is None:
        return None, ""
    if calibration_size_hw is not None and tuple(calibration_size_hw) != tuple(image_size_hw):
        (ch, cw), (ih, iw) = calibration_size_hw, image_size_hw
        return None, (f"CameraInfo size {cw}x{ch} differs from the image size {iw}x{ih}; calibration ignored, "
                      "intrinsics estimated by the model")
    return k, ""

