"""Reading, checking and writing model weights: ``.safetensors`` (ours, what the node loads) and the official ``.pth``.

The official ``cut3r_512_dpt_4_64.pth`` is a pickle holding ``"model"`` (the state dict), ``"args"`` (the OmegaConf
training config) and ``"epoch"``. It is read through :mod:`ttt3r_ros.model.safe_pickle`, which never executes code
from the file. Convert it once with ``ttt3r-ros convert-checkpoint IN.pth OUT.safetensors``.

Aliases: each DPT adapter registers its four ``scratch.layerN_rn`` convolutions a second time as
``scratch.layer_rn.{N-1}`` (SPEC §1.4), so ``state_dict()`` names 12 tensors twice. safetensors refuses shared
storage, so :func:`save_safetensors` writes each tensor once and records the dropped names in the metadata;
:func:`load_state_dict_file` and :func:`load_weights` put them back before the strict load.
"""
from __future__ import annotations

import json
import os
import re
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from . import safe_pickle

OFFICIAL_CHECKPOINT_NAME = "cut3r_512_dpt_4_64.pth"
WEIGHTS_HINT = (
    f"The official weights ({OFFICIAL_CHECKPOINT_NAME}, ~3 GB) come from the CUT3R project's release (the TTT3R "
    "repository uses the same file); they are not shipped with ttt3r_ros and nothing downloads them. Convert once "
    f"with: ttt3r-ros convert-checkpoint {OFFICIAL_CHECKPOINT_NAME} cut3r_512_dpt_4_64.safetensors")

# safetensors metadata keys written by save_safetensors (all values are strings, as safetensors requires).
META_ALIASES = "ttt3r_ros.aliases"  # JSON {alias name: original name}
META_TRAINING_CONFIG = "ttt3r_ros.training_config"  # JSON of the .pth "args", as plain data
META_SOURCE = "ttt3r_ros.source"  # file name the weights were converted from
META_EPOCH = "ttt3r_ros.epoch"

_DPT_ALIAS_RE = re.compile(r"^(?P<prefix>.*)\.scratch\.layer_rn\.(?P<index>[0-3])\.weight$")
_LIST_LIMIT = 5  # how many names of each kind an error message shows


class CheckpointError(RuntimeError):
    """The weights file cannot be used: unreadable, unsafe, or not matching the model."""


@dataclass
class Checkpoint:
    """Everything read from a weights file, as plain data besides the tensors."""

    path: Path
    file_format: str  # "torch-zip", "torch-legacy" or "safetensors"
    state_dict: dict[str, torch.Tensor]
    training_config: Any = None  # the .pth "args" as plain data (dicts/lists/scalars), or None
    epoch: int | None = None
    aliases: dict[str, str] = field(default_factory=dict)  # alias name -> original name, filled in state_dict
    other_entries: dict[str, Any] = field(default_factory=dict)  # remaining top-level .pth entries, plain data
    metadata: dict[str, str] = field(default_factory=dict)  # safetensors header metadata

    @property
    def model_string(self) -> str | None:
        """The model instantiation string of the training config (``args.model``), if there is one."""
        if isinstance(self.training_config, dict) and isinstance(self.training_config.get("model"), str):
            return self.training_config["model"]
        return None


# --------------------------------------------------------------------------------------------------------------------
# Reading


def _missing_file_error(path: Path) -> FileNotFoundError:
    return FileNotFoundError(f"checkpoint not found: {path}. {WEIGHTS_HINT}")


