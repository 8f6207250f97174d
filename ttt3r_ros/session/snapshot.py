"""Session snapshots: a reconstruction saved to one file and continued later, exactly.

What a snapshot holds (one camera stream of an engine):
- the engine's stream (``ttt3r_ros.engine.stream_snapshot``): the recurrent state and pose memory (fetched back from
  a CUDA graph that holds them), the chunk bookkeeping (frame index, chunk index, base pose, inverse of the first
  chained pose, last chained pose, whether the next frame opens a chunk), both trajectories and the voxel map with
  its key index. The engine keeps no running intrinsics estimate (each frame's focal comes from that frame's own
  points, or from the calibration given with it), so there is none to save;
- the input position, as the front end describes it (e.g. the last stamp and how many input frames were read),
  and front-end extras (JSON values and tensors, e.g. the offline run's counters);
- what it was made with (``SnapshotProvenance``): the model configuration (name and the resolved configuration),
  an identifier of the weights (``weights_id``), the update rule, the precision, the image size, the reset interval,
  the voxel size and the map bound; plus the ttt3r_ros version and the format version.

The file is a safetensors file (every tensor under ``stream/`` or ``extra/``) whose header metadata holds the JSON
description under ``METADATA_KEY`` and a SHA-256 over that JSON and every tensor's name, dtype, shape and bytes
under ``CHECKSUM_KEY``. It is written atomically (``ttt3r_ros.atomic_io``): a crash leaves the previous snapshot.

Loading refuses (``SnapshotError``), before anything is changed: a file that is not a snapshot, is truncated or
corrupt (the checksum), has another format version, or was made with another model configuration, weights, update
rule, precision, image size, reset interval, voxel size or map bound (the message names each difference). The
model configuration is compared by its resolved value, so a preset and a JSON file with the same sizes agree. Other
engine options (confidence threshold, strides, camera_to_base) are recorded but may differ.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..atomic_io import atomic_write_bytes
from ..engine import StreamingReconstructor
from ..engine.stream_snapshot import StreamSnapshot
from ..model.fast import PRECISION_DTYPES
from .errors import SessionError

SNAPSHOT_FORMAT = "ttt3r_ros session snapshot"
SNAPSHOT_FORMAT_VERSION = 1
METADATA_KEY = "ttt3r_ros.snapshot"
CHECKSUM_KEY = "ttt3r_ros.snapshot.sha256"
STREAM_PREFIX = "stream/"
EXTRA_PREFIX = "extra/"
# Weights files up to this size are hashed whole; larger ones (the official checkpoint is ~3 GB, ~6 s of SHA-256
# on one core) by a fixed sample: the first WEIGHTS_HEAD_BYTES (the safetensors header with every tensor's name,
# dtype, shape and offsets, and more) and WEIGHTS_SAMPLE_BLOCKS blocks of WEIGHTS_SAMPLE_BYTES at evenly spaced
# offsets, the last one ending at the end of the file, plus the file size.
WEIGHTS_FULL_HASH_MAX_BYTES = 256 * 2**20
WEIGHTS_HEAD_BYTES = 2**20
WEIGHTS_SAMPLE_BLOCKS = 1024
WEIGHTS_SAMPLE_BYTES = 64 * 2**10


class SnapshotError(SessionError):
    """A snapshot cannot be written or loaded; the message says why (for a refused load: each difference)."""


@dataclass(frozen=True)
class SnapshotProvenance:
    """What a snapshot was made with. Every field but ``model_config_name`` must match for a load."""
    model_config_name: str             # the preset name or JSON path the session was opened with (informative)
    model_config: dict[str, Any]       # the resolved configuration (ModelConfig.to_json_dict())
    weights: str                       # weights_id(): a digest of the weights file, or random(seed=N)
    update_rule: str
    precision: str                     # fp32 | bf16 | fp16: the model's weights dtype
    image_size: int
    reset_interval: int | None
    voxel_size_m: float
    map_max_points: int

    def differences(self, other: "SnapshotProvenance") -> list[str]:
        """'what: snapshot X, this session Y' for every field that must match and differs (self: the snapshot)."""
        out = []
        for f in dataclasses.fields(self):
            if f.name == "model_config_name":
                continue
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if mine == theirs:
                continue
            if f.name == "model_config":
                out.append(f"model config: snapshot {self.model_config_name!r} "
                           f"({_config_difference(mine, theirs)}), this session {other.model_config_name!r}")
            else:
                out.append(f"{f.name}: snapshot {mine!r}, this session {theirs!r}")
        return out


def _config_difference(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> str:
    """The first differing entries of two nested config dicts, e.g. 'enc_depth 2 vs 24'."""
    diffs = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, Mapping) and isinstance(y, Mapping):
            inner = _config_difference(x, y, f"{prefix}{key}.")
            if inner:
                diffs.append(inner)
        elif x != y:
            diffs.append(f"{prefix}{key} {x!r} vs {y!r}")
    return ", ".join(diffs[:4]) + (", ..." if len(diffs) > 4 else "")


@dataclass
class Snapshot:
    """A snapshot file's validated content."""
    path: Path
    provenance: SnapshotProvenance
    stream: StreamSnapshot
    input_position: dict[str, Any]
    extra: dict[str, Any]
    extra_tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(repr=False)

    @property
    def frames_processed(self) -> int:
        """Frames the engine had processed when the snapshot was taken."""
        return int(self.stream.values["index"])


