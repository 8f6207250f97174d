"""`ttt3r-ros bench --node`: the real ttt3r_node process over real DDS, measured the way a user sees it.

Processes (all on this machine, ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, the repo's Fast DDS profile):
  node        ``python -m ttt3r_ros.ros.node`` with the given parameters, in namespace /node_bench<i>, camera_is_base
  publisher   one per camera: 640x480 rgb8 ``Image`` (or ``--jpeg``: ``CompressedImage`` on image/compressed, the
              node's image_transport:=compressed) plus ``CameraInfo``, at ``--rate`` Hz or ``max`` (as fast as it
              can), sensor-data QoS like a camera driver; header stamps are the wall clock at publish time
  subscriber  one per node: ``odom`` (and ``/diagnostics`` at 1 Hz for the node's counters), and with
              ``--outputs all`` also /tf, path, points, map_points, depth/image, depth/camera_info,
              confidence/image and status (received as serialized bytes: the subscriber's own decoding cost stays
              out of the way, the node's publishing cost does not change)
This process (the orchestrator) imports no rclpy: it starts the others, samples the node's CPU time from
/proc/<pid>/stat and its GPU memory from nvidia-smi, and prints one JSON line per run.

One run (one measurement):
  1. subscriber up (a node kept from the previous run is reset through ~/reset first, and its counters are read
     from /diagnostics as the baseline); 2. publisher starts; 3. first odometry; 4. ``--settle-s`` later the window
  opens and lasts ``--duration-s``; 5. publisher stops; 6. the node drains (no odometry for a while), then the
  counters are read from the next /diagnostics message.
JSON fields:
  processed_fps        odometry messages received in the window / window length
  latency_ms           p50/p95/p99/max of (odometry receive time - its image stamp), same wall clock, window only
  frames               sent (by the publisher while the node's subscription was matched), received / processed /
                       dropped / rejected (the node's /diagnostics counters over the run), lost_before_node =
                       sent - received (DDS history overflow, undelivered)
  node_cpu_ms_per_frame  node process utime+stime over the window / odometry messages in the window
  node_cpu_cores       the same CPU time / window length (1.0 = one core flat out)
  node_rss_mib_window  the node's resident memory over the window, sampled every second: start, end, peak and a
                       thinned [[t_s, MiB], ...] timeline (a long --duration-s shows whether it stays flat)
  gpu_memory_mib       peak during the run and the source: nvidia-smi's per-process figure for the node's pid, or
                       (when nvidia-smi does not list the pid) the device's used memory minus its use before the
                       first node started; null on CPU
  time_to_first_odom_s node process start -> first odometry received (only for a freshly started node)
  node_start           cold (the compile cache folder was empty when the node started), warm (it held files), or
                       reused (the node process of the previous run, reset through ~/reset);
                       compile_cache_files says how many files the folder holds after the run
  node_params          the parameters as the running node reports them (parameter service), device_name the card
                       (torch.cuda.get_device_name) or the CPU model

``--matrix`` runs the set of issue 11 (30 Hz keep-latest, 60 Hz process_all_frames, max keep-latest; every output
and odom only; raw and jpeg), one node process per node configuration; its first run is repeated at once with a new
node process to measure a warm start (the first start used a fresh compile cache: cold). ``--cold-warm`` does the cold and
warm pair for one configuration. The compile cache is TORCHINDUCTOR_CACHE_DIR (and TRITON_CACHE_DIR under it) in a
folder this benchmark owns (``--compile-cache-dir``; default a fresh folder in the work folder).

Several cameras: ``run_measurement`` takes a list of NodeProcess objects and returns one result per camera: a node
started with ``NodeOptions.cameras`` (the node's ``cameras`` parameter: one model for all) gets one publisher and one
subscriber per camera (topics ``<camera>/image``...; each publisher also puts its camera's mount base_link ->
``<camera>_optical`` on /tf_static; a camera's FPS and latency come from its ``<camera>/depth/camera_info``, stamped
with the image's stamp, and its counters from its own /diagnostics status ``<node>: camera <camera>``); a node
without cameras gets one camera, as before. ``--cameras N`` (``run_cameras``) measures N cameras of --width x
--height at --rate each twice: one node with N cameras, then N single-camera node processes; one JSON line each,
with the per-camera results and a summary (FPS per camera, worst camera's latency p50/p95, GPU memory of all nodes).
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

NODE_NAME = "ttt3r_node"                 # the node's name (ttt3r_ros.ros.node.NODE_NAME; not imported: no rclpy here)
NAMESPACE_PREFIX = "/node_bench"
FRAME_ID = "camera_optical"
DEFAULT_WIDTH, DEFAULT_HEIGHT = 640, 480
DISTINCT_FRAMES = 30                     # frames the publisher cycles through (1 s of motion at 30 Hz)
FOCAL_PX_PER_WIDTH = 0.82                # pinhole focal length of the synthetic camera, in image widths
MIN_QUIET_S = 1.0                        # drain: the node counts as idle after this long without odometry, at least
DRAIN_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
# Node parameters reported in the JSON, read back from the running node.
REPORTED_NODE_PARAMS = ("model_config", "weights", "device", "precision", "image_size", "process_all_frames",
                        "image_transport", "input_qos", "input_qos_depth", "queue_size", "warmup_frames", "cameras")
ODOM_ONLY_TOPICS = ("odom",)
ALL_OUTPUT_TOPICS = ("odom", "/tf", "path", "points", "map_points", "depth/image", "depth/camera_info",
                     "confidence/image", "status")
DIAGNOSTIC_COUNTERS = ("frames_received", "frames_processed", "frames_dropped", "frames_rejected")


# ------------------------------------------------------------------------------------------------ options


@dataclass(frozen=True)
class NodeOptions:
    """What a node process is started with. None = the node's own default."""
    model_config: str | None = None
    weights: str = "random"
    device: str | None = None
    precision: str | None = None
    image_size: int | None = None
    process_all_frames: bool = False
    jpeg: bool = False
    extra_params: tuple[str, ...] = ()          # "name:=value" passed through
    cameras: tuple[str, ...] = ()               # the node's `cameras` parameter (empty: one camera, as before)

    def ros_params(self) -> list[str]:
        params = {"weights": self.weights, "model_config": self.model_config, "device": self.device,
                  "precision": self.precision, "image_size": self.image_size,
                  "process_all_frames": "true" if self.process_all_frames else "false",
                  "image_transport": "compressed" if self.jpeg else "raw",
                  # the synthetic camera is the robot body: no static TF publisher needed; several cameras: each
                  # publisher puts its camera's mount on /tf_static
                  "camera_is_base": "false" if self.cameras else "true"}
        if self.cameras:
            params["cameras"] = "[" + ",".join(self.cameras) + "]"
        out = [f"{k}:={v}" for k, v in params.items() if v is not None]
        return out + list(self.extra_params)


