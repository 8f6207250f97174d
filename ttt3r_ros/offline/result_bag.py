"""The result rosbag2 of an offline run: odometry, TF, path, per-frame clouds and the map, replayable in RViz.

Frames (the tree the live node publishes):
  odom_frame -> base_frame            /tf, per frame: the engine's base_in_odom (REP 103, first frame identity)
  base_frame -> camera_frame          /tf_static, once: the engine's camera_to_base (default: camera at the base
                                      origin, optical axes x right, y down, z forward)
Per-frame clouds are organised HxW in camera_frame (NaN where confidence is below the threshold), the map is in
odom_frame. Every message is stamped with the input image's timestamp (also the bag's receive time). The cloud
layout and the odometry message (session/message_codec.py) and the covariance/twist bookkeeping
(session/odometry.py, `OdometryTracker`) are the live node's, computed by the same code.
"""
from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from ..engine import geometry
from ..session import message_codec
from ..session.odometry import OdometryLimits, OdometryTracker
from ..session.settings import DEFAULTS, OFFLINE_CAMERA_FRAME
from .bag_writing import AtomicBagWriter, MessageFactory, qos_profile

ODOMETRY_TYPE = "nav_msgs/msg/Odometry"
PATH_TYPE = "nav_msgs/msg/Path"
TF_TYPE = "tf2_msgs/msg/TFMessage"
CLOUD_TYPE = "sensor_msgs/msg/PointCloud2"


