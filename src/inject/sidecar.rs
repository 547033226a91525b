//! The sidecar container and its token volume, as [`super::inject`] adds them, and the
//! pod annotations that override its defaults.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, Probe,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    ANNOTATION_ADMIN_PORT, ANNOTATION_CPU, ANNOTATION_CPU_LIMIT, ANNOTATION_IMAGE,
    ANNOTATION_MEMORY, ANNOTATION_MEMORY_LIMIT, ANNOTATION_STATUS_PORT, CONCURRENCY,
    DEFAULT_ADMIN_PORT, DEFAULT_STATUS_PORT, InjectError, InjectOptions, SIDECAR, TOKEN_DIR,
    TOKEN_VOLUME,
};
use crate::bootstrap::{BootstrapOptions, ClientTls, DataSource};

/// Whether `s` is a Kubernetes quantity (`100m`, `1.5`, `128Mi`, `1e3`).
pub(super) fn is_quantity(s: &str) -> bool {
    let number_end = s
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || *c == '.' || (*i == 0 && (*c == '+' || *c == '-'))))
        .map_or(s.len(), |(i, _)| i);
    let (number, suffix) = s.split_at(number_end);
    let digits = number.trim_start_matches(['+', '-']);
    let valid_number = !digits.is_empty()
        && digits != "."
        && digits.matches('.').count() <= 1
        && !number.starts_with('-');
    let valid_suffix = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || (suffix.len() > 1
        && suffix.starts_with(['e', 'E'])
        && suffix[1..]
            .trim_start_matches(['+', '-'])
            .chars()
            .all(|c| c.is_ascii_digit())
        && !suffix[1..].trim_start_matches(['+', '-']).is_empty());
    valid_number && valid_suffix
}

/// Reads the override annotations; the error names the annotation and what to write.
pub(super) struct Overrides {
    image: Option<String>,
    requests: BTreeMap<String, Quantity>,
    limits: BTreeMap<String, Quantity>,
    admin_port: u16,
    status_port: u16,
}

pub(super) fn overrides(annotations: &BTreeMap<String, String>) -> Result<Overrides, InjectError> {
    let quantity = |key: &'static str, default: &str| -> Result<Quantity, InjectError> {
        match annotations.get(key) {
            None => Ok(Quantity(default.into())),
            Some(v) if is_quantity(v) => Ok(Quantity(v.clone())),
            Some(v) => Err(InjectError::Quantity {
                annotation: key,
                value: v.clone(),
            }),
        }
    };
    let port = |key: &'static str, default: u16| -> Result<u16, InjectError> {
        match annotations.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| InjectError::Port {
                    annotation: key,
                    value: v.clone(),
                }),
        }
    };
    let image = match annotations.get(ANNOTATION_IMAGE) {
        Some(v) if v.trim().is_empty() || v.contains(char::is_whitespace) => {
            return Err(InjectError::Image(v.clone()));
        }
        v => v.cloned(),
    };
    let o = Overrides {
        image,
        requests: BTreeMap::from([
            ("cpu".to_string(), quantity(ANNOTATION_CPU, "100m")?),
            ("memory".to_string(), quantity(ANNOTATION_MEMORY, "128Mi")?),
        ]),
        limits: BTreeMap::from([
            ("cpu".to_string(), quantity(ANNOTATION_CPU_LIMIT, "2")?),
            (
                "memory".to_string(),
                quantity(ANNOTATION_MEMORY_LIMIT, "512Mi")?,
            ),
        ]),
        admin_port: port(ANNOTATION_ADMIN_PORT, DEFAULT_ADMIN_PORT)?,
        status_port: port(ANNOTATION_STATUS_PORT, DEFAULT_STATUS_PORT)?,
    };
    if o.admin_port == o.status_port {
        return Err(InjectError::SamePorts(o.admin_port));
    }
    Ok(o)
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn ready_probe(port: u16, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/ready".into()),
            port: IntOrString::Int(port.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(3),
        ..Probe::default()
    }
}

/// The sidecar container for a pod in `namespace` with `labels`.
pub(super) fn sidecar(
    opts: &InjectOptions,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    o: &Overrides,
) -> Result<Container, InjectError> {
    let bundle = opts
        .bundle
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let bootstrap = crate::bootstrap::bootstrap(&BootstrapOptions {
        xds_address: opts.xds_address.clone(),
        node_id: "$(POD_NAME)".into(),
        namespace: Some(namespace.into()),
        labels: labels.clone(),
        // Expanded by the kubelet when the sidecar starts, after scheduling: where the
        // cluster labels pods with their node's zone (Kubernetes' PodTopologyLabels
        // admission), the sidecar knows it; elsewhere it is empty and left out.
        zone: Some("$(ZONE)".into()),
        admin_port: o.admin_port,
        sotw: false,
        tls: Some(ClientTls {
            ca: DataSource::InlineString(bundle),
            cert: None,
            key: None,
            server_name: Some(opts.server_name.clone()),
        }),
        token_path: Some(format!("{TOKEN_DIR}/token").into()),
        status: Some(("$(POD_IP)".into(), o.status_port)),
    })
    .map_err(|e| InjectError::Bootstrap(e.to_string()))?;
    let bootstrap =
        serde_json::to_string(&bootstrap).map_err(|e| InjectError::Bootstrap(e.to_string()))?;
    Ok(Container {
        name: SIDECAR.into(),
        image: Some(o.image.clone().unwrap_or_else(|| opts.image.clone())),
        // A native sidecar: started before the application's containers, stopped after
        // them, restarted on its own.
        restart_policy: Some("Always".into()),
        args: Some(vec![
            "--config-yaml".into(),
            bootstrap,
            "--concurrency".into(),
            CONCURRENCY.to_string(),
            "--disable-hot-restart".into(),
            "--log-level".into(),
            "warn".into(),
        ]),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_IP", "status.podIP"),
            field_env("ZONE", "metadata.labels['topology.kubernetes.io/zone']"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("redis-xds-stat".into()),
            container_port: o.status_port.into(),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        // Polled every second for up to two minutes: the application starts as soon as
        // Envoy is ready, and Envoy gives up waiting for its first configuration after
        // 15 s (its initial fetch timeout) anyway.
        startup_probe: Some(ready_probe(o.status_port, 1, 120)),
        readiness_probe: Some(ready_probe(o.status_port, 5, 3)),
        resources: Some(ResourceRequirements {
            requests: Some(o.requests.clone()),
            limits: Some(o.limits.clone()),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            run_as_user: Some(101),
            run_as_group: Some(101),
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            privileged: Some(false),
            capabilities: Some(k8s_openapi::api::core::v1::Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: TOKEN_VOLUME.into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    })
}

pub(super) fn token_volume(audience: &str) -> Volume {
    Volume {
        name: TOKEN_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(audience.into()),
                    expiration_seconds: Some(3600),
                    path: "token".into(),
                }),
                ..VolumeProjection::default()
            }]),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    }
}