@dataclass(frozen=True)
class LoadOptions:
    """What one measurement offers the node and listens to."""
    rate_hz: float | None = 30.0               # None = as fast as the publisher can
    outputs: str = "all"                        # all | odom
    width: int = DEFAULT_WIDTH
    height: int = DEFAULT_HEIGHT
    settle_s: float = 2.0
    duration_s: float = 10.0

    @property
    def rate_label(self) -> str:
        return "max" if self.rate_hz is None else f"{self.rate_hz:g}hz"


@dataclass
class BenchEnvironment:
    """Environment and folders shared by every child process of one benchmark invocation."""
    work_dir: Path
    compile_cache_dir: Path
    domain_id: int
    fastdds_profile: str | None
    startup_timeout_s: float = 900.0
    node_source: Path | None = None   # another source tree's ttt3r_ros (e.g. an older commit) as a same-run baseline

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        # the bench harness (not the node) keeps DDS discovery on loopback for everything it starts
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        env["ROS_DOMAIN_ID"] = str(self.domain_id)
        env["RMW_IMPLEMENTATION"] = "rmw_fastrtps_cpp"
        if self.fastdds_profile:
            env["FASTDDS_DEFAULT_PROFILES_FILE"] = self.fastdds_profile
        env["ROS_LOG_DIR"] = str(self.work_dir / "ros_log")
        env["PYTHONUNBUFFERED"] = "1"
        # cold vs warm start is deliberate: the node's compile caches live in a folder this bench owns
        env["TORCHINDUCTOR_CACHE_DIR"] = str(self.compile_cache_dir)
        env["TRITON_CACHE_DIR"] = str(self.compile_cache_dir / "triton")
        return env


def find_fastdds_profile() -> str | None:
    """$FASTDDS_DEFAULT_PROFILES_FILE, else the profile scripts/setup.sh writes into the venv."""
    configured = os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE")
    if configured and Path(configured).is_file():
        return configured
    venv_profile = Path(sys.prefix) / "share" / "ttt3r_ros_dev" / "fastdds_localhost_shm.xml"
    return str(venv_profile) if venv_profile.is_file() else None


# ------------------------------------------------------------------------------------------------ processes


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()   # after "(comm)": field 3 (state) is fields[0]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


RSS_SAMPLE_PERIOD_S = 1.0   # node memory sampled this often during the window (flat over a long run, or not)
RSS_TIMELINE_POINTS = 20    # the JSON keeps this many of the samples, evenly spread


