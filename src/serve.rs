//! `serve`: wires a source, the publisher and the ADS server together and runs them until
//! SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::metrics::Metrics;
use crate::model::Model;
use crate::publish::{self, Debounce};
use crate::snapshot::Snapshot;
use crate::source::watch::{self as dirwatch, DirState, DirWatcher};
use crate::xds::{AdsServer, Registry, ResourceSource};

/// TLS for the xDS port.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// CA that client certificates must chain to; set for mutual TLS.
    pub client_ca: Option<PathBuf>,
}

/// Everything `serve` needs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Manifests directory; `None` means Kubernetes.
    pub manifests: Option<PathBuf>,
    /// Where the ADS server listens.
    pub xds_addr: SocketAddr,
    /// Where the debug HTTP server listens; `None` turns it off.
    pub debug_addr: Option<SocketAddr>,
    /// How often the manifests directory is re-read.
    pub poll_interval: Duration,
    /// Debounce of model changes.
    pub debounce: Debounce,
    /// TLS on the xDS port.
    pub tls: Option<TlsFiles>,
    /// Kubernetes settings (used without `manifests`).
    pub kube: KubeOptions,
    /// Proxy authentication on the xDS port; `None` picks the default of the source:
    /// token in Kubernetes, none with a manifests directory.
    pub xds_auth: Option<XdsAuth>,
    /// Who may read `/debug/*`; `None` picks the default of the source: Kubernetes
    /// permissions (loopback trusted) in Kubernetes, anyone with a manifests directory.
    pub debug_auth: Option<DebugAuth>,
}

/// `--debug-auth`: who may read `/debug/*` (see [`crate::debug_access`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DebugAuth {
    /// Anyone who reaches the debug port.
    None,
    /// Callers allowed `get` on `redisclusters/debug`, by TokenReview and
    /// SubjectAccessReview; loopback callers too when `trust_loopback`.
    Kubernetes {
        /// Let loopback callers (`kubectl port-forward`) in without a token.
        trust_loopback: bool,
    },
}

/// `--xds-auth`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XdsAuth {
    /// Anyone who reaches the port may claim any identity: local runs only.
    None,
    /// Projected ServiceAccount tokens, checked with TokenReview for this audience.
    Token {
        /// Expected token audience.
        audience: String,
    },
    /// Client certificates with SPIFFE identities of this trust domain.
    Mtls {
        /// Trust domain.
        trust_domain: String,
    },
}

/// The running parts other components (the debug server, tests) look at.
#[derive(Clone, Debug)]
pub struct Handles {
    /// Bound address of the debug server, when it runs.
    pub debug_addr: Option<SocketAddr>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Connected proxies.
    pub registry: Arc<Registry>,
    /// The latest snapshot.
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// The latest state of the manifests directory.
    pub dir: Option<watch::Receiver<Arc<DirState>>>,
}

/// Kubernetes settings of `serve` without `--manifests`.
#[derive(Clone, Debug, Default)]
pub struct KubeOptions {
    /// Watch only this namespace; `None` watches all.
    pub namespace: Option<String>,
    /// Namespace of the status Lease.
    pub lease_namespace: String,
    /// Name of the status Lease.
    pub lease_name: String,
    /// This replica's identity in the Lease.
    pub identity: String,
}

/// What a source hands to the rest of `serve`.
struct SourceParts {
    models: watch::Receiver<Arc<Model>>,
    state: watch::Receiver<Arc<DirState>>,
    ready: watch::Receiver<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Kubernetes client, for the status writer.
    client: Option<kube::Client>,
    /// RedisClusters the watcher could not read, for the status writer.
    undecodable: crate::source::k8s::status::UndecodableObjects,
}

async fn manifests_source(
    dir: &std::path::Path,
    poll_interval: Duration,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> anyhow::Result<SourceParts> {
    if !dir.is_dir() {
        bail!("--manifests {}: not a directory", dir.display());
    }
    let mut watcher = DirWatcher::new(dir);
    let initial = watcher.poll().unwrap_or_default();
    for p in &initial.problems {
        tracing::warn!(problem = %p, "manifest problem");
    }
    metrics
        .problems
        .get_or_create(&[("stage", "load")])
        .set(initial.problems.len() as i64);
    let (model_tx, models) = watch::channel(Arc::clone(&initial.model));
    let (state_tx, state) = watch::channel(Arc::new(initial));
    // The directory was read completely above.
    let (_ready_tx, ready) = watch::channel(true);
    let task = tokio::spawn(dirwatch::run(
        watcher,
        poll_interval,
        state_tx,
        model_tx,
        Arc::clone(metrics),
        shutdown.clone(),
    ));
    Ok(SourceParts {
        models,
        state,
        ready,
        tasks: vec![task],
        client: None,
        undecodable: Arc::default(),
    })
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
async fn kube_client() -> anyhow::Result<kube::Client> {
    use std::time::Duration;
    let mut config = kube::Config::infer().await?;
    config.default_retry = false;
    let retry = kube::client::retry::RetryPolicy::new(
        Duration::from_millis(50),
        Duration::from_secs(1),
        10,
        false,
    )?;
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&tower::buffer::BufferLayer::new(1024))
        .with_layer(&tower::retry::RetryLayer::new(retry))
        .build())
}

