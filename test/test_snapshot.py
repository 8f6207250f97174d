"""Session snapshots (ttt3r_ros.session.snapshot, engine export/import): saved after N frames, loaded into a fresh
engine of a fresh session, continued M frames, the result equals an uninterrupted run bit for bit (fp32, CPU, tiny
random model); every mismatch and every damaged file is refused with the engine untouched."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from test_offline_support import pattern_image
from ttt3r_ros.model.checkpoint import save_safetensors
from ttt3r_ros.session import snapshot as snap
from ttt3r_ros.session.build import open_session, resolve_weights
from ttt3r_ros.session.settings import SessionConfig

TINY = dict(model_config="tiny", image_size=64, device="cpu", precision="fp32", weights="random",
            confidence_threshold=1.0, voxel_size_m=0.002)
# small enough that the map evicts (and rebuilds its main key index) within the run
MAP_MAX_POINTS = 700
TOTAL_FRAMES = 9


def _session(**overrides):
    values = {**TINY, **overrides}
    weights = values.pop("weights")
    config = SessionConfig(**values, weights=weights)
    return open_session(config)


def _engine(session, **options):
    return session.new_engine(map_max_points=MAP_MAX_POINTS, **options)


def _frame(i: int) -> np.ndarray:
    return pattern_image(i)


def _run(engine, frames: range) -> list:
    """(timestamp, pose, depth, confidence) per frame: what must continue bit for bit."""
    out = []
    for i in frames:
        r = engine.step(_frame(i), 0.1 * i)
        out.append((r.timestamp, r.camera_to_world.copy(), r.camera_to_world_model.copy(), r.depth.copy(),
                    r.confidence.copy(), r.chunk_index, r.was_reset))
    return out


def _map_arrays(engine) -> dict[str, np.ndarray]:
    m = engine.voxel_map
    return {"keys": m.keys(), "points": m.points(), "colours": m.colours(), "conf": m.confidences(),
            "weights": m.weights()}


def _assert_identical(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            if isinstance(u, np.ndarray):
                assert u.dtype == v.dtype and u.shape == v.shape
                assert np.array_equal(u, v, equal_nan=True)
            else:
                assert u == v


@pytest.fixture(scope="module")
def reference():
    """Uninterrupted runs (with and without chunk resets) of TOTAL_FRAMES frames: results, trajectory, map."""
    runs = {}
    for reset_interval in (0, 3):
        session = _session(reset_interval=reset_interval)
        engine = _engine(session)
        results = _run(engine, range(TOTAL_FRAMES))
        runs[reset_interval] = (results, engine.trajectory.poses(), engine.trajectory_model.poses(),
                                _map_arrays(engine), engine.voxel_map.evicted_total)
    return runs


@pytest.mark.parametrize("reset_interval,saved_after", [(0, 4), (3, 3), (3, 5)])
def test_resumed_run_equals_the_uninterrupted_one_bit_for_bit(tmp_path: Path, reference, reset_interval,
                                                              saved_after) -> None:
    results_ref, traj_ref, traj_model_ref, map_ref, evicted_ref = reference[reset_interval]
    assert evicted_ref > 0   # the map's eviction and main index are part of what must continue exactly

    first = _session(reset_interval=reset_interval)
    engine = _engine(first)
    head = _run(engine, range(saved_after))
    path = tmp_path / "session.ttt3r"
    snap.save_snapshot(path, engine, snap.session_provenance(first, engine),
                       input_position={"last_stamp_ns": 123, "frames_read": saved_after},
                       extra={"note": "x"}, extra_tensors={"counts": torch.arange(3)})
    del engine, first

    second = _session(reset_interval=reset_interval)   # a fresh model: nothing shared with the first session
    resumed = _engine(second)
    loaded = snap.load_snapshot(path, resumed, snap.session_provenance(second, resumed))
    assert loaded.frames_processed == saved_after == resumed.frames_processed
    assert loaded.input_position == {"last_stamp_ns": 123, "frames_read": saved_after}
    assert loaded.extra == {"note": "x"} and torch.equal(loaded.extra_tensors["counts"], torch.arange(3))
    tail = _run(resumed, range(saved_after, TOTAL_FRAMES))

    _assert_identical(head + tail, results_ref)
    assert np.array_equal(resumed.trajectory.poses(), traj_ref)
    assert np.array_equal(resumed.trajectory_model.poses(), traj_model_ref)
    got_map = _map_arrays(resumed)
    for name, ref in map_ref.items():
        assert np.array_equal(got_map[name], ref), name
    assert resumed.voxel_map.evicted_total == evicted_ref
    if reset_interval:
        assert max(r[5] for r in tail) >= 2   # chunks were chained across the resume


def test_snapshot_before_any_frame_and_the_stream_of_a_batched_engine(tmp_path: Path) -> None:
    from ttt3r_ros.engine import BatchedReconstructor

    session = _session()
    engine = BatchedReconstructor(session.model, 2, size=64, confidence_threshold=1.0,
                                  map_max_points=MAP_MAX_POINTS)
    engine.step_batch([_frame(0), _frame(5)], [0.0, 0.5])
    engine.step_batch([_frame(1), _frame(6)], [0.1, 0.6])
    provenance = snap.engine_provenance(engine, "tiny", snap.weights_id(None, 0))
    for stream in (0, 1):
        snap.save_snapshot(tmp_path / f"s{stream}", engine, provenance, stream=stream)
    # each stream loaded into the same stream of another engine continues exactly (same batch composition:
    # a batch of one rounds differently from a batch of two)
    other = BatchedReconstructor(session.model, 2, size=64, confidence_threshold=1.0,
                                 map_max_points=MAP_MAX_POINTS)
    for stream in (1, 0):
        snap.load_snapshot(tmp_path / f"s{stream}", other, provenance, stream=stream)
    assert [other.frames_processed(s) for s in (0, 1)] == [2, 2]
    expected = engine.step_batch([_frame(2), _frame(7)], [0.2, 0.7])
    got = other.step_batch([_frame(2), _frame(7)], [0.2, 0.7])
    for a, b in zip(expected, got):
        assert np.array_equal(a.camera_to_world, b.camera_to_world) and np.array_equal(a.depth, b.depth)
    with pytest.raises(snap.SnapshotError, match="stream 2 out of range"):
        snap.load_snapshot(tmp_path / "s0", other, provenance, stream=2)
    # an engine that has seen nothing: its snapshot starts a stream exactly like a new engine
    fresh = _engine(session)
    snap.save_snapshot(tmp_path / "empty", fresh, snap.session_provenance(session, fresh))
    loaded = _engine(session)
    _run(loaded, range(2))
    snap.load_snapshot(tmp_path / "empty", loaded, snap.session_provenance(session, loaded))
    assert loaded.frames_processed == 0 and len(loaded.trajectory) == 0 and len(loaded.voxel_map) == 0
    _assert_identical(_run(loaded, range(3)), _run(_engine(session), range(3)))


def test_a_state_held_by_a_graph_runner_is_fetched_back_and_an_imported_one_is_reloaded(tmp_path: Path,
                                                                                       reference,
                                                                                       monkeypatch) -> None:
    """The CUDA-graph runner's state bookkeeping, with test_engine_fast_path's CPU stand-in for GraphedStep: the
    newest state lives in the graph's static buffers (export must fetch it), and an engine whose graph holds a
    state of its own must load the imported one (a new token) instead of replaying on its old buffers."""
    from test_engine_fast_path import _force_fast

    results_ref = reference[3][0]
    session = _session(reset_interval=3)
    engine = _force_fast(_engine(session), monkeypatch)
    head = _run(engine, range(4))
    path = tmp_path / "graph.ttt3r"
    snap.save_snapshot(path, engine, snap.session_provenance(session, engine))
    other = _force_fast(_engine(session), monkeypatch)
    _run(other, range(6, 8))   # its graph now holds a state of its own
    snap.load_snapshot(path, other, snap.session_provenance(session, other))
    _assert_identical(head + _run(other, range(4, TOTAL_FRAMES)), results_ref)
    assert engine.fast_path_active and other.fast_path_active


# ------------------------------------------------------------------------------------------------- refusals
def _state_of(engine) -> tuple:
    """Everything a refused load must leave unchanged."""
    s = engine.export_stream()
    return {k: v.clone() for k, v in s.tensors.items()}, json.dumps(s.values, sort_keys=True)


def _assert_unchanged(engine, before) -> None:
    tensors, values = _state_of(engine)
    assert values == before[1] and tensors.keys() == before[0].keys()
    assert all(torch.equal(tensors[k], before[0][k]) for k in tensors)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A snapshot of the default tiny session after 3 frames."""
    path = tmp_path_factory.mktemp("snap") / "session.ttt3r"
    session = _session()
    engine = _engine(session)
    _run(engine, range(3))
    snap.save_snapshot(path, engine, snap.session_provenance(session, engine))
    return path


