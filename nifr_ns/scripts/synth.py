"""ns-nifr-synth: write a procedural scene (training views, queries in grades, poses), or the suite of them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional

import tyro
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from nifr_ns.synth import SCENE_NAMES, SynthConfig, generate_scene, generate_suite

CONSOLE = Console()


@dataclass
class SynthCommand:
    """Render a place with exact geometry: training views in nerfstudio format, query views under
    changed appearance, light or camera, their ground-truth and perturbed initial poses. With
    --suite, every scene of the suite, each with every query grade."""

    out: Annotated[tyro.conf.Positional[Optional[Path]], tyro.conf.arg(metavar="OUT")] = None
    """Output folder of one scene; must be new or empty unless --overwrite."""
    suite: Optional[Path] = None
    """Write the scene suite here instead (DIR/suite.json and DIR/<scene> for each of the scenes)."""
    scenes: tuple[str, ...] = SCENE_NAMES
    """--suite: the scenes to write."""
    config: tyro.conf.OmitArgPrefixes[SynthConfig] = field(default_factory=SynthConfig)


def main(command: SynthCommand) -> int:
    """Runs the command; returns the exit status."""
    try:
        if (command.out is None) == (command.suite is None):
            raise ValueError("give either OUT (one scene) or --suite DIR")
        unknown = set(command.scenes) - set(SCENE_NAMES)
        if unknown:
            raise ValueError(f"unknown scenes {', '.join(sorted(unknown))}: choose among {', '.join(SCENE_NAMES)}")
        configs = (
            [command.config.for_suite(name) for name in command.scenes]
            if command.suite is not None
            else [command.config.resolved()]
        )
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
        task = progress.add_task("Rendering", total=sum(c.n_train + c.n_queries for c in configs))

        def report(name: str, done: int, total: int) -> None:
            progress.update(task, completed=done, description=f"Rendered {name}")

        try:
            if command.suite is not None:
                infos = generate_suite(command.suite, command.config, command.scenes, report)
            else:
                infos = {configs[0].scene: generate_scene(command.out, configs[0], report)}
        except FileExistsError as error:
            CONSOLE.print(f"[bold red]Not writing:[/bold red] {error}")
            return 1

    seconds = time.perf_counter() - start
    CONSOLE.print(suite_table(configs, infos, command.suite, seconds) if command.suite else scene_table(configs[0], infos, seconds))
    return 0


def scene_table(config: SynthConfig, infos: dict, seconds: float) -> Table:
    """What one scene's folder holds."""
    info = next(iter(infos.values()))
    queries = info.out / "queries"
    table = Table(title=f"Synthetic scene written in {seconds:.1f} s", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    grades = ", ".join(config.grades) or config.grade(0)
    table.add_row(f"{config.scene}: {len(info.train)} training views, {config.width}x{config.height} px",
                  str(info.out / "transforms.json"))  # fmt: skip
    table.add_row(f"{len(info.queries_gt)} queries, grades {grades}", str(queries / "images"))
    table.add_row("ground-truth poses", f"{queries / 'gt.txt'}, gt.json, intrinsics.txt")
    table.add_row(
        f"initial poses ({config.rot_deg[0]:g}-{config.rot_deg[1]:g} deg, {config.trans[0]:g}-{config.trans[1]:g} m)",
        f"{queries / 'init.txt'}, init.json",
    )
    table.add_row(f"preset {config.preset}, seed {config.seed}, world frame", str(info.out / "scene.json"))
    return table


def suite_table(configs: list, infos: dict, suite: Path, seconds: float) -> Table:
    """One row per scene of a suite."""
    first = configs[0]
    title = (f"Scene suite written in {seconds:.1f} s ({suite / 'suite.json'}): grades {', '.join(first.grades)}, "
             f"initial poses {first.rot_deg[0]:g}-{first.rot_deg[1]:g} deg, {first.trans[0]:g}-{first.trans[1]:g} m")  # fmt: skip
    table = Table(title=title)
    for column in ("scene", "views", "queries", "folder"):
        table.add_column(column, overflow="fold")
    for config, info in zip(configs, infos.values()):
        table.add_row(config.scene, f"{len(info.train)} ({config.width}x{config.height})", str(len(info.queries_gt)), str(info.out))
    return table


def entrypoint() -> None:
    """Entry point of the ns-nifr-synth console script."""
    tyro.extras.set_accent_color("bright_yellow")
    raise SystemExit(main(tyro.cli(SynthCommand, prog="ns-nifr-synth")))


if __name__ == "__main__":
    entrypoint()
