"""Helpers for the offline tests (no tests here): rosbag2 files written directly with rosbags' Writer and typestore
(independent of ttt3r_ros.offline's own writer), images, trajectories, and the tiny model config."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import cv2
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from scipy.spatial.transform import Rotation

if TYPE_CHECKING:
    from ttt3r_ros.offline.map_command import MapOptions

TYPESTORE = get_typestore(Stores.ROS2_KILTED)
T = TYPESTORE.types
STAMP0_NS = 1_700_000_000_000_000_000  # a realistic epoch, so stamp 0 handling is not exercised by accident
PERIOD_NS = 100_000_000
K_TEST = np.array([[52.0, 0.0, 31.5], [0.0, 52.0, 23.5], [0.0, 0.0, 1.0]])
REPO_ROOT = Path(__file__).resolve().parents[1]


def pattern_image(index: int, h: int = 48, w: int = 64) -> np.ndarray:
    """Deterministic RGB uint8 image whose content moves with `index` (a textured pattern panned sideways)."""
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    u = u + 3.0 * index
    r = 127 + 100 * np.sin(u / 5.0) * np.cos(v / 7.0)
    g = 127 + 100 * np.cos(u / 9.0 + v / 4.0)
    b = (u * 3 + v * 5) % 256
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


def _time(stamp_ns: int):
    return T["builtin_interfaces/msg/Time"](sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)


def _header(stamp_ns: int, frame_id: str = "camera_optical_frame"):
    return T["std_msgs/msg/Header"](stamp=_time(stamp_ns), frame_id=frame_id)


def image_msg(rgb: np.ndarray, stamp_ns: int, encoding: str = "rgb8", pad: int = 0):
    """sensor_msgs/Image in `encoding`, each row padded by `pad` bytes (so step != width * channels)."""
    if encoding == "rgb8":
        pixels = rgb
    elif encoding == "bgr8":
        pixels = rgb[:, :, ::-1]
    elif encoding == "rgba8":
        pixels = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    elif encoding == "bgra8":
        pixels = np.concatenate([rgb[:, :, ::-1], np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    elif encoding == "mono8":
        pixels = rgb[:, :, 1:2]
    else:
        pixels = rgb
    h, w = pixels.shape[:2]
    rows = np.ascontiguousarray(pixels).reshape(h, -1)
    rows = np.concatenate([rows, np.full((h, pad), 7, np.uint8)], axis=1)
    return T["sensor_msgs/msg/Image"](header=_header(stamp_ns), height=h, width=w, encoding=encoding,
                                      is_bigendian=0, step=rows.shape[1], data=rows.reshape(-1))


def compressed_msg(rgb: np.ndarray, stamp_ns: int, fmt: str = "png"):
    ok, data = cv2.imencode(".png" if fmt == "png" else ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return T["sensor_msgs/msg/CompressedImage"](header=_header(stamp_ns), format=f"rgb8; {fmt} compressed bgr8",
                                                data=data.reshape(-1))


def camera_info_msg(stamp_ns: int, k: np.ndarray, h: int = 48, w: int = 64):
    p = np.zeros((3, 4))
    p[:3, :3] = k
    roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return T["sensor_msgs/msg/CameraInfo"](header=_header(stamp_ns), height=h, width=w, distortion_model="plumb_bob",
                                           d=np.zeros(5), k=np.asarray(k, float).reshape(-1),
                                           r=np.eye(3).reshape(-1), p=p.reshape(-1), binning_x=0, binning_y=0,
                                           roi=roi)


def write_bag(path: Path, storage: str = "sqlite3", n_frames: int = 6, compressed: bool = False,
              camera_info: bool = False, encoding: str = "rgb8", pad: int = 0,
              corrupt: dict[int, str] | None = None, images: Sequence[np.ndarray] | None = None,
              topic: str | None = None, extra_image_topics: Iterable[str] = (),
              receive_order: Sequence[int] | None = None, k: np.ndarray = K_TEST) -> list[int]:
    """Writes a bag; returns the header stamps (ns) of the images that are NOT corrupt, in stamp order.

    corrupt: frame index -> 'garbage' (random bytes instead of CDR), 'truncated' (Image data shorter than
    height*step), 'badjpeg' (CompressedImage with broken bytes), 'encoding' (unsupported encoding 16UC1).
    receive_order: order in which frames are written (receive times follow it; header stamps do not).
    """
    corrupt = corrupt or {}
    plugin = StoragePlugin.SQLITE3 if storage == "sqlite3" else StoragePlugin.MCAP
    msgtype = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    topic = topic or ("/cam/image_raw/compressed" if compressed else "/cam/image_raw")
    rng = np.random.default_rng(0)
    good: list[int] = []
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conn = writer.add_connection(topic, msgtype, typestore=TYPESTORE)
        info_conn = (writer.add_connection("/cam/camera_info", "sensor_msgs/msg/CameraInfo", typestore=TYPESTORE)
                     if camera_info else None)
        extra = [writer.add_connection(t, "sensor_msgs/msg/Image", typestore=TYPESTORE) for t in extra_image_topics]
        other = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=TYPESTORE)
        order = list(receive_order) if receive_order is not None else list(range(n_frames))
        for slot, i in enumerate(order):
            stamp = STAMP0_NS + i * PERIOD_NS
            receive = STAMP0_NS + slot * PERIOD_NS + 1_000_000
            rgb = images[i] if images is not None else pattern_image(i)
            if info_conn is not None:
                writer.write(info_conn, receive - 500_000,
                             TYPESTORE.serialize_cdr(camera_info_msg(stamp, k, *rgb.shape[:2]),
                                                     "sensor_msgs/msg/CameraInfo"))
            kind = corrupt.get(i)
            if kind == "garbage":
                data = rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
            elif compressed:
                msg = compressed_msg(rgb, stamp)
                if kind == "badjpeg":
                    msg = T["sensor_msgs/msg/CompressedImage"](header=msg.header, format=msg.format,
                                                               data=np.frombuffer(b"\xff\xd8\xff" + b"\x00" * 64,
                                                                                  np.uint8).copy())
                data = TYPESTORE.serialize_cdr(msg, msgtype)
            else:
                msg = image_msg(rgb, stamp, encoding, pad)
                if kind == "truncated":
                    msg = T["sensor_msgs/msg/Image"](header=msg.header, height=msg.height, width=msg.width,
                                                     encoding=msg.encoding, is_bigendian=0, step=msg.step,
                                                     data=msg.data[: msg.data.size // 2].copy())
                elif kind == "encoding":
                    msg = T["sensor_msgs/msg/Image"](header=msg.header, height=msg.height, width=msg.width,
                                                     encoding="16UC1", is_bigendian=0, step=msg.step,
                                                     data=msg.data)
                data = TYPESTORE.serialize_cdr(msg, msgtype)
            writer.write(conn, receive, data)
            for c in extra:
                writer.write(c, receive, TYPESTORE.serialize_cdr(image_msg(rgb, stamp), "sensor_msgs/msg/Image"))
            writer.write(other, receive, TYPESTORE.serialize_cdr(T["std_msgs/msg/String"](data="hi"),
                                                                 "std_msgs/msg/String"))
            if kind is None:
                good.append(stamp)
    return sorted(good)


def write_image_folder(folder: Path, n: int, times: Sequence[float] | None = None) -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    images = [pattern_image(i) for i in range(n)]
    for i, rgb in enumerate(images):
        cv2.imwrite(str(folder / f"img_{i}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if times is not None:
        (folder / "times.txt").write_text("".join(f"{t:.6f}\n" for t in times))
    return images


def write_tum_file(path: Path, timestamps: np.ndarray, positions: np.ndarray, quats_xyzw: np.ndarray) -> None:
    rows = np.column_stack([timestamps, positions, quats_xyzw])
    np.savetxt(path, rows, fmt="%.12f", header="timestamp tx ty tz qx qy qz qw")


def write_kitti_file(path: Path, positions: np.ndarray, quats_xyzw: np.ndarray) -> None:
    matrices = np.zeros((len(positions), 3, 4))
    matrices[:, :, :3] = Rotation.from_quat(quats_xyzw).as_matrix()
    matrices[:, :, 3] = positions
    np.savetxt(path, matrices.reshape(len(positions), 12), fmt="%.12f")


def ground_truth(n: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 3D trajectory (helix with wobbling orientation): timestamps, positions, quaternions xyzw."""
    t = np.arange(n) * 0.1
    positions = np.column_stack([2.0 * np.cos(0.3 * t), 1.5 * np.sin(0.3 * t), 0.2 * t + 0.3 * np.sin(t)])
    quats = Rotation.from_euler("zyx", np.column_stack([0.3 * t, 0.1 * np.sin(t), 0.05 * t])).as_quat()
    return t + 1000.0, positions, quats


TINY_MODEL_CONFIG = "tiny"  # the model package's preset with the parity_tiny.json sizes (random weights in tests)


def map_args(input_path: Path, out: Path, model_config: str, *extra: str) -> list[str]:
    """argv for `ttt3r-ros map` with the tiny random model at 64 px (CPU, fast)."""
    return ["map", str(input_path), "--out", str(out), "--random-weights", "--model-config", model_config,
            "--image-size", "64", "--device", "cpu", "--confidence-threshold", "1.0", "--no-progress", *extra]


def parse_map_args(argv: list[str]) -> MapOptions:
    """`ttt3r-ros map` argv -> the typed MapOptions that map_input takes (argparse only fills it)."""
    from ttt3r_ros.offline import map_command

    parser = argparse.ArgumentParser()
    map_command.add_arguments(parser)
    return map_command.options_from_args(parser.parse_args(argv[1:]))