def _victim():
    """An engine with frames of its own (so an accidental partial load would show)."""
    session = _session()
    engine = _engine(session)
    _run(engine, range(5, 7))
    return session, engine


@pytest.mark.parametrize("overrides,named", [
    (dict(update_rule="cut3r"), ["update_rule: snapshot 'ttt3r', this session 'cut3r'"]),
    (dict(image_size=48), ["image_size: snapshot 64, this session 48"]),
    (dict(reset_interval=4), ["reset_interval: snapshot None, this session 4"]),
    (dict(seed=1), ["weights: snapshot 'random(seed=0)', this session 'random(seed=1)'"]),
    (dict(voxel_size_m=0.05), ["voxel_size_m: snapshot 0.002, this session 0.05"]),
    (dict(precision="bf16", update_rule="cut3r"), ["precision: snapshot 'fp32', this session 'bf16'",
                                                   "update_rule: snapshot 'ttt3r', this session 'cut3r'"]),
])
def test_a_snapshot_made_with_other_settings_is_refused_naming_each_difference(saved, overrides, named) -> None:
    session = _session(**overrides)
    engine = _engine(session)
    _run(engine, range(5, 7))
    before = _state_of(engine)
    with pytest.raises(snap.SnapshotError) as err:
        snap.load_snapshot(saved, engine, snap.session_provenance(session, engine))
    message = str(err.value)
    for text in named:
        assert text in message
    assert message.count("this session") == len(named)   # nothing else is named
    _assert_unchanged(engine, before)


