"""What the DDS smoke publisher sends and the subscriber expects (shared by both processes)."""
from __future__ import annotations

import numpy as np

IMAGE_TOPIC = "smoke/image_raw"
STATUS_TOPIC = "smoke/status"
READY_TOPIC = "smoke/subscriber_ready"
FRAME_ID = "smoke_camera_optical"
HEIGHT, WIDTH = 480, 640            # rgb8: 921,600 bytes, larger than the rmw's default 512 KiB SHM segment
RATE_HZ = 30.0
BASE_SEC = 1_700_000_000
QOS_DEPTH = 30


def stamp_of(frame_index: int) -> tuple[int, int]:
    """(sec, nanosec) of frame k on a synthetic 30 Hz timeline: exact values the receiver can check."""
    return BASE_SEC + frame_index // 30, (frame_index % 30) * 33_333_333


def image_bytes(frame_index: int) -> bytes:
    """A frame-dependent pixel pattern, so a stale, reordered or corrupted image is detected."""
    flat = np.arange(HEIGHT * WIDTH * 3, dtype=np.uint32)
    return ((flat * 7 + frame_index * 13) % 256).astype(np.uint8).tobytes()