async fn kubernetes_source(
    opts: &KubeOptions,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> anyhow::Result<SourceParts> {
    let client = kube_client()
        .await
        .context("connecting to Kubernetes (in-cluster config or kubeconfig); pass --manifests DIR to run without Kubernetes")?;
    let (model_tx, models) = watch::channel(Arc::new(Model::default()));
    let (ready_tx, ready) = watch::channel(false);
    let (state_tx, state) = watch::channel(Arc::new(DirState::default()));
    let undecodable = crate::source::k8s::status::UndecodableObjects::default();
    let shared = crate::source::k8s::watch::Shared {
        index: Arc::new(std::sync::Mutex::new(
            crate::source::k8s::index::Index::new(model_tx, ready_tx),
        )),
        problems: Arc::clone(&undecodable),
        crd_missing: Arc::default(),
        state: state_tx,
        metrics: Arc::clone(metrics),
    };
    info!(
        namespace = opts.namespace.as_deref().unwrap_or("(all)"),
        "watching Kubernetes"
    );
    let tasks = crate::source::k8s::watch::spawn(
        &client,
        opts.namespace.as_deref(),
        shared,
        shutdown.clone(),
    );
    Ok(SourceParts {
        models,
        state,
        ready,
        tasks,
        client: Some(client),
        undecodable,
    })
}

/// Runs until `shutdown` is cancelled; then ends every stream and returns once the server
/// has stopped. `on_listening` is called with the bound xDS address.
pub async fn run(
    opts: ServeOptions,
    shutdown: CancellationToken,
    on_listening: impl FnOnce(SocketAddr, Handles),
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let source = match &opts.manifests {
        Some(dir) => manifests_source(dir, opts.poll_interval, &metrics, &shutdown).await?,
        None => kubernetes_source(&opts.kube, &metrics, &shutdown).await?,
    };
    let SourceParts {
        models,
        state,
        ready,
        mut tasks,
        client,
        undecodable,
    } = source;

    let initial_model = Arc::clone(&models.borrow());
    let mut first = publish::snapshot(&initial_model, None, Instant::now(), &metrics);
    // Until the source has read everything, proxies are held rather than served: an empty
    // model would withdraw every listener from a proxy that reconnects during a restart.
    first.ready = *ready.borrow();
    let first = Arc::new(first);
    let (snap_tx, snap_rx) = watch::channel(Arc::clone(&first));
    let (source_tx, source_rx) = watch::channel::<Arc<dyn ResourceSource>>(first);

    let registry = Arc::new(Registry::default());
    let mut ads = AdsServer::new(
        source_rx,
        Arc::clone(&registry),
        Arc::clone(&metrics),
        shutdown.clone(),
    );
    let auth = opts
        .xds_auth
        .clone()
        .unwrap_or(if opts.manifests.is_some() {
            XdsAuth::None
        } else {
            XdsAuth::Token {
                audience: "redis-xds".into(),
            }
        });
    match &auth {
        XdsAuth::None if opts.manifests.is_none() => tracing::warn!(
            "--xds-auth none: any process that reaches the xDS port can claim any namespace and receive its listeners, clusters and AUTH passwords"
        ),
        XdsAuth::None => {}
        XdsAuth::Token { audience } => {
            let client = match &client {
                Some(c) => c.clone(),
                None => kube_client()
                    .await
                    .context("--xds-auth token needs the Kubernetes API for TokenReview")?,
            };
            ads = ads.with_authenticator(Arc::new(crate::auth::TokenReviewer::new(
                client,
                audience.clone(),
            )));
        }
        XdsAuth::Mtls { trust_domain } => {
            if opts.tls.as_ref().is_none_or(|t| t.client_ca.is_none()) {
                bail!(
                    "--xds-auth mtls needs mutual TLS: pass --xds-tls-cert, --xds-tls-key and --xds-tls-client-ca"
                );
            }
            ads = ads.with_authenticator(Arc::new(crate::auth::SpiffeAuthenticator::new(
                trust_domain.clone(),
            )));
        }
    }
    info!(xds_auth = ?auth, "proxy authentication");

    let listener = TcpListener::bind(opts.xds_addr)
        .await
        .with_context(|| format!("binding the xDS address {}", opts.xds_addr))?;
    let local = listener.local_addr()?;

    let tls = opts.tls.as_ref().map(tls_config).transpose()?;

    let mut debug_addr = None;
    if let Some(addr) = opts.debug_addr {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the debug address {addr}"))?;
        debug_addr = Some(listener.local_addr()?);
        let debug_auth = opts.debug_auth.unwrap_or(if opts.manifests.is_some() {
            DebugAuth::None
        } else {
            DebugAuth::Kubernetes {
                trust_loopback: true,
            }
        });
        let access = match debug_auth {
            DebugAuth::None => None,
            DebugAuth::Kubernetes { trust_loopback } => {
                let client = match &client {
                    Some(c) => c.clone(),
                    None => kube_client().await.context(
                        "--debug-auth kubernetes needs the Kubernetes API for TokenReview and SubjectAccessReview",
                    )?,
                };
                Some(Arc::new(crate::debug_access::DebugAccess::new(
                    client,
                    trust_loopback,
                )))
            }
        };
        info!(debug_auth = ?debug_auth, "debug endpoint authorization");
        let router = crate::debug::router(crate::debug::DebugState {
            access,
            registry: Arc::clone(&registry),
            snapshots: snap_rx.clone(),
            dir: Some(state.clone()),
            metrics: Arc::clone(&metrics),
            ready: ready.clone(),
        });
        let stop = shutdown.clone();
        info!(addr = %listener.local_addr()?, "debug server listening");
        tasks.push(tokio::spawn(async move {
            let service = router.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(e) = axum::serve(listener, service)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
            {
                tracing::error!(error = %e, "debug server failed");
            }
        }));
    }

    tasks.push(tokio::spawn(publish::run(
        models,
        ready.clone(),
        snap_tx,
        source_tx,
        opts.debounce,
        Arc::clone(&metrics),
        shutdown.clone(),
    )));

    if let Some(client) = client {
        let (leader_tx, leader_rx) = watch::channel(false);
        let lease_api: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
            kube::Api::namespaced(client.clone(), &opts.kube.lease_namespace);
        let cfg = crate::source::k8s::lease::LeaseConfig {
            name: opts.kube.lease_name.clone(),
            identity: opts.kube.identity.clone(),
            duration: Duration::from_secs(15),
        };
        tasks.push(tokio::spawn(crate::source::k8s::lease::run(
            lease_api,
            cfg,
            leader_tx,
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(crate::source::k8s::status::run(
            client,
            snap_rx.clone(),
            undecodable,
            Arc::clone(&registry),
            leader_rx,
            Duration::from_secs(5),
            shutdown.clone(),
        )));
    }

    info!(addr = %local, tls = opts.tls.is_some(), mtls = opts.tls.as_ref().is_some_and(|t| t.client_ca.is_some()), "xDS server listening");
    on_listening(
        local,
        Handles {
            debug_addr,
            metrics: Arc::clone(&metrics),
            registry,
            snapshots: snap_rx,
            dir: Some(state),
        },
    );
    let served =
        crate::xds::server::serve(listener, ads.into_service(), tls, shutdown.clone()).await;
    shutdown.cancel();
    for t in tasks {
        let _ = t.await;
    }
    served.context("xDS server failed")?;
    info!("stopped");
    Ok(())
}

/// TLS for the xDS port (rustls through tonic). The files are checked here first, so that
/// a bad one is reported by path and kind; a key's own parse error could quote key
/// material, so it is never shown.
fn tls_config(tls: &TlsFiles) -> anyhow::Result<tonic::transport::ServerTlsConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};

    let read = |p: &PathBuf, what: &str| {
        std::fs::read(p).with_context(|| format!("reading the {what} {}", p.display()))
    };
    let certs = |p: &PathBuf, what: &str| -> anyhow::Result<Vec<u8>> {
        let pem = read(p, what)?;
        let count = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{}: not PEM certificates", p.display()))?
            .len();
        if count == 0 {
            bail!("{}: no PEM certificate in the {what}", p.display());
        }
        Ok(pem)
    };
    let chain = certs(&tls.cert, "xDS TLS certificate")?;
    let key = read(&tls.key, "xDS TLS key")?;
    PrivateKeyDer::from_pem_slice(&key).map_err(|_| {
        anyhow::anyhow!(
            "{}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in the xDS TLS key",
            tls.key.display()
        )
    })?;
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(chain, key));
    if let Some(ca) = &tls.client_ca {
        config = config.client_ca_root(Certificate::from_pem(certs(ca, "xDS client CA")?));
    }
    // Whether the certificate and key match is checked when the server starts.
    crate::xds::server::builder(Some(config.clone()))
        .context("the xDS TLS certificate and key do not make a usable pair")?;
    Ok(config)
}

/// Cancels `token` on SIGTERM or SIGINT.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: draining streams and stopping"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT: draining streams and stopping"),
        }
        token.cancel();
    });
}
