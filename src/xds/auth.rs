//! Who is on the other end of a stream. The ADS server asks an [`Authenticator`] before a
//! stream starts; the proxy's namespace then comes from the authenticated identity, and a
//! node that claims another namespace is refused.

use std::fmt;

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

/// Authenticates a stream from its gRPC metadata and TLS peer certificates.
#[tonic::async_trait]
pub trait Authenticator: Send + Sync + fmt::Debug + 'static {
    /// The principal, or a status (Unauthenticated) that ends the stream.
    async fn authenticate(
        &self,
        metadata: &MetadataMap,
        peer_certs: Option<&[Vec<u8>]>,
    ) -> Result<Principal, Status>;
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
