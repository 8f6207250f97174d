"""Message <-> numpy conversions of the node (no DDS: pure message objects, serialised round trips)."""
from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy (ROS 2 Python wheels) not installed")

from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from ttt3r_ros.session.message_codec import unpack_rgb  # noqa: E402
from ttt3r_ros.session.odometry import body_twist_from_poses  # noqa: E402
from ttt3r_ros.ros import conversions as conv  # noqa: E402


def _image(arr: np.ndarray, encoding: str, pad: int = 0) -> Image:
    h, w = arr.shape[:2]
    row = arr.reshape(h, -1)
    padded = np.zeros((h, row.shape[1] + pad), dtype=np.uint8)
    padded[:, : row.shape[1]] = row
    msg = Image(height=h, width=w, encoding=encoding, step=row.shape[1] + pad)
    msg.data = padded.tobytes()
    return msg


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)


@pytest.mark.parametrize("pad", [0, 3])
def test_image_encodings_to_rgb(rgb: np.ndarray, pad: int) -> None:
    assert np.array_equal(conv.image_to_rgb(_image(rgb, "rgb8", pad)), rgb)
    assert np.array_equal(conv.image_to_rgb(_image(rgb[..., ::-1].copy(), "bgr8", pad)), rgb)
    alpha = np.full(rgb.shape[:2] + (1,), 7, np.uint8)
    assert np.array_equal(conv.image_to_rgb(_image(np.concatenate([rgb, alpha], 2), "rgba8", pad)), rgb)
    assert np.array_equal(conv.image_to_rgb(_image(np.concatenate([rgb[..., ::-1], alpha], 2), "bgra8", pad)), rgb)
    mono = rgb[..., 0].copy()
    out = conv.image_to_rgb(_image(mono, "mono8", pad))
    assert np.array_equal(out, np.repeat(mono[..., None], 3, axis=2)) and out.flags.c_contiguous


def test_image_errors_name_the_problem(rgb: np.ndarray) -> None:
    msg = _image(rgb, "rgb8")
    msg.encoding = "yuv422"
    with pytest.raises(conv.ImageConversionError, match="yuv422"):
        conv.image_to_rgb(msg)
    short = _image(rgb, "rgb8")
    short.data = bytes(short.data)[:-5]
    with pytest.raises(conv.ImageConversionError, match="data length .* != height\\*step"):
        conv.image_to_rgb(short)
    with pytest.raises(conv.ImageConversionError, match="zero-sized"):
        conv.image_to_rgb(Image(height=0, width=0, encoding="rgb8", step=0))
    bad_step = _image(rgb, "rgb8")
    bad_step.step = 7  # less than width * 3
    with pytest.raises(conv.ImageConversionError, match="step"):
        conv.image_to_rgb(bad_step)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_compressed_roundtrip(ext: str) -> None:
    import cv2  # opencv-python-headless is an install requirement (setup.py): missing must fail
    # smooth image so jpeg error stays small
    y, x = np.mgrid[0:32, 0:48]
    rgb = np.stack([x * 5, y * 7, (x + y) * 2], -1).astype(np.uint8)
    ok, buf = cv2.imencode(ext, rgb[..., ::-1])
    assert ok
    msg = CompressedImage(format=ext[1:])
    msg.data = buf.tobytes()
    out = conv.compressed_image_to_rgb(msg)
    assert out.shape == rgb.shape
    tol = 0 if ext == ".png" else 12
    assert np.abs(out.astype(int) - rgb.astype(int)).mean() <= tol
    corrupt = CompressedImage(format="jpeg")
    corrupt.data = b"\xff\xd8\xff\xe0" + bytes(200)
    with pytest.raises(conv.ImageConversionError, match="could not decode"):
        conv.compressed_image_to_rgb(corrupt)
    with pytest.raises(conv.ImageConversionError, match="empty"):
        conv.compressed_image_to_rgb(CompressedImage(format="jpeg"))


def test_float_image_roundtrip_and_header() -> None:
    depth = np.arange(12, dtype=np.float32).reshape(3, 4) / 3
    depth[1, 2] = np.nan
    header = Header(frame_id="cam_optical")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = deserialize_message(serialize_message(conv.float_image(depth, header)), Image)
    assert (msg.encoding, msg.height, msg.width, msg.step) == ("32FC1", 3, 4, 16)
    back = conv.image_to_numpy(msg)
    assert np.array_equal(np.isnan(back), np.isnan(depth))
    assert np.allclose(back[~np.isnan(back)], depth[~np.isnan(depth)])
    assert msg.header.frame_id == "cam_optical" and msg.header.stamp.nanosec == 345


def test_camera_info_validation_and_builder() -> None:
    k = np.array([[50.0, 0, 31.5], [0, 52.0, 23.5], [0, 0, 1]])
    info = conv.camera_info_from_intrinsics(k, 48, 64, Header(frame_id="c"))
    assert (info.height, info.width) == (48, 64)
    assert np.allclose(np.array(info.k).reshape(3, 3), k)
    assert np.allclose(np.array(info.p).reshape(3, 4)[:, :3], k)
    got, reason = conv.intrinsics_from_camera_info(info)
    assert reason == "" and np.allclose(got, k)
    zeros = CameraInfo(height=48, width=64)
    assert conv.intrinsics_from_camera_info(zeros)[0] is None
    assert "uncalibrated" in conv.intrinsics_from_camera_info(zeros)[1]
    nan = conv.camera_info_from_intrinsics(k, 48, 64, Header())
    nan.k[4] = math.nan
    got, reason = conv.intrinsics_from_camera_info(nan)
    assert got is None and "non-finite" in reason
    skewed = conv.camera_info_from_intrinsics(k, 48, 64, Header())
    skewed.k[6] = 5.0   # a K the engine would refuse: refused here, with the reason the node and the reader log
    got, reason = conv.intrinsics_from_camera_info(skewed)
    assert got is None and "last row 0 0 1" in reason


