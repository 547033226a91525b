//! Sidecar injection: the mutating admission webhook of `serve --webhook-addr`.
//!
//! The API server sends it Pod CREATE requests from namespaces labelled
//! `redis-xds.dev/inject=enabled`, and from any other namespace for Pods labelled so (the
//! two webhooks of deploy/base/webhook.yaml; their selectors can only see labels). The answer is
//! a JSON patch that adds Envoy as a native sidecar (Kubernetes 1.29 and later: an init
//! container with `restartPolicy: Always`), whose startup probe holds the application's
//! containers until Envoy has its first configuration from redis-xds.
//!
//! What the sidecar gets, and why:
//! - its bootstrap inline in `--config-yaml`, built by [`crate::bootstrap`] with the pod's
//!   namespace and labels; the node id is `$(POD_NAME)`, which kubelet expands from the
//!   downward API when the container starts (the name may not exist yet at admission, with
//!   `generateName`);
//! - the CA bundle of the xDS server inline in that bootstrap, so no ConfigMap has to
//!   exist in the pod's namespace;
//! - a projected ServiceAccount token with the redis-xds audience (an hour, rotated by
//!   kubelet, re-read by Envoy for every xDS stream);
//! - a status listener on the pod IP that answers `GET /ready` from Envoy's admin
//!   interface, which stays on 127.0.0.1: the target of the startup and readiness probes;
//! - `--concurrency 2`: redis_proxy keeps connections to every upstream server per worker
//!   thread, so each worker multiplies the connections each Redis server holds; two
//!   workers carry a sidecar's share of traffic (one application instance) and bound that
//!   fan-out, as istio-proxy's default of 2 does;
//! - requests 100m CPU and 128 MiB, limits 2 CPUs (= the workers) and 512 MiB; non-root
//!   (uid 101, the Envoy image's user), no privilege escalation, no capabilities, a
//!   read-only root filesystem (Envoy writes nothing with `--disable-hot-restart`), the
//!   runtime's default seccomp profile.
//!
//! Annotations on the pod override: [`ANNOTATION_IMAGE`], [`ANNOTATION_CPU`],
//! [`ANNOTATION_MEMORY`], [`ANNOTATION_CPU_LIMIT`], [`ANNOTATION_MEMORY_LIMIT`],
//! [`ANNOTATION_ADMIN_PORT`], [`ANNOTATION_STATUS_PORT`]. A bad value refuses the pod with a
//! message naming the annotation, rather than starting it with a sidecar nobody asked for.
//!
//! Never injected: pods in kube-system, kube-public, kube-node-lease and redis-xds's own
//! namespace (whatever the webhook configuration says), pods that opt out with the label or
//! annotation `redis-xds.dev/inject: disabled` (or `false`), and pods that already have the
//! sidecar, which makes injection idempotent (a reinvocation or a re-created pod spec).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use axum::Json;
use axum::extract::State;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

mod sidecar;

/// Name of the injected sidecar container.
pub const SIDECAR: &str = "redis-xds-proxy";
/// Name of the injected token volume.
pub const TOKEN_VOLUME: &str = "redis-xds-token";
/// Where the token volume is mounted in the sidecar.
pub const TOKEN_DIR: &str = "/var/run/secrets/redis-xds";
/// Label and annotation that opt a pod in (`enabled`) or out (`disabled`); on a namespace,
/// the label opts its pods in.
pub const INJECT: &str = "redis-xds.dev/inject";
/// Label put on injected pods: what deploy/base/networkpolicy.yaml lets reach the xDS port.
pub const PROXY_LABEL: &str = "redis-xds.dev/proxy";
/// Annotation put on injected pods.
pub const STATUS_ANNOTATION: &str = "redis-xds.dev/status";
/// Annotation: the sidecar's image.
pub const ANNOTATION_IMAGE: &str = "redis-xds.dev/proxy-image";
/// Annotation: the sidecar's CPU request (a Kubernetes quantity).
pub const ANNOTATION_CPU: &str = "redis-xds.dev/proxy-cpu";
/// Annotation: the sidecar's memory request.
pub const ANNOTATION_MEMORY: &str = "redis-xds.dev/proxy-memory";
/// Annotation: the sidecar's CPU limit.
pub const ANNOTATION_CPU_LIMIT: &str = "redis-xds.dev/proxy-cpu-limit";
/// Annotation: the sidecar's memory limit.
pub const ANNOTATION_MEMORY_LIMIT: &str = "redis-xds.dev/proxy-memory-limit";
/// Annotation: the port of Envoy's admin interface on 127.0.0.1.
pub const ANNOTATION_ADMIN_PORT: &str = "redis-xds.dev/admin-port";
/// Annotation: the port of the status listener the probes reach.
pub const ANNOTATION_STATUS_PORT: &str = "redis-xds.dev/status-port";

