"""sensor_msgs/PointCloud2 (rosbags message objects) from numpy points, colours and confidences.

Layout, matching what the live node publishes: float32 x, y, z, rgb (packed 0x00RRGGBB bits in a float32, as
RViz's RGB8 colour transformer expects) and confidence; point_step 20 bytes, little endian.
"""
from __future__ import annotations

from typing import Any

import numpy as np

FLOAT32 = 7  # sensor_msgs/PointField.FLOAT32
CLOUD_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<f4"), ("confidence", "<f4")])


def pack_rgb(colours_uint8: np.ndarray) -> np.ndarray:
    """[..., 3] uint8 -> [...] float32 whose bits are 0x00RRGGBB."""
    c = np.asarray(colours_uint8, dtype=np.uint32)
    packed = (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]
    return packed.astype("<u4").view("<f4")


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    bits = np.asarray(packed, dtype="<f4").view("<u4")
    return np.stack([(bits >> 16) & 255, (bits >> 8) & 255, bits & 255], axis=-1).astype(np.uint8)


def point_cloud2(factory: Any, header: Any, points: np.ndarray, colours_uint8: np.ndarray,
                 confidences: np.ndarray, height: int | None = None, width: int | None = None) -> Any:
    """points [N,3] (or [H,W,3] for an organised cloud), colours [..,3] uint8, confidences [..].

    Organised clouds keep NaN points (is_dense false) so pixel (v, u) stays at row v, column u.
    """
    points = np.asarray(points, dtype=np.float32)
    if points.ndim == 3:
        height, width = points.shape[:2]
    elif height is None or width is None:
        height, width = 1, int(points.reshape(-1, 3).shape[0])
    cloud = np.empty(height * width, dtype=CLOUD_DTYPE)
    flat = points.reshape(-1, 3)
    cloud["x"], cloud["y"], cloud["z"] = flat[:, 0], flat[:, 1], flat[:, 2]
    cloud["rgb"] = pack_rgb(np.asarray(colours_uint8).reshape(-1, 3))
    cloud["confidence"] = np.asarray(confidences, dtype=np.float32).reshape(-1)
    types = factory.types
    fields = [types["sensor_msgs/msg/PointField"](name=name, offset=CLOUD_DTYPE.fields[name][1],
                                                  datatype=FLOAT32, count=1)
              for name in CLOUD_DTYPE.names]
    return types["sensor_msgs/msg/PointCloud2"](
        header=header, height=int(height), width=int(width), fields=fields, is_bigendian=False,
        point_step=CLOUD_DTYPE.itemsize, row_step=CLOUD_DTYPE.itemsize * int(width),
        data=cloud.view(np.uint8), is_dense=bool(np.isfinite(flat).all()))


def cloud_to_numpy(msg: Any) -> np.ndarray:
    """PointCloud2 written by `point_cloud2` -> structured array [height*width] (for tests and tools)."""
    return np.frombuffer(np.asarray(msg.data, dtype=np.uint8).tobytes(), dtype=CLOUD_DTYPE)
