"""Message layouts shared by the live node and the offline result bag, filled into any message factory.

A *factory* is anything with ``types``: a mapping from ROS type names ("sensor_msgs/msg/PointCloud2") to message
classes that take their fields as keyword arguments, and ``byte_array(uint8 ndarray)``: the value a ``uint8[]``
field wants. ``ttt3r_ros.ros.conversions.RCLPY_MESSAGES`` wraps the rclpy classes, and
``ttt3r_ros.offline.bag_writing.MessageFactory`` the rosbags typestore's, so each layout below exists once and a
cloud or an odometry message is byte-for-byte the same live and in a result bag.

PointCloud2 layout: float32 x, y, z, rgb, confidence at offsets 0, 4, 8, 12, 16; point_step 20; little endian;
row_step = width * point_step. ``rgb`` is the PCL/RViz packing: the uint32 0x00RRGGBB reinterpreted as float32,
i.e. bytes b, g, r, 0 in memory. Organised clouds (HxW input) keep every pixel: invalid ones (non-finite, or
confidence below the threshold) get NaN x/y/z and the cloud is not dense (depth_image_proc's convention).

Poses: 4x4 rigid transforms; quaternions in ROS order (x, y, z, w), converted by ``ttt3r_ros.engine.geometry``
(the owner of axis and quaternion conventions; imported when a pose is built, so that importing this module, as
the node's conversions do, does not load torch). Covariances are 6x6 row-major over (x, y, z, rot x, rot y,
rot z) per REP 103; only the diagonal is set.
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
    """sensor_msgs/PointCloud2 (x, y, z, rgb, confidence; float32) from HxWx3 (organised) or Nx3 (unorganised)
    arrays, as a message of `factory`. Points whose confidence is below `confidence_threshold` (or that are not
    finite) get NaN coordinates (the pixel stays, `is_dense` is False)."""
    packed = pack_cloud(points, colours_uint8, confidences, confidence_threshold)
    types = factory.types
    fields = [types["sensor_msgs/msg/PointField"](name=name, offset=offset, datatype=datatype, count=count)
              for name, offset, datatype, count in CLOUD_FIELDS]
    return types["sensor_msgs/msg/PointCloud2"](
        header=header, height=packed.height, width=packed.width, fields=fields, is_bigendian=False,
        point_step=packed.point_step, row_step=packed.row_step, data=factory.byte_array(packed.data),
        is_dense=packed.is_dense)


def cloud_to_numpy(msg: Any) -> np.ndarray:
    """A PointCloud2 in this layout (rosbags or rclpy message) -> structured array [height*width]."""
    names = [(f.name, f.offset, f.datatype, f.count) for f in msg.fields]
    if tuple(names) != CLOUD_FIELDS or msg.point_step != CLOUD_POINT_STEP or msg.is_bigendian:
        raise ValueError(f"not the ttt3r_ros cloud layout: fields {names}, point_step {msg.point_step}")
    return np.frombuffer(np.asarray(msg.data, dtype=np.uint8).tobytes(), dtype=CLOUD_DTYPE)


# ------------------------------------------------------------------------------------------------------ poses
def _rigid(matrix: np.ndarray) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise ValueError(f"expected a finite 4x4 transform, got shape {m.shape}")
    return m


def _quaternion_xyzw(rotation: np.ndarray) -> tuple[float, float, float, float]:
    from ..engine import geometry   # the convention's owner (loads torch: only when a pose is built)

    q = geometry.matrix_to_quat_xyzw(rotation)
    return float(q[0]), float(q[1]), float(q[2]), float(q[3])


def pose(factory: Any, matrix: np.ndarray) -> Any:
    """geometry_msgs/Pose of a 4x4 transform."""
    m = _rigid(matrix)
    types = factory.types
    x, y, z, w = _quaternion_xyzw(m[:3, :3])
    return types["geometry_msgs/msg/Pose"](
        position=types["geometry_msgs/msg/Point"](x=float(m[0, 3]), y=float(m[1, 3]), z=float(m[2, 3])),
        orientation=types["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w))


def transform(factory: Any, matrix: np.ndarray) -> Any:
    """geometry_msgs/Transform of a 4x4 transform."""
    m = _rigid(matrix)
    types = factory.types
    x, y, z, w = _quaternion_xyzw(m[:3, :3])
    return types["geometry_msgs/msg/Transform"](
        translation=types["geometry_msgs/msg/Vector3"](x=float(m[0, 3]), y=float(m[1, 3]), z=float(m[2, 3])),
        rotation=types["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w))


def transform_stamped(factory: Any, header: Any, child_frame_id: str, matrix: np.ndarray) -> Any:
    """geometry_msgs/TransformStamped: `child_frame_id` in header.frame_id (T_parent_child)."""
    return factory.types["geometry_msgs/msg/TransformStamped"](header=header, child_frame_id=child_frame_id,
                                                              transform=transform(factory, matrix))


def _diagonal_6x6(diagonal: Any) -> np.ndarray:
    values = np.asarray(diagonal, dtype=np.float64)
    if values.shape != (6,):
        raise ValueError(f"a 6x6 covariance needs 6 diagonal values, got shape {values.shape}")
    return np.diag(values).reshape(-1)


def odometry(factory: Any, header: Any, child_frame_id: str, matrix: np.ndarray, pose_covariance_diagonal: Any,
             twist_covariance_diagonal: Any, twist_linear_mps: Any = (0.0, 0.0, 0.0),
             twist_angular_radps: Any = (0.0, 0.0, 0.0)) -> Any:
    """nav_msgs/Odometry: pose of `child_frame_id` in header.frame_id, twist in the child frame (Odometry.msg)."""
    types = factory.types
    vector3 = types["geometry_msgs/msg/Vector3"]
    linear = [float(v) for v in twist_linear_mps]
    angular = [float(v) for v in twist_angular_radps]
    return types["nav_msgs/msg/Odometry"](
        header=header, child_frame_id=child_frame_id,
        pose=types["geometry_msgs/msg/PoseWithCovariance"](pose=pose(factory, matrix),
                                                           covariance=_diagonal_6x6(pose_covariance_diagonal)),
        twist=types["geometry_msgs/msg/TwistWithCovariance"](
            twist=types["geometry_msgs/msg/Twist"](linear=vector3(x=linear[0], y=linear[1], z=linear[2]),
                                                   angular=vector3(x=angular[0], y=angular[1], z=angular[2])),
            covariance=_diagonal_6x6(twist_covariance_diagonal)))


def odometry_from_estimate(factory: Any, header: Any, child_frame_id: str, estimate: Any) -> Any:
    """nav_msgs/Odometry of a ``ttt3r_ros.session.odometry.OdometryEstimate``."""
    return odometry(factory, header, child_frame_id, estimate.t_odom_base, estimate.pose_covariance_diagonal,
                    estimate.twist_covariance_diagonal, estimate.twist_linear_mps, estimate.twist_angular_radps)
