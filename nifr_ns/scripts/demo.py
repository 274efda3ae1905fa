"""ns-nifr-demo: the whole product in one go on the embedded synthetic scene, on a CPU.

synth -> train nifr-small -> evaluate held-out views -> refine the query set -> report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import tyro
from rich.console import Console
from rich.table import Table

CONSOLE = Console()


@dataclass
class DemoCommand:
    """Generate the synthetic scene, train nifr-small on it, refine its queries and report, all on the CPU."""

    output: Path = Path("demo_output")
    """Folder for the scene (output/scene), the training runs (output/runs) and the refinement (output/refine)."""
    preset: Literal["tiny", "default"] = "default"
    """Synthetic scene preset (tiny: a quick smoke run)."""
    seed: int = 0
    """Seed of the synthetic scene."""
    iterations: Optional[int] = None
    """Training iterations (the learning-rate schedules and warm-ups stretched with them); None: nifr-small's 2000."""
    depth_loss_mult: float = 0.0
    """Also learn the geometry from the scene's depth maps, as from an RGB-D capture (0: RGB alone,
    the method as published; 0.2 is what the benchmarks measure). The synthetic depth is exact."""


def main(command: DemoCommand) -> Path:
    """Runs the demo; returns the trained model's config.yml."""
    from nifr_ns.method_configs import nifr_small_config
    from nifr_ns.pipeline import load_pipeline, train
    from nifr_ns.synth import SynthConfig, generate_scene

    start = time.perf_counter()
    scene = command.output / "scene"
    with CONSOLE.status(f"Rendering the synthetic scene into {scene}"):
        generate_scene(scene, SynthConfig(preset=command.preset, seed=command.seed, overwrite=True))
    synth_seconds = time.perf_counter() - start

    config = nifr_small_config()
    config.pipeline.datamanager.data = scene
    config.output_dir = command.output / "runs"
    if command.iterations is not None:
        config.set_iterations(command.iterations)
    config.pipeline.model.depth_loss_mult = command.depth_loss_mult
    start = time.perf_counter()
    config_path = train(config)
    train_seconds = time.perf_counter() - start

    with CONSOLE.status("Evaluating held-out views"):
        _, pipeline = load_pipeline(config_path, test_mode="val")
        metrics = pipeline.get_average_eval_image_metrics()

    from nifr_ns.queries import QueryFiles
    from nifr_ns.scripts.refine import RefineCommand
    from nifr_ns.scripts.refine import main as refine

    queries = scene / "queries"
    refine(
        RefineCommand(
            load_config=config_path,
            source=QueryFiles(queries / "init.txt", intrinsics=queries / "intrinsics.txt", ground_truth=queries / "gt.txt"),
            output=command.output / "refine",
            overwrite=True,
        )
    )

    table = Table(title="nifr demo", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("scene", f"{scene} ({synth_seconds:.1f} s)")
    table.add_row("training", f"{config.max_num_iterations} iterations of nifr-small in {train_seconds / 60:.1f} min")
    table.add_row("held-out PSNR", f"{metrics['psnr']:.2f} dB")
    if "depth_rel_error" in metrics:
        table.add_row("held-out depth error", f"{100 * metrics['depth_rel_error']:.1f} % (median, relative)")
    table.add_row("config", str(config_path))
    table.add_row("refinement", f"{command.output / 'refine'} (poses, report.json, metrics.md, PNGs)")
    table.add_row("view it", f"ns-viewer --load-config {config_path}")
    CONSOLE.print(table)
    return config_path


def entrypoint() -> None:
    main(tyro.cli(DemoCommand))


if __name__ == "__main__":
    entrypoint()
