"""Half-size checkpoints (issue 11 item 5): `convert-checkpoint --dtype fp16|bf16|fp32`, and loading them.

An 8 GB Jetson cannot hold the float32 file and a cast copy at once, so the conversion casts and writes one tensor
at a time from the memory-mapped source, and loading casts each file tensor once, straight into the model's own
dtype. Memory is measured in a child process (peak anonymous memory sampled from /proc/self/status, and the peak
resident set, which also counts the memory-mapped file's pages) on a medium-size random model.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from support.official_checkpoint import N_ALIASES, make_official_pth
from ttt3r_ros.model import build_model
from ttt3r_ros.model.checkpoint import (META_DTYPE, convert_checkpoint, load_checkpoint, load_weights,
                                        save_safetensors)
from ttt3r_ros.model.factory import set_precision
from ttt3r_ros.model.network import TTT3RModel

REPO = Path(__file__).resolve().parents[1]
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
# A medium model (~30 M parameters, 120 MB in float32): big enough that a second copy of the weights stands far
# above allocator noise, small enough to write and convert in seconds.
MEDIUM = {"enc_embed_dim": 256, "enc_depth": 4, "enc_num_heads": 4, "dec_embed_dim": 256, "dec_depth": 6,
          "dec_num_heads": 4, "state_dec_num_heads": 4}


def model_in(config, dtype: torch.dtype, head_dtype: torch.dtype) -> TTT3RModel:
    """An unloaded model with the given dtypes (allocated, contents undefined): what load_weights fills."""
    with torch.device("meta"):
        model = TTT3RModel(config)
    set_precision(model, dtype, head_dtype)
    return model.to_empty(device="cpu")


@pytest.mark.parametrize("name", ["bf16", "fp16", "fp32"])
def test_convert_cli_writes_the_requested_precision(tmp_path, monkeypatch, capsys, tiny_model, name):
    from ttt3r_ros.cli import main

    pth, out = tmp_path / "official.pth", tmp_path / f"tiny_{name}.safetensors"
    state = tiny_model.state_dict()
    make_official_pth(pth, state, monkeypatch)
    assert main(["convert-checkpoint", str(pth), str(out), "--dtype", name]) == 0
    dtype = HALF.get(name, torch.float32)
    assert f"floating-point tensors in {str(dtype).replace('torch.', '')}" in capsys.readouterr().out

    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()[META_DTYPE] == str(dtype).replace("torch.", "")
        assert len(list(f.keys())) == len(state) - N_ALIASES
    parameters = sum(p.numel() for p in tiny_model.parameters())
    header_bytes = int.from_bytes(out.read_bytes()[:8], "little") + 8
    assert out.stat().st_size - header_bytes == parameters * dtype.itemsize  # half the data for fp16/bf16
    reread = load_checkpoint(out).state_dict
    for key, tensor in state.items():  # each tensor the file's own rounding of the original, aliases restored
        assert reread[key].dtype == dtype and torch.equal(reread[key], tensor.to(dtype)), key


def test_integer_and_bool_tensors_are_kept(tmp_path):
    state = {"w": torch.linspace(-1, 1, 7), "count": torch.tensor([3, -2**40]), "mask": torch.tensor([True, False]),
             "small": torch.arange(4, dtype=torch.int8), "double": torch.tensor([1 / 3], dtype=torch.float64)}
    report = save_safetensors(state, tmp_path / "h.safetensors", dtype=torch.float16)
    assert report.dtype == torch.float16
    reread = load_checkpoint(tmp_path / "h.safetensors").state_dict
    for key in ("count", "mask", "small"):
        assert reread[key].dtype == state[key].dtype and torch.equal(reread[key], state[key]), key
    assert reread["w"].dtype == reread["double"].dtype == torch.float16
    assert torch.equal(reread["double"], state["double"].half())


def test_half_file_into_same_dtype_model_casts_nothing(tmp_path, monkeypatch, tiny_config, tiny_model):
    pth, half = tmp_path / "official.pth", tmp_path / "tiny_bf16.safetensors"
    make_official_pth(pth, tiny_model.state_dict(), monkeypatch)
    convert_checkpoint(pth, half, dtype=torch.bfloat16)

    # What the file gives: bfloat16 views of the memory-mapped file, no float32 tensor and no copy made.
    checkpoint = load_checkpoint(half)
    assert {t.dtype for t in checkpoint.state_dict.values()} == {torch.bfloat16}
    assert {t.untyped_storage().nbytes() for t in checkpoint.state_dict.values()} == {half.stat().st_size}

    model = model_in(tiny_config, torch.bfloat16, torch.bfloat16)
    report = load_weights(model, half)
    assert report.casts == {}
    expected = {k: v.to(torch.bfloat16) for k, v in tiny_model.state_dict().items()}
    for key, tensor in model.state_dict().items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, expected[key]), key

    # The user's entry point: build_model in bf16 from the bf16 file, every tensor bit-identical to the file
    built = build_model(tiny_config, weights=half, dtype=torch.bfloat16, head_dtype=torch.bfloat16)
    for key, tensor in built.state_dict().items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, expected[key]), key


def test_half_file_into_float32_model_is_upcast_with_a_log_line(tmp_path, monkeypatch, caplog, tiny_config,
                                                                tiny_model):
    half = tmp_path / "tiny_fp16.safetensors"
    save_safetensors(tiny_model.state_dict(), half, dtype=torch.float16)
    model = model_in(tiny_config, torch.float32, torch.float32)
    with caplog.at_level(logging.INFO, logger="ttt3r_ros.model.checkpoint"):
        report = load_weights(model, half)
    n_tensors = len(tiny_model.state_dict())
    assert report.casts == {"float16 -> float32": n_tensors}
    assert any(str(half) in r.getMessage() and f"{n_tensors} tensor(s) float16 -> float32" in r.getMessage()
               for r in caplog.records), caplog.text
    for key, tensor in model.state_dict().items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, tiny_model.state_dict()[key].half().float()), key
    # the default build (bf16 trunk, float32 heads) from the same file: trunk down-cast, heads upcast, once each
    built = build_model(tiny_config, weights=half, dtype=torch.bfloat16)
    assert {p.dtype for p in built.downstream_head.parameters()} == {torch.float32}
    assert torch.equal(built.pose_token, tiny_model.pose_token.half().to(torch.bfloat16))


# ---------------------------------------------------------------------------------------------------------------------
# Peak memory, measured in a child process


MEASURE = r"""
import dataclasses, json, sys, threading, time
import torch
from ttt3r_ros.model import build_model, load_model_config
from ttt3r_ros.model.checkpoint import convert_checkpoint

