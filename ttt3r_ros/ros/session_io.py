"""Live session snapshots of ttt3r_node: the `~/save_session` service and the `resume_session` parameter.

The file is a session snapshot (``ttt3r_ros.session.snapshot``: safetensors + JSON description + checksum, written
atomically, refused with every difference named when it was made with another model, weights, update rule,
precision, image size, reset interval, voxel size or map bound). It holds the engine's stream (recurrent state and
pose memory, chunk bookkeeping, trajectories, the voxel map) and, as front-end extras, what the node adds on top:
- ``extra`` (JSON): ``front_end`` ("ttt3r_node"), the camera lock (``camera_frame``: the optical frame that owns the
  stream), ``frame_index`` (frames processed since the session began, across resumes), ``resets``, ``odom_frame``
  and ``base_frame`` (informative), and the odometry bookkeeping's values (``OdometryTracker.export_state``: the
  previous stamp for the twist, the hold-while-lost flag, the random-walk variance growth);
- ``extra_tensors``: ``camera_to_base`` (the T_base_camera the engine's poses were made with) and
  ``odometry.*`` (the published pose of the previous frame, the held pose, the re-anchoring correction and the
  published trajectory);
- ``input_position``: the last processed frame's stamp and ``frame_index``.

Save: the frame in progress finishes first (the worker holds ``frame_lock`` from taking a frame to publishing it),
the map thread finishes the frame it was handed, then the engine, map and odometry are copied under their locks
and the file is written after the locks are released (frames continue meanwhile).

Resume (at configure, after the warm-up): the file is read and checked completely before anything changes; then
the engine's stream is replaced, the engine takes the saved mount (camera_to_base) and the camera lock, and the
odometry bookkeeping, path and counters come back. The next frame continues the same odom frame and map exactly as
if the node had never stopped. TF must still provide base_frame -> camera (as at any start: the node waits for it),
but the engine keeps the saved mount; ``~/reset_odometry`` drops the lock and the mount with everything else.
"""
from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from geometry_msgs.msg import PoseStamped
from std_msgs.msg import Header

from ttt3r_ros.engine.stream_snapshot import StreamSnapshot
from ttt3r_ros.ros import conversions as conv
from ttt3r_ros.ros import save_paths
from ttt3r_ros.ros.health import SESSION_FRESH
from ttt3r_ros.session.odometry import OdometryTracker
from ttt3r_ros.session.snapshot import (Snapshot, SnapshotError, apply_snapshot, check_compatible,
                                        engine_provenance, read_snapshot, save_snapshot, weights_id)

FRONT_END = "ttt3r_node"
ODOMETRY_PREFIX = "odometry."
# How long a save waits for the map thread to take in the frame it was handed before copying the map
MAP_DRAIN_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class LiveState:
    """The node's front-end state in a snapshot (beside the engine's stream)."""
    camera_frame: str
    camera_to_base: np.ndarray     # 4x4 float64 T_base_camera the engine's poses were made with
    odometry: OdometryTracker
    frame_index: int
    resets: int
    odom_frame: str
    base_frame: str
    last_stamp_s: float | None


@dataclass(frozen=True)
class ResumeInfo:
    """Where a resumed node came from (for status, /diagnostics and the log)."""
    path: str
    frame_index: int
    created_utc: str

    def describe(self) -> str:
        return f"resumed from {self.path} (after frame {self.frame_index}, saved {self.created_utc or '?'})"


def session_origin(resumed: ResumeInfo | None) -> str:
    """The /diagnostics `session` value: 'fresh' or 'resumed from PATH (...)'."""
    return SESSION_FRESH if resumed is None else resumed.describe()


# ------------------------------------------------------------------------------------------------ extras
def live_extras(state: LiveState) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """(input_position, extra, extra_tensors) of ``state`` for ``save_snapshot``."""
    odometry_values, odometry_arrays = state.odometry.export_state()
    extra = {"front_end": FRONT_END, "camera_frame": state.camera_frame, "frame_index": int(state.frame_index),
             "resets": int(state.resets), "odom_frame": state.odom_frame, "base_frame": state.base_frame,
             "odometry": odometry_values}
    tensors = {"camera_to_base": torch.from_numpy(np.array(state.camera_to_base, dtype=np.float64))}
    tensors.update({ODOMETRY_PREFIX + name: torch.from_numpy(np.ascontiguousarray(a))
                    for name, a in odometry_arrays.items()})
    position = {"last_stamp_s": state.last_stamp_s, "frame_index": int(state.frame_index)}
    return position, extra, tensors


