#!/bin/sh
# Set up the demo session of the Docker cluster: database `demo` on node-a,
# mirrored to node-b (SAFETY FULL) with node-c as the witness, through
# mirrorctl and in the reference's order. Run it as the compose one-shot
# service (it is baked into the image as `mirrord-setup`):
#
#     docker-compose -f deploy/docker-compose.yml run --rm setup
#
# or from anywhere mirrorctl can reach the nodes, naming their client addresses
# and the endpoints the nodes know each other by:
#
#     MIRRORD_A=127.0.0.1:14331 MIRRORD_B=127.0.0.1:14332 MIRRORD_C=127.0.0.1:14333 sh deploy/setup.sh
#
# Exit status 0 when the session is SYNCHRONIZED with its witness CONNECTED (or
# was set up already); non-zero, with the reason, otherwise. Every wait has a
# deadline (MIRRORD_SETUP_TIMEOUT seconds each, default 60).
set -eu

A=${MIRRORD_A:-node-a:1433}
B=${MIRRORD_B:-node-b:1433}
C=${MIRRORD_C:-node-c:1433}
EP_A=${MIRRORD_ENDPOINT_A:-tcp://node-a:5022}
EP_B=${MIRRORD_ENDPOINT_B:-tcp://node-b:5022}
EP_C=${MIRRORD_ENDPOINT_C:-tcp://node-c:5022}
DB=${MIRRORD_DB:-demo}
TIMEOUT=${MIRRORD_SETUP_TIMEOUT:-60}
PY=$(command -v python3 || command -v python)

say() { printf '%s\n' "$*"; }

# Print (with the quotes you would type) and run one mirrorctl command.
ctl() {
    line="\$ mirrorctl"
    for arg in "$@"; do
        case $arg in
            *[!A-Za-z0-9_.:/=-]*|"") line="$line \"$arg\"" ;;
            *) line="$line $arg" ;;
        esac
    done
    say "$line"
    mirrorctl "$@"
}

# The status row of $DB on node $1 satisfies the Python expression $2 (about `r`).
row_is() {
    mirrorctl -S "$1" status -d "$DB" --json 2>/dev/null \
        | "$PY" -c "import json, sys; rows = json.load(sys.stdin); r = rows[0] if rows else None; sys.exit(0 if r and ($2) else 1)"
}

# Poll until "$@" succeeds, or fail after $TIMEOUT seconds saying what we waited for.
wait_until() {
    what=$1; shift
    say "... waiting (up to ${TIMEOUT} s) for $what"
    deadline=$(( $(date +%s) + TIMEOUT ))
    until "$@"; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            say "setup FAILED: no $what after ${TIMEOUT} s"
            for node in "$A" "$B"; do mirrorctl -S "$node" status || true; done
            exit 1
        fi
        sleep 0.2
    done
    say "    done"
}

answers() { mirrorctl -S "$1" status >/dev/null 2>&1; }
synchronized() {
    row_is "$A" "r['role'] == 'PRINCIPAL' and r['state'] == 'SYNCHRONIZED'" \
        && row_is "$B" "r['role'] == 'MIRROR' and r['state'] == 'SYNCHRONIZED'"
}

wait_until "node-a ($A) to answer" answers "$A"
wait_until "node-b ($B) to answer" answers "$B"
wait_until "node-c ($C) to answer" answers "$C"

if row_is "$A" "r['partner']" || row_is "$B" "r['partner']"; then
    say "$DB is mirrored already:"
    mirrorctl -S "$A" status -d "$DB" || true
    mirrorctl -S "$B" status -d "$DB" || true
    exit 0
fi

say "=== database $DB and a table on node-a"
if ! mirrorctl -S "$A" -d "$DB" -Q "SELECT 1" >/dev/null 2>&1; then
    ctl -S "$A" -Q "CREATE DATABASE $DB"
fi
ctl -S "$A" -d "$DB" -Q "CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, name TEXT NOT NULL)"

say "=== mirror it to node-b: SET PARTNER on the mirror first (it seeds itself), then on the principal"
ctl -S "$B" -Q "ALTER DATABASE $DB SET PARTNER = '$EP_A'"
ctl -S "$A" -Q "ALTER DATABASE $DB SET PARTNER = '$EP_B'"
ctl -S "$A" -Q "ALTER DATABASE $DB SET PARTNER SAFETY FULL"
wait_until "node-a and node-b to report SYNCHRONIZED" synchronized

say "=== add node-c as the witness (automatic failover)"
ctl -S "$A" -Q "ALTER DATABASE $DB SET WITNESS = '$EP_C'"
wait_until "node-a to see the witness CONNECTED" row_is "$A" "r['witness_state'] == 'CONNECTED'"

say "=== status"
ctl -S "$A" status -d "$DB"
ctl -S "$B" status -d "$DB"
say "set up: $DB on node-a (principal) -> node-b (mirror), witness node-c"
