"""Replays the reference's parity vector files (e.g. parity_tiny.safetensors) through TTT3RModel and compares.

A vector file holds `model/<key>` weights, `input/frames`, per-run tensors `<run>/<name>` and, in its metadata
`json` entry, the model config (`config`, `dpt_widths`), the runs (`runs.<run>.model_update_type`) and per-name
tolerances (`|x - ref| <= atol + rtol*|ref|`). Nothing about a particular file is assumed here.

    python -m ttt3r_ros.model.parity [FILE] [--device cuda]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Iterable, Optional

import torch

from .config import config_from_dict
from .network import TTT3RModel

__all__ = ["ParityVectors", "NameResult", "load_parity_vectors", "build_parity_model", "replay_run",
           "compare_run", "RUN_INPUT_NAMES", "ENGINE_NAMES", "STEP_OUTPUT_NAMES"]

# Per-run tensors that describe the run's inputs (fed to the model, compared for exactness against themselves).
RUN_INPUT_NAMES = ("view_frame_index", "reset_flag")
# Produced by the engine (demo-style pose chaining, kept views), tested in test/test_engine_*.py.
ENGINE_NAMES = ("demo_c2w_chained", "demo_kept_views")
STEP_OUTPUT_NAMES = ("pts3d_in_self_view", "conf_self", "pts3d_in_other_view", "conf", "rgb", "camera_pose", "c2w",
                     "gate_logit", "gate", "update_rate")
# Groups that are not runs.
NON_RUN_GROUPS = ("model", "input", "focal_check")


@dataclasses.dataclass
class ParityVectors:
    path: Path
    meta: dict
    tensors: dict[str, torch.Tensor]

    @property
    def runs(self) -> list[str]:
        groups = {key.split("/", 1)[0] for key in self.tensors if "/" in key}
        return sorted(g for g in groups if g not in NON_RUN_GROUPS)

    def run_names(self, run: str) -> list[str]:
        prefix = run + "/"
        return sorted(key[len(prefix):] for key in self.tensors if key.startswith(prefix))

    def weights(self) -> dict[str, torch.Tensor]:
        return {key[len("model/"):]: value for key, value in self.tensors.items() if key.startswith("model/")}

    def tolerance(self, name: str) -> tuple[float, float]:
        tolerances = self.meta.get("tolerances", {})
        if name not in tolerances:
            raise KeyError(f"{self.path}: no tolerance stored for {name!r}")
        return float(tolerances[name]["atol"]), float(tolerances[name]["rtol"])


@dataclasses.dataclass
class NameResult:
    run: str
    name: str
    worst_ratio: float  # max |x - ref| / (atol + rtol |ref|); <= 1 passes
    max_abs_diff: float
    atol: float
    rtol: float

    @property
    def passed(self) -> bool:
        return self.worst_ratio <= 1.0


def load_parity_vectors(path: str | Path) -> ParityVectors:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"parity vector file not found: {path}")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if "json" not in metadata:
            raise ValueError(f"{path}: metadata has no 'json' entry (config, runs, tolerances)")
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    return ParityVectors(path, json.loads(metadata["json"]), tensors)


def build_parity_model(vectors: ParityVectors, device: torch.device | str = "cpu") -> TTT3RModel:
    """The model described by the file's config, its `model/` weights loaded with strict=True, float32."""
    with torch.device("meta"):
        model = TTT3RModel(config_from_dict(vectors.meta, source=str(vectors.path)))
    model.to_empty(device=torch.device(device))
    model.load_state_dict(vectors.weights(), strict=True)
    return model.eval()


