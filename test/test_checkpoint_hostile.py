"""Hostile checkpoints that describe more data than they hold (issue 13 item 1): refused fast, by key, before any read.

The reproduction: a 2 KB official-layout .pth whose DPT alias pair are two ``torch.zeros(1).expand(10**6, 10**6)``
views (10^12 elements over one stored float each). The old reader compared the pair element by element before any
key or shape check (minutes, deaf to SIGINT), and ``convert-checkpoint`` tried to write the view out (160 GB). Also:
storages shorter than their tensors claim, storage records cut short in the archive, and safetensors headers whose
offsets or shapes lie about the file.
"""
from __future__ import annotations

import collections
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from support.official_checkpoint import make_official_pth  # the official pickle layout (OmegaConf-style args, epoch)
from ttt3r_ros.model import build_model
from ttt3r_ros.model.checkpoint import (CheckpointError, load_checkpoint, load_weights, save_safetensors)

REPO = Path(__file__).resolve().parents[1]
FAIL_FAST_S = 5.0  # a refusal reads integers only: well under a second even on a loaded 2-core machine
ALIAS = "downstream_head.dpt_self.scratch.layer_rn.0.weight"
ORIGINAL = "downstream_head.dpt_self.scratch.layer1_rn.weight"
HUGE = (10**6, 10**6)


def expanded_alias_pth(path: Path, monkeypatch, **save_kwargs) -> None:
    """The reproduction, exactly: torch.save of two expanded views under the DPT alias names, official layout."""
    make_official_pth(path, {ORIGINAL: torch.zeros(1).expand(*HUGE), ALIAS: torch.zeros(1).expand(*HUGE)},
                      monkeypatch, **save_kwargs)


class ForgedTensor:
    """Pickles like a tensor (torch.save stores its storage as usual) but claims ``size``/``stride``/``offset``."""

    def __init__(self, stored: torch.Tensor, size: tuple[int, ...], stride: tuple[int, ...], offset: int = 0):
        self.storage = torch.storage.TypedStorage(wrap_storage=stored.untyped_storage(), dtype=stored.dtype,
                                                  _internal=True)
        self.size, self.stride, self.offset = size, stride, offset

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict()))


def assert_fast_refusal(action, *fragments: str) -> str:
    started = time.monotonic()
    with pytest.raises(CheckpointError) as err:
        action()
    elapsed_s = time.monotonic() - started
    assert elapsed_s < FAIL_FAST_S, f"refusal took {elapsed_s:.1f} s"
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"
    return message


# ---------------------------------------------------------------------------------------------------------------------
# The reproduction


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_expanded_alias_pair_is_refused_fast_naming_both_keys(tmp_path, monkeypatch, tiny_config, zip_format):
    path = tmp_path / "evil.pth"
    expanded_alias_pth(path, monkeypatch, _use_new_zipfile_serialization=zip_format)
    assert path.stat().st_size < 4096, "the reproduction is a tiny file"

    message = assert_fast_refusal(lambda: load_checkpoint(path), str(path), ALIAS, ORIGINAL, "stride 0",
                                  "expanded view", "[1000000, 1000000]", "no element was read")
    assert "1,000,000,000,000 elements" in message
    # the same through what the node's configure calls (build_model -> load_weights)
    model = build_model(tiny_config)
    assert_fast_refusal(lambda: load_weights(model, path), ALIAS, "stride 0")
    assert_fast_refusal(lambda: build_model(tiny_config, weights=path), ALIAS, "stride 0")


def test_overlapping_and_out_of_storage_views_are_refused_by_key(tmp_path, monkeypatch):
    stored = torch.arange(12, dtype=torch.float32)
    cases = {
        # strides that interleave: element (0, 1) and (1, 0) are the same stored float
        "overlap": (ForgedTensor(stored, (4, 4), (1, 1)), "stride 1 (an overlapping view", "a storage of 12"),
        # a truncated storage: 12 floats stored, 1,000 claimed
        "short": (ForgedTensor(stored, (1000,), (1,)), "need 1,000 elements but its storage holds 12",
                  "truncated or forged storage"),
        # the offset pushes the last element past the end
        "offset": (ForgedTensor(stored, (12,), (1,), offset=5), "need 17 elements but its storage holds 12",
                   "truncated or forged storage"),
    }
    for name, (forged, *fragments) in cases.items():
        for zip_format in (True, False):
            path = tmp_path / f"{name}_{zip_format}.pth"
            make_official_pth(path, {"fine": torch.ones(3), name: forged}, monkeypatch,
                              _use_new_zipfile_serialization=zip_format)
            assert_fast_refusal(lambda: load_checkpoint(path), f"'{name}'", *fragments)


