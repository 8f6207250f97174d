"""ROS message <-> numpy conversions used by the node (no cv_bridge / sensor_msgs_py needed).

Everything here is pure data adaptation: layouts, encodings, byte packing. Frame and axis conventions (optical vs
body, quaternion order) belong to ``ttt3r_ros.engine.geometry``; this module only writes already-converted poses
into messages. The layouts shared with the offline result bag (input decoding, PointCloud2, Pose/TF/Odometry)
live in the ROS-free session layer (``ttt3r_ros.session.image_codec`` / ``message_codec``); this module hands
them the rclpy message classes (`RCLPY_MESSAGES`). Importing it loads no torch (a test checks this).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import (Point, Pose, PoseWithCovariance, Quaternion, Transform, TransformStamped, Twist,
                               TwistWithCovariance, Vector3)
from nav_msgs.msg import Odometry
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header

from ttt3r_ros.session import image_codec, message_codec
from ttt3r_ros.session.errors import FrameDecodeError


class _RclpyMessages:
    """The message factory (see ``ttt3r_ros.session.message_codec``) of rclpy's classes."""
    types = {f"{cls.__module__.split('.')[0]}/msg/{cls.__name__}": cls
             for cls in (Point, Pose, PoseWithCovariance, Quaternion, Transform, TransformStamped, Twist,
                         TwistWithCovariance, Vector3, Odometry, PointCloud2, PointField, Header)}

    @staticmethod
    def byte_array(data: np.ndarray) -> bytes:
        return data.tobytes()


RCLPY_MESSAGES = _RclpyMessages()

# Decoding of camera input (encodings, row padding, length checks, jpeg/png, CameraInfo validity) is shared with
# the offline bag reader, so a frame is accepted or refused with the same reason live and offline.
ImageConversionError = FrameDecodeError   # an input image that cannot be turned into RGB (the message says why)
image_to_rgb = image_codec.raw_image_to_rgb                  # Image -> HxWx3 uint8 RGB
compressed_image_to_rgb = image_codec.compressed_image_to_rgb  # CompressedImage (jpeg/png) -> HxWx3 uint8 RGB
intrinsics_from_camera_info = image_codec.camera_info_intrinsics  # -> (K | None, reason)
stamp_to_seconds = image_codec.stamp_to_seconds

# encodings this module can read back to numpy (inputs plus what the node publishes); name -> (dtype, channels)
_NUMPY_ENCODINGS: dict[str, tuple[str, int]] = {
    "rgb8": ("u1", 3), "bgr8": ("u1", 3), "rgba8": ("u1", 4), "bgra8": ("u1", 4), "mono8": ("u1", 1),
    "mono16": ("u2", 1), "16UC1": ("u2", 1), "32FC1": ("f4", 1),
}


def seconds_to_stamp(seconds: float) -> Time:
    total_ns = int(round(seconds * 1e9))
    return Time(sec=total_ns // 1_000_000_000, nanosec=total_ns % 1_000_000_000)


def image_to_numpy(msg: Image) -> np.ndarray:
    """Image -> HxW or HxWxC array of the encoding's dtype, honouring row padding (reads back depth/confidence)."""
    enc = msg.encoding
    if enc not in _NUMPY_ENCODINGS:
        raise ImageConversionError(f"unsupported image encoding {enc!r}; supported: {sorted(_NUMPY_ENCODINGS)}")
    kind, channels = _NUMPY_ENCODINGS[enc]
    dtype = np.dtype(kind).newbyteorder(">" if msg.is_bigendian else "<")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0 or step < w * channels * dtype.itemsize or len(msg.data) != h * step:
        raise ImageConversionError(f"inconsistent {enc} image: {w}x{h}, step {step}, {len(msg.data)} bytes")
    raw = np.frombuffer(msg.data, dtype=np.uint8).reshape(h, step)
    # Drop the per-row padding, then reinterpret the remaining bytes as pixels.
    rows = raw[:, : w * channels * dtype.itemsize]
    arr = np.ascontiguousarray(rows).view(dtype).reshape(h, w, channels)
    return arr[..., 0] if channels == 1 else arr


def numpy_to_image(array: np.ndarray, encoding: str, header: Header) -> Image:
    """Dense array -> Image with step = width * bytes per pixel (no padding)."""
    if encoding not in _NUMPY_ENCODINGS:
        raise ImageConversionError(f"cannot encode {encoding!r}; supported: {sorted(_NUMPY_ENCODINGS)}")
    kind, channels = _NUMPY_ENCODINGS[encoding]
    arr = np.ascontiguousarray(array, dtype=np.dtype(kind).newbyteorder("<"))
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] != channels:
        raise ImageConversionError(f"array of shape {array.shape} does not fit encoding {encoding!r}")
    msg = Image()
    msg.header = header
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(arr.shape[1] * channels * arr.dtype.itemsize)
    msg.data = arr.tobytes()
    return msg


def float_image(values: np.ndarray, header: Header) -> Image:
    """HxW float -> 32FC1 Image (depth in metres per REP 118, or confidence)."""
    if values.ndim != 2:
        raise ImageConversionError(f"32FC1 needs a 2-D array, got shape {values.shape}")
    return numpy_to_image(values.astype(np.float32, copy=False), "32FC1", header)


