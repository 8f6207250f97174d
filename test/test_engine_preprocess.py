"""Preprocessing: the reference's load_images(size=512) geometry and pixels, and the batched tensor path."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ttt3r_ros.engine import geometry
from ttt3r_ros.engine.preprocess import (plan_resize_crop, preprocess, preprocess_pil, preprocess_torch,
                                         pil_resample_matrix)

# (input W, H) -> model (W, H), SPEC §7 and the issue
SIZE_EXAMPLES = [((1920, 1080), (512, 288)), ((1280, 720), (512, 288)), ((848, 480), (512, 288)),
                 ((640, 480), (512, 384)), ((1024, 768), (512, 384)), ((2048, 1536), (512, 384)),
                 ((1000, 1000), (512, 384)), ((320, 240), (512, 384)), ((752, 480), (512, 320)),
                 ((1280, 1024), (512, 400)), ((720, 1280), (288, 512))]


def _test_image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = 127 + 100 * np.sin(xx / 9.0 + seed)[..., None] * np.cos(yy / 6.0)[..., None] * np.array([1, 0.6, -0.8])
    return np.clip(smooth + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("input_wh,model_wh", SIZE_EXAMPLES)
def test_size_examples(input_wh, model_wh):
    w, h = input_wh
    rc = plan_resize_crop(h, w, 512)
    assert (rc.model_w, rc.model_h) == model_wh
    assert rc.model_w % 16 == 0 and rc.model_h % 16 == 0
    out = preprocess_pil(np.zeros((h, w, 3), np.uint8))
    assert tuple(out.images.shape) == (1, 3, model_wh[1], model_wh[0])
    assert out.images.dtype == torch.float32


def test_crop_offsets_follow_reference_formulas():
    # 752x480 -> 512x327 (round(326.8)), cy = 163, half-height 160: box rows 3..323 (off-centre by one: odd height)
    rc = plan_resize_crop(480, 752)
    assert (rc.resized_w, rc.resized_h, rc.x0, rc.y0) == (512, 327, 0, 3)
    # 1280x1024 -> 512x410 (409.6 rounds up), rows 5..405
    rc = plan_resize_crop(1024, 1280)
    assert (rc.resized_h, rc.y0, rc.model_h) == (410, 5, 400)
    # square: half-height = 3/4 half-width -> 512x384 centred at 256
    rc = plan_resize_crop(1000, 1000)
    assert (rc.resized_w, rc.resized_h, rc.x0, rc.y0, rc.model_h) == (512, 512, 0, 64, 384)
    # Python's round() is half-to-even, as the reference: 1000x500*512/1000 -> 256 exactly; 1024x618 -> 309.0
    rc = plan_resize_crop(618, 1024)
    assert rc.resized_h == 309


@pytest.mark.parametrize("input_wh", [(640, 480), (752, 480), (1000, 1000), (320, 240), (1281, 721), (200, 500)])
def test_pixels_equal_pil_reference_path(input_wh):
    """The reference path by hand (PIL resize with the reference's filter, crop, /255, (x-0.5)/0.5)."""
    w, h = input_wh
    img = _test_image(h, w, 1)
    pil = Image.fromarray(img)
    s = max(w, h)
    new = tuple(int(round(x * 512 / s)) for x in (w, h))
    pil = pil.resize(new, Image.LANCZOS if s > 512 else Image.BICUBIC)
    rc = plan_resize_crop(h, w)
    pil = pil.crop((rc.x0, rc.y0, rc.x0 + rc.model_w, rc.y0 + rc.model_h))
    expected = (torch.from_numpy(np.array(pil)).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    got = preprocess_pil(img)
    assert torch.equal(got.images[0], expected)
    assert np.array_equal(got.colour[0].numpy(), np.asarray(pil))


@pytest.mark.parametrize("input_wh", [(1920, 1080), (640, 480), (752, 480), (1280, 1024), (720, 1280), (1000, 1000),
                                      (320, 240), (513, 301), (512, 384)])
def test_tensor_path_exact_is_bit_identical_to_pil(input_wh):
    w, h = input_wh
    imgs = np.stack([_test_image(h, w, 2), _test_image(h, w, 3)])
    ref = [preprocess_pil(im) for im in imgs]
    got = preprocess_torch(torch.from_numpy(imgs), precision="exact")
    assert got.transform == ref[0].transform
    for b in range(2):
        assert torch.equal(got.colour[b], ref[b].colour[0]), f"batch element {b} differs"
        assert torch.equal(got.images[b], ref[b].images[0])


def test_tensor_path_fast_is_within_one_level_and_reports_by_how_much():
    worst, fraction = 0, 0.0
    for (w, h) in [(1920, 1080), (640, 480), (752, 480), (1000, 1000)]:
        img = _test_image(h, w, 4)
        ref = preprocess_pil(img).colour.int()
        fast = preprocess_torch(torch.from_numpy(img), precision="fast").colour.int()
        diff = (ref - fast).abs()
        worst = max(worst, int(diff.max()))
        fraction = max(fraction, float((diff > 0).float().mean()))
    print(f"\nfast float32 preprocessing vs PIL: max {worst} uint8 level(s), on at most {fraction:.2e} of values")
    assert worst <= 1
    assert fraction < 1e-3


def test_resample_matrix_rows_sum_to_one():
    for down in (True, False):
        m = pil_resample_matrix(640, 512, down, quantised=False)
        assert np.allclose(m.sum(axis=1), 1.0)


def test_preprocess_dispatch_numpy_and_tensor_agree():
    img = _test_image(480, 640, 5)
    a = preprocess(img)
    b = preprocess(torch.from_numpy(img))
    assert torch.equal(a.images, b.images)


def test_intrinsics_map_both_ways_and_match_resampling_geometry():
    rc = plan_resize_crop(1024, 1280)
    k = np.array([[900.0, 0.0, 641.3], [0.0, 905.0, 500.2], [0.0, 0.0, 1.0]])
    km = geometry.intrinsics_input_to_model(k, rc)
    assert np.allclose(geometry.intrinsics_model_to_input(km, rc), k)
    assert km[0, 0] == pytest.approx(900 * 512 / 1280)
    assert km[1, 1] == pytest.approx(905 * 410 / 1024)
    # pixel-centre convention: the input image's centre point maps to the resized image's centre (minus the crop)
    assert km[0, 2] == pytest.approx((1279 / 2 + 0.5) * 0.4 - 0.5 + (641.3 - 1279 / 2) * 0.4)
    # a smooth blob resampled by PIL keeps its centroid where the mapping says (resampling is linear)
    yy, xx = np.mgrid[0:1024, 0:1280]
    blob = 20 + 200 * np.exp(-((xx - 301.3) ** 2 + (yy - 601.7) ** 2) / (2 * 8.0 ** 2))
    img = np.repeat(np.round(blob)[..., None], 3, axis=2).astype(np.uint8)
    out = preprocess_pil(img).colour[0, :, :, 0].numpy().astype(float) - 20
    ys, xs = np.mgrid[0:out.shape[0], 0:out.shape[1]]
    cx, cy = (out * xs).sum() / out.sum(), (out * ys).sum() / out.sum()
    assert cx == pytest.approx((301.3 + 0.5) * rc.scale_x - 0.5 - rc.x0, abs=0.02)
    assert cy == pytest.approx((601.7 + 0.5) * rc.scale_y - 0.5 - rc.y0, abs=0.02)
    # the same with the crop offset: a square image (rows 64.. kept)
    rc2 = plan_resize_crop(1000, 1000)
    yy, xx = np.mgrid[0:1000, 0:1000]
    blob = 20 + 200 * np.exp(-((xx - 400.0) ** 2 + (yy - 520.0) ** 2) / (2 * 8.0 ** 2))
    img = np.repeat(np.round(blob)[..., None], 3, axis=2).astype(np.uint8)
    out = preprocess_pil(img).colour[0, :, :, 0].numpy().astype(float) - 20
    ys, xs = np.mgrid[0:out.shape[0], 0:out.shape[1]]
    k2 = geometry.intrinsics_input_to_model(np.array([[1.0, 0, 400.0], [0, 1.0, 520.0], [0, 0, 1]]), rc2)
    assert (out * xs).sum() / out.sum() == pytest.approx(k2[0, 2], abs=0.02)
    assert (out * ys).sum() / out.sum() == pytest.approx(k2[1, 2], abs=0.02)


@pytest.mark.parametrize("bad,err,match", [
    (np.zeros((48, 64, 3), np.float32), TypeError, "uint8"),
    (np.zeros((48, 64), np.uint8), ValueError, "HxWx3"),
    (np.zeros((48, 64, 4), np.uint8), ValueError, "HxWx3"),
    (np.zeros((0, 64, 3), np.uint8), ValueError, "empty"),
    (np.zeros((512, 8, 3), np.uint8), ValueError, "16 pixels"),
    ([[1, 2, 3]], TypeError, "numpy array or torch tensor"),
])
def test_bad_input_named(bad, err, match):
    with pytest.raises(err, match=match):
        preprocess(bad)
