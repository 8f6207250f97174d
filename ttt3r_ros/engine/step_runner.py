"""The engine's model step behind one interface (``StepRunner``): eager ``model.step``, or CUDA-graph replays.

``make_step_runner`` picks the implementation from ``EngineConfig.fast_path`` and the model's device:

- ``EagerStepRunner``: ``model.step`` (self head only) on the streams' stacked states; the CPU path, and the CUDA
  path with ``fast_path=False``.
- ``GraphStepRunner`` (CUDA): ``enable_fast_path`` once per model, then one ``ttt3r_ros.model.fast.GraphedStep``
  per (batch size, H, W, input kind), captured at the first step of that shape (warm-up, compilation and capture
  are paid there; logged once) and kept in LRU order, at most ``MAX_GRAPH_RUNNERS``. A shape whose capture fails
  runs eagerly (one warning; ``status`` names it). Input kind 'uint8': raw frames go in and the graph also runs the
  engine's resize/crop/normalisation (``preprocess_torch``, the same kernels as the eager on-device path);
  'uint8-undistort': the same, the frames first undistorted (``camera_model.StaticUndistortion``: the grids are a
  static buffer of the runner, rewritten in place when a camera's coefficients change, never recaptured);
  'float': normalised images at model size. The graph also computes the depth plane and the gate statistics, so
  the per-frame host copies need no further kernels.

Stream state has one owner: each stream's ``StreamState``. A runner reads the states it is given and hands each
stream its new state back. A graph keeps the newest states in its static buffers ("lent" to it) instead of copying
them out after every replay, and remembers which states it holds by the owners' tokens (a new token at every
change of a state): a stream stepped again through the same graph costs no state copy (the single-stream case
never copies after its first frame), and before a graph overwrites its buffers with other states, the states lent
to it go back to their owners (``StreamState.reclaim``).

Outputs (``StepOutputs``): what a FrameResult keeps on the device is the step's own memory (a graph's outputs are
cloned, since the next replay overwrites them); the pose and, for a graph, the ``host_sources`` are its static
buffers and must be copied (``host_copies``) before the next step.
"""
from __future__ import annotations

import itertools
import logging
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Sequence

import torch

from ..model.state import finite_streams
from .camera_model import StaticUndistortion, UndistortionRequest
from .config import EngineConfig
from .preprocess import plan_resize_crop, preprocess_torch, resize_matrices

_log = logging.getLogger("ttt3r_ros.engine")
# CUDA-graph runners kept per engine (one per batch size x model size); each holds its own graph memory pool.
MAX_GRAPH_RUNNERS = 4
RunnerKey = tuple[int, int, int, str]  # (batch, H, W, input kind 'float' | 'uint8' | 'uint8-undistort')
UNDISTORT_KIND = "uint8-undistort"
_TOKENS = itertools.count(1)


def gate_statistics(update_rate: torch.Tensor) -> torch.Tensor:
    """[B, S] update rates -> [B, 3] float32 (mean, min, max) per stream: the FrameResult's gate_mean/min/max."""
    u = update_rate.float()
    return torch.stack([torch.stack([row.mean(), row.min(), row.max()]) for row in u])


class StreamState:
    """The one owner of a stream's recurrent state.

    ``token`` names the newest state (a new token at every change). The newest state is either held here or, after
    a graph replay, still in that graph's static buffers (lent to it, slot ``j``): ``value()`` copies it out then.
    """

    def __init__(self, initial: Any) -> None:
        self._value: Any = initial
        self._lent: tuple[_CapturedStep, int] | None = None
        self.token = next(_TOKENS)

    def value(self) -> Any:
        """The newest state as tensors of its own (copied out of the graph it was lent to, if it was)."""
        if self._lent is not None:
            graph, slot = self._lent
            self._value = graph.read_state(slot)
            self._lent = None
        return self._value

    def replace(self, state: Any) -> None:
        self._value, self._lent, self.token = state, None, next(_TOKENS)

    def lend(self, graph: "_CapturedStep", slot: int) -> None:
        """The newest state is now in ``graph``'s static state, slot ``slot`` (no copy)."""
        self._value, self._lent, self.token = None, (graph, slot), next(_TOKENS)

    def reclaim(self, graph: "_CapturedStep", token: int) -> None:
        """``graph`` is about to overwrite the state it was lent under ``token``: keep a copy if it is still the
        newest one."""
        if self._lent is not None and self._lent[0] is graph and self.token == token:
            self.value()


