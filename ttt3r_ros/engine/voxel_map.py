"""A bounded voxel map of world points with colour and confidence.

Merging rules (documented contract):
- Points are binned into cubic voxels of ``voxel_size`` (floor of coordinate / size; each axis must stay within
  +-2**20 voxels of the origin, i.e. +-21 km at 2 cm; points outside are dropped and counted).
- Per voxel: position and colour are the confidence-weighted running mean of every point that fell into it
  (weight = the point's confidence); ``confidence`` is the highest confidence observed; ``weight`` is the summed
  confidence; ``last_update`` is the counter of the ``add`` call that last touched it.
- Hard cap ``max_points``: when an ``add`` pushes the map over the cap, voxels are evicted, least recently
  updated first and, among equally old ones, least confident first, down to ``(1 - evict_fraction) * max_points``
  (evicting a batch at once keeps the cost amortised). So a run of hours keeps a sliding window of the most recently
  seen surfaces and memory stays bounded by the cap.

Per-``add`` work is vectorised: the incoming points are reduced to one entry per voxel with torch on their own
device (GPU if they live there), then merged on the host through a sorted key index (a large sorted main index plus
a small sorted delta index that is folded in when it grows, so inserting is not O(map size) per frame). Fast paths
that change no result (test_engine_voxel_map compares them bit for bit): validity is checked on the whole batch
first (per-point masks only when something is out of range or non-finite), the per-frame sort runs on frame-local
int32 keys when the frame spans <= 1290 voxels per axis, and revisited voxels are updated without boolean gathers.
"""
from __future__ import annotations

import numpy as np
import torch

_AXIS_BITS = 21
_AXIS_OFFSET = 1 << (_AXIS_BITS - 1)
_AXIS_MASK = (1 << _AXIS_BITS) - 1


