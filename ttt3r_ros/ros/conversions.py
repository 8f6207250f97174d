"""ROS message <-> numpy conversions used by the node (no cv_bridge / sensor_msgs_py needed).

Everything here is pure data adaptation: layouts, encodings, byte packing. Frame and axis conventions (optical vs
body, quaternion order) belong to ``ttt3r_ros.engine.geometry``; this module only writes already-converted poses
into messages.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, Transform, TransformStamped
from nav_msgs.msg import Odometry
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header

from ttt3r_ros.engine import geometry


class ImageConversionError(ValueError):
    """An input image message that cannot be turned into an RGB array (the message says why)."""


# encoding -> (channels, index of R, G, B within a pixel); mono replicates its single channel.
_RGB_INPUT_LAYOUTS: dict[str, tuple[int, tuple[int, int, int]]] = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, (0, 0, 0)),
}
SUPPORTED_INPUT_ENCODINGS: tuple[str, ...] = tuple(_RGB_INPUT_LAYOUTS)

# encodings this module can read back to numpy (inputs plus what the node publishes); name -> (dtype, channels)
_NUMPY_ENCODINGS: dict[str, tuple[str, int]] = {
    "rgb8": ("u1", 3), "bgr8": ("u1", 3), "rgba8": ("u1", 4), "bgra8": ("u1", 4), "mono8": ("u1", 1),
    "mono16": ("u2", 1), "16UC1": ("u2", 1), "32FC1": ("f4", 1),
}


def stamp_to_seconds(stamp: Time) -> float:
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def seconds_to_stamp(seconds: float) -> Time:
    total_ns = int(round(seconds * 1e9))
    return Time(sec=total_ns // 1_000_000_000, nanosec=total_ns % 1_000_000_000)


def _check_geometry(height: int, width: int, step: int, data_len: int, bytes_per_pixel: int, encoding: str) -> None:
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"zero-sized image ({width}x{height}, encoding {encoding!r})")
    if step < width * bytes_per_pixel:
        raise ImageConversionError(
            f"step {step} is smaller than width*bytes_per_pixel = {width}*{bytes_per_pixel} (encoding {encoding!r})")
    if data_len != height * step:
        raise ImageConversionError(
            f"data length {data_len} != height*step = {height}*{step} = {height * step} (encoding {encoding!r})")


def image_to_numpy(msg: Image) -> np.ndarray:
    """Image -> HxW or HxWxC array of the encoding's dtype (copy-free view when possible), honouring row padding."""
    enc = msg.encoding
    if enc not in _NUMPY_ENCODINGS:
        raise ImageConversionError(f"unsupported image encoding {enc!r}; supported: {sorted(_NUMPY_ENCODINGS)}")
    kind, channels = _NUMPY_ENCODINGS[enc]
    dtype = np.dtype(kind).newbyteorder(">" if msg.is_bigendian else "<")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    _check_geometry(h, w, step, len(msg.data), dtype.itemsize * channels, enc)
    raw = np.frombuffer(msg.data, dtype=np.uint8).reshape(h, step)
    # Drop the per-row padding, then reinterpret the remaining bytes as pixels.
    rows = raw[:, : w * channels * dtype.itemsize]
    arr = np.ascontiguousarray(rows).view(dtype).reshape(h, w, channels)
    return arr[..., 0] if channels == 1 else arr


def image_to_rgb(msg: Image) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8) -> HxWx3 uint8 RGB (contiguous)."""
    if msg.encoding not in _RGB_INPUT_LAYOUTS:
        raise ImageConversionError(
            f"unsupported image encoding {msg.encoding!r}; supported: {', '.join(SUPPORTED_INPUT_ENCODINGS)}")
    channels, (r, g, b) = _RGB_INPUT_LAYOUTS[msg.encoding]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    _check_geometry(h, w, step, len(msg.data), channels, msg.encoding)
    pixels = np.frombuffer(msg.data, dtype=np.uint8).reshape(h, step)[:, : w * channels].reshape(h, w, channels)
    if channels == 1:
        return np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels[..., [r, g, b]])


def compressed_image_to_rgb(msg: CompressedImage) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg/png, as image_transport's compressed plugin writes) -> HxWx3 uint8 RGB."""
    import cv2  # local import: only compressed input needs OpenCV

    # image_transport writes e.g. "jpeg", "png" or "rgb8; jpeg compressed bgr8"; the codec is sniffed from bytes.
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size == 0:
        raise ImageConversionError(f"empty compressed image (format {msg.format!r})")
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)  # BGR, 3 channels, or None when the bytes are not an image
    if decoded is None or decoded.size == 0:
        raise ImageConversionError(
            f"could not decode compressed image ({data.size} bytes, format {msg.format!r}): corrupt or not jpeg/png")
    return np.ascontiguousarray(decoded[..., ::-1])


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


