"""Model sizes and modes: the `ModelConfig` dataclass, the official preset and the JSON loader.

A configuration is either a preset name (`cut3r_512_dpt_4_64`, the official checkpoint) or a JSON file laid out
like the reference's `parity_tiny.json`: a `config` object with the reference's `ARCroco3DStereoConfig` fields and
a `dpt_widths` object (`feature_dim`, `last_dim`, `layer_dims`), optionally a top-level `patch_size`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

__all__ = ["ModelConfig", "ConfigError", "PRESETS", "load_model_config"]


class ConfigError(ValueError):
    """A model configuration that cannot be built (unknown preset, malformed JSON, unsupported option)."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Every size and mode of the CUT3R/TTT3R network (defaults: the official `cut3r_512_dpt_4_64` checkpoint).

    Field names follow the reference's `ARCroco3DStereoConfig` where it has one (see SPEC §1.3).
    """

    # image encoder (ViT with 2D RoPE)
    img_size: tuple[int, int] = (512, 512)  # only sizes bookkeeping in the reference; any multiple of 16 runs
    patch_size: int = 16
    enc_embed_dim: int = 1024
    enc_depth: int = 24
    enc_num_heads: int = 16
    # lock-step decoders
    dec_embed_dim: int = 768
    dec_depth: int = 12
    dec_num_heads: int = 12  # image decoder, final_transform and pose memory heads
    state_dec_num_heads: int = 16  # state decoder (not in the stored model string; reference default)
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    rope_base: float = 100.0  # from pos_embed 'RoPE100'
    # recurrent state and pose memory
    state_size: int = 768
    state_pe: str = "2d"
    local_mem_size: int = 256
    # ray-map encoder: never run for images, but its weights are in the checkpoint
    ray_enc_depth: int = 2
    ray_enc_num_heads: int = 16  # hard-coded in the reference
    # heads
    head_type: str = "dpt"
    output_mode: str = "pts3d+pose"
    rgb_head: bool = True
    pose_head: bool = True
    depth_mode: tuple[str, float, float] = ("exp", -math.inf, math.inf)
    conf_mode: tuple[str, float, float] = ("exp", 1.0, math.inf)
    pose_mode: tuple[str, float, float] = ("exp", -math.inf, math.inf)
    dpt_feature_dim: int = 256
    dpt_last_dim: int = 128
    dpt_layer_dims: tuple[int, int, int, int] = (96, 192, 384, 768)
    # accepted for completeness of the reference's model string; no effect on inference
    landscape_only: bool = False
    freeze: str = "encoder"
    patch_embed_cls: str = "PatchEmbedDust3R"

    def __post_init__(self) -> None:
        self.validate()

    # -- derived quantities -------------------------------------------------------------------------------------
    @property
    def dpt_hooks(self) -> tuple[int, int, int, int]:
        """Decoder layers tapped by the DPT heads (0 is the encoder output)."""
        return (0, self.dec_depth * 2 // 4, self.dec_depth * 3 // 4, self.dec_depth)

    @property
    def state_grid_width(self) -> int:
        """Width of the 2D grid the state tokens are laid on (SPEC §3.3): floor(sqrt(S)), plus 1 if odd."""
        width = math.isqrt(self.state_size)
        return width + 1 if width % 2 == 1 else width

    def validate(self) -> None:
        """Raise ConfigError for values this implementation cannot build or would build wrongly."""
        problems = []
        for name in ("enc_embed_dim", "enc_num_heads", "dec_embed_dim", "dec_num_heads", "state_dec_num_heads",
                     "enc_depth", "dec_depth", "state_size", "local_mem_size", "patch_size", "dpt_feature_dim",
                     "dpt_last_dim", "ray_enc_num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if problems:
            raise ConfigError("; ".join(problems))
        # RoPE2D splits each head into a y and an x half, each rotated in pairs: head dim must be divisible by 4.
        for dim_name, heads_name in (("enc_embed_dim", "enc_num_heads"), ("dec_embed_dim", "dec_num_heads"),
                                     ("dec_embed_dim", "state_dec_num_heads")):
            dim, heads = getattr(self, dim_name), getattr(self, heads_name)
            if dim % heads or (dim // heads) % 4:
                problems.append(f"{dim_name}={dim} / {heads_name}={heads} must give a head dim divisible by 4")
        if (2 * self.dec_embed_dim) % self.dec_num_heads:
            problems.append("2*dec_embed_dim must be divisible by dec_num_heads (pose memory)")
        if self.enc_embed_dim % self.ray_enc_num_heads:
            problems.append("enc_embed_dim must be divisible by ray_enc_num_heads")
        if self.dec_depth < 4:
            problems.append(f"dec_depth must be >= 4 for the DPT taps, got {self.dec_depth}")
        if len(self.dpt_layer_dims) != 4:
            problems.append(f"dpt_layer_dims needs 4 entries, got {self.dpt_layer_dims!r}")
        if self.state_pe != "2d":
            problems.append(f"state_pe {self.state_pe!r} not supported (only '2d')")
        if self.head_type != "dpt" or self.output_mode != "pts3d+pose":
            problems.append(f"head_type/output_mode {self.head_type!r}/{self.output_mode!r} not supported "
                            "(only 'dpt'/'pts3d+pose')")
        if not (self.rgb_head and self.pose_head):
            problems.append("rgb_head and pose_head must both be true (the checkpoint layout)")
        for mode_name in ("depth_mode", "conf_mode", "pose_mode"):
            mode = getattr(self, mode_name)
            if len(mode) != 3 or mode[0] != "exp":
                problems.append(f"{mode_name} {mode!r} not supported (only ('exp', vmin, vmax))")
        if self.depth_mode[1:] != (-math.inf, math.inf) or self.pose_mode[1:] != (-math.inf, math.inf):
            problems.append("depth_mode/pose_mode with finite bounds are not supported")
        if self.patch_embed_cls not in ("PatchEmbedDust3R", "ManyAR_PatchEmbed"):
            problems.append(f"patch_embed_cls {self.patch_embed_cls!r} not supported")
        if problems:
            raise ConfigError("invalid model config: " + "; ".join(problems))

    def to_json_dict(self) -> dict[str, Any]:
        """The config in the JSON layout `load_model_config` reads back (the parity_tiny.json form)."""

        def mode(m: tuple[str, float, float]) -> list[Any]:
            return [m[0]] + [("inf" if v > 0 else "-inf") if math.isinf(v) else v for v in m[1:]]

        config = {
            "freeze": self.freeze, "state_size": self.state_size, "state_pe": self.state_pe,
            "pos_embed": f"RoPE{self.rope_base:g}", "rgb_head": self.rgb_head, "pose_head": self.pose_head,
            "patch_embed_cls": self.patch_embed_cls, "img_size": list(self.img_size), "head_type": self.head_type,
            "output_mode": self.output_mode, "depth_mode": mode(self.depth_mode), "conf_mode": mode(self.conf_mode),
            "pose_mode": mode(self.pose_mode), "enc_embed_dim": self.enc_embed_dim, "enc_depth": self.enc_depth,
            "enc_num_heads": self.enc_num_heads, "dec_embed_dim": self.dec_embed_dim, "dec_depth": self.dec_depth,
            "dec_num_heads": self.dec_num_heads, "state_dec_num_heads": self.state_dec_num_heads,
            "local_mem_size": self.local_mem_size, "landscape_only": self.landscape_only,
            "mlp_ratio": self.mlp_ratio, "ray_enc_depth": self.ray_enc_depth,
        }
        return {
            "config": config,
            "dpt_widths": {"feature_dim": self.dpt_feature_dim, "last_dim": self.dpt_last_dim,
                           "layer_dims": list(self.dpt_layer_dims)},
            "patch_size": self.patch_size,
        }


PRESETS: dict[str, ModelConfig] = {
    # the official checkpoint cut3r_512_dpt_4_64.pth (SPEC §1.2-1.3)
    "cut3r_512_dpt_4_64": ModelConfig(),
    # the reference's tiny parity configuration (parity_tiny.json): tests and demos with random weights
    "tiny": ModelConfig(img_size=(64, 64), enc_embed_dim=64, enc_depth=2, enc_num_heads=4, dec_embed_dim=48,
                        dec_depth=4, dec_num_heads=3, state_dec_num_heads=4, state_size=27, local_mem_size=8,
                        dpt_feature_dim=32, dpt_last_dim=16, dpt_layer_dims=(8, 16, 24, 32)),
}

# reference config keys -> how to read them; keys mapping to None are accepted and must hold the preset's value
_SIMPLE_INT_KEYS = ("state_size", "enc_embed_dim", "enc_depth", "enc_num_heads", "dec_embed_dim", "dec_depth",
                    "dec_num_heads", "state_dec_num_heads", "local_mem_size", "ray_enc_depth")
_SIMPLE_OTHER_KEYS = ("freeze", "state_pe", "rgb_head", "pose_head", "patch_embed_cls", "head_type",
                      "output_mode", "landscape_only", "mlp_ratio")


def _parse_bound(value: Any, where: str) -> float:
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("inf", "+inf", "infinity"):
            return math.inf
        if text in ("-inf", "-infinity"):
            return -math.inf
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{where}: cannot read bound {value!r}") from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ConfigError(f"{where}: cannot read bound {value!r}")


def _parse_mode(value: Any, where: str) -> tuple[str, float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 3 or not isinstance(value[0], str):
        raise ConfigError(f"{where}: expected [name, vmin, vmax], got {value!r}")
    return (value[0], _parse_bound(value[1], where), _parse_bound(value[2], where))


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> ModelConfig:
    """Build a ModelConfig from the parity_tiny.json layout (`config`, `dpt_widths`, optional `patch_size`)."""
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise ConfigError(f"{source}: expected a JSON object with a 'config' object (parity_tiny.json layout)")
    raw = data["config"]
    kwargs: dict[str, Any] = {}
    unknown = []
    for key, value in raw.items():
        if key in _SIMPLE_INT_KEYS:
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{source}: config.{key} must be an integer, got {value!r}")
            kwargs[key] = value
        elif key in _SIMPLE_OTHER_KEYS:
            kwargs[key] = value
        elif key == "pos_embed":
            match = re.fullmatch(r"RoPE(\d+(?:\.\d+)?)", str(value))
            if not match:
                raise ConfigError(f"{source}: pos_embed {value!r} not supported (only 'RoPE<base>')")
            kwargs["rope_base"] = float(match.group(1))
        elif key == "img_size":
            if isinstance(value, int):
                value = [value, value]
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise ConfigError(f"{source}: img_size must be [H, W], got {value!r}")
            kwargs["img_size"] = (int(value[0]), int(value[1]))
        elif key in ("depth_mode", "conf_mode", "pose_mode"):
            kwargs[key] = _parse_mode(value, f"{source}: config.{key}")
        else:
            unknown.append(key)
    if unknown:
        raise ConfigError(f"{source}: unknown config keys {sorted(unknown)}")
    widths = data.get("dpt_widths")
    if widths is not None:
        if not isinstance(widths, dict):
            raise ConfigError(f"{source}: dpt_widths must be an object")
        extra = set(widths) - {"feature_dim", "last_dim", "layer_dims"}
        if extra:
            raise ConfigError(f"{source}: unknown dpt_widths keys {sorted(extra)}")
        if "feature_dim" in widths:
            kwargs["dpt_feature_dim"] = widths["feature_dim"]
        if "last_dim" in widths:
            kwargs["dpt_last_dim"] = widths["last_dim"]
        if "layer_dims" in widths:
            kwargs["dpt_layer_dims"] = tuple(widths["layer_dims"])
    if "patch_size" in data:
        kwargs["patch_size"] = data["patch_size"]
    try:
        return ModelConfig(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    except TypeError as err:
        raise ConfigError(f"{source}: {err}") from None


def load_model_config(name_or_path: str | Path | ModelConfig) -> ModelConfig:
    """A preset name (see PRESETS) or the path of a JSON file in the parity_tiny.json layout."""
    if isinstance(name_or_path, ModelConfig):
        return name_or_path
    text = str(name_or_path)
    if text in PRESETS:
        return PRESETS[text]
    path = Path(text).expanduser()
    if path.suffix.lower() == ".json" or path.exists():
        if not path.is_file():
            raise ConfigError(f"model config file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"model config {path} is not valid JSON: {err}") from None
        return config_from_dict(data, source=str(path))
    raise ConfigError(f"unknown model config {text!r}: expected one of the presets {sorted(PRESETS)} "
                      "or the path of a JSON file laid out like parity_tiny.json")
