//! `GET /` on the debug port: one plain HTML page for a person, in the manner of istiod's
//! ControlZ. It shows what `/debug/model` and `/debug/syncz` hold, read at a glance: each
//! RedisCluster with whether it was accepted, how many of the proxies that select it are in
//! sync, and its problems; each connected proxy with its sync state per type, what it was
//! last sent and what it ACKed, and the last NACK; the problems of the sources. It links to
//! the JSON views and to each proxy's config dump, has no script at all, and is guarded
//! like the `/debug` pages.
//!
//! Every text that came from outside (object names, node ids, NACK messages) is escaped by
//! maud; NACK messages were redacted when they arrived.

use std::time::SystemTime;

use maud::{DOCTYPE, Markup, html};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use crate::snapshot::Snapshot;
use crate::source::directory::DirState;
use crate::xds::tracker::SyncState;
use crate::xds::{ProxyStatus, ResourceType, TypeStatus};

/// Whether the server is serving, as `/readyz` says.
pub(super) enum Serving<'a> {
    /// The source finished its initial read.
    Ready,
    /// Still reading; proxies are held.
    Starting,
    /// One of its tasks failed; it is stopping, for this reason.
    Failed(&'a str),
}

/// The first characters of a version: enough to tell two apart by eye.
fn short(version: Option<&str>) -> &str {
    version.map_or("-", |v| v.get(..8).unwrap_or(v))
}

fn ago(t: SystemTime) -> String {
    let secs = SystemTime::now()
        .duration_since(t)
        .unwrap_or_default()
        .as_secs();
    match secs {
        0..60 => format!("{secs} s ago"),
        60..3600 => format!("{} min ago", secs / 60),
        _ => format!("{} h {} min ago", secs / 3600, secs % 3600 / 60),
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin-bottom:1.5em}\
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}\
th{background:#f2f2f2}.SYNCED,.ok{color:#17692b}.NACKED,.bad{color:#b00020;font-weight:bold}\
.STALE,.NOT_SENT{color:#8a5a00}small{color:#555}code{font-size:.9em}";

fn type_cell(status: Option<&TypeStatus>) -> Markup {
    let Some(t) = status else {
        return html! { td { small { "not asked" } } };
    };
    let state = t.sync_state();
    html! {
        td {
            span class=(state.as_str()) { (state.as_str()) }
            br;
            small { "sent " code { (short(t.sent_version.as_deref())) } ", ACKed " code { (short(t.acked_version.as_deref())) } }
            @if let Some(nack) = &t.nack {
                br;
                small class="bad" { "NACK: " (nack.message) }
            }
        }
    }
}

/// The page.
pub(super) fn page(
    snapshot: &Snapshot,
    dir: Option<&DirState>,
    proxies: &[ProxyStatus],
    serving: Serving<'_>,
) -> Markup {
    let facts = crate::k8s::fleet::proxy_facts(snapshot, proxies);
    let model = &snapshot.model;
    let compiled = &snapshot.compiled;
    let in_sync = |p: &ProxyStatus| {
        p.types.values().next().is_some()
            && p.types
                .values()
                .all(|t| t.sync_state() == SyncState::Synced)
    };
    let rejecting = |p: &ProxyStatus| {
        p.types
            .values()
            .any(|t| t.sync_state() == SyncState::Nacked)
    };
    let synced = proxies.iter().filter(|p| in_sync(p)).count();
    let nacked = proxies.iter().filter(|p| rejecting(p)).count();
    let catching_up = proxies
        .iter()
        .filter(|p| !in_sync(p) && !rejecting(p))
        .count();
    let load_problems = dir.map(|d| d.problems.as_slice()).unwrap_or_default();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "redis-xds" }
                style { (STYLE) }
            }
            body {
                h1 { "redis-xds" }
                p id="serving" {
                    @match serving {
                        Serving::Ready => { span class="ok" { "Ready" } " (the source has been read)" }
                        Serving::Starting => { span class="bad" { "Starting" } " (still reading the source; proxies wait)" }
                        Serving::Failed(why) => { span class="bad" { "Stopping: " (why) } }
                    }
                }
                p id="summary" {
                    (proxies.len()) " proxies connected: " (synced) " in sync, "
                    (nacked) " rejecting configuration, "
                    (catching_up) " catching up. "
                    (model.redis_clusters.len()) " RedisClusters, " (compiled.problems.len() + load_problems.len()) " problems."
                }
                p {
                    "As JSON: "
                    a href="/debug/syncz" { "/debug/syncz" } " (proxies), "
                    a href="/debug/model" { "/debug/model" } " (objects and problems), "
                    a href="/metrics" { "/metrics" } "."
                }
                h2 { "RedisClusters" }
                table id="redisclusters" {
                    thead { tr { th { "RedisCluster" } th { "Source" } th { "Accepted" } th { "Endpoints" } th { "Proxies in sync" } th { "Problems" } } }
                    tbody {
                        @for object in model.redis_clusters.values() {
                            @let outcome = compiled.objects.get(&object.key);
                            @let accepted = outcome.is_some_and(|o| o.accepted);
                            @let counts = facts.get(&object.key);
                            tr {
                                td { (object.key) }
                                td { small { (object.origin) } }
                                td class=(if accepted { "ok" } else { "bad" }) { @if accepted { "Accepted" } @else { "Not accepted" } }
                                td { (outcome.map_or(0, |o| o.endpoints)) }
                                td {
                                    @if let Some(f) = counts {
                                        (f.counts.synced) " of " (f.counts.connected)
                                        @if f.counts.rejected > 0 {
                                            br; span class="bad" { (f.counts.rejected) " rejected" }
                                        }
                                        @if let Some(nack) = &f.nack { br; small class="bad" { (nack) } }
                                    } @else { "0 of 0" }
                                }
                                td {
                                    @for p in compiled.problems.iter().filter(|p| p.object == object.key) {
                                        div { code { (p.field) } ": " (p.message) }
                                    }
                                }
                            }
                        }
                    }
                }
                h2 { "Proxies" }
                table id="proxies" {
                    thead { tr { th { "Proxy" } th { "Namespace" } th { "Stream" } th { "Connected" } th { "Clusters (CDS)" } th { "Endpoints (EDS)" } th { "Listeners (LDS)" } th { "Sent" } } }
                    tbody {
                        @for p in proxies {
                            tr {
                                td { code { (p.node_id) } }
                                td { (p.identity.namespace.as_deref().unwrap_or("-")) }
                                td { (p.variant.as_str()) " #" (p.stream) }
                                td { small { (ago(p.connected_at)) } }
                                (type_cell(p.types.get(&ResourceType::Cluster)))
                                (type_cell(p.types.get(&ResourceType::Endpoint)))
                                (type_cell(p.types.get(&ResourceType::Listener)))
                                td { a href={ "/debug/config_dump?proxy=" (utf8_percent_encode(&p.node_id, NON_ALPHANUMERIC)) } { "config dump" } }
                            }
                        }
                    }
                }
                @if !load_problems.is_empty() || !compiled.problems.is_empty() {
                    h2 { "Problems" }
                    ul id="problems" {
                        @for p in load_problems { li { (p) } }
                        @for p in &compiled.problems { li { (p) } }
                    }
                }
            }
        }
    }
}
