#!/usr/bin/env bash
# Run benchmark rows one after another, each as its own `edge-trgl bench run SUITE --only ROW`,
# skipping a row that would end past a deadline: how the long small-data rows fill a sitting on a
# shared machine without a row being cut off half-way (a half-run row is lost work).
#
#   tools/bench_queue.sh [--after PID] [--code DIR] [--results DIR] [--log FILE] \
#       --until HH:MM SUITE ROW:EST_S [ROW:EST_S ...] [-- EXTRA bench run ARGS]
#
#   --after PID    start once PID has exited (queue behind a row already running)
#   --code DIR     run the harness and training from this checkout (PYTHONPATH), e.g. a clone of
#                  main, so that editing the working tree does not change rows in flight
#   --results DIR  where the row JSON goes (default: benchmarks/results of this checkout)
#   --until HH:MM  today's deadline; a row starts only if now + EST_S seconds is before it
#   --resumable    rows longer than a sitting: a row starts if there are 10 minutes left before
#                  the deadline and is asked to stop at the end of its epoch 10 minutes before it
#                  (bench run --resumable --timeout-s); it stays in the --work-dir the extra
#                  ARGS give, and the next --resumable queue of the row continues it. With
#                  --work-dir benchmarks/partial the stopped row can be committed (.gitignore
#                  leaves out its data store and feature cache, which resume rebuilds), so it
#                  continues on another machine too
# Two queues side by side give two single-thread rows at a time on a 2-core machine.
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
after="" code="$here" results="$here/benchmarks/results" log="" until="" resumable=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --after) after="$2"; shift 2 ;;
    --code) code="$(cd "$2" && pwd)"; shift 2 ;;
    --results) results="$2"; shift 2 ;;
    --log) log="$2"; shift 2 ;;
    --until) until="$2"; shift 2 ;;
    --resumable) resumable=1; shift ;;
    *) break ;;
  esac
done
if [[ -z "$until" || $# -lt 2 ]]; then
  echo "usage: $0 [--after PID] [--code DIR] [--results DIR] [--log FILE] [--resumable] --until HH:MM SUITE ROW:EST_S ... [-- ARGS]" >&2
  exit 2
fi
deadline=$(date -d "today $until" +%s) || exit 2
if [[ -n "$log" ]]; then exec 3>>"$log"; else exec 3>&1; fi
suite="$1"; shift
rows=()
while [[ $# -gt 0 && "$1" != "--" ]]; do rows+=("$1"); shift; done
[[ "${1:-}" == "--" ]] && shift
if [[ -n "$after" ]]; then
  while kill -0 "$after" 2>/dev/null; do sleep 20; done
fi
cd "$code" || exit 2
export PYTHONPATH="$code${PYTHONPATH:+:$PYTHONPATH}"
# a queue started from a shell without the environment would fail every row, one by one
if ! python -c "import edge_trgl, psutil, torch" 2>/dev/null; then
  echo "$0: the python on PATH ($(command -v python || echo none found)) cannot import edge-trgl and its dependencies; activate the environment it is installed in" >&2
  exit 2
fi
for spec in "${rows[@]}"; do
  row="${spec%:*}"; est="${spec##*:}"
  limit=()
  if [[ -n "$resumable" ]]; then
    left=$(( deadline - $(date +%s) - 600 ))
    if (( left < 600 )); then
      echo "$(date +%T) skip $row (under 10 minutes before $until's stop margin)" >&3; continue
    fi
    limit=(--resumable --timeout-s "$left")
  elif (( $(date +%s) + est > deadline )); then
    echo "$(date +%T) skip $row (${est} s would end after $until)" >&3; continue
  fi
  echo "$(date +%T) start $row" >&3
  python -m edge_trgl.cli.main bench run "$suite" --only "$row" --results "$results" \
    --no-report "$@" "${limit[@]}" >&3 2>&1
  rc=$?
  echo "$(date +%T) end $row rc=$rc" >&3
done
