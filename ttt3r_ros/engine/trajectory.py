"""``Trajectory``: timestamped camera-to-world poses of one stream, stored compactly."""
from __future__ import annotations

from typing import Iterator

import numpy as np


class Trajectory:
    """Timestamped camera-to-world poses, stored compactly (104 bytes per frame: float64 timestamp + 3x4 pose,
    ~11 MB per hour at 30 fps) so that hours of odometry stay cheap. Behaves like a read-only list of
    ``(timestamp_s, 4x4 numpy pose)``; ``timestamps()`` / ``poses()`` give whole arrays."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._t = np.zeros(256)
        self._p = np.zeros((256, 3, 4))
        self._n = 0

    def append(self, timestamp_s: float, pose: np.ndarray) -> None:
        if self._n == self._t.shape[0]:
            self._t = np.concatenate([self._t, np.zeros_like(self._t)])
            self._p = np.concatenate([self._p, np.zeros_like(self._p)])
        self._t[self._n] = timestamp_s
        self._p[self._n] = pose[:3]
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
        pose[:3] = self._p[i]
        return float(self._t[i]), pose

    def __iter__(self) -> Iterator[tuple[float, np.ndarray]]:
        return (self[i] for i in range(self._n))

    def timestamps(self) -> np.ndarray:
        return self._t[:self._n].copy()

    def poses(self) -> np.ndarray:
        out = np.tile(np.eye(4), (self._n, 1, 1))
        out[:, :3] = self._p[:self._n]
        return out

    # -------------------------------------------------------------------------------------- snapshots
    def export_arrays(self) -> dict[str, np.ndarray]:
        """Copies of what this trajectory holds (session snapshots): timestamps [N] and 3x4 poses [N,3,4], float64."""
        return {"timestamps": self._t[:self._n].copy(), "poses": self._p[:self._n].copy()}

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