def parse_live_extras(snapshot: Snapshot) -> LiveState:
    """The node's state in ``snapshot``; SnapshotError when it was not written by ttt3r_node or is malformed."""
    extra, tensors = snapshot.extra, snapshot.extra_tensors
    if extra.get("front_end") != FRONT_END:
        writer = "ttt3r-ros map" if "mapper" in extra else repr(extra.get("front_end", "unknown"))
        raise SnapshotError(f"snapshot {snapshot.path} was written by {writer}, not by ttt3r_node's ~/save_session: "
                            "it has no odometry bookkeeping or camera lock to resume")
    try:
        camera_to_base = tensors["camera_to_base"].numpy().astype(np.float64)
        if camera_to_base.shape != (4, 4) or not np.all(np.isfinite(camera_to_base)):
            raise ValueError(f"camera_to_base must be a finite 4x4, got shape {camera_to_base.shape}")
        camera_frame = str(extra["camera_frame"])
        if not camera_frame:
            raise ValueError("camera_frame is empty")
        odometry = OdometryTracker.from_state(
            extra["odometry"], {n[len(ODOMETRY_PREFIX):]: t.numpy() for n, t in tensors.items()
                                if n.startswith(ODOMETRY_PREFIX)})
        last_stamp = snapshot.input_position.get("last_stamp_s")
        return LiveState(camera_frame=camera_frame, camera_to_base=camera_to_base, odometry=odometry,
                         frame_index=int(extra["frame_index"]), resets=int(extra["resets"]),
                         odom_frame=str(extra["odom_frame"]), base_frame=str(extra["base_frame"]),
                         last_stamp_s=None if last_stamp is None else float(last_stamp))
    except (KeyError, TypeError, ValueError) as err:
        what = f"{err.args[0]} is missing" if isinstance(err, KeyError) else str(err)
        raise SnapshotError(f"snapshot {snapshot.path}: the node's state is malformed ({what})") from None


def resolve_resume_path(text: str, save_directory: str) -> Path:
    """`resume_session` as a file: an absolute path as given, a relative one inside save_directory (where
    `~/save_session` wrote it)."""
    path = Path(text.strip())
    return path if path.is_absolute() else Path(os.path.expanduser(save_directory)).resolve() / path


MULTI_CAMERA_REFUSAL = "session snapshots are not available for the multi-camera node (`cameras`) yet"


def _refuse_multi_camera(node: Any) -> None:
    # the rig (ros/multi_camera.py) keeps a batched engine and per-camera state this module does not save
    if getattr(node, "_multi", None) is not None:
        raise SnapshotError(MULTI_CAMERA_REFUSAL)


# -------------------------------------------------------------------------------------------------- save
@dataclass
class _CopiedStream:
    """An engine stream already copied under the node's locks, in the shape ``save_snapshot`` reads (an engine's
    ``config`` and ``export_stream(stream)``), so that the file is written after the locks are released."""
    config: Any
    exported: StreamSnapshot

    def export_stream(self, stream: int = 0) -> StreamSnapshot:
        return self.exported


