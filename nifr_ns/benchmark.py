"""The benchmark harness: every localisation method on the same queries and initial poses.

Owns the methods ``ns-nifr-bench`` compares, run in one process on one model:

- ``initial``: the initial poses as given;
- ``nifr``: feature-metric LM refinement (the method), ``nifr 1 start`` the same with its coarse
  levels run from one start instead of five (``RefineConfig.starts``), ``nifr render-compare`` its iNeRF-style
  mode (gradients through the renderer);
- ``photometric``: the same LM solver on RGB residuals (the iNeRF-style peer);
- ``structure``: OpenCV SIFT of the query matched to the training views nearest the initial
  pose, lifted with depth rendered from the same model, PnP-RANSAC (``nifr_ns.structure``);
  ``structure+nifr`` adds the nifr LM polish;
- ``retrieval``: the pose of the training view whose global descriptor is nearest;
  ``retrieval+nifr`` refines the nearest few and keeps the best.

Also their time per query and peak memory, per-grade subsets, and the convergence-basin sweep
(success rate against the size of the initial error).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np
import torch

from nifr_ns.geometry import perturb_pose, pose_errors
from nifr_ns.metrics import pose_metrics
from nifr_ns.pose_io import Intrinsics
from nifr_ns.queries import Query
from nifr_ns.refinement import PoseRefiner, RefineConfig, Retrieval
from nifr_ns.structure import Reference, StructureConfig, localize, select_references

Method = Literal[
    "initial", "nifr", "nifr 1 start", "nifr render-compare", "photometric", "structure", "structure+nifr",
    "retrieval", "retrieval+nifr",
]  # fmt: skip
ALL_METHODS: Tuple[Method, ...] = (
    "initial", "nifr", "nifr 1 start", "nifr render-compare", "photometric", "structure", "structure+nifr",
    "retrieval", "retrieval+nifr",
)  # fmt: skip
USES_INITIAL_POSE = {
    "initial", "nifr", "nifr 1 start", "nifr render-compare", "photometric", "structure", "structure+nifr"
}  # fmt: skip
"""Methods whose result depends on the initial pose (the others only sweep as flat lines)."""


@dataclass
class Outcome:
    """One method on one query: its pose (world frame), whether it gave up, and its time."""

    T_cw: np.ndarray
    failed: bool
    """Refinement flagged (initial pose kept, see QueryResult.flag), PnP without a pose."""
    seconds: float
    T_cw_reached: Optional[np.ndarray] = None
    """The pose the method reached before it gave up, if any (a flagged refinement's); else T_cw."""


Solution = Tuple[np.ndarray, bool, Optional[np.ndarray]]
"""What a method returns: its pose, whether it gave up, and the pose it reached (None: none)."""


@dataclass
class HarnessConfig:
    """Settings of the methods that are not the refiner's own."""

    refine: RefineConfig = field(default_factory=RefineConfig)
    structure: StructureConfig = field(default_factory=StructureConfig)
    structure_references: int = 3
    """Training views the structure-based peer matches the query against (nearest the initial pose)."""
    reference_depth_stride: int = 2
    """The reference depth is rendered on a grid this much coarser than the image (map preparation)."""
    retrieval_candidates: int = 3
    """retrieval+nifr: nearest training views refined; the lowest final cost is kept."""


class Harness:
    """Runs any method of :data:`ALL_METHODS` on a query; shares the model, the retrieval index
    and the rendered reference depths between methods.

    Work a method would do once per map, not per query (rendering the reference views' depth,
    encoding the training views for retrieval), is timed apart in ``map_seconds``.
    """

    def __init__(self, pipeline, transform, config: HarnessConfig) -> None:
        self.pipeline, self.transform, self.config = pipeline, transform, config
        self.refiners = {
            mode: PoseRefiner(pipeline, transform, replace(config.refine, mode=mode))
            for mode in ("features", "photometric", "render-compare")
        }
        self.train = pipeline.datamanager.train_dataset
        cameras = self.train.cameras
        self.train_poses = [transform.nerfstudio_c2w_to_T_cw(c) for c in cameras.camera_to_worlds.double().numpy()]
        self.train_intrinsics = [
            Intrinsics.pinhole(int(cameras.width[i]), int(cameras.height[i]), float(cameras.fx[i]),
                               float(cameras.fy[i]), float(cameras.cx[i]), float(cameras.cy[i]))
            for i in range(len(cameras))
        ]  # fmt: skip
        self.map_seconds: Dict[str, float] = {"reference depth": 0.0, "retrieval index": 0.0}
        self._references: Dict[int, Reference] = {}
        self._retrieval: Optional[Retrieval] = None
        self._methods = self._method_table()

    def run(self, method: Method, query: Query, image: torch.Tensor, init: np.ndarray) -> Outcome:
        self.pipeline.eval()  # as in PoseRefiner.refine: the reference depths too must render without jitter
        start = time.perf_counter()
        map_before = sum(self.map_seconds.values())
        T_cw, failed, reached = self._methods[method](query, image, init)
        seconds = time.perf_counter() - start - (sum(self.map_seconds.values()) - map_before)
        return Outcome(T_cw, failed, seconds, reached)

    def _method_table(self) -> Dict[str, Callable[[Query, torch.Tensor, np.ndarray], Solution]]:
        return {
            "initial": lambda q, image, init: (init, False, init),
            "nifr": lambda q, image, init: self._refine("features", q, image, [init]),
            "nifr 1 start": self._refine_from_one_start,
            "nifr render-compare": lambda q, image, init: self._refine("render-compare", q, image, [init]),
            "photometric": lambda q, image, init: self._refine("photometric", q, image, [init]),
            "structure": self._structure,
            "structure+nifr": self._structure_then_nifr,
            "retrieval": lambda q, image, init: (self._retrieve(image, q.intrinsics, 1)[0], False, None),
            "retrieval+nifr": lambda q, image, init: self._refine(
                "features", q, image, self._retrieve(image, q.intrinsics, self.config.retrieval_candidates)
            ),
        }

    def _refine(self, mode: str, query: Query, image: torch.Tensor, inits: List[np.ndarray]) -> Solution:
        result = self.refiners[mode].refine(query.name, image, query.intrinsics, inits)
        return result.T_cw, not result.improved, result.T_cw_refined

    def _refine_from_one_start(self, query: Query, image: torch.Tensor, init: np.ndarray) -> Solution:
        if "1 start" not in self.refiners:  # built when asked for
            self.refiners["1 start"] = PoseRefiner(self.pipeline, self.transform, replace(self.config.refine, starts=1))
        return self._refine("1 start", query, image, [init])

    def _structure(self, query: Query, image: torch.Tensor, init: np.ndarray) -> Solution:
        chosen = select_references(init, self.train_poses, self.config.structure_references)
        references = [self._reference(i) for i in chosen]
        result = localize(image.numpy(), query.intrinsics, references, self.config.structure, fallback_T_cw=init)
        return result.T_cw, not result.success, result.T_cw if result.success else None

    def _structure_then_nifr(self, query: Query, image: torch.Tensor, init: np.ndarray) -> Solution:
        T_cw, failed, _ = self._structure(query, image, init)
        if failed:
            return T_cw, True, None
        T_refined = self._refine("features", query, image, [T_cw])[0]
        return T_refined, False, T_refined

    def _reference(self, index: int) -> Reference:
        """Training view ``index`` with its z-depth rendered from the model (cached, map time)."""
        if index not in self._references:
            start = time.perf_counter()
            stride = self.config.reference_depth_stride
            intrinsics = self.train_intrinsics[index]
            depth = self.refiners["features"].render_depth(self.train_poses[index], intrinsics, stride)
            depth = np.repeat(np.repeat(depth, stride, axis=0), stride, axis=1)[: intrinsics.height, : intrinsics.width]
            image = self.train[index]["image"][..., :3].numpy()
            self._references[index] = Reference(image, intrinsics, self.train_poses[index], depth)
            self.map_seconds["reference depth"] += time.perf_counter() - start
        return self._references[index]

    def _retrieve(self, image: torch.Tensor, query_intrinsics: Intrinsics, k: int) -> List[np.ndarray]:
        refiner = self.refiners["features"]
        if self._retrieval is None:
            start = time.perf_counter()
            self._retrieval = Retrieval(refiner, self.train)
            self.map_seconds["retrieval index"] += time.perf_counter() - start
        return self._retrieval.nearest(refiner.encode_features(refiner.working(image, query_intrinsics)[0])[0], k)


class PeakMemory:
    """Peak memory of a block: CUDA allocations on a GPU, else the process's resident set
    (sampled every 10 ms by a thread, since the kernel only keeps a lifetime peak)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.peak_mb = 0.0

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return self
        import psutil

        process, self._stop = psutil.Process(), threading.Event()

        def sample() -> None:
            while True:
                self.peak_mb = max(self.peak_mb, process.memory_info().rss / 2**20)
                if self._stop.wait(0.01):
                    return

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()


CORRECT: Tuple[float, float] = (0.05, 5.0)
"""A refined pose within this (translation, degrees) of the truth counts as correct (correct_flagged)."""


@dataclass
class MethodRun:
    """One method over a query set."""

    outcomes: List[Outcome]
    peak_mb: float

    def errors(self, gt: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        return pose_errors(np.stack([o.T_cw for o in self.outcomes]), gt)

    def records(self, names: Sequence[str], gt: np.ndarray, inits: Sequence[np.ndarray]) -> List[Dict]:
        """One record per query: its errors, the initial pose's, whether the method gave up, the errors
        of the pose it reached (None if none) and its time; what :func:`summarize` reads."""
        trans, rot = self.errors(gt)
        initial_trans, initial_rot = pose_errors(np.stack(inits), gt)
        out = []
        for i, (name, outcome) in enumerate(zip(names, self.outcomes)):
            reached = (None, None)
            if outcome.T_cw_reached is not None:
                reached = tuple(float(e[0]) for e in pose_errors(outcome.T_cw_reached[None], gt[i : i + 1]))
            out.append({
                "name": name, "trans_err": float(trans[i]), "rot_err": float(rot[i]),
                "initial_trans_err": float(initial_trans[i]), "initial_rot_err": float(initial_rot[i]),
                "failed": bool(outcome.failed), "reached_trans_err": reached[0], "reached_rot_err": reached[1],
                "seconds": outcome.seconds,
            })  # fmt: skip
        return out

    def row(self, names, gt, inits, thresholds, correct: Tuple[float, float] = CORRECT) -> Dict[str, float]:
        """The table row of :func:`summarize`, with the run's peak memory."""
        return {**summarize(self.records(names, gt, inits), thresholds, correct), "peak_mem_mb": self.peak_mb}


def summarize(
    records: Sequence[Dict], thresholds: Sequence[Tuple[float, float]], correct: Tuple[float, float] = CORRECT
) -> Dict[str, float]:
    """A table row from per-query records (:meth:`MethodRun.records`, of one run or pooled): pose
    metrics; failures; queries made worse without a failure flag; flagged queries whose reached pose
    was correct all the same (``correct``); mean and median time."""
    column = lambda key: np.array([np.nan if r[key] is None else r[key] for r in records], dtype=float)  # noqa: E731
    trans, failed = column("trans_err"), column("failed").astype(bool)
    with np.errstate(invalid="ignore"):  # NaN: no pose reached
        right = (column("reached_trans_err") <= correct[0]) & (column("reached_rot_err") <= correct[1])
    times = column("seconds")
    return {
        **pose_metrics(trans, column("rot_err"), thresholds),
        "failures": float(failed.sum()),
        "worse_unflagged": float(np.sum((trans > column("initial_trans_err") + 1e-9) & ~failed)),
        "correct_flagged": float(np.sum(failed & right)),
        "time_mean_s": float(np.mean(times)),
        "time_median_s": float(np.median(times)),
    }


def run_method(
    harness: Harness, method: Method, queries: Sequence[Query], inits: Sequence[np.ndarray], on_query: Callable[[], None]
) -> MethodRun:
    """One method on every query (images read one at a time)."""
    with PeakMemory(harness.refiners["features"].device) as memory:
        outcomes = []
        for query, init in zip(queries, inits):
            outcomes.append(harness.run(method, query, query.load_image(), init))
            on_query()
    return MethodRun(outcomes, memory.peak_mb)


def sweep_inits(queries: Sequence[Query], rot_deg: float, trans: float, seed: int) -> List[np.ndarray]:
    """Ground truth moved by exactly ``rot_deg`` and ``trans`` in random directions (per level seed)."""
    rng = np.random.default_rng(seed)
    return [perturb_pose(q.T_cw_gt, rot_deg, trans, rng) for q in queries]


def success_rate(run: MethodRun, gt: np.ndarray, success: Tuple[float, float]) -> float:
    trans, rot = run.errors(gt)
    return float(np.mean((trans <= success[0]) & (rot <= success[1])))
