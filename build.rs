//! Finds the protobuf descriptor set that ships inside the `envoy-types` package
//! (`src/generated/types.bin`) and exposes its path as `ENVOY_DESCRIPTOR_SET`, so that
//! `protojson` can print Envoy messages as canonical proto JSON. envoy-types has no public
//! constant for it.
//!
//! The package is looked up in Cargo's registry sources at the version Cargo.lock pins
//! (what every registry build has on disk), and otherwise asked of `cargo metadata` (for
//! vendored or path setups).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const RELATIVE: &str = "src/generated/types.bin";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=Cargo.lock");
    let path = from_registry()
        .or_else(from_cargo_metadata)
        .unwrap_or_else(|e| panic!("cannot find envoy-types' descriptor set ({RELATIVE}): {e}"));
    println!("cargo:rustc-env=ENVOY_DESCRIPTOR_SET={}", path.display());
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
}

/// The envoy-types version pinned in Cargo.lock.
fn locked_version() -> Option<String> {
    let lock = std::fs::read_to_string(manifest_dir().join("Cargo.lock")).ok()?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "name = \"envoy-types\"" {
            let version = lines
                .next()?
                .trim()
                .strip_prefix("version = \"")?
                .strip_suffix('"')?;
            return Some(version.to_owned());
        }
    }
    None
}

fn cargo_home() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
}

fn from_registry() -> Result<PathBuf, String> {
    let version = locked_version().ok_or("envoy-types is not in Cargo.lock")?;
    let src = cargo_home().ok_or("no CARGO_HOME")?.join("registry/src");
    let entries = std::fs::read_dir(&src).map_err(|e| format!("{}: {e}", src.display()))?;
    entries
        .filter_map(Result::ok)
        .map(|index| {
            index
                .path()
                .join(format!("envoy-types-{version}"))
                .join(RELATIVE)
        })
        .find(|p| p.is_file())
        .ok_or_else(|| format!("envoy-types-{version} not under {}", src.display()))
}

fn from_cargo_metadata(registry_error: String) -> Result<PathBuf, String> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(manifest_dir().join("Cargo.toml"));
    if let Ok(target) = env::var("TARGET") {
        cmd.args(["--filter-platform", &target]);
    }
    let output = cmd
        .output()
        .map_err(|e| format!("{registry_error}; running cargo metadata: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{registry_error}; cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())?;
    let manifest_path = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "envoy-types")
        .and_then(|p| p["manifest_path"].as_str())
        .ok_or("envoy-types is not a dependency")?;
    let path = Path::new(manifest_path)
        .parent()
        .ok_or("bad manifest path")?
        .join(RELATIVE);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("{} does not exist", path.display()))
    }
}
