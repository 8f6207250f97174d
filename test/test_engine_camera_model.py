"""Lens distortion: CameraModel (CameraInfo's K, D, model) and the engine's undistortion before the network.

The box room is rendered through a known lens (each distorted pixel's ray from OpenCV's own inverse,
cv2.undistortPoints / cv2.fisheye.undistortPoints, checked by re-projecting it) and compared with OpenCV's own
undistortion (cv2.undistort / cv2.fisheye.undistortImage): the engine's input equals it, the room's edges are
straight lines after undistortion and curved before, the torch sampler (the one the CUDA graph captures) agrees
with cv2.remap, a rectified camera passes bit for bit, and an unknown model is refused.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from support.oracle import OracleNetwork
from ttt3r_ros.engine import StreamingReconstructor, geometry
from ttt3r_ros.engine.camera_model import CameraModel, UnknownDistortionModel, undistort_torch
from ttt3r_ros.engine.preprocess import plan_resize_crop, preprocess_pil, preprocess_torch
from ttt3r_ros.engine.synthetic import BoxRoom, pinhole
from ttt3r_ros.session.camera_calibration import camera_model_from_camera_info
from ttt3r_ros.session.focal_health import FocalHealth

H, W = 240, 320            # the engine runs at size=320: model size = input size, so colour IS the model input
K = pinhole(160.0, H, W)
LENSES = {
    "plumb_bob": [-0.25, 0.05, 0.001, -0.001, 0.0],
    "rational_polynomial": [-0.25, 0.05, 0.001, -0.001, 0.0, 0.02, 0.01, 0.0],
    "equidistant": [0.05, -0.02, 0.005, -0.001],
}
# one flat grey per wall (index 2*axis + positive side), so wall edges can be located to a fraction of a pixel
WALL_GREY = np.array([40, 80, 120, 160, 250, 220], np.float64)
LEFT, BACK, FLOOR = 40.0, 220.0, 160.0
SUPERSAMPLING = 3          # rays per pixel side: anti-aliased edges (a hard edge is only known to half a pixel)
_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 40, 1e-12)
ROOM = BoxRoom()
POSE = geometry.make_se3(np.eye(3), [0.05, -0.02, 0.0])


def _lens_rays(cm: CameraModel, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The rays (z = 1) seen at distorted pixels (u, v), from OpenCV's inverse of its own lens model."""
    pts = np.stack([u, v], -1).reshape(-1, 1, 2)
    if cm.distortion_model == "equidistant":
        n = cv2.fisheye.undistortPoints(pts, cm.k, cm.d.reshape(1, -1), criteria=_CRITERIA)
        back = cv2.fisheye.distortPoints(n, cm.k, cm.d.reshape(1, -1))
    else:
        n = cv2.undistortPoints(pts, cm.k, cm.d, None, None, None, _CRITERIA)
        rays = np.concatenate([n, np.ones_like(n[..., :1])], -1).reshape(-1, 3)
        back, _ = cv2.projectPoints(rays, np.zeros(3), np.zeros(3), cm.k, cm.d)
    assert np.abs(back.reshape(-1, 2) - pts.reshape(-1, 2)).max() < 1e-3, "the lens inverse did not converge (pixels)"
    return np.concatenate([n.reshape(*u.shape, 2), np.ones((*u.shape, 1))], -1)