def _sniff_format(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise CheckpointError(f"{path}: the file is empty")
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    # safetensors: 8-byte little-endian header length, then the JSON header. Checked before the pickle test
    # because the length's low byte may well be 0x80.
    header_len = int.from_bytes(head[:8], "little")
    if len(head) >= 9 and head[8:9] == b"{" and 0 < header_len <= path.stat().st_size - 8:
        return "safetensors"
    if head[:1] == b"\x80" and 2 <= head[1] <= 5:  # pickle PROTO: torch.save(..., _use_new_zipfile_serialization=False)
        return "torch-legacy"
    if len(head) >= 9 and head[8:9] == b"{":
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file (header of {header_len} bytes does "
                              f"not fit in the file)")
    raise CheckpointError(f"{path}: not a safetensors file nor a PyTorch checkpoint (unrecognised first bytes "
                          f"{head[:8]!r})")


def _read_torch(path: Path, file_format: str) -> Any:
    if file_format == "torch-zip":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise CheckpointError(f"{path}: truncated or corrupt checkpoint (cannot read the zip archive: {exc})") \
                from exc
        if any(name.endswith("/constants.pkl") for name in names):
            # torch.load would hand this to torch.jit.load, which runs TorchScript; we only read state dicts.
            raise CheckpointError(f"{path}: this is a TorchScript archive, not a weights checkpoint")
        if not any(name.endswith("/data.pkl") for name in names):
            raise CheckpointError(f"{path}: zip archive without data.pkl: not a PyTorch checkpoint")
    if os.getenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "0").lower() in ("1", "y", "yes", "true"):
        # torch then refuses any pickle_module; honour the request with torch's own weights-only loader (reads plain
        # state dicts, refuses the OmegaConf config of the official file).
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"{path}: torch's weights-only loader (forced by TORCH_FORCE_WEIGHTS_ONLY_LOAD) "
                                  f"cannot read it ({type(exc).__name__}: {str(exc).splitlines()[0]}); unset the "
                                  "variable to use ttt3r_ros's restricted unpickler, which never runs code from the "
                                  "file either") from exc
    try:
        # mmap keeps the 3 GB official file out of RAM until load_state_dict copies it into the model.
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=safe_pickle.pickle_module,
                          mmap=file_format == "torch-zip")
    except safe_pickle.UnsafePickleError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    except CheckpointError:
        raise
    except Exception as exc:  # torch/pickle raise RuntimeError, EOFError, UnpicklingError, ... on damaged files
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(exc).__name__}: {exc})") from exc


def _is_tensor_mapping(value: Any) -> bool:
    return isinstance(value, Mapping) and len(value) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def _strip_module_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Checkpoints saved from DistributedDataParallel prefix every key with "module."; the reference strips it only
    # when every key has it, and so do we.
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return state_dict


def _checkpoint_from_torch(path: Path, file_format: str, loaded: Any) -> Checkpoint:
    if _is_tensor_mapping(loaded):
        raw_state, rest = loaded, {}
    elif isinstance(loaded, Mapping) and _is_tensor_mapping(loaded.get("model")):
        raw_state = loaded["model"]
        rest = {k: v for k, v in loaded.items() if k != "model"}
    else:
        what = f"top-level keys {sorted(map(str, loaded))[:10]}" if isinstance(loaded, Mapping) else \
            f"a {type(loaded).__name__}"
        raise CheckpointError(f"{path}: no state dict found (expected a dict of tensors or a dict with a 'model' "
                              f"entry holding one; got {what})")
    state_dict = _strip_module_prefix({k: v.detach() for k, v in raw_state.items()})
    training_config = safe_pickle.to_plain_data(rest.pop("args")) if "args" in rest else None
    epoch = rest.pop("epoch", None)
    return Checkpoint(path=path, file_format=file_format, state_dict=state_dict, training_config=training_config,
                      epoch=epoch if type(epoch) is int else None,
                      # optimizer/scaler states (if a training checkpoint kept them) are of no use here
                      other_entries={str(k): safe_pickle.to_plain_data(v) for k, v in rest.items()
                                     if k not in ("optimizer", "scaler")},
                      aliases=find_aliases(state_dict, path))


