"""Opening a session: weights, device and precision resolved, the model built, engines made, all in one place.

The node (configure), `ttt3r-ros map`, `ttt3r-ros demo` and the bench's device choice call this instead of each
resolving things their own way.

No silent fallbacks: random (untrained) weights are only used when asked for by name ('random', or the offline
`--random-weights`), and the session's `label` then marks every output as a plumbing check.
"""
from __future__ import annotations

import gc
import logging
import os
import platform
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ..engine import BatchedReconstructor, StreamingReconstructor
from ..model.fast import overflow_fallback, precision_spec, resolve_precision
from .errors import SessionError
from .settings import SessionConfig

WEIGHTS_ENV = "TTT3R_WEIGHTS"
RANDOM_WEIGHTS = "random"   # the `weights` value that asks for deterministic random initialisation
PLUMBING_LABEL = "PLUMBING CHECK — untrained weights, numbers meaningless"


def checkpoint_help(weights_usage: str = "--weights PATH", environment: bool = True) -> str:
    """Where the checkpoint comes from (the model package's hint) and how to hand it over (`weights_usage`:
    the front end's way of giving it, e.g. the flag or the parameter)."""
    from ..model.checkpoint import WEIGHTS_HINT

    return f"{WEIGHTS_HINT}. Then pass it with {weights_usage}" + (f" or set {WEIGHTS_ENV}=PATH." if environment
                                                                    else ".")


@dataclass(frozen=True)
class WeightsChoice:
    path: Path | None      # None: random weights (plumbing check)
    source: str            # where the choice came from, e.g. "--weights", "$TTT3R_WEIGHTS", "parameter 'weights'"

    @property
    def is_random(self) -> bool:
        return self.path is None

    @property
    def label(self) -> str | None:
        return PLUMBING_LABEL if self.is_random else None


def resolve_weights(weights: str | None, random_weights: bool = False, *,
                    environment: Mapping[str, str] | None = None, source: str = "--weights",
                    weights_usage: str = "--weights PATH", random_usage: str = "--random-weights") -> WeightsChoice:
    """`weights` (a checkpoint path, or 'random'), else `environment[$TTT3R_WEIGHTS]` when an environment is given
    (the offline tools; the node passes none), else random weights only when `random_weights`, else SessionError.

    `source`, `weights_usage`, `random_usage`: how the front end names the option, for its error messages.
    """
    weights = (weights or "").strip()
    if weights == RANDOM_WEIGHTS:
        weights, random_weights = "", True
        source = f"random ({source} {RANDOM_WEIGHTS})"
    elif random_weights:
        source = f"random ({random_usage})"
    if weights and random_weights:
        raise SessionError(f"{weights_usage.split()[0]} and {random_usage} exclude each other")
    from_environment = environment.get(WEIGHTS_ENV, "") if environment is not None else ""
    if weights:
        path_text = weights
    elif from_environment and not random_weights:
        path_text, source = from_environment, f"${WEIGHTS_ENV}"
    elif random_weights:
        return WeightsChoice(None, source)
    else:
        where = f"{weights_usage}" + (f" or set {WEIGHTS_ENV}" if environment is not None else "")
        raise SessionError(
            f"no model weights: give a checkpoint (.safetensors or .pth) with {where}. "
            f"{checkpoint_help(weights_usage, environment is not None)} To check the pipeline without a "
            f"checkpoint, use {random_usage} (untrained weights, results meaningless; the model config 'tiny' "
            "makes it fast on a CPU).")
    path = Path(os.path.abspath(os.path.expanduser(path_text)))
    if not path.is_file():
        what = "is a folder, not a checkpoint file" if path.is_dir() else "not found"
        raise SessionError(f"checkpoint {what}: {path} (from {source}). "
                           f"{checkpoint_help(weights_usage, environment is not None)}")
    return WeightsChoice(path, source)


