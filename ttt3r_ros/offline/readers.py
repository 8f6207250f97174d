"""Frame sources for offline mapping: rosbag2, image folder, video file.

Every source yields `Frame(timestamp_s, rgb, intrinsics)` (RGB uint8 HxWx3, optional calibrated K 3x3) in
timestamp order. A message or file that cannot be decoded is skipped and recorded in `source.skipped` with its
reason; the run goes on. Problems with the input as a whole raise OfflineInputError with a message for the user.
"""
from __future__ import annotations

import bisect
import heapq
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import cv2
import numpy as np

from ..session.errors import FrameDecodeError
from ..session.camera_calibration import camera_model_from_camera_info
from ..session.image_codec import (CAMERA_INFO_TYPE, IMAGE_TYPES, calibration_for_image, check_pixel_limit,
                                   decode_encoded_image, image_message_to_rgb, stamp_to_nanoseconds)
from ..session.settings import DEFAULTS
from .bag_io import looks_like_bag, open_bag, storage_identifier, summarise_topics
from .errors import OfflineInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
MAX_SKIP_RECORDS = 1000  # run.json keeps the first records in full; the counts by reason are always complete


# a calibrated CameraInfo: (K 3x3, (height, width) it was calibrated at, its camera model with D)
Calibration = tuple[np.ndarray, tuple[int, int], Any]


class Frame(NamedTuple):
    timestamp_s: float
    rgb: np.ndarray
    intrinsics: np.ndarray | None
    stamp_ns: int | None = None  # exact header stamp where the source has one (bags): result messages reuse it
    # the bag's CameraInfo as ``engine.camera_model.CameraModel`` (with its distortion): give it to the engine
    # (``step(camera_model=...)``) instead of ``intrinsics``, which is then its K
    camera_model: Any = None


@dataclass
class SkipLog:
    """Frames (or side messages) that were not used, with reasons."""
    records: list[dict[str, Any]] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)

    def add(self, reason: str, index: int | None = None, timestamp_s: float | None = None,
            topic: str | None = None) -> None:
        # Reasons are grouped by their first clause so counts stay readable ("corrupt compressed image (...)").
        self.counts[reason.split(" (")[0]] += 1
        if len(self.records) < MAX_SKIP_RECORDS:
            record: dict[str, Any] = {"reason": reason}
            if index is not None:
                record["index"] = index
            if timestamp_s is not None:
                record["timestamp_s"] = timestamp_s
            if topic is not None:
                record["topic"] = topic
            self.records.append(record)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "by_reason": dict(self.counts), "records": self.records,
                "records_truncated": self.total > len(self.records)}


class FrameSource:
    """Base: iterate once for frames; `expected_frames` for progress bars; `describe()` for run.json."""
    kind = "abstract"

    def __init__(self) -> None:
        self.skipped = SkipLog()          # frames that were not processed
        self.warnings = SkipLog()         # side problems that did not cost a frame (e.g. bad CameraInfo)

    @property
    def expected_frames(self) -> int | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------------- rosbag2
def _header_stamp_ns(raw: bytes) -> int | None:
    """Header stamp straight from CDR bytes (Image and CompressedImage both start with std_msgs/Header).

    Lets the reorder buffer hold undecoded messages. Layout: 4-byte encapsulation header, then int32 sec,
    uint32 nanosec in the byte order the encapsulation names.
    """
    if len(raw) < 12:
        return None
    order = "<" if raw[1] == 1 else ">"
    sec, nanosec = np.frombuffer(raw[4:12], dtype=np.dtype(f"{order}i4")).astype(np.int64)
    if nanosec < 0 or nanosec >= 1_000_000_000:
        return None
    return int(sec) * 1_000_000_000 + int(nanosec)


