"""Streaming reconstruction: frames in; poses, intrinsics, depth, confidence, colour and a bounded map out.

``BatchedReconstructor`` runs N independent camera streams through one shared model, one batched model step per
call; ``StreamingReconstructor`` is the one-stream case. Per stream it keeps only the recurrent state, a few
4x4 poses, the bounded voxel map and the trajectories (104 bytes per frame each), so memory does not otherwise grow
with sequence length.

A call flows one way through four stages:

1. ``inputs.prepare_inputs``: validate the frames and build the model input (per-frame preprocessing, or raw uint8
   frames for a step runner that preprocesses inside its CUDA graph);
2. the model step through a ``step_runner.StepRunner`` (eager ``model.step``, or CUDA-graph replays), which takes
   the streams' states from their owners (``StreamState``, one per stream, held here) and hands the new ones back;
3. ``host_copies``: on the graph path the pose and what the node reads every frame (depth, confidence, colour,
   gate) are copied asynchronously into fresh pinned host arrays right after the replay;
4. pose chaining per stream (here), the ``FrameResult`` and the map update.

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

Fast path (CUDA): by default (``fast_path=None``: on for a CUDA model) the step runs as CUDA-graph replays
(``step_runner.GraphStepRunner``: levers enabled once per model, one graph per batch size x input size x input
kind, captured at the first frame of that shape, which pays warm-up, compilation and capture; logged once). uint8
frames of one size with on-device preprocessing (the node's case) go to a graph that also runs the
resize/crop/normalisation on the raw frames, uploaded from a fresh pinned buffer; float (pre-normalised) frames use
a graph at model size. If a capture fails the engine warns once and runs that shape eagerly
(``fast_path_active``/``fast_path_status`` say which path ran). On a CPU nothing changes: ``model.step`` eagerly.

Synchronisation: ``step`` copies the [B,4,4] pose to the host once per call (chaining and the trajectory need it),
together with the step's per-stream finite flags (computed on the device, in the graph on the fast path): a frame
whose pose, outputs or new state are not finite (an fp16 overflow) comes back with ``valid=False``.
Dense outputs stay on the model's device in the FrameResult until a property asks for them; each is copied once and
cached. On the fast path, what the node reads every frame is instead already on its way to the host (the pose
copy's event is the step's one wait; the others' event is waited for on the first host read), so a read costs no
copy. The map update (if enabled) reduces the frame's confident points to voxels on the device and copies only
those voxels.
"""
from __future__ import annotations

import time
from dataclasses import fields, replace
from typing import Any, Sequence

import numpy as np
import torch

from .camera_model import CameraModel
from .config import UPDATE_RULE_NAMES, EngineConfig, validate_intrinsics  # noqa: F401  (re-exported)
from .frame_result import FrameResult
from .geometry import ResizeCrop
from .host_copies import copy_to_host
from .inputs import prepare_inputs
from .step_runner import GraphStepRunner, StepOutputs, StreamState, make_step_runner
from .stream_snapshot import StreamSnapshot, export_parts, restore_parts
from .trajectory import Trajectory
from .voxel_map import VoxelMap


def _model_device(model: Any) -> torch.device:
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    dev = getattr(model, "device", None)
    if dev is None:
        raise TypeError("model: cannot tell its device (no parameters and no .device attribute)")
    return torch.device(dev)


