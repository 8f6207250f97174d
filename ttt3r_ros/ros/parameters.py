"""Every parameter of ttt3r_node: declared with a ParameterDescriptor (description, range, constraints) and
validated.

The session's settings (model, map, frames, odometry uncertainty) are declared from the one table of defaults,
``ttt3r_ros.session.settings.SessionConfig``; this module adds only the node's own parameters (input, QoS, TF,
services, autostart). config/live.yaml mirrors the declared defaults (a test checks they agree). Three kinds:
- live: read per frame or per call, may change at any time (`ros2 param set`);
- configure-time (the default): they shape the model, the subscriptions or the frame tree, which are built at
  configure/activate. They may be set while the node is unconfigured (e.g. after a failed configure: fix
  `weights`, then configure again) and are refused while it is configured, because a live change would leave
  the node half in one configuration and half in another;
- start-only (`autostart`, `exit_on_configure_failure`): read once at process start, declared read-only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter

from ttt3r_ros.ros import save_paths
from ttt3r_ros.session import settings


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    live: bool = False          # may change at any time
    start_only: bool = False    # read once at process start: read-only
    min_value: float | int | None = None
    max_value: float | int | None = None
    choices: tuple[str, ...] = field(default_factory=tuple)

    def descriptor(self) -> ParameterDescriptor:
        d = ParameterDescriptor(name=self.name, description=self.description, read_only=self.start_only)
        constraints = []
        if self.configure_time:
            constraints.append(CONFIGURE_TIME_NOTE)
        if self.choices:
            constraints.append("one of: " + ", ".join(self.choices))
        if self.min_value is not None:
            if isinstance(self.default, bool):
                pass
            elif isinstance(self.default, int):
                d.integer_range = [IntegerRange(from_value=int(self.min_value), to_value=int(self.max_value), step=0)]
            elif isinstance(self.default, float):
                d.floating_point_range = [FloatingPointRange(from_value=float(self.min_value),
                                                             to_value=float(self.max_value), step=0.0)]
        d.additional_constraints = "; ".join(constraints)
        return d

    @property
    def configure_time(self) -> bool:
        return not (self.live or self.start_only)


CONFIGURE_TIME_NOTE = "read at configure: can be set only while the node is unconfigured"


def _session_setting(name: str) -> ParamSpec:
    """A node parameter that is a session setting: name, default, description, range, choices and live flag all
    come from the session's table (ttt3r_ros.session.settings)."""
    info = settings.setting_info(name)
    return ParamSpec(name, settings.default_of(name), info.description, live=info.live, min_value=info.min_value,
                     max_value=info.max_value, choices=info.choices)


