"""sensor_msgs Image / CompressedImage / CameraInfo (as deserialised by rosbags) <-> numpy, without ROS.

Decoding raises FrameDecodeError with a reason that names the problem; the frame source counts those and skips
the frame instead of ending the run.
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from .errors import FrameDecodeError

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_IMAGE_TYPE)

# encoding -> (channels, cv2 conversion to RGB or None when already RGB)
RAW_ENCODINGS: dict[str, tuple[int, int | None]] = {
    "rgb8": (3, None),
    "bgr8": (3, cv2.COLOR_BGR2RGB),
    "rgba8": (4, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, cv2.COLOR_BGRA2RGB),
    "mono8": (1, cv2.COLOR_GRAY2RGB),
}


def stamp_to_seconds(stamp: Any) -> float:
    """builtin_interfaces/Time -> float seconds."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def stamp_to_nanoseconds(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def raw_image_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/Image -> HxWx3 uint8 RGB (a new array). Honours `step` (row padding)."""
    encoding = str(msg.encoding).lower()
    if encoding not in RAW_ENCODINGS:
        raise FrameDecodeError(
            f"unsupported image encoding {msg.encoding!r} (supported: {', '.join(RAW_ENCODINGS)})")
    channels, conversion = RAW_ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise FrameDecodeError(f"empty image ({width}x{height})")
    row_bytes = width * channels
    if step < row_bytes:
        raise FrameDecodeError(f"step {step} is smaller than width*channels = {row_bytes} for {encoding}")
    data = np.asarray(msg.data, dtype=np.uint8).reshape(-1)
    # The last row may legally omit its padding, so require only what the pixels occupy.
    needed = step * (height - 1) + row_bytes
    if data.size < needed:
        raise FrameDecodeError(
            f"data length {data.size} does not match height*step = {height}*{step} = {height * step}")
    if data.size < step * height:
        data = np.concatenate([data, np.zeros(step * height - data.size, np.uint8)])
    rows = data[: step * height].reshape(height, step)[:, :row_bytes]
    pixels = rows.reshape(height, width, channels)
    if conversion is None:
        return np.ascontiguousarray(pixels)
    if channels == 1:
        pixels = pixels[:, :, 0]
    return cv2.cvtColor(np.ascontiguousarray(pixels), conversion)


def compressed_image_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg/png) -> HxWx3 uint8 RGB."""
    fmt = str(msg.format).lower()
    data = np.asarray(msg.data, dtype=np.uint8).reshape(-1)
    if data.size == 0:
        raise FrameDecodeError("empty compressed image")
    if fmt and not any(kind in fmt for kind in ("jpeg", "jpg", "png")):
        raise FrameDecodeError(f"unsupported compressed format {msg.format!r} (supported: jpeg, png)")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise FrameDecodeError(f"corrupt compressed image ({data.size} bytes, format {msg.format!r})")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def image_message_to_rgb(msg: Any, msgtype: str) -> np.ndarray:
    if msgtype == IMAGE_TYPE:
        return raw_image_to_rgb(msg)
    if msgtype == COMPRESSED_IMAGE_TYPE:
        return compressed_image_to_rgb(msg)
    raise FrameDecodeError(f"not an image message type: {msgtype}")


def camera_info_to_k(msg: Any) -> np.ndarray | None:
    """K as 3x3 float64 when the camera is calibrated (K[0] != 0 and all finite), else None."""
    k = np.asarray(msg.k, dtype=np.float64).reshape(-1)
    if k.size != 9 or not np.all(np.isfinite(k)) or k[0] == 0.0 or k[4] == 0.0:
        return None
    return k.reshape(3, 3).copy()
