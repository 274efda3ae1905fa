"""ns-nifr-bench: every localisation method on the same queries and initial poses, in one process.

Prints one rich table (saved as Markdown and JSON): median errors, recalls at the DESIGN
thresholds, failures, queries made worse without a flag and flagged queries that were correct,
time per query and peak memory of each method (see ``nifr_ns.benchmark``); the same per query
grade when the queries come from ``ns-nifr-synth``; the feature quality of the model (encoder vs
rendered features at the true pose, held-out PSNR); with ``--sweep`` the convergence basin of
each method as a PNG. With ``--suite``, all of it for each scene of a scene suite against its own
model, and the tables pooled over the suite, per grade and per scene.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Dict, List, Literal, Optional, Tuple

import numpy as np
import torch
import tyro
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from nifr_ns.benchmark import ALL_METHODS, USES_INITIAL_POSE, HarnessConfig, Method
from nifr_ns.metrics import DEFAULT_THRESHOLDS, threshold_label
from nifr_ns.queries import QueryFiles

CONSOLE = Console()
DEFAULT_METHODS: Tuple[Method, ...] = tuple(m for m in ALL_METHODS if m != "nifr render-compare")


@dataclass
class BenchCommand:
    """Benchmark a trained nifr model against its peers on a query set with ground truth, or every
    scene of a suite (ns-nifr-synth --suite) against its own model, with tables pooled over the suite."""

    output: Path
    """Folder for results.md, results.json, errors.png and basin.png (overwritten); with --suite, one
    such folder per scene below it and the suite's tables in it."""
    load_config: Optional[Path] = None
    """config.yml of a trained nifr model (not with --suite)."""
    source: Annotated[QueryFiles, tyro.conf.OmitArgPrefixes] = field(default_factory=QueryFiles)
    """The queries, with ground truth (not with --suite)."""
    suite: Optional[Path] = None
    """A scene suite written by ns-nifr-synth --suite: each scene's queries are benchmarked against
    that scene's model (--models)."""
    scenes: Tuple[str, ...] = ()
    """--suite: only these scenes (default: all of the suite's)."""
    models: Optional[Path] = None
    """--suite: folder of the scenes' models, MODELS/<scene>/<method>/<timestamp>/config.yml (the
    newest is used); a scene without one is trained there first. Default: OUTPUT/runs."""
    preset: Literal["nifr-small", "nifr"] = "nifr-small"
    """--suite: the method that trains missing models (nifr needs a GPU to be quick)."""
    iterations: Optional[int] = None
    """--suite: training iterations of missing models (None: the preset's; its schedules follow)."""
    methods: Tuple[Method, ...] = DEFAULT_METHODS
    """Methods to run (nifr render-compare is slow on a CPU: add it explicitly)."""
    harness: HarnessConfig = field(default_factory=HarnessConfig)
    thresholds: Tuple[Tuple[float, float], ...] = DEFAULT_THRESHOLDS
    """Recall thresholds as (translation, degrees) pairs."""
    scene_json: Optional[Path] = None
    """scene.json of an ns-nifr-synth scene, for the per-grade tables; default: found beside the queries."""
    sweep: bool = False
    """Also refine from growing initial errors and plot success rate against them (basin.png)."""
    sweep_levels: Tuple[Tuple[float, float], ...] = ((0.02, 0.8), (0.05, 2.0), (0.1, 4.0), (0.2, 8.0), (0.4, 16.0))
    """Initial errors of the sweep as (translation, degrees) pairs."""
    sweep_success: Tuple[float, float] = (0.05, 5.0)
    """A sweep run succeeds when its error is within this (translation, degrees); a flagged query
    whose reached pose is within it counts as correct but flagged."""
    seed: int = 0
    """Seed of the sweep's perturbation directions."""


def main(command: BenchCommand) -> Dict:
    """Runs the benchmark; returns the results document (also written to results.json)."""
    if command.suite is not None:
        return run_suite(command)
    if command.load_config is None:
        raise ValueError("--load-config needed (or a scene suite with --suite)")
    return bench_model(command)


def bench_model(command: BenchCommand, extra: Optional[Dict] = None) -> Dict:
    """Every method on one model's queries; writes and returns its results document."""
    from nifr_ns.benchmark import Harness, run_method, summarize
    from nifr_ns.metrics import cumulative_error_plot, metrics_table
    from nifr_ns.pipeline import load_pipeline
    from nifr_ns.scripts.refine import model_transform

    query_set = command.source.load(command.load_config, need_ground_truth=True)
    queries = query_set.queries
    with CONSOLE.status("Loading the model"):
        config, pipeline = load_pipeline(command.load_config, test_mode="val")
    harness = Harness(pipeline, model_transform(config), command.harness)
    gt = np.stack([q.T_cw_gt for q in queries])
    inits = [q.T_cw_file for q in queries]
    names = [q.name for q in queries]
    quality = feature_quality(harness, queries, pipeline)
    before, grid = render_milliseconds(harness, queries[0])

    runs = {}
    with _progress() as progress:
        for method in command.methods:
            task = progress.add_task(method, total=len(queries))
            runs[method] = run_method(harness, method, queries, inits, lambda: progress.advance(task))
    render_ms = [before, render_milliseconds(harness, queries[0])[0]]
    correct = command.sweep_success
    rows = {m: run.row(names, gt, inits, command.thresholds, correct) for m, run in runs.items()}
    scene_json = command.scene_json or (find_scene_json(command.source.queries) if command.source.queries else None)
    grades = query_grades(scene_json, names)
    records = {m: [{**r, "grade": grades[r["name"]]} for r in run.records(names, gt, inits)] for m, run in runs.items()}
    by_grade = {
        grade: {m: summarize([r for r in rs if r["grade"] == grade], command.thresholds, correct) for m, rs in records.items()}
        for grade in dict.fromkeys(grades.values())
    }  # fmt: skip

    sweep = run_sweep(command, harness, queries, gt) if command.sweep else None

    command.output.mkdir(parents=True, exist_ok=True)
    device = str(harness.refiners["features"].device)
    title = f"{len(queries)} queries, {config.method_name}, {machine(device)}"
    CONSOLE.print(metrics_table(rows, title, CONSOLE.width))
    for grade, grade_rows in by_grade.items():
        CONSOLE.print(metrics_table(grade_rows, f"grade: {grade} ({int(next(iter(grade_rows.values()))['count'])} queries)", CONSOLE.width))
    CONSOLE.print("feature quality: " + ", ".join(f"{k} {v:.3f}" for k, v in quality.items()))
    CONSOLE.print("map preparation (not in the per-query times): "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in harness.map_seconds.items()))  # fmt: skip
    CONSOLE.print(f"machine speed: {speed_line(render_ms, grid)}")
    doc = {
        "queries": len(queries),
        "model": str(command.load_config),
        "method_name": config.method_name,
        "machine": machine(device),
        **(extra or {}),
        "quality": quality,
        "map_seconds": harness.map_seconds,
        "render_ms": render_ms,
        "render_grid": grid,
        "thresholds": [list(t) for t in command.thresholds],
        "methods": rows,
        "grades": by_grade,
        "sweep": sweep,
        "records": records,
    }
    (command.output / "results.json").write_text(json.dumps(doc, indent=2))
    (command.output / "results.md").write_text(results_markdown(doc, title))
    cumulative_error_plot({m: run.errors(gt) for m, run in runs.items()}, command.output / "errors.png")
    if sweep is not None:
        basin_plot(sweep, command.output / "basin.png")
    return doc


