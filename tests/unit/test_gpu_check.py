"""scripts/gpu_check.py runs on a bare GPU machine: NumPy and faiss only. Here, without a GPU,
its dry run (--cpu-only) must work and it must refuse to pretend it measured a GPU."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"


def test_the_dry_run_measures_the_cpu_index_with_numpy_and_faiss_only(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, "-X", "importtime", str(SCRIPT), "--items", "3000", "--queries", "200",
                           "--nprobe", "2", "32", "--cpu-only", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert {"faiss", "numpy"} <= imported
    assert not imported & {"merlin", "tensorflow", "pandas", "build_ensemble", "nvtabular", "feast"}
    rows = json.loads(out.read_text())["rows"]
    assert [(r["device"], r["index"]) for r in rows] == [("cpu", "flat"), ("cpu", "IVF256,Flat nprobe 2"), ("cpu", "IVF256,Flat nprobe 32")]
    assert rows[0]["recall_users"] == rows[0]["recall_items"] == 1.0
    assert rows[1]["recall_items"] < rows[2]["recall_items"] and all(r["ms_1_query"] > 0 for r in rows)


def test_without_a_gpu_it_refuses_unless_told_cpu_only(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--items", "3000", "--out", str(tmp_path / "x.json")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "faiss sees no GPU" in done.stderr
    assert not (tmp_path / "x.json").exists()
