#!/usr/bin/env bash
# Builds the zip the Function App runs from, laid out as the Functions host reads it: host.json,
# the `handler` binary and one folder per function (`<Name>/function.json`, from the
# repository's functions/<Name>/), all at the root: the host looks only one folder deep
# (tests/integration/packaged.rs reads and runs the package the same way). The handler is
# built with cargo-zigbuild against glibc 2.28 so that it runs on the Functions Linux image
# (whose glibc is older than a current build machine's).
# The zip is deterministic (sorted entries, fixed times), so the same source gives the same
# SHA-256, which scripts/deploy.sh uses to skip uploading a package that is already deployed.
# Output: target/package/fhir-bulk.zip (path printed on stdout).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
GLIBC=2.28
TARGET=x86_64-unknown-linux-gnu
"$ROOT/scripts/install.sh" release
export PATH="$ROOT/.tools/release/bin:$PATH"
CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=debuginfo cargo zigbuild --quiet --release --locked --target "$TARGET.$GLIBC" --bin handler >&2
BINARY="$ROOT/target/$TARGET/release/handler"
OUT="$ROOT/target/package/fhir-bulk.zip"
mkdir -p "$(dirname "$OUT")"
python3 - "$BINARY" "$OUT" <<'PY'
import os, sys, zipfile
binary, out = sys.argv[1], sys.argv[2]
entries = [("host.json", "host.json", 0o644)]
for name in sorted(os.listdir("functions")):
    path = os.path.join("functions", name, "function.json")
    if os.path.isfile(path):
        entries.append((path, f"{name}/function.json", 0o644))
entries.append((binary, "handler", 0o755))
tmp = out + ".tmp"
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
    for src, name, mode in entries:
        info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = (0o100000 | mode) << 16
        info.create_system = 3
        with open(src, "rb") as f:
            z.writestr(info, f.read())
os.replace(tmp, out)
PY
echo "$OUT"
