"""NVIDIA's ``perf_analyzer``, taken from the tritonclient 2.51 wheel (the PyPI ``perf-analyzer``
package is a placeholder). It needs ``libb64.so.0d`` and ``libcudart.so.12``, which the
``nvidia-pytriton`` wheel ships under hashed names; links with the expected names are made.

    python -m build_ensemble.loadtest.perf_analyzer install      # run by `make setup`
    python -m build_ensemble.loadtest.perf_analyzer input BUILD FILE   # 1,000 user ids of a build for --input-data
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from build_ensemble import constants as C
from build_ensemble.errors import ServerError

VERSION = "2.51.0"
MEMBER = f"tritonclient-{VERSION}.data/data/bin/perf_analyzer"
HOME = Path(sys.prefix) / "opt" / "perf_analyzer"
LIBS = {"libb64.so.0d": "libb64-", "libcudart.so.12": "libcudart-"}


def binary() -> Path:
    return HOME / "bin" / "perf_analyzer"


def library_path() -> str:
    """``LD_LIBRARY_PATH`` for the binary."""
    return str(HOME / "lib")


def install() -> Path:
    """Download the tritonclient wheel, extract ``perf_analyzer`` and link its libraries.

    Raises:
        ServerError: if pip cannot download the wheel or the libraries are missing.
    """
    from build_ensemble.server.launch import pytriton_root

    if binary().exists():
        return binary()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", f"tritonclient=={VERSION}", "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("tritonclient-*.whl"))
        if result.returncode != 0 or not wheels:
            raise ServerError(f"could not download tritonclient {VERSION}: {result.stderr.strip()[-300:]}")
        (HOME / "bin").mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as archive:
            binary().write_bytes(archive.read(MEMBER))
    binary().chmod(0o755)
    libs_dir = pytriton_root().parent.parent / "nvidia_pytriton.libs"
    (HOME / "lib").mkdir(exist_ok=True)
    for name, prefix in LIBS.items():
        found = sorted(libs_dir.glob(f"{prefix}*"))
        if not found:
            raise ServerError(f"{libs_dir} has no {prefix}* library for perf_analyzer")
        link = HOME / "lib" / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(found[0])
    return binary()


def write_input_data(path: Path, user_ids: np.ndarray) -> Path:
    """``--input-data`` file: one ``[1, 1]`` ``user_id`` tensor per request (INT64, or BYTES for
    string ids), in this order."""
    strings = np.asarray(user_ids).dtype == object
    data = [{C.INPUT_USER_ID: {"content": [str(u) if strings else int(u)], "shape": [1]}} for u in user_ids]
    path.write_text(json.dumps({"data": data}))
    return path


def command(
    url: str, protocol: str, input_data: Path, concurrency: int, report: Path, measurement_ms: int = 4000,
    stability: int = 50, model: str = C.MODEL_NAME,
) -> list:
    """perf_analyzer command line for one concurrency level (README shows the same)."""
    return [
        str(binary()),
        "-m", model,
        "-u", url,
        "-i", protocol,
        "-b", "1",
        "--input-data", str(input_data),
        "--concurrency-range", f"{concurrency}:{concurrency}",
        "--measurement-interval", str(measurement_ms),
        "--stability-percentage", str(stability),
        "--max-trials", "20",
        "--percentile", "99",
        "-f", str(report),
    ]


def run(url: str, protocol: str, input_data: Path, concurrency: int, report: Path, measurement_ms: int = 4000,
        stability: int = 50, model: str = C.MODEL_NAME, timeout: float = 300) -> dict:
    """Run one level; returns throughput and latency percentiles (ms) from perf_analyzer's CSV.

    On 2 shared cores, windows of 4 s with a 50% stability band are needed for a result.

    Raises:
        ServerError: if perf_analyzer is not installed or fails (with its last output).
    """
    import csv
    import os

    if not binary().exists():
        raise ServerError("perf_analyzer is not installed: run `make setup`")
    env = {**os.environ, "LD_LIBRARY_PATH": library_path()}
    cmd = command(url, protocol, input_data, concurrency, report, measurement_ms, stability, model)
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if result.returncode != 0 or not report.exists():
        raise ServerError(f"perf_analyzer failed: {(result.stdout + result.stderr).strip()[-400:]}")
    row = next(csv.DictReader(report.open()))
    return {
        "concurrency": concurrency,
        "rps": float(row["Inferences/Second"]),
        **{f"p{p}_ms": int(row[f"p{p} latency"]) / 1000 for p in (50, 90, 99)},
    }


if __name__ == "__main__":
    if sys.argv[1:] == ["install"]:
        print(install())
    elif len(sys.argv) == 4 and sys.argv[1] == "input":
        from build_ensemble.loadtest.harness import UserIds

        print(write_input_data(Path(sys.argv[3]), UserIds(sys.argv[2]).sample(1000)))
    else:
        sys.exit("usage: python -m build_ensemble.loadtest.perf_analyzer install | input BUILD FILE")
