"""Every parameter of ttt3r_node: declared with a ParameterDescriptor (description, range, constraints) and
validated.

config/live.yaml mirrors the defaults below (a test checks they agree). Three kinds:
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

from ttt3r_ros.offline import odometry


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


_DEVICE_HELP = "auto (cuda if available, else cpu; the choice is logged), cpu, cuda or cuda:N"

PARAMETERS: tuple[ParamSpec, ...] = (
    # --- model (read at configure) ---
    ParamSpec("weights", "", "checkpoint (.safetensors or official .pth); 'random' = deterministic random "
              "initialisation for smoke tests (meaningless output, logged as a warning)"),
    ParamSpec("model_config", "cut3r_512_dpt_4_64", "model preset name or path to a JSON config"),
    ParamSpec("update_rule", "ttt3r", "recurrent state update rule (ttt3r = confidence-gated, cut3r = full)"),
    ParamSpec("device", "auto", _DEVICE_HELP),
    ParamSpec("precision", "auto", "inference precision: auto = bf16 on CUDA (the fast path), fp32 on CPU; fp32 = "
              "the parity path; bf16/fp16 cast the whole model once (fp16 drifts less from fp32 at the same "
              "speed, docs/speed_notes.md)", choices=("auto", "fp32", "fp16", "bf16")),
    ParamSpec("image_size", 512, "model input long side in pixels (multiple of 16)", min_value=16, max_value=4096),
    ParamSpec("reset_interval", 0, "reset the recurrent state every N frames (0 = never)", min_value=0,
              max_value=1_000_000),
    ParamSpec("warmup_frames", 1, "synthetic frames run at configure to warm up kernels (state reset after)",
              min_value=0, max_value=20),
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
    ParamSpec("odom_frame", "odom", "odometry frame (REP 105; continuous, drifts)"),
    ParamSpec("base_frame", "base_link", "robot body frame (REP 103: x forward, z up)"),
    ParamSpec("camera_frame", "", "camera optical frame; empty = the image's header.frame_id"),
    ParamSpec("camera_is_base", False, "true: the camera is the robot body (no base->camera transform in TF); "
              "base_frame then sits at the camera with REP 103 axes"),
    ParamSpec("extrinsic_timeout_s", 10.0, "warn (throttled) while base->camera is missing from TF for longer "
              "than this; frames are not processed until it appears", min_value=0.0, max_value=3600.0),
    # --- outputs ---
    ParamSpec("publish_tf", True, "broadcast odom_frame -> base_frame on /tf", live=True),
    ParamSpec("invert_tf", False, "broadcast base_frame -> odom_frame instead (one-parent rule with another "
              "odometry source owning the tree)", live=True),
    ParamSpec("confidence_threshold", 3.0, "points/depth below this self-view confidence become NaN (conf >= 1); "
              "also the tracking-state measure. The map keeps the value it had at the first frame",
              live=True, min_value=1.0, max_value=1e6),
    ParamSpec("path_max_length", 1024, "poses kept in `path`", min_value=1, max_value=1_000_000),
    ParamSpec("map_publish_period_s", 1.0, "period of `map_points` (only while subscribed)",
              min_value=0.05, max_value=3600.0),
    ParamSpec("voxel_size_m", 0.02, "voxel edge of the accumulated map (model units; metres up to scale)",
              min_value=1e-5, max_value=100.0),
    ParamSpec("map_max_points", 2_000_000, "bound of the accumulated map", min_value=1, max_value=100_000_000),
    ParamSpec("tracking_degraded_fraction", odometry.TRACKING_DEGRADED_FRACTION,
              "confident-pixel fraction below which tracking is DEGRADED",
              live=True, min_value=0.0, max_value=1.0),
    ParamSpec("tracking_lost_fraction", odometry.TRACKING_LOST_FRACTION,
              "confident-pixel fraction below which tracking is LOST",
              live=True, min_value=0.0, max_value=1.0),
    ParamSpec("position_variance_m2", odometry.POSITION_VARIANCE_M2,
              "pose position variance per frame at full confidence (grows as "
              "1/confident fraction; 9999 when lost)", live=True, min_value=1e-9, max_value=1e6),
    ParamSpec("rotation_variance_rad2", odometry.ROTATION_VARIANCE_RAD2,
              "pose rotation variance at full confidence", live=True,
              min_value=1e-9, max_value=1e6),
    ParamSpec("default_map_path", "ttt3r_map.ply", "save_map target when the request path is empty",
              live=True),
    ParamSpec("default_trajectory_path", "ttt3r_trajectory.tum", "save_trajectory target when the request "
              "path is empty", live=True),
    ParamSpec("autostart", True, "configure and activate by itself at start (no lifecycle manager needed)",
              start_only=True),
)

SPECS: dict[str, ParamSpec] = {p.name: p for p in PARAMETERS}


def validate_value(name: str, value: Any) -> str | None:
    """Message explaining why `value` is not acceptable for `name`, or None."""
    spec = SPECS.get(name)
    if spec is None:
        return None
    if spec.choices and value not in spec.choices:
        return f"{name}={value!r} is not one of {', '.join(spec.choices)}"
    if name == "device":
        v = str(value)
        if not (v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit())):
            return f"device={v!r}: expected {_DEVICE_HELP}"
    if name == "image_size" and int(value) % 16:
        return f"image_size={value} must be a multiple of 16 (the patch size)"
    if name in ("odom_frame", "base_frame") and not str(value).strip("/"):
        return f"{name} must not be empty"
    if isinstance(spec.default, (int, float)) and not isinstance(spec.default, bool) and spec.min_value is not None:
        if not (spec.min_value <= value <= spec.max_value):
            return f"{name}={value} outside [{spec.min_value}, {spec.max_value}]"
    return None


def declare_parameters(node: Node) -> None:
    for spec in PARAMETERS:
        node.declare_parameter(spec.name, spec.default, spec.descriptor())


def validate_node_parameters(node: Node) -> list[str]:
    """Errors over the current values (ranges are also enforced by rclpy through the descriptors)."""
    errors = []
    for spec in PARAMETERS:
        msg = validate_value(spec.name, node.get_parameter(spec.name).value)
        if msg:
            errors.append(msg)
    lost = node.get_parameter("tracking_lost_fraction").value
    degraded = node.get_parameter("tracking_degraded_fraction").value
    if lost > degraded:
        errors.append(f"tracking_lost_fraction ({lost}) must be <= tracking_degraded_fraction ({degraded})")
    return errors


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
    return {spec.name: node.get_parameter(spec.name).value for spec in PARAMETERS}
