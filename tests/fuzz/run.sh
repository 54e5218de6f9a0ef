#!/bin/sh
# Fuzzes one harness for FUZZ_SECONDS (default 300): run.sh EXE NAME FUZZ_DIR WORK_DIR.
# New inputs go to WORK_DIR/NAME/corpus (the committed seeds in FUZZ_DIR/corpus/NAME are read,
# never written); a crash, leak, UB report, timeout or memory blow-up is written to
# WORK_DIR/NAME/artifacts/ and fails the run. FUZZ_DIR/NAME.dict is used when there is one.
# Each run appends "NAME SECONDS EXECS" to WORK_DIR/seconds.log (NAME.MODE with FUZZ_EVENT_AUTH).
set -eu
exe=$1 name=$2 src=$3 work=$4
seconds=${FUZZ_SECONDS:-300}
mkdir -p "$work/$name/corpus" "$work/$name/artifacts"
dict=
if [ -f "$src/$name.dict" ]; then dict="-dict=$src/$name.dict"; fi
# a harness run in another mode (FUZZ_EVENT_AUTH: fuzz_service, fuzz_socket) is counted apart
label=$name${FUZZ_EVENT_AUTH:+.$FUZZ_EVENT_AUTH}
log="$work/$name/last${FUZZ_EVENT_AUTH:+.$FUZZ_EVENT_AUTH}.log"
status=0
# -timeout: one input taking FUZZ_TIMEOUT s (default 10) is a finding; -malloc_limit_mb: so is
# one malloc over 256 MiB. (With ASAN_OPTIONS=fast_unwind_on_malloc=0 every allocation walks its
# stack through the unwind tables, and service's reopening of the five services every 1,024
# inputs can pass 10 s on a loaded machine: FUZZ_TIMEOUT=60 there.)
"$exe" -max_total_time="$seconds" -timeout="${FUZZ_TIMEOUT:-10}" -rss_limit_mb=2048 -malloc_limit_mb=256 \
    -print_final_stats=1 -artifact_prefix="$work/$name/artifacts/" $dict \
    "$work/$name/corpus" "$src/corpus/$name" >"$log" 2>&1 || status=$?
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
echo "$label $seconds ${execs:-0}" >>"$work/seconds.log"
if [ "$status" -ne 0 ]; then
    tail -n 60 "$log"
    echo "fuzz $label: FAILED (exit $status); the input is in $work/$name/artifacts/" >&2
    exit "$status"
fi
echo "fuzz $label: ${seconds}s, ${execs:-?} inputs, no finding"