def intrinsics_from_camera_info(msg: CameraInfo) -> tuple[np.ndarray | None, str]:
    """(K 3x3, "") when the CameraInfo is calibrated, else (None, reason). K[0] == 0 means uncalibrated."""
    k = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(k)):
        return None, f"camera_info K has non-finite entries: {k.ravel().tolist()}"
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    if fx == 0.0:
        return None, "camera_info K[0] == 0 (uncalibrated camera)"
    if fx < 0 or fy <= 0:
        return None, f"camera_info focal lengths must be positive (fx={fx}, fy={fy})"
    if msg.width == 0 or msg.height == 0:
        return None, f"camera_info has a zero image size ({msg.width}x{msg.height})"
    if not (0.0 <= cx <= msg.width and 0.0 <= cy <= msg.height):
        return None, f"camera_info principal point ({cx}, {cy}) lies outside the {msg.width}x{msg.height} image"
    return k, ""


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

# Compact layout: x, y, z, rgb (three uint8 packed into a float32 as PCL/depth_image_proc do), confidence.
_CLOUD_FIELDS: tuple[tuple[str, int], ...] = (("x", 0), ("y", 4), ("z", 8), ("rgb", 12), ("confidence", 16))
CLOUD_POINT_STEP = 20
_CLOUD_DTYPE = np.dtype({"names": [n for n, _ in _CLOUD_FIELDS], "formats": ["<f4"] * len(_CLOUD_FIELDS),
                         "offsets": [o for _, o in _CLOUD_FIELDS], "itemsize": CLOUD_POINT_STEP})
_PF_TO_NUMPY = {PointField.INT8: "i1", PointField.UINT8: "u1", PointField.INT16: "i2", PointField.UINT16: "u2",
                PointField.INT32: "i4", PointField.UINT32: "u4", PointField.FLOAT32: "f4",
                PointField.FLOAT64: "f8"}


