"""The one atomic file writer of ttt3r_ros (standard library only: any layer may import it).

A file is written into a temporary file in the destination folder, flushed and fsync'ed, then renamed over the
final name with ``os.replace`` (atomic on POSIX within one filesystem), and the folder is fsync'ed so the rename
itself survives a power cut. A crash, an exception or a KeyboardInterrupt therefore never leaves a half-written
file under the final name, and never leaves the temporary behind: ``path`` is always either the old file or the
whole new one.

    atomic_write(path, lambda f: f.write(data))     # any writer of a binary file object
    atomic_write_bytes(path, data)
    atomic_write_text(path, text)                  # UTF-8
"""
from __future__ import annotations

import os
import re
import secrets
import stat
import time
from typing import BinaryIO, Callable

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "remove_stale_temporaries",
           "TEMPORARY_NAME_PATTERN"]

# A random 64-bit suffix does not collide in practice; O_EXCL guarantees it, these attempts bound the retries.
_NAME_ATTEMPTS = 100
_SUFFIX_HEX_DIGITS = 16   # secrets.token_hex(8)
# The names of atomic_write's temporaries: "." + final name + "." + 16 hex digits + ".tmp" (see atomic_write).
TEMPORARY_NAME_PATTERN = re.compile(r"^\..+\.[0-9a-f]{%d}\.tmp$" % _SUFFIX_HEX_DIGITS)


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """Write through ``write(fileobj)`` into a temporary file next to ``path``, fsync, then atomically replace.

    The final file gets the mode a plain ``open(path, "wb")`` would give (0o666 & ~umask, default ACLs applied), not
    mkstemp's 0600: the temporary is created by ``open(tmp, "xb")`` (O_CREAT | O_EXCL, mode 0o666 less the umask).
    Its name is chosen before it exists and everything from its creation on runs inside the ``try``, so an exception
    or a KeyboardInterrupt landing at any point removes it. Missing parent folders are created.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    prefix = os.path.join(folder, "." + os.path.basename(path) + ".")
    tmp: str | None = None
    try:
        for _ in range(_NAME_ATTEMPTS):
            tmp = prefix + secrets.token_hex(_SUFFIX_HEX_DIGITS // 2) + ".tmp"
            try:
                f = open(tmp, "xb")
                break
            except FileExistsError:
                tmp = None  # someone else's file: never remove it
        else:
            raise FileExistsError(f"atomic_write: no free temporary file name next to {path}")
        with f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except BaseException:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        raise
    try:  # make the rename itself durable (best effort: not every filesystem allows fsync on a folder)
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """``data`` as the whole new content of ``path`` (see ``atomic_write``)."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """``text`` encoded (UTF-8 by default) as the whole new content of ``path`` (see ``atomic_write``)."""
    atomic_write_bytes(path, text.encode(encoding))


def _paths_open_by_processes() -> set[str] | None:
    """Real paths of the files any visible process holds open (Linux /proc), or None where /proc is not there.
    Processes of other users are not visible: their files count as not held (the age rule still protects them)."""
    if not os.path.isdir("/proc/self/fd"):
        return None
    held: set[str] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                held.add(os.readlink(f"{fd_dir}/{fd}"))
            except OSError:
                continue
    return held


def remove_stale_temporaries(folder: str | os.PathLike[str], older_than_s: float | None = None) -> list[str]:
    """Remove the temporaries ``atomic_write`` left in ``folder`` when its process was killed (kill -9, power cut:
    the ``except`` that removes them never ran). Only names of ``TEMPORARY_NAME_PATTERN``, only regular files (not
    symlinks), only those last modified before ``older_than_s`` (epoch seconds; default: now) and not held open by
    a live process (a concurrent writer's file is open until its rename). Returns the removed paths."""
    folder = os.fspath(folder)
    cutoff_s = time.time() if older_than_s is None else older_than_s
    try:
        names = [n for n in os.listdir(folder) if TEMPORARY_NAME_PATTERN.match(n)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    if not names:
        return []
    held = _paths_open_by_processes() or set()
    removed = []
    for name in names:
        path = os.path.join(folder, name)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(info.st_mode) or info.st_mtime >= cutoff_s or os.path.realpath(path) in held:
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed
