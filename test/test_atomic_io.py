"""ttt3r_ros.atomic_io: no temporary file or damaged target whatever point an interrupt hits, never removing a
file it did not create, and the mode a plain open() gives."""
from __future__ import annotations

import builtins
import os
import signal
import stat

import numpy as np
import pytest

from ttt3r_ros import atomic_io
from ttt3r_ros.engine import exports


def _interrupt_in_open(monkeypatch):
    """The interrupt lands right after the temporary was created (before the code sees the file object)."""
    def open_then_interrupt(name, mode="r", *args, **kwargs):
        f = builtins.open(name, mode, *args, **kwargs)
        f.close()
        raise KeyboardInterrupt
    monkeypatch.setattr(atomic_io, "open", open_then_interrupt, raising=False)


def _interrupt_in_fsync(monkeypatch):
    def fsync(fd):
        raise KeyboardInterrupt
    monkeypatch.setattr(atomic_io.os, "fsync", fsync)


def _interrupt_in_replace(monkeypatch):
    def replace(src, dst):
        raise KeyboardInterrupt
    monkeypatch.setattr(atomic_io.os, "replace", replace)


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
        atomic_io.atomic_write(path, write)
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
    monkeypatch.setattr(atomic_io.secrets, "token_hex", lambda n: next(names))
    other = tmp_path / ".t.txt.aaaa.tmp"
    other.write_bytes(b"someone else's")
    atomic_io.atomic_write(tmp_path / "t.txt", lambda f: f.write(b"new"))
    assert (tmp_path / "t.txt").read_bytes() == b"new"
    assert other.read_bytes() == b"someone else's"
    assert sorted(os.listdir(tmp_path)) == [".t.txt.aaaa.tmp", "t.txt"]


def test_bytes_and_text_helpers_replace_the_whole_file_with_the_umask_mode(tmp_path):
    old = os.umask(0o027)
    try:
        path = tmp_path / "sub" / "out.json"  # missing folders are created
        atomic_io.atomic_write_text(path, "first, a longer content\n")
        atomic_io.atomic_write_text(path, "zweite \u00e9\n")
        assert path.read_bytes() == "zweite \u00e9\n".encode("utf-8")
        atomic_io.atomic_write_bytes(path, b"\x00\x01")
        assert path.read_bytes() == b"\x00\x01"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~0o027
        assert os.listdir(path.parent) == ["out.json"]
    finally:
        os.umask(old)


def test_a_failing_writer_keeps_the_old_file(tmp_path):
    path = tmp_path / "traj.txt"
    atomic_io.atomic_write_text(path, "old\n")

    def broken(f):
        f.write(b"half a file")
        raise RuntimeError("crash while writing")
    with pytest.raises(RuntimeError):
        atomic_io.atomic_write(path, broken)
    assert path.read_bytes() == b"old\n"
    assert os.listdir(tmp_path) == ["traj.txt"]