/// Namespaces never injected, besides redis-xds's own.
pub const SYSTEM_NAMESPACES: &[&str] = &["kube-system", "kube-public", "kube-node-lease"];

/// Defaults of the injected sidecar.
pub const DEFAULT_ADMIN_PORT: u16 = 15000;
/// Default status port (Istio's, so that existing NetworkPolicies and habits fit).
pub const DEFAULT_STATUS_PORT: u16 = 15021;
/// Envoy worker threads; see the module docs.
pub const CONCURRENCY: u32 = 2;

/// What the webhook needs to build a sidecar.
#[derive(Clone, Debug)]
pub struct InjectOptions {
    /// `HOST:PORT` of the xDS server as sidecars reach it.
    pub xds_address: String,
    /// Name the xDS server's certificate carries (SNI and verification).
    pub server_name: String,
    /// Default sidecar image.
    pub image: String,
    /// Audience of the projected token (`serve --token-audience`).
    pub token_audience: String,
    /// redis-xds's own namespace, never injected.
    pub own_namespace: String,
    /// The CA bundle (PEM) the xDS certificate chains to; kept current by [`crate::ca`].
    pub bundle: Arc<RwLock<String>>,
}

/// Why a pod is refused: the message the API server shows whoever created it, naming the
/// annotation or field and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// A resource annotation that is not a Kubernetes quantity.
    #[error(
        "annotation {annotation}: {value:?} is not a Kubernetes quantity; write e.g. 200m for CPU or 256Mi for memory"
    )]
    Quantity {
        /// The annotation.
        annotation: &'static str,
        /// What it says.
        value: String,
    },
    /// A port annotation that is not a port.
    #[error("annotation {annotation}: {value:?} is not a port; write a number from 1 to 65535")]
    Port {
        /// The annotation.
        annotation: &'static str,
        /// What it says.
        value: String,
    },
    /// An image annotation that is not an image reference.
    #[error(
        "annotation {ANNOTATION_IMAGE}: {0:?} is not an image reference; write e.g. envoyproxy/envoy:v1.40.0"
    )]
    Image(String),
    /// The admin and status ports are the same.
    #[error(
        "annotations {ANNOTATION_ADMIN_PORT} and {ANNOTATION_STATUS_PORT} are both {0}; give them different ports"
    )]
    SamePorts(u16),
    /// The pod shares the node's network.
    #[error(
        "pod uses hostNetwork, where the sidecar's ports would collide with the node's; label it {INJECT}: disabled"
    )]
    HostNetwork,
    /// The sidecar's bootstrap could not be built (a bug, or an unusable xDS address).
    #[error("building the sidecar's bootstrap: {0}")]
    Bootstrap(String),
}

fn opted_out(value: Option<&String>) -> bool {
    matches!(value.map(String::as_str), Some("disabled" | "false"))
}

fn opted_in(value: Option<&String>) -> bool {
    matches!(value.map(String::as_str), Some("enabled" | "true"))
}

/// Which pods a webhook path injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `/inject`: the namespace asked (label `redis-xds.dev/inject=enabled`); every pod
    /// but those that opt out.
    Namespace,
    /// `/inject/opt-in`: only pods that ask themselves, by label or annotation
    /// `redis-xds.dev/inject: enabled`.
    OptIn,
}

