//! Proxy authentication with ServiceAccount tokens (`serve --xds-auth token`): the sidecar
//! sends its projected Kubernetes ServiceAccount token as `authorization: Bearer <token>`;
//! it is checked with the TokenReview API for the configured audience, and the answer is
//! cached until the token expires, for at most ten minutes (a refusal for one minute).
//! (`--xds-auth mtls` needs no API call: [`crate::xds::auth::SpiffeAuthenticator`].)
//!
//! Tokens are never logged or shown; the cache is keyed by their SHA-256.
//!
//! A whole fleet reconnects at once when redis-xds rolls out, and each replica starts
//! with an empty cache: N sidecars would be N TokenReviews in the same second. Three
//! things keep that from slowing or failing the fleet:
//!
//! - **Verified first against the cluster's published keys.** A token that is a JWT signed
//!   by one of the keys the API server publishes for ServiceAccount tokens (OIDC
//!   discovery: `/.well-known/openid-configuration` and `/openid/v1/jwks`), issued by its
//!   issuer, for the configured audience, within its `nbf`..`exp` and naming a
//!   ServiceAccount, starts its stream at once. Its TokenReview still runs, as a
//!   [`Confirmation`]: it checks what only the API server knows (the ServiceAccount, and
//!   the Pod or Secret the token is bound to, still exist with the token's UIDs), and a
//!   refusal ends the stream with Unauthenticated (and is cached: the sidecar's reconnect
//!   is refused at once). The keys are fetched once, when the first token needs them, and
//!   again when a token names a key not seen yet (at most every [`KEYS_REFRESH`]). Any
//!   token the keys cannot vouch for (another issuer, an unknown key, no access to the
//!   keys) waits for its TokenReview instead, as before.
//! - **One review per distinct token** however many streams present it at once (later ones
//!   wait for the first's answer), at most [`MAX_CONCURRENT_REVIEWS`] in flight to the API
//!   server (the rest wait their turn).
//! - **Patience**: when the API server throttles (429, API Priority and Fairness) or fails
//!   (5xx, connection), the review asks again for up to [`REVIEW_PATIENCE`] before
//!   answering `unavailable`. A waiting stream waits; it is not refused because the API
//!   server was busy. A stream already admitted by the keys keeps running when its review
//!   cannot be had.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backon::{ExponentialBuilder, Retryable};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Api;
use kube::api::PostParams;
use sha2::{Digest, Sha256};
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::xds::auth::{Authenticated, Authenticator, Principal};

/// How long an answer is cached at most, even for long-lived tokens.
const MAX_CACHE: Duration = Duration::from_secs(600);
/// How long a refusal is cached at most: long enough that a sidecar whose stream a
/// review ended is refused when it reconnects (rather than admitted by the keys again),
/// short enough that an answer the API server would now give differently is asked again.
const MAX_NEGATIVE_CACHE: Duration = Duration::from_secs(60);
/// Cache entries kept at most; beyond that the cache is cleared (a flood of bad tokens must
/// not grow memory).
const MAX_ENTRIES: usize = 100_000;
/// TokenReviews in flight to the API server at most. A service account's requests share
/// the `workload-low` priority level with every controller in the cluster (API Priority
/// and Fairness, the default `service-accounts` flow schema); a few dozen at a time keep a
/// storm of reviews within its seats and queues instead of drawing 429s, and at a few ms
/// each still review a thousand tokens in well under a second.
pub const MAX_CONCURRENT_REVIEWS: usize = 32;
/// How long a review keeps asking again while the API server throttles or fails (the sum
/// of its waits), before the stream is answered `unavailable` (Envoy then retries it after
/// its backoff).
pub const REVIEW_PATIENCE: Duration = Duration::from_secs(60);
/// The first wait before asking again, doubled each time up to [`RETRY_MAX`], each with up
/// to as much again of jitter.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// The published keys are fetched again, for a token naming a key not seen yet, at most
/// this often: a flood of made-up key ids must not become a flood of requests.
pub const KEYS_REFRESH: Duration = Duration::from_secs(30);
/// How long fetched keys vouch for tokens before they are fetched again.
pub const KEYS_MAX_AGE: Duration = Duration::from_secs(300);
/// Clock skew allowed on `exp` and `nbf`, in seconds, as the API server's own
/// ServiceAccount token authenticator allows.
const LEEWAY_SECS: u64 = 60;

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
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: u64,
    }
    let mut only_read = jsonwebtoken::Validation::default();
    only_read.insecure_disable_signature_validation();
    only_read.validate_exp = false;
    only_read.validate_aud = false;
    let data = jsonwebtoken::decode::<Claims>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(&[]),
        &only_read,
    )
    .ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(data.claims.exp))
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
    /// The keys vouched for one ServiceAccount and the TokenReview named another.
    #[error("the token's TokenReview names ServiceAccount {0}, not the one the token claims")]
    Mismatch(String),
}

