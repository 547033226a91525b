//! A token for istiod's debug endpoints (`serve --istiod-debug-service-account`).
//!
//! istiod answers a caller that is not on its own loopback only with a ServiceAccount token
//! of audience `istio-ca`, and gives the config of every proxy only to a caller from its
//! root namespace (a caller from any other namespace sees only its own namespace's
//! proxies). So redis-xds asks the TokenRequest API for a token of a ServiceAccount in the
//! root namespace that deploy/istio creates for the purpose (its RBAC lets redis-xds
//! `create` `serviceaccounts/token` for that one name), and asks again before it expires.
//! The token is kept in memory only and never logged.

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The audience istiod's JWT authenticator accepts.
pub const AUDIENCE: &str = "istio-ca";
/// How long each token lives, in seconds (the API server's minimum is 600).
pub const EXPIRATION_SECONDS: i64 = 3600;
/// Waits after a failed request, doubling up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// The waits between failed requests (backon: 1 s doubling to 60 s, with jitter, without end).
fn retries() -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(RETRY_FIRST)
        .with_max_delay(RETRY_MAX)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Keeps `tokens` holding a fresh token of `namespace/name` until `shutdown`: asked again
/// when four fifths of its life have passed, and after a failure with [`retries`] (the
/// previous token stays in use while it lasts).
pub async fn run(
    client: kube::Client,
    namespace: String,
    name: String,
    tokens: watch::Sender<Option<String>>,
    shutdown: CancellationToken,
) {
    let api: Api<ServiceAccount> = Api::namespaced(client, &namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![AUDIENCE.to_owned()],
            expiration_seconds: Some(EXPIRATION_SECONDS),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    let mut retry = retries();
    loop {
        let wait = match api
            .create_token_request(&name, &PostParams::default(), &request)
            .await
        {
            Ok(answer) => match answer.status {
                Some(status) => {
                    tokens.send_replace(Some(status.token));
                    retry = retries();
                    let left = status
                        .expiration_timestamp
                        .0
                        .duration_since(jiff::Timestamp::now());
                    let left = if left.is_negative() {
                        Duration::ZERO
                    } else {
                        left.unsigned_abs()
                    };
                    left.mul_f64(0.8).max(Duration::from_secs(10))
                }
                None => {
                    tracing::warn!(service_account = %format!("{namespace}/{name}"), "TokenRequest answered without a token; asking again");
                    retry.next().unwrap_or(RETRY_MAX)
                }
            },
            Err(e) => {
                tracing::warn!(service_account = %format!("{namespace}/{name}"), error = %e, "cannot get a token for istiod's debug endpoints (TokenRequest); IstioProgrammed stays Unknown until one comes. deploy/istio creates the ServiceAccount and lets redis-xds request its tokens");
                retry.next().unwrap_or(RETRY_MAX)
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}
