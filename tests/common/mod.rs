//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The redis-xds binary built for these tests.
pub fn redis_xds() -> Command {
    Command::new(env!("CARGO_BIN_EXE_redis-xds"))
}

/// Runs redis-xds and returns its output.
pub fn run(args: &[&str]) -> Output {
    redis_xds().args(args).output().expect("redis-xds runs")
}

/// The Envoy 1.40 binary: `$ENVOY_BIN`, else `.venv/bin/envoy` (what `scripts/test`
/// installs), else `envoy` on PATH. Panics with the fix when there is none: these tests
/// must not pass without the real Envoy.
pub fn envoy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return PathBuf::from(p);
    }
    let venv = root().join(".venv/bin/envoy");
    if venv.is_file() {
        return venv;
    }
    if let Some(p) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("envoy"))
        .find(|p| p.is_file())
    {
        return p;
    }
    panic!(
        "no envoy binary: run the tests with scripts/test, which installs Envoy 1.40 into .venv"
    );
}

/// Runs `envoy --mode validate` on a config file; returns (accepted, output).
pub fn envoy_validate(config: &Path) -> (bool, String) {
    let out = Command::new(envoy_bin())
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "--log-level",
            "error",
            "-c",
        ])
        .arg(config)
        .output()
        .expect("envoy runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The example directories, by name.
pub fn examples() -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(root().join("examples"))
        .expect("examples/ exists")
        .map(|e| e.expect("readable").path())
        .filter(|p| p.is_dir())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    out.sort();
    assert!(
        out.len() >= 3,
        "expected at least three examples, found {out:?}"
    );
    out
}
