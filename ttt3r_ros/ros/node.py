"""ttt3r_node: a managed (lifecycle) ROS 2 node that adapts camera messages to the streaming engine and
publishes odometry, TF, clouds, depth, confidence, status and diagnostics.

Lifecycle: configure loads the weights and warms up (a missing checkpoint fails the transition, the node stays
unconfigured and alive), activate subscribes and starts the inference worker, deactivate unsubscribes and stops
it, cleanup frees the model (and CUDA memory). `autostart` runs configure + activate at start.

Threads (issue 11: the node keeps up with the model):
- the intake ("ttt3r_intake", ros/intake.py): takes images and camera_info from rcl itself, off the executor, as
  serialized bytes; keep-latest takes an image only when the worker asks; the executor serves services and timers;
- the worker ("ttt3r_worker"): parses and decodes the frame it takes (ros/cdr.py, numpy), steps the engine (without
  the map), publishes the small per-frame outputs (odom, /tf, status) and hands the result on to
- the output thread ("ttt3r_outputs"): points, depth, depth/camera_info and confidence built as serialized CDR with
  numpy, and to the map thread ("ttt3r_map"): the frame's confident points into the voxel map. Both keep only the
  newest frame (ros/latest_worker.py): a slow subscriber or map never delays odometry;
- timers: `path` (path_publish_period_s, only while subscribed), `map_points`, diagnostics.
Engine access is serialised by `_engine_lock` and the voxel map by `_map_lock`, so the services (reset, save_*)
can run from executor threads at any time.

Start: `main` spins the executor first and runs autostart's configure in a thread, so parameter and lifecycle
services answer while the weights load and the warm-up compiles; the warm-up runs on the live engine at the camera's
size (its CUDA graphs are the ones the frames replay); the compile cache is persistent (ros/startup.py).
"""
from __future__ import annotations

import functools
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry, Path
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from builtin_interfaces.msg import Time
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from ttt3r_ros.ros import camera_frames
from ttt3r_ros.ros import conversions as conv
from ttt3r_ros.ros import cdr, health, parameters, qos, save_paths, session_io, startup
from ttt3r_ros.ros import name_guard as name_guard_module
from ttt3r_ros.ros.frame_queue import FrameQueue
from ttt3r_ros.ros.input_loss import InputLossCounter
from ttt3r_ros.ros.intake import ImageIntake, image_history_depth
from ttt3r_ros.ros.latest_worker import LatestWorker
from ttt3r_ros.ros.static_tf import ExtrinsicLookup
from ttt3r_ros.session import odometry
from ttt3r_ros.session.camera_calibration import camera_model_from_camera_info
from ttt3r_ros.session.image_codec import calibration_for_image
from ttt3r_ros.session.focal_health import FocalHealth
from ttt3r_ros.session.odometry import OdometryEstimate, OdometryLimits, OdometryTracker
from ttt3r_ros.session.settings import DEFAULTS

NODE_NAME = "ttt3r_node"
AUTOSTART_EXIT_WAIT_S = 120.0   # longest wait at exit for an autostart configure still loading (a GPU compile)
_THROTTLE_S = 2.0
# Said where the configure log names the weights (README "Checkpoint").
CHECKPOINT_LICENCE = ("the official CUT3R checkpoint (and files converted from it) is licensed CC BY-NC-SA 4.0: "
                      "non-commercial use only")


@dataclass
class _Frame:
    msg: Any                    # serialized Image/CompressedImage bytes (or a message), parsed in the worker
    received_wall_s: float      # time.monotonic() at the callback


@dataclass
class _DenseOutputs:
    """What the output thread needs to publish one frame's points, depth and confidence."""
    result: Any                 # FrameResult
    header: Header
    confidence_threshold: float


@dataclass
class _MapUpdate:
    result: Any                 # FrameResult (valid)
    voxel_map: Any              # the map of the stream the frame belongs to (a reset's new map is another object)
    stamp: Any                  # the frame's image stamp: map_points is stamped with the newest frame it holds


def _guarded(callback: Callable[..., Any]) -> Callable[..., Any]:
    """Executor callbacks must never raise: rclpy's executor re-raises callback exceptions out of spin(), which
    would take the whole node down. Log instead; services answer success=False with the error."""
    @functools.wraps(callback)
    def wrapper(self: "Ttt3rNode", *args: Any) -> Any:
        try:
            return callback(self, *args)
        except Exception as exc:
            text = f"{callback.__name__} failed: {type(exc).__name__}: {exc}"
            self._log_throttled("error", text)
            if len(args) == 2 and hasattr(args[1], "success"):   # a service: (request, response)
                args[1].success = False
                if hasattr(args[1], "message"):
                    args[1].message = text
                return args[1]
            return None
    return wrapper


