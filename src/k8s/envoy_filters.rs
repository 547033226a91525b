//! The EnvoyFilters of Istio mode with `--istio write`: what `crate::istio` generates from
//! each snapshot, applied to the API server by the status Lease holder, and those no
//! longer wanted deleted.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::istio::{IstioOptions, MANAGED_BY, SOURCES_ANNOTATION, envoy_filters, log_new_problems};

/// The EnvoyFilter kind, as the API server serves it.
fn envoy_filter_resource() -> kube::core::ApiResource {
    kube::core::ApiResource::from_gvk_with_plural(
        &kube::core::GroupVersionKind::gvk("networking.istio.io", "v1alpha3", "EnvoyFilter"),
        "envoyfilters",
    )
}

/// How often the written filters are compared with the wanted ones even without a change
/// (someone edited or deleted one by hand).
pub const RESYNC: std::time::Duration = std::time::Duration::from_secs(60);

/// Writes the filters of each new snapshot to the API server while this replica holds the
/// status Lease (`leader`), until `shutdown`: server-side apply (field manager
/// `redis-xds`) of every wanted filter, and deletion of every filter labelled
/// [`MANAGED_BY`] that is no longer wanted. Failures are logged and retried.
pub async fn write_filters(
    client: kube::Client,
    mut snapshots: tokio::sync::watch::Receiver<std::sync::Arc<crate::snapshot::Snapshot>>,
    opts: IstioOptions,
    mut leader: tokio::sync::watch::Receiver<bool>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut written: Option<Vec<Value>> = None;
    let mut reported: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = snapshots.changed() => if changed.is_err() { return },
            changed = leader.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(RESYNC) => written = None,
        }
        if !*leader.borrow() {
            written = None;
            continue;
        }
        let snapshot = std::sync::Arc::clone(&snapshots.borrow());
        if !snapshot.ready {
            continue;
        }
        let generated = envoy_filters(&snapshot.model, &snapshot.compiled, &opts);
        log_new_problems(&generated, &mut reported);
        if written.as_ref() == Some(&generated.filters) {
            continue;
        }
        match reconcile(&client, &generated.filters).await {
            Ok(()) => written = Some(generated.filters),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "writing the EnvoyFilters failed; retrying");
                written = None;
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
                snapshots.mark_changed();
            }
        }
    }
}

/// A call of the EnvoyFilter writer that failed: what it was doing, and kube's reason.
#[derive(Debug, thiserror::Error)]
#[error("{action}: {cause}")]
pub struct Error {
    action: String,
    cause: kube::Error,
}

fn failed(action: String) -> impl FnOnce(kube::Error) -> Error {
    move |cause| Error { action, cause }
}

async fn reconcile(client: &kube::Client, wanted: &[Value]) -> Result<(), Error> {
    use kube::CustomResourceExt;
    use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
    use kube::core::DynamicObject;
    let ar = envoy_filter_resource();
    let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
    let existing = Api::<DynamicObject>::all_with(client.clone(), &ar)
        .list_metadata(&ListParams::default().labels(&selector))
        .await
        .map_err(failed("listing EnvoyFilters".into()))?;
    // RedisClusters' UIDs, for ownerReferences.
    let redis_clusters: Api<DynamicObject> =
        Api::all_with(client.clone(), &crate::api::RedisCluster::api_resource());
    let uids: BTreeMap<String, String> = redis_clusters
        .list_metadata(&ListParams::default())
        .await
        .map_err(failed("listing RedisClusters".into()))?
        .items
        .into_iter()
        .filter_map(|m| {
            let meta = m.metadata;
            Some((format!("{}/{}", meta.namespace?, meta.name?), meta.uid?))
        })
        .collect();
    let mut keep = BTreeSet::new();
    for filter in wanted {
        let mut filter = filter.clone();
        let namespace = filter["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let name = filter["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let sources: Vec<String> = filter["metadata"]["annotations"][SOURCES_ANNOTATION]
            .as_str()
            .unwrap_or_default()
            .split(',')
            .map(str::to_owned)
            .collect();
        // Owned by its RedisClusters when they live in its namespace (owners must).
        let owners: Vec<Value> = sources
            .iter()
            .filter(|s| s.split('/').next() == Some(namespace.as_str()))
            .filter_map(|s| {
                Some(json!({
                    "apiVersion": format!("{}/{}", crate::api::GROUP, crate::api::VERSION),
                    "kind": crate::api::KIND,
                    "name": s.split('/').nth(1)?,
                    "uid": uids.get(s)?,
                }))
            })
            .collect();
        if !owners.is_empty() {
            filter["metadata"]["ownerReferences"] = Value::Array(owners);
        }
        Api::<DynamicObject>::namespaced_with(client.clone(), &namespace, &ar)
            .patch(
                &name,
                &PatchParams::apply("redis-xds").force(),
                &Patch::Apply(&filter),
            )
            .await
            .map_err(failed(format!("applying EnvoyFilter {namespace}/{name}")))?;
        keep.insert((namespace, name));
    }
    for old in existing.items {
        let (Some(namespace), Some(name)) = (old.metadata.namespace, old.metadata.name) else {
            continue;
        };
        if keep.contains(&(namespace.clone(), name.clone())) {
            continue;
        }
        match Api::<DynamicObject>::namespaced_with(client.clone(), &namespace, &ar)
            .delete(&name, &DeleteParams::default())
            .await
        {
            Ok(_) => {
                tracing::info!(filter = %format!("{namespace}/{name}"), "deleted an EnvoyFilter no longer wanted")
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                return Err(failed(format!("deleting EnvoyFilter {namespace}/{name}"))(
                    e,
                ));
            }
        }
    }
    tracing::info!(filters = wanted.len(), "EnvoyFilters written");
    Ok(())
}
