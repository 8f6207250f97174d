"""The real TTT3R model (tiny parity config, stored weights) through the engine, against the reference's runs.

The parity file's frames (`input/frames`, already normalised to [-1,1]) go through `StreamingReconstructor.step` as
pre-normalised float tensors. The engine's chained poses must equal the reference demo's `demo_c2w_chained` (run
`ttt3r_reset`, reset interval from the file) and the plain runs' `c2w`, within the tolerances stored in the file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ttt3r_ros.engine import BatchedReconstructor, StreamingReconstructor, geometry
from ttt3r_ros.model import parity


@pytest.fixture(scope="module")
def vectors(parity_file):
    return parity.load_parity_vectors(parity_file)


@pytest.fixture(scope="module")
def model(vectors):
    return parity.build_parity_model(vectors, "cpu")


def _check(name: str, got: np.ndarray, ref: np.ndarray, vectors) -> float:
    atol, rtol = vectors.tolerance(name)
    bound = atol + rtol * np.abs(ref)
    ratio = float(np.max(np.abs(got - ref) / np.maximum(bound, 1e-300)))
    assert np.all(np.abs(got - ref) <= bound), f"{name}: worst {ratio:.3g} x tolerance"
    return ratio


def _frames(vectors, run: str) -> list[torch.Tensor]:
    frames = vectors.tensors["input/frames"]
    kept_index = vectors.tensors[f"{run}/view_frame_index"].tolist()
    # the frames in input order (the run's view list minus the demo's overlap copies)
    order = sorted(set(kept_index))
    return [frames[i] for i in order]


@pytest.mark.parametrize("run", ["ttt3r", "cut3r", "ttt3r_reset"])
def test_engine_with_tiny_model_matches_reference_run(vectors, model, run):
    if run not in vectors.runs:
        pytest.skip(f"{vectors.path} has no run {run}")
    spec = vectors.meta["runs"][run]
    eng = StreamingReconstructor(model, update_rule=spec["model_update_type"],
                                 reset_interval=spec.get("reset_interval"), confidence_threshold=1.0)
    frames = _frames(vectors, run)
    results = [eng.step(f, 0.1 * i) for i, f in enumerate(frames)]
    traj = np.stack([p for _, p in eng.trajectory_model])
    t = vectors.tensors
    if f"{run}/demo_c2w_chained" in t:
        kept = t[f"{run}/demo_kept_views"].numpy()
        ratio = _check("demo_c2w_chained", traj, t[f"{run}/demo_c2w_chained"].double().numpy(), vectors)
        flags = t[f"{run}/reset_flag"].numpy().astype(bool)
        assert [r.was_reset for r in results] == [k == 0 or bool(flags[k]) for k in kept]
    else:
        kept = np.arange(len(frames))
        ratio = _check("c2w", traj, t[f"{run}/c2w"].double().numpy(), vectors)
    print(f"\n{run}: engine chained poses within tolerance (worst {ratio:.3g} x)")
    # first frame is the identity; the rest relative to it
    rel = np.stack([p for _, p in eng.trajectory])
    assert np.allclose(rel[0], np.eye(4), atol=1e-12)
    assert np.allclose(rel, np.linalg.inv(traj[0]) @ traj, atol=1e-9)
    pts_ref = t[f"{run}/pts3d_in_self_view"].numpy()[kept]
    conf_ref = t[f"{run}/conf_self"].numpy()[kept]
    depth = np.stack([r.depth for r in results])
    _check("pts3d_in_self_view", depth, pts_ref[..., 2], vectors)
    _check("conf_self", np.stack([r.confidence for r in results]), conf_ref, vectors)
    rate = t[f"{run}/update_rate"].numpy()[kept]
    assert np.allclose([r.gate_mean for r in results], rate.mean(axis=1), atol=vectors.tolerance("update_rate")[0])
    # focal: the engine's estimate on its own point map vs the reference estimator on the stored one
    h, w = pts_ref.shape[1:3]
    f_ref = geometry.estimate_focal_weiszfeld(torch.from_numpy(pts_ref), geometry.reference_principal_point(h, w))
    f_got = np.array([r.focal_model for r in results])
    # (random point maps make this fit ill-conditioned, README: near-zero focals move by ~1e-5 absolute)
    assert np.allclose(f_got, f_ref.numpy(), rtol=1e-3, atol=1e-3), (f_got, f_ref)
    # the map holds world points of this run
    assert len(eng.voxel_map) > 0


def test_batched_engine_with_tiny_model_equals_reference(vectors, model):
    run = "ttt3r_reset"
    if run not in vectors.runs:
        pytest.skip(f"{vectors.path} has no run {run}")
    spec = vectors.meta["runs"][run]
    frames = _frames(vectors, run)
    eng = BatchedReconstructor(model, 2, update_rule=spec["model_update_type"], reset_interval=spec["reset_interval"],
                               build_map=False)
    # stream 1 starts one frame later, so the two streams hit their reset frames at different calls
    eng.step_batch([frames[0]], [0.0], streams=[0])
    for i in range(1, len(frames)):
        eng.step_batch([frames[i], frames[i - 1]], [0.1 * i, 0.1 * (i - 1)])
    eng.step_batch([frames[-1]], [0.1 * len(frames)], streams=[1])
    ref = vectors.tensors[f"{run}/demo_c2w_chained"].double().numpy()
    for s in range(2):
        traj = np.stack([p for _, p in eng.trajectory_model_of(s)])
        _check("demo_c2w_chained", traj, ref, vectors)


@pytest.mark.gpu
def test_engine_on_cuda_matches_reference_and_pil(vectors):
    """On a GPU: the engine with the tiny model (float32, TF32 off) still chains to demo_c2w_chained, and the
    on-device uint8 preprocessing is bit-identical to the PIL path."""
    if not torch.cuda.is_available():
        reason = "no CUDA device: engine GPU path not run here"
        print(reason)
        pytest.skip(reason)
    from ttt3r_ros.engine.preprocess import preprocess_pil, preprocess_torch
    previous = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        model = parity.build_parity_model(vectors, "cuda")
        run = "ttt3r_reset"
        spec = vectors.meta["runs"][run]
        eng = StreamingReconstructor(model, update_rule=spec["model_update_type"],
                                     reset_interval=spec["reset_interval"])
        results = [eng.step(f.cuda(), 0.1 * i) for i, f in enumerate(_frames(vectors, run))]
        assert results[0].tensor("depth").is_cuda
        traj = np.stack([p for _, p in eng.trajectory_model])
        _check("demo_c2w_chained", traj, vectors.tensors[f"{run}/demo_c2w_chained"].double().numpy(), vectors)
        rng = np.random.default_rng(0)
        img = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
        gpu = preprocess_torch(torch.from_numpy(img).cuda())
        assert torch.equal(gpu.colour.cpu(), preprocess_pil(img).colour)
        # uint8 numpy frames through the engine on CUDA (on-device preprocessing by default)
        eng2 = StreamingReconstructor(model, size=64)
        r = eng2.step(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), 0.0)
        assert r.model_size == (48, 64) and np.isfinite(r.camera_to_world).all()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous
