#!/usr/bin/env bash
# Runs one stage of `make test` and records how long it took:  tools/stage.sh NAME COMMAND...
# Each stage appends "NAME<TAB>seconds<TAB>exit status" to _build/timings/stages.tsv; tools/ci_report
# prints the tables from it at the end (also after a failed stage, so a slow failure shows where).
set -uo pipefail
name=$1; shift
dir=${TIMINGS:-_build/timings}
mkdir -p "$dir"
start=$(date +%s%N)
"$@"
status=$?
tenths=$(( ($(date +%s%N) - start) / 100000000 ))
printf '%s\t%d.%d\t%d\n' "$name" $((tenths / 10)) $((tenths % 10)) "$status" >> "$dir/stages.tsv"
if [ $status -ne 0 ]; then
  echo "Stage '$name' failed (exit status $status)." >&2
  if [ -x .venv/bin/python ]; then .venv/bin/python -m tools.ci_report >&2 || true; fi
fi
exit $status
