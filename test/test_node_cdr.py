"""ros/cdr.py against rclpy's own serialization: what the node parses from raw subscriptions and what it publishes
as serialized bytes must be exactly what rclpy would have produced / read."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy (ROS 2) not installed")

from builtin_interfaces.msg import Time  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image, PointCloud2  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from ttt3r_ros.ros import cdr, conversions as conv  # noqa: E402

# frame ids of every length mod 4 (the CDR padding after a string differs), a non-ASCII one, an empty one
FRAME_IDS = ("", "c", "ca", "cam", "cam_", "camera_optical", "kamera_ö")


def _header(frame_id: str, sec: int = 1_700_000_123, nanosec: int = 987_654_321) -> Header:
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


@pytest.mark.parametrize("frame_id", FRAME_IDS)
@pytest.mark.parametrize("encoding,channels", [("rgb8", 3), ("mono8", 1), ("bgra8", 4)])
def test_parse_image_reads_what_rclpy_wrote(frame_id: str, encoding: str, channels: int) -> None:
    rng = np.random.default_rng(len(frame_id) + channels)
    h, w, pad = 7, 5, 3    # padded rows: step > width * channels
    step = w * channels + pad
    data = rng.integers(0, 256, size=h * step, dtype=np.uint8).tobytes()
    msg = Image(header=_header(frame_id, sec=-5), height=h, width=w, encoding=encoding, is_bigendian=1, step=step,
                data=data)
    raw = serialize_message(msg)
    assert cdr.is_plain_little_endian(raw)
    parsed = cdr.parse_image(raw)
    assert (parsed.header.stamp.sec, parsed.header.stamp.nanosec, parsed.header.frame_id) == (-5, 987_654_321,
                                                                                                frame_id)
    assert (parsed.height, parsed.width, parsed.encoding, parsed.is_bigendian, parsed.step) == (h, w, encoding, 1,
                                                                                                 step)
    assert bytes(parsed.data) == data
    header = cdr.parse_header(raw)
    assert header.frame_id == frame_id and header.stamp.sec == -5
    # decoding through the shared codec gives the same pixels as from rclpy's message
    parsed.is_bigendian = msg.is_bigendian = 0
    assert np.array_equal(conv.image_to_rgb(parsed), conv.image_to_rgb(msg))


@pytest.mark.parametrize("frame_id", FRAME_IDS[:4])
def test_parse_compressed_image(frame_id: str) -> None:
    msg = CompressedImage(header=_header(frame_id), format="rgb8; jpeg compressed bgr8", data=b"\xff\xd8\x01\x02\x03")
    parsed = cdr.parse_compressed_image(serialize_message(msg))
    assert (parsed.header.frame_id, parsed.format, bytes(parsed.data)) == (frame_id, msg.format, bytes(msg.data))


def test_truncated_bytes_are_refused_with_a_reason() -> None:
    raw = serialize_message(Image(header=_header("cam"), height=2, width=2, encoding="mono8", step=2,
                                  data=b"\x01\x02\x03\x04"))
    for cut in (0, 3, 10, len(raw) - 1):
        with pytest.raises(cdr.CdrError):
            cdr.parse_image(raw[:cut])


@pytest.mark.parametrize("frame_id", FRAME_IDS)
def test_float_image_bytes_equal_rclpy_serialization(frame_id: str) -> None:
    values = np.random.default_rng(1).normal(size=(6, 9)).astype(np.float32)
    values[2, 3] = np.nan
    header = _header(frame_id)
    ours = cdr.float_image(values, header)
    back = deserialize_message(ours, Image)
    # field by field (rclpy leaves uninitialised bytes in CDR padding, so the byte strings may differ there)
    assert back == conv.float_image(values, header)
    assert len(ours) == len(serialize_message(conv.float_image(values, header)))
    assert back.encoding == "32FC1" and back.header.frame_id == frame_id
    assert np.array_equal(conv.image_to_numpy(back), values, equal_nan=True)


@pytest.mark.parametrize("frame_id", FRAME_IDS)
@pytest.mark.parametrize("organised", [True, False])
def test_point_cloud_bytes_read_back_by_rclpy_equal_the_message(frame_id: str, organised: bool) -> None:
    rng = np.random.default_rng(2)
    shape = (5, 4) if organised else (11,)
    points = rng.normal(size=(*shape, 3)).astype(np.float32)
    points.reshape(-1, 3)[3, 1] = np.inf   # a non-finite point becomes NaN
    colours = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    confidence = rng.uniform(1.0, 3.0, size=shape).astype(np.float32)
    header = _header(frame_id)
    ours = deserialize_message(cdr.point_cloud(points, colours, confidence, header, confidence_threshold=2.0),
                               PointCloud2)
    theirs = conv.point_cloud(points, colours, confidence, header, confidence_threshold=2.0)
    # field by field (rclpy leaves uninitialised bytes in CDR padding, so the byte strings may differ there)
    assert ours == theirs
    assert not ours.is_dense
    assert len(cdr.point_cloud(points, colours, confidence, header, 2.0)) == len(serialize_message(theirs))


def test_publisher_accepts_the_bytes() -> None:
    """rclpy's Publisher.publish takes serialized bytes only as `bytes` (the node relies on that type)."""
    out = cdr.float_image(np.zeros((2, 2), np.float32), _header("x"))
    assert type(out) is bytes and type(cdr.point_cloud(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.uint8),
                                                         np.ones(2, np.float32), _header("x"))) is bytes
