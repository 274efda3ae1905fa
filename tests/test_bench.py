"""ns-nifr-bench on the tiny scene: every method on the same queries, one table, JSON that reads back."""

from __future__ import annotations

import json
from pathlib import Path

from nifr_ns.scripts.bench import BenchCommand, main


def test_bench_runs_every_method_and_writes_tables(trained_tiny: Path, tiny_scene, tmp_path: Path) -> None:
    q = tiny_scene.out / "queries"
    out = tmp_path / "bench"
    doc = main(BenchCommand(load_config=trained_tiny, queries=q / "init.json", ground_truth=q / "gt.json",
                            output=out, max_queries=2))
    assert set(doc["methods"]) == {"initial", "features", "photometric"}
    assert json.loads((out / "results.json").read_text()) == doc
    assert 0.0 <= doc["quality"]["match_3px"] <= 1.0
    for mode in ("features", "photometric"):
        assert doc["methods"][mode]["time_s"] > 0 and "recall 5cm/5°" in doc["methods"][mode]
    assert "| features |" in (out / "results.md").read_text()
    assert (out / "errors.png").stat().st_size > 0
