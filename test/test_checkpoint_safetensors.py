"""Loading weights into the model strictly, and the errors a user sees: mismatched keys and shapes named (the model
left unchanged), many missing keys counted, truncated or empty .pth / .safetensors files, a missing file named with
where the weights come from; and the atomic safetensors writer.

All on CPU with the tiny TTT3R model (parity_tiny.json).
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from support.official_checkpoint import make_official_pth
from ttt3r_ros.model import build_model
from ttt3r_ros.model.checkpoint import CheckpointError, load_state_dict_file, load_weights, save_safetensors


def test_save_is_atomic_and_keeps_old_file_on_failure(tmp_path):
    out = tmp_path / "w.safetensors"
    save_safetensors({"a": torch.ones(3)}, out)
    before = out.read_bytes()
    with pytest.raises(TypeError):
        save_safetensors({"a": torch.zeros(3)}, out, metadata={"bad": 1})  # type: ignore[dict-item]
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_mismatched_checkpoint_names_keys_and_shapes(tmp_path, tiny_config, tiny_model):
    state = {k: v.clone() for k, v in tiny_model.state_dict().items() if ".scratch.layer_rn." not in k}
    del state["dec_norm.weight"]
    state["extra.thing.weight"] = torch.zeros(4)
    state["pose_token"] = torch.zeros(1, 1, 7)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))

    model = build_model(tiny_config, seed=4)
    before = model.state_dict()["enc_norm.weight"].clone()
    with pytest.raises(CheckpointError) as err:
        load_weights(model, path)
    message = str(err.value)
    assert str(path) in message
    assert "1 missing key(s): dec_norm.weight" in message
    assert "1 unexpected key(s): extra.thing.weight" in message
    assert "1 wrong shape(s): pose_token (checkpoint [1, 1, 7], model [1, 1, 48])" in message
    assert torch.equal(model.state_dict()["enc_norm.weight"], before), "a failed load must not change the model"

    # strict=False tolerates missing/unexpected keys, never wrong shapes
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_weights(model, path, strict=False)
    state["pose_token"] = tiny_model.state_dict()["pose_token"].clone()
    save_file(state, str(path))
    report = load_weights(model, path, strict=False)
    assert report.missing == ["dec_norm.weight"] and report.unexpected == ["extra.thing.weight"]


def test_many_missing_keys_are_counted_not_all_listed(tmp_path, tiny_config):
    path = tmp_path / "few.safetensors"
    save_file({"pose_token": torch.zeros(1, 1, 48)}, str(path))
    model = build_model(tiny_config)
    with pytest.raises(CheckpointError) as err:
        load_weights(model, path)
    line = next(l for l in str(err.value).splitlines() if "missing key(s)" in l)
    assert line.strip().startswith(f"{len(model.state_dict()) - 1} missing key(s)")
    assert "more" in line and line.count(",") < 10


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file_gives_clear_error(tmp_path, monkeypatch, tiny_model, suffix):
    full = tmp_path / f"full{suffix}"
    if suffix == ".pth":
        make_official_pth(full, tiny_model.state_dict(), monkeypatch)
    else:
        save_safetensors(tiny_model.state_dict(), full)
    data = full.read_bytes()
    for keep in (len(data) // 2, len(data) - 10, 40):
        cut = tmp_path / f"cut{suffix}"
        cut.write_bytes(data[:keep])
        with pytest.raises(CheckpointError) as err:
            load_state_dict_file(cut)
        assert str(cut) in str(err.value)
        assert "truncated or corrupt" in str(err.value)
    empty = tmp_path / f"empty{suffix}"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_state_dict_file(empty)


def test_missing_file_names_path_and_where_weights_come_from(tmp_path, tiny_config):
    path = tmp_path / "nowhere" / "cut3r_512_dpt_4_64.safetensors"
    with pytest.raises(FileNotFoundError) as err:
        load_weights(build_model(tiny_config), path)
    assert str(path) in str(err.value)
    assert "cut3r_512_dpt_4_64.pth" in str(err.value) and "CUT3R" in str(err.value)
