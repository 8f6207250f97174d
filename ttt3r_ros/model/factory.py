"""`build_model`: config -> TTT3RModel on a device, with weights and precision.

Precision (dtype argument):
* float32 (default): the parity path. The image encoder still rounds q, k to float16 around RoPE as the
  reference does (SPEC §3.2.1); everything else is float32. Disable TF32 for parity on GPUs.
* `stream_dtype` (default: `dtype`): the residual stream, the LayerNorms (parameters and arithmetic), the learned
  tokens, the recurrent state and the pose memory. float32 with bfloat16/float16 weights keeps what autocast keeps
  in float32 while every matmul and convolution still runs in the reduced dtype (the "-fp32state" precisions of
  ttt3r_ros.model.fast.PRECISIONS).
* bfloat16 / float16: encoder, decoders, pose memory, state and memory tensors in that dtype. What stays float32:
  RoPE angles and cos/sin tables (rotation computed in float32 and rounded once to the token dtype), the
  TTT3R gate (logit mean, sigmoid, rate), the downstream head (DPTs, final_transform, pose MLP: float32 by
  default as in the reference, `head_dtype` to change it) and all post-processing (points, confidences,
  RGB, pose, c2w). The encoder's float16 q/k recipe applies in every mode (in bfloat16 mode the rounded
  float16 values are converted to bfloat16 afterwards).
"""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import nn

from .config import ModelConfig, load_model_config
from .network import TTT3RModel

__all__ = ["build_model", "init_random_weights"]

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def init_random_weights(model: TTT3RModel, seed: int = 0) -> None:
    """Deterministic random weights of sensible magnitudes (tests, benchmarks), drawn on the CPU generator so
    they are the same on every device; the global RNG state is left as it was. Every parameter is written
    (a model made with to_empty holds garbage until then)."""
    written: set[int] = set()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)

        def fill(tensor: torch.Tensor, draw) -> None:  # type: ignore[no-untyped-def]
            values = draw(torch.empty(tensor.shape, dtype=torch.float32))
            tensor.copy_(values)
            written.add(id(tensor))

        for module in model.modules():
            if isinstance(module, nn.Linear):
                fill(module.weight, lambda t: nn.init.trunc_normal_(t, std=0.02))
                if module.bias is not None:
                    fill(module.bias, nn.init.zeros_)
            elif isinstance(module, nn.LayerNorm):
                fill(module.weight, nn.init.ones_)
                fill(module.bias, nn.init.zeros_)
            elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                if id(module.weight) in written:  # the aliased DPT convs are visited twice
                    continue
                # PyTorch's default conv init: kaiming-uniform weights, bias uniform in +-1/sqrt(fan_in)
                fan_in = module.weight[0].numel() if isinstance(module, nn.Conv2d) else (
                    module.weight.shape[1] * module.weight[0, 0].numel())
                bound = 1.0 / fan_in ** 0.5
                fill(module.weight, lambda t: nn.init.uniform_(t, -bound, bound))
                if module.bias is not None:
                    fill(module.bias, lambda t: nn.init.uniform_(t, -bound, bound))
            elif isinstance(module, nn.Embedding):
                fill(module.weight, nn.init.normal_)
        fill(model.pose_token, lambda t: nn.init.normal_(t, std=0.02))
        fill(model.masked_img_token, lambda t: nn.init.normal_(t, std=0.02))
        fill(model.masked_ray_map_token, lambda t: nn.init.normal_(t, std=0.02))
        fill(model.pose_retriever.masked_token, lambda t: nn.init.normal_(t, std=0.2))
        fill(model.pose_retriever.mem, lambda t: nn.init.normal_(t, std=0.2))
    missed = [name for name, p in model.named_parameters() if id(p) not in written]
    if missed:
        raise RuntimeError(f"init_random_weights left parameters uninitialised: {missed}")
    model.refresh_constants()


def build_model(cfg: ModelConfig | str | os.PathLike, weights: Optional[str | os.PathLike] = None,
                device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0,
                head_dtype: torch.dtype = torch.float32, stream_dtype: Optional[torch.dtype] = None) -> TTT3RModel:
    """Build the network from a ModelConfig, a preset name or a config JSON path.

    weights: None -> deterministic random init (seed); a .safetensors / .pth path -> strict load through
    ttt3r_ros.model.checkpoint.load_weights (FileNotFoundError / CheckpointError on bad files).
    device "meta" builds shapes only (no memory). The model is returned in eval mode.
    """
    config = load_model_config(cfg)
    stream_dtype = stream_dtype or dtype
    if not {dtype, head_dtype, stream_dtype} <= set(SUPPORTED_DTYPES):
        raise ValueError(f"dtype/head_dtype/stream_dtype must be one of {SUPPORTED_DTYPES}, got "
                         f"{dtype}/{head_dtype}/{stream_dtype}")
    device = torch.device(device)
    if weights is not None:
        if device.type == "meta":
            raise ValueError("weights cannot be loaded onto the meta device; pass weights=None for a shape-only model")
        from .checkpoint import load_weights  # lazy: the checkpoint module pulls in the restricted unpickler

        with torch.device("meta"):
            model = TTT3RModel(config)
        # Dtypes are set while the model is still shapes only, so each file tensor is cast once, straight into its
        # parameter: a bf16 file into a bf16 model casts nothing, and no float32 copy of the model ever exists.
        set_precision(model, dtype, head_dtype, stream_dtype)
        # Copy into freshly allocated parameters on the target device (one copy; the file stays memory-mapped).
        # On the CPU this also matters for parity: the file's mapped tensors are not 64-byte aligned, and CPU BLAS
        # results depend (at the last bit) on alignment, which the encoder's float16 casts can amplify (SPEC §3.2.1).
        model.to_empty(device=device)
        # load_weights raises FileNotFoundError (with the hint where the official weights come from) or
        # CheckpointError naming missing/unexpected keys and wrong shapes.
        load_weights(model, weights)
    elif device.type == "meta":
        with torch.device("meta"):
            model = TTT3RModel(config)
    else:
        with torch.device("meta"):  # no throw-away default init, and the global RNG is not touched
            model = TTT3RModel(config)
        model.to_empty(device=device)
        init_random_weights(model, seed)
    set_precision(model, dtype, head_dtype, stream_dtype)
    return model.eval()


def set_precision(model: TTT3RModel, dtype: torch.dtype, head_dtype: torch.dtype = torch.float32,
                  stream_dtype: Optional[torch.dtype] = None) -> TTT3RModel:
    """Cast the trunk to `dtype`, its stream parameters to `stream_dtype` (default `dtype`) and the downstream head
    to `head_dtype` (see the module docstring). Each parameter is cast once, straight to its own dtype (a float32
    LayerNorm is never rounded through bf16 on the way). The model's `stream_dtype` is read back from them."""
    stream_dtype = stream_dtype or dtype
    head = {id(p) for p in model.downstream_head.parameters()}
    stream_modules = [m for m in model.modules() if isinstance(m, nn.LayerNorm)] + [model.register_tokens]
    stream = {id(p) for m in stream_modules for p in m.parameters()} - head
    stream |= {id(p) for p in (model.pose_token, model.masked_img_token, model.masked_ray_map_token,
                               model.pose_retriever.mem, model.pose_retriever.masked_token)}
    for param in model.parameters():  # shared (aliased) parameters come once
        target = head_dtype if id(param) in head else stream_dtype if id(param) in stream else dtype
        if param.is_floating_point() and param.dtype != target:
            param.data = param.data.to(target)
    model.refresh_constants()
    return model
