//! Who may read `/debug/*`: it shows every proxy's configuration, so with Kubernetes it
//! answers only to callers the cluster allows, as kube-rbac-proxy does for metrics.
//!
//! A caller is allowed when
//! - it connects from a loopback address and loopback is trusted (`kubectl port-forward`
//!   arrives there, and so does anything already inside the pod), or
//! - it sends `Authorization: Bearer <token>` that the TokenReview API authenticates (any
//!   user: a person's token or a ServiceAccount's) and a SubjectAccessReview allows that
//!   user `get` on `redisclusters/debug` in API group `redis-xds.dev`, cluster-wide (the
//!   ClusterRole `redis-xds-debug` of `deploy/base/debug-access.yaml` grants it).
//!
//! Answers: 401 without a valid token, 403 when the user is not allowed, 503 when the API
//! server cannot be asked. Tokens are never logged; a positive answer is remembered for
//! [`CACHE_FOR`] by the token's SHA-256.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};

/// How long an allowed token stays allowed without asking again.
pub const CACHE_FOR: Duration = Duration::from_secs(60);

/// The permission `/debug/*` requires: `get` on this subresource.
pub const DEBUG_GROUP: &str = "redis-xds.dev";
/// See [`DEBUG_GROUP`].
pub const DEBUG_RESOURCE: &str = "redisclusters";
/// See [`DEBUG_GROUP`].
pub const DEBUG_SUBRESOURCE: &str = "debug";

/// Decides who may read `/debug/*`.
#[derive(Debug)]
pub struct DebugAccess {
    reviews: Api<TokenReview>,
    access: Api<SubjectAccessReview>,
    trust_loopback: bool,
    allowed: Mutex<HashMap<[u8; 32], Instant>>,
}

/// A refusal: the HTTP status and what to do.
pub type Refusal = (StatusCode, String);

impl DebugAccess {
    /// Checks callers with the TokenReview and SubjectAccessReview APIs of `client`;
    /// `trust_loopback` lets loopback callers in without a token.
    pub fn new(client: kube::Client, trust_loopback: bool) -> Self {
        DebugAccess {
            reviews: Api::all(client.clone()),
            access: Api::all(client),
            trust_loopback,
            allowed: Mutex::new(HashMap::new()),
        }
    }

    /// Allows or refuses a request from `peer` with this `Authorization` header value.
    pub async fn check(
        &self,
        peer: SocketAddr,
        authorization: Option<&str>,
    ) -> Result<(), Refusal> {
        if self.trust_loopback && peer.ip().is_loopback() {
            return Ok(());
        }
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                (
                    StatusCode::UNAUTHORIZED,
                    "send Authorization: Bearer <token> of a user allowed to get redisclusters/debug (group redis-xds.dev), or use kubectl port-forward\n".to_owned(),
                )
            })?;
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        {
            let mut allowed = self.allowed.lock().unwrap_or_else(|e| e.into_inner());
            allowed.retain(|_, until| *until > now);
            if allowed.contains_key(&key) {
                return Ok(());
            }
        }
        let unavailable = |what: &str, e: kube::Error| {
            tracing::warn!(error = %e, "{what} for /debug failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot check the token right now ({what} failed); retry\n"),
            )
        };
        let review = self
            .reviews
            .create(
                &PostParams::default(),
                &TokenReview {
                    spec: TokenReviewSpec {
                        token: Some(token.to_owned()),
                        audiences: None,
                    },
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| unavailable("TokenReview", e))?;
        let status = review.status.unwrap_or_default();
        let user = match (status.authenticated, status.user) {
            (Some(true), Some(user)) => user,
            _ => {
                return Err((
                    StatusCode::UNAUTHORIZED,
                    format!(
                        "the token was not accepted by the Kubernetes API: {}\n",
                        status.error.unwrap_or_else(|| "not authenticated".into())
                    ),
                ));
            }
        };
        let username = user.username.clone().unwrap_or_default();
        let answer = self
            .access
            .create(
                &PostParams::default(),
                &SubjectAccessReview {
                    spec: SubjectAccessReviewSpec {
                        user: user.username,
                        groups: user.groups,
                        uid: user.uid,
                        extra: user.extra,
                        resource_attributes: Some(ResourceAttributes {
                            verb: Some("get".into()),
                            group: Some(DEBUG_GROUP.into()),
                            resource: Some(DEBUG_RESOURCE.into()),
                            subresource: Some(DEBUG_SUBRESOURCE.into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| unavailable("SubjectAccessReview", e))?;
        if !answer.status.is_some_and(|s| s.allowed) {
            return Err((
                StatusCode::FORBIDDEN,
                format!(
                    "{username:?} may not get {DEBUG_RESOURCE}/{DEBUG_SUBRESOURCE} in API group {DEBUG_GROUP}; bind the ClusterRole redis-xds-debug (deploy/base/debug-access.yaml) to it\n"
                ),
            ));
        }
        self.allowed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, now + CACHE_FOR);
        Ok(())
    }
}
