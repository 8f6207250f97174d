"""The CUDA fast path's runners: one ``GraphedStep`` (``ttt3r_ros.model.fast``) per (batch size, H, W, input kind).

``GraphRunners`` captures a runner at the first frame of its shape (falling back to eager for that shape, with one
warning, if the capture fails), keeps at most ``MAX_GRAPH_RUNNERS`` in LRU order, tracks which streams' latest
states live in which runner's static state (``_Stream.held_by``), runs a replay and clones what a FrameResult keeps
on the device, and issues the asynchronous pinned device->host copies of what the node reads every frame. uint8
frames of one size run through a runner whose graph also does the resize/crop/normalisation (``preprocess_torch``).
See the ``reconstructor`` module docstring for how the engine uses it; this module has no ROS and no pose logic.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .geometry import ResizeCrop
from .preprocess import plan_resize_crop, preprocess_torch, resize_matrices, validate_image

_log = logging.getLogger("ttt3r_ros.engine")
# CUDA-graph runners kept per engine (one per batch size x model size); each holds its own graph memory pool.
MAX_GRAPH_RUNNERS = 4
RunnerKey = tuple[int, int, int, str]  # (batch, H, W, input kind 'float' | 'uint8')


@dataclass
class KeptOutputs:
    """The StepOutput fields the engine reads after a graph replay, copied out of the runner's static buffers."""
    pts3d_in_self_view: torch.Tensor
    conf_self: torch.Tensor
    update_rate: torch.Tensor | None
    c2w: torch.Tensor  # the runner's static buffer: read (copied to the host) before the next replay
    host_sources: dict[str, torch.Tensor]  # static buffers copied to the host right after the replay (incl. gate)
    colour: torch.Tensor | None = None  # [B, h, w, 3] uint8 (cloned) where preprocessing ran inside the graph


@dataclass
class HostCopies:
    """One step's outputs copied asynchronously into fresh pinned host arrays (never reused while referenced:
    torch's caching host allocator recycles a block only once its tensor is freed and its copy has finished)."""
    pose: torch.Tensor  # [B, 4, 4] pinned host tensor, ready once pose_ready has completed
    pose_ready: Any
    arrays: dict[str, np.ndarray]  # name -> [B, ...]: depth, confidence, colour, gate
    ready: Any


