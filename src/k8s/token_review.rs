//! Proxy authentication with ServiceAccount tokens (`serve --xds-auth token`): the sidecar
//! sends its projected Kubernetes ServiceAccount token as `authorization: Bearer <token>`;
//! it is checked with the TokenReview API for the configured audience, and the answer is
//! cached until the token expires. (`--xds-auth mtls` needs no API call:
//! [`crate::xds::auth::SpiffeAuthenticator`].)
//!
//! Tokens are never logged or shown; the cache is keyed by their SHA-256.
//!
//! A whole fleet reconnects at once when redis-xds rolls out, and each replica starts
//! with an empty cache: N sidecars would be N TokenReviews in the same second. So the
//! reviewer sends one review per distinct token however many streams present it at once
//! (later ones wait for the first's answer), sends at most [`MAX_CONCURRENT_REVIEWS`] to
//! the API server at a time (the rest wait their turn), and when the API server throttles
//! (429, API Priority and Fairness) or fails (5xx, connection), waits and asks again for
//! up to [`REVIEW_PATIENCE`] before answering `unavailable`: the stream waits, it is not
//! refused because the API server was busy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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
/// TokenReviews in flight to the API server at most. A service account's requests share
/// the `workload-low` priority level with every controller in the cluster (API Priority
/// and Fairness, the default `service-accounts` flow schema); a few dozen at a time keep a
/// storm of reviews within its seats and queues instead of drawing 429s, and at a few ms
/// each still review a thousand tokens in well under a second.
pub const MAX_CONCURRENT_REVIEWS: usize = 32;
/// How long a review keeps asking again while the API server throttles or fails, before
/// the stream is answered `unavailable` (Envoy then retries it after its backoff).
pub const REVIEW_PATIENCE: Duration = Duration::from_secs(60);
/// The first wait before asking again, doubled each time up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

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
#[derive(Clone, Debug, thiserror::Error)]
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

/// One review's answer, shared by every stream that presented the token meanwhile.
type Answer = Arc<tokio::sync::OnceCell<Result<Principal, ReviewError>>>;

/// `--xds-auth token`.
#[derive(Debug)]
pub struct TokenReviewer {
    api: Api<TokenReview>,
    audience: String,
    cache: Mutex<HashMap<[u8; 32], (Principal, Instant)>>,
    /// Reviews in flight by token hash.
    in_flight: Mutex<HashMap<[u8; 32], Answer>>,
    /// Bounds the reviews sent to the API server at once.
    permits: tokio::sync::Semaphore,
    patience: Duration,
}

/// Whether a failed call is worth asking again: the API server throttled it (429), failed
/// on its side (5xx) or could not be reached. A 4xx other than 429 is an answer.
fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        kube::Error::SerdeError(_) | kube::Error::BuildRequest(_) => false,
        _ => true,
    }
}

impl TokenReviewer {
    /// Checks tokens for `audience` with the TokenReview API of `client`.
    pub fn new(client: kube::Client, audience: impl Into<String>) -> Self {
        TokenReviewer {
            api: Api::all(client),
            audience: audience.into(),
            cache: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            permits: tokio::sync::Semaphore::new(MAX_CONCURRENT_REVIEWS),
            patience: REVIEW_PATIENCE,
        }
    }

    /// At most `reviews` in flight to the API server instead of
    /// [`MAX_CONCURRENT_REVIEWS`] (at least one), and `patience` instead of
    /// [`REVIEW_PATIENCE`].
    pub fn with_limits(mut self, reviews: usize, patience: Duration) -> Self {
        self.permits = tokio::sync::Semaphore::new(reviews.max(1));
        self.patience = patience;
        self
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
        // The first stream with this token asks; the others wait for its answer. Should
        // the first go away while it asks, the next waiting one asks instead (OnceCell).
        let answer: Answer = Arc::clone(
            self.in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key)
                .or_default(),
        );
        let result = answer
            .get_or_init(|| self.ask(token, expiry, key))
            .await
            .clone();
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if in_flight.get(&key).is_some_and(|a| Arc::ptr_eq(a, &answer)) {
            in_flight.remove(&key);
        }
        result
    }

    /// Sends the review (waiting for a free permit), asking again while the API server
    /// throttles or fails, and caches a positive answer until the token expires.
    async fn ask(
        &self,
        token: &str,
        expiry: Option<SystemTime>,
        key: [u8; 32],
    ) -> Result<Principal, ReviewError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        // tokio's clock: the same as the system's, but tests can pause it.
        let give_up = tokio::time::Instant::now() + self.patience;
        let mut wait = RETRY_FIRST;
        let answer = loop {
            let called = {
                let _permit = self
                    .permits
                    .acquire()
                    .await
                    .map_err(|_| ReviewError::Unavailable)?;
                self.api.create(&PostParams::default(), &review).await
            };
            match called {
                Ok(answer) => break answer,
                Err(e) if transient(&e) && tokio::time::Instant::now() + wait < give_up => {
                    tracing::debug!(error = %e, retry_in = ?wait, "TokenReview not answered; asking again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RETRY_MAX);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "TokenReview failed");
                    return Err(ReviewError::Unavailable);
                }
            }
        };
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
        cache.insert(key, (principal.clone(), Instant::now() + ttl));
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
