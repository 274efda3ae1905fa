"""ns-nifr-bench on the tiny scene: every method on the same queries, one table, JSON that reads back,
per-grade tables and the convergence-basin sweep."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from nifr_ns.benchmark import Harness, HarnessConfig, PeakMemory
from nifr_ns.queries import QueryFiles, load_query_set
from nifr_ns.refinement import RefineConfig
from nifr_ns.scripts.bench import DEFAULT_METHODS, BenchCommand, main, query_grades


def test_bench_runs_every_method_with_a_sweep_and_writes_tables(trained_tiny: Path, tiny_scene, tmp_path: Path) -> None:
    q = tiny_scene.out / "queries"
    out = tmp_path / "bench"
    levels = ((0.02, 1.0), (0.3, 10.0))
    source = QueryFiles(q / "init.json", ground_truth=q / "gt.json", max_queries=2)
    doc = main(BenchCommand(load_config=trained_tiny, source=source, output=out, sweep=True, sweep_levels=levels))
    assert list(doc["methods"]) == list(DEFAULT_METHODS)
    assert json.loads((out / "results.json").read_text()) == doc
    for method, row in doc["methods"].items():
        assert row["count"] == 2 and 0 <= row["failures"] <= 2 and row["peak_mem_mb"] > 0, method
        assert row["time_mean_s"] >= 0 and "recall 2cm/2°" in row
    assert doc["methods"]["initial"]["failures"] == 0
    # the initial row is the queries file's error
    init_err = np.median([r["trans"] for r in tiny_scene.metadata["queries"][:2]])
    assert abs(doc["methods"]["initial"]["median_trans"] - init_err) < 1e-6
    # one curve per method, one point per level, rates in [0, 1]; the initial poses at 2 cm/1°
    # are within the 5 cm/5° success threshold, at 30 cm/10° they are not
    sweep = doc["sweep"]
    assert sweep["levels"] == [list(level) for level in levels]
    assert set(sweep["curves"]) == set(DEFAULT_METHODS)
    assert all(len(c) == 2 and all(0 <= r <= 1 for r in c) for c in sweep["curves"].values())
    assert sweep["curves"]["initial"] == [1.0, 0.0]
    # the tiny scene's queries all have the default grade
    assert list(doc["grades"]) == ["strong"] and doc["grades"]["strong"]["nifr"]["count"] == 2
    # the machine's speed, before and after the methods: a render at the judge's stride
    stride = RefineConfig().polish.judging_stride
    camera = load_query_set(q / "init.json").queries[0].intrinsics
    assert doc["render_grid"] == f"{round(camera.width / stride)}x{round(camera.height / stride)}"
    assert len(doc["render_ms"]) == 2 and all(ms > 0 for ms in doc["render_ms"])
    text = (out / "results.md").read_text()
    assert "| structure+nifr |" in text and "Convergence basin" in text and "grade: strong" in text
    assert f"Machine speed: one {doc['render_grid']} render took" in text
    for png in ("errors.png", "basin.png"):
        assert (out / png).stat().st_size > 0


def test_methods_run_in_eval_mode_whatever_mode_the_pipeline_was_left_in(trained_tiny: Path, tiny_scene) -> None:
    """nerfstudio's get_average_eval_image_metrics ends in training mode (encoder augmentation,
    sampler jitter); the bench calls it before the methods, which must not see that mode."""
    from nifr_ns.pipeline import load_pipeline
    from nifr_ns.queries import QueryFiles, load_query_set
    from nifr_ns.scripts.refine import model_transform

    q = tiny_scene.out / "queries"
    (query, *_) = load_query_set(q / "init.json", None, q / "gt.json", None, limit=1).queries
    config, pipeline = load_pipeline(trained_tiny, test_mode="val")
    harness = Harness(pipeline, model_transform(config), HarnessConfig())
    image = query.load_image()
    for method in ("nifr", "structure"):
        poses = []
        for _ in range(2):
            pipeline.train()
            poses.append(harness.run(method, query, image, query.T_cw_file).T_cw)
            assert not pipeline.model.training and not pipeline.model.encoder.training
        np.testing.assert_array_equal(poses[0], poses[1], err_msg=method)


def test_query_grades_come_from_scene_json(tmp_path: Path) -> None:
    scene = tmp_path / "scene.json"
    scene.write_text(json.dumps({"appearance": "mild", "queries": [
        {"name": "images/a.png", "grade": "none"},
        {"name": "images/b.png", "occluders": [{"kind": "ball"}]},  # written before grades existed
    ]}))  # fmt: skip
    assert query_grades(scene, ["images/a.png", "images/b.png", "images/c.png"]) == {
        "images/a.png": "none", "images/b.png": "mild+occluders", "images/c.png": "all"
    }  # fmt: skip
    assert query_grades(None, ["x"]) == {"x": "all"}


def test_peak_memory_sees_an_allocation() -> None:
    import time

    import psutil
    import torch

    resident_before = psutil.Process().memory_info().rss / 2**20
    with PeakMemory(torch.device("cpu")) as during:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        block += 1
        time.sleep(0.05)
    assert during.peak_mb > resident_before + 30


def test_the_suite_bench_trains_missing_models_and_pools_tables_per_scene_and_grade(tmp_path: Path) -> None:
    from nifr_ns.synth import SUITE_GRADES, SynthConfig, generate_suite

    suite, models, out = tmp_path / "suite", tmp_path / "models", tmp_path / "bench"
    generate_suite(suite, SynthConfig(preset="tiny", n_train=8, supersample=1), scenes=("room", "facade"))
    methods = ("initial", "nifr", "structure")
    doc = main(BenchCommand(output=out, suite=suite, models=models, iterations=40, methods=methods))
    assert list(doc["scenes"]) == ["room", "facade"] and doc["grades_order"] == list(SUITE_GRADES)
    for scene, scene_doc in doc["scenes"].items():
        assert scene_doc["train_minutes"] > 0 and Path(scene_doc["model"]).is_relative_to(models / scene)
        assert json.loads((out / scene / "results.json").read_text())["scene"] == scene
    for method in methods:
        pooled = doc["methods"][method]
        assert pooled["count"] == 8 and all(doc["grades"][g][method]["count"] == 2 for g in SUITE_GRADES)
        # pooled figures are the scenes' queries together, not an average of averages
        within = [s["methods"][method]["recall 5cm/5°"] * s["methods"][method]["count"] for s in doc["scenes"].values()]
        assert pooled["recall 5cm/5°"] == pytest.approx(sum(within) / 8)
        assert pooled["failures"] == sum(s["methods"][method]["failures"] for s in doc["scenes"].values())
    text = (out / "results.md").read_text()
    assert "nifr: recall 5cm/5° / median translation, per scene and grade" in text
    assert "| pooled |" in text and "Grade light, pooled over the scenes" in text and "Scene facade" in text
    # a scene whose model is there is not trained again
    again = main(BenchCommand(output=tmp_path / "again", suite=suite, models=models, scenes=("room",), methods=methods))
    assert again["scenes"]["room"]["train_minutes"] is None
    assert again["scenes"]["room"]["model"] == doc["scenes"]["room"]["model"]


@pytest.mark.parametrize(
    "case, expected",
    [("missing image", "not found at"), ("bad quaternion", "init.txt:2"), ("no ground truth", "--ground-truth needed")],
)
def test_bad_queries_stop_the_bench_in_one_line_as_they_stop_refine(trained_tiny, tiny_scene, tmp_path, capsys, monkeypatch, case, expected) -> None:
    """ns-nifr-bench reads queries through the same path as ns-nifr-refine: the same checks, one line
    naming the file, exit 2, nothing written; --image-root finds images kept elsewhere."""
    from nifr_ns.scripts import bench

    q = tmp_path / "queries"
    shutil.copytree(tiny_scene.out / "queries", q)
    (tmp_path / "photos").mkdir()
    shutil.move(q / "images", tmp_path / "photos" / "images")
    args = ["--load-config", str(trained_tiny), "--queries", str(q / "init.txt"), "--intrinsics", str(q / "intrinsics.txt"),
            "--ground-truth", str(q / "gt.txt"), "--image-root", str(tmp_path / "photos"), "--output", str(tmp_path / "out")]  # fmt: skip
    if case == "missing image":
        (tmp_path / "photos" / "images" / "query_0001.png").unlink()
    elif case == "bad quaternion":
        lines = (q / "init.txt").read_text().splitlines()
        first = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
        lines[first] = " ".join([lines[first].split()[0], "2", "0", "0", "0", *lines[first].split()[5:]])
        (q / "init.txt").write_text("\n".join(lines) + "\n")
    else:
        args = args[:6] + args[8:]
    monkeypatch.setattr(sys, "argv", ["ns-nifr-bench", *args])
    with pytest.raises(SystemExit) as exit_code:
        bench.entrypoint()
    printed = capsys.readouterr().out
    assert exit_code.value.code == 2 and expected in printed and "Traceback" not in printed, printed
    assert len(printed.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_tables_read_in_an_80_column_terminal() -> None:
    """At 80 columns the console tables keep their headers whole (the compact columns); wider, every metric."""
    from rich.console import Console

    from nifr_ns.metrics import metrics_table, pose_metrics

    errors = np.array([0.01, 0.03, 0.2]), np.array([0.5, 1.0, 6.0])
    row = {**pose_metrics(*errors), "failures": 1.0, "worse_unflagged": 0.0, "time_mean_s": 1.5}
    rows = {"nifr": row, "nifr 1 start": row, "structure+nifr": row}
    texts = {}
    for width in (80, 160):
        console = Console(width=width, record=True, force_terminal=False)
        console.print(metrics_table(rows, "3 queries", width))
        texts[width] = console.export_text()
        assert "…" not in texts[width] and max(len(line) for line in texts[width].splitlines()) <= width, texts[width]
        assert "5cm/5°" in texts[width] and "structure+nifr" in texts[width]
    assert "2cm/2°" in texts[160] and "2cm/2°" not in texts[80]
