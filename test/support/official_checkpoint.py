"""Official-style CUT3R checkpoints for the checkpoint tests, made here: a .pth holding the state dict, the epoch
and an OmegaConf-shaped training config pickled exactly as OmegaConf pickles it (classes registered under omegaconf's
module names while pickling, gone while loading: loading must not need, import or run them); and pickles that run
code when a plain unpickler loads them."""
from __future__ import annotations

import enum
import os
import subprocess
import sys
import types
import typing
from collections import defaultdict
from pathlib import Path

import torch

N_ALIASES = 12  # 4 per DPT adapter, 3 adapters (SPEC §1.4)

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
    fake = {name: types.ModuleType(name) for name in ("omegaconf", "omegaconf.dictconfig", "omegaconf.listconfig",
                                                      "omegaconf.base", "omegaconf.nodes")}
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
# Hostile pickles: each runs code (leaving a marker file) when loaded by a plain unpickler


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
