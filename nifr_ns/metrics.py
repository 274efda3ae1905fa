"""Localisation measures: feature matching of a trained model, and pose-error tables and plots.

``match_accuracy``: how often a pixel's encoder feature finds, by nearest neighbour among
the features rendered at the true pose, the right pixel. It is what feature-metric
refinement relies on, so it is logged during evaluation and reported by the benchmarks.
``depth_rel_error``: how far the rendered depth, from which refinement lifts its points, is off.
``pose_metrics`` and friends: the medians and recalls of DESIGN.md, as rich tables,
Markdown and cumulative-error PNGs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from jaxtyping import Float
from rich.table import Table
from torch import Tensor

from nifr_ns.encoder import sample_features
from nifr_ns.geometry import recall


@torch.no_grad()
def match_accuracy(
    encoder_map: Float[Tensor, "D h w"],
    rendered: Float[Tensor, "H W D"],
    num_pixels: int = 512,
    seed: int = 0,
) -> Dict[str, float]:
    """Share of sampled pixels whose encoder feature's nearest rendered feature lies within 1 and 3 px.

    Args:
        encoder_map: a unit-norm encoder level of the image (any stride; sampled at pixel centres).
        rendered: unit-norm features rendered at the image's true pose, full resolution.
    """
    height, width, dim = rendered.shape
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(height, (num_pixels,), generator=generator)
    x = torch.randint(width, (num_pixels,), generator=generator)
    uv = torch.stack([x, y], dim=-1).to(rendered) + 0.5
    queries = sample_features(encoder_map[None].to(rendered), uv[None], (height, width))[0]  # (P, D)
    best = (queries @ rendered.reshape(-1, dim).T).argmax(dim=1)
    found = torch.stack([best % width, best // width], dim=-1).to(rendered) + 0.5
    error = (found - uv).norm(dim=-1)
    return {"match_1px": float((error <= 1.0).float().mean()), "match_3px": float((error <= 3.0).float().mean())}


DEFAULT_THRESHOLDS: Tuple[Tuple[float, float], ...] = ((0.01, 1.0), (0.02, 2.0), (0.05, 5.0), (0.25, 2.0), (0.5, 5.0))
"""Recall thresholds (translation in scene units, here metres; rotation in degrees) of DESIGN.md."""


def depth_rel_error(z_depth: Tensor, sensor: Tensor) -> float:
    """Median of |rendered - sensor| / sensor z-depth over pixels with a known depth (sensor > 0);
    ``z_depth`` holds as many values as ``sensor`` (an image's (H, W, 1) for its (H, W))."""
    z_depth, valid = z_depth.reshape(sensor.shape), sensor > 0
    if not valid.any():
        return float("nan")
    return float(((z_depth[valid] - sensor[valid]).abs() / sensor[valid]).median())


def threshold_label(threshold: Tuple[float, float]) -> str:
    trans, rot = threshold
    return f"{trans * 100:g}cm/{rot:g}°"


def pose_metrics(
    trans_err: np.ndarray, rot_err: np.ndarray, thresholds: Sequence[Tuple[float, float]] = DEFAULT_THRESHOLDS
) -> Dict[str, float]:
    """Median errors and recalls of one method: {'median_trans', 'median_rot', 'recall 1cm/1°', ...}."""
    trans_err, rot_err = np.asarray(trans_err, float), np.asarray(rot_err, float)
    out = {"count": float(len(trans_err)), "median_trans": float(np.median(trans_err)), "median_rot": float(np.median(rot_err))}
    for threshold, value in zip(thresholds, recall(trans_err, rot_err, list(thresholds))):
        out[f"recall {threshold_label(threshold)}"] = float(value)
    return out


COMPACT_COLUMNS = {
    "median_trans": "median\ntrans.",
    "median_rot": "median\nrot.",
    "recall 5cm/5°": "recall\n5cm/5°",
    "failures": "fail-\nures",
    "worse_unflagged": "worse\nunflag.",
    "time_mean_s": "s per\nquery",
}
"""The columns a narrow terminal shows, with their two-line headers."""


def metrics_table(rows: Dict[str, Dict[str, float]], title: str, width: Optional[int] = None) -> Table:
    """A rich table, one row per method (the keys of ``rows``), the pose metrics as columns; below
    ``width`` 120 (a terminal's columns), only :data:`COMPACT_COLUMNS`, so that it reads at 80."""
    table = Table(title=title)
    table.add_column("method", style="bold", no_wrap=True)
    columns = metric_columns(rows)
    compact = width is not None and width < 120
    if compact:
        columns = [c for c in COMPACT_COLUMNS if c in columns]
    for column in columns:
        table.add_column(COMPACT_COLUMNS[column] if compact else column, justify="right", overflow="fold")
    for name, metrics in rows.items():
        table.add_row(name, *(format_metric(c, metrics.get(c, float("nan"))) for c in columns))
    return table


def metric_columns(rows: Dict[str, Dict[str, float]]) -> list:
    """Every metric any row has, in order of first appearance."""
    return list(dict.fromkeys(c for metrics in rows.values() for c in metrics if c != "count"))


def format_metric(column: str, value: float) -> str:
    if value != value:  # NaN: the method has no such figure
        return "-"
    if column == "median_trans":
        return f"{value * 100:.2f} cm"
    if column == "median_rot":
        return f"{value:.3f}°"
    if column.startswith("recall"):
        return f"{100 * value:.1f}%"
    if "time" in column or column.endswith("_s"):
        return f"{value:.2f} s"
    if column.endswith("_mb"):
        return f"{value:.0f} MB"
    return f"{value:.4g}"


def metrics_markdown(rows: Dict[str, Dict[str, float]]) -> str:
    """The same table as Markdown."""
    columns = metric_columns(rows)
    lines = ["| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, metrics in rows.items():
        lines.append(f"| {name} | " + " | ".join(format_metric(c, metrics.get(c, float("nan"))) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def cumulative_error_plot(errors: Dict[str, Tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    """Cumulative distributions of translation and rotation errors, one curve per label, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for label, (trans, rot) in errors.items():
        for ax, values, scale in ((axes[0], trans, 100.0), (axes[1], rot, 1.0)):
            values = np.sort(np.asarray(values) * scale)
            ax.step(values, np.arange(1, len(values) + 1) / max(len(values), 1), where="post", label=label)
    axes[0].set(xscale="log", xlabel="translation error (cm)", ylabel="share of queries")
    axes[1].set(xscale="log", xlabel="rotation error (deg)")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
