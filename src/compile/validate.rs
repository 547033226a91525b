//! Envoy's own validation rules, applied to every compiled resource before it is sent.
//!
//! Envoy checks each resource it receives against the `validate.rules` annotations of its
//! protos (protoc-gen-validate) and NACKs the whole update on the first violation. The same
//! annotations ship in envoy-types' descriptor set; `prost-reflect-validate` evaluates them.
//! Two things it leaves out are done here, as Envoy does them:
//! - an `Any` (a filter's `typed_config`, a cluster type's config) is unpacked and its
//!   message checked too;
//! - a message field without rules of its own is still entered, so that nested rules apply
//!   (protoc-gen-validate's semantics: a message field is validated unless marked `skip`).
//!
//! A violation is reported as a [`Violation`]: where in the Envoy message, which rule, and
//! which spec field produced the value, so that the object's problem names a field its
//! author wrote.

use prost_reflect::{DynamicMessage, MessageDescriptor, ReflectMessage, Value};

use crate::protojson::pool;

/// The first rule of Envoy's that a compiled resource breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The resource's message name, e.g. `envoy.config.listener.v3.Listener`.
    pub resource: String,
    /// Path of the field in proto field names, with list indices and `typed_config` for an
    /// unpacked `Any`: `filter_chains[0].filters[0].typed_config.prefix_routes.routes[0].prefix`.
    pub path: String,
    /// The rule as protoc-gen-validate words it, e.g. `bytes length must be less than or
    /// equal to 1000`.
    pub rule: String,
}

impl Violation {
    /// The RedisCluster field the offending value comes from (`spec.listener.routes[3].prefix`),
    /// or `spec` when the value is not from one field.
    pub fn spec_field(&self) -> String {
        spec_field(short_name(&self.resource), &self.path)
    }

    /// The problem message: that Envoy would refuse the resource, the Envoy field and its
    /// rule.
    pub fn message(&self) -> String {
        format!(
            "Envoy would refuse the compiled {}: {}: {}",
            short_name(&self.resource),
            self.path,
            self.rule
        )
    }
}

fn short_name(full: &str) -> &str {
    full.rsplit('.').next().unwrap_or(full)
}

/// Checks `msg` against Envoy's validation rules; `Err` names the first violation.
///
/// # Panics
/// Never for messages of envoy-types: their names are in the descriptor set.
pub fn check<M: prost::Message + prost::Name>(msg: &M) -> Result<(), Violation> {
    let name = M::full_name();
    let desc = pool()
        .get_message_by_name(&name)
        .unwrap_or_else(|| panic!("{name} is not in envoy-types' descriptor set"));
    let dynamic = DynamicMessage::decode(desc, msg.encode_to_vec().as_slice())
        .expect("a message decodes as its own type");
    walk(&dynamic, false).map_err(|found| {
        let (path, rule) = found.into_parts();
        Violation {
            resource: name.clone(),
            path,
            rule,
        }
    })
}

/// A violation found below some message: the path from that message down (innermost
/// segment first, so that each level appends its own on the way out) and the rule.
struct Found {
    segments: Vec<String>,
    rule: String,
}

impl Found {
    fn at(mut self, segment: String) -> Self {
        self.segments.push(segment);
        self
    }

    fn into_parts(self) -> (String, String) {
        let mut path = String::new();
        for s in self.segments.iter().rev().filter(|s| !s.is_empty()) {
            if !path.is_empty() && !s.starts_with('[') {
                path.push('.');
            }
            path.push_str(s);
        }
        (path, self.rule)
    }
}

/// Validates `msg` and everything under it. `covered`: the crate's validation of an
/// enclosing message already evaluated this one (it enters message fields that carry rules
/// of their own), so only what it does not reach is left to do here.
fn walk(msg: &DynamicMessage, covered: bool) -> Result<(), Found> {
    if !covered
        && has_rules(&msg.descriptor())
        && let Err(e) = prost_reflect_validate::validate(msg)
    {
        let (path, rule) = flatten(&e);
        return Err(Found {
            segments: vec![path],
            rule,
        });
    }
    for (field, value) in msg.fields() {
        let covered = || enters(&field);
        let result = match value {
            Value::Message(m) => enter(m, covered()),
            Value::List(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, v)| Some((i, v.as_message()?)))
                .try_for_each(|(i, m)| enter(m, covered()).map_err(|f| f.at(format!("[{i}]")))),
            Value::Map(entries) => entries
                .iter()
                .filter_map(|(k, v)| Some((k, v.as_message()?)))
                .try_for_each(|(k, m)| enter(m, covered()).map_err(|f| f.at(format!("[{k:?}]")))),
            _ => Ok(()),
        };
        result.map_err(|f| f.at(field.name().to_owned()))?;
    }
    Ok(())
}