fn already_injected(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    let named =
        |cs: Option<&Vec<Container>>| cs.is_some_and(|cs| cs.iter().any(|c| c.name == SIDECAR));
    named(spec.and_then(|s| s.init_containers.as_ref())) || named(spec.map(|s| &s.containers))
}

/// The pod with the sidecar, or `None` when it is to be left alone (see the module docs);
/// `Err` refuses the pod with that message.
pub fn inject(
    pod: &Pod,
    namespace: &str,
    scope: Scope,
    opts: &InjectOptions,
) -> Result<Option<Pod>, InjectError> {
    if SYSTEM_NAMESPACES.contains(&namespace) || namespace == opts.own_namespace {
        return Ok(None);
    }
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    if opted_out(labels.get(INJECT)) || opted_out(annotations.get(INJECT)) || already_injected(pod)
    {
        return Ok(None);
    }
    if scope == Scope::OptIn && !opted_in(labels.get(INJECT)) && !opted_in(annotations.get(INJECT))
    {
        return Ok(None);
    }
    let Some(spec) = &pod.spec else {
        return Ok(None);
    };
    if spec.host_network == Some(true) {
        return Err(InjectError::HostNetwork);
    }
    let o = sidecar::overrides(&annotations)?;
    let mut out = pod.clone();
    let container = sidecar::sidecar(opts, namespace, &labels, &o)?;
    let spec = out.spec.get_or_insert_with(Default::default);
    // First, so that init containers after it (migrations and the like) can use Redis too.
    spec.init_containers
        .get_or_insert_with(Vec::new)
        .insert(0, container);
    spec.volumes
        .get_or_insert_with(Vec::new)
        .push(sidecar::token_volume(&opts.token_audience));
    out.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(PROXY_LABEL.into(), "true".into());
    out.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(STATUS_ANNOTATION.into(), "injected".into());
    Ok(Some(out))
}

/// The answer to one AdmissionReview request.
pub fn review(
    req: &AdmissionRequest<Pod>,
    scope: Scope,
    opts: &InjectOptions,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(req);
    if req.operation != Operation::Create {
        return response;
    }
    let Some(pod) = &req.object else {
        return response;
    };
    let namespace = req
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_default();
    let name = pod
        .metadata
        .name
        .clone()
        .or_else(|| pod.metadata.generate_name.as_ref().map(|g| format!("{g}*")))
        .unwrap_or_default();
    match inject(pod, &namespace, scope, opts) {
        Ok(None) => response,
        Err(reason) => {
            tracing::warn!(pod = %format!("{namespace}/{name}"), %reason, "refused a pod");
            response.deny(format!("redis-xds sidecar injection: {reason}"))
        }
        Ok(Some(injected)) => {
            let patch = match (serde_json::to_value(pod), serde_json::to_value(&injected)) {
                (Ok(before), Ok(after)) => json_patch::diff(&before, &after),
                _ => {
                    return response
                        .deny("redis-xds sidecar injection: the pod does not serialize");
                }
            };
            match response.with_patch(patch) {
                Ok(r) => {
                    tracing::info!(pod = %format!("{namespace}/{name}"), dry_run = req.dry_run, "injected the sidecar");
                    r
                }
                Err(e) => AdmissionResponse::invalid(format!("redis-xds sidecar injection: {e}")),
            }
        }
    }
}

/// `POST /inject` and `POST /inject/opt-in` ([`Scope`]): an `admission.k8s.io/v1`
/// AdmissionReview in, the same kind out. A body that is not one is answered with 400 by
/// axum's JSON extractor, which the API server treats as a webhook failure (and the
/// failure policy applies).
fn handle(
    scope: Scope,
    opts: &InjectOptions,
    review_in: AdmissionReview<Pod>,
) -> Json<AdmissionReview<DynamicObject>> {
    let request: Result<AdmissionRequest<Pod>, _> = review_in.try_into();
    let response = match request {
        Ok(req) => review(&req, scope, opts),
        Err(_) => AdmissionResponse::invalid("an AdmissionReview without a request"),
    };
    Json(response.into_review())
}

