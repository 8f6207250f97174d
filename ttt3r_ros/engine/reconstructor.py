"""Streaming reconstruction: frames in; poses, intrinsics, depth, confidence, colour and a bounded map out.

``BatchedReconstructor`` runs N independent camera streams through one shared model, one batched ``model.step``
per call; ``StreamingReconstructor`` is the one-stream case. Per stream it keeps only the recurrent state, a few
4x4 poses, the bounded voxel map and the trajectories (104 bytes per frame each), so memory does not otherwise grow
with sequence length.

Poses. The model returns camera-to-world poses in its chunk's world frame (OpenCV optical axes). With a
``reset_interval`` R the reference demo's chaining applies (SPEC §6.3): frame i (0-based, counted per stream)
is flagged when (i + 1) % R == 0; it is processed with the old state, then the state resets and the SAME frame is
run again as the first view of the new chunk (that output is dropped); every pose is left-multiplied by the running
base B, and B <- B @ c2w(flagged frame) after each flagged frame. These chained poses are
``FrameResult.camera_to_world_model`` (equal to the demo's saved poses). ``camera_to_world`` expresses them relative to
the stream's first frame: inv(P_0) @ P_i, so the first frame is exactly the identity.

``reset()`` (the node's reset service): the stream's state goes back to the initial one and the next frame starts a
new chunk. By default odometry continues: the new chunk is placed at the last frame's pose (as the demo places a
chunk at its overlap frame), so there is no jump other than the motion between those two frames; the map is kept.
``reset(restart_odometry=True)`` starts over instead: trajectory, map and frame counter are cleared and the next
frame is the identity.

Fast path (CUDA): by default (``fast_path=None``: on for a CUDA model) the model runs through
``ttt3r_ros.model.fast``: ``enable_fast_path`` once per model (compiled blocks/heads for bf16/fp16, concurrent
decoders) and one ``GraphedStep`` (a CUDA graph of the whole step, self head only) per (batch size, H, W, input
kind), captured at the first frame of that shape (that frame pays warm-up, compilation and capture; logged once).
uint8 frames of one size with on-device preprocessing (the node's case) go to a runner whose graph also runs the
resize/crop/normalisation (``preprocess_torch``, the same kernels as the eager on-device path) on the raw frames,
uploaded from a fresh pinned buffer; float (pre-normalised) frames use a runner at model size. The
streams' states are loaded into the runner only when it does not already hold exactly their latest state (the
single-stream case never copies), reset/update flags go through the runner's masks, and the outputs a FrameResult
keeps on the device (self points, confidence, in-graph colour) are cloned, because the next replay overwrites
the runner's buffers (pose, gate and the host arrays are copied out before any later replay). If a capture fails
the engine warns once and runs that shape eagerly (``fast_path_active``/``fast_path_status`` say which path ran).
On a CPU nothing changes: ``model.step`` eagerly. The runners and their bookkeeping live in ``fast_runner``;
``FrameResult`` in ``frame_result``.

Synchronisation: ``step`` copies the [B,4,4] pose to the host once per call (chaining and the trajectory need it).
Dense outputs stay on the model's device in the FrameResult until a property asks for them; each is copied once and
cached. On the fast path, what the node reads every frame (depth, confidence, colour, gate) is instead copied
asynchronously right after the replay into fresh pinned host arrays owned by that FrameResult (the pose copy's
event is the step's one wait; the others' event is waited for on the first host read), so a read costs no copy.
The map update (if enabled) reduces the frame's confident points to voxels on the device and copies only those
voxels.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields, replace
from typing import Any, Sequence

import numpy as np
import torch

from . import geometry
from .fast_runner import MAX_GRAPH_RUNNERS, GraphRunners, HostCopies, RunnerKey  # noqa: F401  (re-exported)
from .frame_result import FrameResult
from .geometry import ResizeCrop
from .preprocess import Preprocessed, preprocess, preprocess_torch, validate_image
from .voxel_map import VoxelMap

UPDATE_RULE_NAMES = ("ttt3r", "cut3r")
_log = logging.getLogger("ttt3r_ros.engine")


@dataclass
class EngineConfig:
    """Engine options (all have defaults; ``StreamingReconstructor(model, **options)`` accepts the same names).

    update_rule: 'ttt3r' (default) or 'cut3r'. reset_interval: None (never) or R >= 1 (reference demo chaining).
    size: long side of the model image (512 for the official checkpoint). confidence_threshold: map points need
    conf_self > threshold. voxel_size (m, up to the model's scale) and map_max_points: the VoxelMap.
    camera_to_base: 4x4 T_base_cam (camera optical frame -> robot base); None means a camera at the base origin
    looking along base x (the REP 103 axis swap). build_map: accumulate the voxel map in ``step``.
    map_pixel_stride: feed every k-th pixel (rows and columns) of each frame to the map (1 = all; 2 quarters the
    map's per-frame cost and loses little at voxel sizes above the pixel footprint).
    preprocess_precision: 'exact' (bit-identical to PIL) or 'fast' (float32, within 1 uint8 level) for tensor
    input. preprocess_on_device: numpy frames are uploaded as uint8 and resized on the model's device with the
    tensor path (bit-identical to PIL in 'exact' precision); None = only when the model is on CUDA.
    sync_timings: synchronise CUDA around each phase so ``timings_ms`` are device times (costs overlap).
    focal_pixel_stride: 1 (default) = the reference's Weiszfeld focal estimate on every pixel, bit for bit;
    k > 1 is an explicit opt-in approximation on every k-th pixel of every k-th row (~k*k less work; at 512x384
    k=2 moved the synthetic box room's focal by ~1e-5 relative). Only used when no calibration is given, and only
    computed when ``intrinsics_model``/``intrinsics_input`` is read.
    fast_path: None (default) = on for a CUDA model, off on CPU; True = required (an error on a CPU model);
    False = ``model.step`` eagerly (the pre-fast-path engine; also what fp32 parity checks compare against).
    """
    update_rule: str = "ttt3r"
    reset_interval: int | None = None
    size: int = 512
    confidence_threshold: float = 3.0
    voxel_size: float = 0.02
    map_max_points: int = 2_000_000
    camera_to_base: Any = None
    build_map: bool = True
    map_pixel_stride: int = 1
    preprocess_precision: str = "exact"
    preprocess_on_device: bool | None = None
    sync_timings: bool = False
    focal_pixel_stride: int = 1
    fast_path: bool | None = None

    def validated(self) -> "EngineConfig":
        if self.update_rule not in UPDATE_RULE_NAMES:
            raise ValueError(f"update_rule must be one of {UPDATE_RULE_NAMES}, got {self.update_rule!r}")
        if self.reset_interval is not None and (int(self.reset_interval) != self.reset_interval
                                                or self.reset_interval < 1):
            raise ValueError(f"reset_interval must be None or an integer >= 1, got {self.reset_interval!r}")
        if not (isinstance(self.size, int) and self.size >= 16):
            raise ValueError(f"size must be an integer >= 16, got {self.size!r}")
        if not np.isfinite(self.confidence_threshold):
            raise ValueError(f"confidence_threshold must be finite, got {self.confidence_threshold}")
        if not (self.voxel_size > 0 and np.isfinite(self.voxel_size)):
            raise ValueError(f"voxel_size must be a positive finite number, got {self.voxel_size}")
        if int(self.map_max_points) < 1:
            raise ValueError(f"map_max_points must be >= 1, got {self.map_max_points}")
        if not (isinstance(self.map_pixel_stride, int) and self.map_pixel_stride >= 1):
            raise ValueError(f"map_pixel_stride must be an integer >= 1, got {self.map_pixel_stride!r}")
        if not (isinstance(self.focal_pixel_stride, int) and self.focal_pixel_stride >= 1):
            raise ValueError(f"focal_pixel_stride must be an integer >= 1, got {self.focal_pixel_stride!r}")
        if self.fast_path not in (None, True, False):
            raise ValueError(f"fast_path must be None (auto), True or False, got {self.fast_path!r}")
        if self.preprocess_precision not in ("exact", "fast"):
            raise ValueError(f"preprocess_precision must be 'exact' or 'fast', got {self.preprocess_precision!r}")
        t = geometry.T_BODY_FROM_OPTICAL if self.camera_to_base is None else np.asarray(self.camera_to_base, float)
        if t.shape != (4, 4) or not np.all(np.isfinite(t)):
            raise ValueError(f"camera_to_base must be a finite 4x4 matrix, got shape {t.shape}")
        r = t[:3, :3]
        if not np.allclose(r @ r.T, np.eye(3), atol=1e-6) or not np.allclose(t[3], [0, 0, 0, 1]):
            raise ValueError("camera_to_base must be a rigid transform (orthonormal rotation, last row 0 0 0 1)")
        return replace(self, camera_to_base=t)


def validate_intrinsics(k: Any) -> np.ndarray:
    """A calibrated 3x3 camera matrix, checked: finite, fx > 0, fy > 0, last row (0, 0, 1)."""
    arr = np.asarray(k, dtype=np.float64)
    if arr.shape != (3, 3):
        raise ValueError(f"intrinsics: expected a 3x3 matrix, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"intrinsics: contains NaN or inf: {arr.tolist()}")
    if arr[0, 0] <= 0 or arr[1, 1] <= 0:
        raise ValueError(f"intrinsics: focal lengths must be positive, got fx={arr[0, 0]}, fy={arr[1, 1]}")
    if not np.allclose(arr[2], [0.0, 0.0, 1.0]) or arr[1, 0] != 0 or arr[2, 0] != 0:
        raise ValueError(f"intrinsics: not an upper-triangular camera matrix with last row 0 0 1: {arr.tolist()}")
    return arr


def _model_device(model: Any) -> torch.device:
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    dev = getattr(model, "device", None)
    if dev is None:
        raise TypeError("model: cannot tell its device (no parameters and no .device attribute)")
    return torch.device(dev)


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

    def __iter__(self):
        return (self[i] for i in range(self._n))

    def timestamps(self) -> np.ndarray:
        return self._t[:self._n].copy()

    def poses(self) -> np.ndarray:
        out = np.tile(np.eye(4), (self._n, 1, 1))
        out[:, :3] = self._p[:self._n]
        return out


class _Stream:
    """Per-stream bookkeeping: recurrent state, pose chaining, trajectory, map."""

    def __init__(self, state: Any, cfg: EngineConfig) -> None:
        self.state = state  # None while a graph runner holds the latest state (see ``held_by``)
        self.held_by: tuple[RunnerKey, int] | None = None  # (runner key, slot) in fast_runner.GraphRunners
        self.index = 0
        self.chunk = 0
        self.base = np.eye(4)
        self.first_inv: np.ndarray | None = None
        self.last_chained: np.ndarray | None = None
        self.starts_chunk = True
        self.trajectory = Trajectory()
        self.trajectory_model = Trajectory()
        self.voxel_map = VoxelMap(cfg.voxel_size, cfg.map_max_points)


class BatchedReconstructor:
    """N camera streams sharing one model; ``step_batch`` runs one batched model step for the streams given."""

    def __init__(self, model: Any, num_streams: int = 1, config: EngineConfig | None = None, **options: Any) -> None:
        if num_streams < 1:
            raise ValueError(f"num_streams must be >= 1, got {num_streams}")
        unknown = set(options) - {f.name for f in fields(EngineConfig)}
        if unknown:
            raise TypeError(f"unknown engine options {sorted(unknown)}")
        self.config = replace(config or EngineConfig(), **options).validated()
        self.model = model
        self.device = _model_device(model)
        self.num_streams = num_streams
        self.invalid_frames = 0
        self._streams = [self._new_stream() for _ in range(num_streams)]
        # fast path: the GraphedStep runners and which stream states they hold (shares the list of streams)
        self._fast = GraphRunners(model, self.config, self.device, self._streams)
        self._last_step_graphed: bool | None = None
        self._fast_path, self._fast_path_note = self._resolve_fast_path()

    def _new_stream(self) -> _Stream:
        return _Stream(self.model.initial_state(1), self.config)

    # ------------------------------------------------------------------------------------------ fast path
    def _resolve_fast_path(self) -> tuple[bool, str]:
        wanted = self.config.fast_path
        if wanted is None:
            wanted = self.device.type == "cuda"
            if not wanted:
                return False, f"eager (model on {self.device.type}; the fast path is CUDA-only)"
        if not wanted:
            return False, "eager (fast_path=False)"
        if self.device.type != "cuda":
            raise ValueError(f"fast_path=True needs a model on CUDA (CUDA graphs); this one is on {self.device}")
        try:
            from ttt3r_ros.model.fast import enable_fast_path

            levers = enable_fast_path(self.model, log=_log.warning)
        except Exception as exc:  # not a TTT3RModel, or a lever that this machine cannot run
            note = f"eager (fast path unavailable: {type(exc).__name__}: {exc})"
            _log.warning("ttt3r engine: %s", note)
            return False, note
        dtype = str(getattr(self.model, "dtype", "")).replace("torch.", "")
        return True, f"cuda-graph ({dtype}; levers: {','.join(levers) or 'none'})"

    @property
    def fast_path_enabled(self) -> bool:
        """The CUDA fast path is on for this engine (it may still have fallen back for a shape: fast_path_active)."""
        return self._fast_path

    @property
    def fast_path_active(self) -> bool:
        """True when the last model step ran as a CUDA-graph replay (before any frame: whether it is expected to)."""
        return self._fast_path if self._last_step_graphed is None else self._last_step_graphed

    @property
    def fast_path_status(self) -> str:
        """One line for logs/status: which path runs, with the levers, and shapes that fell back to eager."""
        note = self._fast_path_note
        if self._fast.capture_failed:
            shapes = ", ".join(f"batch {b} {w}x{h}{' uint8 input' if kind == 'uint8' else ''}: {why}"
                               for (b, h, w, kind), why in self._fast.capture_failed.items())
            note += f"; eager for {shapes}"
        return note

    # ------------------------------------------------------------------------------------------ accessors
    def trajectory_of(self, stream: int = 0) -> Trajectory:
        """(timestamp, camera_to_world) per frame, first frame identity."""
        return self._streams[stream].trajectory

    def trajectory_model_of(self, stream: int = 0) -> Trajectory:
        """(timestamp, chained model-world pose) per frame (the reference demo's saved poses)."""
        return self._streams[stream].trajectory_model

    def voxel_map_of(self, stream: int = 0) -> VoxelMap:
        return self._streams[stream].voxel_map

    def frames_processed(self, stream: int = 0) -> int:
        return self._streams[stream].index

    # --------------------------------------------------------------------------------------------- resets
    def reset(self, stream: int | None = None, restart_odometry: bool = False) -> None:
        """Reset one stream (or all): see the module docstring for what continues and what restarts."""
        targets = range(self.num_streams) if stream is None else [stream]
        for s in targets:
            if restart_odometry:
                self._streams[s] = self._new_stream()
                continue
            st = self._streams[s]
            st.state = self.model.initial_state(1)
            st.held_by = None  # a runner's copy of this stream is stale now
            if st.last_chained is not None:
                st.base = st.last_chained.copy()  # the new chunk starts where the last frame was
            st.starts_chunk = True

    # ----------------------------------------------------------------------------------------------- step
    def _prepare(self, image: Any, what: str) -> Preprocessed:
        if isinstance(image, torch.Tensor) and image.is_floating_point():
            return self._prenormalised(image, what)
        if not isinstance(image, (np.ndarray, torch.Tensor)):
            raise TypeError(f"{what}: expected an HxWx3 uint8 numpy array or tensor, got {type(image).__name__}")
        validate_image(image, what)
        if image.ndim != 3:
            raise ValueError(f"{what}: expected one HxWx3 image, got shape {tuple(image.shape)}")
        on_device = self.config.preprocess_on_device
        if on_device is None:
            on_device = self.device.type == "cuda"
        if on_device and isinstance(image, np.ndarray):
            image = torch.from_numpy(np.ascontiguousarray(image)).to(self.device, non_blocking=True)
        try:
            return preprocess(image, self.config.size, device=self.device,
                              precision=self.config.preprocess_precision)
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None

    def _prenormalised(self, x: torch.Tensor, what: str) -> Preprocessed:
        """A float tensor [3,h,w] or [1,3,h,w] already normalised to [-1,1] (the reference's load_images output,
        e.g. the parity file's input/frames): used as is, at model resolution (no resize, no crop)."""
        if x.dim() == 4 and x.shape[0] == 1:
            x = x[0]
        if x.dim() != 3 or x.shape[0] != 3:
            raise ValueError(f"{what}: a float image must be a normalised [3,H,W] or [1,3,H,W] tensor, "
                             f"got {tuple(x.shape)}")
        h, w = int(x.shape[1]), int(x.shape[2])
        if h == 0 or w == 0 or h % 16 or w % 16:
            raise ValueError(f"{what}: a pre-normalised image needs H and W multiples of 16, got {h}x{w}")
        if not bool(torch.isfinite(x).all()) or float(x.abs().max()) > 1.0 + 1e-6:
            raise ValueError(f"{what}: a pre-normalised image must be finite and within [-1, 1]")
        x = x.to(self.device, torch.float32).unsqueeze(0)
        colour = ((x[0].permute(1, 2, 0) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).unsqueeze(0)
        rc = ResizeCrop(input_h=h, input_w=w, resized_h=h, resized_w=w, x0=0, y0=0, model_h=h, model_w=w)
        return Preprocessed(images=x, colour=colour, transform=rc)

    def _sync(self) -> None:
        if self.config.sync_timings and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _run_model(self, images: torch.Tensor, idx: list[int], reset: list[bool] | None,
                   update: list[bool] | None, keep_outputs: bool = True, kind: str = "float"):
        """kind 'float': images [B,3,h,w] normalised; 'uint8': raw frames [B,H,W,3] (fast path only: the runner
        preprocesses them inside its graph; eagerly here only if that capture failed)."""
        if self._fast_path:
            hw = images.shape[1:3] if kind == "uint8" else images.shape[-2:]
            key = (len(idx), int(hw[0]), int(hw[1]), kind)
            if self._fast.runner(key) is not None:
                self._last_step_graphed = True
                return self._fast.run(key, images, idx, reset, update, keep_outputs)
        self._last_step_graphed = False
        if kind == "uint8":
            images = preprocess_torch(images.to(self.device), self.config.size,
                                      precision=self.config.preprocess_precision).images
        states = [self._fast.state_of(s) for s in idx]
        state = states[0] if len(states) == 1 else type(states[0]).stack(states)
        kw: dict[str, Any] = {}
        if reset is not None and any(reset):
            kw["reset"] = torch.tensor(reset, dtype=torch.bool, device=self.device)
        if update is not None and not all(update):
            kw["update"] = torch.tensor(update, dtype=torch.bool, device=self.device)
        out, new_state = self.model.step(images, state, update_rule=self.config.update_rule, heads=("self",), **kw)
        for j, s in enumerate(idx):
            self._streams[s].state = new_state if len(idx) == 1 else new_state.select(j)
        return out

    def step_batch(self, images: Sequence[Any], timestamps: Sequence[float],
                   intrinsics: Sequence[Any] | None = None, streams: Sequence[int] | None = None,
                   update_state: bool | Sequence[bool] = True) -> list[FrameResult]:
        """One frame for each stream in ``streams`` (default: all, in order). All images must give the same model
        size. ``intrinsics``: per image a 3x3 at input resolution or None. ``update_state=False`` localises
        without changing the state (the frame still counts for the reset interval)."""
        t_start = time.perf_counter()
        idx = list(range(self.num_streams)) if streams is None else [int(s) for s in streams]
        if len(set(idx)) != len(idx) or any(not 0 <= s < self.num_streams for s in idx):
            raise ValueError(f"streams: expected distinct indices in [0, {self.num_streams}), got {idx}")
        n = len(idx)
        if len(images) != n or len(timestamps) != n:
            raise ValueError(f"step_batch: {len(images)} images and {len(timestamps)} timestamps for {n} streams")
        ks = [None] * n if intrinsics is None else list(intrinsics)
        if len(ks) != n:
            raise ValueError(f"step_batch: {len(ks)} intrinsics for {n} streams")
        ks = [None if k is None else validate_intrinsics(k) for k in ks]
        ts = [float(t) for t in timestamps]
        if not all(np.isfinite(ts)):
            raise ValueError(f"timestamp must be finite, got {timestamps}")
        updates = [bool(update_state)] * n if isinstance(update_state, bool) else [bool(u) for u in update_state]
        if len(updates) != n:
            raise ValueError(f"update_state: {len(updates)} flags for {n} streams")

        with torch.inference_mode():  # a first frame captures the runner here, as _run_model would
            raw = self._fast.raw_batch(images, n) if self._fast_path else None
        if raw is not None:  # fast path: resize/crop/normalise run inside the runner's CUDA graph
            batch, transform = raw
            kind = "uint8"
            transforms = [transform] * n
            colours: torch.Tensor | None = None  # from the graph's outputs
        else:
            prepared = [self._prepare(img, "image" if n == 1 else f"image[{j}]") for j, img in enumerate(images)]
            sizes = {p.transform.model_size for p in prepared}
            if len(sizes) != 1:
                raise ValueError(f"step_batch: images give different model sizes {sorted(sizes)}; batch streams "
                                 "with the same input size, or use one reconstructor per size")
            batch = prepared[0].images if n == 1 else torch.cat([p.images for p in prepared])
            kind = "float"
            transforms = [p.transform for p in prepared]
            colours = prepared[0].colour if n == 1 else torch.cat([p.colour for p in prepared])
        self._sync()
        t_pre = time.perf_counter()

        r = self.config.reset_interval
        flagged = [r is not None and (self._streams[s].index + 1) % r == 0 for s in idx]
        starts = [self._streams[s].starts_chunk for s in idx]
        with torch.inference_mode():
            out = self._run_model(batch, idx, flagged, updates, kind=kind)
            host: HostCopies | None = None
            if self._last_step_graphed:
                if colours is None:
                    colours = out.colour
                else:
                    out.host_sources["colour"] = colours
                host = self._fast.copy_to_host(out)  # issued before the re-run below replays over the static outputs
            if any(flagged):
                # the flagged frame is run again as the first view of the new chunk; its output is dropped
                sub = [j for j in range(n) if flagged[j]]
                sub_images = batch[sub] if len(sub) < n else batch
                self._run_model(sub_images, [idx[j] for j in sub], None, None, keep_outputs=False, kind=kind)
            self._sync()
            t_model = time.perf_counter()
            if host is None:
                c2w_raw = out.c2w.detach().to("cpu", torch.float64).numpy()  # the one per-step sync
            else:
                if host.pose_ready is not None:
                    host.pose_ready.synchronize()  # the one per-step wait; dense copies may still be running
                c2w_raw = host.pose.to(torch.float64).numpy()

            results = []
            for j, s in enumerate(idx):
                st = self._streams[s]
                extra: dict[str, Any] = {"update_rate": None if out.update_rate is None else out.update_rate[j]}
                if host is not None:
                    extra.update(host={name: a[j] for name, a in host.arrays.items()}, host_ready=host.ready)
                if not np.all(np.isfinite(c2w_raw[j])):
                    results.append(self._invalid_frame(s, ts[j], transforms[j], colours[j], out, j, ks[j],
                                                       starts[j], extra))
                    continue
                chained = st.base @ c2w_raw[j]
                if st.first_inv is None:
                    # a true inverse: the model's float32 rotations are not exactly orthonormal
                    st.first_inv = np.linalg.inv(chained)
                cam_to_world = st.first_inv @ chained
                cam_to_world[3] = (0.0, 0.0, 0.0, 1.0)  # exact, not inv()'s 1e-17 residue
                if flagged[j]:
                    st.base = st.base @ c2w_raw[j]
                st.last_chained = chained
                if starts[j] and st.index > 0:  # first frame after reset()
                    st.chunk += 1
                chunk = st.chunk
                if flagged[j]:  # its overlap copy started the next chunk
                    st.chunk += 1
                st.starts_chunk = False
                st.trajectory.append(ts[j], cam_to_world)
                st.trajectory_model.append(ts[j], chained)
                res = FrameResult(
                    index=st.index, stream=s, timestamp=ts[j], transform=transforms[j],
                    camera_to_world=cam_to_world, camera_to_world_model=chained,
                    camera_to_base=self.config.camera_to_base,
                    points_camera=out.pts3d_in_self_view[j], confidence=out.conf_self[j],
                    colour=colours[j], intrinsics_input=ks[j],
                    was_reset=starts[j] or flagged[j], chunk_index=chunk, timings_ms={},
                    focal_pixel_stride=self.config.focal_pixel_stride, **extra)
                st.index += 1
                if self.config.build_map:
                    self._update_map(st.voxel_map, res)
                results.append(res)
            self._sync()
        t_end = time.perf_counter()
        timings = {"preprocess": (t_pre - t_start) * 1e3, "model": (t_model - t_pre) * 1e3,
                   "post": (t_end - t_model) * 1e3, "total": (t_end - t_start) * 1e3}
        for res in results:
            res.timings_ms = dict(timings)
        return results

    def _invalid_frame(self, s: int, t: float, transform: ResizeCrop, colour: torch.Tensor, out: Any, j: int,
                       k: np.ndarray | None, starts: bool, extra: dict[str, Any]) -> FrameResult:
        """A non-finite pose from the network (e.g. an fp16 overflow): the frame is reported with ``valid=False``
        and the last good pose, kept out of the trajectory and the map, and the stream is reset so that the next
        frame starts a new chunk at the last good pose (its state may hold non-finite values now)."""
        st = self._streams[s]
        last = np.eye(4) if st.last_chained is None else st.last_chained
        rel = np.eye(4) if st.first_inv is None else st.first_inv @ last
        res = FrameResult(
            index=st.index, stream=s, timestamp=t, transform=transform, camera_to_world=rel,
            camera_to_world_model=last.copy(), camera_to_base=self.config.camera_to_base,
            points_camera=out.pts3d_in_self_view[j], confidence=out.conf_self[j], colour=colour,
            intrinsics_input=k, was_reset=starts, chunk_index=st.chunk,
            timings_ms={}, valid=False, focal_pixel_stride=self.config.focal_pixel_stride, **extra)
        st.index += 1
        self.reset(s)
        self.invalid_frames += 1
        return res

    def _update_map(self, voxel_map: VoxelMap, res: FrameResult) -> None:
        k = self.config.map_pixel_stride
        conf = res.tensor("confidence")
        pts = res.tensor("points_world")
        col = res.tensor("colour")
        if k > 1:
            conf, pts, col = conf[::k, ::k], pts[::k, ::k], col[::k, ::k]
        conf = conf.reshape(-1)
        keep = torch.nonzero(conf > self.config.confidence_threshold).squeeze(1)
        voxel_map.add(pts.reshape(-1, 3).index_select(0, keep), col.reshape(-1, 3).index_select(0, keep),
                      conf.index_select(0, keep))


class StreamingReconstructor:
    """One camera stream (see the module docstring). Options as ``EngineConfig`` fields, or ``config=``."""

    def __init__(self, model: Any, config: EngineConfig | None = None, **options: Any) -> None:
        self._batched = BatchedReconstructor(model, 1, config, **options)

    @property
    def config(self) -> EngineConfig:
        return self._batched.config

    @property
    def model(self) -> Any:
        return self._batched.model

    def step(self, image: Any, timestamp_s: float, intrinsics: Any = None, update_state: bool = True
             ) -> FrameResult:
        """``image``: HxWx3 uint8 RGB (numpy or tensor on any device), or a float [3,H,W] tensor already
        normalised to [-1,1] at model resolution. ``intrinsics``: optional 3x3 at the input resolution."""
        return self._batched.step_batch([image], [timestamp_s], [intrinsics], update_state=update_state)[0]

    def reset(self, restart_odometry: bool = False) -> None:
        self._batched.reset(0, restart_odometry)

    @property
    def trajectory(self) -> Trajectory:
        return self._batched.trajectory_of(0)

    @property
    def trajectory_model(self) -> Trajectory:
        return self._batched.trajectory_model_of(0)

    @property
    def voxel_map(self) -> VoxelMap:
        return self._batched.voxel_map_of(0)

    @property
    def frames_processed(self) -> int:
        return self._batched.frames_processed(0)

    @property
    def invalid_frames(self) -> int:
        """Frames whose pose came out non-finite (reported with valid=False; the stream was reset)."""
        return self._batched.invalid_frames

    @property
    def fast_path_active(self) -> bool:
        """True when the last frame ran as a CUDA-graph replay (before the first frame: whether it will)."""
        return self._batched.fast_path_active

    @property
    def fast_path_status(self) -> str:
        """Which execution path runs, e.g. 'cuda-graph (bfloat16; levers: ...)' or 'eager (model on cpu; ...)'."""
        return self._batched.fast_path_status
