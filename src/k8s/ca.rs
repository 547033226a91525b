//! The certificate authority of `serve --ca-secret`: a self-signed CA kept in a Secret (as
//! istiod keeps `istio-ca-secret`), from which every replica issues its own short-lived
//! serving certificate for the xDS and webhook ports and renews it in place.
//!
//! The Secret is of type `kubernetes.io/tls`: `tls.crt` and `tls.key` are the CA's
//! certificate and key, and an optional `ca.crt` is the trust bundle handed to sidecars
//! and to the webhook configuration (default: `tls.crt`). That is the shape cert-manager's
//! CA issuer reads, so a CA of one's own can be brought by creating the Secret before
//! redis-xds starts; and a CA can be rotated by putting the old and the new certificate in
//! `ca.crt` first.
//!
//! The first replica to start creates the Secret; a replica that loses the race (409
//! Conflict) reads the winner's. Every [`CHECK_INTERVAL`] each replica re-reads the Secret,
//! renews its serving certificate once half of its [`SERVING_VALIDITY`] has passed (or at
//! once when the CA changed), and puts the bundle into the `caBundle` of every webhook of
//! the MutatingWebhookConfiguration (as istiod does for its injector).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use tokio_util::sync::CancellationToken;

use crate::tls::{PemPair, ServingCert};

/// How long a CA that redis-xds creates is valid: ten years, as istiod's self-signed root.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a serving certificate is valid. It is renewed after half of this, so a
/// replica that cannot reach the API server for up to 12 hours keeps serving.
pub const SERVING_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// How often the Secret is re-read, the serving certificate checked and the webhook's
/// `caBundle` reconciled.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(300);
/// The Secret's type.
pub const SECRET_TYPE: &str = "kubernetes.io/tls";