def camera_info_from_intrinsics(k: np.ndarray, height: int, width: int, header: Header) -> CameraInfo:
    """CameraInfo for an undistorted (rectified) pinhole camera with intrinsics K at the given image size."""
    k = np.asarray(k, dtype=np.float64).reshape(3, 3)
    msg = CameraInfo()
    msg.header = header
    msg.height, msg.width = int(height), int(width)
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = k.ravel().tolist()
    msg.r = np.eye(3).ravel().tolist()
    p = np.zeros((3, 4))
    p[:, :3] = k
    msg.p = p.ravel().tolist()
    return msg


# --- PointCloud2 -----------------------------------------------------------------------------------------------
_PF_TO_NUMPY = {PointField.INT8: "i1", PointField.UINT8: "u1", PointField.INT16: "i2", PointField.UINT16: "u2",
                PointField.INT32: "i4", PointField.UINT32: "u4", PointField.FLOAT32: "f4",
                PointField.FLOAT64: "f8"}


def point_cloud(points_xyz: np.ndarray, colours_uint8: np.ndarray, confidence: np.ndarray, header: Header,
                confidence_threshold: float | None = None) -> PointCloud2:
    """PointCloud2 (x, y, z, rgb, confidence; float32) from HxWx3 (organised) or Nx3 (unorganised) arrays, in the
    layout of ``ttt3r_ros.session.message_codec`` (organised input keeps its HxW layout like depth_image_proc's
    clouds; points below `confidence_threshold` or not finite get NaN coordinates, `is_dense` is then False)."""
    return message_codec.point_cloud2(RCLPY_MESSAGES, header, points_xyz, colours_uint8, confidence,
                                      confidence_threshold)


def point_cloud_to_numpy(msg: PointCloud2) -> np.ndarray:
    """PointCloud2 -> structured array shaped (height, width), honouring offsets, padding and endianness."""
    order = ">" if msg.is_bigendian else "<"
    names, formats, offsets = [], [], []
    for f in msg.fields:
        if f.datatype not in _PF_TO_NUMPY:
            raise ValueError(f"unknown PointField datatype {f.datatype} for field {f.name!r}")
        names.append(f.name)
        base = order + _PF_TO_NUMPY[f.datatype]
        formats.append(base if f.count <= 1 else (base, (f.count,)))
        offsets.append(f.offset)
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": msg.point_step})
    if msg.row_step != msg.point_step * msg.width:
        raise ValueError(f"row_step {msg.row_step} != point_step*width = {msg.point_step * msg.width}")
    count = msg.width * msg.height
    if len(msg.data) != count * msg.point_step:
        raise ValueError(f"data length {len(msg.data)} != {count} points * point_step {msg.point_step}")
    return np.frombuffer(msg.data, dtype=dtype, count=count).reshape(msg.height, msg.width)


# --- poses -----------------------------------------------------------------------------------------------------

def matrix_from_quaternion_xyzw(x: float, y: float, z: float, w: float) -> np.ndarray:
    """Unit quaternion (x, y, z, w) from a ROS message -> 3x3 rotation matrix."""
    from ttt3r_ros.engine import geometry   # the convention's owner; loads torch, so only when used

    return geometry.quat_wxyz_to_matrix(geometry.quat_xyzw_to_wxyz(np.array([x, y, z, w], dtype=np.float64)))


def transform_from_matrix(matrix: np.ndarray) -> Transform:
    return message_codec.transform(RCLPY_MESSAGES, matrix)


def matrix_from_transform(transform: Transform) -> np.ndarray:
    m = np.eye(4)
    r = transform.rotation
    m[:3, :3] = matrix_from_quaternion_xyzw(r.x, r.y, r.z, r.w)
    m[:3, 3] = (transform.translation.x, transform.translation.y, transform.translation.z)
    return m


def pose_from_matrix(matrix: np.ndarray) -> Pose:
    return message_codec.pose(RCLPY_MESSAGES, matrix)


def transform_stamped(matrix: np.ndarray, header: Header, child_frame_id: str) -> TransformStamped:
    return message_codec.transform_stamped(RCLPY_MESSAGES, header, child_frame_id, matrix)


def odometry(matrix: np.ndarray, header: Header, child_frame_id: str,
             pose_covariance_diagonal: Sequence[float], twist_covariance_diagonal: Sequence[float],
             twist_linear_mps: Sequence[float] = (0.0, 0.0, 0.0),
             twist_angular_radps: Sequence[float] = (0.0, 0.0, 0.0)) -> Odometry:
    """nav_msgs/Odometry: pose of `child_frame_id` in header.frame_id, twist in the child frame (Odometry.msg);
    diagonal covariances over (x, y, z, rot x, rot y, rot z) (layout: ``ttt3r_ros.session.message_codec``)."""
    return message_codec.odometry(RCLPY_MESSAGES, header, child_frame_id, matrix, pose_covariance_diagonal,
                                  twist_covariance_diagonal, twist_linear_mps, twist_angular_radps)