def run_suite(command: BenchCommand) -> Dict:
    """Each scene of the suite against its own model (trained first where there is none), then the
    tables pooled over the scenes: per grade, per scene and overall (results.json, results.md)."""
    from nifr_ns.benchmark import summarize
    from nifr_ns.metrics import metrics_table

    suite_json = command.suite / "suite.json"
    if not suite_json.is_file():
        raise ValueError(f"{suite_json}: not found; write a suite with ns-nifr-synth --suite {command.suite}")
    suite = json.loads(suite_json.read_text())
    unknown = [s for s in command.scenes if s not in suite["scenes"]]
    if unknown:
        raise ValueError(f"{suite_json}: no scene {', '.join(unknown)}; it has {', '.join(suite['scenes'])}")
    models = command.models or command.output / "runs"
    scenes = {}
    for scene in command.scenes or suite["scenes"]:
        config_path, train_minutes = newest_model(models / scene), None
        if config_path is None:
            config_path, train_minutes = train_model(command.suite / scene, models, command.preset, command.iterations)
        q = command.suite / scene / "queries"
        source = QueryFiles(queries=q / "init.txt", ground_truth=q / "gt.txt", intrinsics=q / "intrinsics.txt",
                            max_queries=command.source.max_queries)
        one = replace(command, suite=None, load_config=config_path, source=source, output=command.output / scene,
                      scene_json=command.suite / scene / "scene.json", sweep=False)  # fmt: skip
        CONSOLE.rule(f"scene {scene}")
        scenes[scene] = bench_model(one, {"scene": scene, "train_minutes": train_minutes})

    correct = command.sweep_success
    pooled_records = {m: [r for doc in scenes.values() for r in doc["records"][m]] for m in command.methods}
    grades = list(dict.fromkeys(g for doc in scenes.values() for g in doc["grades"]))
    doc = {
        "suite": str(command.suite),
        "scenes": {name: {k: v for k, v in d.items() if k not in ("records", "sweep")} for name, d in scenes.items()},
        "grades_order": grades,
        "methods": {m: summarize(rs, command.thresholds, correct) for m, rs in pooled_records.items()},
        "grades": {
            g: {m: summarize([r for r in rs if r["grade"] == g], command.thresholds, correct) for m, rs in pooled_records.items()}
            for g in grades
        },
        "machine": next(iter(scenes.values()))["machine"],
        "thresholds": [list(t) for t in command.thresholds],
    }  # fmt: skip
    command.output.mkdir(parents=True, exist_ok=True)
    title = f"suite: {len(scenes)} scenes, {len(pooled_records[command.methods[0]])} queries, {doc['machine']}"
    CONSOLE.rule("scene suite")
    CONSOLE.print(overview_table(doc, "nifr" if "nifr" in command.methods else command.methods[0]))
    CONSOLE.print(metrics_table(doc["methods"], f"{title}, pooled", CONSOLE.width))
    (command.output / "results.json").write_text(json.dumps(doc, indent=2))
    (command.output / "results.md").write_text(suite_markdown(doc, title))
    return doc


