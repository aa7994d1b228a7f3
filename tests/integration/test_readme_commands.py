"""The README's feast and perf_analyzer commands, run as written in a folder laid out like a
fresh clone after a build (only the server's port and perf_analyzer's concurrency range are
changed: the test server listens on a free port, and two levels keep the run short)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _block_with(text: str, needle: str) -> str:
    """The ```bash block of the README that holds ``needle``, continuation lines joined."""
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        if needle in block:
            return block.replace("\\\n", " ")
    raise AssertionError(f"no README block holds {needle!r}")


def _clone_like(tmp_path: Path, build) -> Path:
    """``.venv`` (this environment), ``artifacts`` and a copy of ``feature_repo``, as after a build."""
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    (tmp_path / "artifacts").symlink_to(build.out)
    shutil.copytree(build.feature_repo, tmp_path / "feature_repo")
    return tmp_path


def test_the_feast_commands_run_as_written(movielens_build, tmp_path):
    folder = _clone_like(tmp_path, movielens_build)
    line = next(l for l in _block_with((ROOT / "README.md").read_text(), "materialize-incremental").splitlines() if l)
    done = subprocess.run(["bash", "-c", line], cwd=folder, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    out = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout)  # feast colours its output
    assert "user_features" in out and "item_features" in out
    assert "Materializing 2 feature views" in out
    start, end = re.findall(r"from (\S+ \S+) to (\S+ \S+):", out)[0]
    assert start < end, out  # it starts where the build's own materialization ended, before now


def test_the_perf_analyzer_commands_run_as_written(movielens_build, served, tmp_path):
    folder = _clone_like(tmp_path, movielens_build)
    block = _block_with((ROOT / "README.md").read_text(), "perf_analyzer input")
    block = block.replace("127.0.0.1:8001", served.grpc_url).replace("--concurrency-range 1:8:1", "--concurrency-range 1:2:1")
    done = subprocess.run(["bash", "-ec", block], cwd=folder, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert (folder / "perf_analyzer_input.json").exists()
    assert re.search(r"Concurrency: 2, throughput: [\d.]+ infer/sec", done.stdout), done.stdout[-2000:]
