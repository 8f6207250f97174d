"""Camera extrinsic lookup (base_frame -> camera optical frame) from static TF.

On a full ROS 2 install tf2_ros is used when importable (Buffer + TransformListener also see /tf). Where tf2_ros
does not exist (pip-wheel installs such as this project's CI), the node keeps its own small buffer of /tf_static
(the only place a rigid camera mount is published by robot_state_publisher / static_transform_publisher).
Only static transforms are composed here; a camera on a moving joint needs tf2_ros.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time

from ttt3r_ros.ros.conversions import matrix_from_transform

# tf2_ros' listener QoS for /tf_static: reliable, transient local, so transforms published before we started
# still arrive (static_transform_publisher publishes once).
TF_STATIC_LISTENER_QOS = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                                    durability=DurabilityPolicy.TRANSIENT_LOCAL)


class StaticTransformBuffer:
    """child frame -> (parent frame, 4x4 T_parent_child) from /tf_static; resolves chains through common parents."""

    def __init__(self) -> None:
        self._edges: dict[str, tuple[str, np.ndarray]] = {}
        self._lock = threading.Lock()

    def add_message(self, msg: Any) -> None:
        with self._lock:
            for ts in msg.transforms:
                child = ts.child_frame_id.lstrip("/")
                parent = ts.header.frame_id.lstrip("/")
                if child and parent:
                    self._edges[child] = (parent, matrix_from_transform(ts.transform))

    def _to_root(self, frame: str) -> tuple[str, np.ndarray]:
        """(root frame, T_root_frame); at most 64 hops, so a cycle in bad input cannot hang the worker."""
        t = np.eye(4)
        for _ in range(64):
            if frame not in self._edges:
                break
            parent, t_parent_child = self._edges[frame]
            t = t_parent_child @ t
            frame = parent
        return frame, t

    def lookup(self, target_frame: str, source_frame: str) -> np.ndarray | None:
        """T_target_source (maps points in source_frame into target_frame), or None when not connected."""
        target_frame, source_frame = target_frame.lstrip("/"), source_frame.lstrip("/")
        if target_frame == source_frame:
            return np.eye(4)
        with self._lock:
            root_s, t_root_source = self._to_root(source_frame)
            root_t, t_root_target = self._to_root(target_frame)
        if root_s != root_t:
            return None
        return np.linalg.inv(t_root_target) @ t_root_source

    def known_frames(self) -> list[str]:
        with self._lock:
            return sorted(set(self._edges) | {p for p, _ in self._edges.values()})


class ExtrinsicLookup:
    """Looks up T_base_camera with tf2_ros when present, else from our own /tf_static buffer."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._tf2_buffer = None
        self._tf2_listener = None
        self._static = StaticTransformBuffer()
        self._subscription = None
        try:  # real ROS 2 installs: the standard machinery (also covers non-static mounts)
            import tf2_ros  # type: ignore[import-not-found]
            self._tf2_buffer = tf2_ros.Buffer()
            self._tf2_listener = tf2_ros.TransformListener(self._tf2_buffer, node, spin_thread=False)
            self.backend = "tf2_ros"
        except ImportError:
            from tf2_msgs.msg import TFMessage
            self._subscription = node.create_subscription(TFMessage, "/tf_static", self._static.add_message,
                                                          TF_STATIC_LISTENER_QOS)
            self.backend = "/tf_static subscription (tf2_ros not importable)"

    def lookup(self, base_frame: str, camera_frame: str) -> np.ndarray | None:
        if self._tf2_buffer is not None:
            try:
                ts = self._tf2_buffer.lookup_transform(base_frame, camera_frame, Time(), timeout=Duration(seconds=0))
            except Exception:  # tf2 raises several exception types (LookupException, ConnectivityException, ...)
                return None
            return matrix_from_transform(ts.transform)
        return self._static.lookup(base_frame, camera_frame)

    def known_frames(self) -> list[str]:
        if self._tf2_buffer is not None:
            return [self._tf2_buffer.all_frames_as_string()]
        return self._static.known_frames()

    def destroy(self) -> None:
        if self._subscription is not None:
            self._node.destroy_subscription(self._subscription)
            self._subscription = None
        if self._tf2_listener is not None and hasattr(self._tf2_listener, "unregister"):
            self._tf2_listener.unregister()   # its /tf and /tf_static subscriptions would outlive a cleanup
        self._tf2_listener = None
        self._tf2_buffer = None
