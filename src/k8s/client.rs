//! The one Kubernetes client of `serve`.

/// Why there is no client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither an in-cluster configuration nor a kubeconfig was found or read.
    #[error("finding the API server (in-cluster config or kubeconfig): {0}")]
    Config(kube::config::InferConfigError),
    /// The configuration found does not make a client (a bad certificate, say).
    #[error("building the Kubernetes client: {0}")]
    Client(kube::Error),
    /// The retry settings were refused (a programming error).
    #[error("the retry policy: {0}")]
    Retry(String),
}

/// The Kubernetes client: in-cluster config or kubeconfig (`kube::Config::infer`), with
/// kube-client's retry of 429, 503 and 504 answers replaced by one that ignores
/// `Retry-After`.
///
/// Why: a restarting kube-apiserver answers requests for custom resources with 503 and
/// `Retry-After: 5` for a moment after its `/readyz` turns ok. kube-client's default policy
/// then holds the RedisCluster watcher's LIST for those 5 s, and a change made meanwhile
/// reaches the proxies seconds late (tests/apiserver.rs,
/// should_follow_changes_soon_after_the_api_server_comes_back). Here retries start at
/// 50 ms and double up to 1 s, at most 10 of them (about 6 s in all) before the caller's own
/// backoff takes over; redis-xds runs one or two replicas, so the load this puts on an API
/// server that asks for patience is a few requests a second.
pub async fn client() -> Result<kube::Client, Error> {
    use std::time::Duration;
    let mut config = kube::Config::infer().await.map_err(Error::Config)?;
    config.default_retry = false;
    let retry = kube::client::retry::RetryPolicy::new(
        Duration::from_millis(50),
        Duration::from_secs(1),
        10,
        false,
    )
    .map_err(|e| Error::Retry(e.to_string()))?;
    Ok(kube::client::ClientBuilder::try_from(config)
        .map_err(Error::Client)?
        .with_layer(&tower::buffer::BufferLayer::new(1024))
        .with_layer(&tower::retry::RetryLayer::new(retry))
        .build())
}