def render_through_lens(cm: CameraModel) -> tuple[np.ndarray, np.ndarray]:
    """(textured rgb, wall-grey image) of the room as the distorted camera sees it, both uint8 H x W x 3."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rgb = ROOM.render_rays(_lens_rays(cm, u, v), POSE)[0]
    grey = np.zeros((H, W))
    for i in range(SUPERSAMPLING):
        for j in range(SUPERSAMPLING):
            du, dv = (j + 0.5) / SUPERSAMPLING - 0.5, (i + 0.5) / SUPERSAMPLING - 0.5
            grey += WALL_GREY[ROOM.render_rays(_lens_rays(cm, u + du, v + dv), POSE)[3]]
    grey = np.round(grey / SUPERSAMPLING ** 2)
    return rgb, np.repeat(grey[..., None], 3, axis=-1).astype(np.uint8)


def opencv_undistort(cm: CameraModel, image: np.ndarray) -> np.ndarray:
    if cm.distortion_model == "equidistant":
        return cv2.fisheye.undistortImage(image, cm.k, cm.d.reshape(1, -1), Knew=cm.new_camera_matrix)
    return cv2.undistort(image, cm.k, cm.d, None, cm.new_camera_matrix)


def edge_points(image: np.ndarray, grey_a: float, grey_b: float, along_columns: bool) -> np.ndarray:
    """Sub-pixel crossings of the mid grey where wall a meets wall b: per row (or per column), (index, position)."""
    x = image[..., 0].astype(np.float64)
    x = x.T if along_columns else x
    mid = 0.5 * (grey_a + grey_b)
    found = []
    for r, row in enumerate(x):
        cross = np.nonzero((row[:-1] - mid) * (row[1:] - mid) <= 0)[0]
        cand = [c for c in cross
                if 3 <= c < row.size - 4 and abs(row[c - 2] - grey_a) < 1 and abs(row[c + 3] - grey_b) < 1]
        if len(cand) == 1 and row[cand[0] + 1] != row[cand[0]]:
            c = cand[0]
            found.append((r, c + (mid - row[c]) / (row[c + 1] - row[c])))
    return np.array(found)


def line_residual_px(points: np.ndarray) -> float:
    """Largest distance (pixels, along the scan) of the points from their least-squares line."""
    a = np.stack([points[:, 0], np.ones(len(points))], 1)
    coef, *_ = np.linalg.lstsq(a, points[:, 1], rcond=None)
    return float(np.abs(a @ coef - points[:, 1]).max())


@pytest.fixture(scope="module", params=sorted(LENSES))
def lens(request):
    cm = CameraModel.create(K, LENSES[request.param], request.param, W, H)
    rgb, grey = render_through_lens(cm)
    return SimpleNamespace(model=cm, rgb=rgb, grey=grey)


def test_straight_walls_after_undistortion_curved_before(lens) -> None:
    """The room's edges are straight 3D lines: straight in the undistorted image, curved in the distorted one."""
    undistorted = lens.model.undistort(lens.grey)
    for grey_a, grey_b, along_columns in ((LEFT, BACK, False), (BACK, FLOOR, True)):
        before = edge_points(lens.grey, grey_a, grey_b, along_columns)
        after = edge_points(undistorted, grey_a, grey_b, along_columns)
        assert len(before) > 60 and len(after) > 60, (len(before), len(after))
        assert line_residual_px(before) > 2.5, "the test lens does not bend the edge: nothing is tested"
        assert line_residual_px(after) < 0.3, line_residual_px(after)


def test_engine_input_is_opencvs_undistortion_and_k_the_undistorted_camera(lens) -> None:
    """CPU engine: the model input (colour at model size = input size here) is OpenCV's undistorted image within
    one uint8 level; the frame's calibration is the undistorted camera's K; the depth's camera is the network's."""
    cm = lens.model
    expected = opencv_undistort(cm, lens.rgb)
    k_new = cm.new_camera_matrix
    # the stand-in network returns the exact room as a pinhole of another focal than the calibration's
    f_network = 1.15 * float(k_new[0, 0])
    k_network = pinhole(f_network, H, W)
    points = ROOM.render(k_network, H, W, POSE)[2]
    net = OracleNetwork(preprocess_pil(expected, 320).images, points[None], POSE[None])
    eng = StreamingReconstructor(net, size=320, preprocess_on_device=False)
    r = eng.step(lens.rgb, 0.0, camera_model=cm)
    assert r.model_size == (H, W)
    diff = np.abs(r.colour.astype(int) - expected.astype(int))
    assert diff.max() <= 1, diff.max()
    assert r.intrinsics_source == "calibrated"
    assert np.array_equal(r.intrinsics_input, k_new)
    assert np.allclose(r.intrinsics_model, geometry.intrinsics_input_to_model(k_new, plan_resize_crop(H, W, 320)))
    # the network's camera: back-projecting depth with it gives the points (what the node publishes)
    assert np.allclose(r.intrinsics_network, k_network, rtol=1e-4)
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    kn = r.intrinsics_network
    back = np.stack([(u - kn[0, 2]) / kn[0, 0], (v - kn[1, 2]) / kn[1, 1], np.ones_like(u)], -1) * r.depth[..., None]
    assert np.abs(back - r.points_camera).max() < 1e-3 * np.abs(r.points_camera).max()
    f_cal = 0.5 * (r.intrinsics_model[0, 0] + r.intrinsics_model[1, 1])
    assert r.focal_disagreement == pytest.approx(abs(f_network / f_cal - 1.0), rel=1e-4)
    with pytest.raises(ValueError, match="both intrinsics and a camera model"):
        eng.step(lens.rgb, 0.1, intrinsics=K, camera_model=cm)


