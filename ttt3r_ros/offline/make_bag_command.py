"""`ttt3r-ros make-bag INPUT OUT_BAG`: an image folder or video -> rosbag2 (Image or CompressedImage, optional
CameraInfo), so a dataset can be replayed into the live node with `ros2 bag play`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..session.image_codec import CAMERA_INFO_TYPE, COMPRESSED_IMAGE_TYPE, IMAGE_TYPE
from ..session.settings import OFFLINE_CAMERA_FRAME
from .bag_writing import STORAGES, AtomicBagWriter, MessageFactory, qos_profile
from .errors import OfflineInputError
from .readers import FolderFrameSource, VideoFrameSource, VIDEO_SUFFIXES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="image folder (times.txt / TUM rgb.txt / --fps) or video file")
    parser.add_argument("output", help="rosbag2 folder to create")
    parser.add_argument("--storage", choices=sorted(STORAGES), default="sqlite3", help="bag storage (default sqlite3)")
    parser.add_argument("--compressed", action="store_true",
                        help="write sensor_msgs/CompressedImage (jpeg) instead of raw sensor_msgs/Image")
    parser.add_argument("--compressed-format", choices=("jpeg", "png"), default="jpeg")
    parser.add_argument("--jpeg-quality", type=int, default=95)
    parser.add_argument("--encoding", choices=("rgb8", "bgr8", "mono8"), default="rgb8",
                        help="raw image encoding (default rgb8)")
    parser.add_argument("--topic", default=None,
                        help="image topic (default /camera/image_raw, or /camera/image_raw/compressed)")
    parser.add_argument("--camera-info-topic", default="/camera/camera_info",
                        help="CameraInfo topic, written when intrinsics are given (default /camera/camera_info)")
    parser.add_argument("--frame-id", default=OFFLINE_CAMERA_FRAME,
                        help="header frame_id (default camera_optical_frame)")
    parser.add_argument("--fps", type=float, default=None,
                        help="frame rate for timestamps when the folder has no times.txt/rgb.txt, or to override "
                             "a video's rate")
    parser.add_argument("--time-offset", type=float, default=0.0,
                        help="seconds added to every timestamp (e.g. to start at a wall-clock epoch)")
    parser.add_argument("--fx", type=float, default=None)
    parser.add_argument("--fy", type=float, default=None)
    parser.add_argument("--cx", type=float, default=None)
    parser.add_argument("--cy", type=float, default=None)
    parser.add_argument("--camera-yaml", default=None,
                        help="camera calibration YAML (ROS camera_calibration format: camera_matrix, "
                             "distortion_coefficients, distortion_model)")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    parser.add_argument("--bag-version", type=int, choices=(8, 9), default=9,
                        help="rosbag2 metadata version (9: Jazzy and newer; 8 for older players)")


def load_camera_yaml(path: str | Path) -> tuple[np.ndarray, list[float], str]:
    """K, distortion coefficients and model from a ROS camera_calibration YAML file."""
    from ruamel.yaml import YAML

    yaml_path = Path(path)
    if not yaml_path.is_file():
        raise OfflineInputError(f"no such camera YAML: {yaml_path}")
    try:
        data = YAML(typ="safe").load(yaml_path.read_text())
        k = np.asarray(data["camera_matrix"]["data"], dtype=np.float64).reshape(3, 3)
    except Exception as err:
        raise OfflineInputError(f"{yaml_path}: expected camera_matrix.data with 9 numbers ({err})") from err
    distortion = [float(v) for v in (data.get("distortion_coefficients") or {}).get("data", [])]
    model = str(data.get("distortion_model", "plumb_bob"))
    if not np.all(np.isfinite(k)) or k[0, 0] <= 0 or k[1, 1] <= 0:
        raise OfflineInputError(f"{yaml_path}: camera_matrix has no valid focal lengths: {k.tolist()}")
    return k, distortion, model


def intrinsics_from_args(args: argparse.Namespace) -> tuple[np.ndarray | None, list[float], str]:
    values = [args.fx, args.fy, args.cx, args.cy]
    if args.camera_yaml and any(v is not None for v in values):
        raise OfflineInputError("give either --camera-yaml or --fx/--fy/--cx/--cy, not both")
    if args.camera_yaml:
        return load_camera_yaml(args.camera_yaml)
    if all(v is None for v in values):
        return None, [], "plumb_bob"
    if any(v is None for v in values):
        raise OfflineInputError("intrinsics need all four of --fx --fy --cx --cy")
    fx, fy, cx, cy = values
    if fx <= 0 or fy <= 0:
        raise OfflineInputError(f"focal lengths must be positive (fx={fx}, fy={fy})")
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]), [], "plumb_bob"


def make_bag(input_path: str | Path, output: str | Path, storage: str = "sqlite3", compressed: bool = False,
             compressed_format: str = "jpeg", jpeg_quality: int = 95, encoding: str = "rgb8",
             topic: str | None = None, camera_info_topic: str = "/camera/camera_info",
             frame_id: str = OFFLINE_CAMERA_FRAME, fps: float | None = None, time_offset_s: float = 0.0,
             intrinsics: np.ndarray | None = None, distortion: list[float] | None = None,
             distortion_model: str = "plumb_bob", max_frames: int | None = None, overwrite: bool = False,
             bag_version: int = 9, progress: bool = True) -> dict[str, Any]:
    """Writes the bag; returns a summary. The bag appears at `output` only when complete."""
    source_path = Path(input_path)
    if not source_path.exists():
        raise OfflineInputError(f"no such file or folder: {source_path}")
    if source_path.is_dir():
        source = FolderFrameSource(source_path, fps=fps)
    elif source_path.suffix.lower() in VIDEO_SUFFIXES:
        source = VideoFrameSource(source_path, fps=fps)
    else:
        raise OfflineInputError(f"{source_path} is neither an image folder nor a video ({', '.join(VIDEO_SUFFIXES)})")
    topic = topic or ("/camera/image_raw/compressed" if compressed else "/camera/image_raw")
    factory = MessageFactory()
    written = 0
    first_stamp_s: float | None = None
    with AtomicBagWriter(output, storage=storage, overwrite=overwrite, version=bag_version) as bag:
        image_conn = bag.add_topic(topic, COMPRESSED_IMAGE_TYPE if compressed else IMAGE_TYPE,
                                   qos_profile(reliable=True))
        info_conn = (bag.add_topic(camera_info_topic, CAMERA_INFO_TYPE, qos_profile(reliable=True))
                     if intrinsics is not None else None)
        total = source.expected_frames if max_frames is None else min(max_frames, source.expected_frames or max_frames)
        for frame in tqdm(source, total=total, unit="frame", desc="make-bag", disable=not progress):
            if max_frames is not None and written >= max_frames:
                break
            stamp_ns = int(round((frame.timestamp_s + time_offset_s) * 1e9))
            if first_stamp_s is None:
                first_stamp_s = stamp_ns * 1e-9
            if compressed:
                msg = factory.compressed_image(frame.rgb, stamp_ns, frame_id, compressed_format, jpeg_quality)
            else:
                msg = factory.image(frame.rgb, stamp_ns, frame_id, encoding)
            bag.write(image_conn, stamp_ns, msg)
            if info_conn is not None:
                height, width = frame.rgb.shape[:2]
                bag.write(info_conn, stamp_ns, factory.camera_info(intrinsics, width, height, stamp_ns, frame_id,
                                                                   distortion or [], distortion_model))
            written += 1
        if written == 0:
            raise OfflineInputError(f"no readable frames in {source_path}")
    return {"bag": str(output), "storage": storage, "topic": topic, "frames": written,
            "camera_info_topic": camera_info_topic if intrinsics is not None else None,
            "skipped": source.skipped.as_dict(), "first_stamp_s": first_stamp_s}


def run(args: argparse.Namespace) -> int:
    try:
        intrinsics, distortion, model = intrinsics_from_args(args)
        summary = make_bag(args.input, args.output, storage=args.storage, compressed=args.compressed,
                           compressed_format=args.compressed_format, jpeg_quality=args.jpeg_quality,
                           encoding=args.encoding, topic=args.topic, camera_info_topic=args.camera_info_topic,
                           frame_id=args.frame_id, fps=args.fps, time_offset_s=args.time_offset,
                           intrinsics=intrinsics, distortion=distortion, distortion_model=model,
                           max_frames=args.max_frames, overwrite=args.overwrite, bag_version=args.bag_version)
    except OfflineInputError as err:
        print(f"ttt3r-ros make-bag: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ttt3r-ros make-bag: interrupted; {args.output} was not written (the partial bag was removed)",
              file=sys.stderr)
        return 130
    print(f"wrote {summary['frames']} frames on {summary['topic']}"
          + (f" (+ CameraInfo on {summary['camera_info_topic']})" if summary["camera_info_topic"] else "")
          + f" to {summary['bag']} ({summary['storage']})")
    if summary["skipped"]["total"]:
        print(f"skipped {summary['skipped']['total']} unreadable frames: {summary['skipped']['by_reason']}")
    if summary["first_stamp_s"] == 0.0:
        print("note: the first header stamp is 0 s, which ROS tools read as 'unset'; for replay into ROS pass "
              "--time-offset (e.g. 1700000000)", file=sys.stderr)
    print(f"replay: ros2 bag play {summary['bag']} --clock")
    return 0