def _as_tensor(x, dtype=None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return t if dtype is None else t.to(dtype)


_LOCAL_KEY_MAX_EXTENT = 1290  # 1290**3 < 2**31: a frame spanning at most this many voxels per axis uses int32 keys


def _pack_keys(coords_int64: torch.Tensor) -> torch.Tensor:
    """Integer voxel coordinates [V,3] (int64, within +-2**20) -> packed int64 keys, ordered like (x, y, z)."""
    c = coords_int64 + _AXIS_OFFSET
    return (c[:, 0] << (2 * _AXIS_BITS)) | (c[:, 1] << _AXIS_BITS) | c[:, 2]


def _unique_voxels(coords: torch.Tensor, lo: float | None = None, hi: float | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted unique packed keys [V], inverse [N]) of float voxel coordinates [N,3] (integral values).

    One frame usually spans a few hundred voxels per axis, so the sort runs on frame-local int32 keys
    ((x-lo)*E*E + (y-lo)*E + z-lo, E = hi-lo+1 over all three axes), ~1.7x faster than on the packed int64 keys.
    The local keys order voxels exactly as the packed keys do (both lexicographic in x, y, z), so the unique keys
    come out in the same order with the same inverse; only the V unique ones are converted to packed keys.
    ``lo``/``hi``: min/max over all of ``coords`` if the caller has them (saves a pass and a device sync).
    """
    if coords.shape[0]:
        if lo is None or hi is None:
            lo, hi = (float(v) for v in torch.stack(torch.aminmax(coords)).tolist())
        extent = int(hi) - int(lo) + 1
        if extent <= _LOCAL_KEY_MAX_EXTENT:
            local = (coords - lo).to(torch.int32)
            keys32 = local[:, 0] * (extent * extent)
            keys32.add_(local[:, 1] * extent).add_(local[:, 2])
            ukeys32, inverse = torch.unique(keys32, sorted=True, return_inverse=True)
            u = ukeys32.to(torch.int64)
            xyz = torch.stack([u // (extent * extent), (u // extent) % extent, u % extent], dim=1) + int(lo)
            return _pack_keys(xyz), inverse
    return torch.unique(_pack_keys(coords.to(torch.int64)), sorted=True, return_inverse=True)


def reduce_to_voxels(points: torch.Tensor, colours: torch.Tensor, confidences: torch.Tensor, voxel_size: float
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """One entry per voxel of a point batch (on the points' device).

    Returns (keys int64 [V] sorted, weight [V], mean position [V,3], mean colour [V,3] float, max confidence [V],
    number of points dropped for being out of range, non-finite or with confidence <= 0).
    """
    pts = points.reshape(-1, 3).to(torch.float32)
    col = colours.reshape(-1, 3).to(torch.float32)
    conf = confidences.reshape(-1).to(torch.float32)
    coords = torch.floor(pts * (1.0 / voxel_size))
    n_dropped = 0
    limit = _AXIS_OFFSET - 1
    lo = hi = None
    if pts.shape[0]:
        # whole-batch check first (two cheap reductions and one host copy; NaN fails every comparison); per-point
        # masks only when it fails
        c_lo, c_hi, w_lo, w_hi = torch.stack([*torch.aminmax(coords), *torch.aminmax(conf)]).tolist()
        if -limit < c_lo and c_hi < limit and 0 < w_lo and w_hi < float("inf"):
            lo, hi = c_lo, c_hi
        else:
            valid = (coords.abs() < limit).all(dim=1) & (conf > 0) & torch.isfinite(conf)  # NaN fails both
            keep = torch.nonzero(valid).squeeze(1)
            n_dropped = int(pts.shape[0] - keep.shape[0])
            if n_dropped:
                pts, col, conf, coords = pts[keep], col[keep], conf[keep], coords[keep]
    ukeys, inverse = _unique_voxels(coords, lo, hi)
    n = ukeys.shape[0]
    # one [N,7] scatter-add of (w, w*p, w*c): float32 is ample for voxel means (relative error ~1e-7)
    data = torch.empty(pts.shape[0], 7, dtype=torch.float32, device=pts.device)
    data[:, 0] = conf
    torch.mul(pts, conf[:, None], out=data[:, 1:4])
    torch.mul(col, conf[:, None], out=data[:, 4:7])
    sums = torch.zeros(n, 7, dtype=torch.float32, device=pts.device).index_add_(0, inverse, data)
    cmax = torch.zeros(n, dtype=torch.float32, device=pts.device).scatter_reduce_(
        0, inverse, conf, reduce="amax", include_self=False)
    w = sums[:, 0]
    return ukeys, w.double(), sums[:, 1:4] / w[:, None], sums[:, 4:7] / w[:, None], cmax, n_dropped


def voxel_centres(keys: np.ndarray, voxel_size: float) -> np.ndarray:
    """Centres of voxels given their packed keys (for tests and debugging)."""
    k = np.asarray(keys, dtype=np.int64)
    xyz = np.stack([(k >> (2 * _AXIS_BITS)) & _AXIS_MASK, (k >> _AXIS_BITS) & _AXIS_MASK, k & _AXIS_MASK], axis=1)
    return (xyz - _AXIS_OFFSET + 0.5) * voxel_size


class VoxelMap:
    """Bounded, confidence-weighted voxel map (see the module docstring for the merge and eviction rules)."""

    def __init__(self, voxel_size: float = 0.02, max_points: int = 2_000_000, evict_fraction: float = 0.05,
                 delta_index_max: int = 65536) -> None:
        if not (voxel_size > 0 and np.isfinite(voxel_size)):
            raise ValueError(f"VoxelMap: voxel_size must be a positive finite number, got {voxel_size}")
        if int(max_points) < 1:
            raise ValueError(f"VoxelMap: max_points must be >= 1, got {max_points}")
        if not 0.0 <= evict_fraction < 1.0:
            raise ValueError(f"VoxelMap: evict_fraction must be in [0, 1), got {evict_fraction}")
        self.voxel_size = float(voxel_size)
        self.max_points = int(max_points)
        self.evict_fraction = float(evict_fraction)
        self.delta_index_max = int(delta_index_max)
        self.evicted_total = 0
        self.dropped_total = 0
        self.updates = 0
        self.clear()

    def clear(self) -> None:
        self._n = 0
        cap = 1024
        self._key = np.zeros(cap, np.int64)
        self._pos = np.zeros((cap, 3), np.float32)
        self._col = np.zeros((cap, 3), np.float32)
        self._conf = np.zeros(cap, np.float32)
        self._weight = np.zeros(cap, np.float64)
        self._last = np.zeros(cap, np.int64)
        self._main_keys = np.zeros(0, np.int64)
        self._main_slots = np.zeros(0, np.int64)
        self._delta_keys = np.zeros(0, np.int64)
        self._delta_slots = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return self._n

    # ------------------------------------------------------------------------------------------------- reads
    def points(self) -> np.ndarray:
        return self._pos[:self._n].copy()

    def colours(self) -> np.ndarray:
        """uint8 [N,3]."""
        return np.clip(np.rint(self._col[:self._n]), 0, 255).astype(np.uint8)

    def confidences(self) -> np.ndarray:
        return self._conf[:self._n].copy()

    def weights(self) -> np.ndarray:
        return self._weight[:self._n].copy()

    def keys(self) -> np.ndarray:
        return self._key[:self._n].copy()

    def nbytes(self) -> int:
        arrays = (self._key, self._pos, self._col, self._conf, self._weight, self._last, self._main_keys,
                  self._main_slots, self._delta_keys, self._delta_slots)
        return int(sum(a.nbytes for a in arrays))

    # ------------------------------------------------------------------------------------------------ writes
    def add(self, points_world, colours, confidences) -> int:
        """Merge points [N,3] (float), colours [N,3] (uint8 or float 0..255) and confidences [N] (> 0).

        numpy arrays or torch tensors (any device). Returns the number of voxels touched.
        """
        pts = _as_tensor(points_world)
        col = _as_tensor(colours)
        conf = _as_tensor(confidences)
        if pts.ndim < 2 or pts.shape[-1] != 3:
            raise ValueError(f"VoxelMap.add: points must be [N,3], got {tuple(pts.shape)}")
        n = pts.numel() // 3
        if col.numel() != 3 * n or conf.numel() != n:
            raise ValueError(f"VoxelMap.add: {n} points but colours {tuple(col.shape)}, "
                             f"confidences {tuple(conf.shape)}")
        self.updates += 1
        if n == 0:
            return 0
        keys, w, mp, mc, cmax, dropped = reduce_to_voxels(pts, col, conf, self.voxel_size)
        self.dropped_total += dropped
        keys = keys.cpu().numpy()
        if keys.size == 0:
            return 0
        w, mp, mc, cmax = w.cpu().numpy(), mp.cpu().numpy(), mc.cpu().numpy(), cmax.cpu().numpy()
        slots = self._lookup(keys)
        found = slots >= 0
        n_found = int(np.count_nonzero(found))
        if n_found:
            if n_found == found.shape[0]:  # steady state (revisiting known surfaces): no boolean gathers
                s, wf, mpf, mcf, cmaxf = slots, w, mp, mc, cmax
            else:
                s, wf, mpf, mcf, cmaxf = slots[found], w[found], mp[found], mc[found], cmax[found]
            # running weighted mean; slots are unique, so gather -> update -> scatter equals `arr[s] += ...`
            wn = self._weight[s] + wf
            frac = (wf / wn)[:, None]
            pos = self._pos[s]
            pos += (frac * (mpf - pos)).astype(np.float32)
            self._pos[s] = pos
            col = self._col[s]
            col += (frac * (mcf - col)).astype(np.float32)
            self._col[s] = col
            self._weight[s] = wn
            self._conf[s] = np.maximum(self._conf[s], cmaxf)
            self._last[s] = self.updates
        n_new = int(found.shape[0] - n_found)
        new = ~found
        if n_new:
            self._reserve(self._n + n_new)
            s = slice(self._n, self._n + n_new)
            new_keys = keys[new]
            self._key[s] = new_keys
            self._pos[s] = mp[new]
            self._col[s] = mc[new]
            self._weight[s] = w[new]
            self._conf[s] = cmax[new]
            self._last[s] = self.updates
            self._insert_delta(new_keys, np.arange(self._n, self._n + n_new))  # keys come sorted from unique
            self._n += n_new
        if self._n > self.max_points:
            self._evict()
        return int(keys.size)

    # ------------------------------------------------------------------------------------------------ internals
    def _reserve(self, needed: int) -> None:
        cap = self._key.shape[0]
        if needed <= cap:
            return
        new_cap = max(needed, min(2 * cap, self.max_points + needed - self._n))
        for name in ("_key", "_pos", "_col", "_conf", "_weight", "_last"):
            old = getattr(self, name)
            grown = np.zeros((new_cap,) + old.shape[1:], old.dtype)
            grown[:self._n] = old[:self._n]
            setattr(self, name, grown)

    @staticmethod
    def _search(sorted_keys: np.ndarray, sorted_slots: np.ndarray, keys: np.ndarray) -> np.ndarray:
        if sorted_keys.size == 0:
            return np.full(keys.shape, -1, np.int64)
        i = np.searchsorted(sorted_keys, keys)
        i_clipped = np.minimum(i, sorted_keys.size - 1)
        hit = sorted_keys[i_clipped] == keys
        return np.where(hit, sorted_slots[i_clipped], -1)

    def _lookup(self, keys: np.ndarray) -> np.ndarray:
        slots = self._search(self._main_keys, self._main_slots, keys)
        missing = slots < 0
        if np.any(missing) and self._delta_keys.size:
            slots[missing] = self._search(self._delta_keys, self._delta_slots, keys[missing])
        return slots

    def _insert_delta(self, keys_sorted: np.ndarray, slots: np.ndarray) -> None:
        pos = np.searchsorted(self._delta_keys, keys_sorted)
        self._delta_keys = np.insert(self._delta_keys, pos, keys_sorted)
        self._delta_slots = np.insert(self._delta_slots, pos, slots)
        if self._delta_keys.size > self.delta_index_max:
            pos = np.searchsorted(self._main_keys, self._delta_keys)
            self._main_keys = np.insert(self._main_keys, pos, self._delta_keys)
            self._main_slots = np.insert(self._main_slots, pos, self._delta_slots)
            self._delta_keys = np.zeros(0, np.int64)
            self._delta_slots = np.zeros(0, np.int64)

    def _evict(self) -> None:
        target = int(self.max_points * (1.0 - self.evict_fraction))
        n_out = self._n - target
        # least recently updated first; among equals the least confident first
        order = np.lexsort((self._conf[:self._n], self._last[:self._n]))
        keep = np.sort(order[n_out:])
        for name in ("_key", "_pos", "_col", "_conf", "_weight", "_last"):
            arr = getattr(self, name)
            arr[:target] = arr[keep]
        self._n = target
        self.evicted_total += n_out
        order = np.argsort(self._key[:target], kind="stable")
        self._main_keys = self._key[:target][order].copy()
        self._main_slots = order.astype(np.int64)
        self._delta_keys = np.zeros(0, np.int64)
        self._delta_slots = np.zeros(0, np.int64)

    # ------------------------------------------------------------------------------------------------ snapshots
    # voxel arrays (N rows each) and the sorted key index (main + delta), with their dtypes
    VOXEL_ARRAYS = {"key": np.int64, "pos": np.float32, "col": np.float32, "conf": np.float32,
                     "weight": np.float64, "last": np.int64}
    INDEX_ARRAYS = ("main_keys", "main_slots", "delta_keys", "delta_slots")

    def export_state(self) -> tuple[dict[str, np.ndarray], dict[str, float | int]]:
        """(arrays, values): copies of everything the map's future behaviour depends on, the key index included,
        so a map rebuilt by ``from_state`` merges and evicts exactly as this one would."""
        arrays = {name: getattr(self, "_" + name)[:self._n].copy() for name in self.VOXEL_ARRAYS}
        arrays.update({name: getattr(self, "_" + name).copy() for name in self.INDEX_ARRAYS})
        values = {"voxel_size": self.voxel_size, "max_points": self.max_points,
                  "evict_fraction": self.evict_fraction, "delta_index_max": self.delta_index_max,
                  "evicted_total": self.evicted_total, "dropped_total": self.dropped_total, "updates": self.updates}
        return arrays, values

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], values: dict[str, float | int]) -> "VoxelMap":
        """The map ``export_state`` described; ValueError when the parts do not fit together (wrong dtypes or
        lengths, an index that is not sorted or does not cover every voxel exactly once)."""
        out = cls(float(values["voxel_size"]), int(values["max_points"]), float(values["evict_fraction"]),
                  int(values["delta_index_max"]))
        n = int(np.asarray(arrays["key"]).shape[0])
        for name, dtype in cls.VOXEL_ARRAYS.items():
            a = np.asarray(arrays[name])
            shape = (n, 3) if name in ("pos", "col") else (n,)
            if a.dtype != dtype or a.shape != shape:
                raise ValueError(f"voxel map: {name} must be {np.dtype(dtype)} {shape}, got {a.dtype} {a.shape}")
        index = {name: np.asarray(arrays[name]) for name in cls.INDEX_ARRAYS}
        for name, a in index.items():
            if a.dtype != np.int64 or a.ndim != 1:
                raise ValueError(f"voxel map: {name} must be int64 [K], got {a.dtype} {a.shape}")
        keys = np.asarray(arrays["key"])
        for part in ("main", "delta"):
            k, s = index[f"{part}_keys"], index[f"{part}_slots"]
            if k.shape != s.shape or np.any(np.diff(k) <= 0) or np.any((s < 0) | (s >= n)) \
                    or not np.array_equal(keys[s], k):
                raise ValueError(f"voxel map: the {part} key index does not match the voxels")
        if not np.array_equal(np.sort(np.concatenate([index["main_slots"], index["delta_slots"]])), np.arange(n)):
            raise ValueError("voxel map: the key index does not cover every voxel exactly once")
        if n > out.max_points:
            raise ValueError(f"voxel map: {n} voxels exceed its max_points {out.max_points}")
        out._reserve(n)
        for name in cls.VOXEL_ARRAYS:
            getattr(out, "_" + name)[:n] = arrays[name]
        for name, a in index.items():
            setattr(out, "_" + name, a.copy())
        out._n = n
        out.evicted_total, out.dropped_total = int(values["evicted_total"]), int(values["dropped_total"])
        out.updates = int(values["updates"])
        return out
