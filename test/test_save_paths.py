"""ros/save_paths.py: the confinement rules of ~/save_map and ~/save_trajectory (pure functions, real files)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from ttt3r_ros.ros.save_paths import SavePathError, SaveTarget, check_target, prepare_save, resolve_save_path


def _save(requested: str, base: Path, default: str = "m.ply", allow_absolute: bool = False,
          service: str = "save_map") -> str:
    return prepare_save(requested, default, str(base), allow_absolute, service)


def test_relative_paths_and_the_default_resolve_inside_save_directory(tmp_path: Path) -> None:
    base = tmp_path / "saves"
    assert _save("", base) == str(base / "m.ply") and base.is_dir()   # created on the first save
    assert oct(base.stat().st_mode & 0o777) == "0o700"
    (base / "sub").mkdir()
    assert _save("sub/x.ply", base) == str(base / "sub" / "x.ply")
    assert _save(str(base / "abs.ply"), base) == str(base / "abs.ply")   # absolute but inside: fine
    assert _save("t.tum", base, service="save_trajectory") == str(base / "t.tum")


@pytest.mark.parametrize("requested,reason", [
    ("../escape.ply", "'..' is not allowed"),
    ("sub/../../escape.ply", "'..' is not allowed"),
    ("~/x.ply", "'~' is not expanded"),
    ("~root/x.ply", "'~' is not expanded"),
    ("/etc/evil.ply", "outside save_directory"),
    ("x.ply\x00.txt", "NUL byte"),
    ("notes.txt", "must end in .ply"),
    (".bashrc", "must end in .ply"),
    ("dir/", "must end in .ply"),
])
def test_escapes_and_other_names_are_refused(tmp_path: Path, requested: str, reason: str) -> None:
    with pytest.raises(SavePathError, match=reason):
        _save(requested, tmp_path)


def test_empty_request_and_empty_default_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SavePathError, match="empty"):
        _save("", tmp_path, default="")


def test_absolute_paths_outside_need_the_operator_switch(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    base = tmp_path / "saves"
    with pytest.raises(SavePathError, match="allow_absolute_save_paths"):
        _save(str(outside / "m.ply"), base)
    assert _save(str(outside / "m.ply"), base, allow_absolute=True) == str(outside / "m.ply")


def test_non_regular_targets_and_links_are_never_written_through(tmp_path: Path) -> None:
    base = tmp_path / "saves"
    base.mkdir()
    victim = tmp_path / "victim.ply"
    victim.write_text("precious")
    (base / "link.ply").symlink_to(victim)
    os.mkfifo(base / "fifo.ply")
    (base / "folder.ply").mkdir()
    (base / "linked_dir").symlink_to(tmp_path)
    for name, reason in (("link.ply", "symbolic link"), ("fifo.ply", "a FIFO"), ("folder.ply", "a folder"),
                         ("linked_dir/victim.ply", "symbolic link"), ("missing/m.ply", "folder does not exist")):
        with pytest.raises(SavePathError, match=reason):
            _save(name, base)
    # a device node (the suffix rule refuses /dev/null's name first, so its target is checked directly)
    with pytest.raises(SavePathError, match="a device"):
        check_target(SaveTarget("/dev/null", "/dev"))
    assert victim.read_text() == "precious"


def test_resolution_does_not_create_anything_for_refused_requests(tmp_path: Path) -> None:
    base = tmp_path / "saves"
    with pytest.raises(SavePathError):
        resolve_save_path("../x.ply", "m.ply", str(base), False, "save_map")
    assert not base.exists()
