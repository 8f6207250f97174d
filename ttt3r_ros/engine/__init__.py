"""Streaming engine (no ROS): preprocessing, frame conventions, the streaming reconstructor, voxel map, exports.

    from ttt3r_ros.engine import StreamingReconstructor, FrameResult, VoxelMap, EngineConfig
    from ttt3r_ros.engine import geometry, exports, preprocess
"""
from . import exports, geometry, preprocess, synthetic
from .reconstructor import (BatchedReconstructor, EngineConfig, FrameResult, StreamingReconstructor, Trajectory,
                            validate_intrinsics)
from .voxel_map import VoxelMap

__all__ = ["StreamingReconstructor", "BatchedReconstructor", "FrameResult", "VoxelMap", "EngineConfig",
           "Trajectory", "validate_intrinsics", "geometry", "exports", "preprocess", "synthetic"]
