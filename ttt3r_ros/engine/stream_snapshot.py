"""One camera stream's complete engine state as plain tensors and values (``StreamSnapshot``), and back.

``BatchedReconstructor.export_stream(i)`` / ``import_stream(i, snapshot)`` use this; ``ttt3r_ros.session.snapshot``
writes it to a file. A stream is: its recurrent state (the model's state dataclass, e.g. state tokens, pose memory
and the fresh flag), its chaining bookkeeping (frame index, chunk index, base pose, inverse of the first chained
pose, last chained pose, whether the next frame opens a chunk), its two trajectories and its voxel map. Restoring
them bit for bit makes the following frames give exactly what an uninterrupted stream would.

Nothing here touches an engine: ``restore_parts`` validates everything and builds new objects, so a caller that
swaps them in only after it returned never half-loads a stream.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .trajectory import Trajectory
from .voxel_map import VoxelMap

STATE_PREFIX = "state."
TRAJECTORY_PREFIXES = {"trajectory": "trajectory.", "trajectory_model": "trajectory_model."}
MAP_PREFIX = "map."
POSE_NAMES = ("base", "first_inv", "last_chained")  # 4x4 float64; first_inv/last_chained absent before frame 1


@dataclass
class StreamSnapshot:
    """tensors: CPU tensors by name (``state.*``, ``base``, ``first_inv``, ``last_chained``, ``trajectory.*``,
    ``trajectory_model.*``, ``map.*``); values: JSON-able scalars (``index``, ``chunk``, ``starts_chunk``, ``map``)."""
    tensors: dict[str, torch.Tensor]
    values: dict[str, Any]


@dataclass
class StreamParts:
    """What ``restore_parts`` rebuilt, ready to be swapped into a stream."""
    state: Any
    index: int
    chunk: int
    starts_chunk: bool
    poses: dict[str, np.ndarray | None]
    trajectory: Trajectory
    trajectory_model: Trajectory
    voxel_map: VoxelMap


def _state_fields(state: Any) -> dict[str, torch.Tensor]:
    if not dataclasses.is_dataclass(state):
        raise TypeError(f"stream snapshot: the model's state {type(state).__name__} is not a dataclass of tensors")
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}


def export_parts(state: Any, index: int, chunk: int, starts_chunk: bool, poses: dict[str, np.ndarray | None],
                 trajectory: Trajectory, trajectory_model: Trajectory, voxel_map: VoxelMap) -> StreamSnapshot:
    """Copies (on the CPU) of one stream's parts; ``state`` is the stream's newest recurrent state."""
    tensors = {STATE_PREFIX + name: t.detach().to("cpu", copy=True).contiguous()
               for name, t in _state_fields(state).items()}
    for name in POSE_NAMES:
        if poses[name] is not None:
            tensors[name] = torch.from_numpy(np.array(poses[name], dtype=np.float64))
    for attr, traj in (("trajectory", trajectory), ("trajectory_model", trajectory_model)):
        for name, a in traj.export_arrays().items():
            tensors[TRAJECTORY_PREFIXES[attr] + name] = torch.from_numpy(a)
    map_arrays, map_values = voxel_map.export_state()
    tensors.update({MAP_PREFIX + name: torch.from_numpy(a) for name, a in map_arrays.items()})
    return StreamSnapshot(tensors, {"index": int(index), "chunk": int(chunk), "starts_chunk": bool(starts_chunk),
                                    "map": map_values})


def restore_parts(snapshot: StreamSnapshot, initial_state: Any, device: torch.device, voxel_size: float,
                  map_max_points: int) -> StreamParts:
    """New objects holding ``snapshot``; ValueError (naming the part) when it does not fit this engine:
    ``initial_state`` (the model's fresh state) gives the state's fields, shapes and dtypes, ``voxel_size`` and
    ``map_max_points`` the map's. Nothing is modified."""
    t, v = snapshot.tensors, snapshot.values
    expected = {STATE_PREFIX + n for n in _state_fields(initial_state)} | {"base"}
    expected |= {p + n for p in TRAJECTORY_PREFIXES.values() for n in ("timestamps", "poses")}
    expected |= {MAP_PREFIX + n for n in (*VoxelMap.VOXEL_ARRAYS, *VoxelMap.INDEX_ARRAYS)}
    missing = sorted(expected - set(t))
    unknown = sorted(set(t) - expected - {"first_inv", "last_chained"})
    if missing or unknown:
        raise ValueError(f"stream snapshot: missing tensors {missing}, unknown tensors {unknown}")
    fields = {}
    for name, ref in _state_fields(initial_state).items():
        got = t[STATE_PREFIX + name]
        if got.dtype != ref.dtype or tuple(got.shape) != tuple(ref.shape):
            raise ValueError(f"stream snapshot: recurrent state {name} is {got.dtype} {tuple(got.shape)}, this "
                             f"model's is {ref.dtype} {tuple(ref.shape)}")
        fields[name] = got.to(device, copy=True)
    state = type(initial_state)(**fields)
    poses: dict[str, np.ndarray | None] = {}
    for name in POSE_NAMES:
        pose = t.get(name)
        if pose is not None and (pose.dtype != torch.float64 or tuple(pose.shape) != (4, 4)):
            raise ValueError(f"stream snapshot: {name} must be a float64 4x4, got {pose.dtype} {tuple(pose.shape)}")
        poses[name] = None if pose is None else pose.numpy().copy()
    if (poses["first_inv"] is None) != (poses["last_chained"] is None):
        raise ValueError("stream snapshot: first_inv and last_chained must both be present or both absent")
    trajectories = {attr: Trajectory.from_arrays({n: t[prefix + n].numpy() for n in ("timestamps", "poses")})
                    for attr, prefix in TRAJECTORY_PREFIXES.items()}
    map_values = dict(v["map"])
    if float(map_values["voxel_size"]) != float(voxel_size) or int(map_values["max_points"]) != int(map_max_points):
        raise ValueError(f"stream snapshot: its map has voxel_size {map_values['voxel_size']} and max_points "
                         f"{map_values['max_points']}, this engine {voxel_size} and {map_max_points}")
    voxel_map = VoxelMap.from_state({n: t[MAP_PREFIX + n].numpy()
                                     for n in (*VoxelMap.VOXEL_ARRAYS, *VoxelMap.INDEX_ARRAYS)}, map_values)
    index, chunk = int(v["index"]), int(v["chunk"])
    if index < 0 or chunk < 0 or len(trajectories["trajectory"]) > index \
            or len(trajectories["trajectory"]) != len(trajectories["trajectory_model"]):
        raise ValueError(f"stream snapshot: frame index {index}, chunk {chunk} and trajectories of "
                         f"{len(trajectories['trajectory'])} / {len(trajectories['trajectory_model'])} poses "
                         "do not fit together")
    return StreamParts(state, index, chunk, bool(v["starts_chunk"]), poses, trajectories["trajectory"],
                       trajectories["trajectory_model"], voxel_map)
