//! Proxy authentication with ServiceAccount tokens (`serve --xds-auth token`): the sidecar
//! sends its projected Kubernetes ServiceAccount token as `authorization: Bearer <token>`;
//! it is checked with the TokenReview API for the configured audience, and the answer is
//! cached until the token expires. (`--xds-auth mtls` needs no API call:
//! [`crate::xds::auth::SpiffeAuthenticator`].)
//!
//! Tokens are never logged or shown; the cache is keyed by their SHA-256.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Api;
use kube::api::PostParams;
use sha2::{Digest, Sha256};
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::xds::auth::{Authenticator, Principal};

/// How long a positive answer is cached at most, even for long-lived tokens.
const MAX_CACHE: Duration = Duration::from_secs(600);
/// Cache entries kept at most; beyond that the cache is cleared (a flood of bad tokens must
/// not grow memory).
const MAX_ENTRIES: usize = 100_000;

/// Parses `system:serviceaccount:<ns>:<name>`.
fn service_account(username: &str) -> Option<Principal> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (ns, sa) = rest.split_once(':')?;
    (!ns.is_empty() && !sa.is_empty()).then(|| Principal {
        namespace: ns.to_owned(),
        service_account: sa.to_owned(),
    })
}

/// The `exp` claim of a JWT, without verifying anything (the API server does that); only
/// used to bound the cache and to refuse obviously expired tokens early.
fn jwt_expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    use base64::Engine;
    // base64url without padding (RFC 7515), as JWTs carry their parts.
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let json: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = json.get("exp")?.as_u64()?;
    Some(UNIX_EPOCH + Duration::from_secs(exp))
}

/// Why a token was not accepted. The xDS server turns it into a gRPC status
/// ([`From<ReviewError> for Status`]): unavailable when the API server could not answer
/// (the sidecar retries), unauthenticated otherwise.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The token's `exp` has passed.
    #[error("the ServiceAccount token has expired; the sidecar must read a fresh projected token")]
    Expired,
    /// The TokenReview call failed.
    #[error("cannot verify the token right now (TokenReview failed); retry")]
    Unavailable,
    /// The API server did not authenticate the token.
    #[error("token rejected by the Kubernetes API: {0}")]
    Rejected(String),
    /// The token is for another audience.
    #[error("token is not for audience {0:?}; project the ServiceAccount token with that audience")]
    Audience(String),
    /// The token is not a ServiceAccount's.
    #[error(
        "{0:?} is not a ServiceAccount; sidecars authenticate with their pod's ServiceAccount token"
    )]
    NotServiceAccount(String),
}

impl From<ReviewError> for Status {
    fn from(e: ReviewError) -> Status {
        match e {
            ReviewError::Unavailable => Status::unavailable(e.to_string()),
            _ => Status::unauthenticated(e.to_string()),
        }
    }
}

/// `--xds-auth token`.
#[derive(Debug)]
pub struct TokenReviewer {
    api: Api<TokenReview>,
    audience: String,
    cache: Mutex<HashMap<[u8; 32], (Principal, Instant)>>,
}

impl TokenReviewer {
    /// Checks tokens for `audience` with the TokenReview API of `client`.
    pub fn new(client: kube::Client, audience: impl Into<String>) -> Self {
        TokenReviewer {
            api: Api::all(client),
            audience: audience.into(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Authenticates one token.
    pub async fn review(&self, token: &str) -> Result<Principal, ReviewError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        if let Some((p, until)) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            && *until > now
        {
            return Ok(p.clone());
        }
        let expiry = jwt_expiry(token);
        if expiry.is_some_and(|e| e <= SystemTime::now()) {
            return Err(ReviewError::Expired);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let answer = self
            .api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "TokenReview failed");
                ReviewError::Unavailable
            })?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status.error.unwrap_or_else(|| "not authenticated".into());
            return Err(ReviewError::Rejected(why));
        }
        let audiences = status.audiences.unwrap_or_default();
        if !audiences.is_empty() && !audiences.contains(&self.audience) {
            return Err(ReviewError::Audience(self.audience.clone()));
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        let principal =
            service_account(&username).ok_or(ReviewError::NotServiceAccount(username))?;
        let ttl = expiry
            .and_then(|e| e.duration_since(SystemTime::now()).ok())
            .map_or(Duration::from_secs(60), |d| d.min(MAX_CACHE));
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_ENTRIES {
            cache.clear();
        }
        cache.insert(key, (principal.clone(), now + ttl));
        Ok(principal)
    }
}

#[tonic::async_trait]
impl Authenticator for TokenReviewer {
    async fn authenticate(
        &self,
        metadata: &MetadataMap,
        _: Option<&[Vec<u8>]>,
    ) -> Result<Principal, Status> {
        let header = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::unauthenticated("no `authorization: Bearer <token>` metadata; configure the sidecar with `redis-xds bootstrap --xds-auth token`"))?;
        let token = header
            .strip_prefix("Bearer ")
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Status::unauthenticated("the authorization metadata is not `Bearer <token>`")
            })?;
        Ok(self.review(token.trim()).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_read_service_account_usernames_only() {
        assert_eq!(
            service_account("system:serviceaccount:shop:checkout"),
            Some(Principal {
                namespace: "shop".into(),
                service_account: "checkout".into()
            })
        );
        assert_eq!(service_account("alice"), None);
        assert_eq!(service_account("system:serviceaccount::x"), None);
    }

    #[test]
    fn should_read_the_expiry_of_a_jwt() {
        // {"alg":"none"} . {"exp":2000000000} . (no signature)
        let token = "eyJhbGciOiJub25lIn0.eyJleHAiOjIwMDAwMDAwMDB9.";
        assert_eq!(
            jwt_expiry(token),
            Some(UNIX_EPOCH + Duration::from_secs(2_000_000_000))
        );
        assert_eq!(jwt_expiry("not-a-jwt"), None);
    }
}
