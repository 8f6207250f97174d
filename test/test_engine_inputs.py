"""What the engine accepts as a frame: numpy and tensor images alike, on-device preprocessing equal to the PIL
path, and bad images, options and timestamps refused by name before any state changes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from support.box_room import oracle_for
from support.oracle import OracleNetwork
from ttt3r_ros.engine import StreamingReconstructor
from ttt3r_ros.engine.preprocess import preprocess_pil
from ttt3r_ros.engine.synthetic import make_sequence


def test_tensor_input_equals_numpy_input(box_room_seq):
    net = oracle_for(box_room_seq)
    a = StreamingReconstructor(net, size=64)
    b = StreamingReconstructor(net, size=64)
    for i in range(4):
        ra = a.step(box_room_seq.images[i], box_room_seq.timestamps[i])
        rb = b.step(torch.from_numpy(box_room_seq.images[i]), box_room_seq.timestamps[i])
        assert np.array_equal(ra.camera_to_world, rb.camera_to_world)
        assert np.array_equal(ra.depth, rb.depth) and np.array_equal(ra.colour, rb.colour)


def test_on_device_preprocessing_equals_pil_path():
    # the tensor resize path (used on CUDA by default) gives the same frames as the reference PIL path
    big = make_sequence(3, 60, 80, focal=60.0)
    imgs = torch.cat([preprocess_pil(im, 64).images for im in big.images])
    net = OracleNetwork(imgs, np.zeros((3, 48, 64, 3)) + [0.0, 0.0, 1.0], big.camera_to_world)
    a = StreamingReconstructor(net, size=64, preprocess_on_device=True)
    b = StreamingReconstructor(net, size=64, preprocess_on_device=False)
    for i in range(3):
        assert np.array_equal(a.step(big.images[i], 0.0).colour, b.step(big.images[i], 0.0).colour)


@pytest.mark.parametrize("image,err,match", [
    (np.zeros((48, 64, 3), np.float64), TypeError, "uint8"),
    (np.zeros((48, 64), np.uint8), ValueError, "HxWx3"),
    (np.zeros((2, 48, 64, 3), np.uint8), ValueError, "one HxWx3"),
    (np.zeros((0, 0, 3), np.uint8), ValueError, "empty"),
    (torch.zeros(3, 40, 64), ValueError, "multiples of 16"),
    (torch.full((3, 48, 64), 3.0), ValueError, r"\[-1, 1\]"),
    ("frame.png", TypeError, "numpy array"),
])
def test_bad_images_are_named(box_room_seq, image, err, match):
    eng = StreamingReconstructor(oracle_for(box_room_seq), size=64)
    with pytest.raises(err, match=match):
        eng.step(image, 0.0)
    assert eng.frames_processed == 0


def test_bad_options_and_timestamps(box_room_seq):
    net = oracle_for(box_room_seq)
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
        eng.step(box_room_seq.images[0], float("nan"))