PARAMETERS: tuple[ParamSpec, ...] = (
    # --- model (read at configure) ---
    _session_setting("weights"),
    _session_setting("model_config"),
    _session_setting("update_rule"),
    _session_setting("device"),
    _session_setting("precision"),
    _session_setting("image_size"),
    _session_setting("reset_interval"),
    _session_setting("warmup_frames"),
    ParamSpec("warmup_image_width", 0, "width of the frames the warm-up runs at configure (the camera's: a CUDA "
              "graph is captured per input size); 0 = from the first camera_info within "
              "warmup_camera_info_wait_s, else 4:3 at image_size", min_value=0, max_value=100_000),
    ParamSpec("warmup_image_height", 0, "height of the warm-up frames (see warmup_image_width)", min_value=0,
              max_value=100_000),
    ParamSpec("warmup_camera_info_wait_s", 2.0, "how long configure waits for a camera_info to learn the camera's "
              "size for the warm-up when warmup_image_width/height are 0 (0 = do not wait)", min_value=0.0,
              max_value=600.0),
    ParamSpec("resume_session", "", "session snapshot (~/save_session) to continue at configure: odometry, map, "
              "recurrent state and camera lock come back; relative paths resolve in save_directory; a snapshot made "
              "with another model, weights, update rule, precision or image size fails configure; empty = start "
              "fresh"),
    ParamSpec("compile_cache_dir", "", "folder of the torch.compile/Triton kernel cache (kept across runs); empty = "
              "$TORCHINDUCTOR_CACHE_DIR when set, else $XDG_CACHE_HOME/ttt3r_ros/compile_cache "
              "(~/.cache/ttt3r_ros/compile_cache)"),
    # --- input (read at activate) ---
    ParamSpec("image_transport", "raw", "subscribe to `image` (raw) or `image/compressed` (jpeg/png)",
              choices=("raw", "compressed")),
    ParamSpec("input_qos", "sensor_data", "QoS of the image and camera_info subscriptions "
              "(sensor_data = best effort, keep last; reliable for reliable-only publishers)",
              choices=("sensor_data", "reliable", "best_effort", "system_default")),
    ParamSpec("input_qos_depth", 5, "history depth of the input subscriptions", min_value=1, max_value=1000),
    ParamSpec("use_camera_info", True, "use calibrated intrinsics from `camera_info` when K[0] != 0"),
    ParamSpec("input_timeout_s", 5.0, "diagnostics warn when no image arrived for this long while active",
              live=True, min_value=0.1, max_value=3600.0),
    ParamSpec("process_all_frames", False, "false: keep only the newest frame while busy (live, drops counted); "
              "true: process every frame in order through a bounded queue (bag replay; back-pressure)"),
    ParamSpec("queue_size", 30, "bound of the in-order queue when process_all_frames is true", min_value=1,
              max_value=10_000),
    _session_setting("max_image_pixels"),
    # --- frames ---
    _session_setting("odom_frame"),
    _session_setting("base_frame"),
    _session_setting("camera_frame"),
    ParamSpec("cameras", [], "several cameras, one model: camera names (the first is the primary: odometry, TF, "
              "path and status come from it); per camera c the inputs c/image (or c/image/compressed) and "
              "c/camera_info and the outputs c/points, c/depth/image, c/depth/camera_info, c/confidence/image; "
              "map_points holds every camera's points. Each camera's mount base_frame -> its optical frame must be "
              "in TF. Empty = one camera on image/camera_info (the single-camera node)"),
    ParamSpec("camera_frames", [], "with `cameras`: each camera's optical frame, in the same order (empty = each "
              "image's header.frame_id)"),
    ParamSpec("camera_is_base", False, "true: the camera is the robot body (no base->camera transform in TF); "
              "base_frame then sits at the camera with REP 103 axes"),
    ParamSpec("extrinsic_timeout_s", 10.0, "warn (throttled) while base->camera is missing from TF for longer "
              "than this; frames are not processed until it appears", min_value=0.0, max_value=3600.0),
    # --- outputs ---
    ParamSpec("publish_tf", True, "broadcast odom_frame -> base_frame on /tf", live=True),
    ParamSpec("invert_tf", False, "broadcast base_frame -> odom_frame instead (one-parent rule with another "
              "odometry source owning the tree)", live=True),
    _session_setting("confidence_threshold"),
    _session_setting("path_max_length"),
    _session_setting("trajectory_max_poses"),
    ParamSpec("path_publish_period_s", 1.0, "period of `path` (only while subscribed; the whole path is one "
              "message, so it is not sent per frame)", min_value=0.01, max_value=3600.0),
    ParamSpec("map_publish_period_s", 1.0, "period of `map_points` (only while subscribed)",
              min_value=0.05, max_value=3600.0),
    _session_setting("voxel_size_m"),
    _session_setting("map_max_points"),
    _session_setting("tracking_degraded_fraction"),
    _session_setting("tracking_lost_fraction"),
    _session_setting("position_variance_m2"),
    _session_setting("rotation_variance_rad2"),
    _session_setting("translation_noise_m_per_sqrt_m"),
    _session_setting("rotation_noise_rad_per_sqrt_rad"),
    ParamSpec("default_map_path", "ttt3r_map.ply", "save_map target when the request path is empty",
              live=True),
    ParamSpec("default_trajectory_path", "ttt3r_trajectory.tum", "save_trajectory target when the request "
              "path is empty", live=True),
    ParamSpec("default_session_path", "ttt3r_session.safetensors", "save_session target when the request path is "
              "empty", live=True),
    ParamSpec("save_directory", save_paths.DEFAULT_SAVE_DIRECTORY, "folder that ~/save_map and ~/save_trajectory "
              "write into (relative paths resolve inside it; created on the first save; ~ is expanded here only)",
              start_only=True),
    ParamSpec("allow_absolute_save_paths", False, "let ~/save_map and ~/save_trajectory write to absolute paths "
              "outside save_directory (any DDS participant can call them: keep false unless SROS2 guards them)",
              start_only=True),
    ParamSpec("autostart", True, "configure and activate by itself at start (no lifecycle manager needed)",
              start_only=True),
    ParamSpec("exit_on_configure_failure", False, "a failed configure ends the process with exit status 1 (for "
              "launch respawn, systemd, containers); false: the node stays alive and unconfigured, reporting the "
              "reason on /diagnostics", start_only=True),
)

