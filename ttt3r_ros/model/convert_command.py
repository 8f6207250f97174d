"""`ttt3r-ros convert-checkpoint IN.pth OUT.safetensors`: the official checkpoint -> the safe, fast format.

The .pth is read with the restricted unpickler (no code from the file runs; its OmegaConf training config becomes
plain JSON in the output's metadata). Aliased DPT tensors are written once and restored on load. With
``--check-config`` the model is built on the meta device (no memory) and the keys/shapes are verified before
anything is written. ``--dtype fp16|bf16`` writes the floating-point tensors at half size (an 8 GB Jetson cannot hold
the float32 file and a cast copy at once): the source is memory-mapped and each tensor is cast and written before
the next, so the conversion holds one tensor's cast, never a second copy of the model.

Hostile files: every tensor's layout is checked against the bytes the file holds before any element is read (an
``expand``-ed 10^12-element view over one stored float is refused by name, not written out).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from .checkpoint import (Checkpoint, CheckpointError, conversion_metadata, load_checkpoint, match_model,
                         save_safetensors, verify_aliases)
from .config import ConfigError, ModelConfig, config_from_dict, load_model_config
from .fast import PRECISION_DTYPES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="IN.pth", help="checkpoint to convert (.pth; .safetensors also read)")
    parser.add_argument("destination", metavar="OUT.safetensors", help="file to write (atomically)")
    parser.add_argument("--check-config", metavar="NAME_OR_JSON", default=None,
                        help="verify keys and shapes against this model config before writing: a preset name "
                             "(cut3r_512_dpt_4_64), a JSON file laid out like parity_tiny.json, or inline JSON")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--dtype", choices=tuple(PRECISION_DTYPES), default=None,
                        help="write the floating-point tensors in this precision (fp16/bf16: half the file, for "
                             "8 GB devices; integer and bool tensors are kept); default: as stored in IN")


def _model_config(spec: str) -> ModelConfig:
    if spec.lstrip().startswith("{"):
        return config_from_dict(json.loads(spec), source="--check-config")
    return load_model_config(spec)


def check_against_config(checkpoint: Checkpoint, spec: str) -> tuple[int, list[str]]:
    """Build the model for ``spec`` on the meta device and compare; returns (entries, alias names the model adds).

    Raises CheckpointError naming missing/unexpected keys and wrong shapes.
    """
    from .factory import build_model

    model = build_model(_model_config(spec), device="meta")  # shapes only, no memory
    where = f"{checkpoint.path} (checked against model config {spec!r})"
    state_dict, added, _ = match_model(checkpoint.state_dict, model, where, strict=True)
    return len(state_dict), added


def run(args: argparse.Namespace) -> int:
    source, destination = Path(args.source), Path(args.destination)
    if destination.suffix != ".safetensors":
        print(f"error: output must end in .safetensors: {destination}", file=sys.stderr)
        return 2
    if destination.exists() and not args.overwrite:
        print(f"error: {destination} exists (pass --overwrite to replace it)", file=sys.stderr)
        return 2
    try:
        # Layouts are checked while reading; aliased copies are compared after the key/shape check (if asked for).
        checkpoint = load_checkpoint(source, verify_aliases=False)
        checked = None
        if args.check_config:
            checked = check_against_config(checkpoint, args.check_config)
        verify_aliases(checkpoint)
        report = save_safetensors(checkpoint.state_dict, destination, metadata=conversion_metadata(checkpoint),
                                  training_config=checkpoint.training_config,
                                  dtype=PRECISION_DTYPES[args.dtype] if args.dtype else None)
    except (FileNotFoundError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ConfigError, json.JSONDecodeError) as exc:
        print(f"error: --check-config {args.check_config!r}: {exc}", file=sys.stderr)
        return 2

    print(f"read {checkpoint.path} ({checkpoint.file_format}): {len(checkpoint.state_dict)} state-dict entries")
    precision = str(report.dtype).replace("torch.", "") if report.dtype is not None else "mixed"
    print(f"wrote {report.path}: {report.tensors_written} tensors, {report.parameters:,} parameters, "
          f"{report.bytes_written / 1e6:.1f} MB, floating-point tensors in {precision}")
    print(f"aliases handled: {len(report.aliases_dropped)} (stored once, restored on load)")
    for alias, original in list(report.aliases_dropped.items())[:3]:
        print(f"  {alias} -> {original}")
    if len(report.aliases_dropped) > 3:
        print(f"  ... and {len(report.aliases_dropped) - 3} more")
    if checkpoint.training_config is None:
        print("training config: none found")
    else:
        model_string = checkpoint.model_string
        print("training config: found, stored as JSON metadata"
              + (f"; model: {model_string[:160]}{'...' if len(model_string) > 160 else ''}" if model_string else ""))
    if checkpoint.epoch is not None:
        print(f"epoch: {checkpoint.epoch}")
    if checked is not None:
        print(f"checked against {args.check_config!r}: all {checked[0]} keys and shapes match")
    return 0
