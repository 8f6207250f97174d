"""Intrinsics in the engine: a calibration given at input resolution through the resize and back, the focal
estimate otherwise, malformed calibrations refused by name, and the focal estimator's pixel stride option."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from support.box_room import oracle_for
from ttt3r_ros.engine import StreamingReconstructor, geometry
from ttt3r_ros.engine.preprocess import preprocess_pil
from ttt3r_ros.engine.synthetic import make_sequence, pinhole


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


@pytest.mark.parametrize("k,match", [
    (np.full((3, 3), np.nan), "NaN"),
    (np.eye(4), "3x3"),
    (np.array([[-5.0, 0, 32], [0, 50, 24], [0, 0, 1]]), "positive"),
    (np.array([[50.0, 0, 32], [0, 50, 24], [0, 1, 1]]), "last row"),
])
def test_bad_intrinsics_are_named(box_room_seq, k, match):
    eng = StreamingReconstructor(oracle_for(box_room_seq), size=64)
    with pytest.raises(ValueError, match=match):
        eng.step(box_room_seq.images[0], 0.0, intrinsics=k)


def test_focal_pixel_stride_option(box_room_seq):
    net = oracle_for(box_room_seq)
    exact = StreamingReconstructor(net, size=64).step(box_room_seq.images[0], 0.0)
    sub = StreamingReconstructor(net, size=64, focal_pixel_stride=2).step(box_room_seq.images[0], 0.0)
    pts = torch.as_tensor(box_room_seq.points_camera[0], dtype=torch.float32)
    assert exact.focal_model == float(geometry.estimate_focal_weiszfeld(pts, (32.0, 24.0)))
    assert sub.focal_model == float(geometry.estimate_focal_weiszfeld(pts, (32.0, 24.0), pixel_stride=2))
    assert sub.focal_model == pytest.approx(exact.focal_model, rel=1e-4)
    with pytest.raises(ValueError, match="focal_pixel_stride"):
        StreamingReconstructor(net, focal_pixel_stride=0)
