#!/usr/bin/env bash
# README command 2 (and what .ci/run calls): installs what the tests need, then runs the
# format and lint gates, the offline infrastructure checks (scripts/check-infra.sh), the
# release package for Azure (scripts/package.sh), and the unit, layout, package, deploy
# dry-run (every az call also parsed by a real, signed-out Azure CLI) and integration tests. Integration tests start their own Azurite and FHIR server on
# free ports and stop them when done.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
scripts/install.sh stack release infra-check azure-cli
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
scripts/check-infra.sh
scripts/package.sh >/dev/null
AZ_PARSE_CHECK="$ROOT/.tools/azure-cli/bin/az" cargo test --all-targets
