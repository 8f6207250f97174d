"""Everything one device call needs, in one process tree: GPU parity, the `ttt3r-ros bench` matrix, memory, drift, profile.

Run on the GPU machine from the repository root (the package need not be installed):

    python3 scripts/gpu_bench.py --stages env,parity,matrix,memory,drift,profile --out $OUT

Each bench configuration runs in its own subprocess (so each reports its own peak memory and one slow or failing
configuration cannot take the others down). Full logs and every JSON line go to --out; a short table is printed
last. Stages:
  env      GPU, driver, torch build, measured bf16 matmul and copy ceilings
  parity   test/test_model_parity.py with TTT3R_TEST_DEVICE=cuda (TF32 off) on the vector file in TTT3R_PARITY_FILE
  baseline the reference-style execution at 512x384 and 512x288 (fp32, TF32 on)
  quick    the fast path at 512x384 only: bf16 and fp32, batch 1 (for iterating on levers)
  matrix   bf16 and fp32 (TF32 off) x 512x384 and 512x288 x batch 1 and 4, plus the reference baseline
  levers   512x384 bf16 batch 1 with single levers switched off (graphs off, all heads)
  memory   2,000 frames bf16 512x384, memory sampled every 100 frames
  drift    every precision candidate vs fp32, with ratios to autocast bf16, over 200 and 2,000 frames at 512x384
  profile  torch.profiler of the fast path (graphs off and on) and of the reference-style path
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EXTRA_BENCH_ARGS: list[str] = []  # --bench-args, appended to every bench command (e.g. a local CPU smoke run)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env["TTT3R_REQUIRE_REFERENCE"] = "1"  # the GPU parity tests must fail, not skip, when .gpuref/ is missing
    return env


def _log(out: Path, text: str) -> None:
    print(text, flush=True)
    with open(out / "gpu_bench.log", "a") as fh:
        fh.write(text + "\n")


def _run(cmd: list[str], out: Path, timeout_s: float, env: dict[str, str] | None = None) -> tuple[int, str]:
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env or _env(), capture_output=True, text=True, timeout=timeout_s)
        rc, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, text = 124, f"TIMEOUT after {timeout_s}s\n{exc.stdout or ''}{exc.stderr or ''}"
    with open(out / "gpu_bench.log", "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}  (rc={rc}, {time.time() - t0:.1f}s)\n{text}\n")
    return rc, text


DEADLINE: dict[str, float] = {"t0": time.time(), "budget_s": 1e9}  # --deadline-s: skip what would start late


def bench(out: Path, label: str, extra: list[str], rows: list[dict[str, Any]], timeout_s: float = 240) -> None:
    left_s = DEADLINE["budget_s"] - (time.time() - DEADLINE["t0"])
    if left_s < 20:
        _log(out, f"[{label}] SKIPPED: past the --deadline-s budget")
        rows.append({"label": label, "error": "skipped (deadline)"})
        return
    timeout_s = min(timeout_s, left_s)
    json_path = out / "runs" / f"{label}.json"
    cmd = [sys.executable, "-m", "ttt3r_ros.bench", *extra, *EXTRA_BENCH_ARGS, "--json-out", str(json_path)]
    rc, text = _run(cmd, out, timeout_s)
    line = next((ln for ln in reversed(text.splitlines()) if ln.startswith("{")), None)
    if rc != 0 or line is None:
        tail = " | ".join(text.strip().splitlines()[-3:])
        _log(out, f"[{label}] FAILED rc={rc}: {tail[-400:]}")
        rows.append({"label": label, "error": f"rc={rc}"})
        return
    result = json.loads(line)
    result["label"] = label
    rows.append(result)
    with open(out / "bench.jsonl", "a") as fh:
        fh.write(json.dumps(result) + "\n")
    _log(out, f"[{label}] {line}")


def stage_env(out: Path) -> None:
    code = r"""