def _rss_window(samples: Sequence[tuple[float, float | None]]) -> dict[str, Any] | None:
    """The node's RSS over the window: first, last and peak sample, and a thinned [[t_s, MiB], ...] timeline."""
    kept = [(t, m) for t, m in samples if m is not None]
    if not kept:
        return None
    step = max(1, -(-len(kept) // RSS_TIMELINE_POINTS))
    thinned = kept[::step]
    if thinned[-1] is not kept[-1]:
        thinned.append(kept[-1])
    return {"start": round(kept[0][1], 1), "end": round(kept[-1][1], 1), "peak": round(max(m for _, m in kept), 1),
            "timeline": [[round(t, 1), round(m, 1)] for t, m in thinned]}


def _rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def _stop_process(proc: subprocess.Popen, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
    """SIGINT (what Ctrl-C or ros2 launch sends), then SIGKILL if it does not exit."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    return proc.returncode


class BenchError(RuntimeError):
    pass


def count_files(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder)) if folder.is_dir() else 0


class NodeProcess:
    """One ttt3r_node process in its own namespace."""

    def __init__(self, index: int, options: NodeOptions, env: BenchEnvironment) -> None:
        self.index = index
        self.options = options
        self.namespace = f"{NAMESPACE_PREFIX}{index}"
        self.fqn = f"{self.namespace}/{NODE_NAME}"
        self.log_path = env.work_dir / f"node{index}_{int(time.time() * 1000)}.log"
        self.compile_cache_files_before = count_files(env.compile_cache_dir)
        self.measurements = 0
        cmd = [sys.executable, "-m", "ttt3r_ros.ros.node", "--ros-args", "-r", f"__ns:={self.namespace}"]
        for p in options.ros_params():
            cmd += ["-p", p]
        self._log = open(self.log_path, "wb")
        self.start_wall_s = time.time()
        child_env = env.child_env()
        if env.node_source is not None:
            # only the node runs the other tree; publisher and subscribers stay on this one
            child_env["PYTHONPATH"] = os.pathsep.join(
                [str(env.node_source)] + [p for p in child_env.get("PYTHONPATH", "").split(os.pathsep) if p])
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=child_env,
                                     cwd=str(env.work_dir))
        self.pid = self.proc.pid

    @property
    def start_kind(self) -> str:
        if self.measurements > 0:
            return "reused"
        return "warm" if self.compile_cache_files_before > 0 else "cold"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_seconds(self) -> float:
        return _cpu_seconds(self.pid)

    def tail(self) -> str:
        return _log_tail(self.log_path)

    def stop(self) -> int | None:
        rc = _stop_process(self.proc)
        self._log.close()
        return rc


class ChildProcess:
    """A publisher or subscriber process of this module: commands on stdin, JSON events on stdout."""

    def __init__(self, role: str, args: list[str], env: BenchEnvironment, name: str) -> None:
        self.name = name
        self.log_path = env.work_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "ttt3r_ros.ros.node_bench", role, *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     env=env.child_env(), cwd=str(env.work_dir))
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            if line.startswith("{"):
                try:
                    self.events.put(json.loads(line))
                    continue
                except json.JSONDecodeError:
                    pass
            self._log.write(raw)

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((command + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise BenchError(f"{self.name} exited early:\n{_log_tail(self.log_path)}") from None

    def wait_event(self, name: str, timeout_s: float, watch: Callable[[], str | None] | None = None) -> dict[str, Any]:
        """The next event called `name`; `watch` returns an error text to give up early (a dead node)."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.name}: no '{name}' within {timeout_s:.0f} s")
            try:
                event = self.events.get(timeout=min(0.2, left))
            except queue.Empty:
                problem = watch() if watch is not None else None
                if problem:
                    raise BenchError(problem) from None
                if self.proc.poll() is not None and self.events.empty():
                    raise BenchError(f"{self.name} exited ({self.proc.returncode}) before '{name}':\n"
                                     f"{_log_tail(self.log_path)}") from None
                continue
            if event.get("event") == "error":
                raise BenchError(f"{self.name}: {event.get('message')}")
            if event.get("event") == name:
                return event

    def close(self) -> None:
        _stop_process(self.proc, timeout_s=10.0)
        self._log.close()


class GpuMemorySampler:
    """nvidia-smi every `period_s`: per-process used memory and each GPU's used memory (MiB)."""

    def __init__(self, period_s: float = 0.5) -> None:
        self.period_s = period_s
        self.available = shutil.which("nvidia-smi") is not None
        self.samples: list[tuple[float, dict[int, float], list[float]]] = []
        self.baseline_used_mib: list[float] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.available:
            return
        first = self._sample()
        self.baseline_used_mib = first[2] if first else None
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _query(self, args: list[str]) -> list[list[str]]:
        out = subprocess.run(["nvidia-smi", *args, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=10)
        if out.returncode != 0:
            return []
        return [[c.strip() for c in line.split(",")] for line in out.stdout.splitlines() if line.strip()]

    def _sample(self) -> tuple[float, dict[int, float], list[float]] | None:
        try:
            apps = self._query(["--query-compute-apps=pid,used_memory"])
            gpus = self._query(["--query-gpu=memory.used"])
        except (OSError, subprocess.TimeoutExpired):
            return None
        per_pid = {int(r[0]): float(r[1]) for r in apps if len(r) == 2 and r[0].isdigit() and _is_number(r[1])}
        used = [float(r[0]) for r in gpus if r and _is_number(r[0])]
        sample = (time.time(), per_pid, used)
        self.samples.append(sample)
        return sample

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            self._sample()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def peak(self, pid: int, gpu_index: int, t0: float, t1: float) -> dict[str, Any] | None:
        window = [s for s in self.samples if t0 <= s[0] <= t1]
        if not window:
            return None
        own = [s[1][pid] for s in window if pid in s[1]]
        if own:
            return {"peak": max(own), "last": own[-1], "source": f"nvidia-smi per-process used_memory (pid {pid})"}
        if self.baseline_used_mib is None or gpu_index >= len(self.baseline_used_mib):
            return None
        used = [s[2][gpu_index] - self.baseline_used_mib[gpu_index] for s in window if gpu_index < len(s[2])]
        if not used:
            return None
        return {"peak": max(used), "last": used[-1],
                "source": f"nvidia-smi memory.used of GPU {gpu_index} minus its use before the first node started "
                          f"(the node's pid is not listed by nvidia-smi)"}


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def describe_device(device: str) -> str:
    """The card's name (torch.cuda.get_device_name, in a short child process so this one holds no CUDA context)
    or the CPU model."""
    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        code = f"import torch; print(torch.cuda.get_device_name({index}))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[-1]
        raise BenchError(f"could not read the name of {device}: {out.stderr.strip()[-500:]}")
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} logical CPUs)"


# ------------------------------------------------------------------------------------------------ measurement


def _percentiles(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}
    a = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2), "p99": round(float(p99), 2),
            "max": round(float(a.max()), 2), "n": int(a.size)}


def _counter_delta(before: dict[str, int] | None, after: dict[str, int] | None, key: str) -> int | None:
    if after is None:
        return None
    return int(after[key]) - int((before or {}).get(key, 0))


