"""Writing rosbag2 recordings with rosbags (no ROS): a writer that only appears at its final path when closed,
and builders for the standard messages the offline tools write."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer

from ..session import message_codec
from .bag_io import default_typestore
from .errors import OfflineInputError

STORAGES = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
_INFINITE = QosTime(sec=2147483647, nsec=4294967295)


def qos_profile(reliable: bool = True, transient_local: bool = False, depth: int = 10) -> Qos:
    """The QoS recorded as 'offered' for a topic; `ros2 bag play` re-offers it (transient local for /tf_static
    and latched maps, so late subscribers such as RViz still get them)."""
    return Qos(QosHistory.KEEP_LAST, depth,
               QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
               QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
               _INFINITE, _INFINITE, QosLiveliness.AUTOMATIC, _INFINITE, False)


class AtomicBagWriter:
    """rosbags Writer writing into a hidden sibling folder; `finish()` closes it and renames it to `path`
    (so `path` is either absent or a complete bag), `abort()` removes it."""

    def __init__(self, path: str | Path, storage: str = "sqlite3", overwrite: bool = False,
                 version: int = 9) -> None:
        if storage not in STORAGES:
            raise OfflineInputError(f"storage must be one of {', '.join(STORAGES)}, not {storage!r}")
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise OfflineInputError(f"{self.path} already exists; remove it, choose another path or pass --overwrite")
        self.overwrite = overwrite
        self.staging_dir = self.path.parent / f".{self.path.name}.partial"
        if self.staging_dir.exists():
            shutil.rmtree(self.staging_dir)  # left over from a killed run of ours
        self.staging_dir.mkdir(parents=True)
        self.typestore = default_typestore()
        self.writer = Writer(self.staging_dir / self.path.name, version=version, storage_plugin=STORAGES[storage])
        self.writer.open()
        self.storage = storage
        self.message_count = 0
        self._closed = False

    def add_topic(self, topic: str, msgtype: str, qos: Qos | None = None) -> Any:
        profiles: Sequence[Qos] = (qos,) if qos is not None else ()
        return self.writer.add_connection(topic, msgtype, typestore=self.typestore, offered_qos_profiles=profiles)

    def write(self, connection: Any, timestamp_ns: int, message: Any) -> None:
        self.writer.write(connection, int(timestamp_ns), self.typestore.serialize_cdr(message, connection.msgtype))
        self.message_count += 1

    @property
    def closed(self) -> bool:
        return self._closed

    def finish(self) -> Path:
        if self._closed:
            return self.path
        self.writer.close()
        self._closed = True
        if self.path.exists():
            shutil.rmtree(self.path) if self.path.is_dir() else self.path.unlink()
        (self.staging_dir / self.path.name).rename(self.path)
        self.staging_dir.rmdir()
        return self.path

    def abort(self) -> None:
        if not self._closed:
            try:
                self.writer.close()
            except Exception:
                pass
            self._closed = True
        shutil.rmtree(self.staging_dir, ignore_errors=True)

    def __enter__(self) -> "AtomicBagWriter":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()


# ------------------------------------------------------------------------------------------------ message builders
class MessageFactory:
    """Builds rosbags message objects from numpy data (the typestore's classes). It is also the rosbags message
    factory of ``ttt3r_ros.session.message_codec`` (``types``, ``byte_array``): clouds, poses, TF and odometry are
    laid out there, once for the node and the result bag."""

    def __init__(self, typestore: Any | None = None) -> None:
        self.ts = typestore or default_typestore()
        self.types = self.ts.types

    def time(self, stamp_ns: int) -> Any:
        return self.types["builtin_interfaces/msg/Time"](sec=int(stamp_ns // 1_000_000_000),
                                                         nanosec=int(stamp_ns % 1_000_000_000))

    def header(self, stamp_ns: int, frame_id: str) -> Any:
        return self.types["std_msgs/msg/Header"](stamp=self.time(stamp_ns), frame_id=frame_id)

    def image(self, rgb: np.ndarray, stamp_ns: int, frame_id: str, encoding: str = "rgb8") -> Any:
        if encoding == "rgb8":
            pixels = np.ascontiguousarray(rgb, dtype=np.uint8)
        elif encoding == "bgr8":
            pixels = np.ascontiguousarray(rgb[:, :, ::-1], dtype=np.uint8)
        elif encoding == "mono8":
            pixels = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
        else:
            raise OfflineInputError(f"cannot write encoding {encoding!r} (rgb8, bgr8, mono8)")
        height, width = pixels.shape[:2]
        channels = 1 if pixels.ndim == 2 else pixels.shape[2]
        return self.types["sensor_msgs/msg/Image"](
            header=self.header(stamp_ns, frame_id), height=height, width=width, encoding=encoding,
            is_bigendian=0, step=width * channels, data=pixels.reshape(-1))

    def compressed_image(self, rgb: np.ndarray, stamp_ns: int, frame_id: str, fmt: str = "jpeg",
                         jpeg_quality: int = 95) -> Any:
        bgr = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2BGR)
        if fmt == "jpeg":
            ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        elif fmt == "png":
            ok, encoded = cv2.imencode(".png", bgr)
        else:
            raise OfflineInputError(f"compressed format must be jpeg or png, not {fmt!r}")
        if not ok:
            raise OfflineInputError(f"OpenCV could not encode a {fmt} image")
        # image_transport's compressed format string: "<original encoding>; <codec> compressed <codec encoding>"
        return self.types["sensor_msgs/msg/CompressedImage"](
            header=self.header(stamp_ns, frame_id), format=f"rgb8; {fmt} compressed bgr8",
            data=np.asarray(encoded, dtype=np.uint8).reshape(-1))

    def camera_info(self, k: np.ndarray, width: int, height: int, stamp_ns: int, frame_id: str,
                    distortion: Sequence[float] = (), distortion_model: str = "plumb_bob") -> Any:
        k = np.asarray(k, dtype=np.float64).reshape(3, 3)
        projection = np.zeros((3, 4))
        projection[:3, :3] = k
        d = np.asarray(list(distortion) or [0.0] * 5, dtype=np.float64)
        roi = self.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                             do_rectify=False)
        return self.types["sensor_msgs/msg/CameraInfo"](
            header=self.header(stamp_ns, frame_id), height=int(height), width=int(width),
            distortion_model=distortion_model, d=d, k=k.reshape(-1), r=np.eye(3).reshape(-1),
            p=projection.reshape(-1), binning_x=0, binning_y=0, roi=roi)

    @staticmethod
    def byte_array(data: np.ndarray) -> np.ndarray:
        """A uint8[] field's value (rosbags keeps numpy arrays)."""
        return data

    def transform_stamped(self, matrix: np.ndarray, stamp_ns: int, parent: str, child: str) -> Any:
        return message_codec.transform_stamped(self, self.header(stamp_ns, parent), child, matrix)

    def pose(self, matrix: np.ndarray) -> Any:
        return message_codec.pose(self, matrix)
