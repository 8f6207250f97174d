"""The one table of defaults: every setting a session owns, with its description, range, choices and whether it
may change while running.

`SessionConfig` is that table. The front ends derive from it instead of repeating it:
- `ttt3r_ros.ros.parameters` declares a node parameter for every setting with `node_parameter=True` (same name,
  default, description, range, choices, live flag) and adds only the node's own parameters (input, QoS, TF,
  services);
- `ttt3r-ros map` takes its flags' defaults and help from here (the flag names are the map command's);
- config/live.yaml and the launch files' argument defaults are checked against it by tests.

Where the front ends differ on purpose, the table holds the node's value and says so: `camera_frame` is empty
live (the image's header.frame_id names the camera), while offline images carry no frame id, so the map command
names the frame `OFFLINE_CAMERA_FRAME`.

No torch here: the node's parameter module imports this table before any model exists.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

# The official checkpoint's model preset (ttt3r_ros.model.config.PRESETS holds its sizes).
DEFAULT_MODEL_CONFIG = "cut3r_512_dpt_4_64"
# Offline images have no header.frame_id: the map command's result bag calls the camera's optical frame this.
OFFLINE_CAMERA_FRAME = "camera_optical_frame"
# The names of ttt3r_ros.model.fast.PRECISION_NAMES (that module owns the dtype table; importing it here would load
# torch into every parameter declaration). test_session_settings.py checks the two agree.
PRECISION_CHOICES: tuple[str, ...] = ("auto", "fp32", "fp16", "bf16", "bf16-fp32state", "fp16-fp32state")
# The model's patch size: the input long side is cut into patches of this many pixels.
PATCH_SIZE_PX = 16
# The smallest image_size a session accepts: the engine needs one patch on each side of the crop; at one patch
# (16) any non-square frame (the 4:3 warm-up frame, every
# camera) leaves a short side below one patch and every frame fails; two patches keep 16:9 and 4:3 frames runnable.
MIN_RUNNABLE_IMAGE_SIZE_PX = 2 * PATCH_SIZE_PX
# 8K UHD: generous for real cameras; a decoded 8K RGB frame is ~100 MB, a 20000x20000 one 1.2 GB
MAX_IMAGE_PIXELS_8K = 7680 * 4320
DEVICE_HELP = "auto (cuda if available, else cpu; the choice is logged), cpu, cuda or cuda:N"


@dataclass(frozen=True)
class SettingInfo:
    """Metadata of one setting. `live`: may change while running (read per frame); otherwise read when the session
    is opened (the node: at configure). `node_parameter`: declared by the node under the same name."""
    description: str
    min_value: float | int | None = None
    max_value: float | int | None = None
    choices: tuple[str, ...] = ()
    live: bool = False
    node_parameter: bool = True


def _setting(default: Any, description: str, *, min_value: float | int | None = None,
             max_value: float | int | None = None, choices: tuple[str, ...] = (), live: bool = False,
             node_parameter: bool = True) -> Any:
    info = SettingInfo(description, min_value, max_value, choices, live, node_parameter)
    return field(default=default, metadata={"setting": info})


@dataclass(frozen=True)
class SessionConfig:
    """Every setting of a session, with its default. Build one with keyword arguments (unknown names are a
    TypeError) or `SessionConfig.from_values(mapping)` (ignores names that are not settings)."""
    # --- model (read when the session is opened) ---
    weights: str = _setting(
        "", "checkpoint (.safetensors or official .pth); 'random' = deterministic random initialisation for smoke "
        "tests (meaningless output, logged as a warning)")
    model_config: str = _setting(DEFAULT_MODEL_CONFIG, "model preset name or path to a JSON config")
    update_rule: str = _setting("ttt3r", "recurrent state update rule (ttt3r = confidence-gated, cut3r = full)")
    device: str = _setting("auto", DEVICE_HELP)
    precision: str = _setting(
        "auto", "inference precision: auto = the CUDA default of ttt3r_ros.model.fast (the fast path) on CUDA, fp32 "
        "on CPU; fp32 = the parity path; bf16/fp16 cast the whole model once; *-fp32state keep the residual stream "
        "and the recurrent state in float32 (drift and speed: docs/speed_notes.md)",
        choices=PRECISION_CHOICES)
    image_size: int = _setting(512, "model input long side in pixels (multiple of 16)", min_value=MIN_RUNNABLE_IMAGE_SIZE_PX,
                               max_value=4096)
    reset_interval: int = _setting(0, "reset the recurrent state every N frames (0 = never)", min_value=0,
                                   max_value=1_000_000)
    warmup_frames: int = _setting(1, "synthetic frames run at configure to warm up kernels (state reset after)",
                                  min_value=0, max_value=20)
    # The node always builds random weights with this default (it has no parameter for it).
    seed: int = _setting(0, "seed of the random weights (--random-weights / weights 'random')", min_value=0,
                         max_value=2**31 - 1, node_parameter=False)
    # --- input ---
    max_image_pixels: int = _setting(
        MAX_IMAGE_PIXELS_8K, "input images with more pixels than this are refused before decoding (read from the "
        "Image message's size or the PNG/JPEG header), counted in frames_rejected; default: 8K UHD (7680x4320)",
        live=True, min_value=1, max_value=2**31 - 1)
    # --- map and outputs ---
    confidence_threshold: float = _setting(
        3.0, "points/depth below this self-view confidence become NaN (conf >= 1); also the tracking-state "
        "measure. The map keeps the value it had at the first frame", live=True, min_value=1.0, max_value=1e6)
    voxel_size_m: float = _setting(0.02, "voxel edge of the accumulated map (model units; metres up to scale)",
                                   min_value=1e-5, max_value=100.0)
    map_max_points: int = _setting(2_000_000, "bound of the accumulated map", min_value=1, max_value=100_000_000)
    # --- frames ---
    odom_frame: str = _setting("odom", "odometry frame (REP 105; continuous, drifts)")
    base_frame: str = _setting("base_link", "robot body frame (REP 103: x forward, z up)")
    camera_frame: str = _setting("", "camera optical frame; empty = the image's header.frame_id")
    path_max_length: int = _setting(1024, "poses kept in `path`", min_value=1, max_value=1_000_000)
    trajectory_max_poses: int = _setting(
        1_000_000, "poses kept for ~/save_trajectory (104 bytes each: the default ~104 MB, 9 h at 30 Hz); past it "
        "the oldest are dropped", min_value=1, max_value=100_000_000)
    # --- odometry uncertainty and tracking state (session/odometry.py) ---
    tracking_degraded_fraction: float = _setting(
        0.3, "confident-pixel fraction below which tracking is DEGRADED", live=True, min_value=0.0, max_value=1.0)
    tracking_lost_fraction: float = _setting(
        0.05, "confident-pixel fraction below which tracking is LOST", live=True, min_value=0.0, max_value=1.0)
    position_variance_m2: float = _setting(
        1e-4, "pose position variance at the odometry origin (m^2); it grows from there with the distance "
        "travelled (translation_noise_m_per_sqrt_m); 9999 while tracking is lost", live=True, min_value=1e-9,
        max_value=1e6)
    rotation_variance_rad2: float = _setting(
        1e-4, "pose rotation variance at the odometry origin (rad^2); it grows from there with the angle turned "
        "(rotation_noise_rad_per_sqrt_rad)", live=True, min_value=1e-9, max_value=1e6)
    translation_noise_m_per_sqrt_m: float = _setting(
        0.03, "random-walk position drift: sigma grows by this many metres per sqrt(metre) travelled (0.03: 3 cm "
        "after 1 m, 30 cm after 100 m), per frame divided by the confident fraction; also sets the twist "
        "covariance (one frame's increment / dt)", live=True, min_value=0.0, max_value=10.0)
    rotation_noise_rad_per_sqrt_rad: float = _setting(
        0.03, "random-walk rotation drift: sigma grows by this many radians per sqrt(radian) turned", live=True,
        min_value=0.0, max_value=10.0)

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "SessionConfig":
        """The settings among `values` (e.g. all node parameters); other names are ignored."""
        names = set(setting_names())
        return cls(**{k: v for k, v in values.items() if k in names})

    def validate(self) -> list[str]:
        """Readable problems with these values (empty when the configuration can be opened)."""
        problems = [p for name in setting_names() if (p := validate_value(name, getattr(self, name)))]
        return problems + cross_field_problems(dataclasses.asdict(self))


def setting_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(SessionConfig))


def setting_info(name: str) -> SettingInfo:
    for f in dataclasses.fields(SessionConfig):
        if f.name == name:
            return f.metadata["setting"]
    raise KeyError(f"{name!r} is not a session setting")


def default_of(name: str) -> Any:
    for f in dataclasses.fields(SessionConfig):
        if f.name == name:
            return f.default
    raise KeyError(f"{name!r} is not a session setting")


def update_rule_names() -> tuple[str, ...]:
    """The model's registry of update rules (imported on demand: it loads torch)."""
    from ..model.update_rules import UPDATE_RULES

    return tuple(UPDATE_RULES)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_value(name: str, value: Any) -> str | None:
    """Why `value` is not acceptable for setting `name`, or None."""
    info = setting_info(name)
    default = default_of(name)
    if _is_number(default) and not _is_number(value):
        return f"{name}={value!r} is not a number"
    if info.choices and value not in info.choices:
        return f"{name}={value!r} is not one of {', '.join(info.choices)}"
    if name == "image_size" and value < MIN_RUNNABLE_IMAGE_SIZE_PX:
        return (f"image_size={value} outside [{info.min_value}, {info.max_value}]: the model cannot run it (a 4:3 "
                f"frame at {value} px leaves a short side below one {PATCH_SIZE_PX} px patch)")
    if _is_number(default) and info.min_value is not None and not (info.min_value <= value <= info.max_value):
        return f"{name}={value} outside [{info.min_value}, {info.max_value}]"
    if name == "device":
        text = str(value)
        if not (text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit())):
            return f"device={text!r}: expected {DEVICE_HELP}"
    if name == "update_rule":
        rules = update_rule_names()
        if value not in rules:
            return f"update_rule={value!r} is not one of {', '.join(rules)}"
    if name == "model_config":
        from ..model.config import ConfigError, load_model_config   # no torch: presets and the JSON reader

        try:
            load_model_config(str(value))
        except (ConfigError, OSError, ValueError) as err:
            return f"model_config={value!r}: {err}"
    if name == "image_size" and int(value) % PATCH_SIZE_PX:
        return f"image_size={value} must be a multiple of {PATCH_SIZE_PX} (the patch size)"
    if name in ("odom_frame", "base_frame") and not str(value).strip("/"):
        return f"{name} must not be empty"
    return None


def cross_field_problems(values: Mapping[str, Any]) -> list[str]:
    """Rules that tie settings together (values: at least the settings named below)."""
    problems = []
    lost, degraded = values["tracking_lost_fraction"], values["tracking_degraded_fraction"]
    if lost > degraded:
        problems.append(f"tracking_lost_fraction ({lost}) must be <= tracking_degraded_fraction ({degraded})")
    return problems


DEFAULTS = SessionConfig()