/// Answers per descriptor name, worked out once per process.
type Known = std::sync::OnceLock<std::sync::RwLock<std::collections::HashMap<String, bool>>>;

/// `compute`'s answer for `name`, worked out once per process: what a descriptor's
/// validation rules say never changes, and reading them decodes options.
fn remembered(cache: &'static Known, name: &str, compute: impl FnOnce() -> bool) -> bool {
    let known = cache.get_or_init(Default::default);
    if let Some(answer) = known.read().ok().and_then(|m| m.get(name).copied()) {
        return answer;
    }
    let answer = compute();
    if let Ok(mut m) = known.write() {
        m.insert(name.to_owned(), answer);
    }
    answer
}

/// Whether validating a message runs the validation of the messages in `field`: the field
/// has rules, and they do not say `skip`.
fn enters(field: &prost_reflect::FieldDescriptor) -> bool {
    use prost_validate_types::FieldRulesExt;
    static KNOWN: Known = Known::new();
    remembered(&KNOWN, field.full_name(), || {
        matches!(
            field.validation_rules(),
            Ok(Some(rules)) if !rules.message.is_some_and(|m| m.skip())
        )
    })
}

/// Whether the crate's validation of a message of this type checks anything of its own: a
/// field carries rules or a oneof is required. For any other type a call would only cost a
/// copy of the message and a lock in the crate (most of a Cluster's validation time, in
/// the LbEndpoint, Endpoint and locality messages without rules); the fields below are
/// walked here either way.
fn has_rules(desc: &MessageDescriptor) -> bool {
    use prost_validate_types::{FieldRulesExt, OneofRulesExt};
    static KNOWN: Known = Known::new();
    remembered(&KNOWN, desc.full_name(), || {
        desc.fields()
            .any(|f| !matches!(f.validation_rules(), Ok(None)))
            || desc.oneofs().any(|o| o.required())
    })
}

/// Enters a nested message, unpacking an `Any` into the message it carries (the crate
/// checks only an `Any`'s type URL).
fn enter(m: &DynamicMessage, covered: bool) -> Result<(), Found> {
    if m.descriptor().full_name() != "google.protobuf.Any" {
        return walk(m, covered);
    }
    let found = |rule: String| Found {
        segments: Vec::new(),
        rule,
    };
    let type_url = m
        .get_field_by_name("type_url")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let type_name = type_url.rsplit('/').next().unwrap_or_default();
    let Some(desc): Option<MessageDescriptor> = pool().get_message_by_name(type_name) else {
        return Err(found(format!("unknown type {type_url:?}")));
    };
    let bytes = m
        .get_field_by_name("value")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    match DynamicMessage::decode(desc, bytes) {
        Ok(inner) => walk(&inner, false),
        Err(e) => Err(found(format!("does not decode as {type_name}: {e}"))),
    }
}

fn join(at: &str, field: &str) -> String {
    if at.is_empty() {
        field.to_owned()
    } else if field.is_empty() {
        at.to_owned()
    } else {
        format!("{at}.{field}")
    }
}

/// The path (field names with indices) and the innermost rule of a nested error.
fn flatten(e: &prost_validate::Error) -> (String, String) {
    use prost_validate::errors::{Error as Details, list, map, message};
    // Each level names its field as `package.Message.field`, a list's with the item index
    // (`...PrefixRoutes.routes[0]`), and holds the error of the message inside.
    let here = e
        .field
        .rsplit_once('.')
        .map_or(e.field.as_str(), |(_, f)| f)
        .to_owned();
    let inner = match &e.details {
        Details::Message(message::Error::Message(inner)) => Some(inner),
        Details::List(list::Error::Item(inner)) => Some(inner),
        Details::Map(map::Error::Values(inner)) | Details::Map(map::Error::Keys(inner)) => {
            Some(inner)
        }
        _ => None,
    };
    match inner {
        Some(inner) => {
            let (path, rule) = flatten(inner);
            (join(&here, &path), rule)
        }
        None => (here, e.details.to_string()),
    }
}

