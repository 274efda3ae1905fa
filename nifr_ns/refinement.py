"""Camera pose refinement of query images against a trained nifr model.

Owns the driver around the LM solver (``optimizer.py``): encode the query once; coarse to fine
over the encoder's levels, render depth, features and opacity at the current pose on a
low-resolution grid, lift the opaque pixels to 3D and align the query's features, with locally
normalised intensity beside them, at their projections with the rendered ones (each level
re-renders at the pose the last one reached, ``renders_per_level`` times); last, a polish stage
aligns the finest features together with the intensity on a finer grid, of which it renders
every second column (:class:`PolishConfig`), and a few Gauss-Newton steps on that stage's
render-and-compare cost, re-rendering each time, settle the pose where the renders match the
query best; its cost decides whether the query improved, with its intensity channels alone as a
check that the learned features did not lead the solver astray. Also the photometric mode (RGB
instead of features, same solver) and the render-and-compare mode (gradients through the
renderer, iNeRF-style) for comparison.

Poses come in and go out in the user's world frame; the solver works in nerfstudio's
normalised frame, through the model's ``DataparserTransform``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable, Dict, List, Literal, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.pipelines.base_pipeline import Pipeline

from nifr_ns.encoder import sample_features
from nifr_ns.geometry import T_cw_to_opengl_c2w, camera_center, opengl_c2w_to_T_cw, rotation_angle_deg, se3_exp
from nifr_ns.optimizer import LMConfig, image_gradient, lm_refine, lm_refine_batch, point_costs, render_step
from nifr_ns.pose_io import DataparserTransform, Intrinsics

Mode = Literal["features", "photometric", "render-compare"]


@dataclass
class PolishConfig:
    """The features mode's last stage: the finest features together with locally normalised log
    intensity (:func:`normalized_log_rgb`), on a grid rendered at ``stride``. The learned features are
    smooth over several pixels, so their cost is flat near its minimum, which can lie centimetres from
    the true pose; normalised intensity is sharp and cancels exposure, colour cast, vignetting and gamma.
    """

    enabled: bool = True
    stride: int = 1
    """Stride of the rendered grid and of the query image's pooling, in query pixels (1: full
    resolution). Raise it to trade precision for time."""
    point_step: int = 2
    """The solver uses every ``point_step``-th lifted pixel of this stage's rendering (the whole
    rendering is still needed: the intensity is normalised over its neighbourhoods). 1 costs about as
    much as the rendering for little gain."""
    column_step: int = 2
    """The stage renders every ``column_step``-th column of its grid (pixels ``column_step`` wide), and
    the rendered intensity is normalised over ``window`` rows and ``window // column_step`` columns
    (made odd), so over about the same neighbourhood as the query's. 1 renders every column (slower)."""
    judge_stride: Optional[int] = 2
    """Stride at which the initial and refined poses are compared by this stage's cost and the
    intensity check (None: ``stride``). At stride 1 a render costs four at stride 2, and the finer
    intensity differs more between the model's renders and the query, so fewer refinements pass."""
    renders: int = 1
    """Renders in this stage, each followed by a solve (1 or more; more let visibility follow the pose)."""
    weight: float = 1.0
    """Scale of the three intensity channels against the unit-norm features (0: features alone).
    Higher flags more queries and leaves fewer wrong ones unflagged."""
    window: int = 9
    """Side of the neighbourhood, in pixels of the pooled image, the intensity is normalised over,
    here and in the levels (``RefineConfig.level_intensity``); odd. Smaller is sharper but noisier."""
    robust_scale: float = 0.5
    """The solver's robust scale in this stage (its residuals are larger than the features' alone)."""
    verify_gain: float = 0.2
    """A refined pose is kept only if the normalised intensity alone, which owes nothing to the
    learned features, agrees with the query clearly better there than at the initial pose: its robust
    cost must fall by at least this share (0 to 1; 0: no check). Wrong minima of the learned cost lower
    the features' part of it but not the intensity's. Lower it to flag fewer queries, at the risk of
    leaving wrong refinements unflagged."""

    @property
    def rendered_window(self) -> Tuple[int, int]:
        """The normalisation window (rows, columns) on the stage's rendered grid."""
        return self.window, max(1, self.window // self.column_step) | 1

    @property
    def judging_stride(self) -> int:
        """``judge_stride``, or ``stride`` where it is None."""
        return self.stride if self.judge_stride is None else self.judge_stride

    def confirms(self, initial_cost: float, final_cost: float) -> bool:
        """Whether the intensity check's cost fell from the initial pose to the refined one by verify_gain."""
        return final_cost <= (1.0 - self.verify_gain) * initial_cost


LOG_OFFSET = 0.06
"""The log's offset in :func:`normalized_log_rgb`, as a share of the image's mean intensity."""
VARIANCE_FLOOR = 0.005
"""The variance floor in :func:`normalized_log_rgb`, as a share of the image's log-intensity variance."""


def normalized_log_rgb(
    image: Float[Tensor, "3 h w"], window: int | Tuple[int, int], offset: float = LOG_OFFSET
) -> Float[Tensor, "3 h w"]:
    """Log intensity made zero-mean and unit-variance over each ``window`` x ``window`` neighbourhood
    (or rows x columns), per channel. Exposure, colour cast and vignetting multiply the image (a
    local offset in log space) and gamma raises it to a power (a scale in log space): both cancel.
    The log's offset, ``offset`` times the image's mean intensity, keeps dark pixels' noise from
    dominating and scales with the image, so that an image and the same at half the exposure give the
    same values; a variance floor, a share of the whole image's, keeps flat regions near zero at any
    contrast."""
    rows, columns = (window, window) if isinstance(window, int) else window
    x = torch.log(image + offset * image.mean().clamp_min(1e-6))
    padded = F.pad(x[None], [columns // 2, columns // 2, rows // 2, rows // 2], mode="replicate")
    mean = F.avg_pool2d(padded, (rows, columns), stride=1)[0]
    variance = (F.avg_pool2d(padded.square(), (rows, columns), stride=1)[0] - mean.square()).clamp_min(0.0)
    floor = VARIANCE_FLOOR * x.flatten(1).var(dim=1).clamp_min(1e-8)[:, None, None]
    return (x - mean) / torch.sqrt(variance + floor)


@dataclass
class RefineConfig:
    """How queries are refined."""

    mode: Mode = "features"
    """features: feature-metric LM (the method); photometric: the same solver on RGB;
    render-compare: gradient descent through the renderer on features (iNeRF-style)."""
    render_strides: Tuple[int, ...] = (8, 4, 2)
    """Stride of the rendered grid for each encoder level, coarse to fine, in query pixels; one per
    encoder level. Larger strides are faster and coarser."""
    renders_per_level: int = 1
    """Renders (each followed by a solve) per level. More let visibility follow the pose within a
    level; the settling steps (``compare_steps``) re-render at the end, so one is usually enough."""
    min_accumulation: float = 0.9
    """Rendered pixels less opaque than this are not lifted."""
    max_depth_spread: Optional[float] = None
    """Rendered pixels whose rays end less sharply than this (the weights' spread along the ray
    relative to its depth: ``model.depth_spread``) are not lifted: their depth is uncertain; the sharper
    half of the opaque pixels always is (so a model diffuse everywhere is still refined). None: 0.1 for
    a model whose geometry comes from RGB alone, off for one trained with sensor depth
    (``depth_loss_mult`` > 0), where even diffuse rays' depth is good."""
    level_intensity: float = 1.0
    """features mode: weight of locally normalised intensity (:func:`normalized_log_rgb`, the polish
    stage's window) beside each level's features, against their unit norm; both sides pooled at the
    level's render stride (0: features alone). The features' cost has minima centimetres off the true
    pose; the intensity's does not, but it cannot follow a moved light or shadow."""
    lm: LMConfig = field(default_factory=LMConfig)
    """The Levenberg-Marquardt solver."""
    search_deg: float = 8.0
    """Before the solver, the coarsest level's cost is evaluated at the initial pose turned by up to
    this many degrees about the camera's x and y axes (a grid, no re-rendering), and the solver starts
    from the lowest (0: off). A turn of a few degrees moves the whole image beyond the solver's reach;
    raise it for initial poses known to be turned further."""
    search_step_deg: float = 2.0
    """Spacing of that grid (81 turns with the default range)."""
    first_level: Optional[int] = None
    """The solver runs from this encoder level on, coarse to fine (0: from the coarsest); the levels
    before it only choose the turn (``search_deg``). None: 1 with several ``starts`` (which already
    cover the coarsest level's reach, and its cost has minima off the true pose), 0 with one."""
    polish: PolishConfig = field(default_factory=PolishConfig)
    """features mode: the last stage, features with normalised intensity."""
    restart_distance: float = 0.04
    """Spacing of the ``starts`` and of the restarts of a flagged refinement, as a share of the median
    depth that the initial pose sees (0.04: 10 cm for surfaces 2.5 m away): the initial pose is moved
    this far along and against the camera's x and y axes (:meth:`PoseRefiner.moved`, :meth:`PoseRefiner.best_of`);
    0: one start and no restarts. A share of the depth moves the image by the same few pixels in a room
    as on a facade 20 m away. The restarts are judged against the initial pose as the first refinement
    was."""
    starts: int = 5
    """The coarse levels (from ``first_level``) run from this many starts (1 to 5): the initial pose
    after the turn search, and it moved ``restart_distance`` along and against the camera's x, then y
    axis (one when ``restart_distance`` is 0); the one whose cost on the last coarse level is lowest
    goes on to the finest level and the polish stage (:meth:`PoseRefiner.best_of`). The starts are
    rendered and solved together; 1 is faster where the initial poses are good."""
    compare_steps: int = 3
    """Last (features and photometric modes), Gauss-Newton steps on the cost the poses are judged by,
    re-rendered at every step, whose Jacobian is the rendering's own image gradient
    (:func:`~nifr_ns.optimizer.render_step`); of the poses visited, the one of lowest cost is kept (0:
    off). The solver holds the lifted points fixed, so it ends where those points match best, about a
    centimetre from where the model's renders match the query best. Each step is one render at the
    judge's stride."""
    max_translation: float = 0.5
    """A refinement that moves the camera further than this share of the median depth the initial pose
    sees is flagged and the initial pose kept: with poor features the cost can be lowest at a pose that
    sees little, far from any camera. Raise it for initial poses known to be that far off."""
    max_rotation_deg: float = 45.0
    """A refinement that turns the camera by more than this is flagged likewise."""
    render_compare_steps: int = 100
    """render-compare: Adam steps."""
    render_compare_rays: int = 512
    """render-compare: rays rendered per step."""
    render_compare_lr: float = 2e-3
    """render-compare: Adam learning rate on the pose increment (radians / normalised units)."""
    max_image_size: Optional[int] = None
    """Longest side, in pixels, at which a query is refined: a larger query is downsampled first (its
    intrinsics scaled with it; poses are unaffected). None: the size at which a query pixel spans
    the angle of a training view's pixel, never larger than the query (the map holds no finer
    detail, and time grows with the pixels); 0: always the query's own size. Raise it only for a
    model trained on sharper images than it renders now."""


@dataclass
class QueryResult:
    """The outcome for one query; poses are world-to-camera in the user's world frame."""

    name: str
    T_cw_init: np.ndarray
    T_cw: np.ndarray
    initial_cost: float
    final_cost: float
    inlier_ratio: float
    iterations: int
    converged: bool
    improved: bool
    """False when flagged (see ``flag``): T_cw is then the initial pose (not made worse)."""
    seconds: float
    T_cw_refined: Optional[np.ndarray] = None
    """The pose the refinement reached, kept (T_cw) or not (flagged)."""
    flag: str = ""
    """Why the refined pose was not kept: "cost not lower", "outside the trust region" or
    "intensity not confirmed" (the polish stage's check); empty when improved."""
    restarted: bool = False
    """Whether the refinement from the initial pose was flagged and tried again from restarts
    (``RefineConfig.restart_distance``); ``flag`` then says why the restarts' pose was not kept."""

    def report(self) -> Dict:
        return {
            "name": self.name,
            "initial_cost": self.initial_cost,
            "final_cost": self.final_cost,
            "inlier_ratio": self.inlier_ratio,
            "iterations": self.iterations,
            "converged": self.converged,
            "improved": self.improved,
            "seconds": self.seconds,
            "flag": self.flag,
            "restarted": self.restarted,
        }


@dataclass
class Rendering:
    """Opaque pixels of a grid rendered at a pose, lifted to 3D (nerfstudio frame), and the whole grid."""

    points: Float[Tensor, "M 3"]
    features: Float[Tensor, "M D"]
    rgb: Float[Tensor, "M 3"]
    feature_image: Float[Tensor, "h w D"]
    rgb_image: Float[Tensor, "h w 3"]
    valid: Bool[Tensor, "h w"]
    """Which pixels of the grid are the M lifted ones."""


class Stage(NamedTuple):
    """One step of the coarse-to-fine schedule: render at ``stride``, lift, solve against ``fmap``."""

    fmap: Float[Tensor, "C h w"]
    stride: int
    renders: int
    targets: Callable[[Rendering], Tuple[Tensor, Tensor]]
    """The rendering's points and the values ``fmap`` must match at their projections."""
    lm: LMConfig
    column_step: int = 1
    """Render every ``column_step``-th column of the grid only (:meth:`PoseRefiner.grid`)."""


class PoseRefiner:
    """Refines query poses against one trained nifr pipeline."""

    def __init__(self, pipeline: Pipeline, transform: DataparserTransform, config: RefineConfig) -> None:
        self.model = pipeline.model
        self.model.eval()
        self.transform = transform
        self.config = config
        self.device = self.model.device
        spread = config.max_depth_spread
        if spread is not None and not spread > 0:
            raise ValueError(f"max_depth_spread must be positive (or None for the default), not {spread}")
        if (
            not config.polish.weight > 0
            or not config.level_intensity >= 0
            or not config.restart_distance >= 0
            or config.compare_steps < 0
        ):
            raise ValueError(
                "polish.weight must be positive (--refine.polish.enabled False turns the stage off), "
                "level_intensity, restart_distance and compare_steps non-negative; got "
                f"{config.polish.weight}, {config.level_intensity}, {config.restart_distance} "
                f"and {config.compare_steps}"
            )
        if not 1 <= config.starts <= 5:
            raise ValueError(f"starts must be from 1 to 5; got {config.starts}")
        polish = config.polish
        polish_steps = (polish.stride, polish.point_step, polish.column_step, polish.judging_stride)
        if min(config.render_strides + polish_steps) < 1:
            raise ValueError(
                "render_strides, polish.stride, polish.point_step, polish.column_step and polish.judge_stride "
                f"must be at least 1; got {config.render_strides}, {polish.stride}, {polish.point_step}, "
                f"{polish.column_step} and {polish.judge_stride}"
            )
        if config.max_image_size is not None and config.max_image_size < 0:
            raise ValueError(f"max_image_size must be positive, or 0 for the query's own size; got {config.max_image_size}")
        cameras = getattr(getattr(pipeline.datamanager, "train_dataset", None), "cameras", None)
        self.map_focal = float(cameras.fx.median()) if cameras is not None else None
        """The training views' focal length in their pixels: the angle one pixel of the map spans."""
        learned_from_rgb = self.model.config.depth_loss_mult == 0.0
        self.max_depth_spread = spread if spread is not None else (0.1 if learned_from_rgb else float("inf"))
        if len(config.render_strides) != len(self.model.encoder.config.strides):
            raise ValueError(
                f"render_strides has {len(config.render_strides)} entries, the encoder "
                f"{len(self.model.encoder.config.strides)} levels"
            )
        if not 0 <= self.first_level < len(config.render_strides):
            raise ValueError(
                f"first_level must name one of the encoder's {len(config.render_strides)} levels (0 to "
                f"{len(config.render_strides) - 1}); got {config.first_level}"
            )

    # frames -------------------------------------------------------------------------------
    def to_nerfstudio(self, T_cw_world: np.ndarray) -> Tensor:
        """World-frame T_cw -> T_cw in nerfstudio's frame, (4, 4) float64."""
        return torch.from_numpy(opengl_c2w_to_T_cw(self.transform.T_cw_to_nerfstudio_c2w(T_cw_world)))

    def to_world(self, T_cw_ns: Tensor) -> np.ndarray:
        return self.transform.nerfstudio_c2w_to_T_cw(T_cw_to_opengl_c2w(T_cw_ns.detach().cpu().double().numpy()))

    # rendering ----------------------------------------------------------------------------
    def camera(self, T_cw_ns: Float[Tensor, "*B 4 4"], intrinsics: Intrinsics, stride: int) -> Cameras:
        """The cameras (B,) at poses T_cw_ns (one if (4, 4)) rendering the query's grid at ``stride``."""
        c2w = torch.from_numpy(T_cw_to_opengl_c2w(T_cw_ns.detach().cpu().double().numpy())[..., :3, :]).float()
        return Cameras(
            camera_to_worlds=c2w.reshape(-1, 3, 4),
            fx=intrinsics.fx / stride,
            fy=intrinsics.fy / stride,
            cx=intrinsics.cx / stride,
            cy=intrinsics.cy / stride,
            width=max(1, round(intrinsics.width / stride)),
            height=max(1, round(intrinsics.height / stride)),
        ).to(self.device)

    def render(self, T_cw_ns: Tensor, intrinsics: Intrinsics, stride: int) -> Rendering:
        return self.render_many(T_cw_ns[None], intrinsics, stride)[0]

    def render_many(self, T_cw_ns: Float[Tensor, "B 4 4"], intrinsics: Intrinsics, stride: int) -> List[Rendering]:
        """:meth:`render` at B poses, in one pass through the model: a small grid's render costs mostly
        per pass (20 ms for 300 rays, 37 ms for 1200, 2 CPU cores)."""
        points, outputs = self.render_outputs(T_cw_ns, intrinsics, stride)
        return [self.lift(points[b], {k: v[b] for k, v in outputs.items()}) for b in range(len(points))]

    @staticmethod
    def grid(stage: Stage, intrinsics: Intrinsics) -> Intrinsics:
        """The camera ``stage`` renders (at its stride): the query's, or every ``column_step``-th
        column of it, whose pixels are that many columns wide."""
        return intrinsics if stage.column_step == 1 else intrinsics.scaled(1 / stage.column_step, 1.0)

    @torch.no_grad()
    def render_outputs(
        self, T_cw_ns: Float[Tensor, "B 4 4"], intrinsics: Intrinsics, stride: int
    ) -> Tuple[Float[Tensor, "B h w 3"], Dict[str, Tensor]]:
        """The grids' surface points (each ray's depth along it) and the model's (B, h, w, C) outputs,
        before lifting; the B grids go through the model as one (B h, w) image."""
        cameras = self.camera(T_cw_ns, intrinsics, stride)
        count, h, w = len(T_cw_ns), int(cameras.height[0]), int(cameras.width[0])
        indices = torch.arange(count, device=self.device).view(count, 1, 1, 1).expand(count, h, w, 1)
        coords = cameras.get_image_coords().expand(count, h, w, 2)
        rays = cameras.generate_rays(camera_indices=indices, coords=coords, keep_shape=True).reshape((count * h, w))
        out = self.model.get_outputs_for_camera_ray_bundle(rays)
        points = rays.origins + rays.directions * out["depth"]
        return points.view(count, h, w, 3), {k: v.view(count, h, w, -1) for k, v in out.items()}

    def lift(self, points: Float[Tensor, "h w 3"], outputs: Dict[str, Tensor]) -> Rendering:
        """The rendered grid's pixels that are opaque and whose rays end sharply, or the sharper half
        of the opaque ones if fewer pass, with their 3D points (``outputs``: the model's (h, w, C)
        rgb, feature, accumulation and depth_spread)."""
        opaque = outputs["accumulation"][..., 0] >= self.config.min_accumulation
        spread = outputs["depth_spread"][..., 0]
        # never fewer than half the opaque pixels: a model diffuse everywhere still gets refined
        limit = max(self.max_depth_spread, float(spread[opaque].median())) if opaque.any() else 0.0
        valid = opaque & (spread <= limit)
        feature, rgb = outputs["feature"], outputs["rgb"]
        return Rendering(points[valid], feature[valid], rgb[valid], feature, rgb, valid)

    def render_depth(self, T_cw_world: np.ndarray, intrinsics: Intrinsics, stride: int) -> np.ndarray:
        """(h, w) z-depth in world units of a grid rendered at a world-frame pose; 0 where not opaque."""
        points, out = self.render_outputs(self.to_nerfstudio(T_cw_world)[None], intrinsics, stride)
        points, out = points[0].double().cpu().numpy(), {k: v[0] for k, v in out.items()}
        X_world = self.transform.points_to_world(points.reshape(-1, 3))
        z = (X_world @ T_cw_world[2, :3] + T_cw_world[2, 3]).reshape(points.shape[:2])
        opaque = out["accumulation"][..., 0].cpu().numpy() >= self.config.min_accumulation
        return np.where(opaque & (z > 0), z, 0.0)

    @torch.no_grad()
    def encode_features(self, image: Float[Tensor, "H W 3"]) -> List[Float[Tensor, "D h w"]]:
        """The image's feature pyramid, coarse to fine."""
        return [level[0] for level in self.model.encoder(image.permute(2, 0, 1)[None].to(self.device))]

    def encode(self, image: Float[Tensor, "H W 3"]) -> List[Float[Tensor, "D h w"]]:
        """What the solver aligns: the feature pyramid, or (photometric) the RGB at the same scales."""
        if self.config.mode != "photometric":
            return self.encode_features(image)
        chw = image.permute(2, 0, 1)[None].to(self.device)
        return [F.avg_pool2d(chw, s, ceil_mode=True)[0] if s > 1 else chw[0] for s in self.model.encoder.config.strides]

    def working(self, image: Float[Tensor, "H W 3"], intrinsics: Intrinsics) -> Tuple[Tensor, Intrinsics]:
        """The query as refined: downsampled (antialiased) to :attr:`RefineConfig.max_image_size`, with
        its intrinsics; the query itself where it is no larger."""
        height, width = image.shape[:2]
        limit = self.config.max_image_size
        if limit is None:
            scale = 1.0 if self.map_focal is None else self.map_focal / min(intrinsics.fx, intrinsics.fy)
        else:
            scale = limit / max(width, height) if limit > 0 else 1.0
        if scale >= 1.0:
            return image, intrinsics
        size = (max(8, round(height * scale)), max(8, round(width * scale)))
        resized = F.interpolate(image.permute(2, 0, 1)[None], size=size, mode="bilinear", antialias=True)
        return resized[0].permute(1, 2, 0).clamp(0, 1), intrinsics.scaled(size[1] / width, size[0] / height)

    # refinement ---------------------------------------------------------------------------
    def refine(
        self, name: str, image: Float[Tensor, "H W 3"], intrinsics: Intrinsics, inits: List[np.ndarray]
    ) -> QueryResult:
        """Refines each initial pose (world frame) and keeps the one of lowest final cost."""
        if any(abs(v) > 0 for v in intrinsics.distortion.values()):
            raise ValueError(f"{name}: distorted cameras are not supported; undistort the query images first")
        # nerfstudio's evaluation helpers leave the model in training mode, where the encoder
        # augments its input and the samplers jitter: refinement must never run like that
        self.model.eval()
        start = time.perf_counter()
        image, intrinsics = self.working(image, intrinsics)
        levels = self.encode(image)
        polish = judge = None
        if self.polishes:
            cfg = self.config.polish
            polish = self.polish_map(image, levels[-1], cfg.stride)
            judge = polish
            if cfg.judging_stride != cfg.stride:
                judge = self.polish_map(image, levels[-1], cfg.judging_stride)
        if self.level_weight > 0:
            levels = [
                torch.cat([level, self.intensity_map(image, stride, self.level_weight, level.shape[-2:])])
                for level, stride in zip(levels, self.config.render_strides)
            ]
        stages = self.stages(levels, polish)
        search, stages = stages[0], stages[self.first_level :]
        judges = self.judges(stages[-1], judge)
        results = [self.refine_one(name, search, stages, judges, intrinsics, T) for T in inits]
        best = min(results, key=lambda r: r.final_cost)
        best.seconds = time.perf_counter() - start
        return best

    def judges(self, last: Stage, judge: Optional[Tensor]) -> List[Stage]:
        """What the initial and refined poses are compared by: the last stage's cost, on ``judge`` (the
        polish stage's map at ``judge_stride``) when given, then the intensity check if on."""
        if judge is not None:
            targets = partial(self.targets, weight=self.config.polish.weight)
            last = last._replace(fmap=judge, stride=self.config.polish.judging_stride, targets=targets, column_step=1)
        return [last] + ([self.intensity_check(last)] if self.verifies else [])

    def refine_one(
        self,
        name: str,
        search: Stage,
        stages: List[Stage],
        judges: List[Stage],
        intrinsics: Intrinsics,
        T_cw_init: np.ndarray,
    ) -> QueryResult:
        """One initial pose, turned by the search on ``search`` (:meth:`search_start`), through ``stages``
        (:meth:`stages`), then the initial and refined poses compared by ``judges`` (:meth:`judges`); with
        ``starts`` > 1 the coarse levels run from several starts (:meth:`best_of`). A flagged refinement
        is tried again from restarts around the initial pose (:meth:`moved`, :meth:`best_of`), judged
        against the initial pose as before."""
        K = torch.from_numpy(intrinsics.K()).to(self.device, torch.float64)
        hw = (intrinsics.height, intrinsics.width)
        T_init = self.to_nerfstudio(T_cw_init).to(self.device)
        coarsest = self.render(T_init, intrinsics, search.stride)  # for the scale and the turn search
        depth = self.view_depth(T_init, intrinsics, coarsest)
        if self.config.mode == "render-compare":  # a fixed number of steps
            T = self.render_and_compare(stages[-1].fmap, intrinsics, T_init)  # the finest level: no polish
            iterations, converged = self.config.render_compare_steps, True
        elif self.several_starts:
            T = self.search_start(T_init, search, intrinsics, K, hw, coarsest)
            starts = [T] + self.moved(T, depth)[: self.config.starts - 1]
            T, iterations, converged = self.best_of(starts, stages, judges[0], intrinsics, K, hw)
        else:
            T, iterations, converged = self.solve([T_init], stages, intrinsics, K, hw, search)[0]
        T, final = self.settle(T, judges, intrinsics, K, hw)
        initial = self.costs([T_init], judges, intrinsics, K, hw)[0]
        flag = self.verdict(T_init, T, initial, final, depth)
        restarted = bool(flag) and self.restarts
        if restarted:
            restarts = self.moved(T_init, depth)
            T_restart, more, restart_converged = self.best_of(restarts, stages, judges[0], intrinsics, K, hw, search)
            T_restart, final_restart = self.settle(T_restart, judges, intrinsics, K, hw)
            iterations += more
            if not self.verdict(T_init, T_restart, initial, final_restart, depth):
                T, final, flag, converged = T_restart, final_restart, "", restart_converged
        improved = not flag
        return QueryResult(
            name=name,
            T_cw_init=T_cw_init,
            T_cw=self.to_world(T) if improved else T_cw_init,
            T_cw_refined=self.to_world(T),
            initial_cost=initial[0][0],
            final_cost=final[0][0] if improved else initial[0][0],
            inlier_ratio=final[0][1],
            iterations=iterations,
            converged=converged and improved,
            improved=improved,
            seconds=0.0,
            flag=flag,
            restarted=restarted,
        )

    def solve(
        self,
        starts: Sequence[Tensor],
        stages: List[Stage],
        intrinsics: Intrinsics,
        K: Tensor,
        hw: Tuple[int, int],
        search: Optional[Stage] = None,
    ) -> List[Tuple[Tensor, int, bool]]:
        """LM through ``stages`` from each pose of ``starts`` (after the turn search on ``search``, if
        given), re-rendering ``stage.renders`` times per stage; the starts go together, one render pass
        and one batched solve (:func:`lm_refine_batch`) per step. Per start: the pose, iterations and
        whether its last run converged."""
        poses = [self.search_start(T, search, intrinsics, K, hw) if search is not None else T for T in starts]
        iterations, converged = [0] * len(poses), [True] * len(poses)
        for stage in stages:
            going = list(range(len(poses)))  # a start that sees too little skips the stage's other renders
            for _ in range(stage.renders):
                renderings = self.render_many(torch.stack([poses[b] for b in going]), self.grid(stage, intrinsics),
                                              stage.stride)
                seen = [(b, rendering) for b, rendering in zip(going, renderings) if len(rendering.points) >= 6]
                if not seen:
                    break
                going, renderings = zip(*seen)
                points, targets = zip(*[stage.targets(rendering) for rendering in renderings])
                results = lm_refine_batch([poses[b] for b in going], points, targets, stage.fmap, K, hw, stage.lm)
                for b, result in zip(going, results):
                    poses[b], converged[b] = result.T_cw, result.converged
                    iterations[b] += result.iterations
        return list(zip(poses, iterations, converged))

    def verdict(
        self, T_init: Tensor, T: Tensor, initial: List[Tuple[float, float]], final: List[Tuple[float, float]], depth: float
    ) -> str:
        """Why the refined pose T may not replace T_init ("" if it may), from both poses' judges' costs
        (:meth:`costs`: the last stage's, then the intensity check's if on)."""
        if not final[0][0] < initial[0][0]:
            return "cost not lower"
        if not self.within_trust_region(T_init, T, depth):
            return "outside the trust region"
        if len(initial) > 1 and not self.config.polish.confirms(initial[1][0], final[1][0]):
            return "intensity not confirmed"
        return ""

    @property
    def several_starts(self) -> bool:
        return self.config.starts > 1 and self.config.restart_distance > 0  # the distance spaces the starts

    @property
    def first_level(self) -> int:
        """:attr:`RefineConfig.first_level`, its default resolved."""
        level = self.config.first_level
        return level if level is not None else int(self.several_starts)

    @property
    def restarts(self) -> bool:
        return self.config.restart_distance > 0 and self.config.mode != "render-compare"

    def moved(self, T: Tensor, depth: float) -> List[Tensor]:
        """T moved ``restart_distance`` x ``depth`` against and along the camera's x axis, then its y axis."""
        poses = []
        for axis in (0, 1):
            for sign in (-1.0, 1.0):
                pose = T.clone()
                pose[axis, 3] += sign * self.config.restart_distance * depth  # T_cw: along the camera's own axis
                poses.append(pose)
        return poses

    def best_of(
        self,
        starts: List[Tensor],
        stages: List[Stage],
        judge: Stage,
        intrinsics: Intrinsics,
        K: Tensor,
        hw: Tuple[int, int],
        search: Optional[Stage] = None,
    ) -> Tuple[Tensor, int, bool]:
        """The pose reached from the best of ``starts``: each goes through the coarse levels (after the
        turn search on ``search``, if given); the one whose cost on the last of them, rendered at its pose, is
        lowest then through the finest level and the polish stage, which render at the finest strides
        and cost the most (``judge``: the measure when there is no coarse level). Returns the pose, the
        LM iterations of all runs and whether the last converged."""
        n_fine = 2 if self.polishes else 1  # the finest level and the polish stage, or the finest level
        coarse, fine = stages[:-n_fine], stages[-n_fine:]
        # the turn search goes before the first level solved: the coarse ones, else the finest
        search_coarse, search_fine = (search, None) if coarse else (None, search)
        reached = self.solve(starts, coarse, intrinsics, K, hw, search_coarse)
        costs = self.costs([T for T, _, _ in reached], coarse[-1:] or [judge], intrinsics, K, hw)
        best = min(range(len(reached)), key=lambda b: costs[b][0][0])
        T, more, converged = self.solve([reached[best][0]], fine, intrinsics, K, hw, search_fine)[0]
        return T, sum(iterations for _, iterations, _ in reached) + more, converged

    def search_start(
        self,
        T_init: Tensor,
        stage: Stage,
        intrinsics: Intrinsics,
        K: Tensor,
        hw: Tuple[int, int],
        rendering: Optional[Rendering] = None,
    ) -> Tensor:
        """The initial pose turned about the camera centre to where ``stage``'s cost is lowest on a grid
        (``rendering``: ``stage``'s render at T_init, if already made)."""
        half, step = self.config.search_deg, self.config.search_step_deg
        if half <= 0:
            return T_init.clone()
        if rendering is None:
            rendering = self.render(T_init, intrinsics, stage.stride)
        if len(rendering.points) < 6:
            return T_init.clone()
        points, targets = stage.targets(rendering)
        angles = torch.deg2rad(torch.arange(-half, half + 1e-9, step, dtype=torch.float64, device=self.device))
        pitch, yaw = torch.meshgrid(angles, angles, indexing="ij")
        zeros = torch.zeros_like(pitch)
        turns = se3_exp(torch.stack([pitch, yaw, zeros, zeros, zeros, zeros], dim=-1).reshape(-1, 6))
        # the solver's own cost, a point out of view charged as a random match: measured on 96 queries
        # and four models, this chose better starts than comparing the points every turn keeps in view
        costs = point_costs(turns @ T_init, points, targets, stage.fmap, K, hw, stage.lm)[0].mean(dim=-1)
        return turns[int(costs.argmin())] @ T_init

    def within_trust_region(self, T_init: Tensor, T: Tensor, depth: float) -> bool:
        """Whether the move from T_init to T (nerfstudio frame), for a view of surfaces ``depth`` away, is
        one a local refinement can make."""
        motion = (T @ torch.linalg.inv(T_init)).cpu().double().numpy()
        moved = np.linalg.norm(camera_center(T.cpu().double().numpy()) - camera_center(T_init.cpu().double().numpy()))
        turned = rotation_angle_deg(motion[:3, :3])
        return bool(moved <= self.config.max_translation * depth and turned <= self.config.max_rotation_deg)

    def view_depth(self, T: Tensor, intrinsics: Intrinsics, rendering: Optional[Rendering] = None) -> float:
        """The median depth (nerfstudio units) of the surfaces the camera at T sees, from a render on the
        coarsest grid (``rendering``, if already made): the scale of this query's scene, for the
        distances that are shares of it."""
        if rendering is None:
            rendering = self.render(T, intrinsics, self.config.render_strides[0])
        if len(rendering.points) == 0:
            return 1.0  # nothing in view: the training cameras' spread, about the normalised scene's radius
        z = rendering.points.double() @ T[2, :3].to(rendering.points.device) + T[2, 3]
        return float(z.median())

    def targets(
        self, rendering: Rendering, weight: float = 0.0, every: int = 1, window: Optional[Tuple[int, int]] = None
    ) -> Tuple[Tensor, Tensor]:
        """Every ``every``-th lifted point and what the query's map must match at its projection: the
        rendered RGB (photometric), or the features with ``weight`` x normalised intensity beside them
        (if > 0), normalised over ``window`` (rows, columns; default the polish stage's square)."""
        if self.config.mode == "photometric":
            values = rendering.rgb
        elif weight > 0:
            image = rendering.rgb_image.permute(2, 0, 1)
            intensity = normalized_log_rgb(image, window or self.config.polish.window).permute(1, 2, 0)
            values = torch.cat([rendering.features, weight * intensity[rendering.valid]], dim=-1)
        else:
            values = rendering.features
        return rendering.points[::every].double(), values[::every].double()

    @property
    def level_weight(self) -> float:
        return self.config.level_intensity if self.config.mode == "features" else 0.0

    def intensity_map(
        self, image: Float[Tensor, "H W 3"], stride: int, weight: float, size: Optional[Tuple[int, int]] = None
    ) -> Float[Tensor, "3 h w"]:
        """The query's normalised intensity times ``weight``, pooled at ``stride`` (the stride the field
        is rendered at, so both sides are normalised over the same neighbourhood), resampled to ``size``."""
        chw = image.permute(2, 0, 1)[None].to(self.device)
        rgb = F.avg_pool2d(chw, stride, ceil_mode=True) if stride > 1 else chw
        intensity = weight * normalized_log_rgb(rgb[0], self.config.polish.window)
        if size is None or tuple(size) == tuple(intensity.shape[-2:]):
            return intensity
        return F.interpolate(intensity[None], size=tuple(size), mode="bilinear", align_corners=False)[0]

    def stages(self, levels: List[Tensor], polish: Optional[Tensor]) -> List[Stage]:
        """The encoder's levels, coarse to fine, then the polish stage when given its map."""
        level_targets = partial(self.targets, weight=self.level_weight)
        stages = [
            Stage(fmap, stride, self.config.renders_per_level, level_targets, self.config.lm)
            for fmap, stride in zip(levels, self.config.render_strides)
        ]
        if polish is not None:
            cfg = self.config.polish
            polish_lm = replace(self.config.lm, robust_scale=cfg.robust_scale)
            targets = partial(self.targets, weight=cfg.weight, every=cfg.point_step, window=cfg.rendered_window)
            stages.append(Stage(polish, cfg.stride, cfg.renders, targets, polish_lm, cfg.column_step))
        return stages

    def settle(
        self, T: Tensor, judges: List[Stage], intrinsics: Intrinsics, K: Tensor, hw: Tuple[int, int]
    ) -> Tuple[Tensor, List[Tuple[float, float]]]:
        """``compare_steps`` steps on the first judge's cost from T (:attr:`RefineConfig.compare_steps`):
        the visited pose of lowest cost and its :meth:`costs`."""
        judge = judges[0]
        rendering = self.render(T, intrinsics, judge.stride)
        best_T, best_costs = T, self.rendered_costs(T, rendering, judges, K, hw)
        steps = self.config.compare_steps if self.config.mode != "render-compare" else 0
        for _ in range(steps):
            if len(rendering.points) < 6:
                break
            points, targets = judge.targets(rendering)
            gradients = image_gradient(self.target_image(judge, rendering), hw)[rendering.valid]
            delta = render_step(T, points, targets, gradients, judge.fmap, K, hw, judge.lm)
            if delta is None:
                break
            T = se3_exp(delta) @ T
            rendering = self.render(T, intrinsics, judge.stride)
            costs = self.rendered_costs(T, rendering, judges, K, hw)
            if costs[0][0] < best_costs[0][0]:
                best_T, best_costs = T, costs
        return best_T, best_costs

    @staticmethod
    def target_image(stage: Stage, rendering: Rendering) -> Float[Tensor, "C h w"]:
        """What ``stage`` aligns, at every pixel of the rendered grid rather than the lifted ones."""
        h, w = rendering.valid.shape
        every_pixel = replace(
            rendering,
            points=rendering.points.new_zeros(h * w, 3),
            features=rendering.feature_image.reshape(h * w, -1),
            rgb=rendering.rgb_image.reshape(h * w, -1),
            valid=torch.ones_like(rendering.valid),
        )
        values = stage.targets(every_pixel)[1]
        if len(values) != h * w:
            raise ValueError("a stage that thins its points out has no target image")
        return values.T.reshape(-1, h, w)

    def costs(
        self, poses: Sequence[Tensor], stages: List[Stage], intrinsics: Intrinsics, K: Tensor, hw: Tuple[int, int]
    ) -> List[List[Tuple[float, float]]]:
        """Per pose, the robust cost and inlier ratio of each stage there, from one rendering at it (the
        stages share its stride; the poses are rendered in one pass); inf if nothing is visible."""
        renderings = self.render_many(torch.stack(list(poses)), self.grid(stages[0], intrinsics), stages[0].stride)
        return [self.rendered_costs(T, rendering, stages, K, hw) for T, rendering in zip(poses, renderings)]

    def rendered_costs(
        self, T: Tensor, rendering: Rendering, stages: List[Stage], K: Tensor, hw: Tuple[int, int]
    ) -> List[Tuple[float, float]]:
        """:meth:`costs` from a rendering at T."""
        if len(rendering.points) < 6:
            return [(float("inf"), 0.0)] * len(stages)
        # zero iterations: the solver's own cost and inlier ratio at T
        results = [
            lm_refine(T, *stage.targets(rendering), stage.fmap, K, hw, replace(stage.lm, max_iterations=0))
            for stage in stages
        ]
        return [(result.initial_cost, result.inlier_ratio) for result in results]

    # the polish stage ---------------------------------------------------------------------
    @property
    def polishes(self) -> bool:
        return self.config.mode == "features" and self.config.polish.enabled

    @property
    def verifies(self) -> bool:
        return self.polishes and self.config.polish.verify_gain > 0

    def intensity_check(self, polish: Stage) -> Stage:
        """The polish stage restricted to its three intensity channels: the check on the learned features."""

        def targets(rendering: Rendering) -> Tuple[Tensor, Tensor]:
            points, values = polish.targets(rendering)
            return points, values[:, -3:]

        return polish._replace(fmap=polish.fmap[-3:], targets=targets)

    def polish_map(
        self, image: Float[Tensor, "H W 3"], fine: Float[Tensor, "D h w"], stride: int
    ) -> Float[Tensor, "C hp wp"]:
        """The query side of the polish stage: its finest features and weighted normalised intensity,
        both pooled to ``stride``, (D + 3, ceil(H/s), ceil(W/s))."""
        intensity = self.intensity_map(image, stride, self.config.polish.weight)
        features = F.normalize(F.adaptive_avg_pool2d(fine[None], intensity.shape[-2:]), dim=1)
        return torch.cat([features[0], intensity])

    def render_and_compare(self, fmap: Tensor, intrinsics: Intrinsics, T_init: Tensor) -> Tensor:
        """iNeRF-style: Adam on a pose increment, rendering random rays through the field each step."""
        xi = torch.zeros(6, dtype=torch.float64, device=self.device, requires_grad=True)
        optimizer = torch.optim.Adam([xi], lr=self.config.render_compare_lr)
        h, w = intrinsics.height, intrinsics.width
        K_inv = torch.linalg.inv(torch.from_numpy(intrinsics.K())).to(self.device)
        for _ in range(self.config.render_compare_steps):
            uv = torch.rand(self.config.render_compare_rays, 2, device=self.device, dtype=torch.float64)
            uv = uv * torch.tensor([w, h], device=self.device, dtype=torch.float64)
            query = sample_features(fmap[None].double(), uv[None], (h, w))[0]
            T = se3_exp(xi) @ T_init
            rendered = self.render_rays(T, K_inv, uv)
            loss = (1.0 - (rendered.double() * query).sum(-1)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return (se3_exp(xi) @ T_init).detach()

    def render_rays(self, T_cw: Tensor, K_inv: Tensor, uv: Tensor) -> Tensor:
        """Rendered features of pixels ``uv`` at pose ``T_cw``, differentiable w.r.t. the pose."""
        from nerfstudio.cameras.rays import RayBundle

        R_wc = T_cw[:3, :3].T
        directions = torch.cat([uv, torch.ones_like(uv[:, :1])], -1) @ K_inv.T @ R_wc.T
        norms = directions.norm(dim=-1, keepdim=True)
        origins = (-R_wc @ T_cw[:3, 3]).expand_as(directions)
        bundle = RayBundle(
            origins=origins.float(),
            directions=(directions / norms).float(),
            pixel_area=(K_inv[0, 0] * K_inv[1, 1] / norms**2).float(),  # 1 / (fx fy), per unit direction
            camera_indices=torch.zeros_like(uv[:, :1], dtype=torch.long),
            metadata={"directions_norm": norms.float()},  # as Cameras.generate_rays: z-depth = depth / norm
        )
        return self.model(bundle)["feature"]


class Retrieval:
    """Nearest training views of a query by a global descriptor pooled from the encoder's coarse level."""

    def __init__(self, refiner: PoseRefiner, dataset) -> None:
        self.refiner = refiner
        c2w = dataset.cameras.camera_to_worlds.cpu().double().numpy()
        self.poses = [refiner.transform.nerfstudio_c2w_to_T_cw(c) for c in c2w]  # world frame
        self.descriptors = torch.stack(
            [global_descriptor(refiner.encode_features(dataset[i]["image"][..., :3])[0]) for i in range(len(dataset))]
        )

    def nearest(self, coarse: Float[Tensor, "D h w"], k: int) -> List[np.ndarray]:
        """World-frame poses of the k training views most similar to a query's coarse level."""
        scores = self.descriptors @ global_descriptor(coarse)
        return [self.poses[i] for i in scores.topk(min(k, len(self.poses))).indices.tolist()]


def global_descriptor(coarse: Float[Tensor, "D h w"]) -> Float[Tensor, "E"]:
    """Features pooled on a 3x4 grid, so the descriptor keeps the image's layout; unit norm."""
    return F.normalize(F.adaptive_avg_pool2d(coarse[None], (3, 4)).flatten(), dim=0)