/// A CA: its certificate, its key and the trust bundle that goes to clients.
#[derive(Clone, PartialEq, Eq)]
pub struct Authority {
    cert_pem: String,
    key_pem: String,
    bundle: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

/// What can go wrong keeping the CA and its serving certificate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// rcgen could not make or read a key or certificate.
    #[error("{what}: {cause}")]
    Certificate {
        /// Which step.
        what: &'static str,
        /// rcgen's reason.
        cause: rcgen::Error,
    },
    /// The CA Secret holds something other than a CA certificate and its key; the
    /// message says what and how to fix it.
    #[error("{0}")]
    Secret(String),
    /// The API server refused or failed a call.
    #[error("{action}: {cause}")]
    Api {
        /// What was being done.
        action: String,
        /// kube's reason.
        cause: kube::Error,
    },
    /// The caBundle patch could not be built.
    #[error("building the caBundle patch: {0}")]
    Patch(serde_json::Error),
    /// A `--tls-san` that is neither a DNS name nor an IP address.
    #[error("--tls-san {0:?}: write a DNS name (redis-xds.redis-xds.svc) or an IP address")]
    Name(String),
    /// The issued certificate and key do not make a serving certificate.
    #[error(transparent)]
    Tls(#[from] crate::tls::Error),
}

fn certificate(what: &'static str) -> impl FnOnce(rcgen::Error) -> Error {
    move |cause| Error::Certificate { what, cause }
}

fn api(action: String) -> impl FnOnce(kube::Error) -> Error {
    move |cause| Error::Api { action, cause }
}

fn unix_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

impl Authority {
    /// A new self-signed CA (ECDSA P-256), valid for [`CA_VALIDITY`] from now.
    pub fn generate() -> Result<Authority, Error> {
        let key = rcgen::KeyPair::generate().map_err(certificate("generating the CA key"))?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
            .map_err(certificate("the CA's parameters"))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "redis-xds CA");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "redis-xds");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let now = unix_now();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + CA_VALIDITY;
        let cert = params
            .self_signed(&key)
            .map_err(certificate("signing the CA"))?;
        let cert_pem = cert.pem();
        Ok(Authority {
            bundle: cert_pem.clone(),
            cert_pem,
            key_pem: key.serialize_pem(),
        })
    }

    /// Reads a CA from its Secret; the error ([`Error::Secret`]) says what is wrong and how
    /// to mend it, and never quotes the key.
    fn from_secret(secret: &Secret) -> Result<Authority, Error> {
        Self::read_secret(secret).map_err(Error::Secret)
    }

    fn read_secret(secret: &Secret) -> Result<Authority, String> {
        let name = secret.metadata.name.as_deref().unwrap_or("");
        let ns = secret.metadata.namespace.as_deref().unwrap_or("");
        let data = secret.data.clone().unwrap_or_default();
        let field = |k: &str| -> Result<Option<String>, String> {
            match data.get(k) {
                None => Ok(None),
                Some(b) => String::from_utf8(b.0.clone())
                    .map(Some)
                    .map_err(|_| format!("Secret {ns}/{name}: data.{k} is not PEM text")),
            }
        };
        let fix = format!(
            "delete the Secret (`kubectl -n {ns} delete secret {name}`) for redis-xds to create a new CA, or put a CA certificate and key of your own there"
        );
        let (Some(cert_pem), Some(key_pem)) = (field("tls.crt")?, field("tls.key")?) else {
            return Err(format!(
                "Secret {ns}/{name}: data.tls.crt and data.tls.key must hold the CA certificate and key; {fix}"
            ));
        };
        let bundle = field("ca.crt")?.unwrap_or_else(|| cert_pem.clone());
        let key = rcgen::KeyPair::from_pem(&key_pem).map_err(|_| {
            format!("Secret {ns}/{name}: data.tls.key is not a PEM private key; {fix}")
        })?;
        let issuer = rcgen::Issuer::from_ca_cert_pem(&cert_pem, &key).map_err(|e| {
            format!("Secret {ns}/{name}: data.tls.crt is not a CA certificate ({e}); {fix}")
        })?;
        drop(issuer);
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map(|c: rustls_pki_types::CertificateDer<'static>| c.to_vec())
            .map_err(|_| format!("Secret {ns}/{name}: data.tls.crt is not PEM; {fix}"))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).map_err(|_| {
            format!("Secret {ns}/{name}: data.tls.crt is not an X.509 certificate; {fix}")
        })?;
        if !parsed.validity().is_valid() {
            return Err(format!(
                "Secret {ns}/{name}: the CA certificate is valid from {} to {}, not now; {fix} (pods injected before trust the old CA until they restart)",
                parsed.validity().not_before,
                parsed.validity().not_after
            ));
        }
        if !parsed.is_ca() {
            return Err(format!(
                "Secret {ns}/{name}: data.tls.crt is not a CA certificate (basicConstraints CA:FALSE); {fix}"
            ));
        }
        Ok(Authority {
            cert_pem,
            key_pem,
            bundle,
        })
    }

    /// The Secret that keeps this CA.
    fn to_secret(&self, namespace: &str, name: &str) -> Secret {
        let data = BTreeMap::from([
            (
                "tls.crt".to_string(),
                ByteString(self.cert_pem.clone().into_bytes()),
            ),
            (
                "tls.key".to_string(),
                ByteString(self.key_pem.clone().into_bytes()),
            ),
            (
                "ca.crt".to_string(),
                ByteString(self.bundle.clone().into_bytes()),
            ),
        ]);
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    "redis-xds".to_string(),
                )])),
                ..ObjectMeta::default()
            },
            type_: Some(SECRET_TYPE.into()),
            data: Some(data),
            ..Secret::default()
        }
    }

    /// The trust bundle (PEM): what sidecars and the API server verify serving
    /// certificates with.
    pub fn bundle(&self) -> &str {
        &self.bundle
    }

    /// A serving certificate for `names` (DNS names, or IP addresses written as such),
    /// valid for [`SERVING_VALIDITY`] from now; ECDSA P-256, server authentication only.
    pub fn issue(&self, names: &[String]) -> Result<PemPair, Error> {
        let ca_key = rcgen::KeyPair::from_pem(&self.key_pem).map_err(certificate("the CA key"))?;
        let issuer = rcgen::Issuer::from_ca_cert_pem(&self.cert_pem, &ca_key)
            .map_err(certificate("the CA certificate"))?;
        let key = rcgen::KeyPair::generate().map_err(certificate("generating a serving key"))?;
        let mut params = rcgen::CertificateParams::new(names.to_vec())
            .map_err(certificate("the serving certificate's names"))?;
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, first.as_str());
        }
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = unix_now();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + SERVING_VALIDITY;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(certificate("signing the serving certificate"))?;
        Ok(PemPair {
            chain: cert.pem().into_bytes(),
            key: key.serialize_pem().into_bytes(),
        })
    }
}