def test_another_model_config_and_other_weights_files_are_refused(tmp_path: Path, saved) -> None:
    from ttt3r_ros.model.config import PRESETS

    # another model configuration (a JSON file with one size changed): named, with the differing entry
    data = PRESETS["tiny"].to_json_dict()
    data["config"]["state_size"] = 2 * data["config"]["state_size"]
    other_config = tmp_path / "bigger_state.json"
    other_config.write_text(json.dumps(data))
    session = _session(model_config=str(other_config))
    engine = _engine(session)
    with pytest.raises(snap.SnapshotError, match=r"model config: snapshot 'tiny' \(config.state_size"):
        snap.load_snapshot(saved, engine, snap.session_provenance(session, engine))
    # weights files: a snapshot made with one file is refused with another of the same layout
    base = _session()
    weights_a, weights_b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    state = {k: v.clone() for k, v in base.model.state_dict().items()}
    save_safetensors(state, weights_a)
    state["pose_token"] += 1.0
    save_safetensors(state, weights_b)

    def opened(file: Path):
        return open_session(SessionConfig(**{**TINY, "weights": str(file)}), weights=resolve_weights(str(file)))

    session_a, session_b = opened(weights_a), opened(weights_b)
    engine_a = _engine(session_a)
    _run(engine_a, range(2))
    snap.save_snapshot(tmp_path / "a.ttt3r", engine_a, snap.session_provenance(session_a, engine_a))
    engine_b = _engine(session_b)
    before = _state_of(engine_b)
    with pytest.raises(snap.SnapshotError, match=r"weights: snapshot 'sha256:[0-9a-f]{64}', this session "
                                                 r"'sha256:[0-9a-f]{64}'"):
        snap.load_snapshot(tmp_path / "a.ttt3r", engine_b, snap.session_provenance(session_b, engine_b))
    _assert_unchanged(engine_b, before)
    # the same file opened again (a new session): accepted
    again = opened(weights_a)
    engine_again = _engine(again)
    snap.load_snapshot(tmp_path / "a.ttt3r", engine_again, snap.session_provenance(again, engine_again))
    assert engine_again.frames_processed == 2