@dataclass
class StepOutputs:
    """One batched step's outputs (streams on dim 0).

    points_camera [B,h,w,3] and confidence [B,h,w]: the step's own memory (FrameResult keeps them on the device).
    c2w [B,4,4]: for a graph its static buffer, read before the next step. gate [B,3] (``gate_statistics``) on the
    device, or None where only the host copy has it (a graph: ``host_sources['gate']``). colour [B,h,w,3] uint8
    where the step preprocessed raw frames, else None. host_sources: a graph's static buffers that the host copies
    read right after the step (depth, confidence, gate, colour when computed in the graph); None: nothing to
    prefetch (eager: FrameResult copies on first read). finite [B] bool on the device (``finite_streams``): per stream,
    whether the pose, the outputs and the new state are all finite; the engine copies it to the host with the pose
    (no extra synchronisation) and marks a False stream's frame invalid. For a graph a static buffer as c2w.
    """
    points_camera: torch.Tensor
    confidence: torch.Tensor
    c2w: torch.Tensor
    gate: torch.Tensor | None
    colour: torch.Tensor | None
    host_sources: dict[str, torch.Tensor] | None
    graphed: bool
    finite: torch.Tensor


class StepRunner(Protocol):
    """One batched model step for the streams whose states are given (one view each)."""

    # (batch, H, W, undistort) -> whether the runner preprocesses (with ``undistort``: undistorts, then preprocesses)
    # raw uint8 frames of that size itself; None: it never does
    accepts_raw_frames: Optional[Callable[[int, int, int, bool], bool]]

    @property
    def status(self) -> str:
        """One line: which path runs (with the levers), and shapes that fell back to eager."""
        ...

    def step(self, images: torch.Tensor, raw: bool, states: Sequence[StreamState], reset: Sequence[bool],
             update: Sequence[bool], undistortion: UndistortionRequest | None = None) -> StepOutputs:
        """images: normalised [B,3,h,w], or raw uint8 [B,H,W,3] frames (``raw``). reset[j]: stream j's state goes
        back to the initial one after this view; update[j] False: outputs only, state unchanged. undistortion: raw
        frames to undistort first (``inputs.ModelInput.undistortion``)."""
        ...

    def advance(self, images: torch.Tensor, raw: bool, states: Sequence[StreamState],
                undistortion: UndistortionRequest | None = None) -> bool:
        """A step whose outputs are dropped (the states advance); returns whether it ran as a graph replay."""
        ...


def _stack(states: list[Any]) -> Any:
    return states[0] if len(states) == 1 else type(states[0]).stack(states)


def _masks_needed(reset: Sequence[bool] | None, update: Sequence[bool] | None) -> tuple[bool, bool]:
    return reset is not None and any(reset), update is not None and not all(update)


class EagerStepRunner:
    """``model.step`` eagerly (self head only)."""

    accepts_raw_frames = None

    def __init__(self, model: Any, config: EngineConfig, device: torch.device, status: str) -> None:
        self.model, self.config, self.device = model, config, device
        self._status = status

    @property
    def status(self) -> str:
        return self._status

    def step(self, images: torch.Tensor, raw: bool, states: Sequence[StreamState], reset: Sequence[bool] | None,
             update: Sequence[bool] | None, undistortion: UndistortionRequest | None = None) -> StepOutputs:
        return self._run(images, raw, states, reset, update, keep_outputs=True, undistortion=undistortion)

    def advance(self, images: torch.Tensor, raw: bool, states: Sequence[StreamState],
                undistortion: UndistortionRequest | None = None) -> bool:
        self._run(images, raw, states, None, None, keep_outputs=False, undistortion=undistortion)
        return False

    def _run(self, images: torch.Tensor, raw: bool, states: Sequence[StreamState], reset: Sequence[bool] | None,
             update: Sequence[bool] | None, keep_outputs: bool,
             undistortion: UndistortionRequest | None = None) -> Any:
        colour = None
        if raw:  # only where a graph runner fell back to eager for this shape
            frames = images.to(self.device)
            if undistortion is not None:
                frames = undistortion.apply(frames)
            prepared = preprocess_torch(frames, self.config.size, precision=self.config.preprocess_precision)
            images, colour = prepared.images, prepared.colour
        kw: dict[str, Any] = {}
        needs_reset, needs_update = _masks_needed(reset, update)
        if needs_reset:
            kw["reset"] = torch.tensor(reset, dtype=torch.bool, device=self.device)
        if needs_update:
            kw["update"] = torch.tensor(update, dtype=torch.bool, device=self.device)
        out, new_state = self.model.step(images, _stack([s.value() for s in states]),
                                         update_rule=self.config.update_rule, heads=("self",), **kw)
        finite = finite_streams(out, new_state) if keep_outputs else None
        for j, s in enumerate(states):
            s.replace(new_state if len(states) == 1 else new_state.select(j))
        if not keep_outputs:
            return None
        return StepOutputs(points_camera=out.pts3d_in_self_view, confidence=out.conf_self, c2w=out.c2w,
                           gate=gate_statistics(out.update_rate), colour=colour, host_sources=None, graphed=False,
                           finite=finite)


