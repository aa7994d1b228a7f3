"""The import contracts of ``pyproject.toml`` hold, and they catch a serving module that imports the build."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT = str(Path(sys.executable).parent / "lint-imports")


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_package_keeps_its_import_contracts():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "2 kept, 0 broken" in result.stdout


def test_a_serving_module_importing_the_build_breaks_both_contracts(tmp_path):
    shutil.copytree(ROOT / "build_ensemble", tmp_path / "build_ensemble", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    module = tmp_path / "build_ensemble" / "serving" / "encoding.py"
    module.write_text(module.read_text() + "\n\ndef _load():\n    from build_ensemble.workflow import load_workflow\n\n    return load_workflow\n")
    result = _lint(tmp_path)
    assert result.returncode == 1
    assert "what runs inside tritonserver (serving) imports no build-time module BROKEN" in result.stdout
    assert "build_ensemble.serving.encoding -> build_ensemble.workflow" in result.stdout
    assert "0 kept, 2 broken" in result.stdout