/// Where a value in a compiled resource comes from in the RedisCluster spec. Patterns are
/// matched on the proto path with `*` for any list index; the indices they catch fill the
/// `{}` of the spec path in order.
fn spec_field(resource: &str, path: &str) -> String {
    const PROXY: &str = "filter_chains[*].filters[*].typed_config.";
    let table: &[(&str, &str, &str)] = &[
        (
            "Listener",
            "address.socket_address.port_value",
            "spec.listener.port",
        ),
        ("Listener", "address", "spec.listener.address"),
        ("Listener", "name", "metadata.name"),
        ("Listener", "stat_prefix", "metadata.name"),
        ("Listener", "settings.op_timeout", "spec.listener.opTimeout"),
        (
            "Listener",
            "settings.buffer_flush_timeout",
            "spec.listener.bufferFlushTimeout",
        ),
        (
            "Listener",
            "settings.max_upstream_unknown_connections",
            "spec.listener.maxUpstreamUnknownConnections",
        ),
        ("Listener", "settings", "spec.listener"),
        (
            "Listener",
            "prefix_routes.routes[*].request_mirror_policy[*]",
            "spec.listener.routes[{}].mirror[{}]",
        ),
        (
            "Listener",
            "prefix_routes.routes[*].read_command_policy",
            "spec.listener.routes[{}].readCluster",
        ),
        (
            "Listener",
            "prefix_routes.routes[*].prefix",
            "spec.listener.routes[{}].prefix",
        ),
        (
            "Listener",
            "prefix_routes.routes[*].cluster",
            "spec.listener.routes[{}].cluster",
        ),
        (
            "Listener",
            "prefix_routes.routes[*]",
            "spec.listener.routes[{}]",
        ),
        (
            "Listener",
            "prefix_routes.catch_all_route.request_mirror_policy[*]",
            "spec.listener.catchAll.mirror[{}]",
        ),
        (
            "Listener",
            "prefix_routes.catch_all_route.read_command_policy",
            "spec.listener.catchAll.readCluster",
        ),
        (
            "Listener",
            "prefix_routes.catch_all_route",
            "spec.listener.catchAll",
        ),
        ("Listener", "prefix_routes", "spec.listener.routes"),
        ("Listener", "faults[*]", "spec.listener.faults[{}]"),
        (
            "Listener",
            "downstream_auth",
            "spec.listener.downstreamAuth",
        ),
        ("Cluster", "connect_timeout", "spec.connectTimeout"),
        ("Cluster", "name", "metadata.name"),
        ("Cluster", "load_assignment", "spec.endpoints"),
        (
            "Cluster",
            "cluster_type.typed_config.cluster_refresh_rate",
            "spec.topology.refreshInterval",
        ),
        (
            "Cluster",
            "cluster_type.typed_config.cluster_refresh_timeout",
            "spec.topology.refreshTimeout",
        ),
        (
            "Cluster",
            "cluster_type.typed_config.redirect_refresh_interval",
            "spec.topology.redirectRefreshInterval",
        ),
        ("Cluster", "cluster_type", "spec.topology"),
        ("Cluster", "typed_extension_protocol_options", "spec.auth"),
        ("ClusterLoadAssignment", "", "spec.endpoints"),
    ];
    // The redis_proxy filter sits at a fixed place in the listener.
    let (path, in_proxy) = match strip_pattern(path, PROXY) {
        Some((rest, _)) => (rest, true),
        None => (path, false),
    };
    for (kind, pattern, spec) in table {
        if *kind != resource {
            continue;
        }
        let proxy_field = !matches!(
            *pattern,
            "address.socket_address.port_value" | "address" | "name"
        );
        if resource == "Listener" && proxy_field != in_proxy {
            continue;
        }
        if let Some((_, indices)) = strip_pattern(path, pattern) {
            let mut out = String::new();
            let mut indices = indices.into_iter();
            let mut parts = spec.split("{}").peekable();
            while let Some(part) = parts.next() {
                out.push_str(part);
                if parts.peek().is_some() {
                    out.push_str(&indices.next().unwrap_or_default());
                }
            }
            return out;
        }
    }
    "spec".to_owned()
}