SPECS: dict[str, ParamSpec] = {p.name: p for p in PARAMETERS}
_CAMERA_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_SESSION_SETTINGS = frozenset(settings.setting_names())


def validate_value(name: str, value: Any) -> str | None:
    """Message explaining why `value` is not acceptable for `name`, or None."""
    spec = SPECS.get(name)
    if spec is None:
        return None
    if name in _SESSION_SETTINGS:
        return settings.validate_value(name, value)
    if name in ("default_map_path", "default_trajectory_path", "default_session_path"):
        problem = save_paths.path_text_problem(str(value))
        if problem:
            return f"{name}={value!r}: {problem}"
    if name == "save_directory" and not str(value).strip():
        return "save_directory must not be empty"
    if name == "cameras":
        names = list(value or [])
        bad = [c for c in names if not _CAMERA_NAME.fullmatch(str(c))]
        if bad:
            return (f"cameras: {bad} are not usable as topic namespaces (letters, digits and '_', starting with a "
                    "letter)")
        if len(set(names)) != len(names):
            return f"cameras: names must be distinct, got {names}"
    if spec.choices and value not in spec.choices:
        return f"{name}={value!r} is not one of {', '.join(spec.choices)}"
    if isinstance(spec.default, (int, float)) and not isinstance(spec.default, bool) and spec.min_value is not None:
        if not (spec.min_value <= value <= spec.max_value):
            return f"{name}={value} outside [{spec.min_value}, {spec.max_value}]"
    return None


def declare_parameters(node: Node) -> None:
    """Declare every parameter with its default and descriptor."""
    for spec in PARAMETERS:
        if isinstance(spec.default, list):
            # a string array: rclpy would type an empty default as a byte array, and a params file's `[]` is no
            # value at all, so declare the type and give the default only when nothing set it
            node.declare_parameter(spec.name, Parameter.Type.STRING_ARRAY, spec.descriptor())
            if node.get_parameter_or(spec.name, None).value is None:
                node.set_parameters([Parameter(spec.name, Parameter.Type.STRING_ARRAY, list(spec.default))])
        else:
            node.declare_parameter(spec.name, spec.default, spec.descriptor())


def validate_node_parameters(node: Node) -> list[str]:
    """Errors over the current values (ranges are also enforced by rclpy through the descriptors)."""
    errors = []
    for spec in PARAMETERS:
        msg = validate_value(spec.name, node.get_parameter(spec.name).value)
        if msg:
            errors.append(msg)
    current = values(node)
    cameras, frames = list(current["cameras"] or []), list(current["camera_frames"] or [])
    if frames and len(frames) != len(cameras):
        errors.append(f"camera_frames has {len(frames)} entries for {len(cameras)} cameras (give one per camera, "
                      "or none to use each image's frame_id)")
    return errors + settings.cross_field_problems(current)


def on_set_parameters_callback(is_configured: Callable[[], bool],
                               current_values: Callable[[], dict[str, Any]] | None = None,
                               ) -> Callable[[list[Parameter]], SetParametersResult]:
    """Validation of `ros2 param set` (start-only and ranges are enforced by rclpy before this runs);
    configure-time parameters are refused while `is_configured()`. With `current_values` (the node's values now),
    the rules that tie settings together (e.g. tracking_lost_fraction <= tracking_degraded_fraction) are checked
    against the values the change would leave, so a change that would break the next configure is refused now."""
    def check(params: list[Parameter]) -> SetParametersResult:
        for p in params:
            spec = SPECS.get(p.name)
            if spec is not None and spec.configure_time and is_configured():
                return SetParametersResult(successful=False, reason=(
                    f"{p.name} is {CONFIGURE_TIME_NOTE}; deactivate and clean up the node (lifecycle), set it, "
                    "then configure again"))
            msg = validate_value(p.name, p.value)
            if msg:
                return SetParametersResult(successful=False, reason=msg)
        if current_values is not None:
            after = {**current_values(), **{p.name: p.value for p in params}}
            problems = settings.cross_field_problems(after)
            if problems:
                return SetParametersResult(successful=False, reason="; ".join(problems))
        return SetParametersResult(successful=True)
    return check


def values(node: Node) -> dict[str, Any]:
    """Current value of every declared parameter, by name."""
    return {spec.name: node.get_parameter(spec.name).value for spec in PARAMETERS}
