//! `serve`: wires a source, the publisher and the ADS server together and runs them until
//! SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
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

/// HTTP/2 keepalive: detect dead proxies (and let proxies detect a dead server) within a
/// minute, without relying on TCP timeouts of many minutes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs until `shutdown` is cancelled; then ends every stream and returns once the server
/// has stopped. `on_listening` is called with the bound xDS address.
pub async fn run(
    opts: ServeOptions,
    shutdown: CancellationToken,
    on_listening: impl FnOnce(SocketAddr, Handles),
) -> anyhow::Result<()> {
    let Some(dir) = opts.manifests.clone() else {
        bail!("the Kubernetes source is not available in this build yet; run with --manifests DIR");
    };
    if !dir.is_dir() {
        bail!("--manifests {}: not a directory", dir.display());
    }
    let mut watcher = DirWatcher::new(&dir);
    let initial = watcher.poll().unwrap_or_default();
    for p in &initial.problems {
        tracing::warn!(problem = %p, "manifest problem");
    }
    let initial_model: Arc<Model> = Arc::clone(&initial.model);
    let initial_problems = initial.problems.len();
    let (dir_tx, dir_rx) = watch::channel(Arc::new(initial));
    let (model_tx, model_rx) = watch::channel(Arc::clone(&initial_model));

    let metrics = Arc::new(Metrics::default());
    metrics
        .problems
        .get_or_create(&[("stage", "load")])
        .set(initial_problems as i64);
    let first = Arc::new(publish::snapshot(
        &initial_model,
        None,
        Instant::now(),
        &metrics,
    ));
    let (snap_tx, snap_rx) = watch::channel(Arc::clone(&first));
    let (source_tx, source_rx) = watch::channel::<Arc<dyn ResourceSource>>(first);

    let registry = Arc::new(Registry::default());
    let ads = AdsServer::new(
        source_rx,
        Arc::clone(&registry),
        Arc::clone(&metrics),
        shutdown.clone(),
    );

    let listener = TcpListener::bind(opts.xds_addr)
        .await
        .with_context(|| format!("binding the xDS address {}", opts.xds_addr))?;
    let local = listener.local_addr()?;

    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .tcp_keepalive(Some(Duration::from_secs(60)))
        .tcp_nodelay(true);
    if let Some(tls) = &opts.tls {
        builder = builder
            .tls_config(tls_config(tls)?)
            .context("configuring TLS")?;
    }

    let (ready_tx, ready_rx) = watch::channel(false);
    let mut debug_addr = None;
    let mut debug_task = None;
    if let Some(addr) = opts.debug_addr {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the debug address {addr}"))?;
        debug_addr = Some(listener.local_addr()?);
        let router = crate::debug::router(crate::debug::DebugState {
            registry: Arc::clone(&registry),
            snapshots: snap_rx.clone(),
            dir: Some(dir_rx.clone()),
            metrics: Arc::clone(&metrics),
            ready: ready_rx,
        });
        let stop = shutdown.clone();
        info!(addr = %listener.local_addr()?, "debug server listening");
        debug_task = Some(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
            {
                tracing::error!(error = %e, "debug server failed");
            }
        }));
    }
    // The manifests directory was read completely above.
    ready_tx.send_replace(true);

    let tasks = [
        tokio::spawn(dirwatch::run(
            watcher,
            opts.poll_interval,
            dir_tx,
            model_tx,
            Arc::clone(&metrics),
            shutdown.clone(),
        )),
        tokio::spawn(publish::run(
            model_rx,
            snap_tx,
            source_tx,
            opts.debounce,
            Arc::clone(&metrics),
            shutdown.clone(),
        )),
    ];

    info!(addr = %local, tls = opts.tls.is_some(), mtls = opts.tls.as_ref().is_some_and(|t| t.client_ca.is_some()), "xDS server listening");
    on_listening(
        local,
        Handles {
            debug_addr,
            metrics: Arc::clone(&metrics),
            registry,
            snapshots: snap_rx,
            dir: Some(dir_rx),
        },
    );
    let stop = shutdown.clone();
    builder
        .add_service(ads.into_service())
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            stop.cancelled().await
        })
        .await
        .context("xDS server failed")?;
    shutdown.cancel();
    for t in tasks.into_iter().chain(debug_task) {
        let _ = t.await;
    }
    info!("stopped");
    Ok(())
}

fn tls_config(tls: &TlsFiles) -> anyhow::Result<ServerTlsConfig> {
    let read = |p: &PathBuf, what: &str| {
        std::fs::read(p).with_context(|| format!("reading the {what} {}", p.display()))
    };
    let cert = read(&tls.cert, "xDS TLS certificate")?;
    let key = read(&tls.key, "xDS TLS key")?;
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if let Some(ca) = &tls.client_ca {
        config = config.client_ca_root(Certificate::from_pem(read(ca, "xDS client CA")?));
    }
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
