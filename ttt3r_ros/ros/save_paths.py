"""Where `~/save_map`, `~/save_trajectory` and `~/save_session` may write: the confinement rules, as pure functions
(no ROS).

Any participant of the DDS domain can call the node's services, so a request path is untrusted input. The rules:
- every save lands inside the `save_directory` parameter (default `~/.ros/ttt3r`, created on the first save);
  a relative path resolves inside it; an absolute path outside it is refused unless `allow_absolute_save_paths`
  is true (both parameters are read-only: set at start, not over DDS);
- `~`, `..` components, NUL bytes and empty paths are refused (an empty request uses default_*_path, which must not
  be empty either);
- the file name must have the service's suffix (`.ply` for maps, `.tum`/`.txt` for trajectories, `.safetensors`
  for session snapshots), so a request cannot replace e.g. a shell profile that happens to sit in the folder;
- no symlink is followed: every folder between save_directory and the file must be a real folder (lstat), the
  target must be absent or a regular file; a symlink, FIFO, device, socket or folder there is refused. The write
  itself is atomic (a temporary file renamed over the target; a rename replaces a name and never writes through
  a link). Between this check and the rename another local process with write access to the folder could swap in
  a link; the folder is the operator's (mode 0700 when the node creates it), so only they can.

Security against hostile DDS participants is SROS2's job (authentication and access control per topic/service);
these rules limit what a careless or malicious call can do where SROS2 is not enabled.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass

DEFAULT_SAVE_DIRECTORY = "~/.ros/ttt3r"
# service -> file name suffixes it may write
SAVE_SUFFIXES: dict[str, tuple[str, ...]] = {"save_map": (".ply",), "save_trajectory": (".tum", ".txt"),
                                             "save_session": (".safetensors",)}


class SavePathError(ValueError):
    """A save path the rules refuse; the message says which rule and what to do."""


def path_text_problem(text: str) -> str | None:
    """Why a requested or default path is refused on its text alone (empty, `~`, `..`, NUL), or None."""
    if not text.strip():
        return "the path is empty"
    if "\x00" in text:
        return "the path contains a NUL byte"
    if text.strip().startswith("~"):
        return "'~' is not expanded in save paths: give a path relative to save_directory"
    if ".." in text.strip().split("/"):
        return "'..' is not allowed in save paths (paths stay inside save_directory)"
    return None


@dataclass(frozen=True)
class SaveTarget:
    path: str            # absolute, normalised
    checked_from: str    # the folder from which every component down to the file was checked for symlinks


def resolve_save_path(requested: str, default_path: str, save_directory: str, allow_absolute: bool,
                      service: str) -> SaveTarget:
    """The absolute target of a save request (`requested`, or `default_path` when it is empty) under the rules
    above. SavePathError when refused. Does not touch the file system except to resolve `save_directory`."""
    text = requested.strip() or default_path.strip()
    if not text:
        raise SavePathError(f"{service}: the request path is empty and so is the default path parameter")
    problem = path_text_problem(text)
    if problem:
        raise SavePathError(f"{service}: {text!r}: {problem}")
    suffixes = SAVE_SUFFIXES[service]
    if not text.lower().endswith(suffixes) or text.endswith("/"):
        raise SavePathError(f"{service}: {text!r}: the file name must end in {' or '.join(suffixes)}")
    # save_directory is the operator's (a read-only parameter): its own symlinks are resolved once, here
    base = os.path.realpath(os.path.expanduser(save_directory))
    if os.path.isabs(text):
        path = os.path.normpath(text)
        if path.startswith(base + os.sep):
            return SaveTarget(path, base)
        if not allow_absolute:
            raise SavePathError(f"{service}: {path} is outside save_directory {base}; give a path relative to it, "
                                "or start the node with allow_absolute_save_paths:=true")
        # explicitly allowed by the operator: the folders above are theirs, only the file itself is checked
        return SaveTarget(path, os.path.dirname(path))
    return SaveTarget(os.path.normpath(os.path.join(base, text)), base)


def check_target(target: SaveTarget) -> None:
    """Refuse what must not be written through or replaced: a missing or symlinked folder between
    `checked_from` and the file, a target that exists and is not a regular file (symlink, FIFO, device, socket,
    folder). SavePathError (FileNotFoundError-like message for a missing folder)."""
    folder = os.path.dirname(target.path)
    relative = os.path.relpath(folder, target.checked_from)
    current = target.checked_from
    for part in ([] if relative == "." else relative.split(os.sep)):
        current = os.path.join(current, part)
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            raise SavePathError(f"folder does not exist: {current}") from None
        if stat.S_ISLNK(info.st_mode):
            raise SavePathError(f"{current} is a symbolic link: save paths never follow links")
        if not stat.S_ISDIR(info.st_mode):
            raise SavePathError(f"{current} is not a folder")
    try:
        info = os.lstat(target.path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise SavePathError(f"{target.path} is a symbolic link: save paths never replace or follow links")
    if not stat.S_ISREG(info.st_mode):
        kind = ("a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode)
                else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
                else "a socket" if stat.S_ISSOCK(info.st_mode) else "not a regular file")
        raise SavePathError(f"{target.path} is {kind}: saves replace regular files only")


def prepare_save(requested: str, default_path: str, save_directory: str, allow_absolute: bool,
                 service: str) -> str:
    """`resolve_save_path` + `check_target`, creating save_directory itself (mode 0700) when it is missing.
    Returns the absolute path to write atomically."""
    target = resolve_save_path(requested, default_path, save_directory, allow_absolute, service)
    base = os.path.realpath(os.path.expanduser(save_directory))
    if target.checked_from == base and not os.path.isdir(base):
        os.makedirs(base, mode=0o700, exist_ok=True)
    check_target(target)
    return target.path