/// Matches `pattern` (with `[*]` for any index) against the start of `path`, on a field
/// boundary; returns the rest of the path and the indices `[*]` caught.
fn strip_pattern<'a>(path: &'a str, pattern: &str) -> Option<(&'a str, Vec<String>)> {
    let mut rest = path;
    let mut indices = Vec::new();
    let mut pieces = pattern.split("[*]").peekable();
    while let Some(piece) = pieces.next() {
        rest = rest.strip_prefix(piece)?;
        if pieces.peek().is_some() {
            let body = rest.strip_prefix('[')?;
            let end = body.find(']')?;
            indices.push(body[..end].to_owned());
            rest = &body[end + 1..];
        }
    }
    let boundary = pattern.is_empty()
        || pattern.ends_with('.')
        || rest.is_empty()
        || rest.starts_with('.')
        || rest.starts_with('[');
    boundary.then_some((rest, indices))
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::envoy::config::listener::v3 as listener;
    use envoy_types::pb::envoy::extensions::filters::network::redis_proxy::v3 as redis;

    use super::*;

    fn proxy_listener(proxy: &redis::RedisProxy) -> listener::Listener {
        listener::Listener {
            name: "l".into(),
            address: Some(crate::compile::socket_address("127.0.0.1", 6379)),
            filter_chains: vec![listener::FilterChain {
                filters: vec![listener::Filter {
                    name: "envoy.filters.network.redis_proxy".into(),
                    config_type: Some(listener::filter::ConfigType::TypedConfig(
                        crate::compile::any(proxy),
                    )),
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn proxy(prefixes: &[&str]) -> redis::RedisProxy {
        redis::RedisProxy {
            stat_prefix: "s".into(),
            settings: Some(redis::redis_proxy::ConnPoolSettings {
                op_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            prefix_routes: Some(redis::redis_proxy::PrefixRoutes {
                routes: prefixes
                    .iter()
                    .map(|p| redis::redis_proxy::prefix_routes::Route {
                        prefix: (*p).to_owned(),
                        cluster: "c".into(),
                        ..Default::default()
                    })
                    .collect(),
                catch_all_route: Some(redis::redis_proxy::prefix_routes::Route {
                    cluster: "c".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_valid_listener_passes() {
        assert_eq!(check(&proxy_listener(&proxy(&["a:", "b:"]))), Ok(()));
    }

    #[test]
    fn a_rule_inside_a_typed_config_is_found_with_its_route_index() {
        let long = "k".repeat(1001);
        let v = check(&proxy_listener(&proxy(&["a:", &long]))).unwrap_err();
        assert_eq!(
            v.path,
            "filter_chains[0].filters[0].typed_config.prefix_routes.routes[1].prefix"
        );
        assert!(v.rule.contains("1000"), "{v:?}");
        assert_eq!(v.spec_field(), "spec.listener.routes[1].prefix");
        assert!(
            v.message()
                .starts_with("Envoy would refuse the compiled Listener"),
            "{}",
            v.message()
        );
    }

    #[test]
    fn a_rule_in_a_field_without_rules_of_its_own_is_found() {
        // `filter_chains` has no rules; the filter's `name` must not be empty.
        let mut l = proxy_listener(&proxy(&[]));
        l.filter_chains[0].filters[0].name.clear();
        let v = check(&l).unwrap_err();
        assert_eq!(v.path, "filter_chains[0].filters[0].name");
    }

    #[test]
    fn a_port_out_of_range_names_the_listener_port() {
        let mut l = proxy_listener(&proxy(&[]));
        l.address = Some(crate::compile::socket_address("127.0.0.1", 1));
        if let Some(core::address::Address::SocketAddress(s)) =
            l.address.as_mut().and_then(|a| a.address.as_mut())
        {
            s.port_specifier = Some(core::socket_address::PortSpecifier::PortValue(70000));
        }
        let v = check(&l).unwrap_err();
        assert_eq!(v.path, "address.socket_address.port_value");
        assert_eq!(v.spec_field(), "spec.listener.port");
    }

    #[test]
    fn an_unknown_any_is_a_violation() {
        let mut l = proxy_listener(&proxy(&[]));
        l.filter_chains[0].filters[0].config_type = Some(
            listener::filter::ConfigType::TypedConfig(envoy_types::pb::google::protobuf::Any {
                type_url: "type.googleapis.com/no.such.Type".into(),
                value: vec![],
            }),
        );
        let v = check(&l).unwrap_err();
        assert!(v.rule.contains("unknown type"), "{v:?}");
    }

    #[test]
    fn patterns_match_on_field_boundaries_only() {
        assert_eq!(strip_pattern("name", "name"), Some(("", vec![])));
        assert_eq!(strip_pattern("names", "name"), None);
        assert_eq!(
            strip_pattern("routes[3].mirror[1].x", "routes[*].mirror[*]"),
            Some((".x", vec!["3".to_owned(), "1".to_owned()]))
        );
    }
}
