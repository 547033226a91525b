//! Finds the protobuf descriptor set that ships inside the `envoy-types` package
//! (`src/generated/types.bin`) and exposes its path as `ENVOY_DESCRIPTOR_SET`, so that
//! `protojson` can print Envoy messages as canonical proto JSON. envoy-types has no public
//! constant for it, so its location is asked of `cargo metadata`.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=Cargo.lock");
    let path = from_cargo_metadata()
        .unwrap_or_else(|e| panic!("cannot find envoy-types' descriptor set: {e}"));
    println!("cargo:rustc-env=ENVOY_DESCRIPTOR_SET={}", path.display());
}

fn from_cargo_metadata() -> Result<PathBuf, String> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?)
        .join("Cargo.toml");
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .map_err(|e| format!("running cargo metadata: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())?;
    let packages = meta["packages"]
        .as_array()
        .ok_or("cargo metadata has no packages")?;
    let manifest_path = packages
        .iter()
        .find(|p| p["name"] == "envoy-types")
        .and_then(|p| p["manifest_path"].as_str())
        .ok_or("envoy-types is not a dependency")?;
    let path = PathBuf::from(manifest_path)
        .parent()
        .ok_or("bad manifest path")?
        .join("src/generated/types.bin");
    if !path.is_file() {
        return Err(format!("{} does not exist", path.display()));
    }
    Ok(path)
}