def _engine_extras(out: Any, _images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Computed inside the engine's CUDA graph: what the node reads on the host every frame, contiguous, so the
    host copies need no extra kernels. The gate's arithmetic is FrameResult's (same values)."""
    u = out.update_rate.float()
    gate = torch.stack([torch.stack([u[j].mean(), u[j].min(), u[j].max()]) for j in range(u.shape[0])])
    return {"depth": out.pts3d_in_self_view[..., 2].contiguous(), "gate": gate}


class GraphRunners:
    """The fast-path runners of one engine and the bookkeeping of which stream's state each runner holds.

    ``streams`` is the engine's list of per-stream records (``state``, ``held_by``), shared, not copied: the engine
    may replace an entry (a restarted stream), and a stream whose ``held_by`` names a runner slot has its latest
    state only there."""

    def __init__(self, model: Any, config: Any, device: torch.device, streams: list[Any]) -> None:
        self.model = model
        self.config = config
        self.device = device
        self._streams = streams
        # runner key -> GraphedStep, LRU order; which streams each runner's slots hold; shapes that run eagerly
        self.runners: OrderedDict[RunnerKey, Any] = OrderedDict()
        self.runner_streams: dict[RunnerKey, tuple[int, ...]] = {}
        self.capture_failed: dict[RunnerKey, str] = {}

    def runner(self, key: RunnerKey) -> Any:
        """The GraphedStep for (batch, H, W, kind), captured on first use; None where capture failed (eager then).
        kind 'float': model-size normalised images in; 'uint8': raw frames of H x W in, preprocessing in the graph."""
        if key in self.capture_failed:
            return None
        runner = self.runners.get(key)
        if runner is not None:
            self.runners.move_to_end(key)
            return runner
        from ttt3r_ros.model.fast import GraphedStep

        if len(self.runners) >= MAX_GRAPH_RUNNERS:
            self._drop_runner(next(iter(self.runners)))
        batch, h, w, kind = key
        t0 = time.perf_counter()
        try:
            if kind == "uint8":
                runner = GraphedStep(self.model, batch, *plan_resize_crop(h, w, self.config.size).model_size,
                                     update_rule=self.config.update_rule, heads=("self",),
                                     postprocess=_engine_extras, prepare=self._graph_prepare(h, w), input_size=(h, w))
            else:
                runner = GraphedStep(self.model, batch, h, w, update_rule=self.config.update_rule, heads=("self",),
                                     postprocess=_engine_extras)
        except Exception as exc:  # e.g. an op that cannot be captured: run this shape eagerly, say so once
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            self.capture_failed[key] = why
            _log.warning("ttt3r engine: CUDA-graph capture failed for batch %d at %dx%d (%s input; %s); this "
                         "shape runs eagerly (slower)", batch, w, h, kind, why)
            return None
        _log.info("ttt3r engine: captured the CUDA graph for batch %d at %dx%d (%s input) in %.1f s (first frame "
                  "of this shape; includes compilation)", batch, w, h, kind, time.perf_counter() - t0)
        self.runners[key] = runner
        self.runner_streams[key] = ()
        return runner

    def _graph_prepare(self, h: int, w: int) -> Any:
        """The in-graph preprocessing of raw uint8 h x w frames: preprocess_torch (bit-identical to the eager
        engine's on-device path). The closure holds the resize matrices the graph reads."""
        size, precision = self.config.size, self.config.preprocess_precision
        matrices = resize_matrices(h, w, size, self.device, precision)

        def prepare(frames: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            assert matrices is not None  # kept alive with the graph
            p = preprocess_torch(frames, size, precision=precision)
            return p.images, {"colour": p.colour}
        return prepare

    def _drop_runner(self, key: RunnerKey) -> None:
        for j, s in enumerate(self.runner_streams.pop(key, ())):
            if self._streams[s].held_by == (key, j):
                self.state_of(s)
        del self.runners[key]

    def state_of(self, s: int) -> Any:
        """Stream s's latest state as its own tensors (copied out of the graph runner that holds it, if one does)."""
        st = self._streams[s]
        if st.held_by is not None:
            key, slot = st.held_by
            st.state = self.runners[key].state.select(slot).clone()
            st.held_by = None
        return st.state

    def _load_runner(self, key: RunnerKey, idx: list[int]) -> Any:
        """Make the runner's static state hold the latest state of streams idx (slot j = idx[j]); no copy when it
        already does."""
        runner = self.runners[key]
        if all(self._streams[s].held_by == (key, j) for j, s in enumerate(idx)):
            return runner
        for j, s in enumerate(self.runner_streams[key]):  # states that live only in this runner: save them first
            if self._streams[s].held_by == (key, j):
                self.state_of(s)
        states = [self.state_of(s) for s in idx]
        runner.load_state(states[0] if len(states) == 1 else type(states[0]).stack(states))
        for j, s in enumerate(idx):
            self._streams[s].state = None
            self._streams[s].held_by = (key, j)
        self.runner_streams[key] = tuple(idx)
        return runner

    def run(self, key: RunnerKey, images: torch.Tensor, idx: list[int],
                     reset: list[bool] | None, update: list[bool] | None, keep_outputs: bool) -> Any:
        runner = self._load_runner(key, idx)
        # host masks: the runner copies them into its static mask buffers (None: zero_/fill_, no upload)
        reset_mask = torch.tensor(reset, dtype=torch.bool) if reset is not None and any(reset) else None
        update_mask = torch.tensor(update, dtype=torch.bool) if update is not None and not all(update) else None
        out = runner.step(images, reset=reset_mask, update=update_mask)
        if not keep_outputs:
            return None
        extras = runner.extras
        sources = {"depth": extras["depth"], "confidence": out.conf_self, "gate": extras["gate"]}
        colour = None
        if "colour" in extras:
            sources["colour"] = extras["colour"]
            colour = extras["colour"].clone()
        # the next replay overwrites the runner's outputs: clone (on the device) what FrameResult keeps there;
        # the host copies (copy_to_host, from step_batch) read the static buffers before any later replay (same stream)
        return KeptOutputs(out.pts3d_in_self_view.clone(), out.conf_self.clone(), None, out.c2w, sources, colour)

    def raw_batch(self, images: Sequence[Any], n: int) -> tuple[torch.Tensor, ResizeCrop] | None:
        """Fast path, uint8 frames of one size, preprocessing on the device: the frames as one raw [n,H,W,3]
        batch (numpy frames copied into a fresh pinned buffer, uploaded asynchronously by the runner) for the
        runner that preprocesses inside its graph. None: the per-frame route (the engine's _prepare) instead."""
        on_device = self.config.preprocess_on_device
        if not (self.device.type == "cuda" if on_device is None else on_device):
            return None
        if not all(isinstance(im, np.ndarray) or (isinstance(im, torch.Tensor) and not im.is_floating_point())
                   for im in images):
            return None
        for j, im in enumerate(images):
            what = "image" if n == 1 else f"image[{j}]"
            validate_image(im, what)
            if im.ndim != 3:
                raise ValueError(f"{what}: expected one HxWx3 image, got shape {tuple(im.shape)}")
        shapes = {tuple(int(d) for d in im.shape) for im in images}
        if len(shapes) != 1:
            return None
        h, w, _ = shapes.pop()
        try:
            transform = plan_resize_crop(h, w, self.config.size)
        except ValueError as exc:
            raise ValueError(f"{'image' if n == 1 else 'images'}: {exc}") from None
        if self.runner((n, h, w, "uint8")) is None:
            return None
        if all(isinstance(im, np.ndarray) for im in images):
            raw = torch.empty((n, h, w, 3), dtype=torch.uint8, pin_memory=self.device.type == "cuda")
            raw_np = raw.numpy()
            for j, im in enumerate(images):
                raw_np[j] = im
        else:
            raw = torch.stack([torch.as_tensor(im).to(self.device) for im in images])
        return raw, transform

    def _event(self) -> Any:
        if self.device.type != "cuda":
            return None
        event = torch.cuda.Event()
        event.record()
        return event

    def copy_to_host(self, out: KeptOutputs) -> HostCopies:
        """Asynchronous device->host copies of what the node reads every frame, into fresh pinned arrays: the pose
        first (its event is the step's one wait), then depth, confidence, colour and gate (waited for on read)."""
        pin = self.device.type == "cuda"

        def fresh(src: torch.Tensor) -> torch.Tensor:
            dst = torch.empty(src.shape, dtype=src.dtype, pin_memory=pin)
            dst.copy_(src, non_blocking=pin)
            return dst

        pose = fresh(out.c2w)
        pose_ready = self._event()
        arrays = {name: fresh(src).numpy() for name, src in out.host_sources.items()}
        return HostCopies(pose, pose_ready, arrays, self._event())
