"""Frame conventions, the reference focal estimator (focal_check) and the demo's chunk chaining (demo_c2w_chained)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from support import geometry as support_geometry
from ttt3r_ros.engine import geometry
from ttt3r_ros.engine.synthetic import _rot_xyz


def load_vectors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["json"])
        tensors = {k: f.get_tensor(k) for k in f.keys() if not k.startswith("model/")}
    return tensors, meta


def within(x, ref, tol) -> tuple[bool, float]:
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    bound = tol["atol"] + tol["rtol"] * np.abs(ref)
    err = np.abs(x - ref)
    return bool(np.all(err <= bound)), float(np.max(err / np.maximum(bound, 1e-300)))


# ------------------------------------------------------------------------------------------------ quaternions
def test_quaternion_orders_and_matrix_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(50):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        q *= np.sign(q[0])
        r = geometry.quat_wxyz_to_matrix(q)
        assert np.allclose(r @ r.T, np.eye(3), atol=1e-12) and np.linalg.det(r) == pytest.approx(1.0)
        assert np.allclose(geometry.matrix_to_quat_wxyz(r), q, atol=1e-12)
        xyzw = geometry.quat_wxyz_to_xyzw(q)
        assert np.allclose(xyzw, [q[1], q[2], q[3], q[0]])
        assert np.allclose(geometry.quat_xyzw_to_wxyz(xyzw), q)
    # 180 degree turns (trace = -1) stay accurate
    for r in (np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1])):
        assert np.allclose(geometry.quat_wxyz_to_matrix(geometry.matrix_to_quat_wxyz(r)), r, atol=1e-12)
    # a 90 degree turn about z: (w, x, y, z) = (cos 45, 0, 0, sin 45)
    rz = _rot_xyz(0, 0, np.pi / 2)
    assert np.allclose(geometry.matrix_to_quat_wxyz(rz), [np.sqrt(0.5), 0, 0, np.sqrt(0.5)])
    assert np.allclose(geometry.matrix_to_quat_xyzw(rz), [0, 0, np.sqrt(0.5), np.sqrt(0.5)])


def test_pose7_matches_parity_c2w(parity_file):
    tensors, meta = load_vectors(parity_file)
    pose7 = tensors["ttt3r/camera_pose"].double().numpy()
    c2w = tensors["ttt3r/c2w"].double().numpy()
    assert np.allclose(support_geometry.pose7_wxyz_to_matrix(pose7), c2w, atol=1e-6)


# -------------------------------------------------------------------------------------------------- axes
def test_optical_to_body_axes_rep103():
    # optical z (forward) is body x, optical x (right) is body -y, optical y (down) is body -z
    assert np.allclose(support_geometry.optical_points_to_body(np.array([0.0, 0, 1])), [1, 0, 0])
    assert np.allclose(support_geometry.optical_points_to_body(np.array([1.0, 0, 0])), [0, -1, 0])
    assert np.allclose(support_geometry.optical_points_to_body(np.array([0.0, 1, 0])), [0, 0, -1])
    # camera moving 1 m forward (optical +z) is the body moving 1 m along x
    fwd = np.eye(4)
    fwd[2, 3] = 1.0
    assert np.allclose(support_geometry.optical_to_body(fwd)[:3, 3], [1, 0, 0])
    # camera panning right (yaw about optical -y... i.e. a rotation about optical y by +a turns z toward x = right)
    a = 0.3
    pan = np.eye(4)
    pan[:3, :3] = _rot_xyz(0, a, 0)
    body = support_geometry.optical_to_body(pan)
    # turning right is a negative yaw about body z (z up)
    assert np.allclose(body[:3, :3], _rot_xyz(0, 0, -a), atol=1e-12)
    assert np.allclose(support_geometry.body_to_optical(body), pan, atol=1e-12)


def test_odom_from_camera_starts_at_identity_and_is_a_conjugation():
    rng = np.random.default_rng(1)
    t_base_cam = geometry.make_se3(geometry.R_BODY_FROM_OPTICAL @ _rot_xyz(0.1, -0.2, 0.05), rng.normal(size=3))
    assert np.allclose(geometry.odom_from_camera(t_base_cam, np.eye(4)), np.eye(4))
    cam_motion = geometry.make_se3(_rot_xyz(0.1, 0.4, -0.2), [0.3, -0.1, 1.2])
    odom = geometry.odom_from_camera(t_base_cam, cam_motion)
    # the base moved so that T_odom_base @ T_base_cam = T_base_cam @ T_cam0_camt (camera rigidly mounted)
    assert np.allclose(odom @ t_base_cam, t_base_cam @ cam_motion)
    assert np.allclose(odom, t_base_cam @ cam_motion @ np.linalg.inv(t_base_cam))


def test_se3_inverse():
    t = geometry.make_se3(_rot_xyz(0.3, -0.5, 1.1), [1.0, 2.0, -3.0])
    assert np.allclose(geometry.invert_se3(t) @ t, np.eye(4))


# ------------------------------------------------------------------------------------------- focal_check
def test_focal_estimator_matches_reference_focal_check(parity_file):
    tensors, meta = load_vectors(parity_file)
    pts = tensors["focal_check/pts3d"]
    ref = tensors["focal_check/focal_weiszfeld"]
    tol = meta["tolerances"]["focal_check/focal_weiszfeld"]
    _, h, w, _ = pts.shape
    pp = geometry.reference_principal_point(h, w)
    got = geometry.estimate_focal_weiszfeld(pts, pp)
    ok, ratio = within(got.numpy(), ref.numpy(), tol)
    true = tensors["focal_check/focal_true"].tolist()
    print(f"\nfocal_check: got {got.tolist()} reference {ref.tolist()} (true {true}), worst ratio {ratio:.3g}")
    assert ok, f"focal estimate {got.tolist()} vs reference {ref.tolist()} outside {tol}"
    # one at a time too (the node calls it per frame)
    for i in range(pts.shape[0]):
        one = geometry.estimate_focal_weiszfeld(pts[i], pp)
        assert one.dim() == 0 and within(float(one), float(ref[i]), tol)[0]


def test_focal_estimator_recovers_exact_pinhole_focal_and_handles_inf():
    h, w, f = 48, 64, 52.0
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    z = 1.0 + 0.5 * np.sin(u / 7.0) ** 2
    pts = np.stack([(u - w // 2) / f * z, (v - h // 2) / f * z, z], axis=-1)
    pts[0, 0, 2] = 0.0  # x/z = ±inf -> ignored like the reference
    got = float(geometry.estimate_focal_weiszfeld(torch.as_tensor(pts), (w // 2, h // 2)))
    assert got == pytest.approx(f, rel=1e-6)


def _weiszfeld_transcription(pts, pp, iterations=10):
    """The reference's focal estimator written plainly (as dust3r has it): the optimised one must equal it bit for
    bit. Pure torch, kept here so the engine's buffer reuse / plane sums / grid cache are checked against it."""
    pts = pts.unsqueeze(0) if pts.dim() == 3 else pts
    b, h, w, _ = pts.shape
    pp = torch.as_tensor(pp, dtype=pts.dtype).reshape(-1, 2).expand(b, 2)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pixels = torch.stack([xs, ys], dim=-1).to(pts.dtype).view(1, -1, 2) - pp.view(-1, 1, 2)
    flat = pts.flatten(1, 2)
    xy = (flat[..., :2] / flat[..., 2:3]).nan_to_num(posinf=0.0, neginf=0.0)
    dot_xy_px = (xy * pixels).sum(dim=-1)
    dot_xy_xy = xy.square().sum(dim=-1)
    focal = dot_xy_px.mean(dim=1) / dot_xy_xy.mean(dim=1)
    for _ in range(iterations):
        dis = (pixels - focal.view(-1, 1, 1) * xy).norm(dim=-1)
        weight = dis.clip(min=1e-8).reciprocal()
        focal = (weight * dot_xy_px).mean(dim=1) / (weight * dot_xy_xy).mean(dim=1)
    return focal.clip(min=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_focal_estimator_is_bit_identical_to_the_plain_transcription(parity_file, dtype):
    tensors, _ = load_vectors(parity_file)
    g = torch.Generator().manual_seed(3)
    cases = [tensors["focal_check/pts3d"].to(dtype)]
    for h, w in [(48, 64), (37, 51), (96, 128)]:
        pts = torch.randn(2, h, w, 3, generator=g, dtype=dtype)
        pts[..., 2] = pts[..., 2].abs() + 0.05
        pts[0, 0, 0, 2] = 0.0                 # x/z = inf -> 0
        pts[1, 3, 4] = float("nan")           # NaN -> 0
        cases.append(pts)
    for pts in cases:
        h, w = pts.shape[1:3]
        for pp in [geometry.reference_principal_point(h, w), (w / 2 - 0.25, h / 2 + 0.5)]:
            for _ in range(2):  # the second call reuses the cached pixel grid
                got = geometry.estimate_focal_weiszfeld(pts, pp)
                assert torch.equal(got, _weiszfeld_transcription(pts, pp)), (got, _weiszfeld_transcription(pts, pp))
            assert torch.equal(geometry.estimate_focal_weiszfeld(pts[1], pp), _weiszfeld_transcription(pts[1], pp)[0])


def test_focal_pixel_stride_is_an_approximation_on_true_pixel_coordinates():
    h, w, f = 96, 128, 110.0
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    z = 1.0 + 0.5 * np.sin(u / 9.0) ** 2 + 0.2 * np.cos(v / 5.0)
    pts = torch.as_tensor(np.stack([(u - w // 2) / f * z, (v - h // 2) / f * z, z], axis=-1))
    noisy = pts.clone()
    noisy[..., :2] *= 1 + 0.01 * torch.sin(torch.arange(h * w, dtype=torch.float64).view(h, w, 1))
    pp = (w // 2, h // 2)
    for k in (2, 3, 4):  # exact pinhole: every subsample recovers f (coordinates of the kept pixels are right)
        assert float(geometry.estimate_focal_weiszfeld(pts, pp, pixel_stride=k)) == pytest.approx(f, rel=1e-9)
    exact = float(geometry.estimate_focal_weiszfeld(noisy, pp))
    approx = float(geometry.estimate_focal_weiszfeld(noisy, pp, pixel_stride=2))
    assert approx != exact and approx == pytest.approx(exact, rel=1e-3)
    with pytest.raises(ValueError, match="pixel_stride"):
        geometry.estimate_focal_weiszfeld(pts, pp, pixel_stride=0)


# ------------------------------------------------------------------------------------------ demo chaining
def test_demo_chaining_matches_stored_demo_c2w_chained(parity_file):
    tensors, meta = load_vectors(parity_file)
    c2w = tensors["ttt3r_reset/c2w"].double().numpy()
    flags = tensors["ttt3r_reset/reset_flag"].numpy()
    kept, chained = support_geometry.chain_demo_poses(c2w, flags)
    assert np.array_equal(kept, tensors["ttt3r_reset/demo_kept_views"].numpy())
    ok, ratio = within(chained, tensors["ttt3r_reset/demo_c2w_chained"].numpy(), meta["tolerances"]["demo_c2w_chained"])
    assert ok, f"chained poses off by {ratio:.3g} x tolerance"
    # and it is not trivially the unchained poses (the file has a reset)
    assert flags.any()
    assert not np.allclose(chained, c2w[kept], atol=1e-3)
