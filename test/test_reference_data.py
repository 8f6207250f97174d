"""The reference-data rule of test/reference_data.py, through the conftest fixtures, in a separate pytest run:
missing data skips the test (a user's `colcon test`), fails it under TTT3R_REQUIRE_REFERENCE=1 (.ci/run), and the
other reference files are looked up beside $TTT3R_PARITY_FILE."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TEST_DIR = Path(__file__).resolve().parent
PROBE_TESTS = '''
def test_needs_parity_file(parity_file):
    assert parity_file.is_file()


def test_needs_tiny_config(tiny_config_file):
    assert tiny_config_file.is_file() and tiny_config_file.parent == parity_file_folder()


def parity_file_folder():
    import os, pathlib
    return pathlib.Path(os.environ["TTT3R_PARITY_FILE"]).resolve().parent
'''


def _run_probe(tmp_path: Path, parity_file: Path, require: str | None) -> tuple[int, str]:
    """Run two tests that use the parity_file / tiny_config_file fixtures; return (exit code, output)."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")   # keep the repository's setup.cfg options out
    (tmp_path / "test_probe.py").write_text(PROBE_TESTS)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TEST_DIR), env.get("PYTHONPATH")]))
    env["TTT3R_PARITY_FILE"] = str(parity_file)
    env.pop("TTT3R_REQUIRE_REFERENCE", None)
    if require is not None:
        env["TTT3R_REQUIRE_REFERENCE"] = require
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-rsf", "-q",
                           str(tmp_path / "test_probe.py")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def _outcomes(output: str) -> dict[str, int]:
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|skipped|failed|error)", output)}


@pytest.mark.parametrize("require", [None, "0"])
def test_missing_reference_skips_with_the_path_in_the_reason(tmp_path: Path, require: str | None) -> None:
    missing = tmp_path / "nowhere" / "parity_tiny.safetensors"
    rc, output = _run_probe(tmp_path, missing, require)
    assert rc == 0 and _outcomes(output) == {"skipped": 2}, output
    assert f"parity vector file not found at {missing}" in output, output
    assert f"{missing.parent / 'parity_tiny.json'}" in output, output
    assert "TTT3R_REQUIRE_REFERENCE=1" in output, output


def test_missing_reference_fails_when_required(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "parity_tiny.safetensors"
    rc, output = _run_probe(tmp_path, missing, "1")
    # a fixture that fails makes its test an error (red, like a failure); pytest exits 1 either way
    assert rc == 1 and _outcomes(output) == {"error": 2}, output
    assert f"parity vector file not found at {missing}" in output, output


def test_present_reference_is_found_beside_the_parity_file(tmp_path: Path) -> None:
    folder = tmp_path / "reference"
    folder.mkdir()
    (folder / "parity_tiny.safetensors").write_bytes(b"")   # the fixtures only locate files; nothing reads them
    (folder / "parity_tiny.json").write_text("{}")
    rc, output = _run_probe(tmp_path, folder / "parity_tiny.safetensors", "1")
    assert rc == 0 and _outcomes(output) == {"passed": 2}, output


def test_a_misspelt_require_value_is_an_error_not_a_skip(tmp_path: Path) -> None:
    rc, output = _run_probe(tmp_path, tmp_path / "nowhere" / "parity_tiny.safetensors", "yes")
    assert rc != 0 and "skipped" not in _outcomes(output) and "TTT3R_REQUIRE_REFERENCE='yes'" in output, output
