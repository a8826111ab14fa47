#!/usr/bin/env bash
# Stops exactly the processes scripts/stack-up.sh started (by their PID files in .stack/).
# The data stays in .stack/ (delete the folder for a clean start).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
for name in handler fhir azurite; do
  f="$ROOT/.stack/$name.pid"
  [ -e "$f" ] || continue
  pid=$(cat "$f")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    echo "stopped $name (PID $pid)"
  fi
  rm -f "$f"
done
