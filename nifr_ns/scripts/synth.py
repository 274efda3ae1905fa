"""ns-nifr-synth: write the embedded procedural scene (training views, queries, poses) to a folder."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from nifr_ns.synth import SynthConfig, generate_scene

CONSOLE = Console()


@dataclass
class SynthCommand:
    """Render a textured room with exact geometry: training views in nerfstudio format, query
    views under changed appearance, their ground-truth and perturbed initial poses."""

    out: Annotated[tyro.conf.Positional[Path], tyro.conf.arg(metavar="OUT")]
    """Output folder; must be new or empty unless --overwrite."""
    config: tyro.conf.OmitArgPrefixes[SynthConfig] = field(default_factory=SynthConfig)


def main(command: SynthCommand) -> int:
    """Runs the command; returns the exit status."""
    try:
        config = command.config.resolved()
    except ValueError as error:
        CONSOLE.print(f"[bold red]Invalid settings:[/bold red] {error}")
        return 2
    start = time.perf_counter()
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=CONSOLE,
        transient=True,
    ) as progress:
        task = progress.add_task("Rendering", total=config.n_train + config.n_queries)
        try:
            info = generate_scene(
                command.out,
                config,
                lambda name, done, total: progress.update(task, completed=done, description=f"Rendered {name}"),
            )
        except FileExistsError as error:
            CONSOLE.print(f"[bold red]Not writing:[/bold red] {error}")
            return 1

    queries = info.out / "queries"
    table = Table(title=f"Synthetic scene written in {time.perf_counter() - start:.1f} s", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    grades = ", ".join(config.grades) or config.grade(0)
    size = f"{config.width}x{config.height} px"
    table.add_row(f"{len(info.train)} training views, {size}", str(info.out / "transforms.json"))
    table.add_row(f"{len(info.queries_gt)} queries, appearance {grades}", str(queries / "images"))
    table.add_row("ground-truth poses", f"{queries / 'gt.txt'}, gt.json, intrinsics.txt")
    table.add_row(
        f"initial poses ({config.rot_deg[0]:g}-{config.rot_deg[1]:g} deg, {config.trans[0]:g}-{config.trans[1]:g} m)",
        f"{queries / 'init.txt'}, init.json",
    )
    table.add_row(f"preset {config.preset}, seed {config.seed}, world frame", str(info.out / "scene.json"))
    CONSOLE.print(table)
    return 0


def entrypoint() -> None:
    """Entry point of the ns-nifr-synth console script."""
    tyro.extras.set_accent_color("bright_yellow")
    raise SystemExit(main(tyro.cli(SynthCommand, prog="ns-nifr-synth")))


if __name__ == "__main__":
    entrypoint()