impl From<ReviewError> for Status {
    fn from(e: ReviewError) -> Status {
        match e {
            ReviewError::Unavailable => Status::unavailable(e.to_string()),
            _ => Status::unauthenticated(e.to_string()),
        }
    }
}

/// What a review decided about a token.
type Verdict = Result<Principal, ReviewError>;

/// One review's answer, shared by every stream that presented the token meanwhile.
type Answer = Arc<tokio::sync::OnceCell<Verdict>>;

/// `--xds-auth token`. Cheap to clone: clones share the cache and the published keys.
#[derive(Clone, Debug)]
pub struct TokenReviewer {
    inner: Arc<Reviewer>,
}

#[derive(Debug)]
struct Reviewer {
    api: Api<TokenReview>,
    audience: String,
    /// Answers by token hash, until the token expires (at most [`MAX_CACHE`]).
    cache: Mutex<HashMap<[u8; 32], (Verdict, Instant)>>,
    /// Reviews in flight by token hash.
    in_flight: Mutex<HashMap<[u8; 32], Answer>>,
    /// Bounds the reviews sent to the API server at once.
    permits: tokio::sync::Semaphore,
    patience: Duration,
    /// `None` with `--token-verify review`.
    keys: Option<PublishedKeys>,
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
    /// Checks tokens for `audience` with the published keys and the TokenReview API of
    /// `client`.
    pub fn new(client: kube::Client, audience: impl Into<String>) -> Self {
        TokenReviewer {
            inner: Arc::new(Reviewer {
                api: Api::all(client.clone()),
                audience: audience.into(),
                cache: Mutex::new(HashMap::new()),
                in_flight: Mutex::new(HashMap::new()),
                permits: tokio::sync::Semaphore::new(MAX_CONCURRENT_REVIEWS),
                patience: REVIEW_PATIENCE,
                keys: Some(PublishedKeys::new(client)),
            }),
        }
    }

    /// At most `reviews` in flight to the API server instead of
    /// [`MAX_CONCURRENT_REVIEWS`] (at least one), and `patience` instead of
    /// [`REVIEW_PATIENCE`]. Call it before the reviewer is cloned.
    pub fn with_limits(mut self, reviews: usize, patience: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.permits = tokio::sync::Semaphore::new(reviews.max(1));
            inner.patience = patience;
        }
        self
    }

    /// Whether the published keys may admit a token before its TokenReview answers
    /// (`true` unless changed; `false` is `--token-verify review`). Call it before the
    /// reviewer is cloned.
    pub fn with_published_keys(mut self, use_them: bool) -> Self {
        if !use_them && let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.keys = None;
        }
        self
    }

    /// Authenticates one token with the TokenReview API (or the cache), whatever the
    /// published keys say.
    pub async fn review(&self, token: &str) -> Result<Principal, ReviewError> {
        self.inner.review(token).await
    }

    /// Authenticates one token: at once when the published keys vouch for it, its
    /// TokenReview then following as the [`Authenticated::confirmation`]; otherwise
    /// after its TokenReview.
    pub async fn admit(&self, token: &str) -> Result<Authenticated, ReviewError> {
        let inner = &self.inner;
        let key = token_key(token);
        if let Some(answer) = inner.cached(&key) {
            return answer.map(Authenticated::from);
        }
        let expiry = jwt_expiry(token);
        if expiry.is_some_and(|e| e <= SystemTime::now()) {
            return Err(ReviewError::Expired);
        }
        let vouched = match &inner.keys {
            Some(keys) => keys.verify(token, &inner.audience).await,
            None => None,
        };
        let Some(vouched) = vouched else {
            return inner.review(token).await.map(Authenticated::from);
        };
        let reviewer = Arc::clone(inner);
        let token = token.to_owned();
        let claimed = vouched.clone();
        let confirmation = async move {
            let refused = match reviewer.review(&token).await {
                Ok(reviewed) if reviewed == claimed => return Ok(()),
                Ok(reviewed) => {
                    let e = ReviewError::Mismatch(reviewed.to_string());
                    reviewer.remember(token_key(&token), Err(e.clone()), None);
                    e
                }
                // The keys vouched for it; the stream keeps running without the review.
                Err(ReviewError::Unavailable) => {
                    tracing::warn!(principal = %claimed, "TokenReview unavailable; the stream keeps running on the token's signature alone");
                    return Ok(());
                }
                Err(e) => e,
            };
            tracing::warn!(principal = %claimed, "stream ended: {refused}");
            Err(refused.into())
        };
        Ok(Authenticated {
            principal: vouched,
            confirmation: Some(Box::pin(confirmation)),
        })
    }
}

