"""Exports get the file mode a plain open() gives (they write through ttt3r_ros.atomic_io; its own tests are in
test_atomic_io.py)."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from ttt3r_ros.engine import exports


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
