"""Streaming engine (no ROS): preprocessing, frame conventions, the streaming reconstructor, voxel map, exports.

    from ttt3r_ros.engine import StreamingReconstructor, FrameResult, VoxelMap, EngineConfig
    from ttt3r_ros.engine import geometry, exports, preprocess

Modules, in the order a frame passes them: ``config`` (EngineConfig), ``inputs`` (validate and preprocess, with
``preprocess``), ``step_runner`` (the model step, eager or CUDA graphs, and the streams' state ownership),
``host_copies``, ``reconstructor`` (pose chaining per stream, results, map) with ``frame_result``, ``trajectory``,
``voxel_map`` and ``stream_snapshot`` (a stream's whole state, exported and imported for session snapshots); ``geometry`` (conventions) and ``exports`` (files) serve them all; ``synthetic`` renders the
box room of ``ttt3r-ros demo``.
"""
from . import exports, geometry, preprocess
from .camera_model import CameraModel
from .config import EngineConfig, validate_intrinsics
from .frame_result import FrameResult
from .reconstructor import BatchedReconstructor, StreamingReconstructor
from .trajectory import Trajectory
from .voxel_map import VoxelMap

__all__ = ["StreamingReconstructor", "BatchedReconstructor", "FrameResult", "VoxelMap", "EngineConfig", "CameraModel",
           "Trajectory", "validate_intrinsics", "geometry", "exports", "preprocess"]