def run_measurement(nodes: Sequence[NodeProcess], load: LoadOptions, env: BenchEnvironment,
                    gpu: GpuMemorySampler | None = None) -> list[dict[str, Any]]:
    """One measurement of every node under `load`; one result dict per camera (a node without `cameras`: one)."""
    t_begin = time.time()
    subscribers: list[ChildProcess] = []
    publishers: list[ChildProcess] = []
    # (node, camera name or None) per publisher/subscriber pair
    channels = [(node, camera) for node in nodes for camera in (node.options.cameras or (None,))]

    def watch(node: NodeProcess) -> Callable[[], str | None]:
        return lambda: None if node.alive() else (f"node {node.fqn} exited ({node.proc.returncode}):\n"
                                                  f"{node.tail()}")
    try:
        for c, (node, camera) in enumerate(channels):
            sub_args = ["--namespace", node.namespace, "--node", node.fqn, "--outputs", load.outputs]
            primary = camera is None or camera == node.options.cameras[0]   # the node's first channel
            if node.measurements > 0 and primary:
                sub_args.append("--reset")   # a kept node starts each measurement from a clean state and map
            if camera is not None:
                sub_args += ["--camera", camera] + (["--primary"] if primary else [])
            subscribers.append(ChildProcess("_subscriber", sub_args, env, f"subscriber{node.index}_{c}"))
        ready = [s.wait_event("ready", 120, watch(n)) for s, (n, _) in zip(subscribers, channels)]
        for c, (node, camera) in enumerate(channels):
            pub_args = ["--namespace", node.namespace, "--width", str(load.width), "--height", str(load.height),
                        "--rate", "max" if load.rate_hz is None else str(load.rate_hz)]
            if node.options.jpeg:
                pub_args.append("--jpeg")
            if camera is not None:
                pub_args += ["--camera", camera, "--mount-index", str(node.options.cameras.index(camera))]
            publishers.append(ChildProcess("_publisher", pub_args, env, f"publisher{node.index}_{c}"))
        timeout = env.startup_timeout_s if any(n.measurements == 0 for n in nodes) else 120.0
        first = [s.wait_event("first_odom", timeout, watch(n)) for s, (n, _) in zip(subscribers, channels)]
        time.sleep(load.settle_s)
        w0 = time.time()
        cpu0 = [n.cpu_seconds() for n, _ in channels]
        rss_samples: dict[int, list[tuple[float, float | None]]] = {id(n): [] for n in nodes}
        window_end = w0 + load.duration_s
        while (now := time.time()) < window_end:
            for n in nodes:
                rss_samples[id(n)].append((now - w0, _rss_mib(n.pid)))
            time.sleep(min(RSS_SAMPLE_PERIOD_S, max(0.0, window_end - now)))
        w1 = time.time()
        cpu1 = [n.cpu_seconds() for n, _ in channels]
        rss = [_rss_mib(n.pid) for n, _ in channels]
        for p in publishers:
            p.send("stop")
        sent = [p.wait_event("done", 30) for p in publishers]
        for s in subscribers:
            s.send("drain")
        final = [s.wait_event("result", DRAIN_TIMEOUT_S + 30, watch(n)) for s, (n, _) in zip(subscribers, channels)]
        t_end = time.time()
    finally:
        for child in publishers + subscribers:
            child.close()

    results = []
    for i, (node, camera) in enumerate(channels):
        recv = np.asarray(final[i]["odom_recv_s"], dtype=np.float64)
        stamps = np.asarray(final[i]["odom_stamp_s"], dtype=np.float64)
        in_window = (recv >= w0) & (recv <= w1)
        n_window = int(in_window.sum())
        latencies = ((recv - stamps)[in_window] * 1e3).tolist()
        before, after = ready[i].get("diagnostics"), final[i].get("diagnostics")
        frames = {k.removeprefix("frames_"): _counter_delta(before, after, k) for k in DIAGNOSTIC_COUNTERS}
        frames = {"sent": int(sent[i]["sent"]), **frames}
        frames["lost_before_node"] = (frames["sent"] - frames["received"]) if frames["received"] is not None else None
        device = str((after or {}).get("device") or final[i]["node_params"].get("device") or "")
        gpu_mem = None
        if gpu is not None and gpu.available and device.startswith("cuda"):
            gpu_index = int(device.split(":")[1]) if ":" in device else 0
            gpu_mem = gpu.peak(node.pid, gpu_index, t_begin, t_end)
        window_s = w1 - w0
        results.append({
            "processed_fps": round(n_window / window_s, 2),
            "latency_ms": _percentiles(latencies),
            "frames": frames,
            "offered_fps": sent[i]["achieved_hz"],
            "node_cpu_ms_per_frame": round((cpu1[i] - cpu0[i]) * 1e3 / n_window, 2) if n_window else None,
            "node_cpu_cores": round((cpu1[i] - cpu0[i]) / window_s, 3),
            "node_rss_mib": round(rss[i], 1) if rss[i] is not None else None,
            "node_rss_mib_window": _rss_window(rss_samples[id(node)]),
            "gpu_memory_mib": gpu_mem,
            "time_to_first_odom_s": (round(first[i]["wall_s"] - node.start_wall_s, 2)
                                     if node.measurements == 0 else None),
            "node_start": node.start_kind,
            # files in the compile cache after the run: 0 after a CUDA run means the node did not use the folder
            # this bench gave it, and cold/warm above would be meaningless
            "compile_cache_files": count_files(env.compile_cache_dir),
            "drained": final[i]["drained"],
            "window_s": round(window_s, 2),
            "topics_received": final[i]["topic_counts"],
            "device": device,
            "node_params": final[i]["node_params"],
            "namespace": node.namespace,
            "node_source": str(env.node_source) if env.node_source else "this tree",
            **({"camera": camera} if camera is not None else {}),
        })
    for node in nodes:
        node.measurements += 1
    return results


# ------------------------------------------------------------------------------------------------ orchestration


@dataclass(frozen=True)
class RunSpec:
    name: str
    node: NodeOptions
    load: LoadOptions
    restart: bool = False     # start a new node process even if one with the same options is running


def matrix_runs(base_node: NodeOptions, base_load: LoadOptions) -> list[RunSpec]:
    """Issue 11's set: (30 Hz keep-latest, 60 Hz process_all_frames, max keep-latest) x (all outputs, odom only) x
    (raw, jpeg), grouped so consecutive runs share a node process. The first run is repeated at once with a new
    node process (same compile cache, now warm): the cold/warm pair comes first, where a deadline cannot cut it."""
    runs = []
    for jpeg in (False, True):
        for process_all, rates in ((False, (30.0, None)), (True, (60.0,))):
            node = replace(base_node, jpeg=jpeg, process_all_frames=process_all)
            for rate in rates:
                for outputs in ("all", "odom"):
                    load = replace(base_load, rate_hz=rate, outputs=outputs)
                    runs.append(RunSpec(_run_name(node, load), node, load))
    first = runs[0]
    runs.insert(1, RunSpec(first.name + "_restart", first.node, first.load, restart=True))
    return runs


def _run_name(node: NodeOptions, load: LoadOptions) -> str:
    return "_".join([load.rate_label, "process-all" if node.process_all_frames else "keep-latest", load.outputs,
                     "jpeg" if node.jpeg else "raw"])


def run_all(specs: Sequence[RunSpec], env: BenchEnvironment, emit: Callable[[dict[str, Any]], None],
            deadline_s: float | None = None) -> int:
    """Run the specs in order, reusing the node process while the node options stay the same. Returns the number
    of runs that failed or were skipped."""
    t0 = time.monotonic()
    gpu = GpuMemorySampler()
    gpu.start()
    device_names: dict[str, str] = {}
    node: NodeProcess | None = None
    failures = 0
    try:
        for spec in specs:
            header = {"bench": "node", "run": spec.name, "params": _run_params(spec, env)}
            if deadline_s is not None and time.monotonic() - t0 > deadline_s:
                emit({**header, "skipped": f"past --deadline-s {deadline_s:g}"})
                failures += 1
                continue
            if node is not None and (spec.restart or node.options != spec.node or not node.alive()):
                node.stop()
                node = None
            try:
                if node is None:
                    node = NodeProcess(0, spec.node, env)
                result = run_measurement([node], spec.load, env, gpu)[0]
                device = result["device"]
                if device not in device_names:
                    device_names[device] = describe_device(device)
                emit({**header, "device_name": device_names[device], **result})
            except (BenchError, OSError) as exc:
                failures += 1
                emit({**header, "error": str(exc)[-4000:]})
                if node is not None:
                    node.stop()
                    node = None
    finally:
        if node is not None:
            node.stop()
        gpu.stop()
    return failures


