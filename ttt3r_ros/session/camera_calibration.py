"""sensor_msgs/CameraInfo -> the engine's ``CameraModel`` (K, D, distortion model, size), shared by the node and
the offline bag reader so a CameraInfo is accepted or refused with the same reason live and offline.

K goes through ``image_codec.camera_info_intrinsics`` first (its rules: calibrated, finite, a camera matrix the
engine accepts, principal point inside the image); then D and the distortion model (``CameraModel.create``: an
unknown model with a non-zero D, or a D of the wrong length, is refused with a reason naming the supported models).
"""
from __future__ import annotations

from typing import Any

from .image_codec import camera_info_intrinsics


def camera_model_from_camera_info(msg: Any) -> tuple[Any, str]:
    """(CameraModel, "") when the CameraInfo is calibrated and usable, else (None, reason). R and P are ignored
    (see ``ttt3r_ros.engine.camera_model``)."""
    k, reason = camera_info_intrinsics(msg)
    if k is None:
        return None, reason
    # imported here: decoding images (the node's conversions, make-bag, bag-info) must not load torch
    from ..engine.camera_model import CameraModel

    try:
        return CameraModel.create(k, msg.d, str(msg.distortion_model), int(msg.width), int(msg.height)), ""
    except ValueError as err:
        return None, str(err)