class BagFrameSource(FrameSource):
    """Images (Image or CompressedImage) from one topic of a rosbag2, with optional CameraInfo.

    Messages come off the bag in receive order; a small reorder window puts them into header-stamp order
    (deterministic). A frame whose stamp is older than one already emitted (beyond the window) or equal to it is
    skipped with that reason, so the trajectory's timestamps are strictly increasing. Header stamp 0 (unstamped
    drivers) falls back to the bag's receive time.
    """
    kind = "rosbag2"
    REORDER_WINDOW = 32

    def __init__(self, path: str | Path, image_topic: str | None = None,
                 camera_info_topic: str | None = None, auto_camera_info: bool = True,
                 max_image_pixels: int = DEFAULTS.max_image_pixels) -> None:
        super().__init__()
        self.path = Path(path)
        self.max_image_pixels = max_image_pixels
        self.reader = open_bag(self.path)
        self.camera_info_auto = False
        try:
            self._select_topics(image_topic, camera_info_topic, auto_camera_info)
        except Exception:
            self.reader.close()
            raise
        self.stamps_from_receive_time = 0

    def _topic_listing(self, types: tuple[str, ...]) -> str:
        lines = [f"  {s.describe()}" for s in summarise_topics(self.reader, measure_rates=False)
                 if s.msgtype in types]
        return "\n".join(lines) if lines else "  (none)"

    @staticmethod
    def _camera_namespace(image_topic: str) -> str:
        """'/cam/image_raw/compressed' -> '/cam' (image_transport puts camera_info next to the raw image)."""
        topic = image_topic[: -len("/compressed")] if image_topic.endswith("/compressed") else image_topic
        return topic.rsplit("/", 1)[0]

    def _sibling_camera_info(self, image_topic: str) -> str | None:
        """The CameraInfo topic of the image's camera (same namespace), as the live node would use by default."""
        info_topics = sorted({c.topic for c in self.reader.connections if c.msgtype == CAMERA_INFO_TYPE})
        namespace = self._camera_namespace(image_topic)
        siblings = [t for t in info_topics if t.rsplit("/", 1)[0] == namespace]
        if len(siblings) == 1:
            return siblings[0]
        return None

    def _select_topics(self, image_topic: str | None, camera_info_topic: str | None,
                       auto_camera_info: bool = True) -> None:
        connections = self.reader.connections
        image_topics = sorted({c.topic for c in connections if c.msgtype in IMAGE_TYPES})
        if image_topic is None:
            if len(image_topics) != 1:
                problem = "has no image topics" if not image_topics else "has several image topics"
                raise OfflineInputError(
                    f"{self.path} {problem}; choose one with --image-topic. Image topics in this bag:\n"
                    f"{self._topic_listing(IMAGE_TYPES)}\nAll topics:\n{self._topic_listing_all()}")
            image_topic = image_topics[0]
        if image_topic not in image_topics:
            present = [c for c in connections if c.topic == image_topic]
            what = (f"has type {present[0].msgtype}, not Image/CompressedImage" if present
                    else "is not in this bag")
            raise OfflineInputError(
                f"--image-topic {image_topic} {what}. Image topics in {self.path}:\n"
                f"{self._topic_listing(IMAGE_TYPES)}")
        self.image_topic = image_topic
        self.image_connections = [c for c in connections if c.topic == image_topic]
        self.image_msgtype = self.image_connections[0].msgtype
        self.info_connections = []
        if camera_info_topic is None and auto_camera_info:
            camera_info_topic = self._sibling_camera_info(image_topic)
            self.camera_info_auto = camera_info_topic is not None
        self.camera_info_topic = camera_info_topic
        if camera_info_topic is not None:
            self.info_connections = [c for c in connections
                                     if c.topic == camera_info_topic and c.msgtype == CAMERA_INFO_TYPE]
            if not self.info_connections:
                raise OfflineInputError(
                    f"--camera-info-topic {camera_info_topic} is not a CameraInfo topic in {self.path}. "
                    f"CameraInfo topics:\n{self._topic_listing((CAMERA_INFO_TYPE,))}")

    def _topic_listing_all(self) -> str:
        lines = [f"  {s.describe()}" for s in summarise_topics(self.reader, measure_rates=False)]
        return "\n".join(lines) if lines else "  (none)"

    @property
    def expected_frames(self) -> int | None:
        return sum(c.msgcount for c in self.image_connections)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path), "storage": storage_identifier(self.reader),
                "image_topic": self.image_topic, "image_type": self.image_msgtype,
                "camera_info_topic": self.camera_info_topic, "camera_info_auto": self.camera_info_auto,
                "image_messages": self.expected_frames,
                "stamps_from_receive_time": self.stamps_from_receive_time}

    def _decode_camera_info(self, connection: Any, raw: bytes, receive_ns: int,
                            calibrations: list[tuple[int, Calibration]]) -> None:
        try:
            msg = self.reader.deserialize(raw, connection.msgtype)
        except Exception as err:
            self.warnings.add(f"undecodable CameraInfo ({type(err).__name__}: {err})", topic=connection.topic)
            return
        camera_model, reason = camera_model_from_camera_info(msg)
        k = None if camera_model is None else camera_model.k
        if k is None:
            # counted by the part before " (": "uncalibrated CameraInfo" / "unusable CameraInfo"
            what = "uncalibrated CameraInfo" if reason.startswith("uncalibrated") else "unusable CameraInfo"
            self.warnings.add(f"{what} ({reason}), ignored", topic=connection.topic)
            return
        stamp_ns = stamp_to_nanoseconds(msg.header.stamp) or receive_ns
        position = bisect.bisect_left([s for s, _ in calibrations], stamp_ns)
        calibrations.insert(position, (stamp_ns, (k, (int(msg.height), int(msg.width)), camera_model)))
        # Only a handful are needed to match images: keep the list short (K rarely changes).
        if len(calibrations) > 256:
            del calibrations[0]

    @staticmethod
    def _match_calibration(stamp_ns: int, calibrations: list[tuple[int, Calibration]]) -> Calibration | None:
        """The most recent CameraInfo at or before the image stamp, else the earliest one after it."""
        if not calibrations:
            return None
        position = bisect.bisect_right([s for s, _ in calibrations], stamp_ns)
        return calibrations[max(position - 1, 0)][1]

    def __iter__(self) -> Iterator[Frame]:
        image_ids = {id(c) for c in self.image_connections}
        calibrations: list[tuple[int, Calibration]] = []
        pending: list[tuple[int, int, bytes]] = []  # heap of (stamp_ns, bag order, raw)
        last_emitted_ns: int | None = None
        order = 0

        def emit(item: tuple[int, int, bytes]) -> Iterator[Frame]:
            nonlocal last_emitted_ns
            stamp_ns, index, raw = item
            stamp_s = stamp_ns * 1e-9
            if last_emitted_ns is not None and stamp_ns <= last_emitted_ns:
                reason = ("duplicate stamp" if stamp_ns == last_emitted_ns
                          else "stamp older than frames already processed")
                self.skipped.add(reason, index=index, timestamp_s=stamp_s, topic=self.image_topic)
                return
            try:
                msg = self.reader.deserialize(raw, self.image_msgtype)
                rgb = image_message_to_rgb(msg, self.image_msgtype, self.max_image_pixels)
            except FrameDecodeError as err:
                self.skipped.add(str(err), index=index, timestamp_s=stamp_s, topic=self.image_topic)
                return
            except Exception as err:  # malformed CDR: rosbags raises assorted errors
                self.skipped.add(f"undecodable message ({type(err).__name__}: {err})", index=index,
                                 timestamp_s=stamp_s, topic=self.image_topic)
                return
            last_emitted_ns = stamp_ns
            calibration = self._match_calibration(stamp_ns, calibrations)
            intrinsics = camera_model = None
            if calibration is not None:
                # the live node's rule (session/image_codec.py): a calibration of another image size is ignored
                intrinsics, reason = calibration_for_image(calibration[0], calibration[1], rgb.shape[:2])
                camera_model = None if intrinsics is None else calibration[2]
                if reason:
                    self.warnings.add(f"CameraInfo size differs from the image ({reason})", index=index,
                                      timestamp_s=stamp_s, topic=self.camera_info_topic)
            elif self.info_connections:
                self.warnings.add("no calibrated CameraInfo yet; intrinsics estimated by the model", index=index,
                                  timestamp_s=stamp_s, topic=self.camera_info_topic)
            yield Frame(stamp_s, rgb, intrinsics, stamp_ns, camera_model)

        connections = self.image_connections + self.info_connections
        for connection, receive_ns, raw in self.reader.messages(connections=connections):
            if id(connection) not in image_ids:
                self._decode_camera_info(connection, raw, receive_ns, calibrations)
                continue
            stamp_ns = _header_stamp_ns(raw)
            if stamp_ns is None:
                self.skipped.add("undecodable message (no valid header stamp)", index=order,
                                 topic=self.image_topic)
                order += 1
                continue
            if stamp_ns == 0:
                stamp_ns = receive_ns
                self.stamps_from_receive_time += 1
            heapq.heappush(pending, (stamp_ns, order, bytes(raw)))
            order += 1
            if len(pending) > self.REORDER_WINDOW:
                yield from emit(heapq.heappop(pending))
        while pending:
            yield from emit(heapq.heappop(pending))

    def close(self) -> None:
        self.reader.close()


