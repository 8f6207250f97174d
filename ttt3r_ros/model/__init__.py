"""CUT3R with the TTT3R state update, in pure PyTorch (no ROS, nothing else from ttt3r_ros).

    cfg = load_model_config("cut3r_512_dpt_4_64")        # or a parity_tiny.json-style file
    model = build_model(cfg, weights="cut3r_512_dpt_4_64.safetensors", device="cuda")
    state = model.initial_state(batch_size=1)
    out, state = model.step(images, state, update_rule="ttt3r")

Checkpoint helpers (`load_weights`, `load_state_dict_file`, `CheckpointError`) live in
ttt3r_ros.model.checkpoint and are imported on first use.
"""
from __future__ import annotations

from typing import Any

from .config import PRESETS, ConfigError, ModelConfig, load_model_config
from .factory import build_model, init_random_weights, set_precision
from .network import TTT3RModel
from .state import INTERMEDIATE_NAMES, RecurrentState, StepOutput
from .update_rules import UPDATE_RULES, get_update_rule

__all__ = [
    "ModelConfig", "ConfigError", "PRESETS", "load_model_config", "TTT3RModel", "RecurrentState", "StepOutput",
    "INTERMEDIATE_NAMES", "UPDATE_RULES", "get_update_rule", "build_model", "init_random_weights",
    "set_precision", "load_weights", "load_state_dict_file", "CheckpointError",
]

_CHECKPOINT_NAMES = ("load_weights", "load_state_dict_file", "CheckpointError")


def __getattr__(name: str) -> Any:
    # Lazy so that importing the model does not import the checkpoint module (and its unpickler) until needed.
    if name in _CHECKPOINT_NAMES:
        from . import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