def camera_names(count: int) -> tuple[str, ...]:
    return tuple(f"cam{i}" for i in range(count))


def summarise_cameras(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One line over a multi-camera measurement's per-camera results: FPS per camera, the worst camera's latency,
    and the nodes' GPU memory and CPU (each node process counted once)."""
    per_node: dict[str, dict[str, Any]] = {}
    for r in results:
        per_node.setdefault(r["namespace"], r)
    gpu = [r["gpu_memory_mib"] for r in per_node.values() if r["gpu_memory_mib"] is not None]
    per_process = gpu and all(g["source"].startswith("nvidia-smi per-process") for g in gpu)
    fps = [r["processed_fps"] for r in results]

    def worst(key: str) -> float | None:
        values = [r["latency_ms"][key] for r in results if r["latency_ms"][key] is not None]
        return max(values) if values else None
    return {
        "cameras": len(results), "node_processes": len(per_node),
        "processed_fps_per_camera": fps, "processed_fps_mean": round(float(np.mean(fps)), 2) if fps else None,
        "offered_fps_per_camera": [r["offered_fps"] for r in results],
        "latency_ms_worst_camera": {"p50": worst("p50"), "p95": worst("p95")},
        # per-process figures add up; the device-wide fallback already holds every node
        "gpu_memory_mib_peak": (round(sum(g["peak"] for g in gpu), 1) if per_process
                                else (max(g["peak"] for g in gpu) if gpu else None)),
        "node_cpu_cores": round(sum(r["node_cpu_cores"] for r in per_node.values()), 3),
        "frames_dropped": [r["frames"]["dropped"] for r in results],
        "frames_rejected": [r["frames"]["rejected"] for r in results],
    }


def run_cameras(count: int, base_node: NodeOptions, load: LoadOptions, env: BenchEnvironment,
                emit: Callable[[dict[str, Any]], None]) -> int:
    """`count` cameras at the load's size and rate each: one node with `count` cameras (one model), then `count`
    single-camera node processes. One JSON record per mode (per-camera results and a summary); returns failures."""
    gpu = GpuMemorySampler()
    gpu.start()
    failures = 0
    names = camera_names(count)
    modes = (("one_node", [replace(base_node, cameras=names)]), ("separate_nodes", [base_node] * count))
    try:
        for mode, options in modes:
            run = f"{count}cams_{mode}_{load.rate_label}_{'jpeg' if base_node.jpeg else 'raw'}"
            header = {"bench": "node", "run": run, "mode": mode,
                      "params": {**asdict(base_node), **asdict(load), "rate": load.rate_label, "cameras": count,
                                 "fastdds_profile": env.fastdds_profile, "ros_domain_id": env.domain_id}}
            nodes: list[NodeProcess] = []
            try:
                nodes = [NodeProcess(i, o, env) for i, o in enumerate(options)]
                results = run_measurement(nodes, load, env, gpu)
                emit({**header, "device_name": describe_device(results[0]["device"]),
                      "summary": summarise_cameras(results), "per_camera": results})
            except (BenchError, OSError) as exc:
                failures += 1
                emit({**header, "error": str(exc)[-4000:]})
            finally:
                for n in nodes:
                    n.stop()
    finally:
        gpu.stop()
    return failures


def _run_params(spec: RunSpec, env: BenchEnvironment) -> dict[str, Any]:
    return {**asdict(spec.node), **asdict(spec.load), "rate": spec.load.rate_label,
            "fastdds_profile": env.fastdds_profile, "ros_domain_id": env.domain_id,
            "compile_cache_dir": str(env.compile_cache_dir)}


# ------------------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-config", default=None, help="node parameter model_config (default: the node's)")
    parser.add_argument("--weights", default="random", help="node parameter weights (default: %(default)s)")
    parser.add_argument("--device", default=None, help="node parameter device: auto, cpu, cuda, cuda:N "
                        "(default: the node's)")
    parser.add_argument("--precision", default=None, help="node parameter precision (default: the node's)")
    parser.add_argument("--image-size", type=int, default=None, help="node parameter image_size (default: the node's)")
    parser.add_argument("--process-all-frames", action="store_true", help="node parameter process_all_frames:=true")
    parser.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                        help="any other node parameter (repeatable)")
    parser.add_argument("--jpeg", action="store_true",
                        help="publish CompressedImage (jpeg) on image/compressed; the node uses image_transport "
                             "compressed")
    parser.add_argument("--rate", default="30", help="publish rate in Hz, or 'max' (default: %(default)s)")
    parser.add_argument("--outputs", choices=("all", "odom"), default="all",
                        help="subscribe to every output or only odom (default: %(default)s)")
    parser.add_argument("--width", type=int, default=DEFAULT_WIDTH)
    parser.add_argument("--height", type=int, default=DEFAULT_HEIGHT)
    parser.add_argument("--settle-s", type=float, default=2.0, help="after the first odometry, before the window")
    parser.add_argument("--duration-s", type=float, default=10.0, help="measurement window")
    parser.add_argument("--matrix", action="store_true", help="issue 11's set of runs (see the module docstring)")
    parser.add_argument("--cameras", type=int, default=None, metavar="N",
                        help="N cameras of --width x --height at --rate each: one node with N cameras (one model), "
                        "then N single-camera node processes; one JSON line each (see the module docstring)")
    parser.add_argument("--cold-warm", action="store_true",
                        help="run twice, each with a new node process sharing one compile cache (cold, then warm)")
    parser.add_argument("--compile-cache-dir", default=None,
                        help="TORCHINDUCTOR_CACHE_DIR of the node (default: a fresh folder, so the first start is "
                             "cold)")
    parser.add_argument("--work-dir", default=None, help="logs and caches (default: a temporary folder, removed "
                        "at the end unless a run failed)")
    parser.add_argument("--domain-id", type=int, default=None,
                        help="ROS_DOMAIN_ID of all processes (default: $ROS_DOMAIN_ID, else 100 + pid %% 100)")
    parser.add_argument("--startup-timeout-s", type=float, default=900.0,
                        help="node start -> first odometry, at most")
    parser.add_argument("--deadline-s", type=float, default=None,
                        help="start no further run after this many seconds (skipped runs are printed as such)")
    parser.add_argument("--json-out", default=None, help="also append each JSON line to this file")
    parser.add_argument("--node-source", default=None,
                        help="run the node from this folder's ttt3r_ros package instead (e.g. `git archive` of an "
                             "older commit): a baseline measured in the same run, on the same card")


