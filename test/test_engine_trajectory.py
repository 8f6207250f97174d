"""The engine's trajectory on the synthetic box room, with a stand-in network that returns the scene's exact point
maps (support/box_room.py): poses, depth and frame conventions against the ground truth, update_state=False, reset
intervals chained as the reference demo chains them, manual resets, batched streams, the trajectory buffer and a
non-finite pose."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from support import geometry as support_geometry
from support.box_room import WORLD_OFFSET, oracle_for, relative_ground_truth
from support.oracle import OracleNetwork
from ttt3r_ros.engine import BatchedReconstructor, EngineConfig, StreamingReconstructor, geometry
from ttt3r_ros.engine.preprocess import preprocess_pil
from ttt3r_ros.engine.synthetic import _rot_xyz, make_sequence, pinhole


def test_synthetic_scene_trajectory_intrinsics_depth_map(box_room_seq):
    net = oracle_for(box_room_seq, world_offset=WORLD_OFFSET)
    eng = StreamingReconstructor(net, size=64, confidence_threshold=3.0, voxel_size=0.01)
    gt = relative_ground_truth(box_room_seq)
    for i in range(len(box_room_seq.images)):
        r = eng.step(box_room_seq.images[i], box_room_seq.timestamps[i])
        assert r.index == i and r.model_size == (48, 64) and r.input_size == (48, 64)
        assert np.abs(r.camera_to_world - gt[i]).max() < 1e-5, f"frame {i} pose"
        assert np.allclose(r.camera_to_world_model, WORLD_OFFSET @ gt[i], atol=1e-5)
        assert r.intrinsics_source == "estimated"
        assert r.focal_model == pytest.approx(50.0, rel=1e-5)
        assert np.allclose(r.intrinsics_model, pinhole(50.0, 48, 64), rtol=1e-5)
        assert np.allclose(r.intrinsics_input, r.intrinsics_model, rtol=1e-5)
        assert np.allclose(r.depth, box_room_seq.depth[i], rtol=1e-6)
        assert np.allclose(r.points_camera, box_room_seq.points_camera[i], rtol=1e-6, atol=1e-6)
        assert np.array_equal(r.colour, box_room_seq.images[i])
        assert r.was_reset == (i == 0)
        assert 0.0 < r.gate_min <= r.gate_mean <= r.gate_max <= 1.0
        assert set(r.timings_ms) == {"preprocess", "model", "post", "total"}
        # world points of this frame lie on the room's walls (first-camera frame -> room frame)
        pw = geometry.transform_points(box_room_seq.camera_to_world[0], r.points_world.astype(np.float64))
        assert box_room_seq.room.surface_distance(pw).max() < 1e-4
    assert r.gate_mean != 1.0  # later frames are gated, not replaced
    assert len(eng.trajectory) == len(box_room_seq.images)
    assert np.allclose(eng.trajectory[0][1], np.eye(4))
    # map: voxel means of confident points only
    vm = eng.voxel_map
    assert len(vm) > 0
    assert np.all(vm.confidences() > 3.0)
    pw = geometry.transform_points(box_room_seq.camera_to_world[0], vm.points().astype(np.float64))
    dist = box_room_seq.room.surface_distance(pw)
    # a voxel mean lies on the wall except in voxels that straddle an edge of the room
    assert np.quantile(dist, 0.95) < 1e-4
    assert dist.max() < 0.01 * np.sqrt(3)
    # base odometry in REP 103 axes: camera moving along optical z is the base moving along x
    assert np.allclose(r.base_in_odom, support_geometry.optical_to_body(r.camera_to_world))


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


def test_update_state_false_localises_without_changing_state(box_room_seq):
    imgs = torch.cat([preprocess_pil(im, 64).images for im in box_room_seq.images])
    net = RecordingOracle(imgs, box_room_seq.points_camera, box_room_seq.camera_to_world)
    eng = StreamingReconstructor(net, size=64)
    gt = relative_ground_truth(box_room_seq)
    eng.step(box_room_seq.images[0], 0.0)
    r1 = eng.step(box_room_seq.images[1], 0.1, update_state=False)
    assert np.allclose(r1.camera_to_world, gt[1], atol=1e-5)
    r2 = eng.step(box_room_seq.images[2], 0.2)
    assert np.allclose(r2.camera_to_world, gt[2], atol=1e-5)
    assert eng.frames_processed == 3
    assert net.update_log == [True, False, True]


@pytest.mark.parametrize("interval", [1, 3, 4])
def test_reset_interval_chaining_is_the_demo_chaining(box_room_seq, interval):
    imgs = torch.cat([preprocess_pil(im, 64).images for im in box_room_seq.images])
    net = RecordingOracle(imgs, box_room_seq.points_camera, box_room_seq.camera_to_world, world_offset=WORLD_OFFSET)
    eng = StreamingReconstructor(net, size=64, reset_interval=interval)
    results = [eng.step(box_room_seq.images[i], box_room_seq.timestamps[i]) for i in range(len(box_room_seq.images))]
    flagged = [(i + 1) % interval == 0 for i in range(len(box_room_seq.images))]
    assert net.views == len(box_room_seq.images) + sum(flagged)  # each flagged frame is run twice
    assert [r.was_reset for r in results] == [i == 0 or f for i, f in enumerate(flagged)]
    assert results[-1].chunk_index == sum(flagged[:-1])
    kept, chained = support_geometry.chain_demo_poses(np.stack(net.c2w_log), np.array(net.flag_log))
    assert len(kept) == len(box_room_seq.images)
    model_traj = np.stack([p for _, p in eng.trajectory_model])
    assert np.allclose(model_traj, chained, atol=1e-12)
    rel = np.stack([p for _, p in eng.trajectory])
    assert np.allclose(rel, np.linalg.inv(chained[0]) @ chained, atol=1e-12)


def test_reset_interval_exact_when_chunk_start_pose_is_identity(box_room_seq):
    net = oracle_for(box_room_seq)  # world_offset identity: each chunk's first pose is exactly the identity
    eng = StreamingReconstructor(net, size=64, reset_interval=3)
    for i in range(len(box_room_seq.images)):
        eng.step(box_room_seq.images[i], box_room_seq.timestamps[i])
    rel = np.stack([p for _, p in eng.trajectory])
    assert np.abs(rel - relative_ground_truth(box_room_seq)).max() < 1e-5


def test_manual_reset_continues_or_restarts(box_room_seq):
    net = oracle_for(box_room_seq)
    eng = StreamingReconstructor(net, size=64)
    gt = relative_ground_truth(box_room_seq)
    for i in range(4):
        eng.step(box_room_seq.images[i], box_room_seq.timestamps[i])
    map_before = len(eng.voxel_map)
    eng.reset()
    r4 = eng.step(box_room_seq.images[4], box_room_seq.timestamps[4])
    assert r4.was_reset and r4.chunk_index == 1
    # the new chunk starts where the last frame was (the motion 3 -> 4 is not seen)
    assert np.allclose(r4.camera_to_world, gt[3], atol=1e-5)
    r5 = eng.step(box_room_seq.images[5], box_room_seq.timestamps[5])
    assert np.allclose(r5.camera_to_world, gt[3] @ np.linalg.inv(gt[4]) @ gt[5], atol=1e-5)
    assert len(eng.voxel_map) >= map_before
    eng.reset(restart_odometry=True)
    assert len(eng.trajectory) == 0 and len(eng.voxel_map) == 0 and eng.frames_processed == 0
    r6 = eng.step(box_room_seq.images[6], box_room_seq.timestamps[6])
    assert r6.index == 0 and np.allclose(r6.camera_to_world, np.eye(4))
    r7 = eng.step(box_room_seq.images[7], box_room_seq.timestamps[7])
    assert np.allclose(r7.camera_to_world, np.linalg.inv(gt[6]) @ gt[7], atol=1e-5)


def test_batched_streams_equal_single_streams(box_room_seq):
    other = make_sequence(10, 48, 64, focal=40.0)
    all_images = np.concatenate([box_room_seq.images, other.images])
    imgs = torch.cat([preprocess_pil(im, 64).images for im in all_images])
    net = OracleNetwork(imgs, np.concatenate([box_room_seq.points_camera, other.points_camera]),
                        np.concatenate([box_room_seq.camera_to_world, other.camera_to_world]),
                        world_offset=WORLD_OFFSET)
    batched = BatchedReconstructor(net, 2, EngineConfig(size=64, reset_interval=3))
    singles = [StreamingReconstructor(net, size=64, reset_interval=3) for _ in range(2)]
    streams = [box_room_seq, other]
    # desynchronise the streams so the reset frames of the two streams differ
    res0 = batched.step_batch([box_room_seq.images[0]], [0.0], streams=[0])[0]
    assert np.array_equal(res0.camera_to_world, singles[0].step(box_room_seq.images[0], 0.0).camera_to_world)
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
        batched.step_batch([box_room_seq.images[0], np.zeros((40, 64, 3), np.uint8)], [0.0, 0.0])


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


def test_non_finite_pose_is_reported_and_recovered(box_room_seq):
    imgs = torch.cat([preprocess_pil(im, 64).images for im in box_room_seq.images])
    net = GlitchingOracle(imgs, box_room_seq.points_camera, box_room_seq.camera_to_world, bad_call=4)
    eng = StreamingReconstructor(net, size=64)
    gt = relative_ground_truth(box_room_seq)
    res = [eng.step(box_room_seq.images[i], box_room_seq.timestamps[i]) for i in range(6)]
    assert [r.valid for r in res] == [True, True, True, False, True, True]
    assert np.allclose(res[3].camera_to_world, gt[2], atol=1e-5)  # the last good pose
    assert len(eng.trajectory) == 5 and eng.invalid_frames == 1
    assert res[4].was_reset  # the stream restarted at the last good pose
    assert np.allclose(res[4].camera_to_world, gt[2], atol=1e-5)
    assert np.allclose(res[5].camera_to_world, gt[2] @ np.linalg.inv(gt[4]) @ gt[5], atol=1e-5)
    assert np.all(np.isfinite(eng.voxel_map.points()))