def _read_safetensors(path: Path) -> Checkpoint:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            state_dict = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as exc:  # SafetensorError for truncated headers/data
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({type(exc).__name__}: {exc})") \
            from exc
    aliases: dict[str, str] = {}
    if META_ALIASES in metadata:
        try:
            aliases = dict(json.loads(metadata[META_ALIASES]))
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: metadata '{META_ALIASES}' is not a JSON object") from exc
        for alias, original in aliases.items():
            if original not in state_dict:
                raise CheckpointError(f"{path}: alias '{alias}' refers to '{original}', which the file lacks")
            if alias in state_dict:
                _check_alias_equal(path, alias, state_dict[alias], original, state_dict[original])
            else:
                state_dict[alias] = state_dict[original]
    training_config = None
    if META_TRAINING_CONFIG in metadata:
        try:
            training_config = json.loads(metadata[META_TRAINING_CONFIG])
        except ValueError:
            training_config = metadata[META_TRAINING_CONFIG]
    epoch = int(metadata[META_EPOCH]) if metadata.get(META_EPOCH, "").lstrip("-").isdigit() else None
    return Checkpoint(path=path, file_format="safetensors", state_dict=_strip_module_prefix(state_dict),
                      training_config=training_config, epoch=epoch, aliases=aliases, metadata=metadata)


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a ``.safetensors`` or ``.pth`` weights file safely (format detected from its first bytes)."""
    path = Path(path)
    if not path.is_file():
        raise _missing_file_error(path)
    file_format = _sniff_format(path)
    if file_format == "safetensors":
        return _read_safetensors(path)
    return _checkpoint_from_torch(path, file_format, _read_torch(path, file_format))


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict of a ``.safetensors`` or ``.pth`` file (CPU tensors, aliases present, ``module.`` stripped)."""
    return load_checkpoint(path).state_dict


# --------------------------------------------------------------------------------------------------------------------
# Aliases


def _storage_key(tensor: torch.Tensor) -> tuple | None:
    if tensor.device.type == "meta" or tensor.numel() == 0:
        return None  # meta tensors all report data_ptr 0: sharing cannot be told from it
    return (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
            tuple(tensor.stride()), tensor.dtype)


def _check_alias_equal(where: Any, alias: str, alias_tensor: torch.Tensor, original: str,
                       original_tensor: torch.Tensor) -> None:
    if alias_tensor.shape != original_tensor.shape or not torch.equal(alias_tensor, original_tensor):
        raise CheckpointError(f"{where}: '{alias}' must be the same tensor as '{original}' (an alias), but the two "
                              f"differ")


def find_aliases(state_dict: Mapping[str, torch.Tensor], where: Any = "state dict") -> dict[str, str]:
    """``{alias: original}`` for entries that are the same tensor as an earlier entry.

    Shared storage (how a ``.pth`` from ``torch.save(state_dict())`` stores them) and, for files that stored copies,
    the DPT naming rule ``X.scratch.layer_rn.{i}.weight`` == ``X.scratch.layer{i+1}_rn.weight`` (equality checked).
    The first name in state-dict order is the original, as in the reference manifest's ``alias_of``.
    """
    aliases: dict[str, str] = {}
    first_by_storage: dict[tuple, str] = {}
    for name, tensor in state_dict.items():
        key = _storage_key(tensor)
        if key is None:
            continue
        if key in first_by_storage:
            aliases[name] = first_by_storage[key]
        else:
            first_by_storage[key] = name
    for name, tensor in state_dict.items():
        match = _DPT_ALIAS_RE.match(name)
        if match is None or name in aliases:
            continue
        original = f"{match['prefix']}.scratch.layer{int(match['index']) + 1}_rn.weight"
        if original in state_dict:
            _check_alias_equal(where, name, tensor, original, state_dict[original])
            aliases[name] = original
    return aliases


