"""`ttt3r-ros convert-checkpoint IN.pth OUT.safetensors`: the official checkpoint -> the safe, fast format.

The .pth is read with the restricted unpickler (no code from the file runs; its OmegaConf training config becomes
plain JSON in the output's metadata). Aliased DPT tensors are written once and restored on load. With
``--check-config`` the model is built on the meta device (no memory) and the keys/shapes are verified before
anything is written.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from .checkpoint import (META_EPOCH, META_SOURCE, Checkpoint, CheckpointError, load_checkpoint, match_model,
                         save_safetensors)
from .config import ConfigError, ModelConfig, config_from_dict, load_model_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="IN.pth", help="checkpoint to convert (.pth; .safetensors also read)")
    parser.add_argument("destination", metavar="OUT.safetensors", help="file to write (atomically)")
    parser.add_argument("--check-config", metavar="NAME_OR_JSON", default=None,
                        help="verify keys and shapes against this model config before writing: a preset name "
                             "(cut3r_512_dpt_4_64), a JSON file laid out like parity_tiny.json, or inline JSON")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


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
        checkpoint = load_checkpoint(source)
        checked = None
        if args.check_config:
            checked = check_against_config(checkpoint, args.check_config)
        metadata = {META_SOURCE: checkpoint.path.name}
        if checkpoint.epoch is not None:
            metadata[META_EPOCH] = str(checkpoint.epoch)
        report = save_safetensors(checkpoint.state_dict, destination, metadata=metadata,
                                  training_config=checkpoint.training_config)
    except (FileNotFoundError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ConfigError, json.JSONDecodeError) as exc:
        print(f"error: --check-config {args.check_config!r}: {exc}", file=sys.stderr)
        return 2

    print(f"read {checkpoint.path} ({checkpoint.file_format}): {len(checkpoint.state_dict)} state-dict entries")
    print(f"wrote {report.path}: {report.tensors_written} tensors, {report.parameters:,} parameters, "
          f"{report.bytes_written / 1e6:.1f} MB")
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
