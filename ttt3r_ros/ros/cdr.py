"""The node's big messages as serialized CDR bytes, read and written with numpy (no Python message objects).

Why: a 640x480 rgb8 ``Image`` deserialised by rclpy builds a Python message (and copies its 900 KB) under the GIL
in the executor thread, even for frames that keep-latest then drops; a 4 MB ``PointCloud2`` or a 32FC1 ``Image``
built as a Python message costs several copies and per-field conversions per frame. The node subscribes to images
with ``raw=True`` (the callback gets the serialized bytes) and parses only the frames it processes; it publishes
its dense outputs as bytes (``Publisher.publish`` accepts serialized messages).

Format: the plain CDR that ROS 2's RMWs exchange: a 4-byte encapsulation header (0x00 0x01 = little endian), then
the fields in declaration order, each primitive aligned to its size relative to the end of that header; a string is
a uint32 length (including the terminating NUL) and its bytes; a sequence is a uint32 count and its elements.
Anything else (a big-endian or XCDR2 payload from a foreign DDS) is handed to rclpy's own deserialize_message.
test_node_cdr.py checks every function against rclpy's serialize_message / deserialize_message.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from ttt3r_ros.session import message_codec

CDR_LE_HEADER = b"\x00\x01\x00\x00"
_U32 = struct.Struct("<I")
_STAMP = struct.Struct("<iI")


class CdrError(ValueError):
    """Serialized bytes that do not hold the expected message (truncated or malformed)."""


@dataclass
class Stamp:
    sec: int
    nanosec: int


@dataclass
class MessageHeader:
    stamp: Stamp
    frame_id: str


@dataclass
class RawImage:
    """The fields of sensor_msgs/Image the node reads; ``data`` is a view into the received bytes (no copy)."""
    header: MessageHeader
    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: memoryview


@dataclass
class RawCompressedImage:
    """sensor_msgs/CompressedImage; ``data`` is a view into the received bytes."""
    header: MessageHeader
    format: str
    data: memoryview


class _Reader:
    def __init__(self, buffer: bytes) -> None:
        if len(buffer) < 4:
            raise CdrError(f"{len(buffer)} bytes: shorter than the CDR encapsulation header")
        self.view = memoryview(buffer)[4:]
        self.pos = 0

    def _align(self, size: int) -> None:
        self.pos += (-self.pos) % size

    def _need(self, n: int) -> None:
        if self.pos + n > len(self.view):
            raise CdrError(f"truncated message: needs {self.pos + n} bytes, has {len(self.view)}")

    def u32(self) -> int:
        self._align(4)
        self._need(4)
        (value,) = _U32.unpack_from(self.view, self.pos)
        self.pos += 4
        return value

    def u8(self) -> int:
        self._need(1)
        value = self.view[self.pos]
        self.pos += 1
        return value

    def stamp(self) -> Stamp:
        self._align(4)
        self._need(8)
        sec, nanosec = _STAMP.unpack_from(self.view, self.pos)
        self.pos += 8
        return Stamp(sec, nanosec)

    def string(self) -> str:
        n = self.u32()
        self._need(n)
        raw = self.view[self.pos:self.pos + n]
        self.pos += n
        return bytes(raw[:-1] if n and raw[-1] == 0 else raw).decode("utf-8", errors="replace")

    def octets(self) -> memoryview:
        n = self.u32()
        self._need(n)
        raw = self.view[self.pos:self.pos + n]
        self.pos += n
        return raw

    def header(self) -> MessageHeader:
        return MessageHeader(self.stamp(), self.string())


def is_plain_little_endian(buffer: bytes) -> bool:
    """Whether this module can read `buffer` (else: rclpy.serialization.deserialize_message)."""
    return bytes(buffer[:2]) == CDR_LE_HEADER[:2]


def parse_image(buffer: bytes) -> RawImage:
    """sensor_msgs/Image bytes -> RawImage (pixel data not copied). Raises CdrError."""
    r = _Reader(buffer)
    header = r.header()
    height, width = r.u32(), r.u32()
    encoding = r.string()
    is_bigendian = r.u8()
    step = r.u32()
    return RawImage(header, height, width, encoding, is_bigendian, step, r.octets())


def parse_compressed_image(buffer: bytes) -> RawCompressedImage:
    """sensor_msgs/CompressedImage bytes -> RawCompressedImage (data not copied). Raises CdrError."""
    r = _Reader(buffer)
    header = r.header()
    return RawCompressedImage(header, r.string(), r.octets())


def parse_header(buffer: bytes) -> MessageHeader:
    """Only the std_msgs/Header that starts Image and CompressedImage (cheap: for frames that are not decoded)."""
    return _Reader(buffer).header()


# ------------------------------------------------------------------------------------------------ writing
class _Writer:
    """Collects the fixed part of a message (everything but its big payload) as bytes, with CDR alignment."""

    def __init__(self) -> None:
        self.parts: list[bytes] = [CDR_LE_HEADER]
        self.pos = 0   # relative to the end of the encapsulation header

    def _put(self, raw: bytes) -> None:
        self.parts.append(raw)
        self.pos += len(raw)

    def _align(self, size: int) -> None:
        pad = (-self.pos) % size
        if pad:
            self._put(b"\x00" * pad)

    def u32(self, value: int) -> None:
        self._align(4)
        self._put(_U32.pack(value))

    def u8(self, value: int) -> None:
        self._put(bytes((value,)))

    def string(self, text: str) -> None:
        raw = text.encode("utf-8") + b"\x00"
        self.u32(len(raw))
        self._put(raw)

    def header(self, header: Any) -> None:
        self._align(4)
        self._put(_STAMP.pack(int(header.stamp.sec), int(header.stamp.nanosec)))
        self.string(header.frame_id)

    def prefix(self) -> bytes:
        return b"".join(self.parts)


def _with_payload(prefix: bytes, payload: np.ndarray, suffix: bytes = b"") -> bytes:
    """prefix + payload bytes + suffix in one buffer, the payload copied once."""
    out = np.empty(len(prefix) + payload.nbytes + len(suffix), dtype=np.uint8)
    out[:len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
    out[len(prefix):len(prefix) + payload.nbytes] = payload.reshape(-1).view(np.uint8)
    if suffix:
        out[len(prefix) + payload.nbytes:] = np.frombuffer(suffix, dtype=np.uint8)
    return out.tobytes()


def float_image(values: np.ndarray, header: Any) -> bytes:
    """HxW float -> serialized sensor_msgs/Image, 32FC1, little endian, step = 4 * width (as conversions.float_image)."""
    arr = np.ascontiguousarray(values, dtype="<f4")
    if arr.ndim != 2:
        raise ValueError(f"32FC1 needs a 2-D array, got shape {arr.shape}")
    return _image(arr, "32FC1", header)


def rgb8_image(colours: np.ndarray, header: Any) -> bytes:
    """HxWx3 uint8 -> serialized sensor_msgs/Image, rgb8, step = 3 * width (as conversions.numpy_to_image)."""
    arr = np.ascontiguousarray(colours, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"rgb8 needs an HxWx3 array, got shape {arr.shape}")
    return _image(arr, "rgb8", header)


def _image(arr: np.ndarray, encoding: str, header: Any) -> bytes:
    """A contiguous HxW[xC] array -> serialized sensor_msgs/Image (little endian, step = one row's bytes)."""
    h, w = arr.shape[:2]
    wr = _Writer()
    wr.header(header)
    wr.u32(h)
    wr.u32(w)
    wr.string(encoding)
    wr.u8(0)
    wr.u32(arr.nbytes // h if h else 0)
    wr.u32(arr.nbytes)
    return _with_payload(wr.prefix(), arr)


def point_cloud(points_xyz: np.ndarray, colours_uint8: np.ndarray, confidence: np.ndarray, header: Any,
                confidence_threshold: float | None = None) -> bytes:
    """Serialized sensor_msgs/PointCloud2 in message_codec's layout (the same as conversions.point_cloud)."""
    packed = message_codec.pack_cloud(points_xyz, colours_uint8, confidence, confidence_threshold)
    wr = _Writer()
    wr.header(header)
    wr.u32(packed.height)
    wr.u32(packed.width)
    wr.u32(len(message_codec.CLOUD_FIELDS))
    for name, offset, datatype, count in message_codec.CLOUD_FIELDS:
        wr.string(name)
        wr.u32(offset)
        wr.u8(datatype)
        wr.u32(count)
    wr.u8(0)                       # is_bigendian
    wr.u32(packed.point_step)
    wr.u32(packed.row_step)
    wr.u32(packed.data.nbytes)
    return _with_payload(wr.prefix(), packed.data, bytes((1 if packed.is_dense else 0,)))
