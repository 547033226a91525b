//! Who is on the other end of a stream. The ADS server asks an [`Authenticator`] before a
//! stream starts; the proxy's namespace then comes from the authenticated identity, and a
//! node that claims another namespace is refused. `--xds-auth mtls` is here
//! ([`SpiffeAuthenticator`]); `--xds-auth token` asks the API server
//! (`crate::k8s::token_review`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use tonic::Status;
use tonic::metadata::MetadataMap;

/// An authenticated proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Namespace of its ServiceAccount.
    pub namespace: String,
    /// Its ServiceAccount.
    pub service_account: String,
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.service_account)
    }
}

/// A check still running after a stream was admitted: `Ok` keeps the stream, a status ends
/// it with that status (sent to the client as the stream's trailers).
pub type Confirmation = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

/// What an [`Authenticator`] decided about a stream.
pub struct Authenticated {
    /// Who the stream serves.
    pub principal: Principal,
    /// A check that did not have to finish before the stream started (a ServiceAccount
    /// token verified against the cluster's keys, whose TokenReview is still on its way).
    /// `None` when everything was checked already.
    pub confirmation: Option<Confirmation>,
}

impl From<Principal> for Authenticated {
    fn from(principal: Principal) -> Self {
        Authenticated {
            principal,
            confirmation: None,
        }
    }
}

impl fmt::Debug for Authenticated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticated")
            .field("principal", &self.principal)
            .field("confirming", &self.confirmation.is_some())
            .finish()
    }
}

/// Authenticates a stream from its gRPC metadata and TLS peer certificates.
#[tonic::async_trait]
pub trait Authenticator: Send + Sync + fmt::Debug + 'static {
    /// The principal (with a confirmation still to come, if any), or a status
    /// (Unauthenticated, or Unavailable when the check could not be made) that ends the
    /// stream before it starts.
    async fn authenticate(
        &self,
        metadata: &MetadataMap,
        peer_certs: Option<&[Vec<u8>]>,
    ) -> Result<Authenticated, Status>;
}

/// Applies the authenticated namespace to the node's claim: they must agree, and a node that
/// claims no namespace gets the authenticated one (never "every namespace").
pub fn authorize(principal: &Principal, claimed: Option<&str>) -> Result<String, Status> {
    match claimed {
        Some(ns) if ns != principal.namespace => Err(Status::permission_denied(format!(
            "node metadata claims namespace {ns:?}, but the proxy authenticated as service account {principal} of namespace {:?}; run the sidecar in namespace {ns:?} or set its node namespace to {:?}",
            principal.namespace, principal.namespace
        ))),
        _ => Ok(principal.namespace.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_refuse_a_node_claiming_another_namespace_and_fill_in_a_missing_one() {
        let p = Principal {
            namespace: "shop".into(),
            service_account: "checkout".into(),
        };
        assert_eq!(authorize(&p, Some("shop")).unwrap(), "shop");
        assert_eq!(authorize(&p, None).unwrap(), "shop");
        let err = authorize(&p, Some("bank")).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(
            err.message().contains("\"bank\"") && err.message().contains("shop/checkout"),
            "{}",
            err.message()
        );
    }
}

/// `--xds-auth mtls`.
#[derive(Debug)]
pub struct SpiffeAuthenticator {
    trust_domain: String,
}

impl SpiffeAuthenticator {
    /// Accepts identities of `trust_domain`.
    pub fn new(trust_domain: impl Into<String>) -> Self {
        SpiffeAuthenticator {
            trust_domain: trust_domain.into(),
        }
    }

    /// The principal of a DER client certificate.
    pub fn principal(&self, der: &[u8]) -> Result<Principal, Status> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|_| Status::unauthenticated("the client certificate cannot be parsed"))?;
        let uris: Vec<String> = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let prefix = format!("spiffe://{}/", self.trust_domain);
        for uri in &uris {
            if let Some(path) = uri.strip_prefix(&prefix) {
                let parts: Vec<&str> = path.split('/').collect();
                if let ["ns", ns, "sa", sa] = parts[..]
                    && !ns.is_empty()
                    && !sa.is_empty()
                {
                    return Ok(Principal {
                        namespace: ns.to_owned(),
                        service_account: sa.to_owned(),
                    });
                }
            }
        }
        Err(Status::unauthenticated(format!(
            "the client certificate has no URI SAN {prefix}ns/<namespace>/sa/<serviceaccount> (found {uris:?})"
        )))
    }
}

#[tonic::async_trait]
impl Authenticator for SpiffeAuthenticator {
    async fn authenticate(
        &self,
        _: &MetadataMap,
        peer_certs: Option<&[Vec<u8>]>,
    ) -> Result<Authenticated, Status> {
        let leaf = peer_certs.and_then(|c| c.first()).ok_or_else(|| {
            Status::unauthenticated(
                "no client certificate: --xds-auth mtls needs mutual TLS (--xds-tls-client-ca)",
            )
        })?;
        self.principal(leaf).map(Authenticated::from)
    }
}
