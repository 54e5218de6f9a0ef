#!/usr/bin/env bash
# README.md's walkthrough, run as a reader runs it: `walkthrough.sh SRC_DIR BUILD_DIR` (the CTest
# entry readme.walkthrough). It takes the ```sh block of the section "The system: `make run`"
# from README.md byte for byte, starts the system as `make run` does (scripts/run) in a folder of
# its own, where build/ is the build and run/ the system's state, and runs the block there with
# `bash -euo pipefail`. Then it checks what each step of the block promises.
#
# The block talks to the default ports 8001-8005, which tests running beside this one may hold:
# everything runs in a private network namespace (unshare -n). Where none can be made, the test
# exits 77, which CTest reports as skipped.
set -euo pipefail

src=$(cd "$1" && pwd) bin=$(cd "$2" && pwd)

if [ -z "${EW_WALKTHROUGH_NETNS:-}" ]; then
    for how in "-n" "-rn"; do # as root; else in a user namespace of our own, where allowed
        if unshare $how true 2>/dev/null; then
            EW_WALKTHROUGH_NETNS=1 exec unshare $how "$0" "$src" "$bin"
        fi
    done
    echo "walkthrough: skipped — no private network namespace here (unshare -n is not permitted)"
    exit 77
fi
ip link set lo up

fail() {
    echo "walkthrough: $*" >&2
    exit 1
}

work=$(mktemp -d /tmp/ew-readme-XXXXXX)
run_pid=
stop_system() {
    if [ -n "$run_pid" ] && kill -0 "$run_pid" 2>/dev/null; then
        kill -TERM "$run_pid" 2>/dev/null || true # make run's Ctrl-C: ewctl down
        for _ in $(seq 300); do kill -0 "$run_pid" 2>/dev/null || break; sleep 0.1; done
    fi
    if [ -d "$work/run" ]; then (cd "$work/run" && "$bin/ewctl" down >/dev/null 2>&1) || true; fi
}
finish() {
    local rc=$?
    stop_system
    if [ "$rc" -ne 0 ]; then
        for f in make-run.log block.out block.err; do
            [ -f "$work/$f" ] && { echo "---- $f"; tail -n 60 "$work/$f"; }
        done
        for f in "$work"/run/var/log/*.log; do
            [ -f "$f" ] && { echo "---- ${f#"$work"/}"; tail -n 20 "$f"; }
        done
    fi
    rm -rf "$work"
    exit "$rc"
}
trap finish EXIT

# The block, byte for byte: the first ```sh fence after the section's heading, to its end.
awk '/^## The system: `make run`/ { section = 1; next }
     section && /^## / { exit }
     section && !inside && /^```sh$/ { inside = 1; next }
     inside && /^```$/ { exit }
     inside { print }' "$src/README.md" >"$work/block.sh"
[ -s "$work/block.sh" ] || fail "no \`\`\`sh block in README.md's section 'The system: \`make run\`'"

# The system as `make run` starts it (scripts/run, after the build), state under run/, and the
# reader's folder beside it with build/ in it, as the block's relative paths expect.
ln -s "$bin" "$work/build"
(cd "$work" && BUILD="$work/build" EW_RUN_DIR="$work/run" exec bash "$src/scripts/run") \
    >"$work/make-run.log" 2>&1 &
run_pid=$!
for _ in $(seq 1200); do
    grep -q '^== running' "$work/make-run.log" && break
    kill -0 "$run_pid" 2>/dev/null || fail "scripts/run ended before the system was up"
    sleep 0.1
done
grep -q '^== running' "$work/make-run.log" || fail "scripts/run: the system was not up after 120 s"

# The block as pasted into bash, then what it left in its variables.
cat "$work/block.sh" - >"$work/reader.sh" <<'EOF'

declare -p USER_ID TOKEN EXPORT_ID LINK RESET REQUEST_ID >"$WALKTHROUGH_VARS"
EOF
(cd "$work" && WALKTHROUGH_VARS="$work/vars" timeout 300 bash -euo pipefail -x reader.sh) \
    >"$work/block.out" 2>"$work/block.err" || fail "the README's block failed (status $?)"
# shellcheck disable=SC1091
. "$work/vars"
out=$(cat "$work/block.out")
has() { grep -qF -- "$1" <<<"$out" || fail "$2 (no '$1' in the block's output)"; }

uuid='^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
jwt='^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$'
# registration: the user's id; auth-service saw the profile that user-service made
[[ $USER_ID =~ $uuid ]] || fail "USER_ID is not a user id: '$USER_ID'"
has "\"user_id\":\"$USER_ID\",\"status\":\"active\",\"profile_created\":true" \
    "auth-service did not see the profile created"
has "{\"user_id\":\"$USER_ID\",\"username\":\"ada\"," "user-service has no profile for the user"
# the export: completed, and its link gives the document with every service's part
[[ $EXPORT_ID =~ $uuid ]] || fail "EXPORT_ID is not an export id: '$EXPORT_ID'"
has '"status":"completed"' "the export did not complete"
[[ $LINK == http://*"/exports/$EXPORT_ID/download?key="* ]] || fail "LINK is not a download link: '$LINK'"
has "{\"export_id\":\"$EXPORT_ID\",\"user_id\":\"$USER_ID\"," "the download is not the export"
for service in auth-service user-service notification-service analytics-service export-service; do
    has "\"$service\":{" "the downloaded export has no part from $service"
done
# the reset: the token read from the mail took the new password, which the logins after used
[[ $RESET =~ ^[A-Za-z0-9_-]{20,}$ ]] || fail "RESET is not a reset token: '$RESET'"
has "{\"user_id\":\"$USER_ID\",\"status\":\"password changed\"}" "the new password was not taken"
[[ $TOKEN =~ $jwt ]] || fail "the last login (new password, admin role) gave no token: '$TOKEN'"
# the admin's totals
has "{\"user_id\":\"$USER_ID\",\"roles\":[\"user\",\"admin\"]" "ewctl user grant-admin did not answer"
has '{"totals":{' "analytics-service did not answer with the totals"
has '"counters":{"registrations":' "analytics-service did not answer with the counters"
# the deletion: accepted, and the UserDeletion saga completed for this user
[[ $REQUEST_ID =~ $uuid ]] || fail "the deletion was not accepted: REQUEST_ID is '$REQUEST_ID'"
saga=$(cd "$work/run" && "$bin/ewctl" saga show --type UserDeletion --key "$REQUEST_ID" | head -n 1)
[[ $saga == *'"type":"UserDeletion","status":"completed"'* && $saga == *"\"subject\":\"$USER_ID\""* ]] ||
    fail "the UserDeletion saga of $USER_ID is not completed: $saga"
has "\"type\":\"UserDeletion\",\"status\":\"completed\"" "ewctl saga list shows no completed deletion"

# Stopped as make run stops (Ctrl-C): in a sanitizer build, a report of any program on the way
# (a service's log, ewctl's stderr) fails the walkthrough.
stop_system
if grep -l -E 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|ThreadSanitizer' \
    "$work"/run/var/log/*.log "$work/block.err" "$work/make-run.log" 2>/dev/null; then
    fail "a sanitizer report in the files above"
fi

echo "walkthrough: README.md's block ran as pasted ($(grep -c . "$work/block.sh") lines):"
echo "  user $USER_ID registered, profile created; export $EXPORT_ID completed and downloaded;"
echo "  password reset by the mailed token; admin totals read; deletion saga completed"
