#!/usr/bin/env bash
# Train nifr on 7-Scenes scenes and evaluate on their test splits (see examples/README.md).
#
#   SEVENSCENES=datasets/7scenes bash examples/sevenscenes.sh               # the seven scenes
#   SEVENSCENES=datasets/7scenes INIT=priors/dfnet bash examples/sevenscenes.sh chess fire
#
# SEVENSCENES  folder holding chess/ ... stairs/, each with its seq-XX folders unzipped
# INIT         optional folder with SCENE.txt initial poses (hloc text `name qw qx qy qz tx ty tz`,
#              world-to-camera in the dataset's frame, names like seq-03/frame-000000.color.png);
#              without it the ground truth perturbed by PERTURB (degrees metres) is refined
# STRIDE       train on every STRIDE-th training frame (nifr keeps its training images in memory)
# TRAIN_ARGS   optional extra ns-train options, e.g. "--max-num-iterations 5000"
# METHOD       nifr (GPU, default) or nifr-small (CPU)
set -euo pipefail

SEVENSCENES=${SEVENSCENES:-datasets/7scenes}
OUT=${OUT:-outputs/7scenes}
INIT=${INIT:-}
PERTURB=${PERTURB:-"5 0.1"}
METHOD=${METHOD:-nifr}
STRIDE=${STRIDE:-4}
SCENES=${*:-chess fire heads office pumpkin redkitchen stairs}

for scene in $SCENES; do
    data="$SEVENSCENES/$scene"
    ns-train "$METHOD" --output-dir "$OUT" --experiment-name "$scene" --vis tensorboard ${TRAIN_ARGS:-} \
        sevenscenes-data --data "$data" --train-frame-stride "$STRIDE" --eval-frame-stride 10
    config=$(ls -t "$OUT/$scene/$METHOD"/*/config.yml | head -1)

    if [ -n "$INIT" ]; then init=(--queries "$INIT/$scene.txt"); else init=(--init perturb --rot-deg ${PERTURB% *} --trans ${PERTURB#* }); fi
    ns-nifr-refine --load-config "$config" --dataset sevenscenes "${init[@]}" --output "$OUT/$scene/refine" --overwrite

    folder=$(ns-nifr-export-split --dataset sevenscenes --load-config "$config" --perturb $PERTURB | tail -1)
    queries="$folder/test_init_perturbed.txt"
    if [ -n "$INIT" ]; then cp "$INIT/$scene.txt" "$folder/test_init.txt"; queries="$folder/test_init.txt"; fi
    ns-nifr-bench --load-config "$config" --queries "$queries" --ground-truth "$folder/test_gt.txt" \
        --intrinsics "$folder/test_intrinsics.txt" --output "$OUT/$scene/bench"
done
