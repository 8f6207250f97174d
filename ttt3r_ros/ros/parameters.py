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
- start-only (`autostart`): read once at process start, declared read-only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter

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
    # --- frames ---
    _session_setting("odom_frame"),
    _session_setting("base_frame"),
    _session_setting("camera_frame"),
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
    ParamSpec("map_publish_period_s", 1.0, "period of `map_points` (only while subscribed)",
              min_value=0.05, max_value=3600.0),
    _session_setting("voxel_size_m"),
    _session_setting("map_max_points"),
    _session_setting("tracking_degraded_fraction"),
    _session_setting("tracking_lost_fraction"),
    _session_setting("position_variance_m2"),
    _session_setting("rotation_variance_rad2"),
    ParamSpec("default_map_path", "ttt3r_map.ply", "save_map target when the request path is empty",
              live=True),
    ParamSpec("default_trajectory_path", "ttt3r_trajectory.tum", "save_trajectory target when the request "
              "path is empty", live=True),
    ParamSpec("autostart", True, "configure and activate by itself at start (no lifecycle manager needed)",
              start_only=True),
)

SPECS: dict[str, ParamSpec] = {p.name: p for p in PARAMETERS}
_SESSION_SETTINGS = frozenset(settings.setting_names())


def validate_value(name: str, value: Any) -> str | None:
    """Message explaining why `value` is not acceptable for `name`, or None."""
    spec = SPECS.get(name)
    if spec is None:
        return None
    if name in _SESSION_SETTINGS:
        return settings.validate_value(name, value)
    if spec.choices and value not in spec.choices:
        return f"{name}={value!r} is not one of {', '.join(spec.choices)}"
    if isinstance(spec.default, (int, float)) and not isinstance(spec.default, bool) and spec.min_value is not None:
        if not (spec.min_value <= value <= spec.max_value):
            return f"{name}={value} outside [{spec.min_value}, {spec.max_value}]"
    return None


def declare_parameters(node: Node) -> None:
    """Declare every parameter with its default and descriptor."""
    for spec in PARAMETERS:
        node.declare_parameter(spec.name, spec.default, spec.descriptor())


def validate_node_parameters(node: Node) -> list[str]:
    """Errors over the current values (ranges are also enforced by rclpy through the descriptors)."""
    errors = []
    for spec in PARAMETERS:
        msg = validate_value(spec.name, node.get_parameter(spec.name).value)
        if msg:
            errors.append(msg)
    return errors + settings.cross_field_problems(values(node))


def on_set_parameters_callback(is_configured: Callable[[], bool]) -> Callable[[list[Parameter]],
                                                                             SetParametersResult]:
    """Validation of `ros2 param set` (start-only and ranges are enforced by rclpy before this runs);
    configure-time parameters are refused while `is_configured()`."""
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
        return SetParametersResult(successful=True)
    return check


def values(node: Node) -> dict[str, Any]:
    """Current value of every declared parameter, by name."""
    return {spec.name: node.get_parameter(spec.name).value for spec in PARAMETERS}