def model_alias_groups(model: torch.nn.Module) -> list[list[str]]:
    """Names under which the model registers one and the same parameter/buffer (groups of two or more)."""
    groups: dict[int, list[str]] = {}
    for name, tensor in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(tensor), []).append(name)
    for name, tensor in model.named_buffers(remove_duplicate=False):
        groups.setdefault(id(tensor), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


# --------------------------------------------------------------------------------------------------------------------
# Checking against a model and loading


@dataclass
class StateDictMismatch:
    missing: list[str]
    unexpected: list[str]
    wrong_shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # (name, checkpoint shape, model shape)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shapes)

    def describe(self, strict: bool = True) -> str:
        def listing(names: list[str]) -> str:
            shown = ", ".join(names[:_LIST_LIMIT])
            return shown + (f", ... and {len(names) - _LIST_LIMIT} more" if len(names) > _LIST_LIMIT else "")

        lines = []
        if self.missing and strict:
            lines.append(f"  {len(self.missing)} missing key(s): {listing(self.missing)}")
        if self.unexpected and strict:
            lines.append(f"  {len(self.unexpected)} unexpected key(s): {listing(self.unexpected)}")
        if self.wrong_shapes:
            shapes = [f"{n} (checkpoint {list(c)}, model {list(m)})" for n, c, m in self.wrong_shapes]
            lines.append(f"  {len(self.wrong_shapes)} wrong shape(s): {listing(shapes)}")
            lines.append("  (wrong shapes usually mean the model was built with another model_config than the "
                         "checkpoint was trained with)")
        return "\n".join(lines)


def compare_state_dict(state_dict: Mapping[str, torch.Tensor],
                       expected_shapes: Mapping[str, Iterable[int]]) -> StateDictMismatch:
    """Key sets and shapes of a checkpoint against a model's (``{name: shape}``, e.g. from a meta-device model)."""
    missing = [k for k in expected_shapes if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected_shapes]
    wrong = [(k, tuple(state_dict[k].shape), tuple(shape)) for k, shape in expected_shapes.items()
             if k in state_dict and tuple(state_dict[k].shape) != tuple(shape)]
    return StateDictMismatch(missing, unexpected, wrong)


def fill_model_aliases(state_dict: dict[str, torch.Tensor], model: torch.nn.Module, where: Any = "checkpoint") \
        -> list[str]:
    """Add the names under which ``model`` registers an already-present tensor again; returns the names added.

    Where the file holds several names of one group they must be equal (else :class:`CheckpointError`).
    """
    added = []
    for names in model_alias_groups(model):
        present = [n for n in names if n in state_dict]
        if not present:
            continue  # reported as missing by the comparison
        for other in present[1:]:
            if state_dict[other].shape == state_dict[present[0]].shape:
                _check_alias_equal(where, other, state_dict[other], present[0], state_dict[present[0]])
        for name in names:
            if name not in state_dict:
                state_dict[name] = state_dict[present[0]]
                added.append(name)
    return added


def match_model(state_dict: Mapping[str, torch.Tensor], model: torch.nn.Module, where: Any = "checkpoint",
                strict: bool = True) -> tuple[dict[str, torch.Tensor], list[str], StateDictMismatch]:
    """Fill the model's alias names, then compare keys and shapes (works for models on the meta device).

    Returns (state dict with aliases filled, alias names added, mismatch). Raises :class:`CheckpointError` naming
    wrong shapes, and with ``strict`` also missing and unexpected keys.
    """
    state_dict = dict(state_dict)
    filled = fill_model_aliases(state_dict, model, where)
    expected = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}
    mismatch = compare_state_dict(state_dict, expected)
    if mismatch.wrong_shapes or (strict and not mismatch.ok):
        raise CheckpointError(f"{where} does not match the model ({type(model).__name__}, {len(expected)} "
                              f"state-dict entries; file has {len(state_dict)}):\n{mismatch.describe(strict)}")
    return state_dict, filled, mismatch


@dataclass
class LoadReport:
    path: Path
    file_format: str
    tensors_loaded: int
    aliases_filled: list[str]
    missing: list[str]
    unexpected: list[str]
    training_config: Any = None


