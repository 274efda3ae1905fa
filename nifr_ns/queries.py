"""Query sets: images to localise, their intrinsics, initial poses and optional ground truth.

Everything is checked before any work starts (files, names, image sizes), so that a bad
input fails at once with a message naming the file and writes nothing; images are read
one at a time when refined, so large query sets do not fill the memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Literal, Optional

import numpy as np
import torch
from PIL import Image

from nifr_ns.geometry import perturb_pose
from nifr_ns.pose_io import Intrinsics, PoseSet, read_hloc, read_poses

InitMode = Literal["file", "perturb", "retrieval"]


class QueryError(ValueError):
    """A query set that cannot be used as given."""


@dataclass
class Query:
    name: str
    image_path: Path
    intrinsics: Intrinsics
    T_cw_file: np.ndarray
    """The pose given in the queries file (world-to-camera, world frame)."""
    T_cw_gt: Optional[np.ndarray] = None

    def load_image(self) -> torch.Tensor:
        """(H, W, 3) float in [0, 1]."""
        with Image.open(self.image_path) as image:
            return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)


@dataclass
class QuerySet:
    queries: List[Query]
    poses: PoseSet
    """The queries file as read: refined poses are written in its form."""

    @property
    def has_ground_truth(self) -> bool:
        return all(q.T_cw_gt is not None for q in self.queries)


@dataclass
class QueryFiles:
    """Where a command's queries come from: pose files, or a benchmark dataset's split. ns-nifr-refine
    and ns-nifr-bench share it, so they take the same flags and make the same checks."""

    queries: Optional[Path] = None
    """Query poses (the initial poses): a transforms-style .json, or hloc text `name qw qx qy qz tx ty tz`
    (needs --intrinsics). With --dataset: hloc text whose names are the split's."""
    dataset: Optional[Literal["cambridge", "sevenscenes"]] = None
    """Take the query images, intrinsics and ground truth from this benchmark's --split (as the model's
    cambridge-data / sevenscenes-data dataparser reads it); errors are in metres and degrees."""
    data: Optional[Path] = None
    """--dataset: the scene folder; default: the one the model was trained on."""
    split: Literal["train", "test"] = "test"
    """--dataset: the split whose images are the queries."""
    intrinsics: Optional[Path] = None
    """hloc/COLMAP intrinsics file `name MODEL w h params...` for hloc-form poses."""
    ground_truth: Optional[Path] = None
    """Ground-truth poses of the queries, either form: enables the metrics."""
    ground_truth_intrinsics: Optional[Path] = None
    """Intrinsics for hloc-form ground truth; default: --intrinsics."""
    image_root: Optional[Path] = None
    """Folder the image names are relative to; default: the queries file's folder."""
    max_queries: Optional[int] = None
    """Only the first N queries (of each scene with --suite)."""

    def load(self, load_config: Path, need_poses: bool = True, need_ground_truth: bool = False) -> QuerySet:
        """The checked query set; ``need_poses``: the initial poses must come from --queries (not the
        split's ground truth). Raises QueryError or pose_io.PoseFileError, naming the file and line."""
        if self.dataset is not None:
            from nifr_ns.dataparsers import benchmark_split

            if self.queries is None and need_poses:
                raise QueryError("--dataset needs --queries here (the initial poses, hloc text)")
            split = benchmark_split(self.dataset, self.split, self.data, load_config)
            return load_split_query_set(split, self.queries, self.max_queries)
        missing = [flag for flag, value in (("--queries", self.queries), ("--ground-truth", self.ground_truth))
                   if value is None and (flag == "--queries" or need_ground_truth)]  # fmt: skip
        if missing:
            raise QueryError(f"{' and '.join(missing)} needed (or a benchmark split with --dataset)")
        return load_query_set(self.queries, self.intrinsics, self.ground_truth, self.ground_truth_intrinsics,
                              self.image_root, self.max_queries)  # fmt: skip


def load_query_set(
    queries: Path,
    intrinsics: Optional[Path] = None,
    ground_truth: Optional[Path] = None,
    ground_truth_intrinsics: Optional[Path] = None,
    image_root: Optional[Path] = None,
    limit: Optional[int] = None,
) -> QuerySet:
    """Reads and validates a query set. Raises pose_io.PoseFileError or QueryError, naming the file."""
    poses = read_poses(queries, intrinsics=intrinsics, image_root=image_root)
    gt = None
    if ground_truth is not None:
        gt = read_poses(ground_truth, intrinsics=ground_truth_intrinsics or intrinsics, image_root=image_root)
        missing = [name for name in poses.names if name not in set(gt.names)]
        if missing:
            raise QueryError(f"{ground_truth}: no ground truth for {len(missing)} queries, e.g. '{missing[0]}'")
    return _checked_query_set(poses, gt, queries, limit)


def load_split_query_set(split: PoseSet, queries: Optional[Path] = None, limit: Optional[int] = None) -> QuerySet:
    """Queries from a benchmark dataset's split (dataparsers.benchmark_split: images, intrinsics and
    ground truth), with initial poses from an hloc text file ``name qw qx qy qz tx ty tz`` whose
    names are the split's (e.g. from a pose regressor or retrieval); without one the initial poses
    are the ground truth (for --init perturb or retrieval). Refined poses are written as hloc text."""
    poses = split
    if queries is not None:
        poses = read_hloc(queries, {image.name: image.intrinsics for image in split}, image_root=split.root)
    return _checked_query_set(poses, split, queries if queries is not None else split.root, limit)


def _checked_query_set(poses: PoseSet, gt: Optional[PoseSet], source: Path, limit: Optional[int]) -> QuerySet:
    """The first ``limit`` images of poses as queries, each image present and of its intrinsics' size."""
    result = []
    for item in list(poses)[:limit]:
        path = poses.root / item.name
        if not path.is_file():
            raise QueryError(f"{source}: image '{item.name}' not found at {path}")
        with Image.open(path) as image:
            size = image.size
        if size != (item.intrinsics.width, item.intrinsics.height):
            raise QueryError(
                f"{path}: image is {size[0]}x{size[1]} but its intrinsics say "
                f"{item.intrinsics.width}x{item.intrinsics.height}"
            )
        T_gt = gt.by_name(item.name).T_cw if gt is not None else None
        result.append(Query(item.name, path, item.intrinsics, item.T_cw, T_gt))
    if not result:
        raise QueryError(f"{source}: no queries")
    return QuerySet(result, poses)


def perturbed_poses(query_set: QuerySet, rot_deg: float, trans: float, seed: int = 0) -> List[np.ndarray]:
    """Ground truth moved by exactly ``rot_deg`` degrees and ``trans`` units, in random directions."""
    if not query_set.has_ground_truth:
        raise QueryError("--init perturb needs --ground-truth")
    rng = np.random.default_rng(seed)
    return [perturb_pose(q.T_cw_gt, rot_deg, trans, rng) for q in query_set.queries]