def test_point_cloud_organised_layout_and_nans() -> None:
    h, w = 4, 6
    rng = np.random.default_rng(3)
    pts = rng.normal(size=(h, w, 3)).astype(np.float32)
    cols = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    conf = rng.uniform(1, 5, size=(h, w)).astype(np.float32)
    header = Header(frame_id="cam_optical")
    msg = deserialize_message(serialize_message(conv.point_cloud(pts, cols, conf, header, confidence_threshold=3.0)),
                              PointCloud2)
    assert (msg.height, msg.width) == (h, w)
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, PointField.FLOAT32, 1), ("y", 4, PointField.FLOAT32, 1), ("z", 8, PointField.FLOAT32, 1),
        ("rgb", 12, PointField.FLOAT32, 1), ("confidence", 16, PointField.FLOAT32, 1)]
    assert msg.point_step == 20 and msg.row_step == 20 * w and len(msg.data) == 20 * w * h
    assert msg.is_dense is False and msg.is_bigendian is False
    arr = conv.point_cloud_to_numpy(msg)
    low = conf < 3.0
    assert low.any() and (~low).any()
    for name, idx in (("x", 0), ("y", 1), ("z", 2)):
        assert np.all(np.isnan(arr[name][low]))
        assert np.array_equal(arr[name][~low], pts[..., idx][~low])
    assert np.array_equal(arr["confidence"], conf)
    assert np.array_equal(unpack_rgb(arr["rgb"]), cols)
    # PCL convention: uint32 0x00RRGGBB
    bits = arr["rgb"].view(np.uint32)
    assert bits[0, 0] == (int(cols[0, 0, 0]) << 16) | (int(cols[0, 0, 1]) << 8) | int(cols[0, 0, 2])
    # ... stored little endian: bytes b, g, r, 0 at the rgb offset (PCL / RViz RGB8 read them so)
    r, g, b = (int(v) for v in cols[0, 0])
    assert bytes(msg.data[12:16]) == bytes([b, g, r, 0])


def test_live_and_offline_clouds_share_one_layout() -> None:
    """The node's rclpy cloud and the result bag's rosbags cloud come from one packer: same fields, same bytes."""
    from ttt3r_ros.offline.bag_writing import MessageFactory
    from ttt3r_ros.session.message_codec import cloud_to_numpy, point_cloud2

    rng = np.random.default_rng(5)
    pts = rng.normal(size=(3, 5, 3)).astype(np.float32)
    pts[0, 0, 1] = np.nan
    cols = rng.integers(0, 256, size=(3, 5, 3), dtype=np.uint8)
    conf = rng.uniform(1, 5, size=(3, 5)).astype(np.float32)
    live = conv.point_cloud(pts, cols, conf, Header(frame_id="cam"), confidence_threshold=2.5)
    factory = MessageFactory()
    offline = point_cloud2(factory, factory.header(0, "cam"), pts, cols, conf, confidence_threshold=2.5)
    assert [(f.name, f.offset, f.datatype, f.count) for f in live.fields] == [
        (f.name, f.offset, f.datatype, f.count) for f in offline.fields]
    assert (live.height, live.width, live.point_step, live.row_step, live.is_dense) == (
        offline.height, offline.width, offline.point_step, offline.row_step, offline.is_dense)
    assert bytes(live.data) == offline.data.tobytes()
    assert np.isnan(cloud_to_numpy(live)["x"][0])   # non-finite input point -> NaN point


def test_point_cloud_unorganised_dense() -> None:
    pts = np.ones((10, 3), np.float32)
    msg = conv.point_cloud(pts, np.zeros((10, 3), np.uint8), np.full(10, 2.0, np.float32), Header(frame_id="odom"))
    assert (msg.height, msg.width, msg.is_dense) == (1, 10, True)


def test_pose_messages_roundtrip() -> None:
    from ttt3r_ros.engine import geometry

    angle = 0.7
    r = np.array([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    t = geometry.make_se3(r @ geometry.R_BODY_FROM_OPTICAL, [1.0, -2.0, 0.5])
    tf = conv.transform_from_matrix(t)
    assert np.allclose(conv.matrix_from_transform(tf), t)
    odom = conv.odometry(t, Header(frame_id="odom"), "base_link", [0.1] * 6, [0.2] * 6, (1, 0, 0), (0, 0, 0.5))
    cov = np.array(odom.pose.covariance).reshape(6, 6)
    assert np.allclose(np.diag(cov), 0.1) and np.count_nonzero(cov) == 6
    assert odom.child_frame_id == "base_link" and odom.twist.twist.angular.z == 0.5
    # finite-difference twist: rotate 0.1 rad about z and move 0.2 m forward in 0.5 s
    a = geometry.make_se3(np.eye(3), [0, 0, 0])
    rz = np.array([[math.cos(0.1), -math.sin(0.1), 0], [math.sin(0.1), math.cos(0.1), 0], [0, 0, 1]])
    b = geometry.make_se3(rz, [0.2, 0, 0])
    lin, ang = body_twist_from_poses(a, b, 0.5)
    assert np.allclose(lin, [0.4, 0, 0]) and np.allclose(ang, [0, 0, 0.2])
