"""The PointCloud2 layout of every cloud ttt3r_ros writes, in pure numpy (no ROS needed).

One layout for the live node (rclpy messages, ``ttt3r_ros.ros.conversions.point_cloud``) and the offline result
bag (rosbags messages, ``point_cloud2`` below); both only wrap what ``pack_cloud`` returns into their message
class, so the field table and the byte packing exist once.

Layout: float32 x, y, z, rgb, confidence at offsets 0, 4, 8, 12, 16; point_step 20; little endian;
row_step = width * point_step. ``rgb`` is the PCL/RViz packing: the uint32 0x00RRGGBB reinterpreted as float32,
i.e. bytes b, g, r, 0 in memory. Organised clouds (HxW input) keep every pixel: invalid ones (non-finite, or
confidence below the threshold) get NaN x/y/z and the cloud is not dense (depth_image_proc's convention).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

FLOAT32 = 7  # sensor_msgs/PointField.FLOAT32
CLOUD_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<f4"), ("confidence", "<f4")])
CLOUD_POINT_STEP = CLOUD_DTYPE.itemsize
# (name, byte offset, PointField datatype, count) of each field, for building sensor_msgs/PointField lists
CLOUD_FIELDS: tuple[tuple[str, int, int, int], ...] = tuple(
    (name, CLOUD_DTYPE.fields[name][1], FLOAT32, 1) for name in CLOUD_DTYPE.names)


def pack_rgb(colours_uint8: np.ndarray) -> np.ndarray:
    """[..., 3] uint8 RGB -> [...] little-endian float32 whose bits are 0x00RRGGBB."""
    c = np.asarray(colours_uint8, dtype=np.uint32)
    packed = (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]
    return packed.astype("<u4").view("<f4")


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """Inverse of pack_rgb: [...] float32 -> [..., 3] uint8."""
    bits = np.ascontiguousarray(packed, dtype="<f4").view("<u4")
    return np.stack([(bits >> 16) & 255, (bits >> 8) & 255, bits & 255], axis=-1).astype(np.uint8)


@dataclass(frozen=True)
class PackedCloud:
    """What a PointCloud2 message needs besides its header (and the constant field table / point_step)."""
    data: np.ndarray     # uint8 [height * width * point_step]
    height: int
    width: int
    is_dense: bool

    @property
    def point_step(self) -> int:
        return CLOUD_POINT_STEP

    @property
    def row_step(self) -> int:
        return CLOUD_POINT_STEP * self.width


def pack_cloud(points: np.ndarray, colours_uint8: np.ndarray, confidences: np.ndarray,
               confidence_threshold: float | None = None) -> PackedCloud:
    """points [H,W,3] (organised) or [N,3] (height 1), colours [...,3] uint8, confidences [...] -> PackedCloud.

    Points with a non-finite coordinate, or confidence below ``confidence_threshold`` (when given), get NaN in all
    three coordinates; colour and confidence are kept so the pixel still says what it was.
    """
    pts = np.asarray(points, dtype=np.float32)
    if pts.shape[-1:] != (3,) or pts.ndim not in (2, 3):
        raise ValueError(f"points must be HxWx3 or Nx3, got shape {pts.shape}")
    height, width = (pts.shape[0], pts.shape[1]) if pts.ndim == 3 else (1, pts.shape[0])
    n = height * width
    flat = pts.reshape(n, 3)
    conf = np.asarray(confidences, dtype=np.float32).reshape(n)
    cloud = np.empty(n, dtype=CLOUD_DTYPE)
    cloud["x"], cloud["y"], cloud["z"] = flat[:, 0], flat[:, 1], flat[:, 2]
    cloud["rgb"] = pack_rgb(np.asarray(colours_uint8).reshape(n, 3))
    cloud["confidence"] = conf
    invalid = ~np.isfinite(flat).all(axis=1)
    if confidence_threshold is not None:
        invalid |= ~(conf >= confidence_threshold)   # NaN confidence counts as below
    if invalid.any():
        for name in ("x", "y", "z"):
            cloud[name][invalid] = np.nan
    return PackedCloud(data=cloud.view(np.uint8), height=int(height), width=int(width),
                       is_dense=not bool(invalid.any()))


def point_cloud2(factory: Any, header: Any, points: np.ndarray, colours_uint8: np.ndarray,
                 confidences: np.ndarray, confidence_threshold: float | None = None) -> Any:
    """sensor_msgs/PointCloud2 as a rosbags message object (``factory.types`` is the typestore's classes)."""
    packed = pack_cloud(points, colours_uint8, confidences, confidence_threshold)
    types = factory.types
    fields = [types["sensor_msgs/msg/PointField"](name=name, offset=offset, datatype=datatype, count=count)
              for name, offset, datatype, count in CLOUD_FIELDS]
    return types["sensor_msgs/msg/PointCloud2"](
        header=header, height=packed.height, width=packed.width, fields=fields, is_bigendian=False,
        point_step=packed.point_step, row_step=packed.row_step, data=packed.data, is_dense=packed.is_dense)


def cloud_to_numpy(msg: Any) -> np.ndarray:
    """A PointCloud2 in this layout (rosbags or rclpy message) -> structured array [height*width]."""
    names = [(f.name, f.offset, f.datatype, f.count) for f in msg.fields]
    if tuple(names) != CLOUD_FIELDS or msg.point_step != CLOUD_POINT_STEP or msg.is_bigendian:
        raise ValueError(f"not the ttt3r_ros cloud layout: fields {names}, point_step {msg.point_step}")
    return np.frombuffer(np.asarray(msg.data, dtype=np.uint8).tobytes(), dtype=CLOUD_DTYPE)