/// Reads the CA from Secret `namespace/name`, creating it when there is none.
async fn load_or_create(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Authority, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    if let Some(secret) = secrets
        .get_opt(name)
        .await
        .map_err(api(format!("reading the CA Secret {namespace}/{name}")))?
    {
        return Authority::from_secret(&secret);
    }
    let ca = Authority::generate()?;
    match secrets
        .create(&PostParams::default(), &ca.to_secret(namespace, name))
        .await
    {
        Ok(_) => {
            tracing::info!(secret = %format!("{namespace}/{name}"), "created a self-signed CA");
            Ok(ca)
        }
        // Another replica created it first: use that one.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let secret = secrets.get(name).await.map_err(api(format!(
                "reading the CA Secret {namespace}/{name} another replica created"
            )))?;
            Authority::from_secret(&secret)
        }
        Err(e) => Err(api(format!("creating the CA Secret {namespace}/{name}"))(e)),
    }
}

/// Puts `bundle` into the `caBundle` of every webhook of MutatingWebhookConfiguration
/// `name`, when it differs. A configuration that does not exist (not installed yet) is
/// not an error: it is tried again at the next check.
async fn reconcile_webhook_ca(
    client: &kube::Client,
    name: &str,
    bundle: &str,
) -> Result<bool, Error> {
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let Some(config) = configs
        .get_opt(name)
        .await
        .map_err(api(format!("reading MutatingWebhookConfiguration {name}")))?
    else {
        return Ok(false);
    };
    let webhooks = config.webhooks.unwrap_or_default();
    if webhooks.is_empty()
        || webhooks.iter().all(|w| {
            w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) == Some(bundle.as_bytes())
        })
    {
        return Ok(false);
    }
    // A JSON patch per webhook, guarded by its name so that a concurrent edit of the
    // list fails the patch rather than writing a bundle into the wrong webhook.
    let mut ops = Vec::new();
    for (i, w) in webhooks.iter().enumerate() {
        ops.push(serde_json::json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": w.name}));
        ops.push(serde_json::json!({
            "op": "add",
            "path": format!("/webhooks/{i}/clientConfig/caBundle"),
            "value": k8s_openapi::ByteString(bundle.as_bytes().to_vec()),
        }));
    }
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::Array(ops)).map_err(Error::Patch)?;
    configs
        .patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
        .map_err(api(format!(
            "writing the caBundle of MutatingWebhookConfiguration {name}"
        )))?;
    tracing::info!(
        webhook_configuration = name,
        "wrote the CA bundle into the webhook configuration"
    );
    Ok(true)
}

/// What [`run`] keeps current.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The serving certificate of the xDS and webhook ports.
    pub cert: Arc<ServingCert>,
    /// The trust bundle, for injected sidecars.
    pub bundle: Arc<RwLock<String>>,
}

/// Settings of [`run`].
#[derive(Clone, Debug)]
pub struct CaOptions {
    /// Namespace of the Secret.
    pub namespace: String,
    /// Name of the Secret.
    pub secret: String,
    /// Names in the serving certificate.
    pub names: Vec<String>,
    /// MutatingWebhookConfiguration whose `caBundle` is kept; `None` keeps none.
    pub webhook_configuration: Option<String>,
}

/// Loads or creates the CA and issues the first serving certificate.
pub async fn start(client: &kube::Client, opts: &CaOptions) -> Result<(Authority, Issued), Error> {
    let ca = load_or_create(client, &opts.namespace, &opts.secret).await?;
    let pair = ca.issue(&opts.names)?;
    let cert = ServingCert::new(&pair, "the issued serving certificate")?;
    let issued = Issued {
        cert,
        bundle: Arc::new(RwLock::new(ca.bundle().to_owned())),
    };
    Ok((ca, issued))
}