/// The webhook's routes: `POST /inject` ([`Scope::Namespace`]) and `POST /inject/opt-in`
/// ([`Scope::OptIn`]).
pub fn router(opts: Arc<InjectOptions>) -> axum::Router {
    axum::Router::new()
        .route(
            "/inject",
            axum::routing::post(
                |State(o): State<Arc<InjectOptions>>, Json(r): Json<AdmissionReview<Pod>>| async move {
                    handle(Scope::Namespace, &o, r)
                },
            ),
        )
        .route(
            "/inject/opt-in",
            axum::routing::post(
                |State(o): State<Arc<InjectOptions>>, Json(r): Json<AdmissionReview<Pod>>| async move {
                    handle(Scope::OptIn, &o, r)
                },
            ),
        )
        .with_state(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> InjectOptions {
        InjectOptions {
            xds_address: "redis-xds.redis-xds.svc:18000".into(),
            server_name: "redis-xds.redis-xds.svc".into(),
            image: "envoyproxy/envoy:v1.40.0".into(),
            token_audience: "redis-xds".into(),
            own_namespace: "redis-xds".into(),
            bundle: Arc::new(RwLock::new("-----BEGIN CERTIFICATE-----\n...\n".into())),
        }
    }

    fn pod(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "generateName": "checkout-",
                "labels": labels.iter().copied().collect::<BTreeMap<_, _>>(),
                "annotations": annotations.iter().copied().collect::<BTreeMap<_, _>>(),
            },
            "spec": {"containers": [{"name": "app", "image": "redis:7.2"}]}
        }))
        .unwrap()
    }

    #[test]
    fn should_add_a_native_sidecar_with_the_pods_identity() {
        let out = inject(
            &pod(&[("app", "checkout")], &[]),
            "shop",
            Scope::Namespace,
            &opts(),
        )
        .unwrap()
        .unwrap();
        let spec = out.spec.as_ref().unwrap();
        let c = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(c.name, SIDECAR);
        assert_eq!(c.restart_policy.as_deref(), Some("Always"));
        let args = c.args.as_ref().unwrap();
        let bootstrap: serde_json::Value = serde_json::from_str(&args[1]).unwrap();
        assert_eq!(bootstrap["node"]["id"], "$(POD_NAME)");
        assert_eq!(bootstrap["node"]["metadata"]["namespace"], "shop");
        assert_eq!(bootstrap["node"]["metadata"]["labels"]["app"], "checkout");
        // The zone, from the pod's zone label once it is scheduled.
        assert_eq!(bootstrap["node"]["locality"]["zone"], "$(ZONE)");
        let zone = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "ZONE")
            .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        assert_eq!(zone, Some("metadata.labels['topology.kubernetes.io/zone']"));
        let listener = &bootstrap["staticResources"]["listeners"][0];
        assert_eq!(listener["address"]["socketAddress"]["address"], "$(POD_IP)");
        assert_eq!(listener["address"]["socketAddress"]["portValue"], 15021);
        assert!(args.windows(2).any(|w| w == ["--concurrency", "2"]));
        assert_eq!(
            spec.containers.len(),
            1,
            "the application's containers stay"
        );
        assert_eq!(spec.volumes.as_ref().unwrap()[0].name, TOKEN_VOLUME);
        assert_eq!(out.metadata.labels.as_ref().unwrap()[PROXY_LABEL], "true");
        // Idempotent: the injected pod is left alone.
        assert!(
            inject(&out, "shop", Scope::Namespace, &opts())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn should_leave_system_namespaces_and_opted_out_pods_alone() {
        for ns in ["kube-system", "redis-xds", "kube-node-lease"] {
            assert!(
                inject(&pod(&[], &[]), ns, Scope::Namespace, &opts())
                    .unwrap()
                    .is_none(),
                "{ns}"
            );
        }
        assert!(
            inject(
                &pod(&[(INJECT, "disabled")], &[]),
                "shop",
                Scope::Namespace,
                &opts()
            )
            .unwrap()
            .is_none()
        );
        assert!(
            inject(
                &pod(&[], &[(INJECT, "false")]),
                "shop",
                Scope::Namespace,
                &opts()
            )
            .unwrap()
            .is_none()
        );
    }

    #[test]
    fn should_take_overrides_from_annotations_and_refuse_bad_ones_by_name() {
        let out = inject(
            &pod(
                &[],
                &[
                    (ANNOTATION_IMAGE, "mirror.local/envoy:v1.40.1"),
                    (ANNOTATION_CPU, "250m"),
                    (ANNOTATION_MEMORY_LIMIT, "1Gi"),
                    (ANNOTATION_ADMIN_PORT, "19000"),
                ],
            ),
            "shop",
            Scope::Namespace,
            &opts(),
        )
        .unwrap()
        .unwrap();
        let c = &out.spec.unwrap().init_containers.unwrap()[0];
        assert_eq!(c.image.as_deref(), Some("mirror.local/envoy:v1.40.1"));
        let res = c.resources.as_ref().unwrap();
        assert_eq!(res.requests.as_ref().unwrap()["cpu"].0, "250m");
        assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "1Gi");
        let bootstrap: serde_json::Value =
            serde_json::from_str(&c.args.as_ref().unwrap()[1]).unwrap();
        assert_eq!(
            bootstrap["admin"]["address"]["socketAddress"]["portValue"],
            19000
        );
        for (key, value, says) in [
            (ANNOTATION_CPU, "lots", "not a Kubernetes quantity"),
            (ANNOTATION_MEMORY, "12XB", "not a Kubernetes quantity"),
            (ANNOTATION_STATUS_PORT, "70000", "not a port"),
            (ANNOTATION_IMAGE, "two words", "not an image reference"),
            (ANNOTATION_ADMIN_PORT, "15021", "give them different ports"),
        ] {
            let err = inject(
                &pod(&[], &[(key, value)]),
                "shop",
                Scope::Namespace,
                &opts(),
            )
            .unwrap_err()
            .to_string();
            assert!(
                err.contains(key) && err.contains(says),
                "{key}={value}: {err}"
            );
        }
    }

    #[test]
    fn the_opt_in_path_injects_only_pods_that_ask() {
        let asked = [
            pod(&[(INJECT, "enabled")], &[]),
            pod(&[], &[(INJECT, "enabled")]),
            pod(&[], &[(INJECT, "true")]),
        ];
        for p in &asked {
            assert!(inject(p, "plain", Scope::OptIn, &opts()).unwrap().is_some());
        }
        assert!(
            inject(&pod(&[], &[]), "plain", Scope::OptIn, &opts())
                .unwrap()
                .is_none()
        );
        assert!(
            inject(&pod(&[], &[]), "plain", Scope::Namespace, &opts())
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn quantities_follow_kubernetes() {
        for ok in [
            "1", "100m", "0.5", "1.5Gi", "128Mi", "1e3", "2E-2", "+1", ".5",
        ] {
            assert!(sidecar::is_quantity(ok), "{ok}");
        }
        for bad in ["", "m", "1.2.3", "-1", "1mi", "1e", "ten", "1 Gi"] {
            assert!(!sidecar::is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn should_answer_with_a_json_patch_that_makes_the_injected_pod() {
        let before = pod(&[("app", "checkout")], &[]);
        let review_in: AdmissionReview<Pod> = serde_json::from_value(serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop",
                "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": before,
            }
        }))
        .unwrap();
        let req: AdmissionRequest<Pod> = review_in.try_into().unwrap();
        let response = review(&req, Scope::Namespace, &opts());
        assert!(response.allowed);
        let patch: json_patch::Patch =
            serde_json::from_slice(response.patch.as_ref().unwrap()).unwrap();
        let mut doc = serde_json::to_value(&before).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        let expected = inject(&before, "shop", Scope::Namespace, &opts())
            .unwrap()
            .unwrap();
        assert_eq!(doc, serde_json::to_value(&expected).unwrap());
    }
}
