//! `serve`: wires a source, the publisher and the ADS server together and runs them until
//! SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::supervisor::{STOP_GRACE, Supervisor};
use crate::metrics::Metrics;
use crate::model::Model;
use crate::snapshot::Snapshot;
use crate::snapshot::publish::{self, Debounce};
use crate::source::directory::{self, DirState, DirWatcher};
use crate::tls::ServingCert;
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
    /// CA bundle (PEM) that sidecars verify the server certificate with, for the
    /// injector (cert-manager's `ca.crt`).
    pub ca_bundle: Option<PathBuf>,
}

/// `--ca-secret`: redis-xds's own CA (see [`crate::ca`]).
#[derive(Clone, Debug)]
pub struct CaSettings {
    /// Name of the Secret in redis-xds's namespace (`--lease-namespace`).
    pub secret: String,
    /// Extra names in the serving certificate, besides the Service's DNS names.
    pub extra_names: Vec<String>,
}

/// `--webhook-addr`: the sidecar injector (see [`crate::inject`]).
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// Where the webhook listens (TLS, with the serving certificate of the xDS port).
    pub addr: SocketAddr,
    /// MutatingWebhookConfiguration whose `caBundle` redis-xds keeps (with `--ca-secret`).
    pub configuration: String,
    /// The xDS address injected sidecars use; default: the Service's DNS name and the xDS
    /// port.
    pub xds_address: Option<String>,
    /// Default sidecar image.
    pub image: String,
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
    /// Proxy authentication on the xDS port (the command line picks the source's default:
    /// token in Kubernetes, none with a manifests directory).
    pub xds_auth: XdsAuth,
    /// Who may read `/debug/*` (the command line picks the source's default: Kubernetes
    /// permissions, loopback trusted, in Kubernetes; anyone with a manifests directory).
    pub debug_auth: DebugAuth,
    /// redis-xds's own CA for the serving certificate, instead of `tls` files.
    pub ca: Option<CaSettings>,
    /// The sidecar injector; `None` turns it off.
    pub webhook: Option<WebhookSettings>,
    /// Name of redis-xds's Service: the serving certificate's DNS names and the injected
    /// xDS address derive from it.
    pub service_name: String,
    /// Istio mode: deliver the RedisClusters to istio-proxy sidecars through istiod too.
    pub istio: Option<IstioSettings>,
}

/// `--istio`: Istio mode (see [`crate::istio`]).
#[derive(Clone, Debug)]
pub struct IstioSettings {
    /// How the EnvoyFilters reach istiod.
    pub delivery: crate::istio::Delivery,
    /// What they are made with.
    pub options: crate::istio::IstioOptions,
    /// `http://HOST:PORT` of istiod's debug endpoints, for status.
    pub istiod_debug: Option<String>,
    /// The token file sent to them (`--istiod-token-file`).
    pub istiod_token_file: Option<std::path::PathBuf>,
    /// `NAMESPACE/NAME` whose requested tokens are sent to them
    /// (`--istiod-debug-service-account`).
    pub istiod_debug_service_account: Option<String>,
}

/// `--debug-auth`: who may read `/debug/*` (see [`crate::k8s::debug_access`]).
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
        /// Start a stream once the cluster's published keys vouch for its token, its
        /// TokenReview following (`--token-verify keys`, the default); `false` waits for the
        /// review (`--token-verify review`).
        published_keys: bool,
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
    /// Bound address of the injection webhook, when it runs.
    pub webhook_addr: Option<SocketAddr>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Connected proxies.
    pub registry: Arc<Registry>,
    /// The latest snapshot.
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// The latest state of the manifests directory.
    pub dir: Option<watch::Receiver<Arc<DirState>>>,
}

