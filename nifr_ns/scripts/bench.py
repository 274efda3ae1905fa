"""ns-nifr-bench: every localisation method on the same queries and initial poses, in one process.

Prints one rich table (saved as Markdown and JSON): median errors, recalls at the DESIGN
thresholds, failures, time per query and peak memory of each method (see
``nifr_ns.benchmark``); the same per appearance grade when the queries come from
``ns-nifr-synth``; the feature quality of the model (encoder vs rendered features at the
true pose, held-out PSNR); with ``--sweep`` the convergence basin of each method as a PNG.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import tyro
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from nifr_ns.benchmark import ALL_METHODS, USES_INITIAL_POSE, HarnessConfig, Method
from nifr_ns.metrics import DEFAULT_THRESHOLDS, threshold_label

CONSOLE = Console()
DEFAULT_METHODS: Tuple[Method, ...] = tuple(m for m in ALL_METHODS if m != "nifr render-compare")


@dataclass
class BenchCommand:
    """Benchmark a trained nifr model against its peers on a query set with ground truth."""

    load_config: Path
    """config.yml of a trained nifr model."""
    queries: Path
    """Query poses (the initial poses), either form."""
    ground_truth: Path
    """Ground-truth poses of the queries, either form."""
    output: Path
    """Folder for results.md, results.json, errors.png and basin.png (overwritten)."""
    intrinsics: Optional[Path] = None
    """Intrinsics file for hloc-form queries and ground truth."""
    methods: Tuple[Method, ...] = DEFAULT_METHODS
    """Methods to run (nifr render-compare is slow on a CPU: add it explicitly)."""
    harness: HarnessConfig = field(default_factory=HarnessConfig)
    thresholds: Tuple[Tuple[float, float], ...] = DEFAULT_THRESHOLDS
    """Recall thresholds as (translation, degrees) pairs."""
    max_queries: Optional[int] = None
    """Use only the first N queries."""
    scene_json: Optional[Path] = None
    """scene.json of an ns-nifr-synth scene, for the per-grade tables; default: found beside the queries."""
    sweep: bool = False
    """Also refine from growing initial errors and plot success rate against them (basin.png)."""
    sweep_levels: Tuple[Tuple[float, float], ...] = ((0.02, 0.8), (0.05, 2.0), (0.1, 4.0), (0.2, 8.0), (0.4, 16.0))
    """Initial errors of the sweep as (translation, degrees) pairs."""
    sweep_success: Tuple[float, float] = (0.05, 5.0)
    """A sweep run succeeds when its error is within this (translation, degrees)."""
    seed: int = 0
    """Seed of the sweep's perturbation directions."""


