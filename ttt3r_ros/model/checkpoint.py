"""Reading, checking and writing model weights: ``.safetensors`` (ours, what the node loads) and the official ``.pth``.

The official ``cut3r_512_dpt_4_64.pth`` is a pickle holding ``"model"`` (the state dict), ``"args"`` (the OmegaConf
training config) and ``"epoch"``. It is read through :mod:`ttt3r_ros.model.safe_pickle`, which never executes code
from the file. Convert it once with ``ttt3r-ros convert-checkpoint IN.pth OUT.safetensors``.

Aliases: each DPT adapter registers its four ``scratch.layerN_rn`` convolutions a second time as
``scratch.layer_rn.{N-1}`` (SPEC §1.4), so ``state_dict()`` names 12 tensors twice. safetensors refuses shared
storage, so :func:`save_safetensors` writes each tensor once and records the dropped names in the metadata;
:func:`load_state_dict_file` and :func:`load_weights` put them back before the strict load.

Hostile files: every tensor's layout (shape, strides, offset) is checked against the bytes the file really holds
before any element is read, and a safetensors header's dtypes, shapes and offsets against the file size, so a small
file cannot describe a huge tensor (an ``expand``-ed view, a storage shorter than its shape) that a comparison or a
copy would then walk. Alias equality is checked only after that (and, when loading into a model, after the key and
shape checks), so it never reads more than the file holds.

Precision: :func:`save_safetensors` / :func:`convert_checkpoint` can write the floating-point tensors as float16 or
bfloat16 (half the size, for 8 GB devices), one tensor at a time; the dtype is recorded in the metadata
(``META_DTYPE``). Loading casts each file tensor once, straight into the model's own dtype.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from ..atomic_io import atomic_write
from . import safe_pickle

_log = logging.getLogger(__name__)

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
META_DTYPE = "ttt3r_ros.dtype"  # torch name of the floating-point tensors' dtype ("float32", "bfloat16", "float16")

# safetensors dtype codes (the format's own names) <-> torch dtypes
_SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
_SAFETENSORS_CODES = {dtype: code for code, dtype in _SAFETENSORS_DTYPES.items()}
_SAFETENSORS_MAX_HEADER_BYTES = 100_000_000  # the format's own limit; the full model's header is ~100 KB
_SAFETENSORS_ALIGN = 8  # header padded so the data (sorted by element size, largest first) stays aligned

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
    file_bytes = path.stat().st_size
    record_bytes: dict[str, int] | None = None
    if file_format == "torch-zip":
        try:
            with zipfile.ZipFile(path) as archive:
                infos = archive.infolist()
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise CheckpointError(f"{path}: truncated or corrupt checkpoint (cannot read the zip archive: {exc})") \
                from exc
        names = [info.filename for info in infos]
        if any(name.endswith("/constants.pkl") for name in names):
            # torch.load would hand this to torch.jit.load, which runs TorchScript; we only read state dicts.
            raise CheckpointError(f"{path}: this is a TorchScript archive, not a weights checkpoint")
        if not any(name.endswith("/data.pkl") for name in names):
            raise CheckpointError(f"{path}: zip archive without data.pkl: not a PyTorch checkpoint")
        # Storage records are "<archive>/data/<key>", stored uncompressed at exactly the storage's size.
        record_bytes = {info.filename.split("/", 1)[1]: info.file_size for info in infos if "/" in info.filename}
    if os.getenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "0").lower() in ("1", "y", "yes", "true"):
        # torch then refuses any pickle_module; honour the request with torch's own weights-only loader (reads plain
        # state dicts, refuses the OmegaConf config of the official file). Layouts are checked afterwards
        # (_check_layouts); mmap makes a storage record that claims more than the file a short slice, not a read.
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=file_format == "torch-zip")
        except Exception as exc:
            raise CheckpointError(f"{path}: torch's weights-only loader (forced by TORCH_FORCE_WEIGHTS_ONLY_LOAD) "
                                  f"cannot read it ({type(exc).__name__}: {str(exc).splitlines()[0]}); unset the "
                                  "variable to use ttt3r_ros's restricted unpickler, which never runs code from the "
                                  "file either") from exc
    try:
        # mmap keeps the 3 GB official file out of RAM until load_state_dict copies it into the model.
        with safe_pickle.storage_limits(safe_pickle.StorageLimits(file_bytes=file_bytes, record_bytes=record_bytes)):
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
        isinstance(k, str) and isinstance(v, (torch.Tensor, safe_pickle.RejectedTensor)) for k, v in value.items())


def _listing(items: list[str]) -> str:
    shown = "; ".join(items[:_LIST_LIMIT])
    return shown + (f"; ... and {len(items) - _LIST_LIMIT} more" if len(items) > _LIST_LIMIT else "")


def _layout_error(where: Any, problems: list[str]) -> CheckpointError:
    return CheckpointError(f"{where}: refusing {len(problems)} tensor(s) with an unusable layout (checked on shapes, "
                           f"strides and storage sizes; no element was read): {_listing(problems)}")


def _check_layouts(where: Any, state_dict: Mapping[str, Any]) -> None:
    """Every entry a tensor whose view stays inside its real storage, without overlap (integers only, no data read)."""
    problems = []
    for name, tensor in state_dict.items():
        if isinstance(tensor, safe_pickle.RejectedTensor):
            problems.append(f"'{name}' ({str(tensor.dtype).replace('torch.', '')}, shape {list(tensor.shape)}): "
                            f"{tensor.reason}")
            continue
        if tensor.device.type == "meta":
            continue  # no data to read
        storage_elements = tensor.untyped_storage().nbytes() // tensor.element_size()
        problem = safe_pickle.tensor_layout_problem(tuple(tensor.shape), tuple(tensor.stride()),
                                                    tensor.storage_offset(), storage_elements)
        if problem is not None:
            problems.append(f"'{name}' ({str(tensor.dtype).replace('torch.', '')}): {problem}")
    if problems:
        raise _layout_error(where, problems)


def _strip_module_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Checkpoints saved from DistributedDataParallel prefix every key with "module."; the reference strips it only
    # when every key has it, and so do we.
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return state_dict


def _checkpoint_from_torch(path: Path, file_format: str, loaded: Any, verify_aliases: bool) -> Checkpoint:
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
    _check_layouts(path, raw_state)  # before anything reads an element (aliases below compare data)
    state_dict = _strip_module_prefix({k: v.detach() for k, v in raw_state.items()})
    training_config = safe_pickle.to_plain_data(rest.pop("args")) if "args" in rest else None
    epoch = rest.pop("epoch", None)
    return Checkpoint(path=path, file_format=file_format, state_dict=state_dict, training_config=training_config,
                      epoch=epoch if type(epoch) is int else None,
                      # optimizer/scaler states (if a training checkpoint kept them) are of no use here
                      other_entries={str(k): safe_pickle.to_plain_data(v) for k, v in rest.items()
                                     if k not in ("optimizer", "scaler")},
                      aliases=find_aliases(state_dict, path, verify=verify_aliases))


def _safetensors_header(path: Path) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(header bytes, tensor entries, metadata) of a safetensors file, every entry checked against the file size.

    Checked on the header alone, before any data is mapped: known dtype, non-negative integer shape, offsets that
    span exactly shape x element size, lie inside the data section and do not overlap another tensor's.
    """
    file_bytes = path.stat().st_size
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        if header_len > file_bytes - 8:
            raise CheckpointError(f"{path}: truncated or corrupt safetensors file (header of {header_len:,} bytes "
                                  f"does not fit in the file's {file_bytes:,} bytes)")
        if header_len > _SAFETENSORS_MAX_HEADER_BYTES:
            raise CheckpointError(f"{path}: safetensors header of {header_len:,} bytes is over the format's limit "
                                  f"of {_SAFETENSORS_MAX_HEADER_BYTES:,}")
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file (header is not JSON: {exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise CheckpointError(f"{path}: corrupt safetensors file (__metadata__ must map strings to strings)")
    data_bytes = file_bytes - 8 - header_len
    problems: list[str] = []
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            problems.append(f"'{name}': entry is not {{dtype, shape, data_offsets}}")
            continue
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _SAFETENSORS_DTYPES:
            problems.append(f"'{name}': unknown dtype {dtype!r}")
            continue
        if not isinstance(shape, list) or not all(type(v) is int and v >= 0 for v in shape):
            problems.append(f"'{name}': shape {shape!r} is not a list of non-negative integers")
            continue
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(v) is int for v in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            problems.append(f"'{name}': data_offsets {offsets!r} are not [begin, end] with 0 <= begin <= end")
            continue
        begin, end = offsets
        needed = math.prod(shape) * _SAFETENSORS_DTYPES[dtype].itemsize
        if end - begin != needed:
            problems.append(f"'{name}': {dtype} {shape} needs {needed:,} bytes but its data_offsets span "
                            f"{end - begin:,}")
        elif end > data_bytes:
            problems.append(f"'{name}': data_offsets end at byte {end:,} but the file holds {data_bytes:,} bytes of "
                            f"data (truncated or corrupt safetensors file)")
        elif end > begin:
            spans.append((begin, end, name))
    spans.sort()
    for (_, prev_end, prev_name), (begin, _, name) in zip(spans, spans[1:]):
        if begin < prev_end:
            problems.append(f"'{name}' overlaps '{prev_name}' in the file")
    if problems:
        raise CheckpointError(f"{path}: refusing the safetensors header ({len(problems)} bad entr"
                              f"{'y' if len(problems) == 1 else 'ies'}; no data was read): {_listing(problems)}")
    return header_len, header, metadata


def _read_safetensors(path: Path, verify_aliases: bool) -> Checkpoint:
    if sys.byteorder != "little":
        raise CheckpointError(f"{path}: safetensors data is little-endian; this machine is not")
    header_len, header, metadata = _safetensors_header(path)
    data_start = 8 + header_len
    # One private (copy-on-write) memory map of the file: tensors are views into it, so reading costs page cache,
    # not a copy of the whole file, and load_state_dict's copy into the model is the only one.
    mapped = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=path.stat().st_size)
    state_dict: dict[str, torch.Tensor] = {}
    for name, entry in header.items():
        dtype, shape = _SAFETENSORS_DTYPES[entry["dtype"]], entry["shape"]
        begin, end = entry["data_offsets"]
        if begin == end:
            state_dict[name] = torch.empty(shape, dtype=dtype)
        elif (data_start + begin) % dtype.itemsize == 0:
            state_dict[name] = torch.empty(0, dtype=dtype).set_(mapped, (data_start + begin) // dtype.itemsize, shape)
        else:  # another writer's unaligned layout: one copy of this tensor
            raw = torch.empty(0, dtype=torch.uint8).set_(mapped, data_start + begin, (end - begin,))
            state_dict[name] = raw.clone().view(dtype).reshape(shape)
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
                if verify_aliases:
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


def load_checkpoint(path: str | os.PathLike[str], verify_aliases: bool = True) -> Checkpoint:
    """Read a ``.safetensors`` or ``.pth`` weights file safely (format detected from its first bytes).

    Tensor layouts are checked before any element is read (:class:`CheckpointError` naming the key). With
    ``verify_aliases=False`` the equality of aliased copies is left to the caller (:func:`verify_aliases`), e.g. to
    run after the key and shape checks against a model.
    """
    path = Path(path)
    if not path.is_file():
        raise _missing_file_error(path)
    file_format = _sniff_format(path)
    if file_format == "safetensors":
        return _read_safetensors(path, verify_aliases)
    return _checkpoint_from_torch(path, file_format, _read_torch(path, file_format), verify_aliases)


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
    # Callers check layouts first (_check_layouts), so torch.equal reads at most the bytes the file holds.
    if alias_tensor.shape != original_tensor.shape:
        raise CheckpointError(f"{where}: '{alias}' must be the same tensor as '{original}' (an alias), but their "
                              f"shapes differ ({list(alias_tensor.shape)} vs {list(original_tensor.shape)})")
    same_view = _storage_key(alias_tensor) is not None and _storage_key(alias_tensor) == _storage_key(original_tensor)
    if not same_view and not torch.equal(alias_tensor, original_tensor):
        raise CheckpointError(f"{where}: '{alias}' must be the same tensor as '{original}' (an alias), but the two "
                              f"differ")


def verify_aliases(checkpoint: Checkpoint) -> None:
    """Check that each alias of ``checkpoint`` equals its original (for ``load_checkpoint(verify_aliases=False)``)."""
    for alias, original in checkpoint.aliases.items():
        _check_alias_equal(checkpoint.path, alias, checkpoint.state_dict[alias], original,
                           checkpoint.state_dict[original])


def find_aliases(state_dict: Mapping[str, torch.Tensor], where: Any = "state dict", verify: bool = True) \
        -> dict[str, str]:
    """``{alias: original}`` for entries that are the same tensor as an earlier entry.

    Shared storage (how a ``.pth`` from ``torch.save(state_dict())`` stores them) and, for files that stored copies,
    the DPT naming rule ``X.scratch.layer_rn.{i}.weight`` == ``X.scratch.layer{i+1}_rn.weight`` (equality checked
    unless ``verify`` is False). The first name in state-dict order is the original, as in the reference manifest's
    ``alias_of``. The tensors' layouts must have been checked (``_check_layouts``) before.
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
            if verify:
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


def _fill_model_aliases(state_dict: dict[str, torch.Tensor], model: torch.nn.Module) \
        -> tuple[list[str], list[tuple[str, str]]]:
    """Add the model's alias names (no data read); returns (names added, (name, first name) pairs to compare)."""
    added: list[str] = []
    to_compare: list[tuple[str, str]] = []
    for names in model_alias_groups(model):
        present = [n for n in names if n in state_dict]
        if not present:
            continue  # reported as missing by the comparison
        to_compare.extend((other, present[0]) for other in present[1:])
        for name in names:
            if name not in state_dict:
                state_dict[name] = state_dict[present[0]]
                added.append(name)
    return added, to_compare


def fill_model_aliases(state_dict: dict[str, torch.Tensor], model: torch.nn.Module, where: Any = "checkpoint") \
        -> list[str]:
    """Add the names under which ``model`` registers an already-present tensor again; returns the names added.

    Where the file holds several names of one group they must be equal (else :class:`CheckpointError`).
    """
    added, to_compare = _fill_model_aliases(state_dict, model)
    for other, first in to_compare:
        _check_alias_equal(where, other, state_dict[other], first, state_dict[first])
    return added


def match_model(state_dict: Mapping[str, torch.Tensor], model: torch.nn.Module, where: Any = "checkpoint",
                strict: bool = True) -> tuple[dict[str, torch.Tensor], list[str], StateDictMismatch]:
    """Fill the model's alias names, then compare keys and shapes (works for models on the meta device).

    Returns (state dict with aliases filled, alias names added, mismatch). Raises :class:`CheckpointError` naming
    wrong shapes, and with ``strict`` also missing and unexpected keys. Only names and shapes are looked at until
    those pass; then aliased entries the file stores twice are compared.
    """
    state_dict = dict(state_dict)
    filled, to_compare = _fill_model_aliases(state_dict, model)
    expected = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}
    mismatch = compare_state_dict(state_dict, expected)
    if mismatch.wrong_shapes or (strict and not mismatch.ok):
        raise CheckpointError(f"{where} does not match the model ({type(model).__name__}, {len(expected)} "
                              f"state-dict entries; file has {len(state_dict)}):\n{mismatch.describe(strict)}")
    for other, first in to_compare:
        _check_alias_equal(where, other, state_dict[other], first, state_dict[first])
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
    casts: dict[str, int] = field(default_factory=dict)  # "bfloat16 -> float32": how many tensors were cast so


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _planned_casts(state_dict: Mapping[str, torch.Tensor], model: torch.nn.Module) -> dict[str, int]:
    targets = model.state_dict(keep_vars=True)
    counts = Counter(f"{_dtype_name(t.dtype)} -> {_dtype_name(targets[k].dtype)}" for k, t in state_dict.items()
                     if k in targets and t.dtype != targets[k].dtype)
    return dict(sorted(counts.items()))


def load_weights(model: torch.nn.Module, path: str | os.PathLike[str], strict: bool = True,
                 assign: bool = False) -> LoadReport:
    """Load a ``.safetensors``/``.pth`` file into ``model``, checking layouts, then keys and shapes, then aliases.

    ``strict=True``: any missing or unexpected key raises :class:`CheckpointError` (naming them); wrong shapes always
    raise. Each file tensor is copied once into the model's own parameter, cast to that parameter's dtype on the way
    (a bfloat16 file into a bfloat16 model casts nothing; into a float32 model it is upcast, said in one log line):
    never a second full copy of the weights. ``assign=True`` instead takes the file's tensors as they are, in the
    file's dtype (e.g. for a model built on the meta device).
    """
    checkpoint = load_checkpoint(path, verify_aliases=False)  # aliases compared after the key/shape checks
    state_dict, filled, mismatch = match_model(checkpoint.state_dict, model, checkpoint.path, strict=strict)
    verify_aliases(checkpoint)
    casts = {} if assign else _planned_casts(state_dict, model)
    if casts:
        _log.info("%s: casting while loading (each tensor once, into the model's dtype): %s", checkpoint.path,
                  ", ".join(f"{n} tensor(s) {kind}" for kind, n in casts.items()))
    result = model.load_state_dict(state_dict, strict=strict, assign=assign)
    return LoadReport(path=checkpoint.path, file_format=checkpoint.file_format,
                      tensors_loaded=len(state_dict) - len(mismatch.unexpected), aliases_filled=filled,
                      missing=list(result.missing_keys), unexpected=list(result.unexpected_keys),
                      training_config=checkpoint.training_config, casts=casts)


# --------------------------------------------------------------------------------------------------------------------
# Writing


@dataclass
class SaveReport:
    path: Path
    tensors_written: int
    aliases_dropped: dict[str, str]
    parameters: int  # elements of the tensors written (aliases counted once)
    bytes_written: int
    dtype: torch.dtype | None = None  # what the floating-point tensors were written as (None: several, or none)


def save_safetensors(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike[str],
                     metadata: Mapping[str, str] | None = None, training_config: Any = None,
                     dtype: torch.dtype | None = None) -> SaveReport:
    """Write ``state_dict`` as safetensors, atomically (``ttt3r_ros.atomic_io``), one tensor at a time.

    Aliases (see :func:`find_aliases`) are written once; the dropped names go into the metadata (``META_ALIASES``)
    so :func:`load_state_dict_file` restores them. ``training_config`` (plain data) is stored as JSON text.
    ``dtype`` (float32, float16 or bfloat16): floating-point tensors are cast to it, integer and bool tensors are
    written as they are. Each tensor is cast and written before the next one is touched, so the extra memory is one
    tensor, never a second copy of the state dict; the floating-point dtype is recorded as ``META_DTYPE``.
    Overlapping or expanded views are refused (they would be written out element by element).
    """
    if dtype is not None and dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    header_meta: dict[str, str] = {"format": "pt"}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"safetensors metadata must map str to str; got {key!r}: {type(value).__name__}")
        header_meta[key] = value
    path = Path(path)
    _check_layouts("state dict to save", state_dict)
    aliases = find_aliases(state_dict)

    def out_dtype(tensor: torch.Tensor) -> torch.dtype:
        return dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype

    written = {name: tensor for name, tensor in state_dict.items() if name not in aliases}
    unknown = sorted({str(out_dtype(t)) for t in written.values() if out_dtype(t) not in _SAFETENSORS_CODES})
    if unknown:
        raise TypeError(f"safetensors cannot store dtype(s) {unknown}")
    # Largest elements first: with the header padded to 8 bytes every tensor starts aligned to its element size.
    order = sorted(written, key=lambda n: (-out_dtype(written[n]).itemsize, n))
    entries: dict[str, Any] = {}
    offset = 0
    for name in order:
        tensor = written[name]
        nbytes = tensor.numel() * out_dtype(tensor).itemsize
        entries[name] = {"dtype": _SAFETENSORS_CODES[out_dtype(tensor)], "shape": list(tensor.shape),
                         "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    float_dtypes = {out_dtype(t) for t in written.values() if t.is_floating_point()}
    recorded_dtype = next(iter(float_dtypes)) if len(float_dtypes) == 1 else None
    if recorded_dtype is not None:
        header_meta[META_DTYPE] = _dtype_name(recorded_dtype)
    if aliases:
        header_meta[META_ALIASES] = json.dumps(aliases, sort_keys=True)
    if training_config is not None:
        header_meta[META_TRAINING_CONFIG] = json.dumps(training_config, sort_keys=True, default=str)
    header = json.dumps({"__metadata__": header_meta, **entries}, separators=(",", ":")).encode()
    header += b" " * (-len(header) % _SAFETENSORS_ALIGN)
    if sys.byteorder != "little":
        raise RuntimeError("safetensors data is little-endian; writing it on a big-endian machine is not supported")

    def write(f: Any) -> None:
        f.write(len(header).to_bytes(8, "little"))
        f.write(header)
        for name in order:
            tensor = written[name]
            if tensor.numel() == 0:
                continue
            # One tensor at a time: cast (a no-op when the dtype already matches), then hand its bytes to the file.
            chunk = tensor.detach().to(device="cpu", dtype=out_dtype(tensor)).contiguous()
            f.write(chunk.reshape(-1).view(torch.uint8).numpy().data)
            del chunk

    atomic_write(path, write)
    return SaveReport(path=path, tensors_written=len(written), aliases_dropped=aliases,
                      parameters=sum(t.numel() for t in written.values()), bytes_written=path.stat().st_size,
                      dtype=recorded_dtype)


def convert_checkpoint(source: str | os.PathLike[str], destination: str | os.PathLike[str],
                       dtype: torch.dtype | None = None) -> tuple[Checkpoint, SaveReport]:
    """``.pth`` (or any readable weights file) -> ``.safetensors`` with aliases and training config recorded.

    ``dtype``: write the floating-point tensors as float16/bfloat16 (half the file) or float32; None keeps them.
    The source is memory-mapped (zip ``.pth`` and safetensors), so the conversion holds one cast tensor at a time.
    """
    checkpoint = load_checkpoint(source)
    report = save_safetensors(checkpoint.state_dict, destination, metadata=conversion_metadata(checkpoint),
                              training_config=checkpoint.training_config, dtype=dtype)
    return checkpoint, report


def conversion_metadata(checkpoint: Checkpoint) -> dict[str, str]:
    """Metadata a converted file records about its source (file name, epoch)."""
    metadata = {META_SOURCE: checkpoint.path.name}
    if checkpoint.epoch is not None:
        metadata[META_EPOCH] = str(checkpoint.epoch)
    return metadata