def load_weights(model: torch.nn.Module, path: str | os.PathLike[str], strict: bool = True,
                 assign: bool = False) -> LoadReport:
    """Load a ``.safetensors``/``.pth`` file into ``model``, checking keys and shapes first.

    ``strict=True``: any missing or unexpected key raises :class:`CheckpointError` (naming them); wrong shapes always
    raise. Tensors are converted to the model's dtype/device by ``load_state_dict`` (``assign=True`` instead takes
    the file's tensors as they are, e.g. for a model built on the meta device).
    """
    checkpoint = load_checkpoint(path)
    state_dict, filled, mismatch = match_model(checkpoint.state_dict, model, checkpoint.path, strict=strict)
    result = model.load_state_dict(state_dict, strict=strict, assign=assign)
    return LoadReport(path=checkpoint.path, file_format=checkpoint.file_format,
                      tensors_loaded=len(state_dict) - len(mismatch.unexpected), aliases_filled=filled,
                      missing=list(result.missing_keys), unexpected=list(result.unexpected_keys),
                      training_config=checkpoint.training_config)


# --------------------------------------------------------------------------------------------------------------------
# Writing


@dataclass
class SaveReport:
    path: Path
    tensors_written: int
    aliases_dropped: dict[str, str]
    parameters: int  # elements of the tensors written (aliases counted once)
    bytes_written: int


def save_safetensors(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike[str],
                     metadata: Mapping[str, str] | None = None, training_config: Any = None) -> SaveReport:
    """Write ``state_dict`` as safetensors, atomically (temporary file in the same folder, then rename).

    Aliases (see :func:`find_aliases`) are written once; the dropped names go into the metadata (``META_ALIASES``)
    so :func:`load_state_dict_file` restores them. ``training_config`` (plain data) is stored as JSON text.
    """
    from safetensors.torch import save_file

    path = Path(path)
    aliases = find_aliases(state_dict)
    tensors: dict[str, torch.Tensor] = {}
    seen_storage_ptrs: set[int] = set()
    for name, tensor in state_dict.items():
        if name in aliases:
            continue
        tensor = tensor.detach().to("cpu")
        ptr = tensor.untyped_storage().data_ptr() if _storage_key(tensor) is not None else None
        if ptr is not None and ptr in seen_storage_ptrs:
            tensor = tensor.clone()  # another view of a storage already written: safetensors needs its own copy
        elif ptr is not None:
            seen_storage_ptrs.add(ptr)
        tensors[name] = tensor.contiguous()
    header: dict[str, str] = {"format": "pt"}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"safetensors metadata must map str to str; got {key!r}: {type(value).__name__}")
        header[key] = value
    if aliases:
        header[META_ALIASES] = json.dumps(aliases, sort_keys=True)
    if training_config is not None:
        header[META_TRAINING_CONFIG] = json.dumps(training_config, sort_keys=True, default=str)

    path.parent.mkdir(parents=True, exist_ok=True)
    # Name chosen before anything exists on disk, so an interrupt at any point leaves no stray temporary file;
    # safetensors creates it with the process umask (mkstemp's 0600 would make the checkpoint private).
    tmp_name = str(path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        save_file(tensors, tmp_name, metadata=header)
        with open(tmp_name, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return SaveReport(path=path, tensors_written=len(tensors), aliases_dropped=aliases,
                      parameters=sum(t.numel() for t in tensors.values()), bytes_written=path.stat().st_size)


def convert_checkpoint(source: str | os.PathLike[str], destination: str | os.PathLike[str]) \
        -> tuple[Checkpoint, SaveReport]:
    """``.pth`` (or any readable weights file) -> ``.safetensors`` with aliases and training config recorded."""
    checkpoint = load_checkpoint(source)
    metadata = {META_SOURCE: checkpoint.path.name}
    if checkpoint.epoch is not None:
        metadata[META_EPOCH] = str(checkpoint.epoch)
    report = save_safetensors(checkpoint.state_dict, destination, metadata=metadata,
                              training_config=checkpoint.training_config)
    return checkpoint, report
