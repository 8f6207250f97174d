"""exports.atomic_write: normal file mode, and no temporary file or damaged target whatever point an interrupt hits."""
from __future__ import annotations

import builtins
import os
import signal
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


def _interrupt_in_open(monkeypatch):
    """The interrupt lands right after the temporary was created (before the code sees the file object)."""
    def open_then_interrupt(name, mode="r", *args, **kwargs):
        f = builtins.open(name, mode, *args, **kwargs)
        f.close()
        raise KeyboardInterrupt
    monkeypatch.setattr(exports, "open", open_then_interrupt, raising=False)


def _interrupt_in_fsync(monkeypatch):
    def fsync(fd):
        raise KeyboardInterrupt
    monkeypatch.setattr(exports.os, "fsync", fsync)


def _interrupt_in_replace(monkeypatch):
    def replace(src, dst):
        raise KeyboardInterrupt
    monkeypatch.setattr(exports.os, "replace", replace)


INJECTIONS = {"open": _interrupt_in_open, "fsync": _interrupt_in_fsync, "replace": _interrupt_in_replace}


@pytest.mark.parametrize("where", ["while-writing-raise", "while-writing-sigint", *INJECTIONS])
def test_interrupt_at_any_point_leaves_no_temp_file_and_an_intact_target(tmp_path, monkeypatch, where):
    path = tmp_path / "map.ply"
    exports.write_ply(path, np.arange(12.0).reshape(4, 3), np.full((4, 3), 7, np.uint8), np.ones(4))
    before = path.read_bytes()
    seen_partial = []

    def write(f):
        f.write(b"ply\nhalf a file")
        seen_partial.append(sorted(os.listdir(tmp_path)))  # the temporary exists while writing
        if where == "while-writing-raise":
            raise KeyboardInterrupt
        if where == "while-writing-sigint":  # a real Ctrl-C: SIGINT delivered to this process mid-write
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler raises at the next bytecode boundary
                f.write(b"more")
        f.write(b" rest")

    if where in INJECTIONS:
        INJECTIONS[where](monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        exports.atomic_write(path, write)
    monkeypatch.undo()
    assert path.read_bytes() == before, "the target was damaged"
    assert os.listdir(tmp_path) == ["map.ply"], f"left behind: {os.listdir(tmp_path)}"
    if where != "open":
        assert len(seen_partial) == 1 and len(seen_partial[0]) == 2  # target + temporary during the write
    points, _, _ = exports.read_ply(path)
    assert np.array_equal(points, np.arange(12.0, dtype=np.float32).reshape(4, 3))


def test_atomic_write_never_removes_a_file_it_did_not_create(tmp_path, monkeypatch):
    """A temporary-name collision (forced here) is skipped: the other file stays, the write still succeeds."""
    names = iter(["aaaa", "aaaa", "bbbb"])
    monkeypatch.setattr(exports.secrets, "token_hex", lambda n: next(names))
    other = tmp_path / ".t.txt.aaaa.tmp"
    other.write_bytes(b"someone else's")
    exports.atomic_write(tmp_path / "t.txt", lambda f: f.write(b"new"))
    assert (tmp_path / "t.txt").read_bytes() == b"new"
    assert other.read_bytes() == b"someone else's"
    assert sorted(os.listdir(tmp_path)) == [".t.txt.aaaa.tmp", "t.txt"]
