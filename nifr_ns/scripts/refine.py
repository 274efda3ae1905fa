"""ns-nifr-refine: refine the camera poses of query images against a trained nifr model."""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Dict, List, Tuple

import numpy as np
import tyro
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from nifr_ns.metrics import DEFAULT_THRESHOLDS
from nifr_ns.queries import InitMode, QueryFiles
from nifr_ns.refinement import RefineConfig

CONSOLE = Console()


@dataclass
class RefineCommand:
    """Refine query poses: writes refined poses (in the form they came in), a JSON report and,
    with ground truth, the metrics table and plots."""

    load_config: Path
    """config.yml of a trained nifr model (from ns-train nifr / nifr-small)."""
    output: Path
    """Folder for the results; must be new or empty unless --overwrite."""
    source: Annotated[QueryFiles, tyro.conf.OmitArgPrefixes] = field(default_factory=QueryFiles)
    """The queries: pose files or a benchmark split."""
    init: InitMode = "file"
    """file: the poses in the queries file; retrieval: nearest training views by global descriptor;
    perturb: the ground truth moved by --rot-deg and --trans (benchmarks)."""
    rot_deg: float = 5.0
    """--init perturb: rotation error in degrees."""
    trans: float = 0.2
    """--init perturb: translation error in scene units (metres)."""
    seed: int = 0
    """--init perturb: seed of the perturbation directions."""
    retrieval_candidates: int = 3
    """--init retrieval: how many nearest training views are refined (the best is kept)."""
    refine: RefineConfig = field(default_factory=RefineConfig)
    thresholds: Tuple[Tuple[float, float], ...] = DEFAULT_THRESHOLDS
    """Recall thresholds as (translation, degrees) pairs."""
    figures: int = 4
    """Queries shown as PNG (query, its features, features rendered at the initial and refined poses)."""
    overwrite: bool = False
    """Write into a non-empty output folder."""


def main(command: RefineCommand) -> int:
    """Runs the command; returns the exit status (0 ok, 2 bad input)."""
    from nifr_ns.pipeline import NotANifrModelError, load_pipeline
    from nifr_ns.pose_io import PoseFileError
    from nifr_ns.queries import QueryError, perturbed_poses
    from nifr_ns.refinement import PoseRefiner, Retrieval

    try:
        if command.output.exists() and any(command.output.iterdir()) and not command.overwrite:
            raise QueryError(f"{command.output}: not empty (use --overwrite)")
        query_set = command.source.load(command.load_config, need_poses=command.init == "file")
        inits: List[List[np.ndarray]] = [[q.T_cw_file] for q in query_set.queries]
        if command.init == "perturb":
            inits = [[T] for T in perturbed_poses(query_set, command.rot_deg, command.trans, command.seed)]
        with CONSOLE.status("Loading the model"):
            config, pipeline = load_pipeline(command.load_config, "test" if command.init == "retrieval" else "inference")
    except (PoseFileError, QueryError, NotANifrModelError, FileNotFoundError) as error:
        CONSOLE.print(f"[bold red]Error:[/bold red] {error}", soft_wrap=True)
        return 2

    transform = model_transform(config)
    try:
        refiner = PoseRefiner(pipeline, transform, command.refine)
    except ValueError as error:  # refinement settings that do not fit this model
        CONSOLE.print(f"[bold red]Error:[/bold red] {error}", soft_wrap=True)
        return 2
    retrieval = Retrieval(refiner, pipeline.datamanager.train_dataset) if command.init == "retrieval" else None
    results = []
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=CONSOLE
    ) as progress:
        task = progress.add_task(f"Refining ({command.refine.mode})", total=len(query_set.queries))
        for query, init in zip(query_set.queries, inits):
            image = query.load_image()
            if retrieval is not None:
                init = retrieval.nearest(refiner.encode_features(image)[0], command.retrieval_candidates)
            results.append(refiner.refine(query.name, image, query.intrinsics, init))
            progress.advance(task)

    write_outputs(command, query_set, results, refiner)
    return 0


def model_transform(config) -> "DataparserTransform":
    """The model's map from the user's world frame to nerfstudio's (dataparser_transforms.json)."""
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    from nifr_ns.pose_io import DataparserTransform

    path = config.get_base_dir() / "dataparser_transforms.json"
    data = config.pipeline.datamanager.data
    # Only nerfstudio's own format has an applied_transform in its data; the benchmark
    # dataparsers' transform starts from the dataset's own frame.
    if not isinstance(config.pipeline.datamanager.dataparser, NerfstudioDataParserConfig):
        data = None
    return DataparserTransform.load(path, data=data if data is not None and Path(data).exists() else None)