class _Stream:
    """One camera stream: its recurrent state (``state`` is its one owner), pose chaining, trajectories, map."""

    def __init__(self, initial_state: Any, cfg: EngineConfig) -> None:
        self.state = StreamState(initial_state)
        self.index = 0
        self.chunk = 0
        self.base = np.eye(4)
        self.first_inv: np.ndarray | None = None
        self.last_chained: np.ndarray | None = None
        self.starts_chunk = True
        self.trajectory = Trajectory()
        self.trajectory_model = Trajectory()
        self.voxel_map = VoxelMap(cfg.voxel_size, cfg.map_max_points)

    def chain(self, c2w: np.ndarray, timestamp_s: float, flagged: bool, starts: bool
              ) -> tuple[np.ndarray, np.ndarray, int]:
        """A finite model pose -> (camera_to_world, chained model pose, chunk index); appends to the trajectories
        and advances the chaining (see the module docstring). ``starts``: the frame opens a chunk (after reset)."""
        chained = self.base @ c2w
        if self.first_inv is None:
            # a true inverse: the model's float32 rotations are not exactly orthonormal
            self.first_inv = np.linalg.inv(chained)
        cam_to_world = self.first_inv @ chained
        cam_to_world[3] = (0.0, 0.0, 0.0, 1.0)  # exact, not inv()'s 1e-17 residue
        if flagged:
            self.base = self.base @ c2w
        self.last_chained = chained
        if starts and self.index > 0:  # first frame after reset()
            self.chunk += 1
        chunk = self.chunk
        if flagged:  # its overlap copy started the next chunk
            self.chunk += 1
        self.starts_chunk = False
        self.trajectory.append(timestamp_s, cam_to_world)
        self.trajectory_model.append(timestamp_s, chained)
        return cam_to_world, chained, chunk


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
        self._runner = make_step_runner(model, self.config, self.device)
        self._last_step_graphed: bool | None = None

    def _new_stream(self) -> _Stream:
        return _Stream(self.model.initial_state(1), self.config)

    # ------------------------------------------------------------------------------------------ fast path
    @property
    def fast_path_active(self) -> bool:
        """True when the last model step ran as a CUDA-graph replay (before any frame: whether it is expected to)."""
        if self._last_step_graphed is None:
            return isinstance(self._runner, GraphStepRunner)
        return self._last_step_graphed

    @property
    def fast_path_status(self) -> str:
        """One line for logs/status: which path runs, with the levers, and shapes that fell back to eager."""
        return "no model (released)" if self._runner is None else self._runner.status

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

    # ------------------------------------------------------------------------------------------ snapshots
    def export_stream(self, stream: int = 0) -> StreamSnapshot:
        """Copies of stream ``stream``'s whole state (recurrent state, fetched back from a CUDA graph that holds
        it; chaining; trajectories; map) on the CPU. ``import_stream`` on an engine with the same model and
        options continues it exactly (stream_snapshot.py)."""
        st = self._streams[stream]
        return export_parts(st.state.value(), st.index, st.chunk, st.starts_chunk,
                            {"base": st.base, "first_inv": st.first_inv, "last_chained": st.last_chained},
                            st.trajectory, st.trajectory_model, st.voxel_map)

    def import_stream(self, stream: int, snapshot: StreamSnapshot) -> None:
        """Replace stream ``stream`` by ``snapshot`` (from ``export_stream``). Everything is validated first
        (ValueError naming what does not fit this model and config); on an error the stream is untouched."""
        if not 0 <= stream < self.num_streams:
            raise ValueError(f"stream {stream} out of range [0, {self.num_streams})")
        parts = restore_parts(snapshot, self.model.initial_state(1), self.device, self.config.voxel_size,
                              self.config.map_max_points)
        st = self._new_stream()
        st.state.replace(parts.state)  # a new token: a graph holding the old stream's state reloads
        st.index, st.chunk, st.starts_chunk = parts.index, parts.chunk, parts.starts_chunk
        st.base = parts.poses["base"]
        st.first_inv, st.last_chained = parts.poses["first_inv"], parts.poses["last_chained"]
        st.trajectory, st.trajectory_model, st.voxel_map = parts.trajectory, parts.trajectory_model, parts.voxel_map
        self._streams[stream] = st

    # --------------------------------------------------------------------------------------------- resets
    def reset(self, stream: int | None = None, restart_odometry: bool = False) -> None:
        """Reset one stream (or all): see the module docstring for what continues and what restarts."""
        targets = range(self.num_streams) if stream is None else [stream]
        for s in targets:
            if restart_odometry:
                self._streams[s] = self._new_stream()
                continue
            st = self._streams[s]
            st.state.replace(self.model.initial_state(1))
            if st.last_chained is not None:
                st.base = st.last_chained.copy()  # the new chunk starts where the last frame was
            st.starts_chunk = True

    def replace_model(self, model: Any | None) -> None:
        """Run on ``model`` from the next frame on (e.g. the same weights in a safer precision after an fp16
        overflow): a new step runner (a CUDA graph is captured again at the next frame) and every stream reset as by
        ``reset()`` (the new model's initial state; odometry, trajectories and map continue). ``None`` releases the
        current model, its graphs and the streams' states first (so that a caller can free the old model's memory
        before building the new one); the engine cannot step until it is given a model again."""
        for st in self._streams:  # new tokens: no graph copies a lent state back; the old graphs can be freed
            st.state.replace(None)
        self._runner = None  # type: ignore[assignment]
        self.model = model
        self._last_step_graphed = None
        if model is None:
            return
        self.device = _model_device(model)
        self._runner = make_step_runner(model, self.config, self.device)
        self.reset()

    # ----------------------------------------------------------------------------------------------- step
    def step_batch(self, images: Sequence[Any], timestamps: Sequence[float],
                   intrinsics: Sequence[Any] | None = None, streams: Sequence[int] | None = None,
                   update_state: bool | Sequence[bool] = True,
                   camera_models: Sequence[CameraModel | None] | None = None) -> list[FrameResult]:
        """One frame for each stream in ``streams`` (default: all, in order). All images must give the same model
        size. ``intrinsics``: per image a 3x3 at input resolution or None. ``update_state=False`` localises
        without changing the state (the frame still counts for the reset interval). ``camera_models``: per image
        its calibrated camera (``camera_model.CameraModel``, e.g. from CameraInfo) or None, instead of
        ``intrinsics``: a distorted frame is undistorted before the model (on the device, inside the step's CUDA
        graph on the fast path) and its calibration is then the undistorted camera's ``new_camera_matrix``; a
        rectified one (D all zero) passes unchanged with its K."""
        t_start = time.perf_counter()
        if self.model is None:
            raise RuntimeError("the engine has no model (replace_model(None) released it)")
        idx = list(range(self.num_streams)) if streams is None else [int(s) for s in streams]
        if len(set(idx)) != len(idx) or any(not 0 <= s < self.num_streams for s in idx):
            raise ValueError(f"streams: expected distinct indices in [0, {self.num_streams}), got {idx}")
        n = len(idx)
        if len(images) != n or len(timestamps) != n:
            raise ValueError(f"step_batch: {len(images)} images and {len(timestamps)} timestamps for {n} streams")
        ks = [None] * n if intrinsics is None else list(intrinsics)
        if len(ks) != n:
            raise ValueError(f"step_batch: {len(ks)} intrinsics for {n} streams")
        models = [None] * n if camera_models is None else list(camera_models)
        if len(models) != n:
            raise ValueError(f"step_batch: {len(models)} camera models for {n} streams")
        for j, m in enumerate(models):
            if m is None:
                continue
            if not isinstance(m, CameraModel):
                raise TypeError(f"camera_models[{j}]: expected a CameraModel or None, got {type(m).__name__}")
            if ks[j] is not None:
                raise ValueError(f"step_batch: image {j} has both intrinsics and a camera model; give one")
            ks[j] = m.new_camera_matrix
        ks = [None if k is None else validate_intrinsics(k) for k in ks]
        ts = [float(t) for t in timestamps]
        if not all(np.isfinite(ts)):
            raise ValueError(f"timestamp must be finite, got {timestamps}")
        updates = [bool(update_state)] * n if isinstance(update_state, bool) else [bool(u) for u in update_state]
        if len(updates) != n:
            raise ValueError(f"update_state: {len(updates)} flags for {n} streams")
        streams_now = [self._streams[s] for s in idx]

        # 1. validate and preprocess (a first frame of a shape captures its CUDA graph here)
        with torch.inference_mode():
            inputs = prepare_inputs(images, self.config, self.device, self._runner.accepts_raw_frames, models)
        self._sync()
        t_pre = time.perf_counter()

        r = self.config.reset_interval
        flagged = [r is not None and (st.index + 1) % r == 0 for st in streams_now]
        starts = [st.starts_chunk for st in streams_now]
        with torch.inference_mode():
            # 2. the model step
            out = self._runner.step(inputs.images, inputs.raw, [st.state for st in streams_now], flagged, updates,
                                    undistortion=inputs.undistortion)
            self._last_step_graphed = out.graphed
            colours = out.colour if inputs.colour is None else inputs.colour
            # 3. host copies of the graph's static outputs, issued before the re-run below replays over them
            host = None
            if out.host_sources is not None:
                host = copy_to_host(out.c2w, {"colour": colours, **out.host_sources},
                                    with_first={"finite": out.finite})
            if any(flagged):
                # the flagged frame is run again as the first view of the new chunk; its output is dropped
                sub = [j for j in range(n) if flagged[j]]
                sub_images = inputs.images[sub] if len(sub) < n else inputs.images
                sub_undistortion = (None if inputs.undistortion is None
                                    else inputs.undistortion.select(sub) if len(sub) < n else inputs.undistortion)
                self._last_step_graphed = self._runner.advance(sub_images, inputs.raw,
                                                               [streams_now[j].state for j in sub],
                                                               undistortion=sub_undistortion)
            self._sync()
            t_model = time.perf_counter()
            # the pose with the step's finite flags: the one per-step wait (dense copies may still be running)
            pose_copy = host if host is not None else copy_to_host(out.c2w, {}, with_first={"finite": out.finite})
            c2w_raw = pose_copy.wait_first().to(torch.float64).numpy()
            finite = pose_copy.with_first["finite"].numpy()
            host_arrays = None if host is None else host.arrays

            # 4. pose chaining, results, map
            results = []
            for j, s in enumerate(idx):
                res = self._result(s, j, out, colours, inputs.transforms[j], c2w_raw[j], ts[j], ks[j],
                                   flagged[j], starts[j],
                                   None if host_arrays is None else {k: a[j] for k, a in host_arrays.items()},
                                   None if host is None else host.ready, finite=bool(finite[j]))
                if res.valid and self.config.build_map:
                    self._update_map(self._streams[s].voxel_map, res)
                results.append(res)
            self._sync()
        t_end = time.perf_counter()
        timings = {"preprocess": (t_pre - t_start) * 1e3, "model": (t_model - t_pre) * 1e3,
                   "post": (t_end - t_model) * 1e3, "total": (t_end - t_start) * 1e3}
        for res in results:
            res.timings_ms = dict(timings)
        return results

    def _sync(self) -> None:
        if self.config.sync_timings and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _result(self, s: int, j: int, out: StepOutputs, colours: torch.Tensor, transform: ResizeCrop,
                c2w: np.ndarray, t: float, k: np.ndarray | None, flagged: bool, starts: bool,
                host: dict[str, np.ndarray] | None, host_ready: Any, finite: bool = True) -> FrameResult:
        """Stream s's FrameResult from row j of the step's outputs. A non-finite pose, output or new state from the
        network (``finite`` False, e.g. an fp16 overflow): the frame is reported with ``valid=False`` and the last
        good pose, kept out of the trajectory and the map, and the stream is reset so that the next frame starts a
        new chunk at the last good pose (its state may hold non-finite values now)."""
        st = self._streams[s]
        valid = finite and bool(np.all(np.isfinite(c2w)))
        if valid:
            cam_to_world, chained, chunk = st.chain(c2w, t, flagged, starts)
            was_reset = starts or flagged
        else:
            chained = np.eye(4) if st.last_chained is None else st.last_chained.copy()
            cam_to_world = np.eye(4) if st.first_inv is None else st.first_inv @ chained
            chunk, was_reset = st.chunk, starts
        res = FrameResult(
            index=st.index, stream=s, timestamp=t, transform=transform, camera_to_world=cam_to_world,
            camera_to_world_model=chained, camera_to_base=self.config.camera_to_base,
            points_camera=out.points_camera[j], confidence=out.confidence[j], colour=colours[j],
            gate=None if out.gate is None else out.gate[j], intrinsics_input=k, was_reset=was_reset,
            chunk_index=chunk, timings_ms={}, valid=valid, focal_pixel_stride=self.config.focal_pixel_stride,
            host=host, host_ready=host_ready)
        st.index += 1
        if not valid:
            self.reset(s)
            self.invalid_frames += 1
        return res

    # Options that do not touch the model step or the streams' states: changing them keeps the step runner (and its
    # captured CUDA graphs). The node warms its one engine up at configure and mounts the camera at the first frame.
    LIVE_OPTIONS = frozenset({"camera_to_base", "confidence_threshold", "build_map", "map_pixel_stride"})

    def set_options(self, **options: Any) -> None:
        """Change ``LIVE_OPTIONS`` for the frames from now on (validated; step runners and graphs are kept). Poses
        already in the trajectories keep the mount they were made with: change ``camera_to_base`` before a stream's
        first frame (e.g. right after ``reset(restart_odometry=True)``)."""
        other = set(options) - self.LIVE_OPTIONS
        if other:
            raise TypeError(f"set_options: {sorted(other)} cannot change on a live engine (only "
                            f"{sorted(self.LIVE_OPTIONS)})")
        self.config = replace(self.config, **options).validated()

    def add_to_map(self, result: FrameResult, voxel_map: VoxelMap | None = None) -> None:
        """Feed a valid ``result``'s confident points into ``voxel_map`` (default: its stream's map): for a caller
        that steps with ``build_map=False`` and updates the map at its own rate, off the frame's critical path."""
        if result.valid:
            self._update_map(self._streams[result.stream].voxel_map if voxel_map is None else voxel_map, result)

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

    def step(self, image: Any, timestamp_s: float, intrinsics: Any = None, update_state: bool = True,
             camera_model: CameraModel | None = None) -> FrameResult:
        """``image``: HxWx3 uint8 RGB (numpy or tensor on any device), or a float [3,H,W] tensor already
        normalised to [-1,1] at model resolution. ``intrinsics``: optional 3x3 at the input resolution.
        ``camera_model``: instead of ``intrinsics``, the calibrated camera with its distortion (see ``step_batch``)."""
        return self._batched.step_batch([image], [timestamp_s], [intrinsics], update_state=update_state,
                                        camera_models=[camera_model])[0]

    def reset(self, restart_odometry: bool = False) -> None:
        self._batched.reset(0, restart_odometry)

    def replace_model(self, model: Any | None) -> None:
        """See ``BatchedReconstructor.replace_model``."""
        self._batched.replace_model(model)

    def set_options(self, **options: Any) -> None:
        """See ``BatchedReconstructor.set_options`` (e.g. the camera mount before the first frame)."""
        self._batched.set_options(**options)

    def add_to_map(self, result: FrameResult, voxel_map: VoxelMap | None = None) -> None:
        """See ``BatchedReconstructor.add_to_map``."""
        self._batched.add_to_map(result, voxel_map)

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

    def export_stream(self) -> StreamSnapshot:
        """The stream's whole state (see ``BatchedReconstructor.export_stream``)."""
        return self._batched.export_stream(0)

    def import_stream(self, snapshot: StreamSnapshot) -> None:
        """Continue from ``snapshot`` (validated first; on an error nothing changes)."""
        self._batched.import_stream(0, snapshot)

    @property
    def invalid_frames(self) -> int:
        """Frames whose pose, outputs or new state came out non-finite (reported with valid=False; the stream was
        reset)."""
        return self._batched.invalid_frames

    @property
    def fast_path_active(self) -> bool:
        """True when the last frame ran as a CUDA-graph replay (before the first frame: whether it will)."""
        return self._batched.fast_path_active

    @property
    def fast_path_status(self) -> str:
        """Which execution path runs, e.g. 'cuda-graph (bfloat16; levers: ...)' or 'eager (model on cpu; ...)'."""
        return self._batched.fast_path_status