def resolve_device(name: str) -> torch.device:
    """'auto' = cuda when available, else cpu; an explicit CUDA device must be available (no silent fallback)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise SessionError(f"device {name!r} is not a torch device ({err})") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SessionError(f"device {name!r} requested but CUDA is not available here; use cpu")
    return device


def device_name(device: torch.device) -> str:
    """The device as users know it: the GPU's name, or the CPU's marketing name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # Linux
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def build_model(model_config: str, weights: WeightsChoice, device: torch.device, precision: str,
                seed: int) -> Any:
    """The model in eval mode in a resolved precision of ttt3r_ros.model.fast's table (weights, residual stream
    and heads dtypes, cast once, as `ttt3r-ros bench` measures it; fp32 stays the parity path); checkpoint and
    config problems become SessionError with the reason."""
    from ..model import ConfigError, build_model as build_network, load_model_config

    try:
        config = load_model_config(model_config)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        raise SessionError(f"model_config {model_config}: {err}") from err
    torch.manual_seed(seed)
    try:
        spec = precision_spec(precision)
        model = build_network(config, weights=weights.path, device=device, dtype=spec.weights, seed=seed,
                              head_dtype=spec.heads, stream_dtype=spec.stream)
    except FileNotFoundError as err:
        raise SessionError(str(err)) from err
    except Exception as err:
        if type(err).__name__ == "CheckpointError":
            raise SessionError(f"cannot load {weights.path} with model config {model_config}: {err}") from err
        raise
    model.eval()
    return model


