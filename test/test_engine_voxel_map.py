"""The engine's voxel map: confidence threshold, pixel stride and point cap on the synthetic box room
(support/box_room.py), and VoxelMap / reduce_to_voxels on their own (merge rules, eviction order, a brute-force
reference, the fast reduction paths)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from support.box_room import oracle_for
from ttt3r_ros.engine import StreamingReconstructor, VoxelMap
from ttt3r_ros.engine.synthetic import make_sequence


def test_map_threshold_rejects_low_confidence(box_room_seq):
    net = oracle_for(box_room_seq)
    eng = StreamingReconstructor(net, size=64, confidence_threshold=10.0)  # stand-in confidences are 1.5 and 5
    for i in range(3):
        eng.step(box_room_seq.images[i], box_room_seq.timestamps[i])
    assert len(eng.voxel_map) == 0
    eng2 = StreamingReconstructor(net, size=64, confidence_threshold=2.0, voxel_size=1e-4)
    r = eng2.step(box_room_seq.images[0], 0.0)
    # the low-confidence band (left eighth of the image) is not in the map: every map point is a band-free pixel
    assert len(eng2.voxel_map) == int((r.confidence > 2.0).sum())


def test_map_pixel_stride_subsamples(box_room_seq):
    net = oracle_for(box_room_seq)
    full = StreamingReconstructor(net, size=64, confidence_threshold=2.0, voxel_size=1e-4)
    half = StreamingReconstructor(net, size=64, confidence_threshold=2.0, voxel_size=1e-4, map_pixel_stride=2)
    r = full.step(box_room_seq.images[0], 0.0)
    half.step(box_room_seq.images[0], 0.0)
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
    keys, w, mean, _, cmax, dropped = vm_mod.reduce_to_voxels(wide, torch.zeros(3, 3),
                                                              torch.tensor([1.0, 1.0, 3.0]), 0.01)
    assert keys.numel() == 2 and dropped == 0 and w.tolist() == [1.0, 4.0] and cmax.tolist() == [1.0, 3.0]
    assert np.allclose(mean[1].numpy(), [30.003, -29.997, 30.00075], atol=1e-5)
