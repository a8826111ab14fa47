#!/usr/bin/env bash
# Installs, idempotently and into the ignored folder .tools/, everything the local stack needs:
#   Azurite 3.35.0 (npm; newer releases need Node >= 22), the sekmet-fhir 0.1.1 FHIR R4 server
#   (PyPI venv, pinned by scripts/sekmet-constraints.txt) and the carebundle 0.5.0 sample generator.
# Re-running it is cheap: each part is skipped when its executable is already there.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${FHIR_BULK_TOOLS:-$ROOT/.tools}
mkdir -p "$TOOLS"

need() { command -v "$1" >/dev/null 2>&1 || { echo "install.sh: '$1' is required but not on PATH ($2)" >&2; exit 1; }; }
need node "Node.js 20 runs Azurite"
need npm "npm installs Azurite"
need python3 "Python 3.11 runs the FHIR server and the sample generator"

if [ ! -x "$TOOLS/azurite/node_modules/.bin/azurite" ]; then
  echo "install.sh: installing Azurite 3.35.0 into $TOOLS/azurite" >&2
  mkdir -p "$TOOLS/azurite"
  (cd "$TOOLS/azurite" && npm install --silent --no-audit --no-fund azurite@3.35.0 >/dev/null)
fi

if [ ! -x "$TOOLS/fhir-server/bin/sekmet" ]; then
  echo "install.sh: installing sekmet-fhir 0.1.1 into $TOOLS/fhir-server" >&2
  python3 -m venv "$TOOLS/fhir-server"
  "$TOOLS/fhir-server/bin/pip" install -q --disable-pip-version-check \
    sekmet-fhir==0.1.1 -c "$ROOT/scripts/sekmet-constraints.txt"
fi

if [ ! -x "$TOOLS/carebundle/bin/carebundle" ]; then
  echo "install.sh: installing carebundle 0.5.0 into $TOOLS/carebundle" >&2
  python3 -m venv "$TOOLS/carebundle"
  "$TOOLS/carebundle/bin/pip" install -q --disable-pip-version-check carebundle==0.5.0
fi