def main(command: BenchCommand) -> Dict:
    """Runs the benchmark; returns the results document (also written to results.json)."""
    from nifr_ns.benchmark import Harness, run_method
    from nifr_ns.geometry import pose_errors
    from nifr_ns.metrics import cumulative_error_plot, metrics_table, pose_metrics
    from nifr_ns.pipeline import load_pipeline
    from nifr_ns.queries import load_query_set
    from nifr_ns.scripts.refine import model_transform

    query_set = load_query_set(command.queries, command.intrinsics, command.ground_truth, command.intrinsics,
                               limit=command.max_queries)  # fmt: skip
    queries = query_set.queries
    with CONSOLE.status("Loading the model"):
        config, pipeline = load_pipeline(command.load_config, test_mode="val")
    harness = Harness(pipeline, model_transform(config), command.harness)
    gt = np.stack([q.T_cw_gt for q in queries])
    inits = [q.T_cw_file for q in queries]
    quality = feature_quality(harness, queries, pipeline)
    before, grid = render_milliseconds(harness, queries[0])

    runs = {}
    with _progress() as progress:
        for method in command.methods:
            task = progress.add_task(method, total=len(queries))
            runs[method] = run_method(harness, method, queries, inits, lambda: progress.advance(task))
    initial_trans = pose_errors(np.stack(inits), gt)[0]
    render_ms = [before, render_milliseconds(harness, queries[0])[0]]
    rows = {m: run.row(gt, command.thresholds, initial_trans) for m, run in runs.items()}

    grades = query_grades(command.scene_json or find_scene_json(command.queries), [q.name for q in queries])
    by_grade: Dict[str, Dict[str, Dict[str, float]]] = {}
    for grade in sorted(set(grades.values()), key=list(grades.values()).index):
        keep = np.array([grades[q.name] == grade for q in queries])
        by_grade[grade] = {
            m: {**pose_metrics(*[e[keep] for e in run.errors(gt)], command.thresholds),
                "failures": float(sum(o.failed for o, k in zip(run.outcomes, keep) if k))}
            for m, run in runs.items()
        }  # fmt: skip

    sweep = run_sweep(command, harness, queries, gt) if command.sweep else None

    command.output.mkdir(parents=True, exist_ok=True)
    device = str(harness.refiners["features"].device)
    title = f"{len(queries)} queries, {config.method_name}, {machine(device)}"
    CONSOLE.print(metrics_table(rows, title))
    for grade, grade_rows in by_grade.items():
        CONSOLE.print(metrics_table(grade_rows, f"appearance grade: {grade} ({int(next(iter(grade_rows.values()))['count'])} queries)"))
    CONSOLE.print("feature quality: " + ", ".join(f"{k} {v:.3f}" for k, v in quality.items()))
    CONSOLE.print("map preparation (not in the per-query times): "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in harness.map_seconds.items()))  # fmt: skip
    CONSOLE.print(f"machine speed: {speed_line(render_ms, grid)}")
    doc = {
        "queries": len(queries),
        "model": str(command.load_config),
        "method_name": config.method_name,
        "machine": machine(device),
        "quality": quality,
        "map_seconds": harness.map_seconds,
        "render_ms": render_ms,
        "render_grid": grid,
        "thresholds": [list(t) for t in command.thresholds],
        "methods": rows,
        "grades": by_grade,
        "sweep": sweep,
    }
    (command.output / "results.json").write_text(json.dumps(doc, indent=2))
    (command.output / "results.md").write_text(results_markdown(doc, title))
    cumulative_error_plot({m: run.errors(gt) for m, run in runs.items()}, command.output / "errors.png")
    if sweep is not None:
        basin_plot(sweep, command.output / "basin.png")
    return doc


def feature_quality(harness, queries, pipeline) -> Dict[str, float]:
    """Encoder vs rendered features at each query's true pose (1 and 3 px), held-out PSNR and,
    with depth, the held-out views' median relative depth error."""
    from nifr_ns.metrics import match_accuracy

    refiner = harness.refiners["features"]
    matches = []
    for q in queries:
        fine = refiner.encode_features(q.load_image())[-1]
        rendered = refiner.render(refiner.to_nerfstudio(q.T_cw_gt).to(refiner.device), q.intrinsics, 1).feature_image
        matches.append(match_accuracy(fine, rendered))
    quality = {key: float(np.mean([m[key] for m in matches])) for key in matches[0]}
    heldout = pipeline.get_average_eval_image_metrics()
    quality["heldout_psnr"] = float(heldout["psnr"])
    if "depth_rel_error" in heldout:  # datasets with depth
        quality["heldout_depth_rel_error"] = float(heldout["depth_rel_error"])
    return quality


def render_milliseconds(harness, query, repeats: int = 7) -> Tuple[float, str]:
    """The machine's speed at the time, to compare per-query times across runs of a shared or
    throttled machine: the median milliseconds of one render at the judge's stride at ``query``'s
    true pose (renders are about two thirds of a nifr query), and that grid's size."""
    harness.pipeline.eval()  # nerfstudio's evaluation leaves it training, which renders other outputs
    refiner = harness.refiners["features"]
    T = refiner.to_nerfstudio(query.T_cw_gt).to(refiner.device)
    stride = refiner.config.polish.judging_stride
    height, width = refiner.render(T, query.intrinsics, stride).valid.shape  # warm-up: the first pass allocates
    times = []
    for _ in range(repeats):
        synchronize(refiner.device)
        start = time.perf_counter()
        refiner.render(T, query.intrinsics, stride)
        synchronize(refiner.device)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times)), f"{width}x{height}"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def speed_line(render_ms: List[float], grid: str) -> str:
    """How fast the machine was during the run, for reading its times beside another run's."""
    before, after = render_ms
    return f"one {grid} render took {before:.0f} ms before the methods and {after:.0f} ms after"


