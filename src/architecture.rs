//! The crate's boundaries, checked on its own sources, in the manner of an architecture
//! test: a change that crosses one fails here, naming the file and the rule.
//!
//! - `compile/` and `xds/` are the core: they name no source, Kubernetes client, Istio,
//!   debug, injection or program module, and no `kube` item.
//! - Only `k8s/`, `source/k8s/` and `app/` (which builds the handles) hold Kubernetes API
//!   handles (`kube::Api`, `kube::Client`, `kube::api`).
//! - Nothing below `app/` names it.
//! - The files of one folder import one another without a circle.
//! - No two modules share a name: a name says which one is meant. The one exception is
//!   `k8s`, the Kubernetes side of the sources (`source/k8s/`, reading) and of the outputs
//!   (`k8s/`, writing), named so where each belongs.
//!
//! Comments and test modules are left out: they may name anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every `.rs` file under `src/`, by path relative to it (`xds/tracker.rs`), as code only.
fn sources() -> BTreeMap<String, String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "rs")
                && path.file_name().is_some_and(|n| n != "architecture.rs")
            {
                let text = std::fs::read_to_string(&path).expect("a source file");
                let rel = path
                    .strip_prefix(root)
                    .expect("below src/")
                    .to_string_lossy()
                    .replace('\\', "/");
                out.insert(rel, code(&text));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    walk(&root, &root, &mut out);
    out
}