class ResultBagWriter:
    def __init__(self, path: str | Path, storage: str = "sqlite3", overwrite: bool = False,
                 odom_frame: str = DEFAULTS.odom_frame, base_frame: str = DEFAULTS.base_frame,
                 camera_frame: str = OFFLINE_CAMERA_FRAME, namespace: str = "",
                 cloud_stride: int = 4, path_every: int = 10, path_max_length: int = DEFAULTS.path_max_length,
                 camera_to_base: np.ndarray | None = None) -> None:
        self.maps_written = 0
        self.last_map_stamp_ns: int | None = None
        self.bag = AtomicBagWriter(path, storage=storage, overwrite=overwrite)
        self.msgs = MessageFactory(self.bag.typestore)
        self.odom_frame, self.base_frame, self.camera_frame = odom_frame, base_frame, camera_frame
        self.camera_to_base = (geometry.T_BODY_FROM_OPTICAL if camera_to_base is None
                               else np.asarray(camera_to_base, dtype=np.float64))
        self.cloud_stride = max(1, int(cloud_stride))
        self.path_every = max(1, int(path_every))
        prefix = "/" + namespace.strip("/") if namespace.strip("/") else ""
        self.topics = {"odom": f"{prefix}/odom", "path": f"{prefix}/path", "points": f"{prefix}/points",
                       "map_points": f"{prefix}/map_points", "tf": "/tf", "tf_static": "/tf_static"}
        self.conn_tf = self.bag.add_topic(self.topics["tf"], TF_TYPE, qos_profile(depth=100))
        self.conn_tf_static = self.bag.add_topic(self.topics["tf_static"], TF_TYPE,
                                                 qos_profile(transient_local=True, depth=1))
        self.conn_odom = self.bag.add_topic(self.topics["odom"], ODOMETRY_TYPE, qos_profile())
        self.conn_path = self.bag.add_topic(self.topics["path"], PATH_TYPE, qos_profile(transient_local=True, depth=1))
        self.conn_points = self.bag.add_topic(self.topics["points"], CLOUD_TYPE, qos_profile(depth=5))
        self.conn_map = self.bag.add_topic(self.topics["map_points"], CLOUD_TYPE,
                                           qos_profile(transient_local=True, depth=1))
        # Bounded like the node's `path` (path_max_length): each Path message repeats its poses, so an unbounded
        # path would make the bag grow quadratically with the run's length.
        self.poses: deque[Any] = deque(maxlen=max(1, int(path_max_length)))
        self.frames = 0
        self.last_stamp_ns: int | None = None
        self._static_written = False
        self.odometry = OdometryTracker()

    def _write_static(self, stamp_ns: int) -> None:
        tf = self.msgs.transform_stamped(self.camera_to_base, stamp_ns, self.base_frame, self.camera_frame)
        self.bag.write(self.conn_tf_static, stamp_ns, self.msgs.types[TF_TYPE](transforms=[tf]))
        self._static_written = True

    def add_frame(self, timestamp_s: float, base_in_odom: np.ndarray, points_camera: np.ndarray | None = None,
                  colours: np.ndarray | None = None, confidences: np.ndarray | None = None,
                  confidence_threshold: float = 0.0, stamp_ns: int | None = None) -> None:
        """One processed frame. base_in_odom: T_odom_base 4x4 (FrameResult.base_in_odom, first frame identity).
        stamp_ns: the input's exact header stamp when known (float seconds cannot hold epoch nanoseconds)."""
        if stamp_ns is None:
            stamp_ns = int(round(timestamp_s * 1e9))
        if not self._static_written:
            self._write_static(stamp_ns)
        t_odom_base = np.asarray(base_in_odom, dtype=np.float64)
        header = self.msgs.header(stamp_ns, self.odom_frame)
        types = self.msgs.types
        # Pose (held while tracking is lost), covariance, tracking state and twist exactly as the live node
        # computes them (with its default tracking/variance parameters), so the result bag's /odom and /tf match
        # what the node would publish.
        estimate = self.odometry.update(timestamp_s, t_odom_base, confidences,
                                        OdometryLimits(confidence_threshold=confidence_threshold))
        tf = self.msgs.transform_stamped(estimate.t_odom_base, stamp_ns, self.odom_frame, self.base_frame)
        self.bag.write(self.conn_tf, stamp_ns, self.msgs.types[TF_TYPE](transforms=[tf]))
        odom = message_codec.odometry_from_estimate(self.msgs, header, self.base_frame, estimate)
        self.bag.write(self.conn_odom, stamp_ns, odom)
        self.poses.append(types["geometry_msgs/msg/PoseStamped"](header=header, pose=odom.pose.pose))
        self.frames += 1
        self.last_stamp_ns = stamp_ns
        if self.frames % self.path_every == 0:
            self._write_path(stamp_ns)

        if points_camera is not None:
            s = self.cloud_stride
            pts = np.asarray(points_camera)[::s, ::s]
            conf = np.asarray(confidences)[::s, ::s] if confidences is not None else np.ones(pts.shape[:2])
            col = (np.asarray(colours)[::s, ::s] if colours is not None
                   else np.full(pts.shape, 255, dtype=np.uint8))
            self.bag.write(self.conn_points, stamp_ns,
                           message_codec.point_cloud2(self.msgs, self.msgs.header(stamp_ns, self.camera_frame), pts,
                                                      col, conf, confidence_threshold=confidence_threshold))

    def _write_path(self, stamp_ns: int) -> None:
        path = self.msgs.types[PATH_TYPE](header=self.msgs.header(stamp_ns, self.odom_frame), poses=list(self.poses))
        self.bag.write(self.conn_path, stamp_ns, path)

    def add_map(self, points_world: np.ndarray, colours: np.ndarray, confidences: np.ndarray,
                stamp_ns: int | None = None) -> None:
        """The voxel map (engine world = the first camera frame) as one cloud in odom_frame (= the first base
        frame, where the first camera sits at camera_to_base)."""
        if stamp_ns is None:
            stamp_ns = self.last_stamp_ns or 0
        points_odom = geometry.transform_points(self.camera_to_base, np.asarray(points_world, dtype=np.float64))
        cloud = message_codec.point_cloud2(self.msgs, self.msgs.header(stamp_ns, self.odom_frame), points_odom,
                                           colours, confidences)
        self.bag.write(self.conn_map, stamp_ns, cloud)
        self.maps_written += 1
        self.last_map_stamp_ns = stamp_ns

    def finish(self, map_points: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> Path:
        """Final path (+ map), close, move into place. Also used on Ctrl-C: the bag holds what was processed."""
        if self.bag.closed:
            return self.bag.path
        if self.last_stamp_ns is not None:
            if self.frames % self.path_every != 0:
                self._write_path(self.last_stamp_ns)
            if map_points is not None and self.last_map_stamp_ns != self.last_stamp_ns:
                self.add_map(*map_points)
        return self.bag.finish()

    def abort(self) -> None:
        self.bag.abort()
