"""What limits refinement on the synthetic scene: the learned model with the scene's exact geometry
and / or exact colours swapped into its renderings.

    python benchmarks/oracle.py --load-config RUN/config.yml --queries SYNTH_OUT [--swap none geometry colour both]

SYNTH_OUT is an ``ns-nifr-synth`` output of the scene the model was trained on (its ``scene.json``
names the seed; its ``queries/`` hold the query images, initial poses and ground truth). Each
swap refines every query from its initial pose with the default settings; the learned features
are always the model's. ``geometry``: the lifted points come from the scene's ray caster;
``colour``: the intensity the solver aligns is the scene rendered exactly at the pose (3x3
supersampled, as the training views); ``both``: both. Prints one line per swap.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from nifr_ns.geometry import depth_map_to_world, pose_errors
from nifr_ns.pipeline import load_pipeline
from nifr_ns.queries import load_query_set
from nifr_ns.refinement import PoseRefiner, RefineConfig
from nifr_ns.scripts.refine import model_transform
from nifr_ns.synth import build_scene, render_view


class SwappedRenderer(PoseRefiner):
    """The refiner whose renderings take their geometry and / or colours from the exact scene."""

    def __init__(self, pipeline, transform, config: RefineConfig, scene, swap: str) -> None:
        super().__init__(pipeline, transform, config)
        self.scene, self.swap = scene, swap

    def render_outputs(self, T_cw_ns, intrinsics, stride):
        points, out = super().render_outputs(T_cw_ns, intrinsics, stride)
        if self.swap == "none":
            return points, out
        points, out = points.clone(), {k: v.clone() for k, v in out.items()}
        small = intrinsics.scaled(1 / stride, 1 / stride)
        for b, T_cw_ns_b in enumerate(T_cw_ns):
            T_cw = self.to_world(T_cw_ns_b)
            rgb, depth = render_view(self.scene, T_cw, small, supersample=3)
            if self.swap in ("geometry", "both"):
                h, w = depth.shape
                X_world = depth_map_to_world(depth, small.K(), T_cw).reshape(-1, 3)
                points[b] = torch.from_numpy(self.transform.points_to_nerfstudio(X_world)).reshape(h, w, 3).float()
                out["accumulation"][b] = torch.from_numpy((depth > 0)[..., None].astype(np.float32))
                out["depth_spread"][b] = 0.0
            if self.swap in ("colour", "both"):
                out["rgb"][b] = torch.from_numpy(rgb).float()
        return points, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load-config", type=Path, required=True)
    parser.add_argument("--queries", type=Path, required=True, help="an ns-nifr-synth output folder")
    parser.add_argument("--swap", nargs="+", default=["none", "geometry", "colour", "both"])
    args = parser.parse_args()
    seed = json.loads((args.queries / "scene.json").read_text())["seed"]
    q = args.queries / "queries"
    query_set = load_query_set(q / "init.txt", q / "intrinsics.txt", q / "gt.txt")
    config, pipeline = load_pipeline(args.load_config)
    transform, scene = model_transform(config), build_scene(seed)
    for swap in args.swap:
        refiner = SwappedRenderer(pipeline, transform, RefineConfig(), scene, swap)
        start, poses = time.perf_counter(), []
        for query in query_set.queries:
            poses.append(refiner.refine(query.name, query.load_image(), query.intrinsics, [query.T_cw_file]).T_cw)
        gt = np.stack([query.T_cw_gt for query in query_set.queries])
        t, r = pose_errors(np.stack(poses), gt)
        ok = (t <= 0.05) & (r <= 5.0)
        print(
            f"{swap}: recall 5cm/5deg {100 * ok.mean():.1f} %, median {100 * np.median(t):.2f} cm / "
            f"{np.median(r):.2f} deg, of the successes {100 * np.median(t[ok]):.2f} cm / {np.median(r[ok]):.2f} deg "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