# -------------------------------------------------------------------------------------------------- image folder
def _natural_key(name: str) -> list[Any]:
    """frame_2.png before frame_10.png; zero-padded names sort as plain sorting would."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _read_tum_rgb_list(path: Path) -> list[tuple[float, str]]:
    entries = []
    for line_number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 2:
            raise OfflineInputError(f"{path}:{line_number}: expected 'timestamp filename', got {line!r}")
        try:
            entries.append((float(parts[0]), parts[1]))
        except ValueError as err:
            raise OfflineInputError(f"{path}:{line_number}: bad timestamp {parts[0]!r}") from err
    return entries


def _read_times_txt(path: Path) -> list[float]:
    times = []
    for line_number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            times.append(float(line.split()[0]))
        except ValueError as err:
            raise OfflineInputError(f"{path}:{line_number}: bad timestamp {line!r}") from err
    return times


class FolderFrameSource(FrameSource):
    """Images in a folder, sorted by name (natural order). Timestamps, first match wins:
    a TUM `rgb.txt` (in the folder, or in its parent for TUM's `rgb/` layout), `times.txt` (one timestamp per
    image, in name order), else `fps` (frame index / fps)."""
    kind = "image_folder"

    def __init__(self, path: str | Path, fps: float | None = None,
                 intrinsics: np.ndarray | None = None, max_image_pixels: int = DEFAULTS.max_image_pixels) -> None:
        super().__init__()
        self.path = Path(path)
        self.intrinsics = intrinsics
        self.max_image_pixels = max_image_pixels
        if not self.path.is_dir():
            raise OfflineInputError(f"not a folder: {self.path}")
        self.files, self.timestamps_s, self.timestamp_source = self._index(fps)

    def _index(self, fps: float | None) -> tuple[list[Path], list[float], str]:
        rgb_list = self.path / "rgb.txt"
        if not rgb_list.is_file() and (self.path.parent / "rgb.txt").is_file():
            rgb_list = self.path.parent / "rgb.txt"  # TUM layout: INPUT is the rgb/ folder
        if rgb_list.is_file():
            entries = sorted(_read_tum_rgb_list(rgb_list), key=lambda entry: entry[0])
            files = [rgb_list.parent / name for _, name in entries]
            # A parent's rgb.txt only counts when it lists this folder's images.
            if entries and (rgb_list.parent == self.path
                            or all(f.parent.resolve() == self.path.resolve() for f in files)):
                return files, [t for t, _ in entries], str(rgb_list)
        files = sorted((p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                       key=lambda p: _natural_key(p.name))
        if not files:
            raise OfflineInputError(
                f"no images in {self.path} (looked for {', '.join(IMAGE_SUFFIXES)})")
        times_file = self.path / "times.txt"
        if times_file.is_file():
            times = _read_times_txt(times_file)
            if len(times) != len(files):
                raise OfflineInputError(
                    f"{times_file} has {len(times)} timestamps but the folder has {len(files)} images")
            return files, times, str(times_file)
        if fps is None or not np.isfinite(fps) or fps <= 0:
            raise OfflineInputError(
                f"{self.path} has no times.txt or rgb.txt; pass --fps to time the {len(files)} images")
        return files, [i / fps for i in range(len(files))], f"fps={fps:g}"

    @property
    def expected_frames(self) -> int | None:
        return len(self.files)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path), "images": len(self.files),
                "timestamps_from": self.timestamp_source}

    def __iter__(self) -> Iterator[Frame]:
        last_s: float | None = None
        for index, (file, stamp_s) in enumerate(zip(self.files, self.timestamps_s)):
            if not np.isfinite(stamp_s):
                # refused on its own: it must not become the "last stamp" that every later frame is compared to
                self.skipped.add(f"non-finite stamp ({file.name})", index=index, timestamp_s=stamp_s)
                continue
            if last_s is not None and stamp_s <= last_s:
                self.skipped.add("duplicate stamp" if stamp_s == last_s else "stamp not increasing",
                                 index=index, timestamp_s=stamp_s)
                continue
            if not file.is_file():
                self.skipped.add(f"missing file ({file.name})", index=index, timestamp_s=stamp_s)
                continue
            try:
                rgb = self._read_image(file)
            except FrameDecodeError as err:
                self.skipped.add(f"{err} ({file.name})", index=index, timestamp_s=stamp_s)
                continue
            last_s = stamp_s
            yield Frame(stamp_s, rgb, self.intrinsics)

    def _read_image(self, file: Path) -> np.ndarray:
        """RGB of one image file. PNG and JPEG go through the shared decoder (session/image_codec.py: size from
        the header, pixel limit, then decode); other formats are sized from their header by Pillow (which reads
        only the header) before OpenCV decodes them."""
        data = np.fromfile(str(file), dtype=np.uint8)
        head = bytes(data[:8])
        if head.startswith(b"\x89PNG") or head[:2] == b"\xff\xd8":
            return decode_encoded_image(data, self.max_image_pixels, what="image file")
        try:
            from PIL import Image as PilImage

            with PilImage.open(str(file)) as header_only:
                width, height = header_only.size
        except Exception:   # Pillow raises assorted errors on broken or unknown files
            raise FrameDecodeError("unreadable image") from None
        check_pixel_limit(width, height, self.max_image_pixels, what="image file")
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if bgr is None or bgr.size == 0:
            raise FrameDecodeError("unreadable image")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# ------------------------------------------------------------------------------------------------------- video
class VideoFrameSource(FrameSource):
    """Frames of a video file (cv2.VideoCapture); timestamp = frame index / fps (--fps, else the file's rate)."""
    kind = "video"

    def __init__(self, path: str | Path, fps: float | None = None,
                 intrinsics: np.ndarray | None = None, max_image_pixels: int = DEFAULTS.max_image_pixels) -> None:
        super().__init__()
        self.path = Path(path)
        self.intrinsics = intrinsics
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            raise OfflineInputError(f"cannot open {self.path} as a video (OpenCV could not decode it)")
        width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        try:   # every frame of a video has the container's size: refuse the whole input up front
            check_pixel_limit(width, height, max_image_pixels, what="video frame")
        except FrameDecodeError as err:
            capture.release()
            raise OfflineInputError(f"{self.path}: {err}") from None
        file_fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.frame_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        capture.release()
        self.fps = fps if fps and fps > 0 else file_fps
        if not self.fps or not np.isfinite(self.fps) or self.fps <= 0:
            raise OfflineInputError(f"{self.path} does not state its frame rate; pass --fps")
        self.fps_source = "--fps" if fps and fps > 0 else "video header"

    @property
    def expected_frames(self) -> int | None:
        return self.frame_count or None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path), "fps": self.fps, "fps_from": self.fps_source,
                "frames_in_header": self.frame_count}

    def __iter__(self) -> Iterator[Frame]:
        capture = cv2.VideoCapture(str(self.path))
        try:
            index = 0
            while True:
                ok, bgr = capture.read()
                if not ok:
                    break
                if bgr is None or bgr.size == 0:
                    self.skipped.add("empty video frame", index=index, timestamp_s=index / self.fps)
                else:
                    yield Frame(index / self.fps, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self.intrinsics)
                index += 1
        finally:
            capture.release()


