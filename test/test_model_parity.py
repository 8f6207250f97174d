"""Parity of TTT3RModel with the reference's recorded runs (float32, TF32 off).

The vector file is found by test/reference_data.py ($TTT3R_PARITY_FILE, else ../shared/reference). The first test runs
on $TTT3R_TEST_DEVICE (default cpu; e.g. cuda for the GPU parity run); the second on cuda whenever one exists. The model config,
the runs and the per-name tolerances are read from the file itself: nothing about its sizes is assumed here.
Every stored per-run tensor is checked, except `demo_c2w_chained` / `demo_kept_views` (demo-style chunk chaining:
the engine's job, tested in test/test_engine_*.py) and the `focal_check/*` group (the focal estimator, also the
engine's). Any other stored name that the model step cannot produce fails the test.
"""
from __future__ import annotations

import os

import pytest
import torch

import reference_data
from ttt3r_ros.model import parity



def check_parity(device: str, capsys: pytest.CaptureFixture[str]) -> None:
    vectors = parity.load_parity_vectors(reference_data.parity_file())
    assert vectors.runs, f"{vectors.path} holds no runs"
    previous = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        model = parity.build_parity_model(vectors, device)  # strict=True load of the model/ weights
        results = []
        for run in vectors.runs:
            produced = parity.replay_run(model, vectors, run)
            # demo_c2w_chained / demo_kept_views: engine workstream (see test/test_engine_*.py); every other
            # stored name must be produced and within its stored tolerance.
            run_results = parity.compare_run(vectors, run, produced, skip=parity.ENGINE_NAMES)
            checked = {r.name for r in run_results}
            expected = set(vectors.run_names(run)) - set(parity.ENGINE_NAMES)
            assert checked == expected, f"{run}: unchecked names {sorted(expected - checked)}"
            results.extend(run_results)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous
    with capsys.disabled():  # the per-name worst ratios always reach the log (CI), pass or fail
        print(f"\nparity on {device} against {vectors.path}:")
        print(parity.format_results(results))
    failed = [f"{r.run}/{r.name} ratio {r.worst_ratio:.3g}" for r in results if not r.passed]
    assert not failed, "outside tolerance: " + ", ".join(failed)


def test_parity_float32(capsys: pytest.CaptureFixture[str]) -> None:
    check_parity(os.environ.get("TTT3R_TEST_DEVICE", "cpu"), capsys)


@pytest.mark.gpu
def test_parity_cuda_float32(capsys: pytest.CaptureFixture[str]) -> None:
    reason = None
    if not torch.cuda.is_available():
        reason = "no CUDA device: GPU parity (float32, TF32 off) not run here"
    elif os.environ.get("TTT3R_TEST_DEVICE", "cpu").startswith("cuda"):
        reason = "GPU parity already run by test_parity_float32 (TTT3R_TEST_DEVICE)"
    if reason is not None:
        with capsys.disabled():
            print(f"\n{reason}")
        pytest.skip(reason)
    check_parity("cuda", capsys)