def newest_model(folder: Path) -> Optional[Path]:
    """The newest config.yml of a training run below ``folder`` (ns-train's <method>/<timestamp>/), if any."""
    found = sorted(folder.glob("*/*/config.yml"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    return found[-1] if found else None


def train_model(data: Path, models: Path, preset: str, iterations: Optional[int]) -> Tuple[Path, float]:
    """Trains ``preset`` on the scene at ``data`` into ``models``; its config.yml and the minutes it took."""
    from nifr_ns.method_configs import nifr_config, nifr_small_config
    from nifr_ns.pipeline import train

    config = nifr_small_config() if preset == "nifr-small" else nifr_config()
    config.pipeline.datamanager.data = data
    config.output_dir = models
    if iterations is not None:
        config.set_iterations(iterations)
    if not torch.cuda.is_available():
        config.machine.device_type = "cpu"
        config.mixed_precision = False
    start = time.perf_counter()
    path = train(config)
    return path, (time.perf_counter() - start) / 60


def overview(doc: Dict, method: str) -> Tuple[str, List[str], List[List[str]]]:
    """``method`` on every scene and grade of a suite document, pooled last: a title, the header and
    rows of cells "recall at 5 cm / 5° / median translation"."""
    recall = next(k for k in doc["methods"][method] if k.startswith("recall") and k.endswith("5cm/5°"))
    order = doc["grades_order"]
    rows = [
        [name, *(_cell(scene_doc["grades"].get(g, {}).get(method), recall) for g in order),
         _cell(scene_doc["methods"][method], recall)]
        for name, scene_doc in doc["scenes"].items()
    ]  # fmt: skip
    rows.append(["pooled", *(_cell(doc["grades"][g][method], recall) for g in order), _cell(doc["methods"][method], recall)])
    return f"{method}: {recall} / median translation, per scene and grade", ["scene", *order, "all"], rows


def overview_table(doc: Dict, method: str) -> Table:
    """:func:`overview` as a rich table."""
    title, header, rows = overview(doc, method)
    table = Table(title=title)
    for i, column in enumerate(header):
        table.add_column(column, justify="left" if i == 0 else "right", style="bold" if i == 0 else None)
    for row in rows:
        table.add_row(*row)
    return table


def _cell(row: Optional[Dict], recall: str) -> str:
    if not row:
        return "-"
    return f"{100 * row[recall]:.0f}% / {100 * row['median_trans']:.1f} cm"


def suite_markdown(doc: Dict, title: str) -> str:
    """The suite's results.md: the overview per method, then pooled, per-grade and per-scene tables."""
    from nifr_ns.metrics import metrics_markdown

    parts = [f"## {title}\n"]
    for method in doc["methods"]:
        title, header, rows = overview(doc, method)
        parts += [f"\n### {title}\n\n| " + " | ".join(header) + " |\n" + "|---" * len(header) + "|\n"]
        parts += ["".join("| " + " | ".join(row) + " |\n" for row in rows)]
    parts += ["\n### Pooled over the suite\n\n", metrics_markdown(doc["methods"])]
    for grade, rows in doc["grades"].items():
        parts += [f"\n### Grade {grade}, pooled over the scenes\n\n", metrics_markdown(rows)]
    for name, scene_doc in doc["scenes"].items():
        quality = ", ".join(f"{k} {v:.3f}" for k, v in scene_doc["quality"].items())
        trained = f", trained here in {scene_doc['train_minutes']:.1f} min" if scene_doc.get("train_minutes") else ""
        parts += [f"\n### Scene {name} (`{scene_doc['model']}`{trained}; {quality})\n\n", metrics_markdown(scene_doc["methods"])]
    return "".join(parts)


def feature_quality(harness, queries, pipeline) -> Dict[str, float]:
    """Encoder vs rendered features at each query's true pose (1 and 3 px, at the size queries are
    refined at), held-out PSNR and, with depth, the held-out views' median relative depth error."""
    from nifr_ns.metrics import match_accuracy

    refiner = harness.refiners["features"]
    matches = []
    for q in queries:
        image, intrinsics = refiner.working(q.load_image(), q.intrinsics)
        fine = refiner.encode_features(image)[-1]
        rendered = refiner.render(refiner.to_nerfstudio(q.T_cw_gt).to(refiner.device), intrinsics, 1).feature_image
        matches.append(match_accuracy(fine, rendered))
    quality = {key: float(np.mean([m[key] for m in matches])) for key in matches[0]}
    if not hasattr(pipeline.datamanager, "fixed_indices_eval_dataloader"):  # no held-out views
        return quality
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
    intrinsics = refiner.working(query.load_image(), query.intrinsics)[1]
    height, width = refiner.render(T, intrinsics, stride).valid.shape  # warm-up: the first pass allocates
    times = []
    for _ in range(repeats):
        synchronize(refiner.device)
        start = time.perf_counter()
        refiner.render(T, intrinsics, stride)
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
    from nifr_ns.pipeline import NotANifrModelError
    from nifr_ns.pose_io import PoseFileError
    from nifr_ns.queries import QueryError

    command = tyro.cli(BenchCommand)
    try:
        main(command)
    except (PoseFileError, QueryError, NotANifrModelError, FileNotFoundError, ValueError) as error:
        CONSOLE.print(f"[bold red]Error:[/bold red] {error}", soft_wrap=True)
        sys.exit(2)
    sys.exit(0)


if __name__ == "__main__":
    entrypoint()
