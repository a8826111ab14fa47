#!/usr/bin/env bash
# README command 2 (and what .ci/run calls): installs what the tests need, then runs the
# format and lint gates, the unit tests and the integration tests. Integration tests start
# their own Azurite and FHIR server on free ports and stop them when done.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
scripts/install.sh
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets
