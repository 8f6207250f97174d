"""The engine on a synthetic scene with a stand-in network that returns the scene's exact point maps.

Poses, intrinsics, depth, map and exports are checked against the ground truth of the rendered box room.
"""
from __future__ import annotations

import gc
import os

import numpy as np
import pytest
import torch

from ttt3r_ros.engine import (BatchedReconstructor, EngineConfig, StreamingReconstructor, VoxelMap, exports,
                              geometry)
from ttt3r_ros.engine.preprocess import preprocess_pil
from support import geometry as support_geometry
from support.oracle import OracleNetwork
from ttt3r_ros.engine.synthetic import _rot_xyz, make_sequence, pinhole

WORLD_OFFSET = geometry.make_se3(_rot_xyz(0.05, -0.1, 0.02), [0.02, -0.03, 0.01])


def oracle_for(seq, size=64, world_offset=None, intrinsics_model=None):
    """Stand-in network for a sequence rendered at model resolution (or re-rendered at it via intrinsics_model)."""
    imgs = torch.cat([preprocess_pil(im, size).images for im in seq.images])
    if intrinsics_model is None:
        pts = seq.points_camera
    else:
        h, w = imgs.shape[2:]
        pts = np.stack([seq.room.render(intrinsics_model, h, w, p)[2] for p in seq.camera_to_world])
    return OracleNetwork(imgs, pts, seq.camera_to_world, world_offset=world_offset)


def relative_gt(seq):
    return np.linalg.inv(seq.camera_to_world[0]) @ seq.camera_to_world


@pytest.fixture(scope="module")
def seq():
    return make_sequence(10, 48, 64, focal=50.0)


def test_synthetic_scene_trajectory_intrinsics_depth_map(seq):
    net = oracle_for(seq, world_offset=WORLD_OFFSET)
    eng = StreamingReconstructor(net, size=64, confidence_threshold=3.0, voxel_size=0.01)
    gt = relative_gt(seq)
    for i in range(len(seq.images)):
        r = eng.step(seq.images[i], seq.timestamps[i])
        assert r.index == i and r.model_size == (48, 64) and r.input_size == (48, 64)
        assert np.abs(r.camera_to_world - gt[i]).max() < 1e-5, f"frame {i} pose"
        assert np.allclose(r.camera_to_world_model, WORLD_OFFSET @ gt[i], atol=1e-5)
        assert r.intrinsics_source == "estimated"
        assert r.focal_model == pytest.approx(50.0, rel=1e-5)
        assert np.allclose(r.intrinsics_model, pinhole(50.0, 48, 64), rtol=1e-5)
        assert np.allclose(r.intrinsics_input, r.intrinsics_model, rtol=1e-5)
        assert np.allclose(r.depth, seq.depth[i], rtol=1e-6)
        assert np.allclose(r.points_camera, seq.points_camera[i], rtol=1e-6, atol=1e-6)
        assert np.array_equal(r.colour, seq.images[i])
        assert r.was_reset == (i == 0)
        assert 0.0 < r.gate_min <= r.gate_mean <= r.gate_max <= 1.0
        assert set(r.timings_ms) == {"preprocess", "model", "post", "total"}
        # world points of this frame lie on the room's walls (first-camera frame -> room frame)
        pw = geometry.transform_points(seq.camera_to_world[0], r.points_world.astype(np.float64))
        assert seq.room.surface_distance(pw).max() < 1e-4
    assert r.gate_mean != 1.0  # later frames are gated, not replaced
    assert len(eng.trajectory) == len(seq.images)
    assert np.allclose(eng.trajectory[0][1], np.eye(4))
    # map: voxel means of confident points only
    vm = eng.voxel_map
    assert len(vm) > 0
    assert np.all(vm.confidences() > 3.0)
    pw = geometry.transform_points(seq.camera_to_world[0], vm.points().astype(np.float64))
    dist = seq.room.surface_distance(pw)
    # a voxel mean lies on the wall except in voxels that straddle an edge of the room
    assert np.quantile(dist, 0.95) < 1e-4
    assert dist.max() < 0.01 * np.sqrt(3)
    # base odometry in REP 103 axes: camera moving along optical z is the base moving along x
    assert np.allclose(r.base_in_odom, support_geometry.optical_to_body(r.camera_to_world))


def test_map_threshold_rejects_low_confidence(seq):
    net = oracle_for(seq)
    eng = StreamingReconstructor(net, size=64, confidence_threshold=10.0)  # stand-in confidences are 1.5 and 5
    for i in range(3):
        eng.step(seq.images[i], seq.timestamps[i])
    assert len(eng.voxel_map) == 0
    eng2 = StreamingReconstructor(net, size=64, confidence_threshold=2.0, voxel_size=1e-4)
    r = eng2.step(seq.images[0], 0.0)
    # the low-confidence band (left eighth of the image) is not in the map: every map point is a band-free pixel
    assert len(eng2.voxel_map) == int((r.confidence > 2.0).sum())


def test_calibrated_intrinsics_through_resize_and_estimate_maps_back():
    # input 80x60 -> model 64x48 (LANCZOS, scale 0.8); principal point chosen to land on (32, 24) at model size
    k_in = np.array([[62.5, 0.0, 40.125], [0.0, 62.5, 30.125], [0.0, 0.0, 1.0]])
    seq = make_sequence(4, 60, 80, intrinsics=k_in)
    rc = preprocess_pil(seq.images[0], 64).transform
    k_model = geometry.intrinsics_input_to_model(k_in, rc)
    assert np.allclose(k_model, pinhole(50.0, 48, 64))
    net = oracle_for(seq, intrinsics_model=k_model)
    eng = StreamingReconstructor(net, size=64)
    r = eng.step(seq.images[0], 0.0, intrinsics=k_in)
    assert r.intrinsics_source == "calibrated"
    assert r.input_size == (60, 80) and r.model_size == (48, 64)
    assert np.allclose(r.intrinsics_model, k_model) and np.array_equal(r.intrinsics_input, k_in)
    r2 = eng.step(seq.images[1], 0.1)  # no calibration: estimated at model size, mapped back to the input
    assert r2.intrinsics_model[0, 0] == pytest.approx(50.0, rel=1e-5)
    assert np.allclose(r2.intrinsics_input, k_in, rtol=1e-5)


def test_tensor_input_equals_numpy_input(seq):
    net = oracle_for(seq)
    a = StreamingReconstructor(net, size=64)
    b = StreamingReconstructor(net, size=64)
    for i in range(4):
        ra = a.step(seq.images[i], seq.timestamps[i])
        rb = b.step(torch.from_numpy(seq.images[i]), seq.timestamps[i])
        assert np.array_equal(ra.camera_to_world, rb.camera_to_world)
        assert np.array_equal(ra.depth, rb.depth) and np.array_equal(ra.colour, rb.colour)


def test_on_device_preprocessing_equals_pil_path(seq):
    # the tensor resize path (used on CUDA by default) gives the same frames as the reference PIL path
    big = make_sequence(3, 60, 80, focal=60.0)
    imgs = torch.cat([preprocess_pil(im, 64).images for im in big.images])
    net = OracleNetwork(imgs, np.zeros((3, 48, 64, 3)) + [0.0, 0.0, 1.0], big.camera_to_world)
    a = StreamingReconstructor(net, size=64, preprocess_on_device=True)
    b = StreamingReconstructor(net, size=64, preprocess_on_device=False)
    for i in range(3):
        assert np.array_equal(a.step(big.images[i], 0.0).colour, b.step(big.images[i], 0.0).colour)


def test_update_state_false_localises_without_changing_state(seq):
    imgs = torch.cat([preprocess_pil(im, 64).images for im in seq.images])
    net = RecordingOracle(imgs, seq.points_camera, seq.camera_to_world)
    eng = StreamingReconstructor(net, size=64)
    gt = relative_gt(seq)
    eng.step(seq.images[0], 0.0)
    r1 = eng.step(seq.images[1], 0.1, update_state=False)
    assert np.allclose(r1.camera_to_world, gt[1], atol=1e-5)
    r2 = eng.step(seq.images[2], 0.2)
    assert np.allclose(r2.camera_to_world, gt[2], atol=1e-5)
    assert eng.frames_processed == 3
    assert net.update_log == [True, False, True]


