"""A camera rig over one model: several named cameras, one ``BatchedReconstructor``, one odometry, one map (no ROS).

``CameraRig`` is what a multi-camera front end (the node's ``cameras`` parameter) drives:

- Cameras by name; the first is the **primary**. Each camera is one stream of the shared engine: its own
  recurrent state, pose chaining and trajectory, so one model (one copy of the weights) serves them all.
- Frames in: ``put(name, RigFrame)`` from any thread. Keep-latest per camera (a newer frame replaces a waiting one,
  counted as dropped) or, with ``process_all``, a bounded in-order queue per camera (``put`` waits up to
  ``put_timeout_s`` for room: back-pressure, as the node's FrameQueue).
- ``step()`` takes one frame from every camera that has one, and runs one batched engine step over those whose
  mount T_base_cam (``set_extrinsic``) is known and whose frame is good. Frames in one engine call must give the
  same model size (the engine batches one size), so the cameras are grouped by model size: one call per size
  (the primary's group first). A camera with no frame simply is not in the batch, so a silent camera never stalls
  the others; a bad frame (undecodable, not HxWx3 uint8, a size the model cannot take, a bad calibration,
  a non-finite stamp) is rejected and counted for its camera alone, before the batch is formed; should the
  engine still refuse a batch, each of its frames is retried alone so that only the culprit is rejected.
- Odometry comes from the primary only: T_odom_base = T_base_cam0 @ T_cam0(0)_cam0(t) @ inv(T_base_cam0), through
  ``OdometryTracker`` (covariance, twist, tracking state), exactly as the single-camera node.
- The map (one ``VoxelMap`` in the odom frame) takes every camera's confident points, placed as a rigid rig:
  T_odom_cam_i(t) = T_odom_base(t) @ T_base_cam_i, with T_odom_base(t) the primary's odometry at the frame's
  stamp (the primary's pose of equal stamp, else interpolated between the two primary poses around it; a frame
  newer than the primary's latest pose waits for the primary's next one, see ``placement_wait_frames``).

Why the other cameras' own poses are not used for placement: each stream has its own recurrent state, hence its
own world frame (its first view) and its own scale (the model's metric scale is an estimate per sequence; two
streams agree on it only approximately). Their trajectories are therefore not in one frame nor at one scale, and
putting them together would need a per-camera similarity alignment that drifts. The rig instead trusts the rig's
geometry (the extrinsics, metric) and the primary's motion. What that implies:
- the map is only as good as the primary's odometry: when the primary is lost, so is everyone's placement; when
  the primary stops (silent, bad frames, no extrinsic) the other cameras' outputs go on but their points cannot
  be placed: they wait a little (``placement_wait_frames``) and are then dropped from the map, counted per camera
  as ``map_frames_unplaced``;
- each camera's point map keeps its own stream's depth scale; the extrinsics' lever arms are metric. Where a
  stream's scale differs from metric (or from the primary's), its points land slightly off (scaled about that
  camera's centre); overlapping views then disagree by that much. The same holds for the single-camera node,
  where the mount's lever arm is metric and the motion is in model units;
- the non-primary cameras' poses remain available (``engine.trajectory_of``) for a consistency check.

Threads: ``put``/``wait_for_frames``/``health`` from any thread; ``step``, ``reset`` and ``set_extrinsic`` are
serialised by the rig's own step lock. With ``place_in_step=False`` the map is fed by another thread
(``place_pending``, the node's map thread), so the voxel merge (host work) never holds up the next batched step;
``step`` then only queues each frame's confident points (copied on the device), and a map thread that falls more
than ``MAP_BEHIND_MAX_FRAMES`` frames behind loses the oldest (counted as ``map_frames_unplaced``).
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..engine import BatchedReconstructor, FrameResult, VoxelMap, geometry, validate_intrinsics
from ..engine.preprocess import plan_resize_crop, validate_image
from .image_codec import calibration_for_image
from .odometry import OdometryEstimate, OdometryLimits, OdometryTracker, confident_fraction

# (camera, frame, image, intrinsics, camera model): a frame checked and ready for the engine
_Ready = tuple["_Camera", "RigFrame", np.ndarray, "np.ndarray | None", Any]

# Primary poses kept for placing the other cameras' frames (seconds at camera rates; a waiting frame is only a few
# cycles old, so only the newest poses are ever looked at).
_POSE_HISTORY = 256
# Frames per camera whose points may wait for the map thread (beyond those waiting for a primary pose).
MAP_BEHIND_MAX_FRAMES = 8


@dataclass
class RigFrame:
    """One camera frame handed to the rig.

    image: HxWx3 uint8 RGB, or a zero-argument callable returning one (decoded in ``step``, on the worker thread:
    a frame replaced in a keep-latest slot is never decoded; an exception it raises rejects the frame).
    stamp_s: the capture time (the image's stamp) in seconds. intrinsics: 3x3 at the image's resolution, or None
    (the model estimates them). meta: anything the caller wants back with the result (e.g. the message header).
    received_s: monotonic time of arrival (None: when ``put`` is called). camera_model: instead of intrinsics, the
    calibrated camera (``engine.camera_model.CameraModel``, e.g. ``session.camera_calibration`` of a CameraInfo):
    a distorted frame is undistorted before the model; one of another size than the image is ignored
    (``image_codec.calibration_for_image``'s rule, said in ``RigStep.notes``) and the model estimates the intrinsics.
    """
    image: Any
    stamp_s: float
    intrinsics: np.ndarray | None = None
    meta: Any = None
    received_s: float | None = None
    camera_model: Any = None


@dataclass
class CameraHealth:
    """One camera's counters and state (a snapshot; ``CameraRig.health``)."""
    name: str
    primary: bool
    has_extrinsic: bool
    frames_received: int = 0
    frames_dropped: int = 0        # replaced before being stepped (keep-latest) or refused by a full queue
    frames_processed: int = 0      # stepped with a valid result
    frames_rejected: int = 0       # bad frames (decode, shape, size, calibration, stamp), the engine refusing them
    frames_skipped: int = 0        # taken while the camera's extrinsic was unknown
    frames_invalid: int = 0        # non-finite network output (engine reset the stream; see Session.handle_invalid)
    map_frames_placed: int = 0
    map_frames_unplaced: int = 0   # confident points that could not be placed (no primary pose around their stamp)
    latency_ms: float = float("nan")          # the engine step that processed the last frame
    end_to_end_ms: float = float("nan")       # arrival (received_s) -> result of the last frame
    confidence_mean: float = float("nan")
    confident_fraction: float = float("nan")
    last_frame_age_s: float = float("nan")    # since the last frame arrived (NaN: none yet)
    last_stamp_s: float = float("nan")
    last_error: str = ""
    ok: bool = False
    state: str = "no frames yet"   # one line: ok / no frames yet / waiting for extrinsic / stale / rejecting ...


@dataclass
class CameraOutput:
    """One camera's processed frame: its result (poses of its own stream, dense maps in its optical frame)."""
    camera: str
    frame: RigFrame
    result: FrameResult
    t_base_cam: np.ndarray


@dataclass
class RigStep:
    """What one ``step`` did: the outputs (valid results, primary first), the odometry when the primary was
    processed, the frames rejected or skipped ({camera: reason}) and notes on frames that were processed all the
    same ({camera: text}, e.g. a calibration of another size ignored)."""
    outputs: list[CameraOutput] = field(default_factory=list)
    odometry: OdometryEstimate | None = None
    rejected: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def output(self, camera: str) -> CameraOutput | None:
        return next((o for o in self.outputs if o.camera == camera), None)


@dataclass
class _PendingPlacement:
    stamp_s: float
    points_camera: torch.Tensor   # [N,3] confident points in the camera's optical frame (a copy)
    colours: torch.Tensor         # [N,3]
    confidences: torch.Tensor     # [N]


class _Camera:
    def __init__(self, name: str, stream: int, primary: bool) -> None:
        self.name = name
        self.stream = stream
        self.primary = primary
        self.t_base_cam: np.ndarray | None = None
        self.slot: deque[RigFrame] = deque()
        self.pending: deque[_PendingPlacement] = deque()
        self.health = CameraHealth(name=name, primary=primary, has_extrinsic=False)
        self.last_received_s: float | None = None
        self.last_rejected = False


def interpolate_pose(t_a: np.ndarray, t_b: np.ndarray, weight: float) -> np.ndarray:
    """The rigid transform a fraction ``weight`` (0 = a, 1 = b) of the way from ``t_a`` to ``t_b``: translation
    linearly, rotation along the shortest arc (quaternion slerp)."""
    q_a = geometry.matrix_to_quat_wxyz(np.asarray(t_a)[:3, :3])
    q_b = geometry.matrix_to_quat_wxyz(np.asarray(t_b)[:3, :3])
    dot = float(np.dot(q_a, q_b))
    if dot < 0.0:   # q and -q are one rotation: take the short way
        q_b, dot = -q_b, -dot
    if dot > 0.9995:   # nearly equal: the linear blend is exact to float precision and avoids sin(0)/sin(0)
        q = q_a + weight * (q_b - q_a)
    else:
        angle = math.acos(min(dot, 1.0))
        q = (math.sin((1 - weight) * angle) * q_a + math.sin(weight * angle) * q_b) / math.sin(angle)
    out = np.eye(4)
    out[:3, :3] = geometry.quat_wxyz_to_matrix(q)
    out[:3, 3] = (1 - weight) * np.asarray(t_a)[:3, 3] + weight * np.asarray(t_b)[:3, 3]
    return out


class CameraRig:
    """Named cameras over one ``BatchedReconstructor`` (see the module docstring).

    engine: one stream per camera (``num_streams == len(cameras)``), built with ``build_map=False`` (the rig keeps
    the one map, in odom; its voxel size, bound, confidence threshold and pixel stride are the engine config's).
    process_all / queue_size / put_timeout_s: the frame policy (see the module docstring).
    stale_after_s: a camera with no frame for this long reports itself stale (health only; it never blocks).
    placement_wait_frames: how many of a camera's processed frames may wait for a primary pose at or after their
    stamp (the primary behind or silent); beyond that the oldest is given up (its points stay out of the map;
    counted as map_frames_unplaced). placement_gap_max_s: the longest gap between two primary
    poses that a frame between them is interpolated across (a longer gap means the primary was not tracking).
    on_invalid: called with each result whose ``valid`` is False (``Session.handle_invalid``: the precision
    fallback). clock: monotonic seconds (tests pass their own). place_in_step: False leaves the map to
    ``place_pending`` on another thread (see the module docstring).
    """

    def __init__(self, engine: BatchedReconstructor, cameras: Sequence[str], *, process_all: bool = False,
                 queue_size: int = 30, put_timeout_s: float = 5.0, stale_after_s: float = 2.0,
                 placement_wait_frames: int = 4, placement_gap_max_s: float = 1.0,
                 on_invalid: Callable[[FrameResult], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic, place_in_step: bool = True) -> None:
        names = [str(c) for c in cameras]
        if not names:
            raise ValueError("a camera rig needs at least one camera")
        if len(set(names)) != len(names) or any(not n for n in names):
            raise ValueError(f"camera names must be distinct and non-empty, got {names}")
        if engine.num_streams != len(names):
            raise ValueError(f"the engine has {engine.num_streams} streams for {len(names)} cameras")
        if engine.config.build_map:
            raise ValueError("build the rig's engine with build_map=False: the rig keeps the one map (in odom); "
                             "the streams' own maps would be in their own frames and cost a map update each")
        if queue_size < 1 or placement_wait_frames < 0:
            raise ValueError(f"queue_size must be >= 1 and placement_wait_frames >= 0, got {queue_size}, "
                             f"{placement_wait_frames}")
        self.engine = engine
        self.process_all = bool(process_all)
        self.queue_size = int(queue_size) if process_all else 1
        self.put_timeout_s = float(put_timeout_s)
        self.stale_after_s = float(stale_after_s)
        self.placement_wait_frames = int(placement_wait_frames)
        self.placement_gap_max_s = float(placement_gap_max_s)
        self._on_invalid = on_invalid
        self._clock = clock
        self._cameras = {n: _Camera(n, i, i == 0) for i, n in enumerate(names)}
        self._cond = threading.Condition()   # slots, counters, health
        self._step_lock = threading.RLock()  # engine, odometry, extrinsics
        self._map_lock = threading.Lock()    # pending placements, primary poses, map epoch (held briefly)
        self._voxel_lock = threading.Lock()  # the voxel map (held while merging)
        self._map_epoch = 0                  # +1 when the map restarts: placements taken before are dropped
        self.place_in_step = bool(place_in_step)
        self._closed = False
        self.odometry = OdometryTracker()    # the primary's: (stamp, T_odom_base) of every primary frame
        self._poses: deque[tuple[float, np.ndarray]] = deque(maxlen=_POSE_HISTORY)
        cfg = engine.config
        self.voxel_map = VoxelMap(cfg.voxel_size, cfg.map_max_points)

    # ------------------------------------------------------------------------------------------ cameras
    @property
    def camera_names(self) -> list[str]:
        return list(self._cameras)

    @property
    def primary(self) -> str:
        return next(iter(self._cameras))

    def _camera(self, name: str) -> _Camera:
        try:
            return self._cameras[name]
        except KeyError:
            raise KeyError(f"unknown camera {name!r}; the rig's cameras are {list(self._cameras)}") from None

    def extrinsic(self, name: str) -> np.ndarray | None:
        """T_base_cam of camera ``name`` (optical frame -> base), None while unknown."""
        return self._camera(name).t_base_cam

    def set_extrinsic(self, name: str, t_base_cam: np.ndarray) -> None:
        """The camera's mount T_base_cam (optical -> base; rigid). It may change only until the camera's first
        processed frame: afterwards its odometry (primary) or its place in the map would jump."""
        t = np.asarray(t_base_cam, dtype=np.float64)
        if t.shape != (4, 4) or not np.all(np.isfinite(t)) or not np.allclose(t[3], [0, 0, 0, 1]) \
                or not np.allclose(t[:3, :3] @ t[:3, :3].T, np.eye(3), atol=1e-6):
            raise ValueError(f"camera {name!r}: T_base_cam must be a finite rigid 4x4 transform")
        cam = self._camera(name)
        with self._step_lock:
            if cam.t_base_cam is not None and cam.health.frames_processed and not np.allclose(cam.t_base_cam, t):
                raise ValueError(f"camera {name!r}: its extrinsic is fixed once frames were processed "
                                 "(a rigid rig); restart the rig to change it")
            cam.t_base_cam = t.copy()
            with self._cond:
                cam.health.has_extrinsic = True

    # --------------------------------------------------------------------------------------------- input
    def put(self, name: str, frame: RigFrame) -> bool:
        """Hand over a frame (any thread). Returns False when a frame was dropped: keep-latest, the waiting one it
        replaced; process_all, this one when the camera's queue stayed full for ``put_timeout_s``."""
        cam = self._camera(name)
        if frame.received_s is None:
            frame = replace(frame, received_s=self._clock())
        with self._cond:
            cam.health.frames_received += 1
            cam.last_received_s = frame.received_s
            if self._closed:
                cam.health.frames_dropped += 1
                return False
            if not self.process_all:
                replaced = bool(cam.slot)
                if replaced:
                    cam.slot.popleft()
                    cam.health.frames_dropped += 1
                cam.slot.append(frame)
                self._cond.notify_all()
                return not replaced
            if not self._cond.wait_for(lambda: self._closed or len(cam.slot) < self.queue_size,
                                       timeout=self.put_timeout_s) or self._closed:
                cam.health.frames_dropped += 1
                return False
            cam.slot.append(frame)
            self._cond.notify_all()
            return True

    def wait_for_frames(self, timeout_s: float | None = None) -> bool:
        """Block until some camera has a frame waiting (True) or the timeout passes / ``close()`` (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._closed or any(c.slot for c in self._cameras.values()),
                                       timeout=timeout_s) and not self._closed

    def clear(self) -> int:
        """Drop every waiting frame (counted as dropped); returns how many."""
        with self._cond:
            n = 0
            for cam in self._cameras.values():
                n += len(cam.slot)
                cam.health.frames_dropped += len(cam.slot)
                cam.slot.clear()
            self._cond.notify_all()
            return n

    def close(self) -> None:
        """Wake every waiter; later frames are dropped."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # ---------------------------------------------------------------------------------------------- step
    def step(self, limits: OdometryLimits = OdometryLimits()) -> RigStep:
        """One cycle: one frame from each camera that has one; one batched engine step per model size; odometry
        from the primary; every camera's confident points into the map. ``limits``: the odometry's live settings."""
        with self._cond:
            taken = [(cam, cam.slot.popleft()) for cam in self._cameras.values() if cam.slot]
            if taken:
                self._cond.notify_all()   # room in process_all queues
        out = RigStep()
        with self._step_lock:
            ready: list[_Ready] = []
            for cam, frame in taken:
                prepared = self._prepare(cam, frame, out)
                if prepared is not None:
                    ready.append((cam, frame, *prepared))
            groups: dict[tuple[int, int], list[_Ready]] = {}
            for item in ready:
                size = plan_resize_crop(item[2].shape[0], item[2].shape[1], self.engine.config.size).model_size
                groups.setdefault(size, []).append(item)
            # the primary's group first: its pose is what the other cameras' points are placed with
            for group in sorted(groups.values(), key=lambda g: min(c.stream for c, *_ in g)):
                for (cam, frame, *_), result in self._run_group(group, out):
                    self._accept(cam, frame, result, limits, out)
            if self.place_in_step:
                self.place_pending()
        out.outputs.sort(key=lambda o: self._cameras[o.camera].stream)
        return out

    def _reject(self, cam: _Camera, reason: str, out: RigStep, counter: str = "frames_rejected") -> None:
        out.rejected[cam.name] = reason
        with self._cond:
            setattr(cam.health, counter, getattr(cam.health, counter) + 1)
            cam.health.last_error = reason
            cam.last_rejected = counter == "frames_rejected"

    def _prepare(self, cam: _Camera, frame: RigFrame, out: RigStep
                 ) -> tuple[np.ndarray, np.ndarray | None, Any] | None:
        """(image, intrinsics, camera model) checked here, so that one camera's bad frame never fails the others'
        batch."""
        if cam.t_base_cam is None:
            self._reject(cam, f"camera {cam.name}: no extrinsic (T_base_cam) yet; frame skipped", out,
                         counter="frames_skipped")
            return None
        try:
            image = frame.image() if callable(frame.image) else frame.image
            validate_image(image, f"camera {cam.name} image")
            if image.ndim != 3:
                raise ValueError(f"camera {cam.name}: expected one HxWx3 image, got shape {tuple(image.shape)}")
            plan_resize_crop(int(image.shape[0]), int(image.shape[1]), self.engine.config.size)
            k = None if frame.intrinsics is None else validate_intrinsics(frame.intrinsics)
            if not math.isfinite(float(frame.stamp_s)):
                raise ValueError(f"camera {cam.name}: stamp {frame.stamp_s} is not finite")
            camera_model = frame.camera_model
            if camera_model is not None:
                if k is not None:
                    raise ValueError(f"camera {cam.name}: the frame has both intrinsics and a camera model")
                _, size_reason = calibration_for_image(camera_model.k, camera_model.size_hw, image.shape[:2])
                if size_reason:
                    out.notes[cam.name] = f"camera {cam.name}: {size_reason}"
                    camera_model = None
        except Exception as exc:   # any problem with this frame rejects it alone
            self._reject(cam, f"camera {cam.name}: bad frame: {type(exc).__name__}: {exc}", out)
            return None
        return image, k, camera_model

    def _run_group(self, group: list[_Ready], out: RigStep) -> list[tuple[_Ready, FrameResult]]:
        try:
            results = self.engine.step_batch([g[2] for g in group], [float(g[1].stamp_s) for g in group],
                                             [g[3] for g in group], streams=[g[0].stream for g in group],
                                             camera_models=[g[4] for g in group])
            return list(zip(group, results))
        except Exception as exc:
            if len(group) == 1:
                self._reject(group[0][0], f"camera {group[0][0].name}: engine refused the frame: "
                                          f"{type(exc).__name__}: {exc}", out)
                return []
        # the engine validates before it touches any state: retry alone so that only the culprit is rejected
        done = []
        for item in group:
            done += self._run_group([item], out)
        return done

    def _accept(self, cam: _Camera, frame: RigFrame, result: FrameResult, limits: OdometryLimits,
                out: RigStep) -> None:
        if not result.valid:
            self._reject(cam, f"camera {cam.name}: non-finite network output at frame {result.index}; its stream "
                              "restarts (odometry continues)", out, counter="frames_invalid")
            if self._on_invalid is not None:
                self._on_invalid(result)
            return
        confidence = np.asarray(result.confidence, dtype=np.float32)
        fraction = confident_fraction(confidence, limits.confidence_threshold)
        stamp_s = float(frame.stamp_s)
        if cam.primary:
            t_odom_base = geometry.odom_from_camera(cam.t_base_cam, result.camera_to_world)
            out.odometry = self.odometry.update(stamp_s, t_odom_base, confidence, limits)
            with self._map_lock:
                if self._poses and stamp_s <= self._poses[-1][0]:
                    self._poses.clear()   # time went back (a bag looped): earlier poses no longer bracket new frames
                self._poses.append((stamp_s, t_odom_base))
        points = self._confident_points(result, stamp_s)
        with self._map_lock:
            cam.pending.append(points)
            behind = len(cam.pending) - (self.placement_wait_frames + MAP_BEHIND_MAX_FRAMES)
            for _ in range(max(0, behind)):
                cam.pending.popleft()
        if behind > 0:
            with self._cond:
                cam.health.map_frames_unplaced += behind
                cam.health.last_error = (f"camera {cam.name}: points not mapped: the map thread is "
                                         f"{MAP_BEHIND_MAX_FRAMES} frames behind")
        out.outputs.append(CameraOutput(cam.name, frame, result, cam.t_base_cam))
        now = self._clock()
        with self._cond:
            h = cam.health
            h.frames_processed += 1
            h.latency_ms = float(result.timings_ms.get("total", float("nan")))
            h.end_to_end_ms = (now - frame.received_s) * 1e3 if frame.received_s is not None else float("nan")
            h.confidence_mean = float(confidence.mean())
            h.confident_fraction = fraction
            h.last_stamp_s = stamp_s
            cam.last_rejected = False

    def _confident_points(self, result: FrameResult, stamp_s: float) -> _PendingPlacement:
        """The frame's map candidates (every map_pixel_stride-th pixel above the threshold) in its camera frame,
        copied now: on the CUDA fast path the result's tensors are the graph's outputs, overwritten next step."""
        cfg = self.engine.config
        k = cfg.map_pixel_stride
        conf, pts, col = result.tensor("confidence"), result.tensor("points_camera"), result.tensor("colour")
        if k > 1:
            conf, pts, col = conf[::k, ::k], pts[::k, ::k], col[::k, ::k]
        conf = conf.reshape(-1)
        keep = torch.nonzero(conf > cfg.confidence_threshold).squeeze(1)
        return _PendingPlacement(stamp_s, pts.reshape(-1, 3).index_select(0, keep).to(torch.float32),
                                 col.reshape(-1, 3).index_select(0, keep), conf.index_select(0, keep))

    def _primary_pose_at(self, stamp_s: float) -> tuple[str, np.ndarray | None]:
        """('ok', T_odom_base at stamp_s), ('wait', None): newer than the primary's latest pose, or
        ('drop', None): before the primary's poses, or in a gap longer than placement_gap_max_s."""
        if not self._poses or stamp_s > self._poses[-1][0]:
            return "wait", None
        stamps = [s for s, _ in self._poses]
        i = int(np.searchsorted(stamps, stamp_s))   # stamps[i-1] < stamp_s <= stamps[i]
        if stamps[i] == stamp_s:
            return "ok", self._poses[i][1]
        if i == 0 or stamps[i] - stamps[i - 1] > self.placement_gap_max_s:
            return "drop", None
        w = (stamp_s - stamps[i - 1]) / (stamps[i] - stamps[i - 1])
        return "ok", interpolate_pose(self._poses[i - 1][1], self._poses[i][1], w)

    def place_pending(self) -> int:
        """Every waiting frame whose primary pose is known goes into the map (any thread: the node's map thread, or
        ``step`` itself with ``place_in_step``); returns how many were placed."""
        ready: list[tuple[_Camera, _PendingPlacement, np.ndarray]] = []
        with self._map_lock:
            epoch = self._map_epoch
            latest = self._poses[-1][0] if self._poses else None
            for cam in self._cameras.values():
                while cam.pending:
                    item = cam.pending[0]
                    verdict, t_odom_base = self._primary_pose_at(item.stamp_s)
                    if verdict == "wait":
                        # it waits for a newer primary pose; too many waiting: the primary is behind or gone
                        if len(cam.pending) <= self.placement_wait_frames:
                            break
                        verdict = "drop"
                    cam.pending.popleft()
                    if verdict == "drop":
                        with self._cond:
                            cam.health.map_frames_unplaced += 1
                            if latest is None:
                                cam.health.last_error = (f"camera {cam.name}: points not mapped: no odometry from "
                                                         f"the primary camera {self.primary}")
                        continue
                    ready.append((cam, item, t_odom_base @ cam.t_base_cam))
        with self._voxel_lock:
            if epoch != self._map_epoch:
                return 0   # the map restarted (reset_odometry) since these were taken: they belong to the old one
            for cam, item, t_odom_cam in ready:
                t = torch.as_tensor(t_odom_cam, dtype=torch.float32, device=item.points_camera.device)
                pts_odom = torch.addmm(t[:3, 3], item.points_camera, t[:3, :3].T)
                self.voxel_map.add(pts_odom, item.colours, item.confidences)
                with self._cond:
                    cam.health.map_frames_placed += 1
        return len(ready)

    # ------------------------------------------------------------------------------------------ map, reset
    def map_points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The map in the odom frame: (points [N,3] float32, colours uint8 [N,3], confidences [N])."""
        with self._voxel_lock:
            return self.voxel_map.points(), self.voxel_map.colours(), self.voxel_map.confidences()

    def warm_up(self, frames: int, frame_hw: tuple[int, int] | None = None) -> float:
        """Before the first real frame: ``frames`` synthetic steps at every batch size from 1 to the number of
        cameras (a step runner, and on CUDA a graph, is made per batch size and input size, and a cycle batches
        however many cameras have a frame), then every stream restarts (clean state, empty trajectory). Nothing
        reaches the odometry, the map or the counters. frame_hw: the cameras' (height, width); None: 3:4 at the model
        size. Returns milliseconds."""
        size = self.engine.config.size
        height, width = frame_hw if frame_hw is not None else (size * 3 // 4, size)
        image = np.random.default_rng(0).integers(0, 255, size=(int(height), int(width), 3), dtype=np.uint8)
        start_s = time.monotonic()
        with self._step_lock:
            if any(c.health.frames_processed for c in self._cameras.values()):
                raise RuntimeError("warm_up runs before the first frame (it restarts every stream)")
            for batch in range(1, len(self._cameras) + 1):
                for index in range(frames):
                    self.engine.step_batch([image] * batch, [float(index)] * batch, streams=list(range(batch)))
            self.engine.reset(None, restart_odometry=True)
        return (time.monotonic() - start_s) * 1e3

    def reset(self, restart_odometry: bool = False) -> None:
        """Every stream's state back to the initial one. By default odometry continues (each stream's next chunk
        starts at its last pose) and the map is kept; ``restart_odometry``: trajectories, odometry and map start
        over and the primary's next frame is the identity of odom."""
        with self._step_lock:
            self.engine.reset(None, restart_odometry=restart_odometry)
            if restart_odometry:
                self.odometry.reset()
                with self._map_lock:
                    self._poses.clear()
                    for cam in self._cameras.values():
                        cam.pending.clear()
                    self._map_epoch += 1
                with self._voxel_lock:
                    self.voxel_map = VoxelMap(self.engine.config.voxel_size, self.engine.config.map_max_points)

    # ---------------------------------------------------------------------------------------------- health
    def health(self) -> dict[str, CameraHealth]:
        """A snapshot per camera, with its one-line state (worst first: no extrinsic, no frames, stale, rejecting
        frames, not mapped, ok)."""
        now = self._clock()
        snapshot = {}
        with self._cond:
            for cam in self._cameras.values():
                h = replace(cam.health)
                h.last_frame_age_s = float("nan") if cam.last_received_s is None else now - cam.last_received_s
                if cam.t_base_cam is None:
                    h.state = "waiting for its extrinsic (T_base_cam): frames are skipped"
                elif cam.last_received_s is None:
                    h.state = "no frames yet"
                elif h.last_frame_age_s > self.stale_after_s:
                    h.state = f"stale: no frame for {h.last_frame_age_s:.1f} s"
                elif cam.last_rejected:
                    h.state = f"rejecting frames: {h.last_error}"
                else:
                    h.state = "ok"
                h.ok = h.state == "ok"
                snapshot[cam.name] = h
        return snapshot
