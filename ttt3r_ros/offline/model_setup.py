"""Choosing weights, device and precision for the offline commands, and building the model.

No silent fallbacks: without a checkpoint the model is only built with random (untrained) weights when the user
asked for that explicitly, and every output is then labelled as a plumbing check.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import OfflineInputError

WEIGHTS_ENV = "TTT3R_WEIGHTS"
PLUMBING_LABEL = "PLUMBING CHECK — untrained weights, numbers meaningless"
DEFAULT_MODEL_CONFIG = "cut3r_512_dpt_4_64"
PRECISIONS = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
              "float16": torch.float16, "fp16": torch.float16}



def checkpoint_help() -> str:
    """Where the checkpoint comes from (the model package's hint) and how to hand it to the offline tools."""
    from ..model.checkpoint import WEIGHTS_HINT

    return f"{WEIGHTS_HINT}. Then pass it with --weights PATH or set {WEIGHTS_ENV}=PATH."


@dataclass(frozen=True)
class WeightsChoice:
    path: Path | None      # None: random weights (plumbing check)
    source: str            # "--weights", "$TTT3R_WEIGHTS" or "random (--random-weights)"

    @property
    def is_random(self) -> bool:
        return self.path is None

    @property
    def label(self) -> str | None:
        return PLUMBING_LABEL if self.is_random else None


def resolve_weights(weights: str | None, random_weights: bool) -> WeightsChoice:
    """--weights, else $TTT3R_WEIGHTS, else random weights only when explicitly requested, else a clear error."""
    if weights and random_weights:
        raise OfflineInputError("--weights and --random-weights exclude each other")
    if weights:
        path, source = Path(weights), "--weights"
    elif os.environ.get(WEIGHTS_ENV) and not random_weights:
        path, source = Path(os.environ[WEIGHTS_ENV]), f"${WEIGHTS_ENV}"
    elif random_weights:
        return WeightsChoice(None, "random (--random-weights)")
    else:
        raise OfflineInputError(
            f"no model weights: pass --weights PATH or set {WEIGHTS_ENV}. {checkpoint_help()} "
            "To check the pipeline without a checkpoint, pass --random-weights (untrained weights, results "
            "meaningless; --model-config tiny makes it fast on a CPU).")
    if not path.is_file():
        raise OfflineInputError(f"model weights from {source} not found: {path}. {checkpoint_help()}")
    return WeightsChoice(path, source)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as err:
        raise OfflineInputError(f"--device {device!r} is not a torch device ({err})") from err
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise OfflineInputError(f"--device {device} requested but CUDA is not available here; use --device cpu")
    return chosen


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> torch.dtype:
    """--precision -> weights dtype; 'auto' = bf16 on CUDA (the fast path), fp32 on CPU (the parity path).
    A reduced precision casts the whole model, heads included (build(..., head_dtype=dtype))."""
    if precision == "auto":
        from ..model.fast import resolve_precision as resolve_model_precision

        return resolve_model_precision("auto", device)[1]
    if precision not in PRECISIONS:
        raise OfflineInputError(f"--precision must be one of auto, {', '.join(PRECISIONS)}, not {precision!r}")
    return PRECISIONS[precision]


def precision_name(dtype: torch.dtype) -> str:
    """The short name of a resolved precision (fp32, bf16, fp16), for run records."""
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # Linux: the CPU's marketing name, as users know it
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def build(model_config: str, weights: WeightsChoice, device: torch.device, dtype: torch.dtype, seed: int) -> Any:
    """The model in eval mode; checkpoint and config problems become OfflineInputError with the reason."""
    from ..model import ConfigError, build_model, load_model_config

    try:
        config = load_model_config(model_config)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        raise OfflineInputError(f"--model-config {model_config}: {err}") from err
    try:
        # the whole model in one precision, as measured by `ttt3r-ros bench` (fp32 stays the parity path)
        return build_model(config, weights=weights.path, device=device, dtype=dtype, seed=seed, head_dtype=dtype)
    except FileNotFoundError as err:
        raise OfflineInputError(str(err)) from err
    except Exception as err:
        if type(err).__name__ == "CheckpointError":
            raise OfflineInputError(f"cannot load {weights.path} with config {model_config}: {err}") from err
        raise
