"""Converting an official .pth to .safetensors (`convert_checkpoint` and `ttt3r-ros convert-checkpoint`): tensors,
config and epoch kept, the DPT aliases dropped and restored from the metadata; files holding the aliases as copies or
not at all load alike, an inconsistent alias is refused.

All on CPU with the tiny TTT3R model (parity_tiny.json); the official-style files come from
support/official_checkpoint.py.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from support.official_checkpoint import MODEL_STRING, N_ALIASES, TRAINING_CONFIG, RunsShell, make_official_pth
from ttt3r_ros.model import build_model
from ttt3r_ros.model.checkpoint import (META_ALIASES, CheckpointError, convert_checkpoint, load_checkpoint,
                                        load_state_dict_file, load_weights)


def test_conversion_round_trip_strict_load(tmp_path, monkeypatch, tiny_config, tiny_model):
    pth, out = tmp_path / "official.pth", tmp_path / "converted.safetensors"
    make_official_pth(pth, tiny_model.state_dict(), monkeypatch)

    checkpoint, report = convert_checkpoint(pth, out)

    expected = tiny_model.state_dict()
    assert report.tensors_written == len(expected) - N_ALIASES
    assert len(report.aliases_dropped) == N_ALIASES
    assert report.parameters == sum(p.numel() for p in tiny_model.parameters())
    assert not list(tmp_path.glob("*.tmp")), "temporary file left behind"
    with safe_open(str(out), framework="pt") as f:
        stored = set(f.keys())
        metadata = f.metadata()
    assert "downstream_head.dpt_self.scratch.layer_rn.0.weight" not in stored
    assert json.loads(metadata[META_ALIASES]) == report.aliases_dropped
    assert json.loads(metadata["ttt3r_ros.training_config"])["model"] == MODEL_STRING

    reread = load_checkpoint(out)  # aliases restored from the metadata, config and epoch kept
    assert list(sorted(reread.state_dict)) == sorted(expected)
    assert reread.training_config["data"] == TRAINING_CONFIG["data"] and reread.epoch == 3

    other = build_model(tiny_config, seed=1)
    assert not torch.equal(other.state_dict()["pose_token"], expected["pose_token"])
    load_report = load_weights(other, out, strict=True)
    assert load_report.missing == [] and load_report.unexpected == []
    for name, tensor in other.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    # the aliases are one tensor in the model, as in the reference
    head = other.downstream_head.dpt_cross.scratch
    assert head.layer_rn[2].weight is head.layer3_rn.weight

    via_factory = build_model(tiny_config, weights=out)  # the model owner's entry point calls load_weights
    for name, tensor in via_factory.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_aliases_as_copies_or_missing_names(tmp_path, tiny_config, tiny_model):
    expected = tiny_model.state_dict()
    copies = {k: v.clone() for k, v in expected.items()}  # like parity_tiny.safetensors: separate copies
    save_file(copies, str(tmp_path / "copies.safetensors"))
    without = {k: v.clone() for k, v in expected.items() if ".scratch.layer_rn." not in k}  # another writer's file
    assert len(without) == len(expected) - N_ALIASES
    save_file(without, str(tmp_path / "without.safetensors"))
    for name in ("copies", "without"):
        model = build_model(tiny_config, seed=3)
        report = load_weights(model, tmp_path / f"{name}.safetensors")
        assert len(report.aliases_filled) == (0 if name == "copies" else N_ALIASES)
        assert torch.equal(model.state_dict()["downstream_head.dpt_rgb.scratch.layer_rn.1.weight"],
                           expected["downstream_head.dpt_rgb.scratch.layer2_rn.weight"])

    copies["downstream_head.dpt_self.scratch.layer_rn.0.weight"] += 1.0  # an "alias" that is not the same tensor
    save_file(copies, str(tmp_path / "inconsistent.safetensors"))
    with pytest.raises(CheckpointError, match=r"layer_rn\.0\.weight.*same tensor"):
        load_weights(build_model(tiny_config), tmp_path / "inconsistent.safetensors")


def test_convert_checkpoint_cli(tmp_path, monkeypatch, capsys, tiny_model, tiny_config_file):
    from ttt3r_ros.cli import main

    pth, out = tmp_path / "official.pth", tmp_path / "out" / "tiny.safetensors"
    make_official_pth(pth, tiny_model.state_dict(), monkeypatch)
    config_json = str(tiny_config_file)

    assert main(["convert-checkpoint", str(pth), str(out), "--check-config", config_json]) == 0
    printed = capsys.readouterr().out
    assert f"{len(tiny_model.state_dict()) - N_ALIASES} tensors" in printed
    assert f"{sum(p.numel() for p in tiny_model.parameters()):,} parameters" in printed
    assert f"aliases handled: {N_ALIASES}" in printed
    assert "training config: found" in printed and "ARCroco3DStereo" in printed
    assert "keys and shapes match" in printed
    assert torch.equal(load_state_dict_file(out)["pose_token"], tiny_model.state_dict()["pose_token"])

    # an existing output is not replaced silently
    assert main(["convert-checkpoint", str(pth), str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["convert-checkpoint", str(pth), str(out), "--overwrite"]) == 0
    capsys.readouterr()

    # a config the checkpoint does not fit: error naming the problem, nothing written
    wrong = tmp_path / "wrong.safetensors"
    assert main(["convert-checkpoint", str(pth), str(wrong), "--check-config", "cut3r_512_dpt_4_64"]) == 1
    err = capsys.readouterr().err
    assert "wrong shape(s)" in err and "pose_token" in err
    assert not wrong.exists()

    # a hostile file: refused by the CLI too
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.ones(1)}, "args": RunsShell(tmp_path / "pwned_xyz")}, evil)
    assert main(["convert-checkpoint", str(evil), str(tmp_path / "evil.safetensors")]) == 1
    assert "system" in capsys.readouterr().err
    assert not (tmp_path / "pwned_xyz").exists() and not (tmp_path / "evil.safetensors").exists()
