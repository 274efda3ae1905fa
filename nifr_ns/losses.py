"""The self-supervised losses that align the 3D feature field with the 2D image encoder:
pixel-aligned InfoNCE, the multi-view term, the prototypical (swapped-prediction) loss
with its Sinkhorn assignment, and the ranking loss from the learned surface; and the
optional sensor-depth loss for RGB-D data.

Pure torch; every weight, temperature and margin is an argument (the model config holds
the values). Features given to these functions are unit vectors.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from nifr_ns.geometry import project, transform_points


def info_nce(
    a: Float[Tensor, "G N D"],
    b: Float[Tensor, "G N D"],
    temperature: float,
    mask: Optional[Bool[Tensor, "G N"]] = None,
    symmetric: bool = True,
) -> Float[Tensor, ""]:
    """Pixel-aligned InfoNCE with in-group negatives.

    In each group g (one image), a[g, i] and b[g, i] are a positive pair and the other valid
    b[g, j] are its negatives. Masked entries are neither anchors nor negatives; groups with
    fewer than two valid entries contribute nothing. ``symmetric`` averages the a->b and b->a
    directions. Returns the mean over valid anchors, a zero that still has a graph when there
    are none.
    """
    valid = torch.ones(a.shape[:2], dtype=torch.bool, device=a.device) if mask is None else mask
    anchors = valid & (valid.sum(dim=1, keepdim=True) >= 2)
    targets = torch.arange(a.shape[1], device=a.device).expand_as(valid).flatten()
    similarity = a @ b.transpose(1, 2) / temperature

    def cross_entropy(logits: Tensor) -> Tensor:
        # A finite fill keeps fully masked rows free of NaN; they are then weighted out.
        logits = logits.masked_fill(~valid[:, None, :], torch.finfo(logits.dtype).min)
        per_anchor = F.cross_entropy(logits.flatten(0, 1), targets, reduction="none")
        return (per_anchor * anchors.flatten()).sum() / anchors.sum().clamp(min=1)

    if not symmetric:
        return cross_entropy(similarity)
    return 0.5 * (cross_entropy(similarity) + cross_entropy(similarity.transpose(1, 2)))


def local_info_nce(
    f3d: Float[Tensor, "G N D"],
    fmap: Float[Tensor, "G D h w"],
    uv: Float[Tensor, "G N 2"],
    image_hw: Tuple[int, int],
    temperature: float,
    radius: int,
) -> Float[Tensor, ""]:
    """3D->2D InfoNCE against the encoder level's cells around each pixel: the positive of the
    rendered feature of pixel p is the cell containing p, its negatives the other cells of the
    (2 radius + 1)^2 window centred there (cells off the map are left out).

    Sampled pixels of one image lie about sqrt(HW/N) pixels apart, so in-batch negatives never
    teach a feature to differ from its neighbours; here the next cell is a negative, which is
    what a nearest-neighbour match within 1-3 px (and a sharply peaked refinement cost) needs.
    The far negatives stay with :func:`info_nce`. ``fmap`` holds unit vectors; ``uv`` follows the
    pixel-centre convention of the full image.
    """
    g, dim, h, w = fmap.shape
    height, width = image_hw
    col = (uv[..., 0] * w / width).long().clamp(0, w - 1)
    row = (uv[..., 1] * h / height).long().clamp(0, h - 1)
    offsets = torch.arange(-radius, radius + 1, device=fmap.device)
    rows = row[..., None, None] + offsets[:, None]  # (G, N, k, 1)
    cols = col[..., None, None] + offsets[None, :]  # (G, N, 1, k)
    inside = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).flatten(2)  # (G, N, k*k)
    index = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).flatten(2)
    n, k2 = index.shape[1], index.shape[2]
    cells = fmap.flatten(2).gather(2, index.reshape(g, 1, n * k2).expand(g, dim, n * k2))  # (G, D, N*k*k)
    logits = torch.einsum("gnd,gdnk->gnk", f3d, cells.view(g, dim, n, k2)) / temperature
    logits = logits.masked_fill(~inside, torch.finfo(logits.dtype).min)
    centre = torch.full((g * n,), k2 // 2, device=fmap.device)
    return F.cross_entropy(logits.flatten(0, 1), centre)


@torch.no_grad()
def sinkhorn(scores: Float[Tensor, "N K"], epsilon: float, iterations: int) -> Float[Tensor, "N K"]:
    """SwAV's Sinkhorn-Knopp: soft assignments of N samples to K prototypes, spread evenly.

    Returns codes whose rows sum to 1 and whose columns sum to N / K (up to convergence).
    No gradient: the codes are targets.
    """
    num_samples, num_prototypes = scores.shape
    # In log space, so that a small epsilon cannot underflow a whole column to zero.
    log_codes = scores / epsilon
    for _ in range(iterations):
        log_codes = log_codes - log_codes.logsumexp(dim=0, keepdim=True) + math.log(num_samples / num_prototypes)
        log_codes = log_codes - log_codes.logsumexp(dim=1, keepdim=True)
    return log_codes.exp()


def prototype_loss(
    z3d: Float[Tensor, "N D"],
    z2d: Float[Tensor, "N D"],
    prototypes: Float[Tensor, "K D"],
    temperature: float,
    epsilon: float,
    iterations: int,
) -> Float[Tensor, ""]:
    """Swapped prediction over prototypes shared by the two embeddings.

    The Sinkhorn codes of each side (detached) are predicted from the other side's softmax
    over its prototype scores at ``temperature``:
    0.5 * (CE(q3d, p2d) + CE(q2d, p3d)). ``prototypes`` (the caller's learnable parameter) are
    L2-normalised here. Gradients reach z3d, z2d and the prototypes.
    """
    unit_prototypes = F.normalize(prototypes, dim=-1)
    scores_3d, scores_2d = z3d @ unit_prototypes.T, z2d @ unit_prototypes.T
    codes_3d = sinkhorn(scores_3d, epsilon, iterations)
    codes_2d = sinkhorn(scores_2d, epsilon, iterations)
    predict_3d_from_2d = -(codes_3d * F.log_softmax(scores_2d / temperature, dim=-1)).sum(dim=-1).mean()
    predict_2d_from_3d = -(codes_2d * F.log_softmax(scores_3d / temperature, dim=-1)).sum(dim=-1).mean()
    return 0.5 * (predict_3d_from_2d + predict_2d_from_3d)


def ranking_loss(
    enc: Float[Tensor, "R D"],
    surface: Float[Tensor, "R D"],
    samples: Float[Tensor, "R S D"],
    distance: Float[Tensor, "R S"],
    margin: float,
    mask: Optional[Bool[Tensor, "R S"]] = None,
) -> Float[Tensor, ""]:
    """Ranking from the learned surface: along a ray, the encoder feature of its pixel must be
    most similar to the 3D feature at the surface, and less and less similar to 3D features
    further from it.

    ``distance`` is each sample's distance to the surface along the ray (>= 0, any unit).
    Hinges relu(m + sim(enc, far) - sim(enc, near)) are averaged over the valid pairs
    (surface, sample) and (sample, next sample by distance). The margin grows with the
    distance gap, m = margin * (d_far - d_near) / d_max with d_max the ray's largest valid
    distance: it is unit-free, and the chain margins add up to the surface-to-farthest one,
    so the pairs never ask for conflicting profiles (a similarity falling linearly by
    ``margin`` from the surface to the farthest sample satisfies all with equality).

    The 3D features are detached: this loss regularises the encoder with the geometry the
    field has learned; letting it move the field would let it meet the ranking by scrambling
    off-surface features instead of shaping the encoder.
    """
    valid = torch.ones_like(distance, dtype=torch.bool) if mask is None else mask
    sim_surface = (enc * surface.detach()).sum(dim=-1, keepdim=True)
    sim_samples = (enc[:, None, :] * samples.detach()).sum(dim=-1)

    order = distance.masked_fill(~valid, float("inf")).argsort(dim=1, stable=True)  # valid samples first
    valid = valid.gather(1, order)
    dist = distance.gather(1, order).masked_fill(~valid, 0.0)
    sim = sim_samples.gather(1, order)
    scale = dist.amax(dim=1, keepdim=True).clamp(min=torch.finfo(dist.dtype).tiny)

    to_surface = F.relu(margin * dist / scale + sim - sim_surface)
    chain = F.relu(margin * (dist[:, 1:] - dist[:, :-1]) / scale + sim[:, 1:] - sim[:, :-1])
    chain_valid = valid[:, 1:] & valid[:, :-1]
    total = (to_surface * valid).sum() + (chain * chain_valid).sum()
    return total / (valid.sum() + chain_valid.sum()).clamp(min=1)


def multiview_pairs(
    points_world: Float[Tensor, "*P M 3"],
    T_cw_b: Float[Tensor, "*P 4 4"],
    K_b: Float[Tensor, "*P 3 3"],
    image_hw: Tuple[int, int],
    depth_b: Union[Callable[[Tensor, Tensor], Tensor], Float[Tensor, "*P M"], None],
    rel_tol: float,
) -> Tuple[Float[Tensor, "*P M 2"], Bool[Tensor, "*P M"]]:
    """Projects points lifted from image A (with A's rendered depth) into image B, for P pairs at once.

    ``T_cw_b`` is B's world-to-camera pose (OpenCV axes) in the frame of ``points_world``.
    ``depth_b`` is B's z-depth (along its optical axis, not the range along the ray) at the
    projections: a function of (uv (V, 2), pair (V,)) -> (V,), called once with the V in-view
    points of all pairs and each one's pair index (0 without the leading P), or the (*P, M)
    values, or None to skip the occlusion test.
    Returns uv_b (pixel-centre convention; finite for every point) and valid: in front of B,
    inside B's image and, with depth, not occluded: |z_b - depth_b| <= rel_tol * z_b.
    """
    T_cw_b = torch.as_tensor(T_cw_b, dtype=points_world.dtype, device=points_world.device)
    K_b = torch.as_tensor(K_b, dtype=points_world.dtype, device=points_world.device)
    # project keeps uv finite even for points behind B (rejected by z > 0 below), so a caller can
    # sample features at every uv without NaNs reaching the masked loss entries.
    uv, z = project(transform_points(T_cw_b, points_world), K_b)

    height, width = image_hw
    u, v = uv[..., 0], uv[..., 1]
    valid = (z > 0) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    if depth_b is not None:
        # Only in-view points are tested, so that a rendering callable renders no wasted rays.
        flat_valid, flat_z = valid.view(-1, valid.shape[-1]), z.view(-1, z.shape[-1])
        pair, point = flat_valid.nonzero(as_tuple=True)
        if callable(depth_b):
            depth = depth_b(uv.view(-1, *uv.shape[-2:])[pair, point], pair)
        else:
            depth = depth_b.reshape(-1, depth_b.shape[-1])[pair, point]
        in_z = flat_z[pair, point]
        flat_valid[pair, point] = (in_z - depth).abs() <= rel_tol * in_z
    return uv, valid


def multiview_loss(
    feat_a: Float[Tensor, "M D"],
    enc_b: Float[Tensor, "M D"],
    valid: Bool[Tensor, " M"],
    temperature: float,
) -> Float[Tensor, ""]:
    """Cross-view InfoNCE: the 3D feature of a point of image A and B's encoder feature at the
    point's projection are positives; the other valid pairs are negatives."""
    return info_nce(feat_a[None], enc_b[None], temperature, mask=valid[None])


def depth_loss(z_depth: Float[Tensor, " R"], sensor: Float[Tensor, " R"]) -> Float[Tensor, ""]:
    """Mean absolute z-depth error over the pixels with a known sensor depth (sensor > 0).

    L1 rather than L2 so that the few pixels where a real sensor is wrong (edges, glass, an
    unregistered depth camera) pull on the geometry no harder than the rest."""
    valid = sensor > 0
    return ((z_depth - sensor).abs() * valid).sum() / valid.sum().clamp_min(1)


class RelativeMSELoss(torch.nn.Module):
    """Squared colour error relative to the rendered intensity (RawNeRF's loss, Mildenhall et al. 2022):
    ((pred - gt) / (sg(pred) + eps))^2, with eps ``offset`` times the batch's mean intensity, scaled back
    by (mean + eps)^2 so that a pixel at the mean weighs as in plain MSE, and never below that: texture
    in the dark parts of a scene then constrains the geometry as much as texture in the bright parts,
    which keep plain MSE's weight. The loss is unchanged when every intensity is scaled alike."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = offset

    def weights_for(self, gt: Float[Tensor, "*bs 3"], pred: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 3"]:
        """Each value's weight, a constant of the graph."""
        mean = gt.mean().detach()
        eps = self.offset * mean
        return ((mean + eps) / (pred.detach() + eps)).square().clamp_min(1.0)

    def forward(self, gt: Float[Tensor, "*bs 3"], pred: Float[Tensor, "*bs 3"]) -> Float[Tensor, ""]:
        return (self.weights_for(gt, pred) * (pred - gt).square()).mean()