def _graph_extras(out: Any, _images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Computed inside the engine's CUDA graph: what the node reads on the host every frame, contiguous, so the
    host copies need no extra kernels."""
    return {"depth": out.pts3d_in_self_view[..., 2].contiguous(), "gate": gate_statistics(out.update_rate)}


class _CapturedStep:
    """One GraphedStep and which streams' states its static state holds: slot j holds the state that had token
    ``held[j]`` (the owner is asked to take it back before the buffers are overwritten)."""

    def __init__(self, graphed: Any, undistortion: StaticUndistortion | None = None) -> None:
        self.graphed = graphed
        self.undistortion = undistortion  # the static grids of an 'uint8-undistort' graph
        self._held: list[tuple[weakref.ref[StreamState], int]] = []

    def read_state(self, slot: int) -> Any:
        return self.graphed.state.select(slot).clone()

    def release(self) -> None:
        """Every state lent to this graph goes back to its owner (copied out where still the newest)."""
        for ref, token in self._held:
            owner = ref()
            if owner is not None:
                owner.reclaim(self, token)
        self._held = []

    def run(self, images: torch.Tensor, states: Sequence[StreamState], reset: Sequence[bool] | None,
            update: Sequence[bool] | None, undistortion: UndistortionRequest | None = None) -> Any:
        if self.undistortion is not None:
            self.undistortion.load(undistortion)  # in place, only where a camera changed
        if [token for _, token in self._held] != [s.token for s in states]:
            self.release()  # first: a given state may be one lent to this very graph
            self.graphed.load_state(_stack([s.value() for s in states]))
        # host masks: the runner copies them into its static mask buffers (None: zero_/fill_, no upload)
        needs_reset, needs_update = _masks_needed(reset, update)
        out = self.graphed.step(images, reset=torch.tensor(reset, dtype=torch.bool) if needs_reset else None,
                                update=torch.tensor(update, dtype=torch.bool) if needs_update else None)
        for j, s in enumerate(states):
            s.lend(self, j)
        self._held = [(weakref.ref(s), s.token) for s in states]
        return out


class GraphStepRunner:
    """CUDA-graph replays, one captured ``GraphedStep`` per shape (see the module docstring)."""

    def __init__(self, model: Any, config: EngineConfig, device: torch.device, status: str) -> None:
        self.model, self.config, self.device = model, config, device
        self._status = status
        self._eager = EagerStepRunner(model, config, device, status)
        # runner key -> captured step, LRU order; shapes that run eagerly (capture failed) with the reason
        self.graphs: OrderedDict[RunnerKey, _CapturedStep] = OrderedDict()
        self.capture_failed: dict[RunnerKey, str] = {}

    @property
    def status(self) -> str:
        if not self.capture_failed:
            return self._status
        shapes = ", ".join(f"batch {b} {w}x{h}{' uint8 input' if kind == 'uint8' else ''}: {why}"
                           for (b, h, w, kind), why in self.capture_failed.items())
        return f"{self._status}; eager for {shapes}"

    def accepts_raw_frames(self, batch: int, h: int, w: int, undistort: bool = False) -> bool:
        return self._graph((batch, h, w, UNDISTORT_KIND if undistort else "uint8")) is not None

    def step(self, images: torch.Tensor, raw: bool, states: Sequence[StreamState], reset: Sequence[bool] | None,
             update: Sequence[bool] | None, undistortion: UndistortionRequest | None = None) -> StepOutputs:
        graph = self._graph(self._key(images, raw, len(states), undistortion))
        if graph is None:
            return self._eager.step(images, raw, states, reset, update, undistortion)
        out = graph.run(images, states, reset, update, undistortion)
        extras = graph.graphed.extras
        sources = {"depth": extras["depth"], "confidence": out.conf_self, "gate": extras["gate"]}
        colour = None
        if "colour" in extras:
            sources["colour"] = extras["colour"]
            colour = extras["colour"].clone()
        # the next replay overwrites the graph's outputs: clone (on the device) what FrameResult keeps there; the
        # host copies read c2w and the sources before any later replay (same CUDA stream)
        return StepOutputs(points_camera=out.pts3d_in_self_view.clone(), confidence=out.conf_self.clone(),
                           c2w=out.c2w, gate=None, colour=colour, host_sources=sources, graphed=True,
                           finite=graph.graphed.finite)

    def advance(self, images: torch.Tensor, raw: bool, states: Sequence[StreamState],
                undistortion: UndistortionRequest | None = None) -> bool:
        graph = self._graph(self._key(images, raw, len(states), undistortion))
        if graph is None:
            return self._eager.advance(images, raw, states, undistortion)
        graph.run(images, states, None, None, undistortion)
        return True

    @staticmethod
    def _key(images: torch.Tensor, raw: bool, batch: int, undistortion: UndistortionRequest | None = None
             ) -> RunnerKey:
        h, w = images.shape[1:3] if raw else images.shape[-2:]
        kind = (UNDISTORT_KIND if undistortion is not None else "uint8") if raw else "float"
        return (batch, int(h), int(w), kind)

    def _graph(self, key: RunnerKey) -> _CapturedStep | None:
        """The captured step for (batch, H, W, kind), captured on first use; None where capture failed."""
        if key in self.capture_failed:
            return None
        graph = self.graphs.get(key)
        if graph is not None:
            self.graphs.move_to_end(key)
            return graph
        from ttt3r_ros.model.fast import GraphedStep

        if len(self.graphs) >= MAX_GRAPH_RUNNERS:
            _, oldest = self.graphs.popitem(last=False)
            oldest.release()
        batch, h, w, kind = key
        t0 = time.perf_counter()
        undistortion = StaticUndistortion(batch, h, w, self.device) if kind == UNDISTORT_KIND else None
        try:
            if kind in ("uint8", UNDISTORT_KIND):
                graphed = GraphedStep(self.model, batch, *plan_resize_crop(h, w, self.config.size).model_size,
                                      update_rule=self.config.update_rule, heads=("self",),
                                      postprocess=_graph_extras, prepare=self._graph_prepare(h, w, undistortion),
                                      input_size=(h, w))
            else:
                graphed = GraphedStep(self.model, batch, h, w, update_rule=self.config.update_rule,
                                      heads=("self",), postprocess=_graph_extras)
        except Exception as exc:  # e.g. an op that cannot be captured: run this shape eagerly, say so once
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            self.capture_failed[key] = why
            _log.warning("ttt3r engine: CUDA-graph capture failed for batch %d at %dx%d (%s input; %s); this "
                         "shape runs eagerly (slower)", batch, w, h, kind, why)
            return None
        _log.info("ttt3r engine: captured the CUDA graph for batch %d at %dx%d (%s input) in %.1f s (first frame "
                  "of this shape; includes compilation)", batch, w, h, kind, time.perf_counter() - t0)
        graph = _CapturedStep(graphed, undistortion)
        self.graphs[key] = graph
        return graph

    def _graph_prepare(self, h: int, w: int, undistortion: StaticUndistortion | None = None
                       ) -> Callable[[torch.Tensor], tuple[torch.Tensor, dict]]:
        """The in-graph preprocessing of raw uint8 h x w frames: preprocess_torch (bit-identical to the eager
        engine's on-device path), after the undistortion through ``undistortion``'s static grids where given. The
        closure holds the resize matrices the graph reads."""
        size, precision = self.config.size, self.config.preprocess_precision
        matrices = resize_matrices(h, w, size, self.device, precision)

        def prepare(frames: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            assert matrices is not None  # kept alive with the graph
            if undistortion is not None:
                frames = undistortion.prepare(frames)
            p = preprocess_torch(frames, size, precision=precision)
            return p.images, {"colour": p.colour}
        return prepare


def make_step_runner(model: Any, config: EngineConfig, device: torch.device) -> StepRunner:
    """The runner ``config.fast_path`` asks for on this device (None: graphs on CUDA, eager elsewhere). A model
    whose fast path cannot be enabled runs eagerly, with a warning; ``fast_path=True`` on a CPU model is an error."""
    wanted = config.fast_path
    if wanted is None:
        wanted = device.type == "cuda"
        if not wanted:
            return EagerStepRunner(model, config, device,
                                   f"eager (model on {device.type}; the fast path is CUDA-only)")
    if not wanted:
        return EagerStepRunner(model, config, device, "eager (fast_path=False)")
    if device.type != "cuda":
        raise ValueError(f"fast_path=True needs a model on CUDA (CUDA graphs); this one is on {device}")
    try:
        from ttt3r_ros.model.fast import enable_fast_path

        levers = enable_fast_path(model, log=_log.warning)
    except Exception as exc:  # not a TTT3RModel, or a lever that this machine cannot run
        note = f"eager (fast path unavailable: {type(exc).__name__}: {exc})"
        _log.warning("ttt3r engine: %s", note)
        return EagerStepRunner(model, config, device, note)
    dtype = str(getattr(model, "dtype", "")).replace("torch.", "")
    return GraphStepRunner(model, config, device, f"cuda-graph ({dtype}; levers: {','.join(levers) or 'none'})")