class RecordingOracle(OracleNetwork):
    """Records every view's pose and reset flag, as the reference's streaming loop would see them."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.c2w_log, self.flag_log, self.update_log = [], [], []

    def step(self, images, state, update_rule="ttt3r", reset=None, update=None, heads=(), **kw):
        out, new = super().step(images, state, update_rule, reset, update, heads)
        flags = [False] * images.shape[0] if reset is None else reset.tolist()
        self.c2w_log.extend(out.c2w.double().numpy())
        self.flag_log.extend(flags)
        self.update_log.extend([True] * images.shape[0] if update is None else update.tolist())
        return out, new


@pytest.mark.parametrize("interval", [1, 3, 4])
def test_reset_interval_chaining_is_the_demo_chaining(seq, interval):
    imgs = torch.cat([preprocess_pil(im, 64).images for im in seq.images])
    net = RecordingOracle(imgs, seq.points_camera, seq.camera_to_world, world_offset=WORLD_OFFSET)
    eng = StreamingReconstructor(net, size=64, reset_interval=interval)
    results = [eng.step(seq.images[i], seq.timestamps[i]) for i in range(len(seq.images))]
    flagged = [(i + 1) % interval == 0 for i in range(len(seq.images))]
    assert net.views == len(seq.images) + sum(flagged)  # each flagged frame is run twice
    assert [r.was_reset for r in results] == [i == 0 or f for i, f in enumerate(flagged)]
    assert results[-1].chunk_index == sum(flagged[:-1])
    kept, chained = support_geometry.chain_demo_poses(np.stack(net.c2w_log), np.array(net.flag_log))
    assert len(kept) == len(seq.images)
    model_traj = np.stack([p for _, p in eng.trajectory_model])
    assert np.allclose(model_traj, chained, atol=1e-12)
    rel = np.stack([p for _, p in eng.trajectory])
    assert np.allclose(rel, np.linalg.inv(chained[0]) @ chained, atol=1e-12)


def test_reset_interval_exact_when_chunk_start_pose_is_identity(seq):
    net = oracle_for(seq)  # world_offset identity: each chunk's first pose is exactly the identity
    eng = StreamingReconstructor(net, size=64, reset_interval=3)
    for i in range(len(seq.images)):
        eng.step(seq.images[i], seq.timestamps[i])
    rel = np.stack([p for _, p in eng.trajectory])
    assert np.abs(rel - relative_gt(seq)).max() < 1e-5


def test_manual_reset_continues_or_restarts(seq):
    net = oracle_for(seq)
    eng = StreamingReconstructor(net, size=64)
    gt = relative_gt(seq)
    for i in range(4):
        eng.step(seq.images[i], seq.timestamps[i])
    map_before = len(eng.voxel_map)
    eng.reset()
    r4 = eng.step(seq.images[4], seq.timestamps[4])
    assert r4.was_reset and r4.chunk_index == 1
    # the new chunk starts where the last frame was (the motion 3 -> 4 is not seen)
    assert np.allclose(r4.camera_to_world, gt[3], atol=1e-5)
    r5 = eng.step(seq.images[5], seq.timestamps[5])
    assert np.allclose(r5.camera_to_world, gt[3] @ np.linalg.inv(gt[4]) @ gt[5], atol=1e-5)
    assert len(eng.voxel_map) >= map_before
    eng.reset(restart_odometry=True)
    assert len(eng.trajectory) == 0 and len(eng.voxel_map) == 0 and eng.frames_processed == 0
    r6 = eng.step(seq.images[6], seq.timestamps[6])
    assert r6.index == 0 and np.allclose(r6.camera_to_world, np.eye(4))
    r7 = eng.step(seq.images[7], seq.timestamps[7])
    assert np.allclose(r7.camera_to_world, np.linalg.inv(gt[6]) @ gt[7], atol=1e-5)


def test_batched_streams_equal_single_streams(seq):
    other = make_sequence(10, 48, 64, focal=40.0)
    all_images = np.concatenate([seq.images, other.images])
    imgs = torch.cat([preprocess_pil(im, 64).images for im in all_images])
    net = OracleNetwork(imgs, np.concatenate([seq.points_camera, other.points_camera]),
                        np.concatenate([seq.camera_to_world, other.camera_to_world]), world_offset=WORLD_OFFSET)
    batched = BatchedReconstructor(net, 2, EngineConfig(size=64, reset_interval=3))
    singles = [StreamingReconstructor(net, size=64, reset_interval=3) for _ in range(2)]
    streams = [seq, other]
    # desynchronise the streams so the reset frames of the two streams differ
    res0 = batched.step_batch([seq.images[0]], [0.0], streams=[0])[0]
    assert np.array_equal(res0.camera_to_world, singles[0].step(seq.images[0], 0.0).camera_to_world)
    pos = [1, 0]
    for _ in range(7):
        out = batched.step_batch([streams[s].images[pos[s]] for s in range(2)], [0.1 * pos[s] for s in range(2)])
        for s in range(2):
            ref = singles[s].step(streams[s].images[pos[s]], 0.1 * pos[s])
            assert out[s].stream == s and out[s].index == ref.index
            assert np.allclose(out[s].camera_to_world, ref.camera_to_world, atol=1e-12)
            assert out[s].was_reset == ref.was_reset
            assert np.array_equal(out[s].depth, ref.depth)
            assert out[s].focal_model == pytest.approx(ref.focal_model, rel=1e-6)
            pos[s] += 1
    for s in range(2):
        assert len(batched.voxel_map_of(s)) == len(singles[s].voxel_map)
    with pytest.raises(ValueError, match="different model sizes"):
        batched.step_batch([seq.images[0], np.zeros((40, 64, 3), np.uint8)], [0.0, 0.0])


def test_exports_round_trip(seq, tmp_path):
    net = oracle_for(seq)
    eng = StreamingReconstructor(net, size=64, voxel_size=0.05)
    results = [eng.step(seq.images[i], seq.timestamps[i]) for i in range(5)]
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


def _live_tensor_bytes() -> tuple[int, int]:
    gc.collect()
    count = total = 0
    for obj in gc.get_objects():
        try:
            if type(obj) in (torch.Tensor, torch.nn.Parameter):
                count += 1
                total += obj.untyped_storage().nbytes()
        except Exception:  # objects that refuse isinstance/introspection
            pass
    return count, total


def test_tensor_memory_flat_over_many_steps(seq):
    net = oracle_for(seq)
    eng = StreamingReconstructor(net, size=64, reset_interval=7, map_max_points=3000, voxel_size=0.02)
    n = len(seq.images)
    for i in range(20):
        eng.step(seq.images[i % n], float(i))
    base_count, base_bytes = _live_tensor_bytes()
    map_bytes = eng.voxel_map.nbytes()
    for i in range(20, 120):
        eng.step(seq.images[i % n], float(i))
    count, total = _live_tensor_bytes()
    assert count == base_count, f"live tensors grew from {base_count} to {count}"
    assert total == base_bytes, f"live tensor bytes grew from {base_bytes} to {total}"
    assert len(eng.voxel_map) <= 3000
    assert eng.voxel_map.nbytes() <= max(map_bytes, 3000 * 200)
    assert len(eng.trajectory) == 120  # the trajectory (4x4 numpy per frame) is the only thing that grows


def test_map_pixel_stride_subsamples(seq):
    net = oracle_for(seq)
    full = StreamingReconstructor(net, size=64, confidence_threshold=2.0, voxel_size=1e-4)
    half = StreamingReconstructor(net, size=64, confidence_threshold=2.0, voxel_size=1e-4, map_pixel_stride=2)
    r = full.step(seq.images[0], 0.0)
    half.step(seq.images[0], 0.0)
    assert len(half.voxel_map) == int((r.confidence[::2, ::2] > 2.0).sum()) < len(full.voxel_map)


def test_engine_map_never_exceeds_cap_on_long_run():
    seq = make_sequence(24, 48, 64)
    net = oracle_for(seq)
    eng = StreamingReconstructor(net, size=64, voxel_size=0.01, map_max_points=800)
    sizes = []
    for i in range(len(seq.images)):
        eng.step(seq.images[i], seq.timestamps[i])
        sizes.append(len(eng.voxel_map))
    assert max(sizes) <= 800
    assert eng.voxel_map.evicted_total > 0  # the cap was actually reached


def test_voxel_map_merge_rules_and_eviction_order():
    vm = VoxelMap(voxel_size=1.0, max_points=4, evict_fraction=0.25)
    vm.add(np.array([[0.2, 0.2, 0.2], [0.6, 0.4, 0.8]]), np.array([[0, 0, 0], [200, 100, 40]], np.uint8),
           np.array([1.0, 3.0]))
    assert len(vm) == 1
    assert np.allclose(vm.points()[0], (np.array([0.2, 0.2, 0.2]) * 1 + np.array([0.6, 0.4, 0.8]) * 3) / 4)
    assert np.array_equal(vm.colours()[0], [150, 75, 30])
    assert vm.confidences()[0] == 3.0 and vm.weights()[0] == 4.0
    vm.add(np.array([[1.5, 0.5, 0.5]]), np.array([[1, 1, 1]], np.uint8), np.array([2.0]))   # add #2
    vm.add(np.array([[2.5, 0.5, 0.5], [3.5, 0.5, 0.5]]), np.full((2, 3), 9, np.uint8), np.array([5.0, 0.5]))
    assert len(vm) == 4
    vm.add(np.array([[0.5, 0.5, 0.5]]), np.zeros((1, 3), np.uint8), np.array([1.0]))  # touch voxel 0 again
    vm.add(np.array([[4.5, 0.5, 0.5]]), np.zeros((1, 3), np.uint8), np.array([1.0]))  # 5 > 4: evict to 3
    assert len(vm) == 3 and vm.evicted_total == 2
    centres_x = sorted(np.floor(vm.points()[:, 0]).astype(int).tolist())
    # oldest first (voxel 1 from add #2), then among add #3 the least confident (voxel 3, conf 0.5)
    assert centres_x == [0, 2, 4]


def test_voxel_map_matches_brute_force_and_stays_capped():
    rng = np.random.default_rng(0)
    vm = VoxelMap(voxel_size=0.1, max_points=10**6, delta_index_max=50)  # tiny delta index: exercise folding
    ref: dict[tuple, list] = {}
    for _ in range(20):
        pts = rng.uniform(-1, 1, (300, 3))
        conf = rng.uniform(1, 5, 300)
        col = rng.integers(0, 256, (300, 3)).astype(np.uint8)
        vm.add(pts, col, conf)
        for p, c, w in zip(pts, col, conf):
            k = tuple(np.floor(p / 0.1).astype(int))
            e = ref.setdefault(k, [0.0, np.zeros(3), np.zeros(3), 0.0])
            e[0] += w
            e[1] += w * p
            e[2] += w * c
            e[3] = max(e[3], w)
    assert len(vm) == len(ref)
    keys = np.floor(vm.points() / 0.1).astype(int)
    for k, p, c, conf in zip(keys, vm.points(), vm.colours(), vm.confidences()):
        e = ref[tuple(k)]
        assert np.allclose(p, e[1] / e[0], atol=1e-5)
        assert np.all(np.abs(c.astype(float) - e[2] / e[0]) <= 0.5 + 1e-3)
        assert conf == pytest.approx(e[3], rel=1e-6)
    capped = VoxelMap(voxel_size=0.01, max_points=1000)
    for _ in range(50):
        capped.add(rng.uniform(-5, 5, (500, 3)), np.zeros((500, 3), np.uint8), np.ones(500))
        assert len(capped) <= 1000
    # dropped: non-finite and out of range
    vm2 = VoxelMap(voxel_size=0.01)
    vm2.add(np.array([[np.nan, 0, 0], [1e9, 0, 0], [0.1, 0.1, 0.1]]), np.zeros((3, 3), np.uint8), np.ones(3))
    assert len(vm2) == 1 and vm2.dropped_total == 2


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("image,err,match", [
    (np.zeros((48, 64, 3), np.float64), TypeError, "uint8"),
    (np.zeros((48, 64), np.uint8), ValueError, "HxWx3"),
    (np.zeros((2, 48, 64, 3), np.uint8), ValueError, "one HxWx3"),
    (np.zeros((0, 0, 3), np.uint8), ValueError, "empty"),
    (torch.zeros(3, 40, 64), ValueError, "multiples of 16"),
    (torch.full((3, 48, 64), 3.0), ValueError, r"\[-1, 1\]"),
    ("frame.png", TypeError, "numpy array"),
])
def test_bad_images_are_named(seq, image, err, match):
    eng = StreamingReconstructor(oracle_for(seq), size=64)
    with pytest.raises(err, match=match):
        eng.step(image, 0.0)
    assert eng.frames_processed == 0


@pytest.mark.parametrize("k,match", [
    (np.full((3, 3), np.nan), "NaN"),
    (np.eye(4), "3x3"),
    (np.array([[-5.0, 0, 32], [0, 50, 24], [0, 0, 1]]), "positive"),
    (np.array([[50.0, 0, 32], [0, 50, 24], [0, 1, 1]]), "last row"),
])
def test_bad_intrinsics_are_named(seq, k, match):
    eng = StreamingReconstructor(oracle_for(seq), size=64)
    with pytest.raises(ValueError, match=match):
        eng.step(seq.images[0], 0.0, intrinsics=k)


def test_bad_options_and_timestamps(seq):
    net = oracle_for(seq)
    with pytest.raises(ValueError, match="update_rule"):
        StreamingReconstructor(net, update_rule="ttt4r")
    with pytest.raises(ValueError, match="reset_interval"):
        StreamingReconstructor(net, reset_interval=0)
    with pytest.raises(TypeError, match="unknown engine options"):
        StreamingReconstructor(net, voxelsize=0.1)
    with pytest.raises(ValueError, match="camera_to_base"):
        StreamingReconstructor(net, camera_to_base=np.eye(3))
    eng = StreamingReconstructor(net, size=64)
    with pytest.raises(ValueError, match="timestamp"):
        eng.step(seq.images[0], float("nan"))


def test_trajectory_buffer_grows_and_reads_back():
    from ttt3r_ros.engine import Trajectory
    traj = Trajectory()
    poses = [geometry.make_se3(_rot_xyz(0.01 * i, 0.02, -0.01 * i), [i, -i, 0.5 * i]) for i in range(600)]
    for i, p in enumerate(poses):
        traj.append(0.1 * i, p)
    assert len(traj) == 600
    t, p = traj[-1]
    assert t == pytest.approx(59.9) and np.array_equal(p, poses[-1])
    assert np.array_equal(traj.poses(), np.stack(poses)) and np.allclose(traj.timestamps(), 0.1 * np.arange(600))
    assert [tt for tt, _ in traj][:3] == [0.0, 0.1, 0.2]
    with pytest.raises(IndexError):
        traj[600]


class GlitchingOracle(OracleNetwork):
    """Returns a NaN pose on one given call."""

    def __init__(self, *a, bad_call: int, **kw):
        super().__init__(*a, **kw)
        self.bad_call = bad_call

    def step(self, *a, **kw):
        out, new = super().step(*a, **kw)
        if self.calls == self.bad_call:
            out.c2w = torch.full_like(out.c2w, float("nan"))
        return out, new


def test_non_finite_pose_is_reported_and_recovered(seq):
    imgs = torch.cat([preprocess_pil(im, 64).images for im in seq.images])
    net = GlitchingOracle(imgs, seq.points_camera, seq.camera_to_world, bad_call=4)
    eng = StreamingReconstructor(net, size=64)
    gt = relative_gt(seq)
    res = [eng.step(seq.images[i], seq.timestamps[i]) for i in range(6)]
    assert [r.valid for r in res] == [True, True, True, False, True, True]
    assert np.allclose(res[3].camera_to_world, gt[2], atol=1e-5)  # the last good pose
    assert len(eng.trajectory) == 5 and eng.invalid_frames == 1
    assert res[4].was_reset  # the stream restarted at the last good pose
    assert np.allclose(res[4].camera_to_world, gt[2], atol=1e-5)
    assert np.allclose(res[5].camera_to_world, gt[2] @ np.linalg.inv(gt[4]) @ gt[5], atol=1e-5)
    assert np.all(np.isfinite(eng.voxel_map.points()))


def test_voxel_reduction_paths_agree_bit_for_bit(monkeypatch):
    """Frame-local int32 keys vs packed int64 keys, and the whole-batch validity check vs per-point masks: the
    fast paths must give exactly the same voxels, sums and order as the general ones."""
    from ttt3r_ros.engine import voxel_map as vm_mod
    g = torch.Generator().manual_seed(7)
    pts = torch.randn(4000, 3, generator=g) * 0.3 + torch.tensor([0.5, -2.0, 40.0])  # far from the origin
    col = torch.randint(0, 256, (4000, 3), generator=g, dtype=torch.uint8)
    conf = torch.rand(4000, generator=g) * 4 + 0.1
    fast = vm_mod.reduce_to_voxels(pts, col, conf, 0.01)
    monkeypatch.setattr(vm_mod, "_LOCAL_KEY_MAX_EXTENT", 0)  # force the int64 path
    general = vm_mod.reduce_to_voxels(pts, col, conf, 0.01)
    bad = torch.cat([pts, torch.tensor([[float("nan"), 0.0, 0.0]])])  # forces the per-point validity masks
    masked = vm_mod.reduce_to_voxels(bad, torch.cat([col, col[:1]]), torch.cat([conf, conf[:1]]), 0.01)
    monkeypatch.undo()
    assert fast[0].numel() > 1000
    for a, b, c in zip(fast[:5], general[:5], masked[:5]):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert fast[5] == general[5] == 0 and masked[5] == 1
    # keys decode to the voxels of the points; a batch wider than the int32 range takes the int64 path by itself
    assert np.allclose(vm_mod.voxel_centres(fast[0].numpy(), 0.01), fast[2].numpy(), atol=0.005 + 1e-6)
    wide = torch.tensor([[0.0, 0.0, 0.0], [30.0, -30.0, 30.0], [30.004, -29.996, 30.001]])
    keys, w, mean, _, cmax, dropped = vm_mod.reduce_to_voxels(wide, torch.zeros(3, 3), torch.tensor([1.0, 1.0, 3.0]),
                                                             0.01)
    assert keys.numel() == 2 and dropped == 0 and w.tolist() == [1.0, 4.0] and cmax.tolist() == [1.0, 3.0]
    assert np.allclose(mean[1].numpy(), [30.003, -29.997, 30.00075], atol=1e-5)


def test_focal_pixel_stride_option(seq):
    net = oracle_for(seq)
    exact = StreamingReconstructor(net, size=64).step(seq.images[0], 0.0)
    sub = StreamingReconstructor(net, size=64, focal_pixel_stride=2).step(seq.images[0], 0.0)
    pts = torch.as_tensor(seq.points_camera[0], dtype=torch.float32)
    assert exact.focal_model == float(geometry.estimate_focal_weiszfeld(pts, (32.0, 24.0)))
    assert sub.focal_model == float(geometry.estimate_focal_weiszfeld(pts, (32.0, 24.0), pixel_stride=2))
    assert sub.focal_model == pytest.approx(exact.focal_model, rel=1e-4)
    with pytest.raises(ValueError, match="focal_pixel_stride"):
        StreamingReconstructor(net, focal_pixel_stride=0)
