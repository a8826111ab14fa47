//! The deployment package (`scripts/package.sh`, which `scripts/test.sh` runs first): it holds
//! host.json, every function folder at its root (where the host looks) and an executable
//! `handler` that needs no glibc newer than the Functions Linux image's (2.28). How the host
//! reads and runs it: tests/integration/packaged.rs.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use fhir_bulk::functions::FUNCTION_NAMES;

/// Newest glibc symbol version the Functions Linux image provides.
const MAX_GLIBC: (u32, u32) = (2, 28);

fn package() -> zip::ZipArchive<std::fs::File> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/package/fhir-bulk.zip");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build it with scripts/package.sh (scripts/test.sh does)",
            path.display()
        )
    });
    zip::ZipArchive::new(file).unwrap()
}

#[test]
fn the_package_holds_the_host_config_every_function_and_the_handler() {
    let mut zip = package();
    let names: Vec<String> = zip.file_names().map(str::to_string).collect();
    assert!(names.contains(&"host.json".to_string()));
    for f in FUNCTION_NAMES {
        assert!(
            names.contains(&format!("{f}/function.json")),
            "{f} missing from the package: {names:?}"
        );
    }
    let handler = zip.by_name("handler").expect("the handler binary");
    let mode = handler.unix_mode().unwrap_or(0);
    assert_eq!(mode & 0o111, 0o111, "handler is executable: {mode:o}");
}

#[test]
fn the_handler_needs_no_glibc_newer_than_the_functions_image() {
    let mut zip = package();
    let mut bytes = Vec::new();
    zip.by_name("handler")
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("handler");
    std::fs::write(&path, &bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("objdump")
        .arg("-T")
        .arg(&path)
        .output()
        .expect("objdump (binutils) reads the binary's dynamic symbols");
    assert!(out.status.success());
    let symbols = String::from_utf8_lossy(&out.stdout);
    let mut versions: Vec<(u32, u32)> = symbols
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let mut parts = v.split('.');
            Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
        })
        .collect();
    versions.sort();
    assert!(!versions.is_empty(), "a dynamically linked glibc binary");
    let newest = *versions.last().unwrap();
    assert!(
        newest <= MAX_GLIBC,
        "handler needs GLIBC_{}.{}; the Functions image has {}.{}",
        newest.0,
        newest.1,
        MAX_GLIBC.0,
        MAX_GLIBC.1
    );
    // And it runs: the usage line.
    let out = Command::new(&path).arg("--help").output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("usage: handler"), "{said}");
}
