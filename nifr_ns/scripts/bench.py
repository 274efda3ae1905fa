"""ns-nifr-bench: measure a trained model on a query set, all methods on the same queries, in one process.

Reports feature matching (encoder vs rendered features at the true pose, within 1 and 3 px),
held-out PSNR, and for the initial poses and each refinement mode (feature-metric LM,
photometric LM, render-and-compare) the median errors, recalls, time per query and peak
memory; saved as Markdown and JSON beside a cumulative-error PNG.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import tyro
from rich.console import Console

from nifr_ns.metrics import DEFAULT_THRESHOLDS
from nifr_ns.refinement import Mode, RefineConfig

CONSOLE = Console()


@dataclass
class BenchCommand:
    """Benchmark a trained nifr model on a query set with ground truth."""

    load_config: Path
    """config.yml of a trained nifr model."""
    queries: Path
    """Query poses (initial poses), either form."""
    ground_truth: Path
    """Ground-truth poses of the queries, either form."""
    output: Path
    """Folder for results.md, results.json and errors.png (overwritten)."""
    intrinsics: Optional[Path] = None
    """Intrinsics file for hloc-form queries and ground truth."""
    modes: Tuple[Mode, ...] = ("features", "photometric")
    """Refinement modes to run (render-compare is slow on a CPU: add it explicitly)."""
    refine: RefineConfig = field(default_factory=RefineConfig)
    thresholds: Tuple[Tuple[float, float], ...] = DEFAULT_THRESHOLDS
    max_queries: Optional[int] = None


def peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(command: BenchCommand) -> Dict:
    from nifr_ns.geometry import pose_errors
    from nifr_ns.metrics import cumulative_error_plot, match_accuracy, metrics_markdown, metrics_table, pose_metrics
    from nifr_ns.pipeline import load_pipeline
    from nifr_ns.queries import load_query_set
    from nifr_ns.refinement import PoseRefiner
    from nifr_ns.scripts.refine import model_transform

    query_set = load_query_set(command.queries, command.intrinsics, command.ground_truth, command.intrinsics,
                               limit=command.max_queries)
    config, pipeline = load_pipeline(command.load_config, test_mode="val")
    transform = model_transform(config)
    gt = np.stack([q.T_cw_gt for q in query_set.queries])

    refiner = PoseRefiner(pipeline, transform, command.refine)
    matches = []
    for q in query_set.queries:
        fine = refiner.encode_features(q.load_image())[-1]
        rendered = refiner.render(refiner.to_nerfstudio(q.T_cw_gt).to(refiner.device), q.intrinsics, 1).feature_image
        matches.append(match_accuracy(fine, rendered))
    quality = {key: float(np.mean([m[key] for m in matches])) for key in matches[0]}
    quality["heldout_psnr"] = float(pipeline.get_average_eval_image_metrics()["psnr"])

    rows: Dict[str, Dict[str, float]] = {}
    errors = {"initial": pose_errors(np.stack([q.T_cw_file for q in query_set.queries]), gt)}
    rows["initial"] = pose_metrics(*errors["initial"], command.thresholds)
    for mode in command.modes:
        refiner = PoseRefiner(pipeline, transform, replace(command.refine, mode=mode))
        start = time.perf_counter()
        results = [refiner.refine(q.name, q.load_image(), q.intrinsics, [q.T_cw_file]) for q in query_set.queries]
        errors[mode] = pose_errors(np.stack([r.T_cw for r in results]), gt)
        rows[mode] = pose_metrics(*errors[mode], command.thresholds)
        rows[mode]["time_s"] = (time.perf_counter() - start) / len(results)
        rows[mode]["flagged"] = float(sum(not r.improved for r in results))
        made_worse = errors[mode][0] > errors["initial"][0] + 1e-9
        rows[mode]["worse_unflagged"] = float(sum(w and r.improved for w, r in zip(made_worse, results)))
    for row in rows.values():
        row["peak_mem_mb"] = peak_memory_mb()

    command.output.mkdir(parents=True, exist_ok=True)
    title = f"{len(query_set.queries)} queries, {config.method_name}, {refiner.device}"
    CONSOLE.print(metrics_table(rows, title))
    CONSOLE.print("feature quality: " + ", ".join(f"{k} {v:.3f}" for k, v in quality.items()))
    results_doc = {"queries": len(query_set.queries), "model": str(command.load_config), "quality": quality, "methods": rows}
    (command.output / "results.json").write_text(json.dumps(results_doc, indent=2))
    (command.output / "results.md").write_text(
        f"## {title}\n\n" + metrics_markdown(rows) + "\n"
        + "| feature quality | value |\n|---|---|\n" + "".join(f"| {k} | {v:.3f} |\n" for k, v in quality.items())
    )
    cumulative_error_plot(errors, command.output / "errors.png")
    return results_doc


def entrypoint() -> None:
    main(tyro.cli(BenchCommand))
    sys.exit(0)


if __name__ == "__main__":
    entrypoint()