def test_torch_sampler_matches_cv2_remap(lens) -> None:
    """grid_sample (exact bilinear weights) vs cv2.remap (5-bit weights): within a few levels on edges only."""
    cm = lens.model
    ref = cm.undistort(lens.rgb).astype(int)
    got = undistort_torch(torch.from_numpy(lens.rgb)[None], torch.from_numpy(cm.sampling_grid))[0].numpy()
    diff = np.abs(got.astype(int) - ref)
    print(f"{cm.distortion_model}: torch vs cv2.remap max {diff.max()}, >1 level on {(diff > 1).mean():.4%}, "
          f"mean {diff.mean():.3f}")
    assert diff.max() <= 4 and (diff > 1).mean() < 0.005 and diff.mean() < 0.2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU sampler is not run here")
def test_torch_sampler_on_cuda_matches_cpu(lens) -> None:
    grid = torch.from_numpy(lens.model.sampling_grid)
    cpu = undistort_torch(torch.from_numpy(lens.rgb)[None], grid)
    gpu = undistort_torch(torch.from_numpy(lens.rgb)[None].cuda(), grid.cuda()).cpu()
    assert (gpu.int() - cpu.int()).abs().max() <= 1


def _tiny_engine_graph_path(monkeypatch, vectors):
    """A CPU engine routed through the CUDA-graph step runner (test_engine_fast_path's stand-in GraphedStep)."""
    from test_engine_fast_path import _force_fast
    from ttt3r_ros.model import parity

    model = parity.build_parity_model(vectors, "cpu")
    return _force_fast(StreamingReconstructor(model, size=64, preprocess_on_device=True, build_map=False),
                       monkeypatch)


def test_graph_runner_undistorts_in_graph_and_updates_coefficients_in_place(parity_file, monkeypatch) -> None:
    """The raw uint8 route: undistortion runs in the captured step's prepare with the grid as a static buffer; new
    coefficients rewrite that buffer (same graph, no capture); a rectified camera uses the plain graph."""
    from ttt3r_ros.model import parity

    eng = _tiny_engine_graph_path(monkeypatch, parity.load_parity_vectors(parity_file))
    rng = np.random.default_rng(3)
    frame = cv2.GaussianBlur(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), (5, 5), 1.5)
    k = pinhole(70.0, 96, 128)
    runner = eng._batched._runner

    def expected(cm: CameraModel | None) -> np.ndarray:
        x = torch.from_numpy(frame)[None]
        if cm is not None:
            x = undistort_torch(x, torch.from_numpy(cm.sampling_grid))
        return preprocess_torch(x, 64).colour[0].numpy()

    first = CameraModel.create(k, LENSES["plumb_bob"], "plumb_bob", 128, 96)
    r1 = eng.step(frame, 0.0, camera_model=first)
    assert list(runner.graphs) == [(1, 96, 128, "uint8-undistort")]
    graph = runner.graphs[(1, 96, 128, "uint8-undistort")]
    assert np.array_equal(r1.colour, expected(first)) and not np.array_equal(r1.colour, expected(None))
    buffer = graph.undistortion.grid
    second = CameraModel.create(k, LENSES["rational_polynomial"], "rational_polynomial", 128, 96)
    r2 = eng.step(frame, 0.1, camera_model=second)
    assert runner.graphs[(1, 96, 128, "uint8-undistort")] is graph and graph.undistortion.grid is buffer
    assert np.array_equal(r2.colour, expected(second))
    assert np.array_equal(r2.intrinsics_input, second.new_camera_matrix)
    rectified = CameraModel.create(k, [0.0] * 5, "plumb_bob", 128, 96)
    r3 = eng.step(frame, 0.2, camera_model=rectified)
    assert (1, 96, 128, "uint8") in runner.graphs
    assert np.array_equal(r3.colour, expected(None)) and np.array_equal(r3.intrinsics_input, k)