/// `text` without its comment lines and without its test module.
fn code(text: &str) -> String {
    let end = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    text[..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module path of a file: `xds/tracker.rs` is `xds::tracker`, `xds/mod.rs` is `xds`.
fn module(path: &str) -> String {
    let path = path.trim_end_matches(".rs");
    let path = path.strip_suffix("/mod").unwrap_or(path);
    path.replace('/', "::")
}

fn breaks(rule: &str, offenders: Vec<String>) {
    assert!(
        offenders.is_empty(),
        "{rule}:\n  {}",
        offenders.join("\n  ")
    );
}

#[test]
fn the_core_names_no_outer_module() {
    let sources = sources();
    let outer = [
        "crate::source",
        "crate::k8s",
        "crate::app",
        "crate::istio",
        "crate::debug",
        "crate::inject",
        "kube::",
    ];
    let offenders = sources
        .iter()
        .filter(|(path, _)| path.starts_with("compile/") || path.starts_with("xds/"))
        .flat_map(|(path, code)| {
            outer
                .iter()
                .filter(|o| code.contains(*o))
                .map(move |o| format!("{path} names {o}"))
        })
        .collect();
    breaks("compile/ and xds/ name no outer module", offenders);
}

#[test]
fn only_the_kubernetes_modules_hold_api_handles() {
    let allowed = ["k8s/", "source/k8s/", "app/"];
    let handles = ["kube::Api", "kube::Client", "kube::api", "Api<"];
    let offenders = sources()
        .iter()
        .filter(|(path, _)| !allowed.iter().any(|a| path.starts_with(a)))
        .flat_map(|(path, code)| {
            handles
                .iter()
                .filter(|h| code.contains(*h))
                .map(move |h| format!("{path} holds {h}"))
        })
        .collect();
    breaks(
        "only k8s/, source/k8s/ and app/ hold API handles",
        offenders,
    );
}

#[test]
fn no_two_modules_share_a_name() {
    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for path in sources().keys() {
        let module = module(path);
        let name = module.rsplit("::").next().unwrap_or(&module).to_owned();
        by_name.entry(name).or_default().push(path.clone());
    }
    let offenders = by_name
        .into_iter()
        .filter(|(name, paths)| paths.len() > 1 && name != "k8s" && name != "lib" && name != "main")
        .map(|(name, paths)| format!("{name}: {}", paths.join(", ")))
        .collect();
    breaks("no two modules share a name", offenders);
}

#[test]
fn nothing_below_app_names_it() {
    let offenders = sources()
        .iter()
        .filter(|(path, code)| !path.starts_with("app/") && code.contains("crate::app"))
        .map(|(path, _)| path.clone())
        .collect();
    breaks("nothing below app/ names it", offenders);
}

/// The siblings a file names: `super::b` (also inside `super::{b, c}`), and
/// `crate::<folder>::b`.
fn siblings_named(path: &str, code: &str, siblings: &BTreeSet<String>) -> BTreeSet<String> {
    let module = module(path);
    let folder = module.rsplit_once("::").map_or("", |(f, _)| f).to_owned();
    let own = module.rsplit("::").next().unwrap_or_default().to_owned();
    let mut named = BTreeSet::new();
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut take = |prefix: &str| {
        for (i, _) in code.match_indices(prefix) {
            let rest = &code[i + prefix.len()..];
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(list) => list
                    .split('}')
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(|n| n.trim().split("::").next().unwrap_or_default())
                    .collect(),
                None => vec![
                    rest.split(|c: char| !is_ident(c))
                        .next()
                        .unwrap_or_default(),
                ],
            };
            for n in names {
                if siblings.contains(n) && n != own {
                    named.insert(n.to_owned());
                }
            }
        }
    };
    // A file's `super` is its folder, except for a folder's mod.rs, which names children.
    if !path.ends_with("mod.rs") {
        take("super::");
    }
    if !folder.is_empty() {
        take(&format!("crate::{folder}::"));
    }
    named
}

#[test]
fn the_files_of_a_folder_import_one_another_without_a_circle() {
    let sources = sources();
    let mut folders: BTreeMap<String, BTreeMap<String, &String>> = BTreeMap::new();
    for (path, code) in &sources {
        if path.ends_with("mod.rs") || path == "lib.rs" || path == "main.rs" {
            continue;
        }
        let (folder, file) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
        folders
            .entry(folder.to_owned())
            .or_default()
            .insert(file.trim_end_matches(".rs").to_owned(), code);
    }
    let mut circles = Vec::new();
    for (folder, files) in &folders {
        let siblings: BTreeSet<String> = files.keys().cloned().collect();
        let edges: BTreeMap<&str, BTreeSet<String>> = files
            .iter()
            .map(|(name, code)| {
                let path = if folder.is_empty() {
                    format!("{name}.rs")
                } else {
                    format!("{folder}/{name}.rs")
                };
                (name.as_str(), siblings_named(&path, code, &siblings))
            })
            .collect();
        // Depth-first search for a path that comes back to where it started.
        fn back_to<'a>(
            start: &str,
            at: &'a str,
            edges: &'a BTreeMap<&str, BTreeSet<String>>,
            seen: &mut BTreeSet<&'a str>,
            path: &mut Vec<&'a str>,
        ) -> bool {
            for next in edges.get(at).into_iter().flatten() {
                if next == start {
                    return true;
                }
                if seen.insert(next.as_str()) {
                    path.push(next.as_str());
                    if back_to(start, next.as_str(), edges, seen, path) {
                        return true;
                    }
                    path.pop();
                }
            }
            false
        }
        for start in edges.keys() {
            let mut path = vec![*start];
            if back_to(start, start, &edges, &mut BTreeSet::new(), &mut path) {
                circles.push(format!("{folder}/: {} -> {start}", path.join(" -> ")));
            }
        }
    }
    breaks("no import circles between the files of a folder", circles);
}

#[test]
fn the_circle_finder_finds_what_it_is_for() {
    let siblings: BTreeSet<String> = ["plan", "envoy", "tracker"]
        .into_iter()
        .map(String::from)
        .collect();
    let named = siblings_named(
        "compile/envoy.rs",
        "use super::plan::{A, B};\nuse super::{tracker, other};\nlet x = crate::compile::plan::C;",
        &siblings,
    );
    assert_eq!(named, ["plan", "tracker"].map(String::from).into());
    assert!(
        siblings_named("compile/mod.rs", "use super::plan;", &siblings).is_empty(),
        "mod.rs's super is the parent folder"
    );
    assert_eq!(
        code("a\n// crate::app\nb\n#[cfg(test)]\nmod tests { crate::app }"),
        "a\nb"
    );
    assert_eq!(module("xds/mod.rs"), "xds");
    assert_eq!(module("xds/tracker.rs"), "xds::tracker");
}
