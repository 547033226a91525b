//! The manifests source: Kubernetes objects as multi-document YAML files in a directory.
//!
//! It is how redis-xds runs without Kubernetes (local runs, VMs) and what `render` reads.
//! Files are parsed one at a time into [`ParsedFile`]s, so a watcher can re-read a single
//! changed file and keep the last good content of a file that stopped parsing; [`assemble`]
//! then builds the model from all files.
//!
//! Rules: only `*.yaml` and `*.yml` files directly in the directory are read, in name order;
//! each may hold many documents (`---`) and `kind: List` objects. RedisCluster, Secret, Pod,
//! EndpointSlice and Service objects are used; other kinds are skipped with a note, except an
//! unknown kind in the redis-xds.dev group (a typo such as `RedisKluster`), which is a problem. A
//! RedisCluster field that redis-xds does not know is an error, not silently ignored: a
//! typo must not change what Envoy gets.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::discovery::v1 as discoveryv1;
use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

use super::convert;
use crate::api::{GROUP, KIND, RedisCluster, VERSION};
use crate::model::{Model, ObjectKey, Origin};

/// A problem with a file or with one object in it. The object is left out; the rest of
/// the file and every other file are still used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadProblem {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, when the YAML parser knows it.
    pub line: Option<usize>,
    /// `Kind namespace/name` of the object, when known.
    pub object: Option<String>,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for LoadProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(object) = &self.object {
            write!(f, ": {object}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// An object read from a file.
#[derive(Clone, Debug)]
pub enum Object {
    /// A RedisCluster.
    RedisCluster(Box<RedisCluster>),
    /// A Secret.
    Secret(Box<corev1::Secret>),
    /// A Pod.
    Pod(Box<corev1::Pod>),
    /// An EndpointSlice.
    EndpointSlice(Box<discoveryv1::EndpointSlice>),
    /// A Service; read so that its presence is accepted, endpoints come from EndpointSlices.
    Service(Box<corev1::Service>),
}

impl Object {
    /// `Kind namespace/name`.
    pub fn describe(&self) -> String {
        let (kind, key) = self.kind_and_key();
        format!("{kind} {key}")
    }

    fn kind_and_key(&self) -> (&'static str, ObjectKey) {
        let (kind, meta) = match self {
            Object::RedisCluster(o) => (KIND, &o.metadata),
            Object::Secret(o) => ("Secret", &o.metadata),
            Object::Pod(o) => ("Pod", &o.metadata),
            Object::EndpointSlice(o) => ("EndpointSlice", &o.metadata),
            Object::Service(o) => ("Service", &o.metadata),
        };
        (kind, convert::key(meta))
    }
}

/// The result of reading one file.
#[derive(Clone, Debug, Default)]
pub struct ParsedFile {
    /// Objects, in file order.
    pub objects: Vec<Object>,
    /// Problems; each left out the document or object it names.
    pub problems: Vec<LoadProblem>,
    /// Skipped documents of kinds redis-xds does not use.
    pub notes: Vec<String>,
}

impl ParsedFile {
    /// True when the whole file could not be read as YAML (as opposed to some objects in it
    /// being invalid). A watcher keeps serving the previous content of such a file.
    pub fn is_unreadable(&self) -> bool {
        self.objects.is_empty() && self.problems.iter().any(|p| p.object.is_none())
    }
}

/// True for the file names the directory source reads.
pub fn is_manifest(path: &Path) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// Parses the text of one file.
pub fn parse_file(path: &Path, text: &str) -> ParsedFile {
    let mut out = ParsedFile::default();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = match <Value as serde::Deserialize>::deserialize(document) {
            Ok(v) => v,
            Err(e) => {
                out.problems.push(LoadProblem {
                    file: path.to_owned(),
                    line: e.location().map(|l| l.line()),
                    object: None,
                    message: format!("not valid YAML (document {}): {e}", index + 1),
                });
                // The parser cannot resynchronise after a syntax error.
                break;
            }
        };
        read_value(path, index + 1, value, &mut out);
    }
    out
}

fn read_value(path: &Path, document: usize, value: Value, out: &mut ParsedFile) {
    if value.is_null() {
        return;
    }
    let problem = |object: Option<String>, message: String| LoadProblem {
        file: path.to_owned(),
        line: None,
        object,
        message,
    };
    let Some(map) = value.as_mapping() else {
        out.problems.push(problem(
            None,
            format!("document {document} is not a Kubernetes object (expected a mapping with apiVersion and kind)"),
        ));
        return;
    };
    let text = |k: &str| {
        map.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (api_version, kind) = (text("apiVersion"), text("kind"));
    let name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let namespace = map
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or(convert::DEFAULT_NAMESPACE)
        .to_owned();
    let label = format!("{kind} {namespace}/{name}");

    if kind == "List" {
        if let Some(items) = map.get("items").and_then(Value::as_sequence) {
            for item in items.clone() {
                read_value(path, document, item, out);
            }
        }
        return;
    }
    if kind.is_empty() || api_version.is_empty() {
        out.problems.push(problem(
            None,
            format!("document {document} has no apiVersion or kind"),
        ));
        return;
    }
    if name.is_empty()
        && matches!(
            kind.as_str(),
            "RedisCluster" | "Secret" | "Pod" | "EndpointSlice" | "Service"
        )
    {
        out.problems.push(problem(
            Some(format!("{kind} (document {document})")),
            "metadata.name: missing; every object needs a name".into(),
        ));
        return;
    }
    // The API server only admits such names; here nothing else would keep `x/y` + `z` and
    // `x` + `y/z` from naming the same Envoy resources.
    let used = matches!(
        kind.as_str(),
        "RedisCluster" | "Secret" | "Pod" | "EndpointSlice" | "Service"
    );
    if used && !crate::compile::plan::is_dns_subdomain(&name) {
        out.problems.push(problem(
            Some(label),
            format!("metadata.name: {name:?} is not a Kubernetes object name; use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"),
        ));
        return;
    }
    if used && !crate::compile::plan::is_dns_label(&namespace) {
        out.problems.push(problem(
            Some(label),
            format!("metadata.namespace: {namespace:?} is not a Kubernetes namespace; use lowercase letters, digits and '-', starting and ending with a letter or digit"),
        ));
        return;
    }

    let expected_rc = format!("{GROUP}/{VERSION}");
    let parsed = match (api_version.as_str(), kind.as_str()) {
        (v, KIND) if v == expected_rc => {
            typed::<RedisCluster>(value, true).map(|o| Object::RedisCluster(Box::new(o)))
        }
        (v, KIND) if v.starts_with(GROUP) => {
            Err(format!("apiVersion {v} is not served: use {expected_rc}"))
        }
        // A typo in a kind of ours is a mistake to show, not a foreign object to skip.
        (v, other) if v.split('/').next() == Some(GROUP) => Err(format!(
            "kind {other:?} is not a kind of {GROUP}, which has only {KIND}: fix the spelling"
        )),
        ("v1", "Secret") => typed(value, false).map(|o| Object::Secret(Box::new(o))),
        ("v1", "Pod") => typed(value, false).map(|o| Object::Pod(Box::new(o))),
        ("v1", "Service") => typed(value, false).map(|o| Object::Service(Box::new(o))),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            typed(value, false).map(|o| Object::EndpointSlice(Box::new(o)))
        }
        _ => {
            out.notes.push(format!(
                "{}: skipped {api_version} {kind} {namespace}/{name} (redis-xds does not use this kind)",
                path.display()
            ));
            return;
        }
    };
    match parsed {
        Ok(obj) => out.objects.push(obj),
        Err(message) => out.problems.push(problem(Some(label), message)),
    }
}

/// Deserializes with the failing field's path in the error; with `strict`, a field the type
/// does not know is an error too.
fn typed<T: DeserializeOwned>(value: Value, strict: bool) -> Result<T, String> {
    let mut unknown = Vec::new();
    // serde_ignored writes `?` for each Option it passes through; users never see those.
    let mut on_unknown = |path: serde_ignored::Path<'_>| {
        let text = path.to_string();
        let clean: Vec<&str> = text.split('.').filter(|seg| *seg != "?").collect();
        unknown.push(clean.join("."));
    };
    let result: Result<T, _> =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(value, &mut on_unknown));
    let obj = result.map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })?;
    // `status` is written by redis-xds itself; whatever a file says there is not input.
    // apiVersion and kind were checked before choosing the type.
    unknown.retain(|p| !(p.starts_with("status") || p == "apiVersion" || p == "kind"));
    if strict && let Some(first) = unknown.first() {
        return Err(format!(
            "{first}: unknown field; check its spelling against `redis-xds crd` (fields are camelCase)"
        ));
    }
    Ok(obj)
}

