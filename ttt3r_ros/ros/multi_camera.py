"""Several cameras, one model: the node's `cameras` parameter (issue 14), over ``session.rig.CameraRig``.

The single-camera node (ros/node.py) keeps everything that is node-wide: the lifecycle, the session (one model),
odometry/TF/path publishing (``_publish_pose``), map_points, the services, the diagnostics timer and the dense
output publishing (``_publish_dense``). This module adds what differs with several cameras:

- per camera ``c``: the inputs ``c/image`` (or ``c/image/compressed``) and ``c/camera_info``, taken off the
  executor by that camera's own intake thread (ros/intake.py, push mode: every image goes to the rig, whose slot
  keeps the latest or, with process_all_frames, queues in order; a camera blocking on back-pressure never holds up
  another, nor the executor that serves the services and timers), and the
  dense outputs under ``c/`` (the single node's set, whatever ``_create_outputs`` makes: points, depth/image,
  depth/camera_info, confidence/image, rgb/image), published by one output thread per camera (keep-latest, so one
  camera's outputs never replace another's), in that camera's optical frame with its image's stamp;
- one worker thread ("ttt3r_worker") that steps the rig: one batched engine step per cycle over the cameras with a
  new frame, odometry (odom, /tf, path, status) from the primary; every camera's confident points go into one map
  in odom on a map thread ("ttt3r_map", session/rig.py ``place_pending``), so the voxel merge never delays the next
  batch;
- each camera's mount T_base_cam from TF (ros/static_tf.py's ExtrinsicLookup, the node's), looked up before each
  cycle until found (a rigid rig: fixed afterwards); with camera_is_base the primary is the robot body;
- one diagnostics status per camera, named ``<node>: camera <c>`` (node_bench reads it), beside the node's
  ``<node>: odometry`` status (the primary's).

A camera whose mount is missing, whose frames stop or whose images are bad is simply not in the batch: its outputs
stop with a throttled message naming it, its diagnostics status says why, the other cameras go on. Images are
parsed in the callback only as far as the header (stamp, frame_id; ros/cdr.py views the pixels without copying) and
decoded on the worker, so a frame that keep-latest replaces is never decoded.
"""
from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.event_handler import SubscriptionEventCallbacks
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from ttt3r_ros.ros import camera_frames, health, qos
from ttt3r_ros.ros import conversions as conv
from ttt3r_ros.ros.input_loss import InputLossCounter
from ttt3r_ros.ros.intake import ImageIntake
from ttt3r_ros.ros.latest_worker import LatestWorker
from ttt3r_ros.session import odometry
from ttt3r_ros.session.camera_calibration import camera_model_from_camera_info
from ttt3r_ros.session.odometry import OdometryLimits
from ttt3r_ros.session.rig import CameraHealth, CameraRig, RigFrame, RigStep

if TYPE_CHECKING:
    from ttt3r_ros.ros.node import Ttt3rNode

# The node's per-frame outputs in a camera's optical frame (the keys of the node's publishers that _publish_dense
# uses): with cameras, each is published once per camera under <camera>/ instead of once at the node's root.
DENSE_OUTPUT_KEYS = ("points", "depth", "depth_info", "confidence", "rgb")
# How often a camera's continuing problem (no mount, no frames, bad frames) is said again in the log.
CAMERA_PROBLEM_LOG_PERIOD_S = 10.0


@dataclass
class _CameraIO:
    """One camera's ROS side: topics, optical frame, calibration, output thread and input counters."""
    name: str
    frame_param: str                 # camera_frames[i], "" = the image's header.frame_id
    primary: bool
    pubs: dict[str, Any] = field(default_factory=dict)
    intake: ImageIntake | None = None   # this camera's intake thread and its subscriptions (image, camera_info)
    outputs: LatestWorker | None = None
    input_loss: InputLossCounter = field(default_factory=InputLossCounter)
    camera_model: Any = None         # CameraModel of the last usable camera_info (None: the model estimates K)
    image_frame: str = ""            # the optical frame of the latest image (frame_param or its frame_id)
    mount_frame: str = ""            # the frame whose mount the rig holds (fixed once found: a rigid rig)
    extrinsic_wait_since: float | None = None

    @property
    def image_topic(self) -> str:
        return self.intake.image_subscription.topic_name if self.intake is not None else f"{self.name}/image"


