"""Memory stays flat over a long run: the voxel map stays under its cap and Python-side allocations (tracemalloc:
numpy arrays, Python objects) do not grow with the frame count, apart from the documented trajectory buffers; the
live torch tensors keep their count and storage bytes after the warm-up."""
from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import torch

from ttt3r_ros.engine import StreamingReconstructor
from ttt3r_ros.engine.preprocess import preprocess_pil
from support.oracle import OracleNetwork
from ttt3r_ros.engine.synthetic import make_sequence

STEPS = 300
WARMUP = 100
WINDOW = 100
SMALL_OBJECT_BYTES = 100
LEAK_BYTES_PER_STEP = 100  # any per-frame leak of a numpy array or a FrameResult is larger than this
MAP_CAP = 1500


def _trajectory_bytes(eng: StreamingReconstructor) -> int:
    """The one thing allowed to grow: two trajectories of 104 bytes per frame (buffers doubling)."""
    return sum(t._t.nbytes + t._p.nbytes for t in (eng.trajectory, eng.trajectory_model))


def _traced_bytes_without_trajectory(eng: StreamingReconstructor) -> int:
    """Live traced bytes in allocations of >= SMALL_OBJECT_BYTES, less the trajectories. Smaller allocations are left
    out: torch, PIL and CPython churn ~60-byte objects through bounded internal caches (measured: +-5 KB per 100
    steps with no trend), which would hide a real leak; anything a frame could leak (a numpy array, a FrameResult, a
    pose) is larger."""
    gc.collect()
    snapshot = tracemalloc.take_snapshot()
    return sum(t.size for t in snapshot.traces if t.size >= SMALL_OBJECT_BYTES) - _trajectory_bytes(eng)


def _live_tensors() -> tuple[int, int]:
    """(count, storage bytes) of the live tensors and parameters: the engine's and the stand-in's state."""
    gc.collect()
    count = total = 0
    for obj in gc.get_objects():
        if type(obj) in (torch.Tensor, torch.nn.Parameter):
            count += 1
            try:
                total += obj.untyped_storage().nbytes()
            except (RuntimeError, NotImplementedError):  # sparse / nested tensors have no plain storage: counted only
                pass
    return count, total


def test_memory_is_flat_over_300_steps_with_the_map_on():
    tracemalloc.start()  # before anything is built, so buffers replaced later are accounted for on both sides
    try:
        seq = make_sequence(12, 48, 64)
        imgs = torch.cat([preprocess_pil(im, 64).images for im in seq.images])
        net = OracleNetwork(imgs, seq.points_camera, seq.camera_to_world)
        eng = StreamingReconstructor(net, size=64, reset_interval=9, voxel_size=0.005, map_max_points=MAP_CAP,
                                     confidence_threshold=1.0)
        n = len(seq.images)

        def run(first: int, last: int) -> None:
            for i in range(first, last):
                r = eng.step(seq.images[i % n], float(i) / 10.0)
                # what a node / the offline mapper reads each frame (host copies, focal estimate, world points)
                _ = (r.camera_to_world, r.base_in_odom, r.intrinsics_model, r.intrinsics_input, r.depth,
                     r.confidence, r.colour, r.points_world, r.gate_mean)
                assert len(eng.voxel_map) <= MAP_CAP, f"map grew to {len(eng.voxel_map)} > {MAP_CAP} at step {i}"
                del r

        run(0, WARMUP)  # the map reaches its cap; caches (pixel grid, torch's own small caches) fill up
        assert eng.voxel_map.evicted_total > 0, "the test must reach the map cap to check it"
        base_tensors = _live_tensors()
        marks = [_traced_bytes_without_trajectory(eng)]
        map_bytes = [eng.voxel_map.nbytes()]
        for first in range(WARMUP, STEPS, WINDOW):
            run(first, first + WINDOW)
            marks.append(_traced_bytes_without_trajectory(eng))
            map_bytes.append(eng.voxel_map.nbytes())
    finally:
        tracemalloc.stop()
    growth = np.diff(marks)
    print(f"\ntraced bytes (without trajectories) every {WINDOW} steps from {WARMUP}: {marks}; map nbytes {map_bytes}")
    # flat; a per-frame leak adds >= LEAK_BYTES_PER_STEP bytes per step, >= 20 KB over the 200 measured steps
    assert np.all(np.abs(growth) < WINDOW * LEAK_BYTES_PER_STEP * 1.25), \
        f"Python-side allocations changed by {growth.tolist()} bytes per {WINDOW} steps"
    assert marks[-1] - marks[0] < (STEPS - WARMUP) * LEAK_BYTES_PER_STEP, \
        f"Python-side allocations grew by {marks[-1] - marks[0]} bytes over {STEPS - WARMUP} steps"
    assert max(map_bytes) <= MAP_CAP * 200, f"voxel map storage {max(map_bytes)} bytes for a cap of {MAP_CAP}"
    assert _live_tensors() == base_tensors, "live tensors (count, bytes) changed after the warm-up"
    assert eng.frames_processed == STEPS and len(eng.trajectory) == STEPS