def run_sweep(command: BenchCommand, harness, queries, gt: np.ndarray) -> Dict:
    """Success rate of each method from each initial error of command.sweep_levels."""
    from nifr_ns.benchmark import run_method, success_rate, sweep_inits

    levels = [list(level) for level in command.sweep_levels]
    curves: Dict[str, List[float]] = {m: [] for m in command.methods}
    with _progress() as progress:
        for i, (trans, rot_deg) in enumerate(command.sweep_levels):
            inits = sweep_inits(queries, rot_deg, trans, command.seed + i)
            for method in command.methods:
                if method not in USES_INITIAL_POSE and curves[method]:
                    curves[method].append(curves[method][-1])  # independent of the initial pose
                    continue
                task = progress.add_task(f"sweep {trans * 100:g} cm / {rot_deg:g}°: {method}", total=len(queries))
                run = run_method(harness, method, queries, inits, lambda: progress.advance(task))
                curves[method].append(success_rate(run, gt, command.sweep_success))
    return {"levels": levels, "success": list(command.sweep_success), "curves": curves}


def basin_plot(sweep: Dict, path: Path) -> None:
    """Success rate against initial error, one curve per method, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trans = [100 * t for t, _ in sweep["levels"]]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for method, rates in sweep["curves"].items():
        style = "--" if method in ("initial", "retrieval") else "-"
        ax.plot(trans, [100 * r for r in rates], style, marker="o", label=method)
    ax.set_xscale("log")
    ax.set_xticks(trans, [f"{t:g} cm\n{r:g}°" for t, (_, r) in zip(trans, sweep["levels"])])
    ax.minorticks_off()
    success = threshold_label(tuple(sweep["success"]))
    ax.set(xlabel="initial error", ylabel=f"success rate, error within {success} (%)", ylim=(-3, 103),
           title="Convergence basin")  # fmt: skip
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def results_markdown(doc: Dict, title: str) -> str:
    """results.md: the main table, the per-grade tables, feature quality and the sweep."""
    from nifr_ns.metrics import metrics_markdown

    parts = [f"## {title}\n", metrics_markdown(doc["methods"])]
    for grade, rows in doc["grades"].items():
        parts += [f"\n### Appearance grade: {grade}\n", metrics_markdown(rows)]
    parts += ["\n| feature quality | value |\n|---|---|\n"
              + "".join(f"| {k} | {v:.3f} |\n" for k, v in doc["quality"].items())]  # fmt: skip
    parts += ["\nMap preparation, not in the per-query times: "
              + ", ".join(f"{k} {v:.1f} s" for k, v in doc["map_seconds"].items()) + ".\n"]  # fmt: skip
    if "render_ms" in doc:  # results from before it was measured have none
        parts += [f"\nMachine speed: {speed_line(doc['render_ms'], doc['render_grid'])}.\n"]
    if doc["sweep"]:
        sweep = doc["sweep"]
        header = [f"{100 * t:g} cm / {r:g}°" for t, r in sweep["levels"]]
        parts += [f"\n### Convergence basin: success rate (error within {threshold_label(tuple(sweep['success']))})\n\n",
                  "| method | " + " | ".join(header) + " |\n", "|---" * (len(header) + 1) + "|\n"]  # fmt: skip
        parts += [f"| {m} | " + " | ".join(f"{100 * r:.0f}%" for r in rates) + " |\n" for m, rates in sweep["curves"].items()]
    return "".join(parts)


def find_scene_json(queries: Path) -> Optional[Path]:
    """The ns-nifr-synth scene.json of a queries file (OUT/queries/init.txt -> OUT/scene.json)."""
    for folder in (queries.parent, queries.parent.parent):
        if (folder / "scene.json").is_file():
            return folder / "scene.json"
    return None


def query_grades(scene_json: Optional[Path], names: List[str]) -> Dict[str, str]:
    """Appearance grade of each query from a synthetic scene's scene.json; 'all' when unknown."""
    records = {}
    if scene_json is not None:
        metadata = json.loads(scene_json.read_text())
        for record in metadata.get("queries", []):
            default = metadata.get("appearance", "all") + ("+occluders" if record.get("occluders") else "")
            records[record["name"]] = record.get("grade", default)
    return {name: records.get(name, "all") for name in names}


def machine(device: str) -> str:
    """The hardware the times were measured on, in words."""
    import os

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()})"


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=CONSOLE, transient=True)  # fmt: skip


def entrypoint() -> None:
    main(tyro.cli(BenchCommand))
    sys.exit(0)


if __name__ == "__main__":
    entrypoint()
