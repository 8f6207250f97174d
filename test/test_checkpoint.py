"""Checkpoint reading/writing: the restricted unpickler, aliases, strict checks, conversion and its CLI.

All on CPU with the tiny TTT3R model (parity_tiny.json); the "official" .pth is made here with torch.save, holding
an OmegaConf-shaped training config pickled exactly as OmegaConf pickles (classes registered under omegaconf's module
names while pickling, gone while loading: loading must not need, import or run them).
"""
from __future__ import annotations

import enum
import json
import os
import pickle
import subprocess
import sys
import types
import typing
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ttt3r_ros.model import build_model, load_model_config
from ttt3r_ros.model.checkpoint import (META_ALIASES, CheckpointError, convert_checkpoint, load_checkpoint,
                                        load_state_dict_file, load_weights, save_safetensors)
from ttt3r_ros.model.safe_pickle import UnsafePickleError, loads as restricted_loads

REPO = Path(__file__).resolve().parents[1]
N_ALIASES = 12  # 4 per DPT adapter, 3 adapters (SPEC §1.4)


@pytest.fixture(scope="module")
def tiny_config(tiny_config_file):
    return load_model_config(tiny_config_file)


@pytest.fixture(scope="module")
def tiny_model(tiny_config):
    return build_model(tiny_config, seed=0)


# ---------------------------------------------------------------------------------------------------------------------
# An imitation of OmegaConf's classes and pickled layout (DictConfig.__getstate__ = its __dict__ minus the flags cache)

SETSTATE_CALLS: list[str] = []  # if the loader ran any of these classes' code, it would show up here


class _NoCode:
    def __setstate__(self, state):  # pragma: no cover - must never run during loading
        SETSTATE_CALLS.append(type(self).__name__)
        self.__dict__.update(state)


class ContainerMetadata(_NoCode):
    def __init__(self, object_type, key=None, element_type=typing.Any):
        self.ref_type = typing.Any
        self.object_type = object_type
        self.optional = True
        self.key = key
        self.flags = {}
        self.resolver_cache = defaultdict(dict)
        self.key_type = typing.Any
        self.element_type = element_type


class Metadata(ContainerMetadata):
    pass


class AnyNode(_NoCode):
    def __init__(self, value, key, parent):
        self._metadata = Metadata(None, key)
        self._parent = parent
        self._val = value


class DictConfig(_NoCode):
    def __init__(self, content: dict, key=None, parent=None):
        self._metadata = ContainerMetadata(dict, key)
        self._parent = parent
        self._content = {k: _node(v, k, self) for k, v in content.items()}


class ListConfig(_NoCode):
    def __init__(self, content: list, key=None, parent=None):
        self._metadata = ContainerMetadata(list, key)
        self._parent = parent
        self._content = [_node(v, i, self) for i, v in enumerate(content)]


def _node(value, key, parent):
    if isinstance(value, dict):
        return DictConfig(value, key, parent)
    if isinstance(value, list):
        return ListConfig(value, key, parent)
    return AnyNode(value, key, parent)


class Precision(enum.Enum):
    FP32 = "fp32"


MODEL_STRING = ("ARCroco3DStereo(ARCroco3DStereoConfig(freeze='encoder', state_size=768, pos_embed='RoPE100', "
                "depth_mode=('exp', -inf, inf)))")
TRAINING_CONFIG = {"model": MODEL_STRING, "lr": 1e-4, "epochs": 10,
                   "data": {"sizes": [512, 384], "name": None, "flag": True}, "resume": "${output_dir}/x.pth"}


def omegaconf_like(content: dict) -> DictConfig:
    """Pickle-compatible stand-in for omegaconf.DictConfig: pickled under omegaconf's own module names."""
    return DictConfig(content)


def torch_save_as_omegaconf(obj, path: Path, monkeypatch, **kwargs) -> None:
    fake = {"omegaconf": types.ModuleType("omegaconf"), "omegaconf.dictconfig": types.ModuleType("omegaconf.dictconfig"),
            "omegaconf.listconfig": types.ModuleType("omegaconf.listconfig"),
            "omegaconf.base": types.ModuleType("omegaconf.base"), "omegaconf.nodes": types.ModuleType("omegaconf.nodes")}
    placement = {DictConfig: "omegaconf.dictconfig", ListConfig: "omegaconf.listconfig",
                 ContainerMetadata: "omegaconf.base", Metadata: "omegaconf.base", AnyNode: "omegaconf.nodes"}
    with monkeypatch.context() as patch:
        for name, module in fake.items():
            patch.setitem(sys.modules, name, module)
        for cls, module_name in placement.items():
            patch.setattr(cls, "__module__", module_name)
            setattr(fake[module_name], cls.__name__, cls)
        torch.save(obj, path, **kwargs)
    assert all(sys.modules.get(name) is not module for name, module in fake.items())  # the fakes are gone again