def pack_rgb_as_float(colours_uint8: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (...) float32 whose bits are 0x00RRGGBB (the PCL/RViz `rgb` field)."""
    c = colours_uint8.astype(np.uint32)
    packed = (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]
    return packed.astype(np.uint32).view(np.float32)


def unpack_rgb_float(rgb: np.ndarray) -> np.ndarray:
    """Inverse of pack_rgb_as_float: (...) float32 -> (..., 3) uint8."""
    bits = np.ascontiguousarray(rgb, dtype=np.float32).view(np.uint32)
    return np.stack([(bits >> 16) & 0xFF, (bits >> 8) & 0xFF, bits & 0xFF], axis=-1).astype(np.uint8)


def point_cloud(points_xyz: np.ndarray, colours_uint8: np.ndarray, confidence: np.ndarray, header: Header,
                confidence_threshold: float | None = None) -> PointCloud2:
    """Build a PointCloud2 (x, y, z, rgb, confidence; float32) from HxWx3 (organised) or Nx3 (unorganised) arrays.

    Organised input keeps its HxW layout (height=H, width=W) like depth_image_proc's clouds. Points whose
    confidence is below `confidence_threshold` get NaN coordinates (the pixel stays, `is_dense` is False).
    """
    pts = np.asarray(points_xyz, dtype=np.float32)
    if pts.shape[-1] != 3 or pts.ndim not in (2, 3):
        raise ValueError(f"points must be HxWx3 or Nx3, got {pts.shape}")
    height, width = (pts.shape[0], pts.shape[1]) if pts.ndim == 3 else (1, pts.shape[0])
    n = height * width
    conf = np.asarray(confidence, dtype=np.float32).reshape(n)
    cols = np.asarray(colours_uint8, dtype=np.uint8).reshape(n, 3)
    flat = pts.reshape(n, 3)
    cloud = np.empty(n, dtype=_CLOUD_DTYPE)
    cloud["x"], cloud["y"], cloud["z"] = flat[:, 0], flat[:, 1], flat[:, 2]
    cloud["rgb"] = pack_rgb_as_float(cols)
    cloud["confidence"] = conf
    invalid = ~np.isfinite(flat).all(axis=1)
    if confidence_threshold is not None:
        invalid |= ~(conf >= confidence_threshold)
    if invalid.any():
        for name in ("x", "y", "z"):
            cloud[name][invalid] = np.nan

    msg = PointCloud2()
    msg.header = header
    msg.height, msg.width = height, width
    msg.fields = [PointField(name=name, offset=offset, datatype=PointField.FLOAT32, count=1)
                  for name, offset in _CLOUD_FIELDS]
    msg.is_bigendian = False
    msg.point_step = CLOUD_POINT_STEP
    msg.row_step = CLOUD_POINT_STEP * width
    msg.data = cloud.tobytes()
    msg.is_dense = not bool(invalid.any())
    return msg


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

def _quaternion_xyzw(rotation: np.ndarray) -> tuple[float, float, float, float]:
    """Rotation matrix -> unit quaternion (x, y, z, w), the order ROS messages use (convention owned by geometry)."""
    q = geometry.matrix_to_quat_xyzw(rotation)
    return float(q[0]), float(q[1]), float(q[2]), float(q[3])


def matrix_from_quaternion_xyzw(x: float, y: float, z: float, w: float) -> np.ndarray:
    """Unit quaternion (x, y, z, w) from a ROS message -> 3x3 rotation matrix."""
    return geometry.quat_wxyz_to_matrix(geometry.quat_xyzw_to_wxyz(np.array([x, y, z, w], dtype=np.float64)))


def body_twist_from_poses(t_prev: np.ndarray, t_curr: np.ndarray, dt_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(linear m/s, angular rad/s) of the child frame expressed in the child frame (nav_msgs/Odometry twist),
    from two consecutive poses of the child in the parent frame; finite difference over dt_s."""
    delta = geometry.invert_se3(t_prev) @ t_curr   # motion expressed in the previous child frame
    r = delta[:3, :3]
    angle = geometry.rotation_angle_rad(r)
    axis_unnorm = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    if angle < 1e-9:
        rotvec = 0.5 * axis_unnorm   # small-angle limit of the log map
    else:
        sin = np.sin(angle)
        rotvec = axis_unnorm * (angle / (2.0 * sin)) if sin > 1e-6 else axis_unnorm  # near pi: direction only
    return delta[:3, 3] / dt_s, rotvec / dt_s


def _check_rigid(matrix: np.ndarray) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise ValueError(f"expected a finite 4x4 transform, got shape {m.shape}")
    return m


def transform_from_matrix(matrix: np.ndarray) -> Transform:
    m = _check_rigid(matrix)
    t = Transform()
    t.translation.x, t.translation.y, t.translation.z = (float(v) for v in m[:3, 3])
    t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w = _quaternion_xyzw(m[:3, :3])
    return t


def matrix_from_transform(transform: Transform) -> np.ndarray:
    m = np.eye(4)
    r = transform.rotation
    m[:3, :3] = matrix_from_quaternion_xyzw(r.x, r.y, r.z, r.w)
    m[:3, 3] = (transform.translation.x, transform.translation.y, transform.translation.z)
    return m


def pose_from_matrix(matrix: np.ndarray) -> Pose:
    m = _check_rigid(matrix)
    p = Pose()
    p.position.x, p.position.y, p.position.z = (float(v) for v in m[:3, 3])
    p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w = _quaternion_xyzw(m[:3, :3])
    return p


def transform_stamped(matrix: np.ndarray, header: Header, child_frame_id: str) -> TransformStamped:
    ts = TransformStamped()
    ts.header = header
    ts.child_frame_id = child_frame_id
    ts.transform = transform_from_matrix(matrix)
    return ts


def odometry(matrix: np.ndarray, header: Header, child_frame_id: str,
             pose_covariance_diagonal: Sequence[float], twist_covariance_diagonal: Sequence[float],
             twist_linear_mps: Sequence[float] = (0.0, 0.0, 0.0),
             twist_angular_radps: Sequence[float] = (0.0, 0.0, 0.0)) -> Odometry:
    """nav_msgs/Odometry: pose of `child_frame_id` in header.frame_id, twist in the child frame (Odometry.msg).

    Covariances are 6x6 row-major over (x, y, z, rot x, rot y, rot z) per REP 103; only the diagonal is set.
    """
    msg = Odometry()
    msg.header = header
    msg.child_frame_id = child_frame_id
    msg.pose.pose = pose_from_matrix(matrix)
    msg.pose.covariance = np.diag(np.asarray(pose_covariance_diagonal, dtype=np.float64)).ravel().tolist()
    msg.twist.twist.linear.x, msg.twist.twist.linear.y, msg.twist.twist.linear.z = (float(v) for v in twist_linear_mps)
    msg.twist.twist.angular.x, msg.twist.twist.angular.y, msg.twist.twist.angular.z = (
        float(v) for v in twist_angular_radps)
    msg.twist.covariance = np.diag(np.asarray(twist_covariance_diagonal, dtype=np.float64)).ravel().tolist()
    return msg
