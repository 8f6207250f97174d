"""``Trajectory``: timestamped camera-to-world poses of one stream, stored compactly."""
from __future__ import annotations

from typing import Iterator

import numpy as np


class Trajectory:
    """Timestamped camera-to-world poses, stored compactly (104 bytes per frame: float64 timestamp + 3x4 pose,
    ~11 MB per hour at 30 fps) so that hours of odometry stay cheap. Behaves like a read-only list of
    ``(timestamp_s, 4x4 numpy pose)``; ``timestamps()`` / ``poses()`` give whole arrays.

    ``max_poses`` bounds it (None = unbounded): past it the oldest pose is dropped for each new one (``dropped``
    counts them since the last ``clear``). The poses live in a window of a buffer with some slack past the bound, so
    dropping is O(1) amortised (one compaction per slack's worth of frames), not a copy per frame."""

    def __init__(self, max_poses: int | None = None) -> None:
        self.max_poses = max_poses
        self.clear()

    def set_max_poses(self, max_poses: int | None) -> None:
        """Change the bound; the oldest poses over a smaller one go at once (counted in ``dropped``)."""
        if max_poses is not None and max_poses < 1:
            raise ValueError(f"max_poses must be >= 1 or None, got {max_poses}")
        self.max_poses = max_poses
        if max_poses is not None and self._n > max_poses:
            excess = self._n - max_poses
            self._s, self._n = self._s + excess, max_poses
            self.dropped += excess

    def clear(self) -> None:
        self._t = np.zeros(256)
        self._p = np.zeros((256, 3, 4))
        self._s = 0   # index of the oldest pose in the buffers
        self._n = 0
        self.dropped = 0   # oldest poses dropped for max_poses since the last clear

    def _capacity_limit(self) -> int | None:
        if self.max_poses is None:
            return None
        return self.max_poses + max(256, self.max_poses // 16)   # the slack bounds the memory to ~1.06x the bound

    def append(self, timestamp_s: float, pose: np.ndarray) -> None:
        if self.max_poses is not None and self._n >= self.max_poses:
            self._s += 1   # the oldest goes
            self._n -= 1
            self.dropped += 1
        end = self._s + self._n
        if end == self._t.shape[0]:
            limit = self._capacity_limit()
            if limit is not None and self._s > 0 and 2 * self._t.shape[0] > limit:
                # compact: move the window to the front instead of growing past the bound's slack
                self._t[:self._n] = self._t[self._s:end]
                self._p[:self._n] = self._p[self._s:end]
                self._s, end = 0, self._n
            else:
                size = 2 * self._t.shape[0] if limit is None else min(2 * self._t.shape[0], limit)
                t, p = np.zeros(size), np.zeros((size, 3, 4))
                t[:self._n], p[:self._n] = self._t[self._s:end], self._p[self._s:end]
                self._t, self._p, self._s, end = t, p, 0, self._n
        self._t[end] = timestamp_s
        self._p[end] = pose[:3]
        self._n += 1

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> tuple[float, np.ndarray]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]  # type: ignore[return-value]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"trajectory index {i} out of range ({self._n} frames)")
        pose = np.eye(4)
        pose[:3] = self._p[self._s + i]
        return float(self._t[self._s + i]), pose

    def __iter__(self) -> Iterator[tuple[float, np.ndarray]]:
        return (self[i] for i in range(self._n))

    def timestamps(self) -> np.ndarray:
        return self._t[self._s:self._s + self._n].copy()

    def poses(self) -> np.ndarray:
        out = np.tile(np.eye(4), (self._n, 1, 1))
        out[:, :3] = self._p[self._s:self._s + self._n]
        return out

    # -------------------------------------------------------------------------------------- snapshots
    def export_arrays(self) -> dict[str, np.ndarray]:
        """Copies of what this trajectory holds (session snapshots): timestamps [N] and 3x4 poses [N,3,4], float64."""
        return {"timestamps": self.timestamps(), "poses": self._p[self._s:self._s + self._n].copy()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "Trajectory":
        """A trajectory holding exactly ``export_arrays()``'s arrays; ValueError when they do not fit together."""
        t = np.asarray(arrays["timestamps"])
        p = np.asarray(arrays["poses"])
        if t.dtype != np.float64 or p.dtype != np.float64 or t.ndim != 1 or p.shape != (t.shape[0], 3, 4):
            raise ValueError(f"trajectory: expected float64 timestamps [N] and poses [N,3,4], got {t.dtype} "
                             f"{t.shape} and {p.dtype} {p.shape}")
        out = cls()
        n = t.shape[0]
        capacity = max(256, n)
        out._t = np.zeros(capacity)
        out._p = np.zeros((capacity, 3, 4))
        out._t[:n], out._p[:n], out._n = t, p, n
        return out