import torch, time, json
d = torch.device('cuda')
p = torch.cuda.get_device_properties(d)
a = torch.randn(8192, 8192, device=d, dtype=torch.bfloat16); b = torch.randn_like(a)
for _ in range(3): a @ b
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(10): a @ b
torch.cuda.synchronize(); bf16 = 10 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12
torch.backends.cuda.matmul.allow_tf32 = False
a32 = a.float(); b32 = b.float()
for _ in range(2): a32 @ b32
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(3): a32 @ b32
torch.cuda.synchronize(); fp32 = 3 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12
x = torch.empty(2**30, dtype=torch.uint8, device=d); y = torch.empty_like(x)
y.copy_(x); torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(10): y.copy_(x)
torch.cuda.synchronize(); bw = 10 * 2 * 2**30 / (time.perf_counter() - t) / 1e12
print(json.dumps({'device': p.name, 'sms': p.multi_processor_count, 'mem_gib': round(p.total_memory / 2**30, 1),
  'torch': torch.__version__, 'cuda': torch.version.cuda, 'cudnn': torch.backends.cudnn.version(),
  'bf16_matmul_tflops': round(bf16, 1), 'fp32_matmul_tflops_no_tf32': round(fp32, 1), 'copy_tb_s': round(bw, 2)}))
