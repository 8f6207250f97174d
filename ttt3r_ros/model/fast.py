"""The fast path on CUDA: levers that keep `TTT3RModel.step`'s function and cut its time (measured: docs/speed_notes.md).

    model = build_model(cfg, weights, device="cuda", dtype=torch.bfloat16, head_dtype=torch.bfloat16)
    enable_fast_path(model)                          # bf16/fp16: compiled blocks and heads, channels-last heads,
                                                     # concurrent decoders; float32: concurrent decoders only
    runner = GraphedStep(model, batch_size=1, height=384, width=512, heads=("self",))
    out = runner.step(images)                        # one CUDA-graph replay per frame; runner.state advances

`ttt3r_ros.engine.StreamingReconstructor` uses this by default on CUDA (EngineConfig.fast_path); `enable_fast_path`
is idempotent per model. `resolve_precision("auto", device)` is the precision default of the node and `map`.

Why each lever (H100, 512x384, batch 1, bf16; numbers in docs/speed_notes.md):
* CUDA graph of the whole step: the eager step launches ~2,400 kernels from Python, which takes longer than the
  GPU needs to run them; one replay launches them all at once.
* Compiled transformer blocks (torch.compile, inductor): RoPE alone is 6-9 small elementwise kernels per q or k,
  plus LayerNorms, residual adds, GELU and casts; fused, they stop dominating the step. `emulate_precision_casts`
  keeps the encoder's float16 rounding of q/k around RoPE (SPEC §3.2.1) where eager has it. Not a float32 default:
  the fused float32 arithmetic differs enough upstream of that rounding to miss parity by up to 1.7x.
* Compiled DPT heads: fuses the ReLUs, residual adds and the bilinear upsampling around cuDNN's convolutions.
* Channels-last DPT convolutions: the token maps already are channels-last views; NCHW weights made cuDNN
  transpose them.
* Concurrent decoders: each layer's state and image blocks are independent (SPEC §4); on a side stream the state
  block fills SMs the image block leaves idle.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Collection, Optional

import torch

from .network import TTT3RModel
from .state import RecurrentState, StepOutput, finite_streams

__all__ = ["FAST_LEVERS", "PARITY_SAFE_LEVERS", "FLOAT32_LEVERS", "default_levers", "enable_fast_path",
           "fast_path_levers", "GraphedStep", "compile_available", "Precision", "PRECISIONS", "PRECISION_DTYPES",
           "PRECISION_NAMES", "CUDA_DEFAULT_PRECISION", "OVERFLOW_FALLBACK_PRECISION", "bf16_supported",
           "precision_spec", "resolve_precision", "overflow_fallback"]

FAST_LEVERS: tuple[str, ...] = ("compile", "compile_heads", "channels_last", "concurrent_decoders")
# Levers that leave float32 results within the parity tolerances (H100, parity vectors, TF32 off, with the CUDA
# graph). Compiling the float32 blocks reorders the encoder's float32 arithmetic ahead of its float16 q/k
# rounding: the flips it causes reached 1.1-1.7x the tolerances on the point maps, so float32 stays uncompiled.
PARITY_SAFE_LEVERS: tuple[str, ...] = ("channels_last", "concurrent_decoders")
# float32 defaults: of the parity-safe levers, those that measurably help in float32 (channels-last was neutral:
# 47.97 vs 47.68 ms per step, cuDNN's float32 kernels prefer NCHW).
FLOAT32_LEVERS: tuple[str, ...] = ("concurrent_decoders",)


@dataclass(frozen=True)
class Precision:
    """One inference precision: the dtype of the weights (every matmul and convolution runs in it), of the
    residual stream ("stream": the token streams between blocks, the LayerNorms and their parameters, the learned
    tokens, the recurrent state and the pose memory) and of the downstream heads."""
    weights: torch.dtype
    stream: torch.dtype
    heads: torch.dtype

    @property
    def uses_float16(self) -> bool:
        """float16 somewhere: its range ends at 65504, so real activations can overflow (see `overflow_fallback`)."""
        return torch.float16 in (self.weights, self.stream, self.heads)

    @property
    def uses_bfloat16(self) -> bool:
        return torch.bfloat16 in (self.weights, self.stream, self.heads)


# The one precision table: the node's `precision` parameter, `ttt3r-ros map --precision` and the bench take their
# names from here. The uniform ones cast the whole model once (no autocast). "-fp32state": weights and matmuls in
# the reduced dtype, residual stream, LayerNorms and recurrent state in float32 (CUT3R was trained under bf16
# autocast, which keeps LayerNorms and the state in float32; a fully cast bf16 trunk and state drifted twice as much
# as autocast on KITTI, issue 11). Drift and speed of each: `ttt3r-ros bench --mode drift` (docs/speed_notes.md).
PRECISIONS: dict[str, Precision] = {
    "fp32": Precision(torch.float32, torch.float32, torch.float32),
    "bf16": Precision(torch.bfloat16, torch.bfloat16, torch.bfloat16),
    "fp16": Precision(torch.float16, torch.float16, torch.float16),
    "bf16-fp32state": Precision(torch.bfloat16, torch.float32, torch.bfloat16),
    "fp16-fp32state": Precision(torch.float16, torch.float32, torch.float16),
}
# The uniform precisions (one dtype for the whole model): what a checkpoint file can be written in.
PRECISION_DTYPES: dict[str, torch.dtype] = {name: p.weights for name, p in PRECISIONS.items()
                                            if p.weights == p.stream == p.heads}
PRECISION_NAMES: tuple[str, ...] = ("auto", *PRECISIONS)
# What 'auto' means on CUDA. fp16-fp32state: fp16 matmuls with the residual stream and recurrent state in float32;
# on an H200 over 2,000 frames it drifts 0.14-0.27x as much as autocast-bf16 at 0.99x bf16's speed, while plain fp16
# and bf16 drift grows with the sequence (docs/speed_notes.md, "Precision and drift"). Its fp16 overflow risk on real
# weights is guarded by the session (Session.handle_invalid). Elsewhere 'auto' is fp32 (on a CPU reduced precision is
# not faster; fp32 is the parity path).
CUDA_DEFAULT_PRECISION = "fp16-fp32state"
# Where a float16 precision goes after a non-finite output or state (session.build.Session.handle_invalid): bf16's
# exponent range is float32's, so a float16 overflow cannot recur, at the fast path's speed (fp32 would be ~8x
# slower); its float32 stream and state keep autocast's accuracy where the bf16 trunk alone did not.
OVERFLOW_FALLBACK_PRECISION = "bf16-fp32state"
# Marks a model whose levers were switched on (enable_fast_path is idempotent per model instance).
_LEVERS_ATTR = "_ttt3r_fast_path_levers"


def bf16_supported(device: torch.device | str) -> bool:
    """Whether the device runs bfloat16 natively (CPUs: always; CUDA: compute capability 8.0+, not emulated)."""
    device = torch.device(device)
    if device.type != "cuda":
        return True
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch: no emulation flag
        return bool(torch.cuda.is_bf16_supported())


def precision_spec(name: str) -> Precision:
    """A resolved precision name (not 'auto') -> its dtypes."""
    try:
        return PRECISIONS[name]
    except KeyError:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_NAMES)}, got {name!r}") from None


def resolve_precision(name: str, device: torch.device | str,
                      log: Optional[Callable[[str], None]] = None) -> tuple[str, torch.dtype, torch.dtype]:
    """A precision name -> (resolved name, weights dtype, head dtype); `precision_spec(resolved)` has the stream.

    'auto' is CUDA_DEFAULT_PRECISION on CUDA and fp32 elsewhere; where the card lacks native bf16 support an 'auto'
    that would use bf16 becomes fp16 instead (`log` gets one line saying so). An explicit bf16 precision on such a
    card is an error (no silent change of what was asked for).
    """
    device = torch.device(device)
    if name == "auto":
        name = CUDA_DEFAULT_PRECISION if device.type == "cuda" else "fp32"
        if precision_spec(name).uses_bfloat16 and not bf16_supported(device):
            if log is not None:
                log(f"precision:=auto: {torch.cuda.get_device_name(device)} has no native bfloat16, "
                    f"using fp16 instead of {name}")
            name = "fp16"
    spec = precision_spec(name)
    if spec.uses_bfloat16 and not bf16_supported(device):
        raise ValueError(f"precision {name} needs bfloat16, which {torch.cuda.get_device_name(device)} does not "
                         "support natively; use fp16 or fp32")
    return name, spec.weights, spec.heads


def overflow_fallback(name: str, device: torch.device | str) -> Optional[str]:
    """The precision to switch to after a non-finite output or state in precision `name`, or None where `name`
    has float32's range (a non-finite value there is not a float16 overflow; switching would not help).
    OVERFLOW_FALLBACK_PRECISION where the device runs bf16 natively, else fp32."""
    if not precision_spec(name).uses_float16:
        return None
    return OVERFLOW_FALLBACK_PRECISION if bf16_supported(device) else "fp32"


def fast_path_levers(model: torch.nn.Module) -> Optional[tuple[str, ...]]:
    """The levers `enable_fast_path` switched on for this model, or None if it was never called on it."""
    return getattr(model, _LEVERS_ATTR, None)


def default_levers(dtype: torch.dtype) -> tuple[str, ...]:
    """All levers for bf16/fp16; for float32 (the parity path) only parity-safe ones that help."""
    return FLOAT32_LEVERS if dtype == torch.float32 else FAST_LEVERS


def compile_available() -> bool:
    """torch.compile's GPU backend needs Triton; without it the compile lever is skipped (with a log line)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def enable_fast_path(model: TTT3RModel, levers: Optional[Collection[str]] = None,
                     log: Callable[[str], None] = print) -> tuple[str, ...]:
    """Switch the given levers (default: `default_levers(model.dtype)`) on for this model instance; returns the
    levers actually enabled.

    Only for CUDA models (the levers are CUDA-specific; the CPU path stays eager and unchanged). The env var
    TTT3R_FAST_LEVERS (comma list, or "none") overrides `levers`, e.g. to rule one out on a new device.
    Idempotent per model: a second call changes nothing and returns the levers of the first (compiling a
    compiled block again would wrap it twice).
    """
    if model.device.type != "cuda":
        raise ValueError(f"enable_fast_path is for CUDA models; this one is on {model.device}")
    already = fast_path_levers(model)
    if already is not None:
        return already
    if levers is None:
        levers = default_levers(model.dtype)
    override = os.environ.get("TTT3R_FAST_LEVERS")
    if override is not None:
        levers = () if override.strip() in ("", "none") else tuple(x.strip() for x in override.split(","))
    unknown = set(levers) - set(FAST_LEVERS)
    if unknown:
        raise ValueError(f"unknown fast-path levers {sorted(unknown)}; known: {list(FAST_LEVERS)}")
    enabled: list[str] = []
    if "channels_last" in levers:
        model.downstream_head.to(memory_format=torch.channels_last)
        enabled.append("channels_last")
    if "concurrent_decoders" in levers:
        model.decoder_side_stream = torch.cuda.Stream(model.device)
        enabled.append("concurrent_decoders")
    for lever, compile_fn in (("compile", _compile_blocks), ("compile_heads", _compile_heads)):
        if lever not in levers:
            continue
        if compile_available():
            compile_fn(model)
            enabled.append(lever)
        else:
            log(f"ttt3r fast path: Triton is not installed, '{lever}' skipped (eager, slower)")
    setattr(model, _LEVERS_ATTR, tuple(enabled))
    return tuple(enabled)