# ------------------------------------------------------------------------------------------------- provenance
_weights_digest_cache: dict[tuple[str, int, int], str] = {}


def weights_file_digest(path: str | os.PathLike[str]) -> str:
    """'sha256:HEX' over all bytes of a file up to WEIGHTS_FULL_HASH_MAX_BYTES, else 'sha256-sampled:HEX' over the
    fixed sample described at the top of this module. Cached per (path, size, modification time)."""
    path = os.path.abspath(os.fspath(path))
    stat = os.stat(path)
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key in _weights_digest_cache:
        return _weights_digest_cache[key]
    h = hashlib.sha256()
    size = stat.st_size
    with open(path, "rb") as f:
        if size <= WEIGHTS_FULL_HASH_MAX_BYTES:
            for block in iter(lambda: f.read(2**20), b""):
                h.update(block)
            digest = "sha256:" + h.hexdigest()
        else:
            h.update(size.to_bytes(8, "little"))
            h.update(f.read(WEIGHTS_HEAD_BYTES))
            last_start = size - WEIGHTS_SAMPLE_BYTES
            for i in range(WEIGHTS_SAMPLE_BLOCKS):
                f.seek(last_start * i // (WEIGHTS_SAMPLE_BLOCKS - 1))
                h.update(f.read(WEIGHTS_SAMPLE_BYTES))
            digest = "sha256-sampled:" + h.hexdigest()
    _weights_digest_cache[key] = digest
    return digest


def weights_id(weights_path: str | os.PathLike[str] | None, seed: int) -> str:
    """The weights' identifier: the file's digest, or 'random(seed=N)' for random weights (deterministic)."""
    return f"random(seed={int(seed)})" if weights_path is None else weights_file_digest(weights_path)


def engine_provenance(engine: Any, model_config_name: str, weights: str) -> SnapshotProvenance:
    """The provenance of a snapshot of ``engine`` (a Streaming- or BatchedReconstructor): model configuration,
    precision and engine options as they run; ``weights`` from ``weights_id``."""
    config = engine.config
    model = engine.model
    names = {dtype: name for name, dtype in PRECISION_DTYPES.items()}
    if model.dtype not in names:
        raise SnapshotError(f"snapshot: model dtype {model.dtype} is not one of the precisions {sorted(names.values())}")
    return SnapshotProvenance(
        model_config_name=str(model_config_name), model_config=model.cfg.to_json_dict(), weights=weights,
        update_rule=config.update_rule, precision=names[model.dtype], image_size=int(config.size),
        reset_interval=None if config.reset_interval is None else int(config.reset_interval),
        voxel_size_m=float(config.voxel_size), map_max_points=int(config.map_max_points))


def session_provenance(session: Any, engine: Any) -> SnapshotProvenance:
    """``engine_provenance`` for an engine of an opened ``Session`` (its model config name, weights and seed)."""
    return engine_provenance(engine, session.config.model_config,
                             weights_id(session.weights.path, session.config.seed))


# ------------------------------------------------------------------------------------------------------ files
def _tensor_bytes(t: torch.Tensor) -> np.ndarray:
    """A tensor's raw bytes (any dtype, bf16 and bool included) as a uint8 array (no copy where possible)."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel() == 0:
        return np.zeros(0, np.uint8)
    return flat.view(torch.uint8).numpy()


def _checksum(description: str, tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256(description.encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray,)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"snapshot: not JSON serialisable: {type(value).__name__}")


def save_snapshot(path: str | os.PathLike[str], engine: Any, provenance: SnapshotProvenance, *, stream: int = 0,
                  input_position: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None,
                  extra_tensors: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write stream ``stream`` of ``engine`` (Streaming- or BatchedReconstructor) to ``path`` atomically.

    ``provenance``: ``session_provenance(session, engine)`` (or ``engine_provenance``). ``input_position`` and
    ``extra``: JSON values, ``extra_tensors``: tensors, all given back by ``load_snapshot``. Returns the path."""
    exported = _stream_of(engine, stream).export_stream()
    tensors = {STREAM_PREFIX + name: t for name, t in exported.tensors.items()}
    for name, t in (extra_tensors or {}).items():
        tensors[EXTRA_PREFIX + name] = t.detach().to("cpu").contiguous()
    description = json.dumps({
        "format": SNAPSHOT_FORMAT,
        "format_version": SNAPSHOT_FORMAT_VERSION,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "ttt3r_ros_version": _package_version(),
        "provenance": dataclasses.asdict(provenance),
        "engine_options": _recorded_options(engine.config),
        "stream": exported.values,
        "input_position": dict(input_position or {}),
        "extra": dict(extra or {}),
    }, default=_json_value, allow_nan=True, sort_keys=True)
    from safetensors.torch import save

    data = save(tensors, metadata={METADATA_KEY: description, CHECKSUM_KEY: _checksum(description, tensors)})
    atomic_write_bytes(path, data)
    return Path(path)


@dataclass
class _EngineStream:
    """One stream of an engine, with the one-argument export/import of StreamingReconstructor."""
    engine: Any
    stream: int

    def export_stream(self) -> StreamSnapshot:
        return self.engine.export_stream(self.stream)

    def import_stream(self, data: StreamSnapshot) -> None:
        self.engine.import_stream(self.stream, data)


def _stream_of(engine: Any, stream: int) -> Any:
    if isinstance(engine, StreamingReconstructor):
        if stream != 0:
            raise ValueError(f"a StreamingReconstructor has one stream (0), not {stream}")
        return engine
    return _EngineStream(engine, stream)


def _package_version() -> str:
    from .. import __version__

    return __version__


def _recorded_options(config: Any) -> dict[str, Any]:
    """The engine options a snapshot records for information (camera_to_base as a nested list)."""
    options = dataclasses.asdict(config)
    options["camera_to_base"] = np.asarray(options["camera_to_base"]).tolist()
    return options


def read_snapshot(path: str | os.PathLike[str]) -> Snapshot:
    """The validated content of a snapshot file (format, version, checksum, structure); SnapshotError otherwise.
    Touches no engine."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SnapshotError(f"no snapshot at {path}") from None
    except OSError as err:
        raise SnapshotError(f"cannot read snapshot {path}: {err}") from err
    where = f"snapshot {path}"
    if len(data) < 8:
        raise SnapshotError(f"{where} is truncated or not a snapshot ({len(data)} bytes)")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > len(data) - 8:
        raise SnapshotError(f"{where} is truncated or not a snapshot (header of {header_len} bytes in a file of "
                            f"{len(data)})")
    try:
        header = json.loads(data[8:8 + header_len])
        metadata = header.get("__metadata__") or {}
        description_text = metadata[METADATA_KEY]
        checksum = metadata[CHECKSUM_KEY]
        description = json.loads(description_text)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise SnapshotError(f"{where} is not a ttt3r_ros session snapshot (no snapshot description in its "
                            "header)") from None
    if not isinstance(description, dict) or description.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotError(f"{where} is not a ttt3r_ros session snapshot")
    version = description.get("format_version")
    if version != SNAPSHOT_FORMAT_VERSION:
        raise SnapshotError(f"{where} has format version {version!r}; this ttt3r_ros "
                            f"({_package_version()}) reads version {SNAPSHOT_FORMAT_VERSION} only")
    from safetensors.torch import load

    try:
        tensors = load(data)
    except Exception as err:  # safetensors raises its own error type for truncated or inconsistent files
        raise SnapshotError(f"{where} is corrupt or truncated: {err}") from None
    if _checksum(description_text, tensors) != checksum:
        raise SnapshotError(f"{where} is corrupt: its checksum does not match its content")
    try:
        provenance = SnapshotProvenance(**description["provenance"])
        stream = StreamSnapshot({n[len(STREAM_PREFIX):]: t for n, t in tensors.items()
                                 if n.startswith(STREAM_PREFIX)}, dict(description["stream"]))
        extra_tensors = {n[len(EXTRA_PREFIX):]: t for n, t in tensors.items() if n.startswith(EXTRA_PREFIX)}
        if len(stream.tensors) + len(extra_tensors) != len(tensors):
            raise ValueError("tensors outside stream/ and extra/")
        return Snapshot(path=path, provenance=provenance, stream=stream,
                        input_position=dict(description["input_position"]), extra=dict(description["extra"]),
                        extra_tensors=extra_tensors, metadata=description)
    except (KeyError, TypeError, ValueError) as err:
        raise SnapshotError(f"{where} is malformed ({type(err).__name__}: {err})") from None


def check_compatible(snapshot: Snapshot, provenance: SnapshotProvenance) -> None:
    """SnapshotError naming every difference between what the snapshot was made with and ``provenance``."""
    differences = snapshot.provenance.differences(provenance)
    if differences:
        raise SnapshotError(f"snapshot {snapshot.path} was made with different settings, refusing to load it: "
                            + "; ".join(differences))


def load_snapshot(path: str | os.PathLike[str], engine: Any, provenance: SnapshotProvenance, *,
                  stream: int = 0) -> Snapshot:
    """Read, validate and check ``path`` against ``provenance`` (this session's), then replace stream ``stream`` of
    ``engine`` with it. On any refusal (SnapshotError) the engine is unchanged."""
    return apply_snapshot(read_snapshot(path), engine, provenance, stream=stream)


def apply_snapshot(snapshot: Snapshot, engine: Any, provenance: SnapshotProvenance, *, stream: int = 0) -> Snapshot:
    """``load_snapshot`` for a snapshot already read (``read_snapshot``)."""
    check_compatible(snapshot, provenance)
    try:
        target = _stream_of(engine, stream)
        target.import_stream(snapshot.stream)
    except (ValueError, KeyError, TypeError) as err:
        raise SnapshotError(f"snapshot {snapshot.path} does not fit this engine: {err}") from None
    return snapshot
