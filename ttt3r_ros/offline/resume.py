"""Snapshots of an offline run (`ttt3r-ros map --snapshot-every N`) and resuming from one (`--resume`).

With `--snapshot-every N` the run keeps one session snapshot (`ttt3r_ros.session.snapshot`) in its output folder,
`SNAPSHOT_NAME`, rewritten atomically every N processed frames, when it stops (end of input, --max-frames, Ctrl-C,
SIGTERM) and after an error that happened between frames. Besides the engine's stream it holds the run's input
position (input frames read, the last one's stamp), the mapper's counters and the command's options.

`--resume` (same output folder) loads it into a fresh engine, reads the input again from the start and skips the
frames already read (checking that the last skipped frame has the recorded stamp, so another input is refused),
then continues. trajectory.tum, map.ply and run.json are rewritten from the restored engine and counters, so they
hold the whole run; depth files of the frames before the resume point stay and new ones are added. The result bag
is NOT appended to (a rosbag2 cannot be reopened for writing, and a killed run's bag was never finished): with
--resume, --result-bag holds the frames from the resume point on. In fp32 on the CPU the resumed outputs equal an
uninterrupted run's bit for bit.

Signals: while snapshots are on, SIGINT, SIGTERM and SIGHUP let the current frame finish and then stop the run as
Ctrl-C does (`StopAtFrameBoundary`; exit codes as in offline/termination.py), so the snapshot written on the way out
is consistent. A second signal stops at once (the last periodic snapshot stays).
"""
from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Iterator, Mapping

from ..session.snapshot import (Snapshot, SnapshotError, SnapshotProvenance, apply_snapshot, check_compatible,
                                read_snapshot, session_provenance)
from .errors import OfflineInputError
from .termination import STOP_SIGNALS, interrupt_for

SNAPSHOT_NAME = "session_snapshot.safetensors"
# Options a resumed run may change: where the input lives (its frames are checked by stamp); how the weights, device
# and precision are named (the snapshot compares what they resolve to: the weights' digest or random seed, the
# precision that runs); and what only concerns this invocation (how far to go, how often to write, progress, the
# result bag). Every other option must equal the interrupted run's.
OPTIONS_FREE_ON_RESUME = frozenset({
    "input", "out", "weights", "random_weights", "device", "precision", "max_frames", "prefetch", "snapshot_every",
    "resume", "checkpoint_every", "checkpoint_min_seconds", "no_progress", "result_bag", "result_bag_storage",
    "overwrite"})


def snapshot_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / SNAPSHOT_NAME


@dataclass
class SnapshotSettings:
    """What the mapper needs to write snapshots."""
    path: Path
    every_frames: int                  # processed frames between snapshots (> 0)
    provenance: SnapshotProvenance
    options: dict[str, Any]            # the command's options (compared on resume)


@dataclass
class InputPosition:
    """How far into the input a run got: frames the source yielded (processed or rejected by the engine), and the
    last one's stamp."""
    frames_read: int = 0
    last_stamp_ns: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"frames_read": self.frames_read, "last_stamp_ns": self.last_stamp_ns}


def open_resume(out_dir: str | Path, options: Mapping[str, Any], provenance: SnapshotProvenance) -> Snapshot:
    """The snapshot of `out_dir`, checked against this command's `options`, then this session (`provenance`).
    OfflineInputError when there is none or the options differ; SnapshotError when it is damaged or was made with
    other weights, precision or model (what the options resolved to)."""
    path = snapshot_path(out_dir)
    if not path.is_file():
        raise OfflineInputError(f"--resume: no snapshot {SNAPSHOT_NAME} in {out_dir} (a run writes one with "
                                "--snapshot-every N)")
    snapshot = read_snapshot(path)
    saved = snapshot.extra.get("options")
    if not isinstance(saved, dict) or "mapper" not in snapshot.extra:
        raise SnapshotError(f"snapshot {path} was not written by `ttt3r-ros map` (no run options in it)")
    differences = [f"--{name.replace('_', '-')}: snapshot {saved.get(name)!r}, now {value!r}"
                   for name, value in options.items()
                   if name not in OPTIONS_FREE_ON_RESUME and saved.get(name) != value]
    if differences:
        raise OfflineInputError("--resume: the options differ from the run being resumed: " + "; ".join(differences))
    check_compatible(snapshot, provenance)   # what the free options resolved to
    return snapshot


def skip_read_frames(frames: Iterator[Any], position: Mapping[str, Any], stamp_ns: Callable[[Any], int]) -> None:
    """Read past the frames the resumed run had read (they are decoded again, not processed); OfflineInputError
    when the input ends before them or the last one's stamp (`stamp_ns(frame)`) is not the recorded one."""
    count = int(position["frames_read"])
    last = None
    for read in range(count):
        last = next(frames, None)
        if last is None:
            raise OfflineInputError(f"--resume: the input has {read} frames, the run being resumed had read "
                                    f"{count}: is it the same input?")
    expected = position.get("last_stamp_ns")
    if count and stamp_ns(last) != expected:
        raise OfflineInputError(f"--resume: input frame {count - 1} has stamp {stamp_ns(last)} ns, the run being "
                                f"resumed read {expected} ns there: is it the same input?")


class StopAtFrameBoundary:
    """SIGINT, SIGTERM and SIGHUP during a map run: the frame in progress is finished, then `check()` raises the
    signal's interrupt (the run stops as on Ctrl-C, exit code 128 + signal: offline/termination.py), so the
    trajectory, result bag, depth files and snapshot written on the way out hold the same frames. A second signal
    raises at once. Outside the main thread (where Python cannot install handlers) it does nothing."""

    SIGNALS = (signal.SIGINT, *STOP_SIGNALS)

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.requested is not None:
            raise interrupt_for(signum)
        self.requested = signum
        # os.write, not print: a handler that prints while the main thread prints raises "reentrant call"
        os.write(2, f"\n{signal.Signals(signum).name}: stopping after the frame in progress (send it again to stop "
                    "at once)\n".encode())

    def check(self) -> None:
        if self.requested is not None:   # the exception names the signal: map's exit code (offline/termination.py)
            raise interrupt_for(self.requested)

    def __enter__(self) -> "StopAtFrameBoundary":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def prepare_snapshots(options: Mapping[str, Any], out_dir: str | Path, every_frames: int, resume: bool,
                      session: Any, engine: Any) -> tuple[SnapshotSettings | None, Snapshot | None]:
    """For `ttt3r-ros map`: the snapshot settings (None when `every_frames` is 0) and, with `resume`, the snapshot
    of `out_dir`, checked and loaded into `engine` (a fresh engine of `session`)."""
    provenance = session_provenance(session, engine)
    settings = (SnapshotSettings(snapshot_path(out_dir), every_frames, provenance, dict(options))
                if every_frames > 0 else None)
    snapshot = None
    if resume:
        snapshot = open_resume(out_dir, options, provenance)
        apply_snapshot(snapshot, engine, provenance)
    return settings, snapshot
