#!/usr/bin/env bash
# Train nifr on Cambridge Landmarks scenes and evaluate on their test splits (see examples/README.md).
#
#   CAMBRIDGE=datasets/cambridge bash examples/cambridge.sh                 # the four scenes
#   CAMBRIDGE=datasets/cambridge INIT=priors/dfnet bash examples/cambridge.sh KingsCollege
#
# CAMBRIDGE  folder holding KingsCollege/, OldHospital/, ShopFacade/, StMarysChurch/ (as unzipped)
# INIT       optional folder with SCENE.txt initial poses (hloc text `name qw qx qy qz tx ty tz`,
#            world-to-camera in the dataset's frame, names as in dataset_test.txt); without it the
#            ground truth perturbed by PERTURB (degrees metres) is refined
# TRAIN_ARGS optional extra ns-train options, e.g. "--max-num-iterations 5000"
# METHOD     nifr (GPU, default) or nifr-small (CPU)
set -euo pipefail

CAMBRIDGE=${CAMBRIDGE:-datasets/cambridge}
OUT=${OUT:-outputs/cambridge}
INIT=${INIT:-}
PERTURB=${PERTURB:-"5 0.5"}
METHOD=${METHOD:-nifr}
HEIGHT=${HEIGHT:-480}          # 1920x1080 frames are resized once to this height (cached)
NEAR=${NEAR:-0.005}            # scene units: the dataparser logs "1 scene unit = X m" (tens of metres here)
SCENES=${*:-KingsCollege OldHospital ShopFacade StMarysChurch}

for scene in $SCENES; do
    data="$CAMBRIDGE/$scene"
    ns-train "$METHOD" --output-dir "$OUT" --experiment-name "$scene" --vis tensorboard ${TRAIN_ARGS:-} \
        --pipeline.model.near-plane "$NEAR" \
        cambridge-data --data "$data" --image-height "$HEIGHT"
    config=$(ls -t "$OUT/$scene/$METHOD"/*/config.yml | head -1)

    # 1. ns-nifr-refine straight on the test split: refined poses, report.json, metrics.md
    if [ -n "$INIT" ]; then init=(--queries "$INIT/$scene.txt"); else init=(--init perturb --rot-deg ${PERTURB% *} --trans ${PERTURB#* }); fi
    ns-nifr-refine --load-config "$config" --dataset cambridge "${init[@]}" --output "$OUT/$scene/refine" --overwrite

    # 2. ns-nifr-bench (all refinement modes on the same queries): it reads files, so export the split first
    folder=$(ns-nifr-export-split --dataset cambridge --load-config "$config" --perturb $PERTURB | tail -1)
    queries="$folder/test_init_perturbed.txt"
    if [ -n "$INIT" ]; then cp "$INIT/$scene.txt" "$folder/test_init.txt"; queries="$folder/test_init.txt"; fi
    ns-nifr-bench --load-config "$config" --queries "$queries" --ground-truth "$folder/test_gt.txt" \
        --intrinsics "$folder/test_intrinsics.txt" --output "$OUT/$scene/bench"
done