def status_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])

mode, source, destination, config_file, overrides = sys.argv[1:6]
config = dataclasses.replace(load_model_config(config_file), **json.loads(overrides))
build_model(config, device="meta")  # the network's Python objects once, so they are not counted below
rss_before, anon_before = status_kb("VmRSS"), status_kb("RssAnon")
peak_anon = [anon_before]
done = threading.Event()

def sample():  # the kernel keeps no peak of anonymous memory: sample it (torch releases the GIL while copying)
    while not done.is_set():
        peak_anon[0] = max(peak_anon[0], status_kb("RssAnon"))
        time.sleep(0.001)

sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
try:
    if mode == "convert":
        convert_checkpoint(source, destination, dtype=torch.bfloat16)
    else:
        build_model(config, weights=source, dtype=torch.bfloat16, head_dtype=torch.bfloat16)
finally:
    done.set()
    sampler.join()
peak_anon[0] = max(peak_anon[0], status_kb("RssAnon"))
print(json.dumps({"anon_peak_mb": (peak_anon[0] - anon_before) / 1024,
                  "rss_peak_mb": (status_kb("VmHWM") - rss_before) / 1024}))
"""


def measure(mode: str, source: Path, destination: Path, config_file: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", MEASURE, mode, str(source), str(destination), str(config_file),
                          json.dumps(MEDIUM)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_conversion_and_half_load_hold_one_copy_of_the_weights(tmp_path, tiny_config, tiny_config_file):
    config = dataclasses.replace(tiny_config, **MEDIUM)
    with torch.device("meta"):
        meta_state = TTT3RModel(config).state_dict(keep_vars=True)  # aliases: one Parameter object
    generator = torch.Generator().manual_seed(0)
    drawn: dict[int, torch.Tensor] = {}  # one tensor per meta tensor: the DPT aliases stay one tensor
    for tensor in meta_state.values():
        if id(tensor) not in drawn:
            drawn[id(tensor)] = torch.randn(tensor.shape, generator=generator) * 0.02
    state = {k: drawn[id(v)] for k, v in meta_state.items()}
    pth, half = tmp_path / "medium.pth", tmp_path / "medium_bf16.safetensors"
    torch.save({"model": state, "epoch": 1}, pth)
    fp32_mb = sum(t.numel() * t.element_size() for t in drawn.values()) / 2**20
    largest_mb = max(t.numel() * t.element_size() for t in drawn.values()) / 2**20
    del state, drawn
    bf16_mb = fp32_mb / 2

    converted = measure("convert", pth, half, tiny_config_file)
    loaded = measure("load", half, tmp_path / "unused", tiny_config_file)
    print(f"\nmedium model: {fp32_mb:.0f} MB fp32 / {bf16_mb:.0f} MB bf16, largest tensor {largest_mb:.1f} MB; "
          f"convert fp32 .pth -> bf16: +{converted['anon_peak_mb']:.1f} MB anonymous, "
          f"+{converted['rss_peak_mb']:.0f} MB resident (the source file is memory-mapped); "
          f"load bf16 file into a bf16 model: +{loaded['anon_peak_mb']:.0f} MB anonymous, "
          f"+{loaded['rss_peak_mb']:.0f} MB resident")
    # Conversion: one cast tensor at a time (a second copy of the model would be >= bf16_mb).
    assert converted["anon_peak_mb"] < 4 * largest_mb + 24
    # Resident: the mapped source's pages at most, plus the same small change.
    assert converted["rss_peak_mb"] < fp32_mb + 4 * largest_mb + 24
    # Loading: the model's own bf16 parameters, no float32 copy (which alone would be 2 x bf16_mb).
    assert loaded["anon_peak_mb"] < 1.2 * bf16_mb + 24
