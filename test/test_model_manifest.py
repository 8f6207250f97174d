"""The full-size `cut3r_512_dpt_4_64` model, built on the meta device (no 3 GB allocation), has exactly the
reference checkpoint's state_dict: same keys in the same order, shapes, dtypes, aliases and parameter count."""
from __future__ import annotations

import json

import pytest
import torch

import reference_data

from ttt3r_ros.model import PRESETS, build_model

MANIFEST_NAME = "cut3r_512_dpt_4_64.keys.json"
OFFICIAL_UNIQUE_PARAMETERS = 793_307_858  # SPEC §1.4, the published checkpoint


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads(reference_data.reference_file(MANIFEST_NAME, "key manifest").read_text())


@pytest.fixture(scope="module")
def meta_model():
    return build_model("cut3r_512_dpt_4_64", device="meta")


def test_manifest_keys_in_order_with_shapes_and_dtypes(manifest: dict, meta_model) -> None:
    state = meta_model.state_dict()
    expected = manifest["keys"]
    assert len(state) == manifest["num_state_dict_entries"] == len(expected)
    assert list(state) == list(expected), "state_dict keys or their order differ from the manifest"
    for key, entry in expected.items():
        assert list(state[key].shape) == entry["shape"], key
        assert str(state[key].dtype).removeprefix("torch.") == entry["dtype"], key
        assert state[key].device.type == "meta"


def test_aliases_are_the_same_parameters(manifest: dict, meta_model) -> None:
    aliases = {key: entry["alias_of"] for key, entry in manifest["keys"].items() if "alias_of" in entry}
    assert len(aliases) == manifest["num_alias_entries"] == 12
    for alias, original in aliases.items():
        assert meta_model.get_parameter(alias) is meta_model.get_parameter(original), alias


def test_parameter_count(manifest: dict, meta_model) -> None:
    unique = sum(p.numel() for p in meta_model.parameters())  # parameters() yields each tensor once
    all_entries = sum(t.numel() for t in meta_model.state_dict().values())
    print(f"\ncut3r_512_dpt_4_64: {unique:,} unique parameters, {all_entries:,} counting aliases twice")
    assert unique == manifest["num_parameters_unique"] == OFFICIAL_UNIQUE_PARAMETERS
    assert all_entries == manifest["num_elements_all_entries"]
    assert not list(meta_model.buffers()), "the checkpoint has no buffers; the model must not add persistent ones"
    by_module = manifest["parameters_by_module"]
    for module_name, count in by_module.items():
        params = {id(p): p for name, p in meta_model.named_parameters()
                  if name == module_name or name.startswith(module_name + ".")}
        assert sum(p.numel() for p in params.values()) == count, module_name


def test_preset_matches_manifest_dpt_widths(manifest: dict) -> None:
    cfg = PRESETS["cut3r_512_dpt_4_64"]
    widths = manifest["dpt_widths"]
    assert cfg.dpt_feature_dim == widths["feature_dim"]
    assert cfg.dpt_last_dim == widths["last_dim"]
    assert list(cfg.dpt_layer_dims) == widths["layer_dims"]


def test_meta_build_allocates_nothing(meta_model) -> None:
    assert all(p.device.type == "meta" for p in meta_model.parameters())
    assert meta_model.dtype == torch.float32


def test_full_size_step_shapes_on_meta(meta_model) -> None:
    """The full-size step runs shape-only (meta tensors) at 512x208: odd token-grid height 13 exercises the
    DPT crop after refinenet4; shapes as in SPEC §2."""
    state = meta_model.initial_state(1)
    assert tuple(state.state.shape) == (1, 768, 768) and tuple(state.mem.shape) == (1, 256, 1536)
    out, new_state = meta_model.step(torch.zeros(1, 3, 208, 512, device="meta"), state, return_intermediates=True)
    assert tuple(out.pts3d_in_self_view.shape) == (1, 208, 512, 3)
    assert tuple(out.pts3d_in_other_view.shape) == (1, 208, 512, 3)
    assert tuple(out.conf_self.shape) == tuple(out.conf.shape) == (1, 208, 512)
    assert tuple(out.rgb.shape) == (1, 208, 512, 3)
    assert tuple(out.camera_pose.shape) == (1, 7) and tuple(out.c2w.shape) == (1, 4, 4)
    assert tuple(out.gate.shape) == tuple(out.update_rate.shape) == (1, 768)
    shapes = {name: tuple(value.shape) for name, value in out.intermediates.items()}
    assert shapes == {"enc_feat": (1, 416, 1024), "pose_feat_in": (1, 1, 768), "state_in": (1, 768, 768),
                      "state_new": (1, 768, 768), "mem_in": (1, 256, 1536), "mem_new": (1, 256, 1536),
                      "head_in_1": (1, 416, 768), "head_in_2": (1, 416, 768), "head_in_3": (1, 417, 768)}
    assert tuple(new_state.state.shape) == (1, 768, 768)