def test_rectified_camera_passes_bit_identical() -> None:
    """D all zero or empty (any model name, as drivers publish it): unchanged frame, K itself, no maps built."""
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    for d, name in (([0.0] * 5, "plumb_bob"), ([], ""), ([0.0] * 8, "rational_polynomial"), ([0.0] * 4, "none")):
        cm = CameraModel.create(K, d, name, W, H)
        assert cm.is_rectified and cm.undistort(frame) is frame
        assert np.array_equal(cm.new_camera_matrix, K)
        with pytest.raises(ValueError, match="rectified"):
            cm.undistort_maps
    seq_points = ROOM.render(K, H, W, POSE)[2]
    net = OracleNetwork(preprocess_pil(frame, 320).images, seq_points[None], POSE[None])
    plain = StreamingReconstructor(net, size=320).step(frame, 0.0, intrinsics=K)
    with_model = StreamingReconstructor(net, size=320).step(frame, 0.0, camera_model=CameraModel.create(
        K, [0.0] * 5, "plumb_bob", W, H))
    assert np.array_equal(with_model.colour, plain.colour) and np.array_equal(with_model.colour, frame)
    assert np.array_equal(with_model.intrinsics_input, K)


def _camera_info(d, model: str, k=K, width: int = W, height: int = H) -> SimpleNamespace:
    return SimpleNamespace(k=np.asarray(k, float).ravel().tolist(), d=list(d), distortion_model=model, width=width,
                           height=height, r=[1.0, 0, 0, 0, 1, 0, 0, 0, 1], p=[0.0] * 12)


def test_each_model_from_camera_info_and_unknown_refused() -> None:
    for name, d in LENSES.items():
        cm, reason = camera_model_from_camera_info(_camera_info(d, name))
        assert reason == "" and cm.distortion_model == name and not cm.is_rectified
        assert cm.undistort_maps[0].shape == (H, W) and cm.sampling_grid.shape == (H, W, 2)
        assert cm == CameraModel.create(K, d, name, W, H)  # equal models share maps in the engine
    with pytest.raises(UnknownDistortionModel, match="unknown distortion model 'kannala_brandt'.*plumb_bob"):
        CameraModel.create(K, [0.1, 0.0, 0.0, 0.0], "kannala_brandt", W, H)
    cm, reason = camera_model_from_camera_info(_camera_info([0.1, 0.0, 0.0, 0.0], "kannala_brandt"))
    assert cm is None and "unknown distortion model" in reason
    cm, reason = camera_model_from_camera_info(_camera_info([0.1, 0.0, 0.0], "plumb_bob"))
    assert cm is None and "takes 4 or 5 coefficients" in reason
    cm, reason = camera_model_from_camera_info(_camera_info([math.nan] * 5, "plumb_bob"))
    assert cm is None and "non-finite" in reason
    cm, reason = camera_model_from_camera_info(_camera_info([0.0] * 5, "plumb_bob", k=np.zeros((3, 3))))
    assert cm is None and reason.startswith("uncalibrated")
    with pytest.raises(ValueError, match="does not match the camera model"):
        CameraModel.create(K, LENSES["plumb_bob"], "plumb_bob", W, H).check_frame((H, W + 2, 3))


def test_focal_health_is_computed_every_period_or_when_free() -> None:
    calls = []

    class Result:
        intrinsics_source = "calibrated"

        def __init__(self, computed: bool) -> None:
            self.intrinsics_network_computed = computed

        @property
        def focal_disagreement(self) -> float:
            calls.append(1)
            return 0.25

    health = FocalHealth(period_frames=5)
    assert math.isnan(health.value)
    assert health.update(Result(False)) == 0.25 and len(calls) == 1           # the first calibrated frame
    for _ in range(3):
        health.update(Result(False))
    assert len(calls) == 1                                                   # not due, not free
    health.update(Result(True))
    assert len(calls) == 2                                                   # free: computed anyway
    health.update(Result(False), network_focal_needed=True)
    assert len(calls) == 3                                                   # needed anyway (depth subscribed)
    for _ in range(4):
        health.update(Result(False))
    assert len(calls) == 3
    health.update(Result(False))
    assert len(calls) == 4                                                   # due after a period
    estimated = Result(False)
    estimated.intrinsics_source = "estimated"
    assert math.isnan(health.update(estimated))
