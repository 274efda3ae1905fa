#!/usr/bin/env bash
# The GPU benchmark: writes one scene of the suite, trains the `nifr` preset on it (tinycudann's hash
# grids when the package is installed) and runs ns-nifr-bench, all in OUT (default benchmarks/gpu):
# results.md / results.json with the card's name, gpu.md (the summary, with the training time).
#
#   benchmarks/gpu.sh [--smoke] [OUT]
#
# SCENE (default dark-room) picks the scene, ITERATIONS (default 5000) the training length; sized to
# finish within 8 minutes on one H100. --smoke runs the same steps on the tiny preset for a few
# iterations and queries, on whatever device there is: CI runs it on the CPU.
# On a lent machine without the project's dependencies, wheels in .whl (see benchmarks/README.md) are
# installed first.
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=0
out=benchmarks/gpu
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=1 ;;
    -h|--help) sed -n 2,13p "$0"; exit 0 ;;
    *) out=$arg ;;
  esac
done
PYTHON=${PYTHON:-python3}
if [ -d .whl ] && ! "$PYTHON" -c "import nerfstudio" 2>/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/nifr-site .whl/*.whl
  export PYTHONPATH="/tmp/nifr-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
scene=${SCENE:-dark-room}
iterations=${ITERATIONS:-5000}
synth=(--scenes "$scene" --overwrite)
bench=(--scenes "$scene" --preset nifr --methods initial nifr "nifr 1 start" photometric structure)
if [ "$smoke" = 1 ]; then
  iterations=${ITERATIONS:-3}
  synth+=(--preset tiny --n-train 12 --n-queries 2 --supersample 1)
  bench+=(--max-queries 1)
fi
rm -rf "$out/runs"
mkdir -p "$out"
start=$(date +%s)
"$PYTHON" -m nifr_ns.scripts.synth --suite "$out/suite" "${synth[@]}"
"$PYTHON" -m nifr_ns.scripts.bench --suite "$out/suite" --models "$out/runs" --iterations "$iterations" \
  --output "$out/bench" "${bench[@]}"
"$PYTHON" - "$out" "$scene" "$iterations" "$(( $(date +%s) - start ))" <<'PY'
import json, sys
from pathlib import Path

out, scene, iterations, seconds = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
doc = json.loads((out / "bench" / "results.json").read_text())
scene_doc = doc["scenes"][scene]
lines = [
    f"# GPU benchmark: {doc['machine']}",
    "",
    f"`benchmarks/gpu.sh`: scene {scene}, `nifr` trained {iterations} iterations in {scene_doc['train_minutes']:.1f} min, "
    f"{scene_doc['queries']} queries; {seconds / 60:.1f} min in all.",
    "",
    "| method | median | recall 5cm/5° | failures | worse unflagged | s per query |",
    "|---|---|---|---|---|---|",
]
for method, row in scene_doc["methods"].items():
    lines.append(f"| {method} | {100 * row['median_trans']:.2f} cm / {row['median_rot']:.2f}° | {100 * row['recall 5cm/5°']:.0f}% "
                 f"| {row['failures']:.0f} | {row['worse_unflagged']:.0f} | {row['time_mean_s']:.3f} |")
lines += ["", "Feature quality: " + ", ".join(f"{k} {v:.3f}" for k, v in scene_doc["quality"].items()), ""]
(out / "gpu.md").write_text("\n".join(lines))
print("\n".join(lines))
PY