def save_session(node: Any, requested_path: str) -> tuple[bool, str, str]:
    """`~/save_session` of ``node`` (a Ttt3rNode): (success, message, path written). The path follows the other
    saves' confinement (ros/save_paths.py, suffix .safetensors)."""
    path = ""
    try:
        path = save_paths.prepare_save(requested_path, str(node.get_parameter("default_session_path").value),
                                       str(node.get_parameter("save_directory").value),
                                       bool(node.get_parameter("allow_absolute_save_paths").value), "save_session")
        session = node._session
        if session is None:
            raise RuntimeError("node is not configured")
        _refuse_multi_camera(node)
        weights = weights_id(session.weights.path, session.config.seed)   # hashed once per file, outside the locks
        with node._frame_lock:   # no frame between its engine step and its odometry update
            mapper = node._mapper
            map_drained = mapper is None or mapper.wait_idle(timeout_s=MAP_DRAIN_TIMEOUT_S)
            with node._engine_lock:
                engine = node._engine
                if node._session is None:
                    raise RuntimeError("node is not configured")
                if engine is None or not node._engine_camera_frame:
                    raise RuntimeError("no frame processed yet: there is no session to save")
                provenance = engine_provenance(engine, node._session.config.model_config, weights)
                with node._map_lock:
                    copied = _CopiedStream(engine.config, engine.export_stream())
                    map_points = len(engine.voxel_map)
                with node._state_lock:
                    values, arrays = node._odometry.export_state()
                    odometry = OdometryTracker.from_state(values, arrays)   # a copy: frames continue meanwhile
                trajectory = odometry.trajectory
                state = LiveState(
                    camera_frame=node._engine_camera_frame,
                    camera_to_base=np.array(engine.config.camera_to_base, dtype=np.float64), odometry=odometry,
                    frame_index=int(node._frame_index), resets=int(node._summary.resets),
                    odom_frame=str(node._p["odom_frame"]), base_frame=str(node._p["base_frame"]),
                    last_stamp_s=float(trajectory.timestamps()[-1]) if len(trajectory) else None)
        position, extra, tensors = live_extras(state)
        save_snapshot(path, copied, provenance, input_position=position, extra=extra, extra_tensors=tensors)
        lag = "" if map_drained else (f"; the map thread was still busy after {MAP_DRAIN_TIMEOUT_S:.0f} s, so the "
                                      "map may lack the newest frame")
        return True, (f"saved the session after frame {state.frame_index} ({len(trajectory)} poses, {map_points} map "
                      f"points, camera {state.camera_frame}) to {path}{lag}"), path
    except Exception as exc:
        return False, f"save_session failed: {type(exc).__name__}: {exc}", path


# ------------------------------------------------------------------------------------------------ resume
def resume_at_configure(node: Any) -> ResumeInfo | None:
    """Apply `resume_session` to a ``node`` whose engine was just made and warmed up (configure): None when it is
    empty (a fresh start). Everything is read and checked first (SnapshotError naming the problem, the node
    unchanged); the caller fails configure on an error."""
    text = str(node._p.get("resume_session", "")).strip()
    node._summary.session = SESSION_FRESH
    if not text:
        return None
    _refuse_multi_camera(node)
    path = resolve_resume_path(text, str(node._p["save_directory"]))
    snapshot = read_snapshot(path)
    live = parse_live_extras(snapshot)
    session = node._session
    with node._engine_lock:
        engine = node._engine
        provenance = engine_provenance(engine, session.config.model_config,
                                       weights_id(session.weights.path, session.config.seed))
        check_compatible(snapshot, provenance)
        apply_snapshot(snapshot, engine, provenance)   # validated before the stream is swapped in
        # the saved mount: the restored poses and map were made with it (TF's value is not applied to this stream)
        engine.set_options(camera_to_base=live.camera_to_base,
                           confidence_threshold=float(node.get_parameter("confidence_threshold").value))
        node._engine_camera_frame = live.camera_frame
    odom_frame = str(node._p["odom_frame"])
    path_max = int(node._p["path_max_length"])
    trajectory = live.odometry.trajectory
    poses = [PoseStamped(header=Header(stamp=conv.seconds_to_stamp(stamp_s), frame_id=odom_frame),
                         pose=conv.pose_from_matrix(pose))
             for stamp_s, pose in (trajectory[i] for i in range(max(0, len(trajectory) - path_max), len(trajectory)))]
    with node._state_lock:
        node._odometry = live.odometry
        node._path = deque(poses)
        node._path_dirty = bool(poses)
    node._frame_index = live.frame_index
    node._summary.frame_index = live.frame_index
    node._summary.resets = live.resets
    if live.last_stamp_s is not None:
        node._last_header = Header(stamp=conv.seconds_to_stamp(live.last_stamp_s), frame_id=live.camera_frame)
    node._map_dirty = True   # map_points shows the restored map once active, before any new frame
    info = ResumeInfo(path=str(path), frame_index=live.frame_index,
                      created_utc=str(snapshot.metadata.get("created_utc", "")))
    node._summary.session = info.describe()
    frames_note = ""
    if live.odom_frame != odom_frame or live.base_frame != str(node._p["base_frame"]):
        frames_note = (f"; note: saved with odom_frame {live.odom_frame!r} / base_frame {live.base_frame!r}, now "
                       f"{odom_frame!r} / {node._p['base_frame']!r}")
    node.get_logger().info(f"session {info.describe()}: {len(trajectory)} poses, {len(engine.voxel_map)} map "
                           f"points, camera {live.camera_frame}{frames_note}")
    return info