def _compile_heads(model: TTT3RModel) -> None:
    """The DPT adapters: fuses the ReLUs, residual adds and the bilinear x2 upsampling around cuDNN's convs."""
    _configure_inductor()
    head = model.downstream_head
    for dpt in (head.dpt_self, head.dpt_cross, head.dpt_rgb):
        dpt.forward = torch.compile(dpt.forward, dynamic=False)


def _configure_inductor() -> None:
    import torch._inductor.config as inductor_config

    # Round where eager rounds (the encoder's float16 q/k recipe); without it inductor keeps fused
    # intermediates in float32, which is the m7 mutation of the parity README.
    inductor_config.emulate_precision_casts = True
    # One compiled graph per block class and shape, shared by its instances (their parameters are inputs).
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)


def _compile_blocks(model: TTT3RModel) -> None:
    _configure_inductor()
    blocks = [*model.enc_blocks, *model.dec_blocks, *model.dec_blocks_state,
              *model.pose_retriever.read_blocks, *model.pose_retriever.write_blocks,
              *model.downstream_head.final_transform]
    for block in blocks:
        block.forward = torch.compile(block.forward, dynamic=False)


PostProcess = Callable[[StepOutput, torch.Tensor], dict[str, torch.Tensor]]
# raw uint8 [B, H_in, W_in, 3] frames -> (float [B, 3, H, W] model input, extra device outputs such as the colour)
Prepare = Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class GraphedStep:
    """`model.step` for `batch_size` streams of `height` x `width` images, replayed as one CUDA graph.

    A live stream runs the same shapes every frame, so one capture serves the whole run. The recurrent state lives
    in static tensors that the captured step overwrites in place: successive `step` calls advance the streams
    exactly like successive `model.step` calls (same kernels in the same order). The reset/update masks are
    static inputs too, so one graph serves every combination of them.

    images: float [B, 3, H, W] in [-1, 1] (any float dtype: it is cast to the model's dtype on the copy into the
    static buffer, as `model.step` casts its input). `postprocess(out, images_as_given)` may add device tensors
    computed inside the graph (e.g. world points); they are returned by `step` as `extras`. Every returned tensor is
    a static buffer that the next call overwrites: copy what you keep.

    `prepare` + `input_size=(H_in, W_in)`: the step takes raw uint8 [B, H_in, W_in, 3] frames instead and
    `prepare` (e.g. the engine's resize/crop/normalise, `ttt3r_ros.engine.preprocess`) turns them into the model
    input inside the graph; its extra outputs join `extras`. This takes the preprocessing kernels off the host's
    critical path (same kernels, same results).
    """

    def __init__(self, model: TTT3RModel, batch_size: int, height: int, width: int, update_rule: str = "ttt3r",
                 heads: Collection[str] = ("self",),
                 postprocess: Optional[PostProcess] = None, warmup_steps: int = 3,
                 prepare: Optional[Prepare] = None, input_size: Optional[tuple[int, int]] = None) -> None:
        if model.device.type != "cuda":
            raise ValueError(f"GraphedStep needs a CUDA model, got one on {model.device}")
        self.model = model
        self.update_rule = update_rule
        self.heads = tuple(heads)
        self.postprocess = postprocess
        self.prepare = prepare
        device = model.device
        if prepare is not None:
            if input_size is None:
                raise ValueError("GraphedStep: prepare needs input_size=(H_in, W_in) of the raw uint8 frames")
            self.static_images = torch.zeros(batch_size, int(input_size[0]), int(input_size[1]), 3,
                                             dtype=torch.uint8, device=device)
        else:
            self.static_images = torch.zeros(batch_size, 3, height, width, dtype=model.dtype, device=device)
        self.static_reset = torch.zeros(batch_size, dtype=torch.bool, device=device)
        self.static_update = torch.ones(batch_size, dtype=torch.bool, device=device)
        with torch.inference_mode():
            self._state = model.initial_state(batch_size)
            self._initial = self._state.clone()
            # Warm-up on a side stream (compilation, cuBLAS/cuDNN handles and algorithm choices, the cached RoPE
            # tables and S0), then capture; the warm-up's state changes are undone before the first real frame.
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(warmup_steps):
                    self._body()
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self._outputs, self._extras = self._body()
            self.reset_state()
            torch.cuda.synchronize(device)

    def _body(self) -> tuple[StepOutput, dict[str, torch.Tensor]]:
        pre_extras: dict[str, torch.Tensor] = {}
        if self.prepare is not None:
            images, pre_extras = self.prepare(self.static_images)
        else:
            images = self.static_images
        out, new_state = self.model.step(images, self._state, update_rule=self.update_rule,
                                         reset=self.static_reset, update=self.static_update, heads=self.heads)
        self._state.state.copy_(new_state.state)
        self._state.mem.copy_(new_state.mem)
        self._state.fresh.copy_(new_state.fresh)
        # per stream: outputs and new state finite (a float16 overflow shows here), read with the pose, no sync
        self._finite = finite_streams(out, new_state)
        extras = dict(pre_extras)
        if self.postprocess is not None:
            extras.update(self.postprocess(out, self.static_images))
        return out, extras

    def step(self, images: torch.Tensor, reset: Optional[torch.Tensor] = None,
             update: Optional[torch.Tensor] = None) -> StepOutput:
        """One view per stream. Host images should be pinned (asynchronous upload); GPU images are copied in."""
        dtype_ok = (images.dtype == self.static_images.dtype if self.prepare is not None
                    else images.is_floating_point())
        if images.shape != self.static_images.shape or not dtype_ok:
            raise ValueError(f"GraphedStep was captured for images {tuple(self.static_images.shape)} "
                             f"{self.static_images.dtype}, got {tuple(images.shape)} {images.dtype}")
        self.static_images.copy_(images, non_blocking=True)
        if reset is None:
            self.static_reset.zero_()
        else:
            self.static_reset.copy_(reset, non_blocking=True)
        if update is None:
            self.static_update.fill_(True)
        else:
            self.static_update.copy_(update, non_blocking=True)
        self.graph.replay()
        return self._outputs

    @property
    def extras(self) -> dict[str, torch.Tensor]:
        """The postprocess outputs of the last step (static buffers)."""
        return self._extras

    @property
    def finite(self) -> torch.Tensor:
        """[B] bool static buffer: per stream, whether the last step's outputs and new state are all finite
        (`finite_streams`)."""
        return self._finite

    @property
    def state(self) -> RecurrentState:
        """The live state (static tensors: clone to keep a snapshot)."""
        return self._state

    def load_state(self, state: RecurrentState) -> None:
        self._state.state.copy_(state.state)
        self._state.mem.copy_(state.mem)
        self._state.fresh.copy_(state.fresh)

    def reset_state(self) -> None:
        """Every stream back to the initial state (its next view is fresh)."""
        self.load_state(self._initial)
