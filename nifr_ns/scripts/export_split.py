"""ns-nifr-export-split: a benchmark split as hloc text files, for ns-nifr-bench.

ns-nifr-bench reads query sets from files (--queries, --ground-truth, --intrinsics) whose image
names are relative to the queries file's folder; this writes a Cambridge Landmarks or 7-Scenes
split in that form beside its images, read exactly as the model's dataparser reads it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Tuple

import numpy as np
import tyro
from rich.console import Console

CONSOLE = Console()


@dataclass
class ExportSplit:
    """Write SPLIT_gt.txt and SPLIT_intrinsics.txt (and with --perturb SPLIT_init_perturbed.txt)
    beside the split's images; prints that folder. Put initial poses from elsewhere (hloc text,
    names as in the split) in the same folder to use them as ns-nifr-bench --queries."""

    dataset: Literal["cambridge", "sevenscenes"]
    """Which benchmark layout."""
    load_config: Optional[Path] = None
    """config.yml of a model trained on this dataset: the split is read with its settings (image
    size, focal, data folder), so the files match what the model was trained on."""
    data: Optional[Path] = None
    """The scene folder; default: the one the model was trained on."""
    split: Literal["train", "test"] = "test"
    """The split to write."""
    perturb: Optional[Tuple[float, float]] = None
    """DEG METRES: also write initial poses, the ground truth rotated by DEG degrees and moved by
    METRES in random directions."""
    seed: int = 0
    """Seed of the perturbation directions."""


def main(command: ExportSplit) -> Path:
    """Writes the files; returns their folder."""
    from nifr_ns.dataparsers import benchmark_split
    from nifr_ns.geometry import perturb_pose
    from nifr_ns.pose_io import write_hloc

    poses = benchmark_split(command.dataset, command.split, command.data, command.load_config)
    folder = poses.root
    write_hloc(poses, folder / f"{command.split}_gt.txt", folder / f"{command.split}_intrinsics.txt")
    if command.perturb is not None:
        rot_deg, trans = command.perturb
        rng = np.random.default_rng(command.seed)
        init = poses.with_poses({image.name: perturb_pose(image.T_cw, rot_deg, trans, rng) for image in poses})
        write_hloc(init, folder / f"{command.split}_init_perturbed.txt")
    return folder


def entrypoint() -> None:
    from nifr_ns.pose_io import PoseFileError

    try:
        folder = main(tyro.cli(ExportSplit))
    except PoseFileError as error:
        CONSOLE.print(f"[bold red]Error:[/bold red] {error}", soft_wrap=True)
        sys.exit(2)
    print(folder)


if __name__ == "__main__":
    entrypoint()
