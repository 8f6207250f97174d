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

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_IMAGE_TYPE)

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


def raw_image_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8) -> HxWx3 uint8 RGB (a new contiguous array).

    Honours `step` (row padding). The data must be exactly height * step bytes, as Image.msg defines it.
    """
    encoding = str(msg.encoding).lower()
    if encoding not in RAW_ENCODINGS:
        raise FrameDecodeError(
            f"unsupported image encoding {msg.encoding!r} (supported: {', '.join(RAW_ENCODINGS)})")
    channels, rgb_index = RAW_ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise FrameDecodeError(f"zero-sized image ({width}x{height}, encoding {encoding})")
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


def compressed_image_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg/png, as image_transport's compressed plugin writes) -> HxWx3 uint8 RGB."""
    import cv2  # only compressed input needs OpenCV

    # image_transport writes e.g. "jpeg", "png" or "rgb8; jpeg compressed bgr8"; the codec is sniffed from bytes.
    fmt = str(msg.format).lower()
    data = _uint8_view(msg.data)
    if data.size == 0:
        raise FrameDecodeError(f"empty compressed image (format {msg.format!r})")
    if fmt and not any(kind in fmt for kind in ("jpeg", "jpg", "png")):
        raise FrameDecodeError(f"unsupported compressed format {msg.format!r} (supported: jpeg, png)")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)  # None when the bytes are not a decodable image
    if bgr is None or bgr.size == 0:
        raise FrameDecodeError(
            f"corrupt compressed image (could not decode {data.size} bytes of format {msg.format!r} as jpeg/png)")
    return np.ascontiguousarray(bgr[..., ::-1])


def image_message_to_rgb(msg: Any, msgtype: str) -> np.ndarray:
    if msgtype == IMAGE_TYPE:
        return raw_image_to_rgb(msg)
    if msgtype == COMPRESSED_IMAGE_TYPE:
        return compressed_image_to_rgb(msg)
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
    if width == 0 or height == 0:
        return None, f"zero image size ({width}x{height})"
    cx, cy = k[0, 2], k[1, 2]
    if not (0.0 <= cx <= width and 0.0 <= cy <= height):
        return None, f"principal point ({cx}, {cy}) lies outside the {width}x{height} image"
    return k.copy(), ""

