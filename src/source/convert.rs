//! Kubernetes objects -> model values. Shared by every source.

use std::sync::Arc;

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::discovery::v1 as discoveryv1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::api::RedisCluster;
use crate::model::{self, ObjectKey, Origin, SecretValue};

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Namespace used for objects that name none, as kubectl does.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The object's key, defaulting the namespace.
pub fn key(meta: &ObjectMeta) -> ObjectKey {
    ObjectKey::new(
        meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE),
        meta.name.as_deref().unwrap_or_default(),
    )
}

/// A RedisCluster as compile sees it. `seen` orders objects with equal creation times.
pub fn redis_cluster(rc: &RedisCluster, seen: u64, origin: Origin) -> model::RedisClusterObject {
    model::RedisClusterObject {
        key: key(&rc.metadata),
        generation: rc.metadata.generation,
        created: rc
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second()),
        seen,
        spec: rc.spec.clone(),
        origin,
    }
}

/// A Pod: IP and readiness, with `labels`, the Pod's labels as the caller shares them
/// (the Kubernetes index hands Pods with the same labels one copy).
pub fn pod(p: &corev1::Pod, labels: Arc<crate::api::Labels>) -> model::Pod {
    let status = p.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let mut pod = model::Pod {
        key: key(&p.metadata),
        labels,
        ip: status
            .and_then(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty()),
        ready,
        service_account: None,
    };
    if pod.in_istio_mesh() {
        // Kubernetes' own default when the field is left out.
        pod.service_account = Some(
            p.spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "default".to_owned()),
        );
    }
    pod
}

/// An EndpointSlice, or `None` when it belongs to no Service.
pub fn endpoint_slice(s: &discoveryv1::EndpointSlice) -> Option<model::EndpointSlice> {
    let service = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?.clone();
    let endpoints = s
        .endpoints
        .iter()
        .filter_map(|ep| {
            let ip = ep.addresses.first()?.clone();
            let name = ep
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone())
                .or_else(|| ep.hostname.clone())
                .unwrap_or_else(|| ip.clone());
            // Per the EndpointSlice API, an unknown ready state is to be read as ready.
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            Some(model::SliceEndpoint { name, ip, ready })
        })
        .collect();
    Some(model::EndpointSlice {
        key: key(&s.metadata),
        service,
        endpoints,
    })
}

/// A Secret with `data` and `stringData` merged.
pub fn secret(s: &corev1::Secret) -> model::Secret {
    let mut data: std::collections::BTreeMap<String, SecretValue> = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), SecretValue::new(v.0.clone())))
        .collect();
    for (k, v) in s.string_data.iter().flatten() {
        data.insert(k.clone(), SecretValue::new(v.as_bytes()));
    }
    model::Secret {
        key: key(&s.metadata),
        data,
    }
}

/// The parts of a Service that Istio mode needs: its ClusterIP and ports.
pub fn service(s: &k8s_openapi::api::core::v1::Service) -> crate::model::Service {
    let spec = s.spec.clone().unwrap_or_default();
    crate::model::Service {
        key: key(&s.metadata),
        cluster_ip: spec.cluster_ip.filter(|ip| !ip.is_empty() && ip != "None"),
        ports: spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| Some((p.name, u16::try_from(p.port).ok()?)))
            .collect(),
    }
}
