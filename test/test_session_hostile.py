"""The ROS-free session layer against the hostile-input audit (issue 13): image headers and the pixel limit,
CameraInfo sanity and the calibration-size rule (shared by node and offline), the twist's minimum dt."""
from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from test_map_hostile import huge_png
from ttt3r_ros.session import image_codec
from ttt3r_ros.session.errors import FrameDecodeError
from ttt3r_ros.session.odometry import LOST_VARIANCE, MIN_TWIST_DT_S, OdometryTracker
from ttt3r_ros.session.settings import DEFAULTS


def _encoded(ext: str, h: int, w: int) -> bytes:
    ok, buf = cv2.imencode(ext, np.full((h, w, 3), 90, np.uint8))
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("ext,kind", [(".png", "png"), (".jpg", "jpeg")])
def test_header_gives_the_size_without_decoding(ext: str, kind: str) -> None:
    assert image_codec.encoded_image_size(_encoded(ext, 37, 53)) == (kind, 53, 37)
    assert image_codec.encoded_image_size(huge_png(20000, 20000)) == ("png", 20000, 20000)
    with pytest.raises(FrameDecodeError, match="neither PNG nor JPEG"):
        image_codec.encoded_image_size(b"GIF89a....")


def test_compressed_and_raw_images_above_the_pixel_limit_are_refused_before_decoding() -> None:
    assert DEFAULTS.max_image_pixels == 7680 * 4320
    msg = SimpleNamespace(format="png", data=huge_png(20000, 20000))
    with pytest.raises(FrameDecodeError, match=r"too large \(20000x20000 = 400.0 MP > max_image_pixels = 33.2 MP\)"):
        image_codec.compressed_image_to_rgb(msg)
    # raw: from width x height, before the data length is even looked at (a lying header costs nothing)
    raw = SimpleNamespace(encoding="rgb8", height=20000, width=20000, step=60000, data=b"")
    with pytest.raises(FrameDecodeError, match="rgb8 image too large"):
        image_codec.raw_image_to_rgb(raw)
    small = SimpleNamespace(format="jpeg", data=_encoded(".jpg", 48, 64))
    assert image_codec.compressed_image_to_rgb(small).shape == (48, 64, 3)
    with pytest.raises(FrameDecodeError, match="too large"):
        image_codec.compressed_image_to_rgb(small, max_pixels=48 * 64 - 1)


def _camera_info(k: list[float], width: int = 640, height: int = 480) -> SimpleNamespace:
    return SimpleNamespace(k=k, width=width, height=height)


@pytest.mark.parametrize("k,reason", [
    ([1e30, 0, 320, 0, 1e30, 240, 0, 0, 1], "absurd"),
    ([500, 0, 320, 0, 1.7e308, 240, 0, 0, 1], "absurd"),
    ([float("inf"), 0, 320, 0, 500, 240, 0, 0, 1], "non-finite"),
    ([float("nan"), 0, 320, 0, 500, 240, 0, 0, 1], "non-finite"),
    ([7e6, 0, 320, 0, 7e6, 240, 0, 0, 1], "absurd"),     # > 1e4 x the long side (640)
])
def test_absurd_camera_info_is_refused_with_the_reason(k: list[float], reason: str) -> None:
    intrinsics, why = image_codec.camera_info_intrinsics(_camera_info(k))
    assert intrinsics is None and reason in why


def test_a_long_telephoto_focal_is_still_accepted() -> None:
    k, why = image_codec.camera_info_intrinsics(_camera_info([6e5, 0, 320, 0, 6e5, 240, 0, 0, 1]))
    assert why == "" and k[0, 0] == 6e5


def test_calibration_of_another_size_is_ignored_by_the_shared_rule() -> None:
    k = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    assert image_codec.calibration_for_image(k, (480, 640), (480, 640))[0] is k
    same_aspect, why = image_codec.calibration_for_image(k, (480, 640), (240, 320))
    assert same_aspect is None and "CameraInfo size 640x480 differs from the image size 320x240" in why


def test_stamps_closer_than_the_minimum_dt_give_an_unknown_twist_not_a_huge_one() -> None:
    tracker = OdometryTracker()
    moved = np.eye(4)
    moved[0, 3] = 0.077
    tracker.update(100.0, np.eye(4), None)
    estimate = tracker.update(100.0 + 1e-9, moved, None)
    assert np.all(estimate.twist_linear_mps == 0.0)
    assert estimate.twist_covariance_diagonal == [LOST_VARIANCE] * 6
    later = np.eye(4)
    later[0, 3] = 0.077 + 0.1
    estimate = tracker.update(100.0 + 1e-9 + 10 * MIN_TWIST_DT_S, later, None)
    assert estimate.twist_linear_mps[0] == pytest.approx(10.0, rel=1e-6)   # 0.1 m in 10 ms
    assert max(estimate.twist_covariance_diagonal) < LOST_VARIANCE