"""
    _, text = _run([sys.executable, "-c", code], out, 120)
    _log(out, "[env] " + text.strip().splitlines()[-1] if text.strip() else "[env] no output")
    _, smi = _run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu",
                   "--format=csv"], out, 30)
    _log(out, "[env] " + " / ".join(smi.strip().splitlines()))


def stage_parity(out: Path) -> None:
    env = _env()
    env["TTT3R_TEST_DEVICE"] = "cuda"
    env.setdefault("TTT3R_PARITY_FILE", str(REPO / ".gpuref" / "parity_tiny.safetensors"))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test/test_model_parity.py", "-rs"]
    rc, text = _run(cmd, out, 300, env)
    summary = [ln for ln in text.splitlines() if "passed" in ln or "failed" in ln or "error" in ln.lower()]
    _log(out, f"[parity cuda tf32-off] rc={rc} " + (summary[-1] if summary else text[-300:]))


def _fast(prec: str, h: int, w: int, batch: int, frames: int, extra: list[str] | None = None) -> list[str]:
    return ["--precision", prec, "--height", str(h), "--width", str(w), "--batch", str(batch),
            "--frames", str(frames), "--warmup", "20", *(extra or [])]


RESOLUTIONS = [(384, 512), (288, 512)]


def stage_baseline(out: Path, rows: list[dict[str, Any]]) -> None:
    for h, w in RESOLUTIONS:
        bench(out, f"reference_{w}x{h}_b1", ["--baseline", "reference", "--height", str(h), "--width", str(w),
                                             "--frames", "60", "--warmup", "5"], rows)


def stage_quick(out: Path, rows: list[dict[str, Any]]) -> None:
    for prec in ("bf16", "fp32"):
        bench(out, f"fast_{prec}_512x384_b1", _fast(prec, 384, 512, 1, 200), rows)


def stage_matrix(out: Path, rows: list[dict[str, Any]]) -> None:
    for prec in ("bf16", "fp32"):
        for h, w in RESOLUTIONS:
            for batch in (1, 4):
                frames = {("bf16", 1): 300, ("bf16", 4): 150, ("fp32", 1): 150, ("fp32", 4): 60}[(prec, batch)]
                bench(out, f"fast_{prec}_{w}x{h}_b{batch}", _fast(prec, h, w, batch, frames), rows)
    stage_baseline(out, rows)


def stage_engine(out: Path, rows: list[dict[str, Any]]) -> None:
    """What the node gets: StreamingReconstructor.step from a host uint8 frame, pose/depth/confidence/colour read on
    the host every frame (map off), fast path vs the eager engine, plus the model step alone for comparison."""
    engine = ["--engine", "--height", "384", "--width", "512", "--frames", "300", "--warmup", "10"]
    for prec in ("bf16", "fp32"):
        for in_w, in_h in ((640, 480), (512, 384)):
            bench(out, f"engine_{prec}_in{in_w}x{in_h}", [*engine, "--precision", prec,
                                                          "--input-width", str(in_w), "--input-height", str(in_h)],
                  rows)
    bench(out, "engine_bf16_in640x480_eager", [*engine, "--precision", "bf16", "--input-width", "640",
                                               "--input-height", "480", "--frames", "60",
                                               "--cuda-graphs", "off"], rows)
    bench(out, "model_bf16_512x384_b1", _fast("bf16", 384, 512, 1, 300), rows)


def stage_levers(out: Path, rows: list[dict[str, Any]]) -> None:
    """The default fast path (all levers, CUDA graph) with one lever taken away at a time, 512x384 batch 1."""
    bench(out, "lever_bf16_all", _fast("bf16", 384, 512, 1, 300), rows)
    bench(out, "lever_bf16_no_graph", _fast("bf16", 384, 512, 1, 100, ["--cuda-graphs", "off"]), rows)
    bench(out, "lever_bf16_no_compile", _fast("bf16", 384, 512, 1, 300,
                                              ["--levers", "channels_last,concurrent_decoders"]), rows)
    bench(out, "lever_bf16_no_channels_last", _fast("bf16", 384, 512, 1, 300,
                                                    ["--levers", "compile,concurrent_decoders"]), rows)
    bench(out, "lever_bf16_no_compile_heads", _fast("bf16", 384, 512, 1, 300,
                                                    ["--levers", "compile,channels_last,concurrent_decoders"]), rows)
    bench(out, "lever_bf16_no_concurrent", _fast("bf16", 384, 512, 1, 300, ["--levers", "compile,channels_last"]),
          rows)
    bench(out, "lever_bf16_graph_only", _fast("bf16", 384, 512, 1, 300, ["--levers", "none"]), rows)
    bench(out, "lever_bf16_all_heads", _fast("bf16", 384, 512, 1, 300, ["--heads", "all"]), rows)
    bench(out, "lever_fp32_all", _fast("fp32", 384, 512, 1, 100), rows)
    bench(out, "lever_fp32_no_concurrent", _fast("fp32", 384, 512, 1, 100, ["--levers", "compile,channels_last"]),
          rows)
    bench(out, "lever_fp32_graph_only", _fast("fp32", 384, 512, 1, 100, ["--levers", "none"]), rows)


def stage_check(out: Path, rows: list[dict[str, Any]]) -> None:
    """The default fast paths and the DPT-compile lever (compile_heads) taken away."""
    bench(out, "lever_bf16_all", _fast("bf16", 384, 512, 1, 300), rows)
    bench(out, "lever_bf16_no_compile_heads", _fast("bf16", 384, 512, 1, 300,
                                                    ["--levers", "compile,channels_last,concurrent_decoders"]), rows)
    bench(out, "lever_bf16_b4_all", _fast("bf16", 384, 512, 4, 100), rows)
    bench(out, "lever_bf16_b4_no_compile_heads", _fast("bf16", 384, 512, 4, 100,
                                                       ["--levers", "compile,channels_last,concurrent_decoders"]), rows)
    bench(out, "lever_fp32_default", _fast("fp32", 384, 512, 1, 100), rows)


def stage_extra(out: Path, rows: list[dict[str, Any]]) -> None:
    """fp16 speed (same levers as bf16), fp32 without channels-last, and profiles of the default paths."""
    bench(out, "fast_fp16_512x384_b1", _fast("fp16", 384, 512, 1, 300), rows)
    bench(out, "fast_fp16_512x384_b4", _fast("fp16", 384, 512, 4, 150), rows)
    bench(out, "lever_fp32_concurrent_only", _fast("fp32", 384, 512, 1, 100, ["--levers", "concurrent_decoders"]),
          rows)
    bench(out, "lever_fp32_default", _fast("fp32", 384, 512, 1, 100), rows)
    stage_profile(out, rows)


def stage_gputests(out: Path, rows: list[dict[str, Any]]) -> None:
    """test/test_bench.py on the GPU: graph replay equals eager, the fast path keeps parity (fp32, TF32 off)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-s", "-rs", "test/test_bench.py",
           "test/test_engine_fast_path.py", "test/test_engine_model_integration.py", "test/test_model_parity.py",
           "test/test_precision_guard.py"]
    rc, text = _run(cmd, out, 540)  # compiles every precision of the table for the tiny model
    summary = [ln for ln in text.splitlines() if " passed" in ln or " failed" in ln or "FAIL" in ln]
    _log(out, f"[gputests] rc={rc} " + " | ".join(summary[-6:]))