/// One stream waiting for a review in flight. The first to see the answer, or the last to
/// give up before it, takes the review off the in-flight map, so that a review every waiter
/// gave up on leaves nothing behind.
struct Waiting<'a> {
    in_flight: &'a Mutex<HashMap<[u8; 32], Answer>>,
    key: [u8; 32],
    answer: Answer,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        // Answered (later streams read the cache, or ask again), or held by the map and
        // by this waiter only (nobody else waits for it).
        if in_flight
            .get(&self.key)
            .is_some_and(|a| Arc::ptr_eq(a, &self.answer))
            && (self.answer.initialized() || Arc::strong_count(&self.answer) <= 2)
        {
            in_flight.remove(&self.key);
        }
    }
}

/// The cache key of a token: its SHA-256 (tokens themselves are never kept).
fn token_key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Reviewer {
    /// The cached answer for a token, if it has not run out.
    fn cached(&self, key: &[u8; 32]) -> Option<Result<Principal, ReviewError>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let (answer, until) = cache.get(key)?;
        (*until > Instant::now()).then(|| answer.clone())
    }

    /// Caches an answer until the token expires (at most [`MAX_CACHE`]).
    fn remember(
        &self,
        key: [u8; 32],
        answer: Result<Principal, ReviewError>,
        expiry: Option<SystemTime>,
    ) {
        let ttl = expiry
            .and_then(|e| e.duration_since(SystemTime::now()).ok())
            .map_or(Duration::from_secs(60), |d| d.min(MAX_CACHE));
        let ttl = if answer.is_ok() {
            ttl
        } else {
            ttl.min(MAX_NEGATIVE_CACHE)
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_ENTRIES {
            // Answers that ran out first; everything only if a flood left nothing to drop.
            let now = Instant::now();
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= MAX_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(key, (answer, Instant::now() + ttl));
    }

    async fn review(&self, token: &str) -> Result<Principal, ReviewError> {
        let key = token_key(token);
        if let Some(answer) = self.cached(&key) {
            return answer;
        }
        let expiry = jwt_expiry(token);
        if expiry.is_some_and(|e| e <= SystemTime::now()) {
            return Err(ReviewError::Expired);
        }
        // The first stream with this token asks; the others wait for its answer. Should
        // the first go away while it asks, the next waiting one asks instead (OnceCell).
        let waiting = Waiting {
            in_flight: &self.in_flight,
            key,
            answer: Arc::clone(
                self.in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(key)
                    .or_default(),
            ),
        };
        waiting
            .answer
            .get_or_init(|| self.ask(token, expiry, key))
            .await
            .clone()
    }

    /// Sends the review (waiting for a free permit), asking again while the API server
    /// throttles or fails, and caches the answer until the token expires.
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
        // Doubling waits with jitter (so that a throttled storm does not come back in
        // step), for at most the patience in all; tokio's clock, which tests can pause.
        let backoff = ExponentialBuilder::default()
            .with_min_delay(RETRY_FIRST)
            .with_max_delay(RETRY_MAX)
            .with_jitter()
            .without_max_times()
            .with_total_delay(Some(self.patience));
        let called = (|| async {
            // The semaphore is never closed: a permit always comes.
            let _permit = self.permits.acquire().await.ok();
            self.api.create(&PostParams::default(), &review).await
        })
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(transient)
        .notify(|e, wait| {
            tracing::debug!(error = %e, retry_in = ?wait, "TokenReview not answered; asking again");
        })
        .await;
        let answer = match called {
            Ok(answer) => answer,
            Err(e) => {
                tracing::warn!(error = %e, "TokenReview failed");
                return Err(ReviewError::Unavailable);
            }
        };
        let answer = self.judge(answer);
        self.remember(key, answer.clone(), expiry);
        answer
    }

    /// What a TokenReview's status means for the stream.
    fn judge(&self, answer: TokenReview) -> Result<Principal, ReviewError> {
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
        service_account(&username).ok_or(ReviewError::NotServiceAccount(username))
    }
}

