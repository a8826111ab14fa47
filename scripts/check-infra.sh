#!/usr/bin/env bash
# Offline checks of what deploys (no Azure subscription needed), run by scripts/test.sh:
#   - every Bicep file parses (pycep-parser, the parser checkov itself uses);
#   - the rules of scripts/check-infra-rules.py: conditional module scopes, the Event Grid
#     topic's location, every resource name for every prefix deploy.sh accepts, role scopes;
#   - checkov's Bicep policies pass (each skip is written, with its reason, beside the resource);
#   - shellcheck on every script and on the az stand-in of the deploy dry run.
# The deploy.sh dry run and the package/glibc checks are cargo tests (tests/deploy.rs,
# tests/package.rs).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
"$ROOT/scripts/install.sh" infra-check
BIN="$ROOT/.tools/infra-check/bin"

"$BIN/python" - infra/*.bicep infra/modules/*.bicep <<'PY'
import sys
from pycep import BicepParser
parser = BicepParser()
failed = False
for path in sys.argv[1:]:
    try:
        parsed = parser.parse(text=open(path).read())
        print(f"check-infra.sh: {path}: {len(parsed.get('resources', {}))} resources parse", file=sys.stderr)
    except Exception as e:
        print(f"check-infra.sh: {path} does not parse: {e}", file=sys.stderr)
        failed = True
sys.exit(1 if failed else 0)
PY

"$BIN/python" scripts/check-infra-rules.py "$ROOT"
"$BIN/checkov" --directory infra --framework bicep --compact --quiet --skip-download
"$BIN/shellcheck" scripts/*.sh tests/deploy/bin/az
echo "check-infra.sh: Bicep parses and follows the rules, checkov passes, shellcheck is clean" >&2