def stage_memory(out: Path, rows: list[dict[str, Any]]) -> None:
    bench(out, "memory_bf16_512x384_2000", ["--mode", "memory", "--precision", "bf16", "--frames", "2000",
                                            "--memory-every", "100"], rows, timeout_s=400)


def stage_drift(out: Path, rows: list[dict[str, Any]]) -> None:
    # the candidates' lines are in runs/drift_*.json ("candidates"); the row keeps the summary line (ratios)
    for frames, timeout_s in ((200, 400), (2000, 590)):
        bench(out, f"drift_512x384_{frames}", ["--mode", "drift", "--frames", str(frames)], rows,
              timeout_s=timeout_s)


def stage_profile(out: Path, rows: list[dict[str, Any]]) -> None:
    for label, extra in (("profile_fast_bf16", ["--precision", "bf16"]),
                         ("profile_fast_bf16_b4", ["--precision", "bf16", "--batch", "4"]),
                         ("profile_fast_fp32", ["--precision", "fp32"]),
                         ("profile_reference", ["--baseline", "reference"])):
        bench(out, label, ["--mode", "profile", "--warmup", "3", *extra, "--profile-out",
                           str(out / "runs" / f"{label}.txt")], rows)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'label':34} {'fps':>8} {'img/s':>8} {'p50ms':>7} {'p95ms':>7} {'maxms':>7} {'peakMiB':>8} {'resMiB':>8}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['label']:34} ERROR {r['error']}")
        elif r.get("mode") == "speed":
            lines.append(f"{r['label']:34} {r['fps']:8.1f} {r['images_per_s']:8.1f} {r['step_ms_p50']:7.2f} "
                         f"{r['step_ms_p95']:7.2f} {r['step_ms_max']:7.2f} {r['peak_allocated_mib']:8.0f} "
                         f"{r['peak_reserved_mib']:8.0f}")
        elif r.get("mode") == "memory":
            lines.append(f"{r['label']:34} fps {r['fps']:.1f} alloc first/last {r['allocated_first_mib']}/"
                         f"{r['allocated_last_mib']} growth {r['allocated_growth_mib']} peak {r['peak_allocated_mib']}"
                         f" (growth {r['peak_growth_mib']}) reserved {r['peak_reserved_mib']}")
        elif r.get("mode") == "drift":
            lines.append(f"{r['label']:34} ratios to {r['ratios_to']} (translation, rotation, depth; FPS vs bf16):")
            for name, q in r["ratios"].items():
                lines.append(f"{'':36}{name:20} {q['translation_pct']} {q['rotation_deg']} "
                             f"{q['depth_rel_median_pct']}; {q['fps_vs_bf16']} target {q['meets_target']}")
        elif r.get("mode") == "profile":
            top = "; ".join(f"{k['name'][:40]} {k['ms_per_step']}" for k in r["top_kernels"][:4])
            lines.append(f"{r['label']:34} wall {r['wall_ms_per_step']} ms, gpu {r['gpu_kernel_ms_per_step']} ms, "
                         f"{r['kernel_launches_per_step']} kernels | {top}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default="env,parity,matrix,memory,drift,profile")
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_bench_out"))
    parser.add_argument("--bench-args", default="", help="extra arguments for every bench run (space-separated)")
    parser.add_argument("--deadline-s", type=float, default=1e9, help="start no bench run after this many seconds")
    args = parser.parse_args()
    DEADLINE["t0"] = time.time()
    DEADLINE["budget_s"] = args.deadline_s
    EXTRA_BENCH_ARGS.extend(args.bench_args.split())
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    t0 = time.time()
    for stage in args.stages.split(","):
        _log(out, f"=== stage {stage} (t={time.time() - t0:.0f}s)")
        if stage == "gputests":
            stage_gputests(out, rows)
        elif stage == "env":
            stage_env(out)
        elif stage == "parity":
            stage_parity(out)
        else:
            globals()[f"stage_{stage}"](out, rows)
    # at most 8 files come back from the device: pack the per-run JSON and profile tables into one archive
    subprocess.run(["tar", "czf", str(out / "runs.tar.gz"), "-C", str(out), "runs"], check=False)
    subprocess.run(["rm", "-rf", str(out / "runs")], check=False)
    _log(out, f"=== done in {time.time() - t0:.0f}s\n" + table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