impl ServeOptions {
    /// Refuses the combinations that cannot work, before anything starts: the rules of
    /// `serve`'s flags, in one place for the command line and for callers of [`run`].
    pub fn check(&self) -> anyhow::Result<()> {
        let kubernetes = self.manifests.is_none();
        if self.istio.is_some() && !kubernetes {
            bail!(
                "--istio writes EnvoyFilters to the Kubernetes API; with --manifests, print them with `redis-xds render --istio` instead"
            );
        }
        if self.ca.is_some() && !kubernetes {
            bail!("--ca-secret keeps the CA in a Secret: it needs Kubernetes, not --manifests");
        }
        if self.webhook.is_some()
            && self.ca.is_none()
            && self.tls.as_ref().is_none_or(|t| t.ca_bundle.is_none())
        {
            bail!(
                "--webhook-addr needs a serving certificate and the bundle sidecars trust: pass --ca-secret, or --xds-tls-cert, --xds-tls-key and --xds-tls-ca-bundle"
            );
        }
        if matches!(self.xds_auth, XdsAuth::Mtls { .. })
            && self.tls.as_ref().is_none_or(|t| t.client_ca.is_none())
        {
            bail!(
                "--xds-auth mtls needs mutual TLS: pass --xds-tls-cert, --xds-tls-key and --xds-tls-client-ca"
            );
        }
        Ok(())
    }
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
    /// Named long-running tasks, for the supervisor to start.
    tasks: Vec<(&'static str, BoxFuture<'static, ()>)>,
    /// Kubernetes client, for the status writer.
    client: Option<kube::Client>,
    /// RedisClusters the watcher could not read, for the status writer.
    undecodable: crate::k8s::status::UndecodableObjects,
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
    let task = directory::run(
        watcher,
        poll_interval,
        state_tx,
        model_tx,
        Arc::clone(metrics),
        shutdown.clone(),
    )
    .boxed();
    Ok(SourceParts {
        models,
        state,
        ready,
        tasks: vec![("watch manifests", task)],
        client: None,
        undecodable: Arc::default(),
    })
}

