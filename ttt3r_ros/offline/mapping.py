"""The offline mapping loop: frames from a source through the engine into trajectory.tum, map.ply, run.json and an
optional result bag.

Robustness rules:
- outputs are rewritten (atomically) every `checkpoint_every` frames (at most once per
  `checkpoint_min_interval_s`), so a kill -9 loses only the frames since then;
- Ctrl-C (KeyboardInterrupt) or an error mid-run still writes a valid trajectory, map and run.json of what was
  processed (status "interrupted" / "failed");
- a frame the engine rejects (bad intrinsics, empty image, ...) is skipped and counted with the engine's message.
"""
from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm import tqdm

from ..engine import exports
from ..session.settings import DEFAULTS
from ..session.snapshot import Snapshot, save_snapshot
from .atomic_files import write_json_atomic
from .readers import FrameSource
from .result_bag import ResultBagWriter
from .termination import signal_name, signal_of
from .resume import InputPosition, SnapshotSettings, StopAtFrameBoundary, skip_read_frames

TRAJECTORY_NAME = "trajectory.tum"
MAP_NAME = "map.ply"
RUN_JSON_NAME = "run.json"
DEPTH_FOLDER = "depth"   # --save-depth: file N belongs to row N of trajectory.tum
# If this many frames in a row are rejected by the engine before any succeeds, the problem is not one bad frame:
# stop with the engine's message instead of silently skipping a whole recording.
MAX_REJECTED_BEFORE_FIRST_FRAME = 10
# run.json lists the first invalid frames in full (the count is always complete)
MAX_INVALID_RECORDS = 1000


@dataclass
class MapRunOptions:
    out_dir: Path
    max_frames: int | None = None
    checkpoint_every: int = 100        # frames between periodic output rewrites (0 = only at the end)
    checkpoint_min_interval_s: float = 30.0  # and at least this long apart (a 2M-point PLY is ~40 MB per rewrite)
    save_depth: str | None = None      # None, "png" (16-bit mm) or "npy"
    progress: bool = True
    # for the result bag's per-frame clouds (the engine filters the map itself)
    confidence_threshold: float = DEFAULTS.confidence_threshold
    result_map_every: int = 50         # frames between /map_points snapshots in the result bag (0 = only final)
    label: str | None = None           # e.g. the plumbing-check label; goes into run.json
    run_info: dict[str, Any] = field(default_factory=dict)  # parameters, versions, ... for run.json
    snapshots: SnapshotSettings | None = None  # --snapshot-every (offline/resume.py)
    resume: Snapshot | None = None     # --resume: the snapshot already loaded into the engine


@dataclass
class MapRunSummary:
    status: str                      # completed | interrupted | failed
    frames_processed: int
    run_json: dict[str, Any]
    error: str | None = None
    traceback: str | None = None
    frames_invalid: int = 0          # frames whose pose came out non-finite (not processed, no outputs)
    stop_signal: int | None = None   # the signal that interrupted the run (offline/termination.py), if any


def software_versions() -> dict[str, str]:
    import rosbags
    import torch

    from .. import __version__

    versions = {"ttt3r_ros": __version__, "python": platform.python_version(), "torch": torch.__version__,
                "numpy": np.__version__}
    try:
        from importlib.metadata import version
        versions["rosbags"] = version("rosbags")
    except Exception:
        versions["rosbags"] = getattr(rosbags, "__version__", "unknown")
    return versions


def _stats_ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "median": float(np.median(array)),
            "p95": float(np.percentile(array, 95)), "max": float(array.max())}