def _parse_rate(text: str) -> float | None:
    if text == "max":
        return None
    rate = float(text)
    if not rate > 0:
        raise argparse.ArgumentTypeError(f"--rate must be > 0 or 'max', got {text}")
    return rate


def run(args: argparse.Namespace) -> int:
    for p in args.param:
        if ":=" not in p:
            raise SystemExit(f"--param {p!r}: expected NAME:=VALUE")
    node = NodeOptions(model_config=args.model_config, weights=args.weights, device=args.device,
                       precision=args.precision, image_size=args.image_size,
                       process_all_frames=args.process_all_frames, jpeg=args.jpeg, extra_params=tuple(args.param))
    load = LoadOptions(rate_hz=_parse_rate(args.rate), outputs=args.outputs, width=args.width, height=args.height,
                       settle_s=args.settle_s, duration_s=args.duration_s)
    if args.matrix:
        specs = matrix_runs(node, load)
    else:
        name = _run_name(node, load)
        specs = [RunSpec(name, node, load)]
        if args.cold_warm:
            specs.append(RunSpec(name + "_restart", node, load, restart=True))

    work_dir = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="ttt3r_node_bench_"))
    work_dir.mkdir(parents=True, exist_ok=True)
    cache = Path(args.compile_cache_dir) if args.compile_cache_dir else work_dir / "inductor_cache"
    cache.mkdir(parents=True, exist_ok=True)
    domain = args.domain_id if args.domain_id is not None else int(os.environ.get("ROS_DOMAIN_ID",
                                                                                   100 + os.getpid() % 100))
    profile = find_fastdds_profile()
    if profile is None:
        print("[node_bench] WARNING: no Fast DDS profile (FASTDDS_DEFAULT_PROFILES_FILE unset and none in the venv): "
              "images travel with the rmw's default 512 KiB shared-memory segment, as UDP fragments; the JSON "
              "says fastdds_profile: null", file=sys.stderr)
    env = BenchEnvironment(work_dir=work_dir, compile_cache_dir=cache, domain_id=domain, fastdds_profile=profile,
                           startup_timeout_s=args.startup_timeout_s,
                           node_source=Path(args.node_source).resolve() if args.node_source else None)

    def emit(record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=False)
        print(line, flush=True)
        if args.json_out:
            with open(args.json_out, "a", encoding="utf-8") as f:
                f.write(line + "\n")

    if args.cameras is not None:
        if args.cameras < 1 or args.matrix or args.cold_warm:
            raise SystemExit("--cameras N needs N >= 1 and goes without --matrix/--cold-warm")
        print(f"[node_bench] {args.cameras} camera(s): one node, then separate nodes; logs in {work_dir}; "
              f"ROS_DOMAIN_ID={domain}", file=sys.stderr)
        failures = run_cameras(args.cameras, node, load, env, emit)
    else:
        print(f"[node_bench] {len(specs)} run(s); logs in {work_dir}; ROS_DOMAIN_ID={domain}", file=sys.stderr)
        failures = run_all(specs, env, emit, args.deadline_s)
    if failures == 0 and args.work_dir is None:
        shutil.rmtree(work_dir, ignore_errors=True)
    elif failures:
        print(f"[node_bench] {failures} run(s) failed or were skipped; logs kept in {work_dir}", file=sys.stderr)
    return 1 if failures else 0


# ------------------------------------------------------------------------------------------------ child roles


def _stdin_commands() -> "queue.Queue[str]":
    """Lines from stdin; EOF (the orchestrator died) reads as 'stop'."""
    commands: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in sys.stdin:
            commands.put(line.strip())
        commands.put("stop")
    threading.Thread(target=read, daemon=True).start()
    return commands


def _event(name: str, **fields: Any) -> None:
    print(json.dumps({"event": name, **fields}), flush=True)


