"""Loading .pth checkpoints through the restricted unpickler: an official-style file gives tensors and a plain
config without importing or running the config library's code; hostile pickles and TorchScript archives are refused
without side effect; DDP prefixes; a .pth loads strictly into the model without conversion.

All on CPU with the tiny TTT3R model (parity_tiny.json); the official-style files come from
support/official_checkpoint.py.
"""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from support.official_checkpoint import (HOSTILE, MODEL_STRING, N_ALIASES, SETSTATE_CALLS, TRAINING_CONFIG,
                                         Precision, RunsShell, make_official_pth)
from ttt3r_ros.model import build_model
from ttt3r_ros.model.checkpoint import CheckpointError, load_checkpoint, load_state_dict_file, load_weights
from ttt3r_ros.model.safe_pickle import UnsafePickleError, loads as restricted_loads

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_official_style_pth_gives_tensors_and_plain_config(tmp_path, monkeypatch, tiny_model, zip_format):
    path = tmp_path / "official.pth"
    make_official_pth(path, tiny_model.state_dict(), monkeypatch, _use_new_zipfile_serialization=zip_format)
    SETSTATE_CALLS.clear()

    checkpoint = load_checkpoint(path)

    assert SETSTATE_CALLS == [], "the loader ran code of the pickled classes"
    assert checkpoint.file_format == ("torch-zip" if zip_format else "torch-legacy")
    expected = tiny_model.state_dict()
    assert list(checkpoint.state_dict) == list(expected)
    for name, tensor in expected.items():
        assert torch.equal(checkpoint.state_dict[name], tensor), name
    # torch.save keeps one storage per aliased tensor: found as aliases, in state-dict order (original first)
    assert len(checkpoint.aliases) == N_ALIASES
    assert checkpoint.aliases["downstream_head.dpt_rgb.scratch.layer_rn.3.weight"] == \
        "downstream_head.dpt_rgb.scratch.layer4_rn.weight"
    # the config came back as plain data: OmegaConf containers -> content, enum -> a record, nothing foreign left
    config = checkpoint.training_config
    assert {k: v for k, v in config.items() if k != "precision"} == TRAINING_CONFIG
    assert config["precision"] == {"__class__": f"{Precision.__module__}.Precision", "args": ["fp32"]}
    assert checkpoint.model_string == MODEL_STRING
    assert checkpoint.epoch == 3
    assert checkpoint.other_entries == {"best_so_far": 0.25}
    json.dumps(config)  # plain data all the way down


def test_loading_does_not_import_the_config_library(tmp_path, monkeypatch, tiny_model):
    path = tmp_path / "official.pth"
    make_official_pth(path, tiny_model.state_dict(), monkeypatch)
    code = ("import sys; from ttt3r_ros.model.checkpoint import load_checkpoint; "
            f"c = load_checkpoint({str(path)!r}); "
            "assert c.training_config['data']['sizes'] == [512, 384]; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('omegaconf', 'hydra', 'support')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_real_omegaconf_pickle_if_installed(tmp_path):
    """The same with the real library (not a dependency: skipped where it is not installed)."""
    omegaconf = pytest.importorskip("omegaconf", reason="omegaconf not installed; the imitation covers CI")
    config = omegaconf.OmegaConf.create(dict(TRAINING_CONFIG, lst=[{"a": 1}, "${lr}"]))
    torch.save({"model": {"w": torch.arange(3.0)}, "args": config, "epoch": 5}, tmp_path / "real.pth")
    checkpoint = load_checkpoint(tmp_path / "real.pth")
    assert checkpoint.training_config == dict(TRAINING_CONFIG, lst=[{"a": 1}, "${lr}"])
    assert checkpoint.epoch == 5 and torch.equal(checkpoint.state_dict["w"], torch.arange(3.0))


def test_forced_weights_only_env_is_honoured_with_a_clear_error(tmp_path, monkeypatch, tiny_model):
    plain, official = tmp_path / "plain.pth", tmp_path / "official.pth"
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 1}, plain)
    make_official_pth(official, tiny_model.state_dict(), monkeypatch)
    monkeypatch.setenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")
    assert torch.equal(load_state_dict_file(plain)["w"], torch.ones(2))
    with pytest.raises(CheckpointError, match="TORCH_FORCE_WEIGHTS_ONLY_LOAD"):
        load_checkpoint(official)


def test_module_prefix_is_stripped_only_when_every_key_has_it(tmp_path):
    tensors = {"module.a": torch.ones(2), "module.b": torch.zeros(3)}
    torch.save({"model": tensors}, tmp_path / "ddp.pth")
    assert sorted(load_state_dict_file(tmp_path / "ddp.pth")) == ["a", "b"]
    torch.save({"model": {"module.a": torch.ones(2), "b": torch.zeros(3)}}, tmp_path / "mixed.pth")
    assert sorted(load_state_dict_file(tmp_path / "mixed.pth")) == ["b", "module.a"]


def test_pth_loads_strictly_without_conversion(tmp_path, monkeypatch, tiny_config, tiny_model):
    pth = tmp_path / "official.pth"
    make_official_pth(pth, tiny_model.state_dict(), monkeypatch)
    other = build_model(tiny_config, seed=2)
    load_weights(other, pth)
    assert torch.equal(other.state_dict()["pose_retriever.mem"], tiny_model.state_dict()["pose_retriever.mem"])


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("where", ["args", "model"])
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_pickle_that_runs_code_is_refused_without_side_effect(tmp_path, kind, where, protocol):
    marker = tmp_path / "pwned_xyz"
    cls, global_name = HOSTILE[kind]
    payload = {"model": {"w": torch.ones(2)}, "args": {"lr": 1.0}, "epoch": 1}
    if where == "args":
        payload["args"] = {"lr": 1.0, "hook": cls(marker)}
    else:
        payload["model"] = {"w": torch.ones(2), "evil": cls(marker)}
    path = tmp_path / "evil.pth"
    torch.save(payload, path, pickle_protocol=protocol)

    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert global_name in str(err.value)
    assert str(path) in str(err.value)
    assert not marker.exists(), "the hostile pickle's side effect happened"


def test_marker_payload_really_runs_under_plain_pickle(tmp_path):
    """Control: the payload above is live (so the refusal test is not passing vacuously)."""
    marker = tmp_path / "pwned_xyz"
    pickle.loads(pickle.dumps(RunsShell(marker), protocol=2))
    assert marker.exists()


@pytest.mark.parametrize("data, fragment", [
    # getattr on a real object is the classic way to reach a dangerous method
    (b"\x80\x02c__builtin__\ngetattr\nc__builtin__\ndict\nX\x04\x00\x00\x00copy\x86R.", "getattr"),
    # BUILD on a real tensor would run Tensor.__setstate__
    (pickle.dumps(torch.ones(1), protocol=2)[:-1] + b"}b.", None),
    # bytes(huge) would allocate gigabytes
    (b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00@\x85R.", "bytes"),
])
def test_unpickler_refuses_gadgets(data, fragment):
    with pytest.raises((UnsafePickleError, pickle.UnpicklingError)) as err:
        restricted_loads(data)
    if fragment is not None:
        assert fragment in str(err.value)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_archive_is_refused(tmp_path):
    path = tmp_path / "scripted.pth"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(CheckpointError, match="TorchScript"):
        load_state_dict_file(path)