class OfflineMapper:
    def __init__(self, engine: Any, options: MapRunOptions, result_bag: ResultBagWriter | None = None) -> None:
        self.engine = engine
        self.options = options
        self.result_bag = result_bag
        self.out_dir = Path(options.out_dir)
        self.frames_processed = 0
        self.engine_rejected: list[dict[str, Any]] = []
        self.timings_ms: dict[str, list[float]] = {}
        self.read_wait_ms: list[float] = []
        self.intrinsics_sources: dict[str, int] = {}  # "calibrated" / "estimated" -> frames
        self.wall_start = time.perf_counter()
        self.first_timestamp_s: float | None = None
        self.last_timestamp_s: float | None = None
        # frames the engine ran but whose pose came out non-finite (FrameResult.valid False): not processed
        self.frames_invalid = 0
        self.invalid_records: list[dict[str, Any]] = []
        self.stop_signal: int | None = None   # set when a signal interrupted the run
        self.position = InputPosition()   # input frames read so far (resume skips them)
        self.resumes: list[dict[str, Any]] = []   # one entry per --resume that led to this run, for run.json
        self.snapshot_written: dict[str, Any] | None = None
        self._frame_open = False          # a frame is between being read and fully accounted for
        self._poses_before_frame = 0      # poses the engine had appended before the open frame
        self._snapshot_frames = 0         # frames_processed at the last snapshot

    # ---------------------------------------------------------------------------------------------- outputs
    def write_outputs(self, source: FrameSource, status: str, error: str | None = None) -> dict[str, Any]:
        trajectory = self._committed_trajectory()
        exports.write_tum(self.out_dir / TRAJECTORY_NAME, [t for t, _ in trajectory], [pose for _, pose in trajectory])
        voxel_map = self.engine.voxel_map
        exports.write_ply(self.out_dir / MAP_NAME, voxel_map.points(), voxel_map.colours(), voxel_map.confidences())
        report = self.run_report(source, status, error, len(trajectory), len(voxel_map))
        write_json_atomic(self.out_dir / RUN_JSON_NAME, report)
        return report

    def _committed_trajectory(self) -> list[Any]:
        """The engine's poses of fully accounted frames: a frame cut after its step but before its bookkeeping (a
        second, forcing signal) is left out, so trajectory rows, frames_processed and the result bag's odometry
        agree."""
        trajectory = list(self.engine.trajectory)
        if self._frame_open and _poses_appended(self.engine.trajectory) > self._poses_before_frame:
            trajectory = trajectory[:-1]
        return trajectory

    def run_report(self, source: FrameSource, status: str, error: str | None, poses: int,
                   map_points: int) -> dict[str, Any]:
        wall_s = time.perf_counter() - self.wall_start
        skipped = source.skipped.as_dict()
        report: dict[str, Any] = {}
        if self.options.label:
            report["label"] = self.options.label
        report.update({
            "status": status,
            "error": error,
            "frames_processed": self.frames_processed,
            "frames_invalid": self.frames_invalid,
            "invalid_frames": self.invalid_records,
            "stopped_by": signal_name(self.stop_signal) if self.stop_signal is not None else None,
            "trajectory_poses": poses,
            "map_points": map_points,
            "frames_expected": source.expected_frames,
            "frames_skipped": skipped["total"] + len(self.engine_rejected),
            "skipped": {**skipped, "rejected_by_engine": self.engine_rejected[:1000]},
            "input_warnings": source.warnings.as_dict(),
            "input": source.describe(),
            "intrinsics_frames": dict(self.intrinsics_sources),
            "timestamps_s": {"first": self.first_timestamp_s, "last": self.last_timestamp_s},
            "resumed": self.resumes,
            "snapshot": self.snapshot_written,
            "timings": {
                "wall_s": wall_s,
                "frames_per_s": self.frames_processed / wall_s if wall_s > 0 else None,
                "engine_ms": {name: _stats_ms(values) for name, values in self.timings_ms.items()},
                "read_ms": _stats_ms(self.read_wait_ms),
            },
            "outputs": {"trajectory": str(self.out_dir / TRAJECTORY_NAME), "map": str(self.out_dir / MAP_NAME),
                        "result_bag": str(self.result_bag.bag.path) if self.result_bag else None,
                        "depth_dir": str(self.out_dir / DEPTH_FOLDER) if self.options.save_depth else None},
        })
        report.update(self.options.run_info)
        return report

    def nothing_processed_reason(self, source: FrameSource) -> str:
        """Why a run that reached the end of its input has no processed frame, from what it counted."""
        parts = []
        if source.skipped.total:
            parts.append(f"{source.skipped.total} skipped by the reader ({dict(source.skipped.counts)})")
        if self.engine_rejected:
            parts.append(f"{len(self.engine_rejected)} rejected by the engine (last: "
                         f"{self.engine_rejected[-1]['reason']})")
        if self.frames_invalid:
            parts.append(f"{self.frames_invalid} gave a non-finite pose (broken weights or an overflow)")
        return "no frame was processed: " + ("; ".join(parts) if parts else "the input yielded no frames")

    # ------------------------------------------------------------------------------------------------- loop
    def _process(self, frame: Any) -> None:
        try:
            camera_model = getattr(frame, "camera_model", None)  # a bag's CameraInfo: undistorted by the engine
            result = self.engine.step(frame.rgb, frame.timestamp_s,
                                      intrinsics=frame.intrinsics if camera_model is None else None,
                                      camera_model=camera_model)
        except (ValueError, TypeError) as err:
            # The engine validates its input with clear exceptions; one bad frame must not end the run.
            self.engine_rejected.append({"timestamp_s": frame.timestamp_s, "reason": str(err)})
            if self.frames_processed == 0 and len(self.engine_rejected) >= MAX_REJECTED_BEFORE_FIRST_FRAME:
                raise RuntimeError(f"the first {len(self.engine_rejected)} frames were all rejected by the engine; "
                                   f"last reason: {err}") from err
            return
        if not getattr(result, "valid", True):
            # The network gave a non-finite pose or output: the engine kept the frame out of its trajectory and map
            # (and reset the stream). It is not a processed frame, and nothing is written for it (no depth file, no
            # result-bag message), so depth file N stays the frame of trajectory row N.
            self.frames_invalid += 1
            if len(self.invalid_records) < MAX_INVALID_RECORDS:
                self.invalid_records.append({"timestamp_s": frame.timestamp_s, "engine_index": int(result.index)})
            return
        processed = self.frames_processed + 1   # counted once the frame's outputs are written (a cut frame is not)
        if self.first_timestamp_s is None:
            self.first_timestamp_s = frame.timestamp_s
        self.last_timestamp_s = frame.timestamp_s
        source_kind = str(getattr(result, "intrinsics_source", "unknown"))
        self.intrinsics_sources[source_kind] = self.intrinsics_sources.get(source_kind, 0) + 1
        for name, value in (getattr(result, "timings_ms", None) or {}).items():
            self.timings_ms.setdefault(name, []).append(float(value))
        if self.result_bag is not None:
            self.result_bag.add_frame(frame.timestamp_s, np.asarray(result.base_in_odom),
                                      np.asarray(result.points_camera), np.asarray(result.colour),
                                      np.asarray(result.confidence), self.options.confidence_threshold,
                                      stamp_ns=self._stamp_ns(frame))
            every = self.options.result_map_every
            voxel_map = self.engine.voxel_map
            if every and processed % every == 0 and len(voxel_map):
                # snapshots let a replay in RViz show the map growing, not only at the end
                self.result_bag.add_map(voxel_map.points(), voxel_map.colours(), voxel_map.confidences(),
                                        stamp_ns=self._stamp_ns(frame))
        if self.options.save_depth:
            self._save_depth(result)
        self.frames_processed = processed

    @staticmethod
    def _stamp_ns(frame: Any) -> int:
        """The exact input stamp where the source has one (bags), else the float timestamp in nanoseconds."""
        stamp_ns = getattr(frame, "stamp_ns", None)
        return int(stamp_ns) if stamp_ns is not None else int(round(frame.timestamp_s * 1e9))

    def _save_depth(self, result: Any) -> None:
        folder = self.out_dir / DEPTH_FOLDER
        # named by trajectory row (this frame's pose is the trajectory's last row), not by the engine's frame
        # index, which also counts frames that were rejected as invalid: file N belongs to row N
        stem = f"{len(self.engine.trajectory) - 1:06d}"
        depth = np.asarray(result.depth)
        confidence = np.asarray(result.confidence)
        if self.options.save_depth == "npy":
            exports.write_npy(folder / f"{stem}_depth.npy", depth)
            exports.write_npy(folder / f"{stem}_confidence.npy", confidence)
        else:
            exports.write_depth_png(folder / f"{stem}_depth.png", depth)
            exports.write_confidence_png(folder / f"{stem}_confidence.png", confidence)

    # ------------------------------------------------------------------------------------------- snapshots
    def _mapper_state(self) -> dict[str, Any]:
        return {"frames_processed": self.frames_processed, "engine_rejected": self.engine_rejected,
                "intrinsics_sources": self.intrinsics_sources, "first_timestamp_s": self.first_timestamp_s,
                "last_timestamp_s": self.last_timestamp_s, "resumes": self.resumes}

    def _restore(self, snapshot: Snapshot) -> None:
        """The counters of the run being resumed (the engine already holds its stream)."""
        state = snapshot.extra["mapper"]
        self.frames_processed = int(state["frames_processed"])
        self.engine_rejected = list(state["engine_rejected"])
        self.intrinsics_sources = dict(state["intrinsics_sources"])
        self.first_timestamp_s, self.last_timestamp_s = state["first_timestamp_s"], state["last_timestamp_s"]
        self.position = InputPosition(**snapshot.input_position)
        self._snapshot_frames = self.frames_processed
        self.resumes = list(state["resumes"]) + [{
            "snapshot": str(snapshot.path), "snapshot_created_utc": snapshot.metadata.get("created_utc"),
            "frames_processed": self.frames_processed, **self.position.as_dict(),
            "result_bag": "holds only the frames from this point on" if self.result_bag is not None else None,
            "timings": "run.json's timings cover the last invocation only"}]

    def save_snapshot(self) -> bool:
        """Write the snapshot (if snapshots are on and no frame is half processed); True when written."""
        settings = self.options.snapshots
        if settings is None or self._frame_open:
            return False
        save_snapshot(settings.path, self.engine, settings.provenance, input_position=self.position.as_dict(),
                      extra={"options": settings.options, "mapper": self._mapper_state()})
        self._snapshot_frames = self.frames_processed
        self.snapshot_written = {"path": str(settings.path), "frames_processed": self.frames_processed,
                                 **self.position.as_dict()}
        return True

    def run(self, source: FrameSource) -> MapRunSummary:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.wall_start = time.perf_counter()
        frames = iter(source)
        if self.options.resume is not None:
            self._restore(self.options.resume)
            print(f"resuming after frame {self.frames_processed} (skipping {self.position.frames_read} input "
                  "frames already read)", file=sys.stderr)
            try:
                skip_read_frames(frames, self.options.resume.input_position, self._stamp_ns)
            except BaseException:
                _close(frames)
                raise
        write_json_atomic(self.out_dir / RUN_JSON_NAME,
                          self.run_report(source, "running", None, 0, 0))
        total = source.expected_frames
        if self.options.max_frames is not None:
            total = min(total, self.options.max_frames) if total else self.options.max_frames
        status, error, trace = "completed", None, None
        bar = tqdm(total=total, unit="frame", desc="map", disable=not self.options.progress, dynamic_ncols=True,
                   file=sys.stderr)
        bar.update(self.frames_processed)
        # a signal finishes the frame in progress first, so every output holds the same frames (a second one
        # stops at once: _committed_trajectory keeps the files consistent then)
        with StopAtFrameBoundary() as stop:
            try:
                self._run_frames(frames, source, bar, stop)
            except KeyboardInterrupt as interrupt:   # Ctrl-C, or SIGTERM/SIGHUP (offline/termination.py)
                status = "interrupted"
                self.stop_signal = signal_of(interrupt)
            except Exception as err:  # keep what was processed, then report
                import traceback

                status, error, trace = "failed", f"{type(err).__name__}: {err}", traceback.format_exc()
            finally:
                bar.close()
                _close(frames)
        report = self._finish(source, status, error)
        return MapRunSummary(status=report["status"], frames_processed=self.frames_processed, run_json=report,
                             error=report["error"], traceback=trace, frames_invalid=self.frames_invalid,
                             stop_signal=self.stop_signal)

    def _run_frames(self, frames: Iterator[Any], source: FrameSource, bar: Any, stop: StopAtFrameBoundary) -> None:
        """The frame loop: each frame processed, the periodic outputs and snapshots, a stop signal honoured at the
        frame boundary."""
        last_checkpoint, last_checkpoint_time = self.frames_processed, time.perf_counter()
        while self.options.max_frames is None or self.frames_processed < self.options.max_frames:
            wait_start = time.perf_counter()
            frame = next(frames, None)
            if frame is None:
                break
            self.read_wait_ms.append((time.perf_counter() - wait_start) * 1e3)
            self._poses_before_frame = _poses_appended(self.engine.trajectory)
            self._frame_open = True
            self.position = InputPosition(self.position.frames_read + 1, self._stamp_ns(frame))
            self._process(frame)
            self._frame_open = False
            bar.update(1)
            if self.timings_ms.get("total"):
                bar.set_postfix(model_ms=f"{self.timings_ms.get('model', [0.0])[-1]:.0f}",
                                skipped=source.skipped.total + len(self.engine_rejected), refresh=False)
            every = self.options.checkpoint_every
            if (every and self.frames_processed - last_checkpoint >= every and time.perf_counter()
                    - last_checkpoint_time >= self.options.checkpoint_min_interval_s):
                self.write_outputs(source, "running")
                last_checkpoint, last_checkpoint_time = self.frames_processed, time.perf_counter()
            snapshots = self.options.snapshots
            if snapshots is not None and self.frames_processed - self._snapshot_frames >= snapshots.every_frames:
                self.save_snapshot()
            stop.check()

    def _finish(self, source: FrameSource, status: str, error: str | None) -> dict[str, Any]:
        if status == "completed" and self.frames_processed == 0:
            # a run that went through its whole input without one usable frame has failed, whatever the reason
            status, error = "failed", self.nothing_processed_reason(source)
        # A second Ctrl-C while the final files are written must not leave them half done: the writes are atomic,
        # and we retry once so the user's first interrupt still gets complete outputs.
        for attempt in range(2):
            try:
                if self.options.snapshots is not None and (self.snapshot_written or {}).get(
                        "frames_read") != self.position.frames_read:
                    self.save_snapshot()   # where the run stopped (skipped when a frame was half processed)
                if self.result_bag is not None:
                    voxel_map = self.engine.voxel_map
                    self.result_bag.finish((voxel_map.points(), voxel_map.colours(), voxel_map.confidences())
                                           if len(voxel_map) else None)
                report = self.write_outputs(source, status, error)
                return report
            except KeyboardInterrupt as interrupt:
                status = "interrupted"
                self.stop_signal = signal_of(interrupt)
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")


def _poses_appended(trajectory: Any) -> int:
    """Poses ever appended to the (possibly bounded) trajectory since its last clear."""
    return len(trajectory) + int(getattr(trajectory, "dropped", 0))


def _close(frames: Any) -> None:
    """Stop a prefetch thread / release the reader when the run stops early (max_frames, errors, interrupts)."""
    close = getattr(frames, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            pass