# ---------------------------------------------------------------------------------------------------- dispatch
def open_frame_source(path: str | Path, image_topic: str | None = None, camera_info_topic: str | None = None,
                      fps: float | None = None, intrinsics: np.ndarray | None = None,
                      auto_camera_info: bool = True,
                      max_image_pixels: int = DEFAULTS.max_image_pixels) -> FrameSource:
    """The right source for INPUT: a rosbag2 (folder or .db3/.mcap file), an image folder or a video file.

    Bags: without `camera_info_topic`, the CameraInfo topic in the image topic's namespace is used when there is
    exactly one (auto_camera_info, like the node's use_camera_info default); calibrated K wins over estimation."""
    input_path = Path(path)
    if not input_path.exists():
        raise OfflineInputError(f"no such file or folder: {input_path}")
    if looks_like_bag(input_path):
        return BagFrameSource(input_path, image_topic=image_topic, camera_info_topic=camera_info_topic,
                              auto_camera_info=auto_camera_info, max_image_pixels=max_image_pixels)
    if input_path.is_dir():
        return FolderFrameSource(input_path, fps=fps, intrinsics=intrinsics, max_image_pixels=max_image_pixels)
    if input_path.suffix.lower() in VIDEO_SUFFIXES:
        return VideoFrameSource(input_path, fps=fps, intrinsics=intrinsics, max_image_pixels=max_image_pixels)
    raise OfflineInputError(
        f"{input_path} is not a rosbag2 (.db3/.mcap file or bag folder), an image folder or a video "
        f"({', '.join(VIDEO_SUFFIXES)})")


# --------------------------------------------------------------------------------------------------- prefetch
class PrefetchingSource(FrameSource):
    """Reads and decodes frames of `inner` in a background thread, up to `depth` ahead, so bag reading and image
    decoding overlap with inference. One producer keeps the order (deterministic). An exception in the producer
    (including KeyboardInterrupt raised by a source) is re-raised in the consumer at the same point of the
    stream. `skipped` / `warnings` are the inner source's."""

    _END = object()

    def __init__(self, inner: FrameSource, depth: int = 4) -> None:
        super().__init__()
        self.inner = inner
        self.depth = max(1, int(depth))
        self.skipped = inner.skipped
        self.warnings = inner.warnings
        self.kind = inner.kind

    @property
    def expected_frames(self) -> int | None:
        return self.inner.expected_frames

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "prefetch": self.depth}

    def __iter__(self) -> Iterator[Frame]:
        import queue
        import threading

        items: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    items.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for frame in self.inner:
                    if not put(frame):
                        return
                put(self._END)
            except BaseException as err:  # forwarded, re-raised by the consumer
                put(err)

        thread = threading.Thread(target=produce, name="ttt3r-frame-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = items.get()
                if item is self._END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join(timeout=5.0)

    def close(self) -> None:
        self.inner.close()
