"""The focal health figure: how far the network's focal estimate is from the calibrated camera's.

``FrameResult.focal_disagreement`` = |f_network / f_calibrated - 1| (both at model resolution; the calibrated focal
is the undistorted camera's). The network's focal is a Weiszfeld fit over the whole point map (a few reductions and
one host read, milliseconds on a GPU, tens of milliseconds at 512x384 on a CPU), so the figure is refreshed
every ``FOCAL_CHECK_PERIOD_FRAMES`` frames, and on every frame where the focal is needed anyway (the node publishes
``depth/camera_info`` with it whenever depth is subscribed; the FrameResult caches it, so it is computed once):
beyond that it costs one estimate per period. NaN while there is no calibration (nothing to compare with).
"""
from __future__ import annotations

import math
from typing import Any

# frames between two focal checks when nothing else computes the network's focal
FOCAL_CHECK_PERIOD_FRAMES = 30


class FocalHealth:
    """The latest focal disagreement of a stream (``update`` once per processed frame)."""

    def __init__(self, period_frames: int = FOCAL_CHECK_PERIOD_FRAMES) -> None:
        if period_frames < 1:
            raise ValueError(f"period_frames must be >= 1, got {period_frames}")
        self.period_frames = period_frames
        self.value = math.nan
        self._frames_since_check = period_frames  # the first calibrated frame is checked

    def update(self, result: Any, network_focal_needed: bool = False) -> float:
        """The figure after ``result`` (a valid FrameResult): recomputed when due, when the network's focal has
        been computed already, or when the caller needs it anyway (``network_focal_needed``); else the last one."""
        if result.intrinsics_source != "calibrated":
            self.value = math.nan
            self._frames_since_check = self.period_frames
            return self.value
        self._frames_since_check += 1
        if (network_focal_needed or result.intrinsics_network_computed
                or self._frames_since_check >= self.period_frames):
            figure = result.focal_disagreement
            self.value = math.nan if figure is None else float(figure)
            self._frames_since_check = 0
        return self.value
