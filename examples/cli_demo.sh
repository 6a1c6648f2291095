#!/bin/sh
# The hein command line: `hein listen` fed by `hein tell`, in one script.
#
#   sh examples/cli_demo.sh [PORT]        (default port: 50007)
#
# Runs $HEIN when set, else `hein` when it is on the PATH, else `python3 -m hein`.
set -eu

PORT="${1:-50007}"
if [ -z "${HEIN:-}" ]; then
    if command -v hein >/dev/null 2>&1; then HEIN="hein"; else HEIN="python3 -m hein"; fi
fi

LISTENER=""
trap '[ -n "$LISTENER" ] && kill "$LISTENER" 2>/dev/null || true' EXIT

echo "--- a receiver printing messages as they arrive (TAG: value)"
# --count: exit after 4 messages; --timeout: give up if no transmitter comes within 10 s
$HEIN listen "$PORT" --name Captain --count 4 --timeout 10 &
LISTENER=$!
# tell waits for one receiver (--wait-receivers 1, the default), sends, makes sure it is
# written, and exits; each MESSAGE is JSON when it parses, else a string
$HEIN tell "$PORT" hello 42 '{"when": {"$datetime": "2017-06-01T12:00:00Z"}, "raw": {"$bytes": "AAE="}}'
# one message per line of standard input; --raw sends the bytes as they are
printf 'some text\n' | $HEIN tell "$PORT" --tag news --raw
wait "$LISTENER"

echo "--- the same messages as JSON lines, for other tools"
$HEIN listen "$PORT" --name Kirk --json --count 4 --timeout 10 &
LISTENER=$!
$HEIN tell "$PORT" hello 42 '{"when": {"$datetime": "2017-06-01T12:00:00Z"}, "raw": {"$bytes": "AAE="}}'
printf 'some text\n' | $HEIN tell "$PORT" --tag news --raw
wait "$LISTENER"
LISTENER=""