/// Keeps the serving certificate, the bundle and the webhook's `caBundle` current until
/// `shutdown` (see the module docs). Failures are logged and retried at the next check;
/// the current certificate stays meanwhile.
pub async fn run(
    client: kube::Client,
    opts: CaOptions,
    mut ca: Authority,
    issued: Issued,
    shutdown: CancellationToken,
) {
    let mut issued_at = tokio::time::Instant::now();
    let mut first = true;
    loop {
        if !first {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(CHECK_INTERVAL) => {}
            }
        }
        first = false;
        let mut renew = issued_at.elapsed() >= SERVING_VALIDITY / 2;
        match load_or_create(&client, &opts.namespace, &opts.secret).await {
            Ok(current) if current != ca => {
                tracing::info!(secret = %format!("{}/{}", opts.namespace, opts.secret), "the CA changed; issuing a new serving certificate");
                ca = current;
                *issued.bundle.write().unwrap_or_else(|e| e.into_inner()) = ca.bundle().to_owned();
                renew = true;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot read the CA; keeping the current serving certificate")
            }
        }
        if renew {
            match ca
                .issue(&opts.names)
                .and_then(|pair| Ok(issued.cert.set(&pair, "the issued serving certificate")?))
            {
                Ok(()) => {
                    issued_at = tokio::time::Instant::now();
                    tracing::info!("renewed the serving certificate");
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot renew the serving certificate")
                }
            }
        }
        if let Some(name) = &opts.webhook_configuration {
            let bundle = issued
                .bundle
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Err(e) = reconcile_webhook_ca(&client, name, &bundle).await {
                tracing::warn!(error = %format!("{e:#}"), "cannot write the webhook's CA bundle");
            }
        }
    }
}

/// Checks that `names` can go into a certificate: DNS names or IP addresses.
pub fn check_names(names: &[String]) -> Result<(), Error> {
    for n in names {
        if n.is_empty() || n.contains(['/', ' ', ':']) && n.parse::<std::net::IpAddr>().is_err() {
            return Err(Error::Name(n.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    #[test]
    fn should_issue_serving_certificates_that_chain_to_the_ca_and_read_it_back_from_its_secret() {
        let ca = Authority::generate().unwrap();
        let secret = ca.to_secret("redis-xds", "redis-xds-ca");
        assert_eq!(secret.type_.as_deref(), Some(SECRET_TYPE));
        let back = Authority::from_secret(&secret).unwrap();
        assert_eq!(back, ca);
        let pair = back
            .issue(&["redis-xds.redis-xds.svc".into(), "127.0.0.1".into()])
            .unwrap();
        // rustls accepts it, and webpki verifies it against the bundle for both names.
        crate::tls::certified_key(&pair, "test").unwrap();
        let leaf = rustls_pki_types::pem::PemObject::from_pem_slice(&pair.chain).unwrap();
        let root: rustls_pki_types::CertificateDer<'static> =
            rustls_pki_types::pem::PemObject::from_pem_slice(ca.bundle().as_bytes()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        for name in ["redis-xds.redis-xds.svc", "127.0.0.1"] {
            let server_name = rustls_pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(
                    &leaf,
                    &[],
                    &server_name,
                    &[],
                    rustls_pki_types::UnixTime::now(),
                )
                .unwrap();
        }
        let other = rustls_pki_types::ServerName::try_from("evil.example").unwrap();
        assert!(
            verifier
                .verify_server_cert(&leaf, &[], &other, &[], rustls_pki_types::UnixTime::now())
                .is_err()
        );
    }

    #[test]
    fn should_explain_a_broken_ca_secret_without_quoting_the_key() {
        let ca = Authority::generate().unwrap();
        let mut secret = ca.to_secret("redis-xds", "redis-xds-ca");
        let data = secret.data.as_mut().unwrap();
        data.insert(
            "tls.key".into(),
            ByteString(
                b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n".to_vec(),
            ),
        );
        let err = Authority::from_secret(&secret).unwrap_err().to_string();
        assert!(err.contains("redis-xds/redis-xds-ca"), "{err}");
        assert!(err.contains("data.tls.key"), "{err}");
        assert!(
            err.contains("kubectl -n redis-xds delete secret redis-xds-ca"),
            "{err}"
        );
        assert!(!err.contains("c2VjcmV0"), "{err}");
        secret.data.as_mut().unwrap().remove("tls.crt");
        let err = Authority::from_secret(&secret).unwrap_err().to_string();
        assert!(err.contains("data.tls.crt and data.tls.key"), "{err}");
        assert!(!format!("{ca:?}").contains("PRIVATE"));
    }

    #[test]
    fn should_refuse_a_leaf_certificate_as_the_ca() {
        let ca = Authority::generate().unwrap();
        let leaf = ca.issue(&["x.svc".into()]).unwrap();
        let mut secret = ca.to_secret("ns", "ca");
        let data = secret.data.as_mut().unwrap();
        data.insert("tls.crt".into(), ByteString(leaf.chain));
        data.insert("tls.key".into(), ByteString(leaf.key));
        let err = Authority::from_secret(&secret).unwrap_err().to_string();
        assert!(err.contains("not a CA certificate"), "{err}");
    }
}
