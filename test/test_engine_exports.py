"""Exports: TUM trajectory, PLY map, 16-bit depth / confidence PNG and .npy files read back equal to what the engine
produced on the synthetic box room (support/box_room.py); files get the mode a plain open() gives (they write through
ttt3r_ros.atomic_io; its own tests are in test_atomic_io.py); a non-finite pose is refused."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from support.box_room import oracle_for
from ttt3r_ros.engine import StreamingReconstructor, exports, geometry


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_atomic_write_gives_the_umask_mode_not_mkstemps_0600(tmp_path, umask):
    old = os.umask(umask)
    try:
        exports.write_tum(tmp_path / "traj.tum", [0.0], [np.eye(4)])
        with open(tmp_path / "plain.txt", "wb") as f:  # what a plain open() gives under the same umask
            f.write(b"x")
        assert _mode(tmp_path / "traj.tum") == 0o666 & ~umask == _mode(tmp_path / "plain.txt")
        # replacing an existing 0600 file: the new file gets the normal mode too
        os.chmod(tmp_path / "traj.tum", 0o600)
        exports.write_ply(tmp_path / "map.ply", np.zeros((2, 3)), np.zeros((2, 3), np.uint8))
        exports.write_tum(tmp_path / "traj.tum", [0.0, 1.0], [np.eye(4), np.eye(4)])
        assert _mode(tmp_path / "traj.tum") == _mode(tmp_path / "map.ply") == 0o666 & ~umask
    finally:
        os.umask(old)


def test_write_tum_refuses_non_finite_poses_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "traj.txt"
    exports.write_tum(path, [0.0], [np.eye(4)])
    before = path.read_bytes()
    with pytest.raises(ValueError, match="non-finite"):
        exports.write_tum(path, [0.0], [np.full((4, 4), np.nan)])
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["traj.txt"]


def test_exports_round_trip(box_room_seq, tmp_path):
    net = oracle_for(box_room_seq)
    eng = StreamingReconstructor(net, size=64, voxel_size=0.05)
    results = [eng.step(box_room_seq.images[i], box_room_seq.timestamps[i]) for i in range(5)]
    ts = [t for t, _ in eng.trajectory]
    poses = [p for _, p in eng.trajectory]
    exports.write_tum(tmp_path / "traj.txt", ts, poses)
    t2, p2 = exports.read_tum(tmp_path / "traj.txt")
    assert np.allclose(t2, ts) and np.allclose(p2, np.stack(poses), atol=1e-7)
    line = (tmp_path / "traj.txt").read_text().splitlines()[2].split()
    q = geometry.matrix_to_quat_xyzw(poses[1][:3, :3])
    assert np.allclose([float(v) for v in line[4:]], q, atol=1e-8)  # scalar-last in TUM
    vm = eng.voxel_map
    exports.write_ply(tmp_path / "map.ply", vm.points(), vm.colours(), vm.confidences())
    pts, col, conf = exports.read_ply(tmp_path / "map.ply")
    assert np.array_equal(pts, vm.points()) and np.array_equal(col, vm.colours())
    assert np.array_equal(conf, vm.confidences())
    header = (tmp_path / "map.ply").read_bytes()[:400]
    assert b"format binary_little_endian 1.0" in header and b"property float confidence" in header
    exports.write_depth_png(tmp_path / "d.png", results[0].depth)
    back = exports.read_png16(tmp_path / "d.png", exports.DEPTH_PNG_SCALE)
    assert np.abs(back - results[0].depth).max() <= 0.5e-3 + 1e-9
    exports.write_confidence_png(tmp_path / "c.png", results[0].confidence)
    assert np.abs(exports.read_png16(tmp_path / "c.png", exports.CONFIDENCE_PNG_SCALE) - results[0].confidence).max() \
        <= 0.5e-3 + 1e-6
    exports.write_npy(tmp_path / "d.npy", results[0].depth)
    assert np.array_equal(np.load(tmp_path / "d.npy"), results[0].depth)
    assert sorted(os.listdir(tmp_path)) == ["c.png", "d.npy", "d.png", "map.ply", "traj.txt"]  # no temp files left