/// The keys the API server signs ServiceAccount tokens with, as it publishes them for OIDC
/// discovery (Kubernetes' ServiceAccountIssuerDiscovery: the `issuer` of
/// `/.well-known/openid-configuration` and the JSON Web Key Set at `/openid/v1/jwks`,
/// readable with the `system:service-account-issuer-discovery` ClusterRole's rule).
struct PublishedKeys {
    client: kube::Client,
    current: Mutex<Option<Arc<KeySet>>>,
    /// Held while fetching, so that a storm of tokens fetches once; holds when the last
    /// fetch was attempted.
    fetching: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

/// One fetch of the published keys.
struct KeySet {
    issuer: String,
    /// By key id (`kid`).
    keys: HashMap<String, DecodingKey>,
    /// When they were fetched: after [`KEYS_MAX_AGE`] they vouch for nothing until fetched
    /// again, so that a key the cluster stopped publishing (rotated out after a leak) stops
    /// admitting tokens.
    fetched: tokio::time::Instant,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("issuer", &self.issuer)
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The claims of a ServiceAccount token that the stream needs (the others are checked by
/// [`Validation`]: `iss`, `aud`, `exp`, `nbf`).
#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
}

/// The algorithms ServiceAccount tokens are signed with: RSA or ECDSA, as the API server's
/// `--service-account-signing-key-file` holds (never a shared secret).
fn asymmetric(alg: Algorithm) -> bool {
    matches!(
        alg,
        Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512
            | Algorithm::ES256
            | Algorithm::ES384
    )
}

impl std::fmt::Debug for PublishedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishedKeys")
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

impl PublishedKeys {
    fn new(client: kube::Client) -> Self {
        PublishedKeys {
            client,
            current: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(None),
        }
    }

    /// The ServiceAccount a token names, if the published keys vouch for it: signed by
    /// one of them, issued by their issuer, for `audience`, within `nbf`..`exp`. `None`
    /// means "ask the TokenReview API", never "refused".
    async fn verify(&self, token: &str, audience: &str) -> Option<Principal> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        let kid = header.kid.filter(|_| asymmetric(header.alg))?;
        let keys = self.keys_with(&kid).await?;
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[&keys.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        let claims = jsonwebtoken::decode::<Claims>(token, keys.keys.get(&kid)?, &validation)
            .ok()?
            .claims;
        service_account(&claims.sub)
    }

    /// The key set holding `kid`, fetching it when the one held lacks it or is older than
    /// [`KEYS_MAX_AGE`] (once for every caller waiting at the time, and at most every
    /// [`KEYS_REFRESH`]).
    async fn keys_with(&self, kid: &str) -> Option<Arc<KeySet>> {
        let held = || {
            self.current
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .filter(|k| k.keys.contains_key(kid) && k.fetched.elapsed() < KEYS_MAX_AGE)
        };
        if let Some(keys) = held() {
            return Some(keys);
        }
        let mut last = self.fetching.lock().await;
        // Fetched by another caller while this one waited?
        if let Some(keys) = held() {
            return Some(keys);
        }
        let now = tokio::time::Instant::now();
        if last.is_some_and(|t| now < t + KEYS_REFRESH) {
            return None;
        }
        *last = Some(now);
        match self.fetch().await {
            Ok(keys) => {
                tracing::debug!(keys = ?keys, "fetched the ServiceAccount token keys");
                *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(keys));
            }
            Err(e) => tracing::warn!(
                error = %e,
                "cannot read the ServiceAccount token keys (OIDC discovery); every token waits for its TokenReview. Grant redis-xds `get` on the non-resource URLs /.well-known/openid-configuration and /openid/v1/jwks (deploy/base/rbac.yaml does)"
            ),
        }
        held()
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let get = |path: &'static str| async move {
            let request = http::Request::get(path)
                .body(Vec::new())
                .map_err(|e| e.to_string())?;
            self.client
                .request_text(request)
                .await
                .map_err(|e| format!("GET {path}: {e}"))
        };
        #[derive(serde::Deserialize)]
        struct Discovery {
            issuer: String,
        }
        let discovery: Discovery =
            serde_json::from_str(&get("/.well-known/openid-configuration").await?)
                .map_err(|e| format!("/.well-known/openid-configuration: {e}"))?;
        let set: JwkSet = serde_json::from_str(&get("/openid/v1/jwks").await?)
            .map_err(|e| format!("/openid/v1/jwks: {e}"))?;
        let keys = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                Some((kid, DecodingKey::from_jwk(jwk).ok()?))
            })
            .collect();
        Ok(KeySet {
            issuer: discovery.issuer,
            keys,
            fetched: tokio::time::Instant::now(),
        })
    }
}

#[tonic::async_trait]
impl Authenticator for TokenReviewer {
    async fn authenticate(
        &self,
        metadata: &MetadataMap,
        _: Option<&[Vec<u8>]>,
    ) -> Result<Authenticated, Status> {
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
        Ok(self.admit(token.trim()).await?)
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
        // {"alg":"RS256"} . {"exp":2000000000} . (a signature nobody checks here)
        let token = "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjIwMDAwMDAwMDB9.c2ln";
        assert_eq!(
            jwt_expiry(token),
            Some(UNIX_EPOCH + Duration::from_secs(2_000_000_000))
        );
        assert_eq!(jwt_expiry("not-a-jwt"), None);
    }
}