/// Every object of a directory, its problems and notes.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The model built from every file.
    pub model: Model,
    /// Problems with files and objects.
    pub problems: Vec<LoadProblem>,
    /// Notes about skipped documents.
    pub notes: Vec<String>,
}

/// Reads every manifest file of `dir`.
pub fn load_dir(dir: &Path) -> std::io::Result<Loaded> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() && is_manifest(&path) {
            files.push(path);
        }
    }
    files.sort();
    let mut parsed = Vec::new();
    let mut problems = Vec::new();
    for path in files {
        match std::fs::read(&path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => parsed.push((path.clone(), parse_file(&path, &text))),
                Err(_) => problems.push(LoadProblem {
                    file: path,
                    line: None,
                    object: None,
                    message: "not UTF-8 text".into(),
                }),
            },
            Err(e) => problems.push(LoadProblem {
                file: path,
                line: None,
                object: None,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    let (model, mut more, notes) = assemble(&parsed, &mut |_| None);
    problems.append(&mut more);
    Ok(Loaded {
        model,
        problems,
        notes,
    })
}

/// Builds the model from parsed files (in the given order). An object defined twice keeps
/// its first definition and the other is reported. `first_seen` lets a long-running source
/// keep the order in which it first saw each RedisCluster; given `None` for a key, the
/// position in the files is used.
pub fn assemble(
    files: &[(PathBuf, ParsedFile)],
    first_seen: &mut dyn FnMut(&ObjectKey) -> Option<u64>,
) -> (Model, Vec<LoadProblem>, Vec<String>) {
    let mut model = Model::default();
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let mut defined: BTreeMap<(&'static str, ObjectKey), &Path> = BTreeMap::new();
    let mut position = 0u64;
    for (path, file) in files {
        problems.extend(file.problems.iter().cloned());
        notes.extend(file.notes.iter().cloned());
        for obj in &file.objects {
            position += 1;
            let (kind, key) = obj.kind_and_key();
            if let Some(first) = defined.get(&(kind, key.clone())) {
                problems.push(LoadProblem {
                    file: path.clone(),
                    line: None,
                    object: Some(obj.describe()),
                    message: format!(
                        "already defined in {}; this copy is ignored",
                        first.display()
                    ),
                });
                continue;
            }
            defined.insert((kind, key.clone()), path);
            match obj {
                Object::RedisCluster(rc) => {
                    let seen = first_seen(&key).unwrap_or(position);
                    let value = convert::redis_cluster(rc, seen, Origin::File(path.clone()));
                    model.redis_clusters.insert(key, value.into());
                }
                Object::Secret(s) => {
                    model.secrets.insert(key, convert::secret(s));
                }
                Object::Pod(p) => {
                    let labels = Arc::new(p.metadata.labels.clone().unwrap_or_default());
                    model.pods.insert(key, convert::pod(p, labels));
                }
                Object::EndpointSlice(s) => match convert::endpoint_slice(s) {
                    Some(slice) => {
                        model.endpoint_slices.insert(key, slice);
                    }
                    None => notes.push(format!(
                        "{}: EndpointSlice {key} has no {} label and is not used",
                        path.display(),
                        convert::SERVICE_NAME_LABEL
                    )),
                },
                Object::Service(s) => {
                    model.services.insert(key, convert::service(s));
                }
            }
        }
    }
    (model, problems, notes)
}