@dataclass
class Session:
    """An opened session: the model on its device in its precision, and the settings it was opened with."""
    config: SessionConfig
    model: Any
    device: torch.device
    precision: str          # resolved name in ttt3r_ros.model.fast.PRECISIONS (fp32, bf16, fp16, ...)
    dtype: torch.dtype      # the weights' dtype
    weights: WeightsChoice
    # times the session switched to a safer precision after a non-finite frame (handle_invalid), for status
    precision_fallbacks: int = 0
    # the engines made by new_engine (weakly): a precision fallback moves them all to the new model
    _engines: Any = field(default_factory=weakref.WeakSet, repr=False, compare=False)

    @property
    def label(self) -> str | None:
        """The plumbing-check label when the weights are random (every output should carry it), else None."""
        return self.weights.label

    def new_engine(self, camera_to_base: np.ndarray | None = None, **engine_options: Any) -> StreamingReconstructor:
        """A fresh engine (clean state, empty map) on this session's model with the session's settings.
        camera_to_base: T_base_camera (None: the camera is the base, REP 103 axes). engine_options: further
        EngineConfig fields, or overrides of the session's (e.g. the live confidence_threshold)."""
        engine = StreamingReconstructor(self.model, **self._engine_options(camera_to_base=camera_to_base,
                                                                           **engine_options))
        self._engines.add(engine)
        return engine

    def new_batched_engine(self, num_streams: int, **engine_options: Any) -> BatchedReconstructor:
        """`num_streams` streams sharing this session's model (one model in memory; session/rig.py), each with a
        clean state, the session's settings as in `new_engine`; a precision fallback moves it too."""
        engine = BatchedReconstructor(self.model, num_streams, **self._engine_options(**engine_options))
        self._engines.add(engine)
        return engine

    def _engine_options(self, **overrides: Any) -> dict[str, Any]:
        """The EngineConfig fields this session's settings give, with `overrides` applied."""
        c = self.config
        options: dict[str, Any] = dict(update_rule=c.update_rule, reset_interval=c.reset_interval or None,
                                       size=c.image_size, confidence_threshold=c.confidence_threshold,
                                       voxel_size=c.voxel_size_m, map_max_points=c.map_max_points)
        options.update(overrides)
        return options

    def step(self, engine: StreamingReconstructor, image: Any, timestamp_s: float, intrinsics: Any = None,
             update_state: bool = True, log: Callable[[str], None] | None = None, camera_model: Any = None) -> Any:
        """`engine.step` with the overflow guard: an invalid result (`FrameResult.valid` False: do not publish it)
        goes through `handle_invalid`. `camera_model`: the calibrated camera (`engine.camera_model.CameraModel`,
        `session.camera_calibration`), undistorted before the model, instead of `intrinsics`."""
        result = engine.step(image, timestamp_s, intrinsics, update_state, camera_model=camera_model)
        if not result.valid:
            self.handle_invalid(result, log)
        return result

    def handle_invalid(self, result: Any, log: Callable[[str], None] | None = None) -> bool:
        """Call with a FrameResult whose `valid` is False (the network gave a non-finite pose, output or state; the
        engine already reset that stream, odometry continuing from the last good pose). In a float16 precision that
        is an overflow: the weights are loaded again from their source (the checkpoint, or the seed) in
        `overflow_fallback`'s precision, every engine of this session moves to that model (its streams restart as
        after a reset, odometry continuing) and `precision_fallbacks` counts it; `log` (default: this module's
        logger, warning) gets one line. Returns whether it switched; in other precisions nothing changes."""
        safe = overflow_fallback(self.precision, self.device)
        if safe is None:
            return False
        old = self.precision
        engines = list(self._engines)
        # free the old model (and the engines' graphs) before loading the new one: never two models resident
        for engine in engines:
            engine.replace_model(None)
        self.model = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.model = build_model(self.config.model_config, self.weights, self.device, safe, self.config.seed)
        self.precision, self.dtype = safe, precision_spec(safe).weights
        for engine in engines:
            engine.replace_model(self.model)
        self.precision_fallbacks += 1
        (log or logging.getLogger("ttt3r_ros.session").warning)(
            f"precision fallback: frame {result.index} (stream {result.stream}) gave non-finite values in {old} "
            f"(a float16 overflow); weights reloaded from {self.weights.path or f'seed {self.config.seed}'} in {safe}, the stream restarts as "
            f"after a reset (odometry continues); precision_fallbacks={self.precision_fallbacks}")
        return True

    def warm_up(self, frames: int, engine: StreamingReconstructor | None = None,
                frame_hw: tuple[int, int] | None = None) -> tuple[float, str]:
        """Run `frames` synthetic frames (validates the engine options now, captures graphs and compiles kernels
        before the first real frame). Returns (milliseconds, execution path).

        engine: warm this engine up and restart its stream afterwards (`reset(restart_odometry=True)`: clean state,
        empty map and trajectory), keeping its step runners, so that its graphs are the ones the live frames replay;
        None: a throwaway engine. frame_hw: (height, width) of the camera's frames (a CUDA graph is captured per input
        size); None: 3:4 at the model size."""
        warm_engine = self.new_engine() if engine is None else engine
        size = self.config.image_size
        height, width = frame_hw if frame_hw is not None else (size * 3 // 4, size)
        frame = np.random.default_rng(0).integers(0, 255, size=(int(height), int(width), 3), dtype=np.uint8)
        start_s = time.monotonic()
        for index in range(frames):
            warm_engine.step(frame, float(index))
        if engine is not None:
            engine.reset(restart_odometry=True)
        return (time.monotonic() - start_s) * 1e3, warm_engine.fast_path_status

    def close(self) -> None:
        """Drop the model; on CUDA give the cached memory back."""
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def open_session(config: SessionConfig, weights: WeightsChoice | None = None,
                 log: Callable[[str], None] | None = None) -> Session:
    """Validate `config`, resolve device and precision, build the model. `weights`: an already resolved choice
    (the offline tools resolve --random-weights / $TTT3R_WEIGHTS first); None resolves `config.weights` as the
    node does (a path or 'random'; no environment). `log` gets one line per resolved 'auto' choice."""
    problems = config.validate()
    if problems:
        raise SessionError("; ".join(problems))
    if weights is None:
        weights = resolve_weights(config.weights, source="parameter 'weights'",
                                  weights_usage="the parameter weights (with the launch files: weights:=PATH; "
                                                "launch arguments override the params file)",
                                  random_usage="weights:=random")
    device = resolve_device(config.device)
    try:
        precision, dtype, _ = resolve_precision(config.precision, device, log=log)
    except ValueError as err:
        raise SessionError(str(err)) from err
    if log is not None:
        if config.device == "auto":
            log(f"device:=auto resolved to {device}")
        if config.precision == "auto":
            log(f"precision:=auto resolved to {precision}")
    model = build_model(config.model_config, weights, device, precision, config.seed)
    return Session(config=config, model=model, device=device, precision=precision, dtype=dtype, weights=weights)
