"""Model configs: the preset, the parity_tiny.json layout, clear errors for bad names and files."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ttt3r_ros.model import ConfigError, ModelConfig, load_model_config
from ttt3r_ros.model.config import config_from_dict


def test_preset_is_the_official_configuration() -> None:
    cfg = load_model_config("cut3r_512_dpt_4_64")
    assert (cfg.enc_embed_dim, cfg.enc_depth, cfg.enc_num_heads) == (1024, 24, 16)
    assert (cfg.dec_embed_dim, cfg.dec_depth, cfg.dec_num_heads, cfg.state_dec_num_heads) == (768, 12, 12, 16)
    assert (cfg.state_size, cfg.local_mem_size, cfg.patch_size, cfg.rope_base) == (768, 256, 16, 100.0)
    assert cfg.state_grid_width == 28  # floor(sqrt(768)) = 27 is odd -> 28 (SPEC §3.3)
    assert cfg.dpt_hooks == (0, 6, 9, 12)
    assert cfg.conf_mode == ("exp", 1.0, math.inf)


def test_parity_tiny_json_loads(tiny_config_file: Path) -> None:
    path = tiny_config_file
    cfg = load_model_config(str(path))
    data = json.loads(path.read_text())
    assert cfg.enc_embed_dim == data["config"]["enc_embed_dim"]
    assert cfg.state_size == data["config"]["state_size"]
    assert cfg.dpt_feature_dim == data["dpt_widths"]["feature_dim"]
    assert list(cfg.dpt_layer_dims) == data["dpt_widths"]["layer_dims"]
    assert cfg.dpt_hooks == (0, 2, 3, 4) and cfg.state_grid_width == 6  # README: taps 0,2,3,4; grid width 6


def test_json_round_trip(tmp_path: Path) -> None:
    cfg = ModelConfig(enc_embed_dim=64, enc_depth=2, enc_num_heads=4, dec_embed_dim=48, dec_depth=4,
                      dec_num_heads=3, state_dec_num_heads=4, state_size=27, local_mem_size=8, dpt_feature_dim=32,
                      dpt_last_dim=16, dpt_layer_dims=(8, 16, 24, 32))
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(cfg.to_json_dict()))
    assert load_model_config(path) == cfg


def test_unknown_preset_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown model config 'cut3r_224'.*cut3r_512_dpt_4_64"):
        load_model_config("cut3r_224")


def test_missing_json_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_model_config(tmp_path / "absent.json")


def test_malformed_json(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{\"config\": {")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_model_config(path)


def test_json_without_config_section(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"enc_embed_dim": 64}))
    with pytest.raises(ConfigError, match="'config' object"):
        load_model_config(path)


@pytest.mark.parametrize("config, message", [
    ({"enc_embed_dimm": 64}, "unknown config keys"),
    ({"state_pe": "1d"}, "state_pe"),
    ({"pos_embed": "cosine"}, "pos_embed"),
    ({"enc_embed_dim": 60}, "head dim divisible by 4"),
    ({"depth_mode": ["square", "-inf", "inf"]}, "depth_mode"),
    ({"enc_depth": "24"}, "must be an integer"),
])
def test_bad_values_are_named(config: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"config": config})


def test_tiny_preset_equals_parity_tiny_json(tiny_config_file: Path) -> None:
    assert load_model_config("tiny") == load_model_config(tiny_config_file)