def make_official_pth(path: Path, state_dict: dict, monkeypatch, **kwargs) -> None:
    args = omegaconf_like(dict(TRAINING_CONFIG, precision=Precision.FP32))
    torch_save_as_omegaconf({"model": state_dict, "args": args, "epoch": 3, "best_so_far": 0.25}, path,
                            monkeypatch, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# The restricted unpickler on an official-style .pth


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
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('omegaconf', 'hydra', 'test_checkpoint')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_real_omegaconf_pickle_if_installed(tmp_path):
    """The same with the real library (not a dependency: skipped where it is not installed)."""
    omegaconf = pytest.importorskip("omegaconf", reason="omegaconf not installed; the imitation above covers CI")
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


# ---------------------------------------------------------------------------------------------------------------------
# Hostile pickles


class RunsShell:
    def __init__(self, marker: Path):
        self.command = f"touch {marker}"

    def __reduce__(self):
        return (os.system, (self.command,))


class EvalsCode:
    def __init__(self, marker: Path):
        self.source = f"open({str(marker)!r}, 'w').close()"

    def __reduce__(self):
        return (eval, (self.source,))


class RunsSubprocess:
    def __init__(self, marker: Path):
        self.argv = ["touch", str(marker)]

    def __reduce__(self):
        return (subprocess.check_call, (self.argv,))


def write_marker(path):  # an innocent-looking function in an unlisted module: calling it is still refused
    Path(path).write_text("ran")


class CallsPlainFunction:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (write_marker, (self.marker,))


HOSTILE = {
    "os.system": (RunsShell, f"{os.system.__module__}.system"),
    "builtins.eval": (EvalsCode, "builtins.eval"),
    "subprocess.check_call": (RunsSubprocess, "subprocess.check_call"),
    "module function": (CallsPlainFunction, f"{write_marker.__module__}.write_marker"),
}


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


# ---------------------------------------------------------------------------------------------------------------------
# Conversion and strict loading


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


def test_pth_loads_strictly_without_conversion(tmp_path, monkeypatch, tiny_config, tiny_model):
    pth = tmp_path / "official.pth"
    make_official_pth(pth, tiny_model.state_dict(), monkeypatch)
    other = build_model(tiny_config, seed=2)
    load_weights(other, pth)
    assert torch.equal(other.state_dict()["pose_retriever.mem"], tiny_model.state_dict()["pose_retriever.mem"])


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


def test_save_is_atomic_and_keeps_old_file_on_failure(tmp_path):
    out = tmp_path / "w.safetensors"
    save_safetensors({"a": torch.ones(3)}, out)
    before = out.read_bytes()
    with pytest.raises(TypeError):
        save_safetensors({"a": torch.zeros(3)}, out, metadata={"bad": 1})  # type: ignore[dict-item]
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_mismatched_checkpoint_names_keys_and_shapes(tmp_path, tiny_config, tiny_model):
    state = {k: v.clone() for k, v in tiny_model.state_dict().items() if ".scratch.layer_rn." not in k}
    del state["dec_norm.weight"]
    state["extra.thing.weight"] = torch.zeros(4)
    state["pose_token"] = torch.zeros(1, 1, 7)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))

    model = build_model(tiny_config, seed=4)
    before = model.state_dict()["enc_norm.weight"].clone()
    with pytest.raises(CheckpointError) as err:
        load_weights(model, path)
    message = str(err.value)
    assert str(path) in message
    assert "1 missing key(s): dec_norm.weight" in message
    assert "1 unexpected key(s): extra.thing.weight" in message
    assert "1 wrong shape(s): pose_token (checkpoint [1, 1, 7], model [1, 1, 48])" in message
    assert torch.equal(model.state_dict()["enc_norm.weight"], before), "a failed load must not change the model"

    # strict=False tolerates missing/unexpected keys, never wrong shapes
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_weights(model, path, strict=False)
    state["pose_token"] = tiny_model.state_dict()["pose_token"].clone()
    save_file(state, str(path))
    report = load_weights(model, path, strict=False)
    assert report.missing == ["dec_norm.weight"] and report.unexpected == ["extra.thing.weight"]


def test_many_missing_keys_are_counted_not_all_listed(tmp_path, tiny_config):
    path = tmp_path / "few.safetensors"
    save_file({"pose_token": torch.zeros(1, 1, 48)}, str(path))
    model = build_model(tiny_config)
    with pytest.raises(CheckpointError) as err:
        load_weights(model, path)
    line = next(l for l in str(err.value).splitlines() if "missing key(s)" in l)
    assert line.strip().startswith(f"{len(model.state_dict()) - 1} missing key(s)")
    assert "more" in line and line.count(",") < 10


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file_gives_clear_error(tmp_path, monkeypatch, tiny_model, suffix):
    full = tmp_path / f"full{suffix}"
    if suffix == ".pth":
        make_official_pth(full, tiny_model.state_dict(), monkeypatch)
    else:
        save_safetensors(tiny_model.state_dict(), full)
    data = full.read_bytes()
    for keep in (len(data) // 2, len(data) - 10, 40):
        cut = tmp_path / f"cut{suffix}"
        cut.write_bytes(data[:keep])
        with pytest.raises(CheckpointError) as err:
            load_state_dict_file(cut)
        assert str(cut) in str(err.value)
        assert "truncated or corrupt" in str(err.value)
    empty = tmp_path / f"empty{suffix}"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_state_dict_file(empty)


def test_missing_file_names_path_and_where_weights_come_from(tmp_path, tiny_config):
    path = tmp_path / "nowhere" / "cut3r_512_dpt_4_64.safetensors"
    with pytest.raises(FileNotFoundError) as err:
        load_weights(build_model(tiny_config), path)
    assert str(path) in str(err.value)
    assert "cut3r_512_dpt_4_64.pth" in str(err.value) and "CUT3R" in str(err.value)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_archive_is_refused(tmp_path):
    path = tmp_path / "scripted.pth"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(CheckpointError, match="TorchScript"):
        load_state_dict_file(path)


# ---------------------------------------------------------------------------------------------------------------------
# CLI


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