def test_storage_record_cut_short_in_the_archive_is_refused(tmp_path):
    """A zip whose data record is shorter than the storage the pickle claims (truncated or spliced archive)."""
    full = tmp_path / "full.pth"
    torch.save({"model": {"w": torch.arange(1000, dtype=torch.float32)}}, full)
    cut = tmp_path / "cut.pth"
    with zipfile.ZipFile(full) as source, zipfile.ZipFile(cut, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("/data/0"):
                data = data[:400]  # 100 of 1,000 floats
            target.writestr(info.filename, data)
    assert_fast_refusal(lambda: load_checkpoint(cut), str(cut), "data/0", "claims 4,000 bytes",
                        "archive holds 400", "truncated or forged storage")


def test_shapes_are_checked_before_alias_equality(tmp_path, monkeypatch, tiny_config):
    """A well-formed file whose alias pair has the wrong (large) shape: named as a wrong shape, data never compared."""
    big = torch.zeros(2000, 2000)
    make_official_pth(tmp_path / "wrong.pth", {ORIGINAL: big, ALIAS: big.clone() + 1}, monkeypatch)
    model = build_model(tiny_config)
    message = assert_fast_refusal(lambda: load_weights(model, tmp_path / "wrong.pth", strict=False),
                                  "wrong shape(s)", f"{ORIGINAL} (checkpoint [2000, 2000]")
    assert "differ" not in message


def test_saving_an_expanded_view_is_refused_not_written_out(tmp_path):
    out = tmp_path / "w.safetensors"
    assert_fast_refusal(lambda: save_safetensors({"ok": torch.ones(2), "w": torch.zeros(1).expand(*HUGE)}, out),
                        "'w'", "stride 0")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------------
# convert-checkpoint on the reproduction, with a hard memory limit


CONVERT_UNDER_LIMIT = """
import resource, sys
limit = {limit_bytes}
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from ttt3r_ros.cli import main
sys.exit(main(["convert-checkpoint", {source!r}, {destination!r}]))
"""


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_convert_checkpoint_on_stride0_view_fails_fast_within_2gb(tmp_path, monkeypatch, zip_format):
    source, destination = tmp_path / "evil.pth", tmp_path / "evil.safetensors"
    expanded_alias_pth(source, monkeypatch, _use_new_zipfile_serialization=zip_format)
    code = CONVERT_UNDER_LIMIT.format(limit_bytes=2 * 1024**3, source=str(source), destination=str(destination))
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    elapsed_s = time.monotonic() - started
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith("error: "), out.stderr
    assert ALIAS in out.stderr and "stride 0" in out.stderr and "Traceback" not in out.stderr
    assert not destination.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["evil.pth"]
    assert elapsed_s < 60, f"took {elapsed_s:.0f} s (interpreter start included)"


# ---------------------------------------------------------------------------------------------------------------------
# safetensors headers that lie


def safetensors_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + data


@pytest.mark.parametrize("header, fragments", [
    # offsets past the end of the file: 4 TB claimed, 16 bytes present
    ({"w": {"dtype": "F32", "shape": list(HUGE), "data_offsets": [0, 4 * 10**12]}},
     ["'w'", "end at byte 4,000,000,000,000", "holds 16 bytes", "truncated or corrupt"]),
    # a huge shape over 16 bytes of offsets
    ({"w": {"dtype": "F32", "shape": list(HUGE), "data_offsets": [0, 16]}},
     ["'w'", "needs 4,000,000,000,000 bytes", "span 16"]),
    # two names over the same bytes (an alias pair forged by offsets)
    ({ORIGINAL: {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
      ALIAS: {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}},
     ["overlaps"]),
    ({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, ["'w'", "non-negative"]),
    ({"w": {"dtype": "F33", "shape": [4], "data_offsets": [0, 16]}}, ["'w'", "unknown dtype"]),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}}, ["'w'", "begin <= end"]),
], ids=["offsets-past-file", "shape-vs-offsets", "overlap", "negative-shape", "dtype", "reversed-offsets"])
def test_lying_safetensors_header_is_refused_before_reading(tmp_path, header, fragments):
    path = tmp_path / "lying.safetensors"
    path.write_bytes(safetensors_bytes(header, bytes(16)))
    assert_fast_refusal(lambda: load_checkpoint(path), str(path), "no data was read", *fragments)


def test_safetensors_header_longer_than_the_file_is_refused(tmp_path):
    path = tmp_path / "lying.safetensors"
    raw = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    path.write_bytes((10**12).to_bytes(8, "little") + raw + bytes(4))
    with pytest.raises(CheckpointError, match="not a safetensors file|truncated or corrupt"):
        load_checkpoint(path)


def test_honest_files_still_load_after_the_checks(tmp_path, monkeypatch, tiny_config):
    """Control: transposed (non-contiguous, non-overlapping) views and shared storages are legitimate."""
    base = torch.arange(12.0).reshape(3, 4)
    state = {"t": base.t(), "row": base[1], "same": base}
    make_official_pth(tmp_path / "ok.pth", state, monkeypatch)
    loaded = load_checkpoint(tmp_path / "ok.pth").state_dict
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    save_safetensors(state, tmp_path / "ok.safetensors")
    reread = load_checkpoint(tmp_path / "ok.safetensors").state_dict
    assert all(torch.equal(reread[k], v) for k, v in state.items())