async fn kubernetes_source(
    opts: &KubeOptions,
    services: bool,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> anyhow::Result<SourceParts> {
    let client = crate::k8s::client::client()
        .await
        .context("connecting to Kubernetes (in-cluster config or kubeconfig); pass --manifests DIR to run without Kubernetes")?;
    let (model_tx, models) = watch::channel(Arc::new(Model::default()));
    let (ready_tx, ready) = watch::channel(false);
    let (state_tx, state) = watch::channel(Arc::new(DirState::default()));
    let undecodable = crate::k8s::status::UndecodableObjects::default();
    let shared = crate::source::k8s::watch::Watchers {
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
    let tasks = crate::source::k8s::watch::tasks(
        &client,
        opts.namespace.as_deref(),
        services,
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
    opts.check()?;
    let metrics = Arc::new(Metrics::default());
    let source = match &opts.manifests {
        Some(dir) => manifests_source(dir, opts.poll_interval, &metrics, &shutdown).await?,
        None => kubernetes_source(&opts.kube, opts.istio.is_some(), &metrics, &shutdown).await?,
    };
    let SourceParts {
        models,
        state,
        ready,
        tasks,
        client,
        undecodable,
    } = source;
    let mut supervisor = Supervisor::new(shutdown.clone());
    for (name, task) in tasks {
        supervisor.spawn(name, task);
    }

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
    let auth = &opts.xds_auth;
    match auth {
        XdsAuth::None if opts.manifests.is_none() => tracing::warn!(
            "--xds-auth none: any process that reaches the xDS port can claim any namespace and receive its listeners, clusters and AUTH passwords"
        ),
        XdsAuth::None => {}
        XdsAuth::Token {
            audience,
            published_keys,
        } => {
            let client = match &client {
                Some(c) => c.clone(),
                None => crate::k8s::client::client()
                    .await
                    .context("--xds-auth token needs the Kubernetes API for TokenReview")?,
            };
            ads = ads.with_authenticator(Arc::new(
                crate::k8s::token_review::TokenReviewer::new(client, audience.clone())
                    .with_published_keys(*published_keys),
            ));
        }
        XdsAuth::Mtls { trust_domain } => {
            ads = ads.with_authenticator(Arc::new(crate::xds::auth::SpiffeAuthenticator::new(
                trust_domain.clone(),
            )));
        }
    }
    info!(xds_auth = ?auth, "proxy authentication");

    let listener = crate::xds::server::bind(opts.xds_addr)
        .with_context(|| format!("binding the xDS address {}", opts.xds_addr))?;
    let local = listener.local_addr()?;

    let own_namespace = opts.kube.lease_namespace.clone();
    let service_dns = format!("{}.{own_namespace}.svc", opts.service_name);
    // The serving certificate of the xDS and webhook ports, and the bundle sidecars trust.
    let mut serving: Option<(Arc<ServingCert>, Arc<RwLock<String>>)> = None;
    if let Some(ca) = &opts.ca {
        let Some(client) = &client else {
            bail!("--ca-secret keeps the CA in a Secret: it needs Kubernetes, not --manifests");
        };
        let mut names = vec![service_dns.clone(), format!("{service_dns}.cluster.local")];
        names.extend(ca.extra_names.iter().cloned());
        crate::k8s::ca::check_names(&names)?;
        let ca_opts = crate::k8s::ca::CaOptions {
            namespace: own_namespace.clone(),
            secret: ca.secret.clone(),
            names,
            webhook_configuration: opts.webhook.as_ref().map(|w| w.configuration.clone()),
        };
        let (authority, issued) = crate::k8s::ca::start(client, &ca_opts).await?;
        serving = Some((Arc::clone(&issued.cert), Arc::clone(&issued.bundle)));
        supervisor.spawn(
            "CA",
            crate::k8s::ca::run(client.clone(), ca_opts, authority, issued, shutdown.clone()),
        );
    } else if let Some(files) = &opts.tls {
        let (cert, bundle) = files_serving_cert(files)?;
        serving = Some((Arc::clone(&cert), Arc::clone(&bundle)));
        supervisor.spawn(
            "reload TLS files",
            reload_files(files.clone(), cert, bundle, shutdown.clone()),
        );
    }
    let client_ca = match opts.tls.as_ref().and_then(|t| t.client_ca.as_ref()) {
        Some(p) => Some(
            std::fs::read(p)
                .with_context(|| format!("reading the xDS client CA {}", p.display()))?,
        ),
        None => None,
    };
    let tls = match &serving {
        Some((cert, _)) => Some(crate::tls::server_config(
            Arc::clone(cert),
            client_ca.as_deref(),
            &[b"h2"],
        )?),
        None => None,
    };

    let mut webhook_addr = None;
    if let Some(webhook) = &opts.webhook {
        let Some((cert, bundle)) = &serving else {
            bail!(
                "--webhook-addr needs a serving certificate: pass --ca-secret, or --xds-tls-cert, --xds-tls-key and --xds-tls-ca-bundle"
            );
        };
        let listener = TcpListener::bind(webhook.addr)
            .await
            .with_context(|| format!("binding the webhook address {}", webhook.addr))?;
        let local_webhook = listener.local_addr()?;
        webhook_addr = Some(local_webhook);
        let inject = Arc::new(crate::inject::InjectOptions {
            xds_address: webhook
                .xds_address
                .clone()
                .unwrap_or_else(|| format!("{service_dns}:{}", local.port())),
            server_name: service_dns.clone(),
            image: webhook.image.clone(),
            token_audience: match &auth {
                XdsAuth::Token { audience, .. } => audience.clone(),
                _ => "redis-xds".into(),
            },
            own_namespace: own_namespace.clone(),
            bundle: Arc::clone(bundle),
        });
        let config = crate::tls::server_config(Arc::clone(cert), None, &[b"http/1.1"])?;
        let connections = crate::tls::accept(listener, config, |_| {}, shutdown.clone());
        let stop = shutdown.clone();
        info!(addr = %local_webhook, "sidecar injection webhook listening");
        supervisor.spawn("injection webhook", async move {
            let listener = crate::tls::AxumTlsListener {
                connections,
                local: local_webhook,
            };
            if let Err(e) = axum::serve(listener, crate::inject::router(inject))
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
            {
                tracing::error!(error = %e, "webhook server failed");
            }
        });
    }

    let mut debug_addr = None;
    if let Some(addr) = opts.debug_addr {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the debug address {addr}"))?;
        debug_addr = Some(listener.local_addr()?);
        let debug_auth = opts.debug_auth;
        let access = match debug_auth {
            DebugAuth::None => None,
            DebugAuth::Kubernetes { trust_loopback } => {
                let client = match &client {
                    Some(c) => c.clone(),
                    None => crate::k8s::client::client().await.context(
                        "--debug-auth kubernetes needs the Kubernetes API for TokenReview and SubjectAccessReview",
                    )?,
                };
                Some(Arc::new(crate::k8s::debug_access::DebugAccess::new(
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
            failed: supervisor.health(),
        });
        let stop = shutdown.clone();
        info!(addr = %listener.local_addr()?, "debug server listening");
        supervisor.spawn("debug server", async move {
            let service = router.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(e) = axum::serve(listener, service)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
            {
                tracing::error!(error = %e, "debug server failed");
            }
        });
    }

    supervisor.spawn(
        "publish",
        publish::run(
            models,
            ready.clone(),
            snap_tx,
            source_tx,
            opts.debounce,
            Arc::clone(&metrics),
            shutdown.clone(),
        ),
    );

    if let Some(client) = client {
        let (leader_tx, leader_rx) = watch::channel(false);
        let lease_api: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
            kube::Api::namespaced(client.clone(), &opts.kube.lease_namespace);
        let cfg = crate::k8s::lease::LeaseConfig {
            name: opts.kube.lease_name.clone(),
            identity: opts.kube.identity.clone(),
            duration: Duration::from_secs(15),
        };
        supervisor.spawn(
            "status lease",
            crate::k8s::lease::run(lease_api, cfg, leader_tx, shutdown.clone()),
        );
        let mut istio_facts = None;
        if let Some(istio) = &opts.istio {
            use crate::istio::programmed::IstiodToken;
            let istiod_token = match (
                &istio.istiod_debug_service_account,
                &istio.istiod_token_file,
            ) {
                (Some(account), _) => {
                    let (namespace, name) = account.split_once('/').ok_or_else(|| {
                        anyhow::anyhow!(
                            "--istiod-debug-service-account {account:?} is not NAMESPACE/NAME"
                        )
                    })?;
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    supervisor.spawn(
                        "istiod token",
                        crate::k8s::istiod_token::run(
                            client.clone(),
                            namespace.to_owned(),
                            name.to_owned(),
                            tx,
                            shutdown.clone(),
                        ),
                    );
                    IstiodToken::Requested(rx)
                }
                (None, Some(file)) => IstiodToken::File(file.clone()),
                (None, None) => IstiodToken::None,
            };
            let shared = crate::istio::programmed::SharedFacts::default();
            supervisor.spawn(
                "Istio status",
                crate::istio::programmed::run(
                    istio
                        .istiod_debug
                        .clone()
                        .map(|base| crate::istio::programmed::Istiod {
                            base,
                            token: istiod_token.clone(),
                        }),
                    snap_rx.clone(),
                    istio.options.clone(),
                    std::sync::Arc::clone(&shared),
                    shutdown.clone(),
                ),
            );
            istio_facts = Some(shared);
            match istio.delivery {
                crate::istio::Delivery::Xds(addr) => {
                    let listener = TcpListener::bind(addr).await.with_context(|| {
                        format!("binding the Istio config source address {addr}")
                    })?;
                    let bound = listener.local_addr()?;
                    let (filters_tx, filters_rx) = crate::istio::config_source::channel();
                    supervisor.spawn(
                        "Istio filters",
                        crate::istio::config_source::follow_snapshots(
                            snap_rx.clone(),
                            istio.options.clone(),
                            filters_tx,
                            shutdown.clone(),
                        ),
                    );
                    info!(addr = %bound, "Istio config source listening");
                    let stop = shutdown.clone();
                    supervisor.spawn("Istio config source", async move {
                        if let Err(e) =
                            crate::istio::config_source::serve(listener, filters_rx, stop).await
                        {
                            tracing::error!(error = %e, "Istio config source failed");
                        }
                    });
                }
                crate::istio::Delivery::Write => {
                    supervisor.spawn(
                        "Istio filter writer",
                        crate::k8s::envoy_filters::write_filters(
                            client.clone(),
                            snap_rx.clone(),
                            istio.options.clone(),
                            leader_rx.clone(),
                            shutdown.clone(),
                        ),
                    );
                }
            }
            info!(delivery = ?istio.delivery, root_namespace = %istio.options.root_namespace, "Istio mode");
        }
        let fleet = crate::k8s::fleet::Fleet {
            api: kube::Api::namespaced(client.clone(), &opts.kube.lease_namespace),
            config: crate::k8s::fleet::FleetConfig {
                status_lease: opts.kube.lease_name.clone(),
                identity: opts.kube.identity.clone(),
            },
        };
        supervisor.spawn(
            "proxy counts",
            crate::k8s::fleet::publish(
                fleet.api.clone(),
                fleet.config.clone(),
                snap_rx.clone(),
                Arc::clone(&registry),
                shutdown.clone(),
            ),
        );
        supervisor.spawn(
            "status writer",
            crate::k8s::status::run(
                client,
                snap_rx.clone(),
                undecodable,
                Arc::clone(&registry),
                leader_rx,
                Duration::from_secs(5),
                istio_facts,
                fleet,
                shutdown.clone(),
            ),
        );
    }

    info!(addr = %local, tls = serving.is_some(), mtls = opts.tls.as_ref().is_some_and(|t| t.client_ca.is_some()), "xDS server listening");
    on_listening(
        local,
        Handles {
            debug_addr,
            webhook_addr,
            metrics: Arc::clone(&metrics),
            registry,
            snapshots: snap_rx,
            dir: Some(state),
        },
    );
    let server = crate::xds::server::serve(listener, ads.into_service(), tls, shutdown.clone());
    tokio::pin!(server);
    // The xDS server runs until the shutdown, which a failed task starts too.
    let (served, failure) = tokio::select! {
        served = &mut server => (served, None),
        failure = supervisor.failed() => (server.await, failure),
    };
    shutdown.cancel();
    let late = supervisor.stop(STOP_GRACE).await;
    served.context("xDS server failed")?;
    if let Some(failure) = failure.or(late) {
        return Err(anyhow::Error::new(failure).context("serve stopped"));
    }
    info!("stopped");
    Ok(())
}

/// How often certificate files are re-read, so that a renewal by cert-manager (which
/// kubelet writes into the mounted Secret) is served without a restart.
pub const TLS_FILES_RELOAD: Duration = Duration::from_secs(60);

fn read_bundle(files: &TlsFiles) -> anyhow::Result<String> {
    match &files.ca_bundle {
        None => Ok(String::new()),
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("reading the CA bundle {}", p.display())),
    }
}

/// The serving certificate from files, checked here so that a bad file is reported by
/// path and kind; a key's own parse error could quote key material, so it is never shown.
fn files_serving_cert(files: &TlsFiles) -> anyhow::Result<(Arc<ServingCert>, Arc<RwLock<String>>)> {
    let pair = crate::tls::read_pair(&files.cert, &files.key)?;
    let what = format!("{} and {}", files.cert.display(), files.key.display());
    let cert = ServingCert::new(&pair, &what)?;
    Ok((cert, Arc::new(RwLock::new(read_bundle(files)?))))
}

/// Re-reads the certificate files every [`TLS_FILES_RELOAD`] and serves them when they
/// changed and make a valid pair; otherwise the current certificate stays, with a warning.
async fn reload_files(
    files: TlsFiles,
    cert: Arc<ServingCert>,
    bundle: Arc<RwLock<String>>,
    shutdown: CancellationToken,
) {
    let mut last = crate::tls::read_pair(&files.cert, &files.key)
        .ok()
        .map(|p| (p.chain, p.key));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(TLS_FILES_RELOAD) => {}
        }
        let pair = match crate::tls::read_pair(&files.cert, &files.key) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot re-read the TLS files; keeping the current certificate");
                continue;
            }
        };
        if last
            .as_ref()
            .is_some_and(|(c, k)| *c == pair.chain && *k == pair.key)
        {
            continue;
        }
        let what = format!("{} and {}", files.cert.display(), files.key.display());
        match cert.set(&pair, &what) {
            Ok(()) => {
                info!(cert = %files.cert.display(), "serving the renewed TLS certificate");
                last = Some((pair.chain, pair.key));
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "keeping the current TLS certificate")
            }
        }
        if let Ok(b) = read_bundle(&files) {
            *bundle.write().unwrap_or_else(|e| e.into_inner()) = b;
        }
    }
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