def synthetic_frames(width: int, height: int, count: int) -> tuple[list[np.ndarray], np.ndarray]:
    """`count` rgb8 frames of a smooth, textured scene panning sideways (JPEG sizes like a real camera's, unlike
    noise), and the pinhole K of the camera."""
    import cv2

    rng = np.random.default_rng(0)
    shift_px = max(1, width // 160)
    wide = width + shift_px * count
    coarse = rng.integers(0, 256, size=(max(2, height // 24), max(2, wide // 24), 3), dtype=np.uint8)
    fine = rng.integers(0, 256, size=(max(2, height // 4), max(2, wide // 4), 3), dtype=np.uint8)
    scene = (0.75 * cv2.resize(coarse, (wide, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
             + 0.25 * cv2.resize(fine, (wide, height), interpolation=cv2.INTER_LINEAR).astype(np.float32))
    scene = np.clip(scene, 0, 255).astype(np.uint8)
    frames = [np.ascontiguousarray(scene[:, i * shift_px:i * shift_px + width]) for i in range(count)]
    f = FOCAL_PX_PER_WIDTH * width
    k = np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])
    return frames, k


def publisher_main(argv: Sequence[str]) -> int:
    """A camera: Image (or CompressedImage) + CameraInfo at a rate, stamped with the wall clock at publish time."""
    parser = argparse.ArgumentParser(prog="node_bench _publisher")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--width", type=int, default=DEFAULT_WIDTH)
    parser.add_argument("--height", type=int, default=DEFAULT_HEIGHT)
    parser.add_argument("--rate", default="30")
    parser.add_argument("--jpeg", action="store_true")
    parser.add_argument("--camera", default="", help="one camera of a node with `cameras`: topics <camera>/image..., "
                        "frame <camera>_optical, its mount on /tf_static")
    parser.add_argument("--mount-index", type=int, default=0, help="with --camera: the mount's place on the rig")
    args = parser.parse_args(argv)
    rate = _parse_rate(args.rate)
    frame_id = f"{args.camera}_optical" if args.camera else FRAME_ID
    prefix = f"{args.camera}/" if args.camera else ""

    import rclpy
    from builtin_interfaces.msg import Time
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    frames, k = synthetic_frames(args.width, args.height, DISTINCT_FRAMES)
    messages: list[Any] = []
    for rgb in frames:
        if args.jpeg:
            import cv2
            ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
            assert ok
            msg = CompressedImage(format="jpeg", data=buf.tobytes())
        else:
            msg = Image(height=args.height, width=args.width, encoding="rgb8", is_bigendian=0, step=args.width * 3,
                        data=rgb.tobytes())
        msg.header.frame_id = frame_id
        messages.append(msg)
    info = CameraInfo(height=args.height, width=args.width, distortion_model="plumb_bob", d=[0.0] * 5,
                      k=k.reshape(-1).tolist(), r=np.eye(3).reshape(-1).tolist(),
                      p=np.hstack([k, np.zeros((3, 1))]).reshape(-1).tolist())
    info.header.frame_id = frame_id

    rclpy.init()
    node = rclpy.create_node(f"node_bench_camera{args.mount_index}" if args.camera else "node_bench_camera",
                             namespace=args.namespace)
    topic = prefix + ("image/compressed" if args.jpeg else "image")
    image_pub = node.create_publisher(CompressedImage if args.jpeg else Image, topic, qos_profile_sensor_data)
    info_pub = node.create_publisher(CameraInfo, prefix + "camera_info", qos_profile_sensor_data)
    if args.camera:
        _publish_mount(node, frame_id, args.mount_index)
    commands = _stdin_commands()
    _event("ready")
    sent = unmatched = 0
    matched = False
    period = None if rate is None else 1.0 / rate
    t_first = t_next = time.monotonic()
    i = 0
    try:
        while commands.empty():
            now_ns = time.time_ns()
            stamp = Time(sec=now_ns // 1_000_000_000, nanosec=now_ns % 1_000_000_000)
            msg = messages[i % len(messages)]
            msg.header.stamp = stamp
            info.header.stamp = stamp
            info_pub.publish(info)
            image_pub.publish(msg)
            i += 1
            if not matched:
                # checked after the publish: a message the node received was published while matched, so it is
                # counted (at most the one message in flight at the match is counted but not delivered)
                matched = image_pub.get_subscription_count() > 0
            if matched:
                if sent == 0:
                    t_first = time.monotonic()
                sent += 1
            else:
                unmatched += 1
            if period is not None:
                t_next += period
                delay = t_next - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -period:
                    t_next = time.monotonic()   # fell behind (a stall): do not burst to catch up
        elapsed = time.monotonic() - t_first
        _event("done", sent=sent, sent_before_match=unmatched,
               achieved_hz=round(sent / elapsed, 1) if sent and elapsed > 0 else 0.0)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def rig_mount(index: int) -> np.ndarray:
    """T_base_camera of the rig's camera `index`: optical axes (z forward) turned to face 90 degrees further left
    per index (front, left, back, right, ...), 10 cm from the base's centre."""
    yaw = index * np.pi / 2
    c, s = np.cos(yaw), np.sin(yaw)
    r_base_body = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    # REP 103 body axes from optical axes: optical z (forward) -> x, optical x (right) -> -y, optical y (down) -> -z
    r_body_optical = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    t = np.eye(4)
    t[:3, :3] = r_base_body @ r_body_optical
    t[:3, 3] = r_base_body @ np.array([0.1, 0.0, 0.0])
    return t


def _publish_mount(node: Any, frame_id: str, index: int) -> Any:
    """base_link -> frame_id on /tf_static (transient local, as static_transform_publisher); the publisher is kept
    by the node so that late subscribers still get it."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Header
    from tf2_msgs.msg import TFMessage

    from ttt3r_ros.ros import conversions as conv

    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    pub = node.create_publisher(TFMessage, "/tf_static", latched)
    header = Header(frame_id="base_link", stamp=node.get_clock().now().to_msg())
    pub.publish(TFMessage(transforms=[conv.transform_stamped(rig_mount(index), header, frame_id)]))
    return pub


def _diagnostic_counters(status: Any) -> dict[str, Any] | None:
    """The frame counters of the node's status, or None while the node is not active (its lifecycle status carries
    `lifecycle_state` and no counters: the bench waits for the active one)."""
    values = {kv.key: kv.value for kv in status.values}
    if "lifecycle_state" in values:
        return None
    missing = [k for k in DIAGNOSTIC_COUNTERS if k not in values]
    if missing:
        raise BenchError(f"/diagnostics of {status.name!r} lacks {missing}")
    out: dict[str, Any] = {k: int(values[k]) for k in DIAGNOSTIC_COUNTERS}
    out["device"] = values.get("device", "")
    return out


def subscriber_main(argv: Sequence[str]) -> int:
    """The node's users: odometry (decoded: stamp) and, with --outputs all, every other output (serialized bytes).
    Commands on stdin: 'drain' waits until the node is idle and prints the result."""
    parser = argparse.ArgumentParser(prog="node_bench _subscriber")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--node", required=True, help="fully qualified node name")
    parser.add_argument("--outputs", choices=("all", "odom"), default="all")
    parser.add_argument("--reset", action="store_true", help="call the node's ~/reset and read baseline counters")
    parser.add_argument("--camera", default="", help="one camera of a node with `cameras`: its frames are timed on "
                        "<camera>/depth/camera_info, its counters read from the status '<node>: camera <camera>'")
    parser.add_argument("--primary", action="store_true", help="with --camera: also the node-wide outputs")
    args = parser.parse_args(argv)
    # the topic whose messages are the processed frames (stamp = the image's) and the /diagnostics status to read
    stamp_topic = f"{args.camera}/depth/camera_info" if args.camera else "odom"
    diag_status = f"{args.node}: camera {args.camera}" if args.camera else None

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from nav_msgs.msg import Odometry, Path as PathMsg
    from rcl_interfaces.srv import GetParameters
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import parameter_value_to_python
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from std_srvs.srv import Trigger
    from tf2_msgs.msg import TFMessage

    from ttt3r_ros.msg import Status

    rclpy.init()
    node = rclpy.create_node("node_bench_listener", namespace=args.namespace)
    lock = threading.Lock()
    odom_recv: list[float] = []
    odom_stamp: list[float] = []
    counts: dict[str, int] = {}
    latest_diag: list[tuple[float, dict[str, Any]]] = []
    diag_error: list[str] = []
    first_reported = threading.Event()

    def on_odom(msg: Any) -> None:
        now = time.time()
        with lock:
            odom_recv.append(now)
            odom_stamp.append(msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9)
            counts[stamp_topic] = counts.get(stamp_topic, 0) + 1
        if not first_reported.is_set():
            first_reported.set()
            _event("first_odom", wall_s=now)

    def counter(name: str) -> Callable[[Any], None]:
        def cb(_msg: Any) -> None:
            with lock:
                counts[name] = counts.get(name, 0) + 1
        return cb

    def on_diagnostics(msg: Any) -> None:
        for status in msg.status:
            if (status.name == diag_status) if diag_status else status.name.startswith(args.node + ":"):
                try:
                    counters = _diagnostic_counters(status)
                    if counters is not None:
                        latest_diag.append((time.time(), counters))
                except BenchError as exc:
                    diag_error.append(str(exc))

    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    node.create_subscription(CameraInfo if args.camera else Odometry, stamp_topic, on_odom, reliable)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, reliable)
    if args.camera:
        # a camera of a multi-camera node: its own outputs; the primary's subscriber also the node-wide ones
        per_camera = {f"{args.camera}/{t}": v for t, v in (("points", (PointCloud2, reliable)),
                                                            ("depth/image", (Image, reliable)),
                                                            ("confidence/image", (Image, reliable)))}
        shared = {"odom": (Odometry, reliable), "/tf": (TFMessage, QoSProfile(depth=100,
                                                                               reliability=ReliabilityPolicy.RELIABLE)),
                  "path": (PathMsg, latched), "map_points": (PointCloud2, latched), "status": (Status, reliable)}
        wanted = ({**per_camera, **(shared if args.primary else {})} if args.outputs == "all"
                  else ({"odom": shared["odom"]} if args.primary else {}))
        for topic, (msg_type, qos) in wanted.items():
            node.create_subscription(msg_type, topic, counter(topic), qos, raw=True)
    elif args.outputs == "all":
        # what RViz and a typical consumer ask for: reliable; latched topics as transient local
        others = {"/tf": (TFMessage, QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)),
                  "path": (PathMsg, latched), "points": (PointCloud2, reliable), "map_points": (PointCloud2, latched),
                  "depth/image": (Image, reliable), "depth/camera_info": (CameraInfo, reliable),
                  "confidence/image": (Image, reliable), "status": (Status, reliable)}
        assert set(others) | {"odom"} == set(ALL_OUTPUT_TOPICS)
        for topic, (msg_type, qos) in others.items():
            node.create_subscription(msg_type, topic, counter(topic), qos, raw=True)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    commands = _stdin_commands()

    def call(srv_type: Any, name: str, request: Any, timeout_s: float = 30.0) -> Any:
        client = node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout_s):
                raise BenchError(f"service {name} not available")
            future = client.call_async(request)
            deadline = time.monotonic() + timeout_s
            while not future.done() and time.monotonic() < deadline:
                time.sleep(0.01)
            if not future.done():
                raise BenchError(f"service {name} did not answer within {timeout_s:.0f} s")
            return future.result()
        finally:
            node.destroy_client(client)

    def next_diagnostics(after_s: float, timeout_s: float = 10.0) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if diag_error:
                raise BenchError(diag_error[-1])
            if latest_diag and latest_diag[-1][0] > after_s:
                return latest_diag[-1][1]
            time.sleep(0.05)
        return None

    try:
        baseline = None
        if args.reset:
            response = call(Trigger, f"{args.node}/reset", Trigger.Request())
            if not response.success:
                raise BenchError(f"{args.node}/reset failed: {response.message}")
            baseline = next_diagnostics(time.time())
            if baseline is None:
                raise BenchError(f"no /diagnostics from {args.node} within 10 s")
        _event("ready", diagnostics=baseline)
        command = commands.get()
        if command != "drain":   # 'stop': the orchestrator went away
            return 0
        # drained = no odometry for a few typical frame intervals: the node has worked off its queue
        t_cmd = time.time()
        with lock:
            intervals = np.diff(odom_recv[-50:])
        quiet_s = max(MIN_QUIET_S, 4.0 * float(np.median(intervals))) if intervals.size else MIN_QUIET_S
        drained = False
        while time.time() - t_cmd < DRAIN_TIMEOUT_S:
            with lock:
                last = odom_recv[-1] if odom_recv else t_cmd
            if time.time() - max(last, t_cmd) >= quiet_s:
                drained = True
                break
            time.sleep(0.05)
        final = next_diagnostics(time.time())
        if final is None:
            raise BenchError(f"no /diagnostics from {args.node} within 10 s after the drain")
        request = GetParameters.Request(names=list(REPORTED_NODE_PARAMS))
        values = call(GetParameters, f"{args.node}/get_parameters", request).values
        params = {name: parameter_value_to_python(v) for name, v in zip(REPORTED_NODE_PARAMS, values)}
        with lock:
            _event("result", odom_recv_s=list(odom_recv), odom_stamp_s=list(odom_stamp), topic_counts=dict(counts),
                   diagnostics=final, drained=drained, node_params=params)
    except BenchError as exc:
        _event("error", message=str(exc))
        return 1
    finally:
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


# ------------------------------------------------------------------------------------------------ entry points


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_publisher"]:
        return publisher_main(argv[1:])
    if argv[:1] == ["_subscriber"]:
        return subscriber_main(argv[1:])
    parser = argparse.ArgumentParser(prog="ttt3r-ros bench --node", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