def write_outputs(command: RefineCommand, query_set, results, refiner) -> None:
    """Refined poses, report.json and, with ground truth, metrics (table, Markdown, JSON) and PNGs."""
    from nifr_ns.benchmark import CORRECT
    from nifr_ns.geometry import pose_errors
    from nifr_ns.metrics import cumulative_error_plot, metrics_markdown, metrics_table, pose_metrics
    from nifr_ns.pose_io import write_poses

    out = command.output
    out.mkdir(parents=True, exist_ok=True)
    refined = query_set.poses.with_poses({r.name: r.T_cw for r in results})
    if len(results) < len(refined):
        refined.images = [refined.by_name(r.name) for r in results]
    poses_path = out / ("poses.json" if refined.form == "transforms" else "poses.txt")
    write_poses(refined, poses_path, intrinsics=out / "intrinsics.txt" if refined.form == "hloc" else None)

    report: Dict = {"mode": command.refine.mode, "init": command.init, "queries": [r.report() for r in results]}
    if query_set.has_ground_truth:
        gt = np.stack([q.T_cw_gt for q in query_set.queries[: len(results)]])
        before = pose_errors(np.stack([r.T_cw_init for r in results]), gt)
        after = pose_errors(np.stack([r.T_cw for r in results]), gt)
        for entry, t0, r0, t1, r1 in zip(report["queries"], *before, *after):
            entry.update(initial_trans_err=float(t0), initial_rot_err=float(r0), trans_err=float(t1), rot_err=float(r1))
        refined = f"nifr ({command.refine.mode})"
        rows = {"initial": pose_metrics(*before, command.thresholds), refined: pose_metrics(*after, command.thresholds)}
        flagged = np.array([not r.improved for r in results])
        reached = pose_errors(np.stack([r.T_cw_refined for r in results]), gt)
        correct = (reached[0] <= CORRECT[0]) & (reached[1] <= CORRECT[1])
        rows[refined].update(
            failures=float(flagged.sum()),
            worse_unflagged=float(np.sum((after[0] > before[0] + 1e-9) & ~flagged)),
            correct_flagged=float(np.sum(flagged & correct)),
            time_s=float(np.mean([r.seconds for r in results])),
        )
        report["metrics"] = rows
        CONSOLE.print(metrics_table(rows, f"{len(results)} queries", CONSOLE.width))
        (out / "metrics.md").write_text(metrics_markdown(rows))
        cumulative_error_plot({"initial": before, "refined": after}, out / "errors.png")
        write_figures(out, query_set, results, refiner, command.figures)
    flags = Counter(r.flag for r in results if not r.improved)
    flagged = sum(flags.values())
    restarted = sum(r.restarted for r in results)
    report["summary"] = {
        "queries": len(results),
        "flagged": flagged,
        "restarted": restarted,
        "flags": dict(flags),
        "mean_seconds": float(np.mean([r.seconds for r in results])),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    reasons = "".join(f"; {count} {flag}" for flag, count in flags.most_common())
    CONSOLE.print(
        f"Refined {len(results)} queries ({restarted} restarted; {flagged} flagged, kept their initial pose{reasons})"
        f" -> {out}"
    )


def write_figures(out: Path, query_set, results, refiner, count: int) -> None:
    """query | its features | features rendered at the initial pose | at the refined pose."""
    import imageio.v2 as imageio

    pca = refiner.model.feature_pca
    for query, result in list(zip(query_set.queries, results))[:count]:
        image, intrinsics = refiner.working(query.load_image(), query.intrinsics)
        fine = refiner.encode_features(image)[-1]
        panels = [image.numpy()]
        panels.append(pca(fine.permute(1, 2, 0)).cpu().numpy())
        for T in (result.T_cw_init, result.T_cw):
            rendered = refiner.render(refiner.to_nerfstudio(T).to(refiner.device), intrinsics, 1).feature_image
            panels.append(pca(rendered).cpu().numpy())
        h = min(p.shape[0] for p in panels)
        strip = np.concatenate([p[:h] for p in panels], axis=1)
        # the whole name, so that seq1/frame00001 and seq2/frame00001 do not overwrite each other
        stem = str(Path(query.name).with_suffix("")).replace("/", "_").replace("\\", "_")
        imageio.imwrite(out / f"{stem}.png", (np.clip(strip, 0, 1) * 255).astype(np.uint8))


def entrypoint() -> None:
    sys.exit(main(tyro.cli(RefineCommand)))


if __name__ == "__main__":
    entrypoint()