def test_the_sampled_weights_digest_covers_head_and_tail(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(snap, "WEIGHTS_FULL_HASH_MAX_BYTES", 1000)
    monkeypatch.setattr(snap, "WEIGHTS_HEAD_BYTES", 100)
    monkeypatch.setattr(snap, "WEIGHTS_SAMPLE_BLOCKS", 4)
    monkeypatch.setattr(snap, "WEIGHTS_SAMPLE_BYTES", 10)
    data = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    digests = []
    for position in (None, 50, 4995, 2000):   # unchanged; in the head; in the last block; between samples
        changed = bytearray(data)
        if position is not None:
            changed[position] ^= 0xFF
        file = tmp_path / f"w{position}.bin"
        file.write_bytes(bytes(changed))
        digests.append(snap.weights_file_digest(file))
    assert all(d.startswith("sha256-sampled:") for d in digests)
    # head and tail changes are seen; a byte between the sampled blocks is not (the documented cost of sampling)
    assert len(set(digests[:3])) == 3 and digests[3] == digests[0]


def _damaged_copies(saved: Path, tmp_path: Path) -> dict[str, Path]:
    data = saved.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    copies = {
        "truncated": data[: len(data) - 100],
        "truncated in the header": data[: 8 + header_len // 2],
        "empty": b"",
        "a flipped tensor byte": data[:-50] + bytes([data[-50] ^ 0x01]) + data[-49:],
        "not a snapshot": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ",
    }
    # a description edited in place (same length, so safetensors still reads the file): the checksum catches it
    copies["an edited description"] = data.replace(b'\\"index\\": 3', b'\\"index\\": 4', 1)
    assert copies["an edited description"] != data
    out = {}
    for name, content in copies.items():
        path = tmp_path / name.replace(" ", "_")
        path.write_bytes(content)
        out[name] = path
    return out


def test_corrupt_truncated_and_foreign_files_are_refused_and_the_engine_is_untouched(tmp_path: Path,
                                                                                    saved) -> None:
    session, engine = _victim()
    provenance = snap.session_provenance(session, engine)
    before = _state_of(engine)
    for name, path in _damaged_copies(saved, tmp_path).items():
        with pytest.raises(snap.SnapshotError) as err:
            snap.load_snapshot(path, engine, provenance)
        assert str(path) in str(err.value), name
        _assert_unchanged(engine, before)
    with pytest.raises(snap.SnapshotError, match="no snapshot at"):
        snap.load_snapshot(tmp_path / "missing", engine, provenance)
    _assert_unchanged(engine, before)


def _rewritten(saved: Path, tmp_path: Path, edit) -> Path:
    """The snapshot with its description and tensors edited by ``edit`` and a matching checksum (a valid file of
    another version, or with inconsistent content, as a future or buggy writer could make)."""
    from safetensors.torch import load, save

    data = saved.read_bytes()
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    description = json.loads(header["__metadata__"][snap.METADATA_KEY])
    tensors = load(data)
    edit(description, tensors)
    text = json.dumps(description)
    path = tmp_path / "rewritten"
    path.write_bytes(save(tensors, metadata={snap.METADATA_KEY: text,
                                             snap.CHECKSUM_KEY: snap._checksum(text, tensors)}))
    return path


def test_other_format_versions_and_inconsistent_content_are_refused(tmp_path: Path, saved) -> None:
    session, engine = _victim()
    provenance = snap.session_provenance(session, engine)
    before = _state_of(engine)

    def old_version(d, t):
        d["format_version"] = 0

    def shorter_map_index(d, t):   # the map's key index no longer covers its voxels
        t["stream/map.main_keys"] = t["stream/map.main_keys"][:-1].clone()
        t["stream/map.main_slots"] = t["stream/map.main_slots"][:-1].clone()

    def wrong_state_shape(d, t):
        t["stream/state.state"] = t["stream/state.state"][:, :-1].clone()

    def missing_trajectory(d, t):
        del t["stream/trajectory.poses"]

    def more_poses_than_frames(d, t):
        d["stream"]["index"] = 1

    for edit, text in ((old_version, r"format version 0; this ttt3r_ros .* reads version 1 only"),
                       (shorter_map_index, "key index"), (wrong_state_shape, "recurrent state state"),
                       (missing_trajectory, "missing tensors"), (more_poses_than_frames, "do not fit together")):
        with pytest.raises(snap.SnapshotError, match=text):
            snap.load_snapshot(_rewritten(saved, tmp_path, edit), engine, provenance)
        _assert_unchanged(engine, before)


def test_the_file_is_written_atomically_and_replaces_the_previous_snapshot(tmp_path: Path, monkeypatch) -> None:
    import ttt3r_ros.atomic_io as atomic_io

    session = _session()
    engine = _engine(session)
    provenance = snap.session_provenance(session, engine)
    path = tmp_path / "s.ttt3r"
    _run(engine, range(2))
    snap.save_snapshot(path, engine, provenance)
    first = path.read_bytes()
    _run(engine, range(2, 3))

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(atomic_io.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        snap.save_snapshot(path, engine, provenance)
    monkeypatch.undo()
    assert path.read_bytes() == first and sorted(p.name for p in tmp_path.iterdir()) == ["s.ttt3r"]
    assert snap.read_snapshot(path).frames_processed == 2
    snap.save_snapshot(path, engine, provenance)
    assert snap.read_snapshot(path).frames_processed == 3
