#!/usr/bin/env bash
# Runs the ROS tests RUNS times in a row (default 10) with BURNERS CPU-bound processes beside them
# (default 2: both cores of a CI machine busy), and stops at the first failure, keeping its logs.
#   scripts/stress_ros_tests.sh [RUNS] [BURNERS]
# Needs the test install (`make install-dev`). The node logs of a failed run stay in build/ros-stress/.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
burners=${2:-2}
out=build/ros-stress
rm -rf "$out" && mkdir -p "$out"
pids=()
for _ in $(seq 1 "$burners"); do python3 -c 'while True: pass' & pids+=($!); done
trap 'kill "${pids[@]}" 2>/dev/null' EXIT
for i in $(seq 1 "$runs"); do
  start=$(date +%s)
  if .venv/bin/python -m pytest -q -p no:cacheprovider -m ros --basetemp="$out/run-$i" tests/ > "$out/run-$i.log" 2>&1; then
    echo "run $i/$runs passed ($(( $(date +%s) - start )) s, $(tail -n 1 "$out/run-$i.log"))"
    rm -rf "$out/run-$i"
  else
    echo "run $i/$runs FAILED: see $out/run-$i.log and the node logs under $out/run-$i/"
    grep -E '^(FAILED|ERROR)' "$out/run-$i.log"
    exit 1
  fi
done
echo "$runs runs in a row passed with $burners CPU-bound processes beside them"
