"""benchmarks/gpu.sh, the script a lent GPU runs, works end to end: here on the CPU with --smoke."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_script_smoke_runs_the_nifr_preset_on_a_suite_scene_and_writes_its_figures(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "SCENE": "room"}
    run = subprocess.run(
        [str(ROOT / "benchmarks" / "gpu.sh"), "--smoke", str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    doc = json.loads((tmp_path / "bench" / "results.json").read_text())
    scene = doc["scenes"]["room"]
    assert scene["method_name"] == "nifr" and scene["train_minutes"] > 0 and scene["queries"] == 1
    assert {"initial", "nifr", "photometric", "structure"} <= set(scene["methods"])
    summary = (tmp_path / "gpu.md").read_text()
    assert doc["machine"] in summary and "| nifr |" in summary