def _failing(exc: Exception) -> Callable[[], np.ndarray]:
    """An image callable that rejects its frame in the rig (counted for its camera) with `exc`'s reason."""
    def image() -> np.ndarray:
        raise exc
    return image


class MultiCamera:
    """The node's cameras (see the module docstring). Made at configure (one batched engine over the session's
    model, warmed up), outputs created with the node's, inputs and threads started at activate."""

    def __init__(self, node: "Ttt3rNode", session: Any) -> None:
        p = node._p
        self._node = node
        names = [str(c) for c in p["cameras"]]
        frames = [str(f).lstrip("/") for f in (p["camera_frames"] or [])] or [""] * len(names)
        self._io = {n: _CameraIO(n, f, i == 0) for i, (n, f) in enumerate(zip(names, frames))}
        engine = session.new_batched_engine(len(names), build_map=False, confidence_threshold=float(
            node.get_parameter("confidence_threshold").value))
        # the map thread places the points (place_in_step False): the voxel merge never delays the next batch
        self.rig = CameraRig(engine, names, process_all=bool(p["process_all_frames"]),
                             queue_size=int(p["queue_size"]), stale_after_s=float(p["input_timeout_s"]),
                             on_invalid=lambda result: session.handle_invalid(result, node.get_logger().warning),
                             place_in_step=False)
        # one trajectory: the node's tracker (read by ~/save_trajectory, restarted by ~/reset_odometry) is the rig's
        self.rig.odometry = node._odometry
        self._running = False
        self._worker: threading.Thread | None = None
        self._mapper: LatestWorker | None = None
        self._queued_primary_stamp: Any = None   # the newest primary frame whose points were queued for the map
        self._primary_frame_index = 0
        frames_n = int(p["warmup_frames"])
        if frames_n > 0:
            hw = ((int(p["warmup_image_height"]), int(p["warmup_image_width"]))
                  if int(p["warmup_image_width"]) > 0 and int(p["warmup_image_height"]) > 0 else None)
            elapsed_ms = self.rig.warm_up(frames_n, hw)
            size = f"{hw[1]}x{hw[0]}" if hw else f"4:3 at image_size {p['image_size']}"
            node.get_logger().info(f"warm-up: {frames_n} frame(s) of {size} at batch sizes 1..{len(names)} in "
                                   f"{elapsed_ms:.0f} ms")
        node.get_logger().info(f"cameras: {names} (primary {names[0]}: odometry, TF, path, status), one model, "
                               f"{engine.fast_path_status}")

    @property
    def mapper(self) -> LatestWorker | None:
        """The map thread (None while inactive)."""
        return self._mapper

    @property
    def names(self) -> list[str]:
        return list(self._io)

    # ------------------------------------------------------------------------------------------ outputs
    def create_outputs(self) -> None:
        """Move the node's dense outputs under each camera: the same types and QoS, topic <camera>/<topic>."""
        node = self._node
        root = [(key, node._pubs.pop(key)) for key in DENSE_OUTPUT_KEYS if key in node._pubs]
        namespace = node.get_namespace().rstrip("/")
        for key, pub in root:
            topic = pub.topic_name[len(namespace):].lstrip("/") if pub.topic_name.startswith(namespace + "/") \
                else pub.topic_name.lstrip("/")
            for io in self._io.values():
                io.pubs[key] = node.create_lifecycle_publisher(pub.msg_type, f"{io.name}/{topic}", pub.qos_profile)
            node.destroy_lifecycle_publisher(pub)

    def destroy_outputs(self) -> None:
        for io in self._io.values():
            for pub in io.pubs.values():
                self._node.destroy_lifecycle_publisher(pub)
            io.pubs = {}

    # ------------------------------------------------------------------------------------------ activate
    def activate(self) -> None:
        node, p = self._node, self._node._p
        in_qos = qos.input_qos(p["input_qos"], int(p["input_qos_depth"]))
        compressed = p["image_transport"] == "compressed"
        for io in self._io.values():
            io.input_loss = InputLossCounter()
            io.intake = ImageIntake(
                node, CompressedImage if compressed else Image,
                f"{io.name}/image" + ("/compressed" if compressed else ""), in_qos,
                functools.partial(self._on_image, io), None, io.input_loss,
                camera_info_type=CameraInfo if p["use_camera_info"] else None,
                camera_info_topic=f"{io.name}/camera_info", camera_info_qos=in_qos,
                on_camera_info=functools.partial(self._on_camera_info, io),
                event_callbacks=SubscriptionEventCallbacks(message_lost=io.input_loss.on_message_lost),
                thread_name=f"ttt3r_intake_{io.name}")
            io.outputs = LatestWorker(f"ttt3r_outputs_{io.name}", functools.partial(node._publish_dense,
                                                                                    pubs=io.pubs),
                                      functools.partial(self._on_output_error, io))
        self._mapper = LatestWorker("ttt3r_map", self._place_points,
                                    lambda exc: node._log_throttled("error", f"cameras: map update failed: "
                                                                    f"{type(exc).__name__}: {exc}"))
        self._running = True
        self._worker = threading.Thread(target=self._worker_loop, name="ttt3r_worker", daemon=True)
        self._worker.start()
        node.get_logger().info(
            f"active: cameras {self.names} on {[io.image_topic for io in self._io.values()]} ({p['input_qos']} "
            f"QoS), {'process_all_frames (in order)' if p['process_all_frames'] else 'keep-latest frame policy'}")

    def stop_intakes(self) -> None:
        """End every camera's intake thread (before the context shuts down: see ImageIntake.stop). The worker still
        runs meanwhile, so a put waiting on a full process_all queue gets its room and returns."""
        for io in self._io.values():
            if io.intake is not None:
                io.intake.stop()

    def stop(self) -> None:
        """End the intakes and unsubscribe, join the worker and the output threads; waiting frames are dropped
        (counted)."""
        self.stop_intakes()
        for io in self._io.values():
            if io.intake is not None:
                for s in io.intake.subscriptions:
                    self._node.destroy_subscription(s)
            io.intake = None
        self._running = False
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=30.0)
        self._worker = None
        if self._mapper is not None:
            self._mapper.stop()
        self._mapper = None
        self.rig.clear()
        for io in self._io.values():
            if io.outputs is not None:
                io.outputs.stop()
            io.outputs = None

    def _on_output_error(self, io: _CameraIO, exc: Exception) -> None:
        self._node._log_throttled("error", f"camera {io.name}: publishing outputs failed: {type(exc).__name__}: "
                                           f"{exc}", key=f"outputs failed {io.name}")

    # ------------------------------------------------------------------------------------------ callbacks
    def _on_image(self, io: _CameraIO, raw: Any, info: Any) -> None:
        node = self._node
        try:
            now = time.monotonic()
            node._last_image_wall_s = now
            io.input_loss.note(info)
            if node._paused:
                return
            try:
                msg = node._parse(raw)   # header and a view of the pixels: no copy, no decoding
            except Exception as exc:     # malformed bytes: rejected for this camera alone, in the rig's counters
                self.rig.put(io.name, RigFrame(_failing(exc), float("nan"), received_s=now))
                return
            frame_id = io.frame_param or str(msg.header.frame_id).lstrip("/")
            io.image_frame = frame_id
            stamp = Time(sec=int(msg.header.stamp.sec), nanosec=int(msg.header.stamp.nanosec))
            self.rig.put(io.name, RigFrame(functools.partial(self._decode, io, msg, frame_id),
                                           conv.stamp_to_seconds(stamp), meta=(stamp, frame_id), received_s=now,
                                           camera_model=io.camera_model))
        except Exception as exc:   # the intake thread must never die of one frame
            node._log_throttled("error", f"camera {io.name}: image callback failed: {type(exc).__name__}: {exc}")

    def _decode(self, io: _CameraIO, msg: Any, frame_id: str) -> np.ndarray:
        """Worker thread, in the rig's step: the frame's pixels (an exception rejects this frame alone)."""
        if not frame_id:
            raise ValueError("image header.frame_id is empty and camera_frames does not name this camera's frame")
        if io.mount_frame and frame_id != io.mount_frame:
            raise ValueError(f"image frame_id {frame_id!r} differs from the camera's frame {io.mount_frame!r} "
                             "(its mount is fixed once found: one camera per topic)")
        return self._node._decode(msg)

    def _on_camera_info(self, io: _CameraIO, msg: CameraInfo) -> None:
        try:
            camera_model, reason = camera_model_from_camera_info(msg)
            if camera_model is None:
                self._node._log_throttled("warn", f"camera {io.name}: ignoring camera_info: {reason}; using "
                                                  "model-estimated intrinsics", key=f"camera_info {io.name}")
            io.camera_model = camera_model
        except Exception as exc:
            self._node._log_throttled("error", f"camera {io.name}: camera_info callback failed: "
                                               f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------------------------------ worker
    def _resolve_extrinsics(self) -> None:
        """Look up the mount of every camera that has none yet (from the frame its images name)."""
        node, p = self._node, self._node._p
        base = p["base_frame"]
        for io in self._io.values():
            if io.mount_frame or not io.image_frame:
                continue
            frame = io.image_frame
            if p["camera_is_base"] and io.primary:
                # the primary camera is the robot body (REP 103 axes at the base origin); its mount is published
                t, parent, child = camera_frames.camera_is_base_transform(base, frame)
                if "tf_static" in node._pubs:
                    node._pubs["tf_static"].publish(node._tf_type(transforms=[conv.transform_stamped(
                        t, Header(stamp=node.get_clock().now().to_msg(), frame_id=parent), child)]))
            else:
                t = node._extrinsic.lookup(base, frame) if node._extrinsic is not None else None
            if t is None:
                if io.extrinsic_wait_since is None:
                    io.extrinsic_wait_since = time.monotonic()
                known = node._extrinsic.known_frames() if node._extrinsic is not None else []
                node._log_throttled(
                    "warn", f"camera {io.name}: no transform {base} -> {frame} in TF yet (known static frames: "
                    f"{known}); its frames are skipped and its outputs stop until the mount appears, the other "
                    "cameras go on. Publish the mount (URDF or static_transform_publisher)",
                    period_s=CAMERA_PROBLEM_LOG_PERIOD_S, key=f"extrinsic missing {io.name}")
                continue
            problem = camera_frames.body_frame_problem(frame, base, None if p["camera_is_base"] and io.primary
                                                       else t)
            if problem:
                node._log_throttled("error", f"camera {io.name}: {problem}", period_s=60.0,
                                    key=f"body frame {io.name}")
            self.rig.set_extrinsic(io.name, t)
            io.mount_frame = frame
            node.get_logger().info(f"camera {io.name}: extrinsic {base} -> {frame}: "
                                   f"t={np.round(t[:3, 3], 4).tolist()}")

    def _worker_loop(self) -> None:
        node = self._node
        while self._running:
            if not self.rig.wait_for_frames(timeout_s=0.2):
                continue
            try:
                self._resolve_extrinsics()
                live = node._live_values()
                step = self.rig.step(OdometryLimits.from_values(live))
                self._publish(step, float(live["confidence_threshold"]))
            except Exception as exc:   # a failed cycle must never end the worker
                node._log_throttled("error", f"cameras: cycle failed: {type(exc).__name__}: {exc}")

    def _publish(self, step: RigStep, confidence_threshold: float) -> None:
        node = self._node
        for name, reason in step.rejected.items():
            if "no extrinsic" not in reason:   # a missing mount is said by _resolve_extrinsics, with the fix
                node._log_throttled("error", f"{reason}; this camera's outputs stop while its frames are bad, the "
                                             "other cameras go on", key=f"rejected {name}")
        for name, note in step.notes.items():
            node._log_throttled("warn", note, period_s=CAMERA_PROBLEM_LOG_PERIOD_S, key=f"note {name}")
        from ttt3r_ros.ros.node import _DenseOutputs

        for out in step.outputs:
            stamp, frame_id = out.frame.meta
            header = Header(stamp=stamp, frame_id=frame_id)
            io = self._io[out.camera]
            if io.outputs is not None:
                io.outputs.put(_DenseOutputs(out.result, header, confidence_threshold))
        primary = step.output(self.rig.primary)
        if primary is not None:
            self._queued_primary_stamp = primary.frame.meta[0]
        if step.outputs and self._mapper is not None:
            # the map thread places what this cycle queued; the map is stamped with the newest primary frame
            self._mapper.put(self._queued_primary_stamp)
        if step.odometry is not None and primary is not None:
            stamp, frame_id = primary.frame.meta
            node._publish_pose(step.odometry, Header(stamp=stamp, frame_id=node._p["odom_frame"]))
            self._publish_status(primary.result, step.odometry, Header(stamp=stamp, frame_id=frame_id))

    def _place_points(self, primary_stamp: Any) -> None:
        """Map thread: every camera's waiting points into the rig's map (session/rig.py place_pending)."""
        node = self._node
        with node._map_lock:
            placed = self.rig.place_pending()
            # everything queued up to this primary frame is placed now (or waits, or was given up): the map's stamp
            # moves on even when an earlier job already placed this cycle's points
            restamped = primary_stamp is not None and primary_stamp != node._map_stamp
            if restamped:
                node._map_stamp = primary_stamp
        if placed or restamped:
            node._map_dirty = True

    def _publish_status(self, result: Any, estimate: odometry.OdometryEstimate, header: Header) -> None:
        """`status` and the node's odometry summary from the primary camera's frame."""
        node = self._node
        h = self.rig.health()[self.rig.primary]
        self._primary_frame_index += 1
        node._frame_index = self._primary_frame_index
        node._processed, node._rejected, node._invalid = h.frames_processed, h.frames_rejected, h.frames_invalid
        s = node._summary
        s.tracking_state = estimate.tracking_state
        s.frame_index = self._primary_frame_index
        s.frames_received, s.frames_dropped = h.frames_received, h.frames_dropped
        s.frames_processed, s.frames_rejected, s.frames_invalid = h.frames_processed, h.frames_rejected, \
            h.frames_invalid
        s.frames_lost_before_node = self._io[self.rig.primary].input_loss.sequence_gaps
        timings = result.timings_ms
        s.inference_latency_ms = float(timings.get("model", timings.get("total", 0.0)))
        now_ns = node.get_clock().now().nanoseconds
        # under use_sim_time the clock is 0 until the first /clock message: "unknown", not a huge number
        s.end_to_end_latency_ms = (float((now_ns * 1e-9 - conv.stamp_to_seconds(header.stamp)) * 1e3)
                                   if now_ns > 0 else float("nan"))
        s.confident_fraction = estimate.confident_fraction
        s.confidence_mean = h.confidence_mean
        s.gate_mean = float(result.gate_mean)
        s.map_points = len(self.rig.voxel_map)
        s.paused = node._paused
        s.message = f"primary camera {self.rig.primary}: {estimate.summary}"
        if result.was_reset and self._primary_frame_index > 1:
            s.resets += 1
        node._last_header = header
        st = health.status_message(node._status_type, s, header, result.gate_min, result.gate_max)
        node._pubs["status"].publish(st)
        if s.tracking_state == odometry.TRACKING_LOST:
            node._log_throttled("warn", f"tracking lost (primary camera {self.rig.primary}): only "
                                f"{s.confident_fraction:.1%} of pixels are confident", key="tracking lost")

    # ------------------------------------------------------------------------------------------ node-wide
    def diagnostics(self, header: Header) -> DiagnosticArray:
        """The node's odometry status (the primary's) and one status per camera, `<node>: camera <c>`; a camera's
        continuing problem is logged (throttled, per camera)."""
        node = self._node
        fqn = node.get_fully_qualified_name()
        cameras = self.rig.health()
        primary = cameras[self.rig.primary]
        s = node._summary
        s.input_stale = ("" if primary.ok or self._starting(primary)
                         else f"primary camera {primary.name}: {primary.state}")
        s.outputs_skipped = sum(io.outputs.skipped for io in self._io.values() if io.outputs is not None)
        s.paused = node._paused
        array = health.diagnostics(s, header, fqn)
        for name, h in cameras.items():
            io = self._io[name]
            array.status.append(self._camera_status(fqn, io, h, s.device))
            if not (h.ok or self._starting(h) or node._paused):
                what = ("odometry, TF and the placement of every camera's points stop with it" if io.primary
                        else "the other cameras go on")
                node._log_throttled("warn", f"camera {name} ({io.image_topic}): {h.state}; its outputs stop, "
                                            f"{what}", period_s=CAMERA_PROBLEM_LOG_PERIOD_S,
                                    key=f"camera state {name}")
        return array

    def _starting(self, h: CameraHealth) -> bool:
        """No frame yet, but the node was activated too recently to call the camera silent."""
        return h.state == "no frames yet" and \
            time.monotonic() - self._node._active_since_s <= self.rig.stale_after_s

    def _camera_status(self, fqn: str, io: _CameraIO, h: CameraHealth, device: str) -> DiagnosticStatus:
        status = DiagnosticStatus()
        status.name = f"{fqn}: camera {io.name}"
        status.hardware_id = device
        status.level = DiagnosticStatus.OK if h.ok else DiagnosticStatus.WARN
        if h.state.startswith("rejecting"):
            status.level = DiagnosticStatus.ERROR
        status.message = h.state if h.state != "no frames yet" else f"no frames yet on {io.image_topic}"
        pairs = {
            "primary": h.primary, "image_topic": io.image_topic, "optical_frame": io.mount_frame or io.image_frame,
            "has_extrinsic": h.has_extrinsic, "frames_received": h.frames_received,
            "frames_processed": h.frames_processed, "frames_dropped": h.frames_dropped,
            "frames_rejected": h.frames_rejected, "frames_skipped": h.frames_skipped,
            "frames_invalid": h.frames_invalid, "frames_lost_before_node": io.input_loss.sequence_gaps,
            "dds_message_lost": io.input_loss.dds_lost_events,
            "outputs_skipped": io.outputs.skipped if io.outputs is not None else 0,
            "map_frames_placed": h.map_frames_placed, "map_frames_unplaced": h.map_frames_unplaced,
            "step_latency_ms": f"{h.latency_ms:.1f}", "end_to_end_latency_ms": f"{h.end_to_end_ms:.1f}",
            "confidence_mean": f"{h.confidence_mean:.3f}", "confident_fraction": f"{h.confident_fraction:.3f}",
            "last_frame_age_s": f"{h.last_frame_age_s:.2f}", "last_error": h.last_error, "device": device,
        }
        status.values = [KeyValue(key=k, value=str(v)) for k, v in pairs.items()]
        return status

    def map_in_odom(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The map of every camera, already in odom (points float32, colours uint8, confidences)."""
        return self.rig.map_points()

    def has_processed(self) -> bool:
        return any(h.frames_processed for h in self.rig.health().values())

    def reset(self, restart_odometry: bool) -> None:
        """~/reset (state only; odometry continues) or ~/reset_odometry (trajectory, odometry and map restart)."""
        self.rig.reset(restart_odometry=restart_odometry)
        if restart_odometry:
            self._primary_frame_index = 0

    def clear(self) -> int:
        """~/pause: drop every waiting frame; returns how many."""
        return self.rig.clear()