def replay_run(model: TTT3RModel, vectors: ParityVectors, run: str) -> dict[str, torch.Tensor]:
    """Feed the run's views one at a time (batch 1) and stack every per-view output, on the CPU."""
    runs_meta = vectors.meta.get("runs", {})
    if run not in runs_meta or "model_update_type" not in runs_meta[run]:
        raise KeyError(f"{vectors.path}: runs.{run}.model_update_type missing from the metadata")
    rule = runs_meta[run]["model_update_type"]
    device = model.device
    # clone: tensors read from the file are not 64-byte aligned (CPU BLAS results can depend on alignment)
    frames = vectors.tensors["input/frames"].to(device=device, dtype=torch.float32).clone()
    frame_index = vectors.tensors[f"{run}/view_frame_index"].tolist()
    reset_flags = vectors.tensors[f"{run}/reset_flag"].to(torch.bool)
    state = model.initial_state(batch_size=1)
    produced: dict[str, list[torch.Tensor]] = {}
    for view, frame in enumerate(frame_index):
        out, state = model.step(frames[frame : frame + 1], state, update_rule=rule,
                                reset=reset_flags[view : view + 1].to(device), return_intermediates=True)
        values = {name: getattr(out, name) for name in STEP_OUTPUT_NAMES}
        assert out.intermediates is not None
        values.update(out.intermediates)
        for name, value in values.items():
            produced.setdefault(name, []).append(value[0].detach().to("cpu", torch.float32))
    stacked = {name: torch.stack(values) for name, values in produced.items()}
    stacked["view_frame_index"] = torch.tensor(frame_index, dtype=torch.int64)
    stacked["reset_flag"] = reset_flags.to(torch.int64)
    return stacked


def compare_run(vectors: ParityVectors, run: str, produced: dict[str, torch.Tensor],
                skip: Iterable[str] = ENGINE_NAMES) -> list[NameResult]:
    """Compare every stored `<run>/<name>` (except `skip`) with what was produced; unknown names raise."""
    skip = set(skip)
    results = []
    for name in vectors.run_names(run):
        if name in skip:
            continue
        if name not in produced:
            raise KeyError(f"{vectors.path}: stored tensor {run}/{name} is not produced by the model step")
        reference = vectors.tensors[f"{run}/{name}"].to(torch.float64)
        value = produced[name].to(torch.float64)
        if value.shape != reference.shape:
            raise ValueError(f"{run}/{name}: produced shape {tuple(value.shape)} != stored {tuple(reference.shape)}")
        atol, rtol = vectors.tolerance(name)
        diff = (value - reference).abs()
        bound = atol + rtol * reference.abs()
        if bool((bound == 0).any()):
            ratio_tensor = torch.where(diff == 0, torch.zeros_like(diff), diff / bound)
        else:
            ratio_tensor = diff / bound
        worst = float(ratio_tensor.max()) if ratio_tensor.numel() else 0.0
        if not torch.isfinite(value).all():
            worst = float("inf")
        results.append(NameResult(run, name, worst, float(diff.max()) if diff.numel() else 0.0, atol, rtol))
    return results


def format_results(results: list[NameResult]) -> str:
    lines = [f"{'run':<14} {'name':<22} {'worst ratio':>11} {'max |diff|':>11}  tol (atol, rtol)"]
    for r in results:
        flag = "" if r.passed else "  <-- FAIL"
        lines.append(f"{r.run:<14} {r.name:<22} {r.worst_ratio:>11.4f} {r.max_abs_diff:>11.3e}  "
                     f"({r.atol:g}, {r.rtol:g}){flag}")
    return "\n".join(lines)


def run_all(path: str | Path, device: str = "cpu") -> list[NameResult]:
    """Replay every run of the file in float32 (TF32 off) and return the per-name results."""
    vectors = load_parity_vectors(path)
    previous = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        model = build_parity_model(vectors, device)
        results: list[NameResult] = []
        for run in vectors.runs:
            results.extend(compare_run(vectors, run, replay_run(model, vectors, run)))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous
    return results


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "parity_tiny.safetensors"
    parser.add_argument("file", nargs="?", default=str(default))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    results = run_all(args.file, args.device)
    print(format_results(results))
    failed = [r for r in results if not r.passed]
    print(f"{len(results) - len(failed)}/{len(results)} passed on {args.device}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