class Ttt3rNode(LifecycleNode):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        parameters.declare_parameters(self)
        self.add_on_set_parameters_callback(parameters.on_set_parameters_callback(
            lambda: self._configured, current_values=lambda: parameters.values(self)))
        self._input_group = MutuallyExclusiveCallbackGroup()   # image callbacks may block (process_all_frames)
        self._service_group = ReentrantCallbackGroup()
        self._timer_clock = Clock(clock_type=ClockType.STEADY_TIME)  # timers tick without /clock under sim time
        self._engine_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._map_lock = threading.Lock()   # the voxel map: fed by the map thread, read by map_points and save_map
        # held by the worker over a whole frame (engine step to odometry update), so ~/save_session copies a consistent
        # engine + odometry (ros/session_io.py)
        self._frame_lock = threading.Lock()
        self._last_logged: dict[str, float] = {}
        self.configure_started = threading.Event()
        self.exit_status = 0   # main's exit status: 1 after a failed configure with exit_on_configure_failure
        self._lifecycle = "unconfigured"   # the state /diagnostics reports (lifecycle callbacks keep it)
        self._configure_error = ""         # why the last configure failed ("" after a success)
        self._reset_entities()
        # /diagnostics in every lifecycle state: a plain publisher and a steady timer of the node itself (lifecycle
        # publishers publish only while active), so an unconfigured or failed node still says what it is waiting for
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", qos.DIAGNOSTICS_QOS)
        self._diagnostics_timer = self.create_timer(1.0, self._publish_diagnostics, callback_group=self._service_group,
                                                    clock=self._timer_clock)

    # ------------------------------------------------------------------------------------------ state
    def _reset_entities(self) -> None:
        self._configured = False   # configure succeeded and no cleanup since (configure-time parameters locked)
        self._session: Any = None   # ttt3r_ros.session.build.Session: the model, its device and precision
        self._engine: Any = None
        self._multi: Any = None     # ros/multi_camera.MultiCamera when `cameras` is set (then _engine stays None)
        self._device = ""
        self._p: dict[str, Any] = {}
        self._pubs: dict[str, Any] = {}
        self._srv_handles: list[Any] = []
        self._timer_handles: list[Any] = []
        self._subs: list[Any] = []
        self._extrinsic: ExtrinsicLookup | None = None
        self._queue: FrameQueue[_Frame] | None = None
        self._worker: threading.Thread | None = None
        self._intake: ImageIntake | None = None   # takes the images and camera_info off the executor
        self._outputs: LatestWorker[_DenseOutputs] | None = None
        self._mapper: LatestWorker[_MapUpdate] | None = None
        self._input_loss = InputLossCounter()
        self._running = False
        self._paused = False
        self._camera_model: Any = None   # engine.camera_model.CameraModel of the last usable camera_info
        self._focal_health = FocalHealth()
        self._t_base_cam: np.ndarray | None = None
        self._t_base_cam_frame = ""
        self._engine_camera_frame = ""
        self._extrinsic_wait_since: float | None = None
        self._active_since_s = 0.0
        self._last_image_wall_s: float | None = None
        self._odometry = OdometryTracker()   # twist, covariance, tracking state and the trajectory (_state_lock)
        self._path: deque[PoseStamped] = deque()
        self._path_dirty = False
        self._invalid = 0   # frames whose network output was not finite (FrameResult.valid False): not published
        self._summary = health.HealthSummary()
        self._last_header = Header()
        self._map_dirty = False
        self._map_stamp: Any = None   # stamp of the newest frame in the map (set by the map thread)
        self._rejected = 0
        self._processed = 0
        self._frame_index = 0
        self._resumed: session_io.ResumeInfo | None = None   # resume_session applied at configure (None: fresh)

    def _log_throttled(self, level: str, text: str, period_s: float = _THROTTLE_S, key: str | None = None) -> None:
        """Log each distinct message (or `key`) at most once per period. rclpy's own throttle is per call site,
        which would hide a different error arriving right after another one."""
        key = text if key is None else key
        now = time.monotonic()
        if now - self._last_logged.get(key, -1e9) < period_s:
            return
        if len(self._last_logged) > 256:
            self._last_logged.clear()
        self._last_logged[key] = now
        # one call site per severity: rclpy refuses a call site that logs at two severities
        if level == "error":
            self.get_logger().error(text)
        else:
            self.get_logger().warning(text)

    # ------------------------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.configure_started.set()   # the lifecycle state is "configuring" now (main waits for it with autostart)
        errors = parameters.validate_node_parameters(self)
        if errors:
            for e in errors:
                self.get_logger().error(f"configure failed: invalid parameter: {e}")
            return self._configure_failed("invalid parameter: " + "; ".join(errors))
        self._p = parameters.values(self)
        try:
            self.get_logger().info(startup.apply_compile_cache(str(self._p["compile_cache_dir"])))
            self._load_engine()
        except Exception as exc:  # any load problem must leave the node unconfigured, not dead
            self.get_logger().error(f"configure failed: {type(exc).__name__}: {exc}")
            self._free_model()
            return self._configure_failed(f"{type(exc).__name__}: {exc}")
        self._create_outputs()
        try:
            self._resumed = session_io.resume_at_configure(self)   # resume_session ("" = start fresh)
        except Exception as exc:  # a snapshot that does not fit leaves the node unconfigured, like a bad checkpoint
            self.get_logger().error(f"configure failed: {type(exc).__name__}: {exc}")
            self._destroy_outputs()
            self._free_model()
            return self._configure_failed(f"{type(exc).__name__}: {exc}")
        self._configured = True
        self._configure_error = ""
        self._lifecycle = "inactive"
        weights = self._p["weights"]
        licence = "" if weights == "random" else f"; {CHECKPOINT_LICENCE}"
        self.get_logger().info(
            f"configured: model {self._p['model_config']} ({weights}{licence}), update_rule "
            f"{self._p['update_rule']}, device {self._device}, {self._p['precision']}, "
            f"camera extrinsic via {self._extrinsic.backend if self._extrinsic else '-'}")
        problem = camera_frames.invert_tf_problem(bool(self.get_parameter("invert_tf").value),
                                                  bool(self.get_parameter("publish_tf").value),
                                                  self._p["odom_frame"], self._p["base_frame"],
                                                  DEFAULTS.odom_frame, DEFAULTS.base_frame)
        if problem:
            self.get_logger().warning(problem)
        return TransitionCallbackReturn.SUCCESS

    def _configure_failed(self, reason: str) -> TransitionCallbackReturn:
        """The node stays unconfigured and says why on /diagnostics (ERROR); with exit_on_configure_failure the
        process ends with status 1 instead (for launch respawn, systemd, containers)."""
        self._configure_error = reason
        self._lifecycle = "unconfigured"
        self._publish_diagnostics()
        if self.get_parameter("exit_on_configure_failure").value:
            self.get_logger().error("exit_on_configure_failure: ending the process with exit status 1")
            self.exit_status = 1
            # after the transition's answer has gone out (this runs inside the change_state service or autostart)
            threading.Timer(0.5, rclpy.try_shutdown).start()
        return TransitionCallbackReturn.FAILURE

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self._p
        if self._multi is not None:   # several cameras: their subscriptions and the rig's worker
            self._running, self._active_since_s, self._last_image_wall_s = True, time.monotonic(), None
            self._multi.activate()
            self._lifecycle = "active"
            return super().on_activate(state)
        self._queue = FrameQueue(process_all=bool(p["process_all_frames"]), max_size=int(p["queue_size"]))
        in_qos = qos.input_qos(p["input_qos"], int(p["input_qos_depth"]))
        self._input_loss = InputLossCounter()
        # images and camera_info are taken by the intake thread, never by the executor (ros/intake.py); the image
        # callback gets the serialized bytes and only the frames the worker takes are parsed
        compressed = p["image_transport"] == "compressed"
        self._intake = ImageIntake(
            self, CompressedImage if compressed else Image, "image/compressed" if compressed else "image",
            qos.input_qos(p["input_qos"], image_history_depth(bool(p["process_all_frames"]),
                                                               int(p["input_qos_depth"]))),
            self._on_image, self._queue, self._input_loss,
            camera_info_type=CameraInfo if p["use_camera_info"] else None, camera_info_topic="camera_info",
            camera_info_qos=in_qos, on_camera_info=self._on_camera_info,
            event_callbacks=SubscriptionEventCallbacks(message_lost=self._input_loss.on_message_lost))
        self._subs.extend(self._intake.subscriptions)
        self._running = True
        self._active_since_s = time.monotonic()
        self._last_image_wall_s = None
        self._outputs = LatestWorker("ttt3r_outputs", self._publish_dense,
                                     lambda exc: self._log_throttled("error", f"publishing outputs failed: "
                                                                     f"{type(exc).__name__}: {exc}"))
        self._mapper = LatestWorker("ttt3r_map", self._update_map,
                                    lambda exc: self._log_throttled("error", f"map update failed: "
                                                                    f"{type(exc).__name__}: {exc}"))
        self._worker = threading.Thread(target=self._worker_loop, name="ttt3r_worker", daemon=True)
        self._worker.start()
        topic = self._subs[0].topic_name
        self.get_logger().info(
            f"active: subscribed to {topic} ({p['input_qos']} QoS), "
            f"{'process_all_frames (in order)' if p['process_all_frames'] else 'keep-latest frame policy'}")
        self._lifecycle = "active"
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_input()
        self._lifecycle = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_input()
        self._destroy_outputs()
        self._free_model()
        self._reset_entities()
        self._lifecycle = "unconfigured"
        self.get_logger().info("cleaned up: model freed")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._lifecycle = "finalized"
        self._stop_input()
        self._destroy_outputs()
        self._free_model()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error("lifecycle error: stopping input and freeing the model")
        self._stop_input()
        self._destroy_outputs()
        self._free_model()
        self._reset_entities()
        self._lifecycle = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    # ------------------------------------------------------------------------------------ model
    def _load_engine(self) -> None:
        from ttt3r_ros.session.build import open_session
        from ttt3r_ros.session.settings import SessionConfig

        p = self._p
        session = open_session(SessionConfig.from_values(p), log=self.get_logger().info)
        if session.weights.is_random:
            self.get_logger().warning("weights:=random: deterministic random initialisation, outputs are meaningless")
        self._session = session
        self._device = str(session.device)
        if p["cameras"]:   # several cameras, one model: a batched engine over a camera rig (ros/multi_camera.py)
            from ttt3r_ros.ros.multi_camera import MultiCamera

            self._multi = MultiCamera(self, session)
            return
        # The live engine is made once, here (this validates the engine options now): the warm-up runs on it at the
        # camera's frame size, so the CUDA graphs it captures are the ones the frames replay; it then restarts its
        # stream (clean state, empty map) and takes the camera mount (T_base_camera) at the first frame.
        engine = self._new_engine(None)
        frames = int(p["warmup_frames"])
        frame_hw = self._warmup_frame_size() if frames > 0 else None
        elapsed_ms, execution_path = session.warm_up(frames, engine=engine, frame_hw=frame_hw)
        with self._engine_lock:
            self._engine, self._engine_camera_frame = engine, ""
        if frames > 0:
            size = f"{frame_hw[1]}x{frame_hw[0]}" if frame_hw else f"4:3 at image_size {p['image_size']}"
            self.get_logger().info(f"warm-up: {frames} frame(s) of {size} in {elapsed_ms:.0f} ms")
        self.get_logger().info(f"execution path: {execution_path}")

    def _warmup_frame_size(self) -> tuple[int, int] | None:
        """(height, width) of the camera's frames for the warm-up: the parameters, else the first camera_info within
        warmup_camera_info_wait_s (configure runs off the executor thread, so the subscription is served), else None
        (4:3 at image_size; the first frame of another size then captures its own graph)."""
        p = self._p
        if int(p["warmup_image_width"]) > 0 and int(p["warmup_image_height"]) > 0:
            return int(p["warmup_image_height"]), int(p["warmup_image_width"])
        wait_s = float(p["warmup_camera_info_wait_s"])
        if not p["use_camera_info"] or wait_s <= 0:
            return None
        got: list[tuple[int, int]] = []
        arrived = threading.Event()

        def on_info(msg: CameraInfo) -> None:
            if msg.width > 0 and msg.height > 0 and not got:
                got.append((int(msg.height), int(msg.width)))
                arrived.set()

        sub = self.create_subscription(CameraInfo, "camera_info", on_info,
                                       qos.input_qos(p["input_qos"], int(p["input_qos_depth"])),
                                       callback_group=self._service_group)
        try:
            arrived.wait(wait_s)
        finally:
            self.destroy_subscription(sub)
        if not got:
            self.get_logger().info(f"warm-up: no camera_info within {wait_s:.1f} s; warming up at 4:3 of image_size "
                                   "(set warmup_image_width/height to the camera's size to capture its graph now)")
            return None
        return got[0]

    def _new_engine(self, t_base_cam: np.ndarray | None) -> Any:
        # confidence_threshold is live: the engine's map keeps the value it has when the engine is made
        # build_map=False: the map thread feeds the voxel map at its own rate, off the frame's critical path
        return self._session.new_engine(
            t_base_cam, confidence_threshold=float(self.get_parameter("confidence_threshold").value),
            build_map=False)

    def _free_model(self) -> None:
        with self._engine_lock:
            self._engine = None
            self._multi = None
            session, self._session = self._session, None
        if session is not None:
            session.close()

    # ------------------------------------------------------------------------------------ outputs
    def _create_outputs(self) -> None:
        from ttt3r_ros.msg import Status
        from tf2_msgs.msg import TFMessage

        pub = self.create_lifecycle_publisher
        self._pubs = {
            "odom": pub(Odometry, "odom", qos.ODOM_QOS),
            "tf": pub(TFMessage, "/tf", qos.TF_QOS),
            "path": pub(Path, "path", qos.LATCHED_QOS),
            "points": pub(PointCloud2, "points", qos.STREAM_OUTPUT_QOS),
            "map_points": pub(PointCloud2, "map_points", qos.LATCHED_QOS),
            "depth": pub(Image, "depth/image", qos.STREAM_OUTPUT_QOS),
            "depth_info": pub(CameraInfo, "depth/camera_info", qos.STREAM_OUTPUT_QOS),
            "confidence": pub(Image, "confidence/image", qos.STREAM_OUTPUT_QOS),
            "rgb": pub(Image, "rgb/image", qos.STREAM_OUTPUT_QOS),
            "status": pub(Status, "status", qos.ODOM_QOS),
            # camera_is_base: base_frame -> the camera's optical frame (latched, as tf2_ros' static broadcaster)
            "tf_static": pub(TFMessage, "/tf_static", qos.LATCHED_QOS),
        }
        self._status_type = Status
        self._tf_type = TFMessage
        from ttt3r_ros.srv import SaveToFile
        srv = self.create_service
        g = self._service_group
        self._srv_handles = [
            srv(Trigger, "~/reset", self._srv_reset, callback_group=g),
            srv(Trigger, "~/reset_odometry", self._srv_reset_odometry, callback_group=g),
            srv(Trigger, "~/pause", self._srv_pause, callback_group=g),
            srv(Trigger, "~/resume", self._srv_resume, callback_group=g),
            srv(SaveToFile, "~/save_map", self._srv_save_map, callback_group=g),
            srv(SaveToFile, "~/save_trajectory", self._srv_save_trajectory, callback_group=g),
            srv(SaveToFile, "~/save_session", self._srv_save_session, callback_group=g),
        ]
        self._timer_handles = [
            self.create_timer(float(self._p["map_publish_period_s"]), self._publish_map, callback_group=g,
                              clock=self._timer_clock),
            self.create_timer(float(self._p["path_publish_period_s"]), self._publish_path, callback_group=g,
                              clock=self._timer_clock),
        ]
        self._extrinsic = ExtrinsicLookup(self)
        self._summary = health.HealthSummary(device=self._device)
        if self._multi is not None:
            self._multi.create_outputs()   # the dense outputs move under each camera: <camera>/points ...

    def _destroy_outputs(self) -> None:
        if self._multi is not None:
            self._multi.destroy_outputs()
        for t in self._timer_handles:
            self.destroy_timer(t)
        for s in self._srv_handles:
            self.destroy_service(s)
        for p in self._pubs.values():
            self.destroy_lifecycle_publisher(p)
        if self._extrinsic is not None:
            self._extrinsic.destroy()
        self._timer_handles, self._srv_handles, self._pubs, self._extrinsic = [], [], {}, None

    def _stop_input(self) -> None:
        if self._multi is not None:
            self._multi.stop()
        intake, self._intake = self._intake, None
        if intake is not None:
            intake.stop()   # its thread ends before its subscriptions (in _subs) are destroyed
        for s in self._subs:
            self.destroy_subscription(s)
        self._subs = []
        self._running = False
        if self._queue is not None:
            self._queue.close()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=30.0)
        self._worker = None
        for helper in (self._outputs, self._mapper):
            if helper is not None:
                helper.stop()
        self._outputs = self._mapper = None

    # ------------------------------------------------------------------------------------ callbacks
    @_guarded
    def _on_image(self, msg: Any, info: Any) -> None:
        # msg: the serialized bytes (raw subscription); nothing is parsed here, so a frame dropped later costs nothing.
        # info: rclpy's MessageInfo (two required arguments make rclpy pass it), for the publisher's sequence
        self._last_image_wall_s = time.monotonic()
        skipped = self._input_loss.note(info)
        if skipped and self._p.get("process_all_frames"):
            self._log_throttled("warn", f"process_all_frames: {self._input_loss.sequence_gaps} image(s) lost before "
                                "reaching the node (the input subscription's history overflowed while the node was "
                                "busy, or the network lost them): play slower or raise input_qos_depth",
                                period_s=_THROTTLE_S * 5, key="input lost")
        if self._paused or self._queue is None:
            return
        if not self._queue.put(_Frame(msg=msg, received_wall_s=time.monotonic())) and self._queue.process_all:
            self._log_throttled("warn", f"process_all_frames: the full queue refused an image after waiting "
                                f"{self._queue.put_timeout_s:.0f} s ({self._queue.snapshot()['refused']} so far)",
                                period_s=_THROTTLE_S * 5, key="queue refused")

    @_guarded
    def _on_camera_info(self, msg: CameraInfo) -> None:
        # also refuses a K the engine would refuse, or a distortion it cannot undo, so a bad calibration never
        # reaches (and fails) every frame; a distorted camera's frames are undistorted by the engine
        camera_model, reason = camera_model_from_camera_info(msg)
        if camera_model is None:
            self._log_throttled("warn", f"ignoring camera_info: {reason}; using model-estimated intrinsics")
        with self._state_lock:
            self._camera_model = camera_model

    # ------------------------------------------------------------------------------------ worker
    def _worker_loop(self) -> None:
        queue = self._queue
        while self._running and queue is not None:
            frame = queue.get(timeout_s=0.2)
            if frame is None:
                continue
            try:
                with self._frame_lock:
                    self._process(frame)
            except Exception as exc:  # a bad frame or a failed step must never kill the worker
                self._rejected += 1
                self._summary.message = f"frame failed: {type(exc).__name__}: {exc}"
                self._log_throttled("error", self._summary.message)

    def _live_values(self) -> dict[str, Any]:
        """Current values of the parameters that may change while active (read per frame)."""
        return {spec.name: self.get_parameter(spec.name).value for spec in parameters.PARAMETERS if spec.live}

    def _parse(self, raw: Any) -> Any:
        """Serialized input bytes -> a message-like object (header, fields; the pixel data is not copied)."""
        if not isinstance(raw, bytes):
            return raw   # a message object (e.g. a test feeding _process directly)
        compressed = self._p["image_transport"] == "compressed"
        if cdr.is_plain_little_endian(raw):
            try:
                return cdr.parse_compressed_image(raw) if compressed else cdr.parse_image(raw)
            except cdr.CdrError as exc:
                raise conv.ImageConversionError(f"malformed {'CompressedImage' if compressed else 'Image'}: {exc}")
        from rclpy.serialization import deserialize_message   # another encapsulation: rclpy's own decoder

        return deserialize_message(raw, CompressedImage if compressed else Image)

    def _decode(self, msg: Any) -> np.ndarray:
        # live limit: images above it are refused from their size fields / PNG-JPEG header, before decoding
        max_pixels = int(self.get_parameter("max_image_pixels").value)
        if isinstance(msg, (CompressedImage, cdr.RawCompressedImage)):
            return conv.compressed_image_to_rgb(msg, max_pixels)
        return conv.image_to_rgb(msg, max_pixels)

    def _camera_extrinsic(self, camera_frame: str) -> np.ndarray | None:
        """T_base_camera (camera optical -> base), cached once found (rigid mount). With camera_is_base the node
        publishes it on /tf_static itself (`camera_frame` is then the optical frame name, see _output_camera_frame)."""
        if self._t_base_cam is not None and self._t_base_cam_frame == camera_frame:
            return self._t_base_cam
        base = self._p["base_frame"]
        if self._p["camera_is_base"]:
            # The camera *is* the body: base_frame sits at the camera with REP 103 axes; publish that mount so the
            # optical-frame outputs (points, depth, confidence, rgb) resolve in TF.
            t, parent, child = camera_frames.camera_is_base_transform(base, camera_frame)
            self._pubs["tf_static"].publish(self._tf_type(transforms=[
                conv.transform_stamped(t, Header(stamp=self.get_clock().now().to_msg(), frame_id=parent), child)]))
        else:
            t = self._extrinsic.lookup(base, camera_frame) if self._extrinsic else None
            if t is None:
                now = time.monotonic()
                first = self._extrinsic_wait_since is None
                if first:
                    self._extrinsic_wait_since = now
                # said at the first frame that misses it (not after extrinsic_timeout_s of silent rejections), then
                # repeated (throttled) while it stays missing
                if first or now - self._extrinsic_wait_since >= float(self._p["extrinsic_timeout_s"]):
                    known = self._extrinsic.known_frames() if self._extrinsic else []
                    self._log_throttled(
                        "warn",
                        f"no transform {base} -> {camera_frame} in TF yet (known static frames: {known}); frames "
                        f"are skipped until it appears. Publish the camera mount (URDF or static_transform_publisher)"
                        f" or set camera_is_base:=true if the camera itself is the robot body",
                        period_s=_THROTTLE_S * 5, key="extrinsic missing")
                return None
        problem = camera_frames.body_frame_problem(camera_frame, base, None if self._p["camera_is_base"] else t)
        if problem:
            self._log_throttled("error", problem, period_s=60.0, key="body frame")
        self._t_base_cam, self._t_base_cam_frame = t, camera_frame
        self.get_logger().info(f"camera extrinsic {base} -> {camera_frame}: t={np.round(t[:3, 3], 4).tolist()}"
                               f"{' (camera_is_base: published on /tf_static)' if self._p['camera_is_base'] else ''}")
        return t

    def _output_camera_frame(self, image_frame: str) -> str:
        """The optical frame the outputs are stamped with: camera_frame, else the image's frame_id; with
        camera_is_base a frame_id equal to base_frame (a frame cannot be its own child) becomes
        <base_frame>_optical_frame, which the node publishes under base_frame."""
        frame = (self._p["camera_frame"] or image_frame).lstrip("/")
        if frame and self._p["camera_is_base"]:
            named = camera_frames.optical_frame_name(frame, self._p["base_frame"])
            if named != frame:
                self._log_throttled(
                    "warn", f"camera_is_base: the image frame_id {frame!r} is the base frame; the optical-frame "
                    f"outputs use {named!r} (published as {self._p['base_frame']} -> {named} on /tf_static). Set "
                    f"camera_frame:={named} to silence this", period_s=60.0, key="camera is base frame name")
            return named
        return frame

    def _process(self, frame: _Frame) -> None:
        t_worker_start = time.monotonic()
        p = self._p
        try:
            msg = self._parse(frame.msg)
            rgb = self._decode(msg)
        except conv.ImageConversionError as exc:
            self._rejected += 1
            self._summary.message = f"rejected input image: {exc}"
            self._log_throttled("error", self._summary.message)
            return
        camera_frame = self._output_camera_frame(msg.header.frame_id)
        if not camera_frame:
            self._rejected += 1
            self._summary.message = "image header.frame_id is empty and parameter camera_frame is not set"
            self._log_throttled("error", self._summary.message)
            return
        t_base_cam = self._camera_extrinsic(camera_frame)
        if t_base_cam is None:
            self._rejected += 1
            self._summary.message = f"waiting for TF {p['base_frame']} -> {camera_frame}"
            return

        camera_model = None
        with self._state_lock:
            if self._camera_model is not None:
                # the live and offline rule (session/image_codec.py): a calibration of another size is ignored
                _, size_reason = calibration_for_image(self._camera_model.k, self._camera_model.size_hw,
                                                       rgb.shape[:2])
                if size_reason:
                    self._log_throttled("warn", size_reason)
                else:
                    camera_model = self._camera_model

        stamp = Time(sec=int(msg.header.stamp.sec), nanosec=int(msg.header.stamp.nanosec))
        stamp_s = conv.stamp_to_seconds(stamp)
        with self._engine_lock:
            if self._session is None:
                return
            if self._engine is None:   # a loader that made no engine (a test's): make it now, unwarmed
                self._engine = self._new_engine(None)
            if not self._engine_camera_frame:
                # the first frame: the warmed-up engine takes the camera mount (its graphs are kept)
                self._engine.set_options(camera_to_base=t_base_cam, confidence_threshold=float(
                    self.get_parameter("confidence_threshold").value))
                self._engine_camera_frame = camera_frame
            elif camera_frame != self._engine_camera_frame:
                # the engine's odometry and map are tied to the first camera's mount: never mix two cameras
                self._rejected += 1
                self._summary.message = (f"image frame_id {camera_frame!r} differs from the stream's camera "
                                         f"{self._engine_camera_frame!r} (the first frame_id seen); frame ignored "
                                         "(one camera per node; ~/reset_odometry lets the next frame's camera take "
                                         "over)")
                self._log_throttled("error", self._summary.message)
                return
            # Session.step: an invalid (non-finite) result goes through the precision guard
            result = self._session.step(self._engine, rgb, stamp_s, camera_model=camera_model,
                                        log=self.get_logger().warning)
            voxel_map = self._engine.voxel_map
        if not result.valid:
            # a non-finite pose, output or state: nothing of this frame is published (the engine reset the stream,
            # odometry continues from the last good pose)
            self._invalid += 1
            self._summary.frames_invalid = self._invalid   # /diagnostics frames_invalid
            self._summary.message = (f"frame {stamp_s:.3f} gave non-finite values: not published "
                                     f"({self._invalid} so far)")
            self._log_throttled("warn", self._summary.message, key="invalid frame")
            return
        with self._map_lock:
            map_size = len(voxel_map)
        t_odom_base = np.asarray(result.base_in_odom, dtype=np.float64)   # engine owns the frame conventions
        self._processed += 1
        self._frame_index += 1

        confidence = np.asarray(result.confidence, dtype=np.float32)
        live = self._live_values()
        thr = float(live["confidence_threshold"])
        limits = OdometryLimits.from_values(live)
        with self._state_lock:   # the trajectory is read by ~/save_trajectory from a service thread
            # bounded (oldest dropped); set per frame so a trajectory swapped in (a resumed session) is bounded too
            self._odometry.trajectory.set_max_poses(int(p["trajectory_max_poses"]))
            # a frame that starts a chunk after ~/reset continues from the last pose (session/odometry.py)
            estimate = self._odometry.update(stamp_s, t_odom_base, confidence, limits,
                                             new_chunk=bool(result.was_reset))
        state, confident_fraction = estimate.tracking_state, estimate.confident_fraction

        odom_header = Header(stamp=stamp, frame_id=p["odom_frame"])
        cam_header = Header(stamp=stamp, frame_id=camera_frame)
        self._publish_pose(estimate, odom_header)
        # the focal health figure, before the dense outputs go: where depth/camera_info is subscribed the network's
        # focal is needed for it anyway (computed here once, reused there), else every FOCAL_CHECK_PERIOD_FRAMES
        depth_wanted = any(self._pubs[name].get_subscription_count() > 0 for name in ("depth", "depth_info"))
        focal_disagreement = self._focal_health.update(result, network_focal_needed=depth_wanted)
        if self._outputs is not None:
            self._outputs.put(_DenseOutputs(result, cam_header, thr))
        if self._mapper is not None:
            self._mapper.put(_MapUpdate(result, voxel_map, stamp))

        # Status + diagnostics summary
        timings = result.timings_ms
        queue_counts = self._queue.snapshot() if self._queue is not None else {}
        s = self._summary
        s.tracking_state = state
        s.frame_index = self._frame_index
        s.frames_received = int(queue_counts.get("received", 0))
        s.frames_dropped = int(queue_counts.get("dropped", 0))
        s.frames_refused = int(queue_counts.get("refused", 0))
        s.frames_lost_before_node = self._input_loss.sequence_gaps
        s.frames_processed = self._processed
        s.frames_rejected = self._rejected
        s.inference_latency_ms = float(timings.get("model", timings.get("total", 0.0)))
        now_ns = self.get_clock().now().nanoseconds
        # under use_sim_time the clock is 0 until the first /clock message: report "unknown", not a huge number
        s.end_to_end_latency_ms = float((now_ns * 1e-9 - stamp_s) * 1e3) if now_ns > 0 else float("nan")
        s.confident_fraction = confident_fraction
        s.confidence_mean = float(confidence.mean())
        s.gate_mean = float(result.gate_mean)
        s.queue_wait_ms = (t_worker_start - frame.received_wall_s) * 1e3
        s.map_points = int(map_size)
        s.paused = self._paused
        s.message = estimate.summary   # e.g. "lost; holding last good pose; confident 0.01"
        if self._invalid:   # status has no field for it: say it in every message (diagnostics: frames_invalid)
            s.message += f"; {self._invalid} invalid frame(s) (non-finite output) not published"
        s.focal_disagreement = focal_disagreement
        if result.was_reset and self._frame_index > 1:   # service reset, reset_interval (not the first frame)
            s.resets += 1
        self._last_header = cam_header
        st = health.status_message(self._status_type, s, cam_header, result.gate_min, result.gate_max,
                                   resumed=self._resumed is not None)
        self._pubs["status"].publish(st)
        if state == odometry.TRACKING_LOST:
            self._log_throttled("warn", f"tracking lost: only {confident_fraction:.1%} of pixels are confident "
                                f"(threshold {thr}); {odometry.HOLDING_TEXT} (odom and TF), covariance "
                                f"{odometry.LOST_VARIANCE}", key="tracking lost")

    def _publish_pose(self, estimate: OdometryEstimate, header: Header) -> None:
        p = self._p
        base = p["base_frame"]
        t_odom_base = estimate.t_odom_base
        self._pubs["odom"].publish(conv.odometry(t_odom_base, header, base, estimate.pose_covariance_diagonal,
                                                 estimate.twist_covariance_diagonal, estimate.twist_linear_mps,
                                                 estimate.twist_angular_radps))
        if self.get_parameter("publish_tf").value:
            if self.get_parameter("invert_tf").value:
                from ttt3r_ros.engine import geometry
                tf = conv.transform_stamped(geometry.invert_se3(t_odom_base), Header(stamp=header.stamp,
                                            frame_id=base), p["odom_frame"])
            else:
                tf = conv.transform_stamped(t_odom_base, header, base)
            self._pubs["tf"].publish(self._tf_type(transforms=[tf]))
        pose = PoseStamped(header=header, pose=conv.pose_from_matrix(t_odom_base))
        with self._state_lock:   # published by the path timer (the whole path per frame cost more than the model)
            self._path.append(pose)
            while len(self._path) > int(p["path_max_length"]):
                self._path.popleft()
            self._path_dirty = True

    @_guarded
    def _publish_path(self) -> None:
        pub = self._pubs.get("path")
        if pub is None or not self._path_dirty or pub.get_subscription_count() == 0:
            return
        with self._state_lock:
            if not self._path:
                return
            path = Path(header=Header(stamp=self._path[-1].header.stamp, frame_id=self._p["odom_frame"]),
                        poses=list(self._path))
            self._path_dirty = False
        pub.publish(path)

    def _publish_dense(self, job: _DenseOutputs, pubs: dict[str, Any] | None = None) -> None:
        """Output thread: points, depth (+ camera_info) and confidence, built as serialized CDR, only when someone
        listens. pubs: the publishers to use (a camera's with `cameras`; default the node's)."""
        pubs = self._pubs if pubs is None else pubs
        if not pubs:
            return
        result, header, thr = job.result, job.header, job.confidence_threshold
        want_points = pubs["points"].get_subscription_count() > 0
        want_depth = pubs["depth"].get_subscription_count() > 0 or pubs["depth_info"].get_subscription_count() > 0
        want_conf = pubs["confidence"].get_subscription_count() > 0
        want_rgb = pubs["rgb"].get_subscription_count() > 0
        if not (want_points or want_depth or want_conf or want_rgb):
            return
        confidence = np.asarray(result.confidence, dtype=np.float32)
        if want_points:
            pubs["points"].publish(cdr.point_cloud(np.asarray(result.points_camera), np.asarray(result.colour),
                                                   confidence, header, confidence_threshold=thr))
        if want_depth:
            depth = np.where(confidence >= thr, np.asarray(result.depth, dtype=np.float32),
                             np.float32(np.nan))   # REP 118: NaN = no valid measurement
            pubs["depth"].publish(cdr.float_image(depth, header))
            h, w = depth.shape
            # the network's own camera (its focal estimate), not the calibration: back-projecting this depth with
            # it gives the points it came from (`points`); D = 0, the input was undistorted before the model
            k_network = np.asarray(result.intrinsics_network, dtype=np.float64)
            if np.all(np.isfinite(k_network)) and k_network[0, 0] > 0 and k_network[1, 1] > 0:
                pubs["depth_info"].publish(conv.camera_info_from_intrinsics(k_network, h, w, header))
            else:
                # K[0] = 0 means "uncalibrated" to every REP 118 consumer: a degenerate estimate is not published
                self._log_throttled("warn", f"depth/camera_info not published: the network's focal estimate is "
                                    f"degenerate (fx={k_network[0, 0]:.3g}, fy={k_network[1, 1]:.3g})",
                                    key="degenerate focal")
        if want_conf:
            pubs["confidence"].publish(cdr.float_image(confidence, header))
        if want_rgb:
            # the colour the model saw (its input resolution): pixel-aligned with depth/image, same stamp and frame,
            # so rtabmap's rgbd_sync takes the pair as one registered RGB-D frame
            pubs["rgb"].publish(cdr.rgb8_image(np.asarray(result.colour), header))

    def _update_map(self, job: _MapUpdate) -> None:
        """Map thread: the frame's confident points into its stream's voxel map (the engine owns the rule)."""
        engine = self._engine
        if engine is None:
            return
        with self._map_lock:
            engine.add_to_map(job.result, job.voxel_map)
            self._map_stamp = job.stamp
        self._map_dirty = True

    # ------------------------------------------------------------------------------------ timers
    @_guarded
    def _publish_diagnostics(self) -> None:
        pub = getattr(self, "_diagnostics_pub", None)
        if pub is None:
            return
        if not self._running:
            # unconfigured (waiting, or after a failed configure: ERROR with the reason) or inactive
            pub.publish(health.lifecycle_diagnostics(self._lifecycle, self._configure_error,
                                                     Header(stamp=self.get_clock().now().to_msg()),
                                                     self.get_fully_qualified_name(), self._device))
            return
        if self._multi is not None:   # the primary's odometry status and one status per camera
            pub.publish(self._multi.diagnostics(Header(stamp=self._last_header.stamp if self._frame_index
                                                       else self.get_clock().now().to_msg())))
            return
        s = self._summary
        if self._queue is not None:
            counts = self._queue.snapshot()
            s.frames_received, s.frames_dropped = counts["received"], counts["dropped"]
            s.frames_refused = counts["refused"]
        s.frames_lost_before_node = self._input_loss.sequence_gaps
        s.dds_message_lost = self._input_loss.dds_lost_events
        s.outputs_skipped = self._outputs.skipped if self._outputs is not None else s.outputs_skipped
        s.map_frames_skipped = self._mapper.skipped if self._mapper is not None else s.map_frames_skipped
        s.frames_rejected = self._rejected
        s.paused = self._paused
        timeout_s = float(self.get_parameter("input_timeout_s").value)
        last = self._last_image_wall_s
        silent_s = time.monotonic() - (last if last is not None else self._active_since_s)
        s.input_stale = ""
        if silent_s > timeout_s and self._subs:
            s.input_stale = (f"no image on {self._subs[0].topic_name} for {silent_s:.0f} s"
                             f"{' (none since activation)' if last is None else ''}: check the remapping, that the "
                             f"camera publishes, and QoS (input_qos={self._p['input_qos']})")
            self._log_throttled("warn", s.input_stale, period_s=30.0, key="input stale")
        header = Header(stamp=self._last_header.stamp if self._frame_index else self.get_clock().now().to_msg())
        pub.publish(health.diagnostics(s, header, self.get_fully_qualified_name()))

    @_guarded
    def _publish_map(self) -> None:
        pub = self._pubs.get("map_points")
        if pub is None or not self._running or not self._map_dirty or pub.get_subscription_count() == 0:
            return
        if self._engine is None and self._multi is None:
            return
        with self._map_lock:
            self._map_dirty = False
            pts_odom, cols, confs = self._map_in_odom()
            # the newest frame the map holds (the map thread may be a frame behind the odometry)
            stamp = self._map_stamp if self._map_stamp is not None else self._last_header.stamp
        header = Header(stamp=stamp, frame_id=self._p["odom_frame"])
        pub.publish(conv.point_cloud(pts_odom, cols, confs, header))

    def _map_in_odom(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Voxel map (points, uint8 colours, confidences) in odom_frame; call with _map_lock held."""
        from ttt3r_ros.engine import geometry

        if self._multi is not None:   # the rig's map is kept in odom
            return self._multi.map_in_odom()
        vm = self._engine.voxel_map
        pts, cols, confs = vm.points(), vm.colours(), vm.confidences()
        # The engine's world is the first camera's optical frame and odom is the first base frame, so
        # T_odom_world = T_base_camera (the engine's camera_to_base).
        t_odom_world = np.asarray(self._engine.config.camera_to_base, dtype=np.float64)
        return geometry.transform_points(t_odom_world, pts.astype(np.float64)).astype(np.float32), cols, confs

    # ------------------------------------------------------------------------------------ services
    def _reset_streams(self, restart_odometry: bool) -> bool:
        """Every stream's model state restarts (the engine's, or each camera's with `cameras`; the mounts stay);
        with `restart_odometry` trajectories and maps too, and the camera lock goes: the next frame's camera
        (frame_id) owns the restarted stream, so a stray frame that locked it first no longer keeps the real camera
        out. False when not configured."""
        with self._engine_lock:
            if self._session is None:
                return False
            if self._engine is not None:
                self._engine.reset(restart_odometry=restart_odometry)
            if self._multi is not None:
                self._multi.reset(restart_odometry=restart_odometry)
            if restart_odometry:
                self._engine_camera_frame = ""
        return True

    @_guarded
    def _srv_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        """The model's state restarts (a new chunk, as reset_interval does); odometry continues from the last pose
        (REP 105: odom is continuous), so odom -> base_link does not jump; the map, path and trajectory are kept."""
        if not self._reset_streams(restart_odometry=False):   # the new chunk starts at the last frame's pose
            response.success, response.message = False, "not configured"
            return response
        # (resets are counted when the engine reports the new chunk at the next frame)
        response.success = True
        response.message = ("state reset: the next frame starts a new chunk; odometry continues from the last pose "
                            "(~/reset_odometry restarts it at identity)")
        self.get_logger().info(response.message)
        return response

    @_guarded
    def _srv_reset_odometry(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        """Everything starts over: model state, odometry at identity (odom -> base_link jumps back), path,
        trajectory, map and the camera lock."""
        # state, trajectory and map start over; the next frame is the identity pose of odom_frame
        if not self._reset_streams(restart_odometry=True):
            response.success, response.message = False, "not configured"
            return response
        with self._state_lock:
            self._odometry.reset()   # the next twist is unknown, the trajectory starts over
            self._path.clear()
        self._map_dirty = True   # the next map_points message shows the cleared map
        # (resets are counted when the engine reports the new chunk at the next frame)
        self._summary.tracking_state = odometry.TRACKING_INITIALIZING
        response.success = True
        response.message = ("odometry reset: the next frame starts a new chunk, odometry restarts at identity, "
                            "path, trajectory and map are cleared")
        self.get_logger().info(response.message)
        return response

    @_guarded
    def _srv_pause(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self._paused = True
        n = self._queue.clear() if self._queue is not None else 0
        n += self._multi.clear() if self._multi is not None else 0
        response.success, response.message = True, f"paused: incoming frames are ignored ({n} waiting dropped)"
        self.get_logger().info(response.message)
        return response

    @_guarded
    def _srv_resume(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        was = self._paused
        self._paused = False
        response.success = True
        response.message = "resumed" if was else "was not paused"
        self.get_logger().info(response.message)
        return response

    def _log_result(self, success: bool, text: str) -> None:
        # separate call sites: rclpy refuses one call site logging at two severities
        if success:
            self.get_logger().info(text)
        else:
            self.get_logger().error(text)

    def _resolve_path(self, requested: str, default_param: str, service: str) -> str:
        """The checked target of a save request: confined to save_directory, no links, regular files only
        (ros/save_paths.py); SavePathError says why not."""
        return save_paths.prepare_save(requested, str(self.get_parameter(default_param).value),
                                       str(self.get_parameter("save_directory").value),
                                       bool(self.get_parameter("allow_absolute_save_paths").value), service)

    @_guarded
    def _srv_save_map(self, request: Any, response: Any) -> Any:
        from ttt3r_ros.engine import exports

        try:
            path = self._resolve_path(request.path, "default_map_path", "save_map")
            response.path = path
            # every frame processed so far is in the file: the map thread finishes what it was handed first
            mapper = self._multi.mapper if self._multi is not None else self._mapper
            if mapper is not None and not mapper.wait_caught_up(timeout_s=session_io.MAP_DRAIN_TIMEOUT_S):
                self._log_throttled("warn", f"save_map: the map thread was still busy after "
                                            f"{session_io.MAP_DRAIN_TIMEOUT_S:.0f} s; the file may lack the "
                                            "newest frames")
            with self._engine_lock:
                if self._session is None:
                    raise RuntimeError("node is not configured")
                processed = (self._multi.has_processed() if self._multi is not None
                             else self._engine is not None and bool(self._engine_camera_frame))
                if not processed:
                    raise RuntimeError("no frame processed yet: the map is empty")
                with self._map_lock:
                    pts, cols, confs = self._map_in_odom()   # same frame as map_points
            exports.write_ply(path, pts, cols, confs)
            response.success = True
            response.message = f"wrote {len(pts)} points (frame {self._p['odom_frame']}) to {path}"
        except Exception as exc:
            response.success = False
            response.message = f"save_map failed: {type(exc).__name__}: {exc}"
        self._log_result(response.success, response.message)
        return response

    @_guarded
    def _srv_save_trajectory(self, request: Any, response: Any) -> Any:
        from ttt3r_ros.engine import exports

        try:
            path = self._resolve_path(request.path, "default_trajectory_path", "save_trajectory")
            response.path = path
            with self._state_lock:
                trajectory = self._odometry.trajectory
                stamps_s, poses, dropped = trajectory.timestamps(), trajectory.poses(), trajectory.dropped
            exports.write_tum(path, stamps_s, poses)
            response.success = True
            response.message = (f"wrote {len(stamps_s)} poses of {self._p['base_frame']} in {self._p['odom_frame']} "
                                f"(TUM) to {path}")
            if dropped:
                response.message += (f"; the {dropped} oldest pose(s) since the last reset were dropped "
                                     f"(trajectory_max_poses {trajectory.max_poses})")
        except Exception as exc:
            response.success = False
            response.message = f"save_trajectory failed: {type(exc).__name__}: {exc}"
        self._log_result(response.success, response.message)
        return response


    @_guarded
    def _srv_save_session(self, request: Any, response: Any) -> Any:
        """The whole live session (engine, map, odometry, camera lock) to one snapshot file (ros/session_io.py)."""
        response.success, response.message, response.path = session_io.save_session(self, request.path)
        self._log_result(response.success, response.message)
        return response


def main(args: list[str] | None = None, node_factory: Callable[[], "Ttt3rNode"] | None = None) -> int:
    """Run the node until SIGINT, SIGTERM or SIGHUP. node_factory: makes the node (tests inject a subclass)."""
    # SIGINT, SIGTERM and SIGHUP shut the context down (spin ends, cleanup below, status 0); rclpy's own handlers
    # are off: its SIGINT chained to a KeyboardInterrupt that could end the process by the signal (ros/startup.py)
    rclpy.init(args=args if args is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    stop_requested = threading.Event()
    startup.route_signals(stop_requested)
    node = (node_factory or Ttt3rNode)()
    # 4 threads: image callbacks (may block on back-pressure), services/timers/camera_info (two at once: a
    # configure waiting for camera_info), lifecycle and parameter services
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    # a second node under a name already in the graph logs an error and ends with status 1 (ros/name_guard.py)
    # (it asks for the same orderly stop as a signal: the intake thread must end before the context shuts down)
    name_guard = name_guard_module.DuplicateNameGuard(node, stop_requested.set, is_running=rclpy.ok).start()
    autostart: threading.Thread | None = None
    try:
        if node.get_parameter("autostart").value:
            # configure (weights, warm-up) off the executor thread: services and parameters answer meanwhile
            autostart = threading.Thread(target=_autostart, args=(node,), name="ttt3r_autostart", daemon=True)
            autostart.start()
            # services start answering only once the state is "configuring": an "unconfigured" answer then means
            # that autostart's configure failed, never that it has not begun
            node.configure_started.wait(timeout=30.0)
        startup.spin_until_shutdown(executor, rclpy.ok, stop_requested)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if stop_requested.is_set():
            node.get_logger().info("stopping: shutting down the intake, then the model")
        _shut_down(node)
        if autostart is not None and autostart.is_alive():
            # a signal (or the duplicate-name guard, within seconds of start) mid-configure: let the load finish
            # before the model is freed and the interpreter exits (exiting under a model load aborted the process:
            # "terminate called without an active exception"); with the context down, configure fails quickly
            autostart.join(timeout=AUTOSTART_EXIT_WAIT_S)
        node._stop_input()
        node._destroy_outputs()
        node._free_model()
        executor.shutdown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown()
    return 1 if name_guard.found or node.exit_status else 0


def _shut_down(node: Ttt3rNode | None) -> None:
    """The end of the spin (a signal, or the context shut down elsewhere): the intake thread ends first (the context
    must not shut down under its rcl wait), then the context, so a configure still loading fails fast."""
    intake = node._intake if node is not None else None
    if intake is not None:
        intake.stop()
    if node is not None and node._multi is not None:
        node._multi.stop_intakes()
    rclpy.try_shutdown()


def _autostart(node: Ttt3rNode) -> None:
    try:
        if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            node.trigger_activate()
            return
    except Exception as exc:   # e.g. the context shut down (SIGINT) during the load
        if rclpy.ok():
            node.get_logger().error(f"autostart failed: {type(exc).__name__}: {exc}")
        return
    if rclpy.ok():
        name = node.get_fully_qualified_name()
        node.get_logger().error(
            f"autostart: configure failed; the node stays unconfigured. Fix the parameters "
            f"(e.g. ros2 param set {name} weights /path/model.safetensors), then "
            f"ros2 lifecycle set {name} configure")


if __name__ == "__main__":
    sys.exit(main())
