//! Command-line interface. Parses flags and calls into the library; no logic of its own.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use kube::CustomResourceExt;

use crate::api::RedisCluster;
use crate::compile::{self, ProxyIdentity};
use crate::source::manifests;
use crate::{protojson, render};

/// redis-xds: compiles RedisCluster resources into Envoy redis_proxy configuration.
#[derive(Parser, Debug)]
#[command(name = "redis-xds", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Compile the manifests in a directory and print the Envoy resources.
    ///
    /// Problems go to stderr, one per line; the exit status is 1 when there is any (the
    /// valid part is still printed).
    Render(RenderArgs),
    /// Print the RedisCluster CustomResourceDefinition (YAML).
    Crd,
    /// Print the Envoy bootstrap of a sidecar that takes its configuration from redis-xds.
    Bootstrap(BootstrapArgs),
    /// Measure push latency, CPU and memory under N simulated Envoys, against a floor.
    Bench(BenchArgs),
    /// The simulated Envoys of `bench` (run by it, not by hand).
    #[command(hide = true)]
    BenchClient(BenchClientArgs),
    /// The floor server of `bench` (run by it, not by hand).
    #[command(hide = true)]
    BenchFloor(BenchArgs),
    /// Show every connected proxy and whether it is in sync (from a running server).
    Status(StatusArgs),
    /// Serve the compiled resources to Envoy sidecars over ADS (gRPC), following changes.
    Serve(Box<ServeArgs>),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Directory of *.yaml / *.yml manifests to follow. Without it, the Kubernetes API.
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// Address of the ADS (xDS gRPC) server.
    #[arg(long, default_value = "0.0.0.0:18000")]
    xds_addr: std::net::SocketAddr,
    /// Address of the read-only debug HTTP server (/debug/*, /healthz, /readyz, /metrics).
    #[arg(long, default_value = "127.0.0.1:18001")]
    debug_addr: std::net::SocketAddr,
    /// Quiet period that ends a burst of changes before a push.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    debounce_quiet: std::time::Duration,
    /// Longest delay of a push after the first change of a burst.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    debounce_max: std::time::Duration,
    /// How often the manifests directory is re-read.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    poll_interval: std::time::Duration,
    /// Name of redis-xds's Service: the certificate's DNS names and the xDS address of
    /// injected sidecars derive from it.
    #[arg(long, default_value = "redis-xds")]
    service_name: String,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(flatten)]
    tls: ServeTlsArgs,
    #[command(flatten)]
    webhook: WebhookArgs,
    #[command(flatten)]
    istio: IstioArgs,
    #[command(flatten)]
    kube: KubeArgs,
    #[command(flatten)]
    auth: AuthArgs,
}

/// `serve`: TLS on the xDS and webhook ports.
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "TLS on the xDS and webhook ports")]
struct ServeTlsArgs {
    /// Server certificate (PEM) for TLS on the xDS port.
    #[arg(long, requires = "xds_tls_key")]
    xds_tls_cert: Option<PathBuf>,
    /// Server private key (PEM) for TLS on the xDS port.
    #[arg(long, requires = "xds_tls_cert")]
    xds_tls_key: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to: turns on mutual TLS.
    #[arg(long, requires = "xds_tls_cert")]
    xds_tls_client_ca: Option<PathBuf>,
    /// CA bundle (PEM) that injected sidecars verify --xds-tls-cert with (cert-manager's
    /// ca.crt). The three files are re-read every minute, so renewals need no restart.
    #[arg(long, requires = "xds_tls_cert")]
    xds_tls_ca_bundle: Option<PathBuf>,
    /// Kubernetes: keep a self-signed CA in this Secret of redis-xds's namespace (created
    /// when missing, or bring your own as a kubernetes.io/tls Secret) and serve the xDS and
    /// webhook ports with a 24-hour certificate issued from it and renewed in place.
    #[arg(long, conflicts_with = "xds_tls_cert")]
    ca_secret: Option<String>,
    /// Another DNS name or IP address for the certificate issued with --ca-secret (repeat;
    /// SERVICE.NAMESPACE.svc and SERVICE.NAMESPACE.svc.cluster.local are always in it).
    #[arg(long = "tls-san", requires = "ca_secret")]
    tls_sans: Vec<String>,
}

/// `serve`: Sidecar injection.
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Sidecar injection")]
struct WebhookArgs {
    /// Address of the sidecar injection webhook (HTTPS, POST /inject); off when not given.
    #[arg(long)]
    webhook_addr: Option<std::net::SocketAddr>,
    /// MutatingWebhookConfiguration whose caBundle redis-xds keeps (with --ca-secret).
    #[arg(long, default_value = "redis-xds")]
    webhook_configuration: String,
    /// HOST:PORT of the xDS server for injected sidecars (default: SERVICE.NAMESPACE.svc
    /// and the --xds-addr port).
    #[arg(long)]
    inject_xds_address: Option<String>,
    /// Default image of injected sidecars (the redis-xds.dev/proxy-image annotation
    /// overrides it per pod).
    #[arg(long, default_value = "envoyproxy/envoy:v1.40.0")]
    proxy_image: String,
}

/// `serve`: Istio mode.
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Istio mode")]
struct IstioArgs {
    /// Istio mode: also give istio-proxy sidecars the RedisClusters whose endpoints come
    /// from a Service, through istiod. `xds` (the default): served to istiod as an xds://
    /// config source on --istio-config-addr, nothing written to the API server. `write`:
    /// as EnvoyFilter objects in the API server (the status Lease holder writes them).
    /// docs/istio.md.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "xds")]
    istio: Option<IstioDeliveryArg>,
    /// Address of the Istio config source (--istio xds); point meshConfig.configSources
    /// at it as xds://ADDRESS.
    #[arg(long, default_value = "0.0.0.0:18002")]
    istio_config_addr: std::net::SocketAddr,
    /// istiod's debug endpoints (`http://istiod.istio-system.svc:15014`), for the
    /// IstioProgrammed condition: which selected sidecars hold the patched listener.
    #[arg(long, requires = "istio")]
    istiod_debug_addr: Option<String>,
    /// NAMESPACE/NAME of a ServiceAccount in the mesh's root namespace whose tokens
    /// (audience istio-ca, from the TokenRequest API, renewed before they expire) redis-xds
    /// presents to istiod's debug endpoints. istiod answers callers that are not on its
    /// loopback only with such a token, and shows every proxy only to the root namespace.
    /// deploy/istio creates istio-system/redis-xds-istiod-debug for it.
    #[arg(
        long,
        requires = "istiod_debug_addr",
        conflicts_with = "istiod_token_file"
    )]
    istiod_debug_service_account: Option<String>,
    /// Instead: a file holding such a token (a projected token, when redis-xds itself runs
    /// in the root namespace), read again for every probe.
    #[arg(long, requires = "istiod_debug_addr")]
    istiod_token_file: Option<std::path::PathBuf>,
    /// The mesh's root namespace (meshConfig.rootNamespace): where filters for clients in
    /// any namespace go.
    #[arg(long, default_value = "istio-system")]
    istio_root_namespace: String,
    /// The mesh's trust domain (meshConfig.trustDomain): Redis Pods with an istio-proxy
    /// must prove spiffe://<trust domain>/ns/<namespace>/sa/<ServiceAccount>.
    #[arg(long, default_value = "cluster.local")]
    istio_trust_domain: String,
}

/// `serve`: Kubernetes.
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Kubernetes")]
struct KubeArgs {
    /// Kubernetes: watch only this namespace (default: all namespaces).
    #[arg(long)]
    namespace: Option<String>,
    /// Kubernetes: namespace of the Lease that elects the status writer.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Kubernetes: name of that Lease.
    #[arg(long, default_value = "redis-xds-status")]
    lease_name: String,
    /// Kubernetes: this replica's identity in the Lease (default: the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
}

/// `serve`: Who may connect.
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Who may connect")]
struct AuthArgs {
    /// How proxies authenticate on the xDS port: token (projected ServiceAccount token,
    /// checked with TokenReview; the default with Kubernetes), mtls (SPIFFE client
    /// certificates), none (the default with --manifests; with Kubernetes only when given
    /// explicitly, and warned about).
    #[arg(long, value_enum)]
    xds_auth: Option<AuthMode>,
    /// Audience the ServiceAccount tokens must carry (--xds-auth token; default
    /// redis-xds).
    #[arg(long)]
    token_audience: Option<String>,
    /// When a token's stream may start (--xds-auth token): keys (the default: once its
    /// signature, issuer, audience and expiry check out against the cluster's published
    /// ServiceAccount keys, its TokenReview following and ending the stream if it refuses),
    /// review (only once TokenReview has accepted it).
    #[arg(long, value_enum)]
    token_verify: Option<TokenVerifyMode>,
    /// SPIFFE trust domain of client certificates (--xds-auth mtls; default
    /// cluster.local).
    #[arg(long)]
    trust_domain: Option<String>,
    /// Who may read /debug/* (every proxy's configuration): kubernetes (callers allowed
    /// `get` on redisclusters/debug, checked with TokenReview and SubjectAccessReview; the
    /// default with Kubernetes), none (anyone who reaches the port; the default with
    /// --manifests). /healthz, /readyz and /metrics stay open.
    #[arg(long, value_enum)]
    debug_auth: Option<DebugAuthMode>,
    /// With --debug-auth kubernetes, let loopback callers (kubectl port-forward) in
    /// without a token.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    debug_trust_loopback: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum IstioDeliveryArg {
    Xds,
    Write,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum DebugAuthMode {
    None,
    Kubernetes,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum TokenVerifyMode {
    Keys,
    Review,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum AuthMode {
    None,
    Token,
    Mtls,
}

#[derive(clap::Args, Debug)]
struct BootstrapArgs {
    /// HOST:PORT of redis-xds' xDS server.
    #[arg(long)]
    xds_address: String,
    /// The proxy's node id (unique per sidecar, e.g. the pod name).
    #[arg(long)]
    node_id: String,
    /// The proxy's namespace (node metadata), matched by `clients.namespaces`.
    #[arg(long)]
    namespace: Option<String>,
    /// A label of the proxy (node metadata, repeatable), matched by `clients.selector`.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// The proxy's zone (`node.locality.zone`), which the read policies
    /// LocalZoneAffinity and LocalZoneAffinityReplicasAndPrimary prefer.
    #[arg(long)]
    zone: Option<String>,
    /// Envoy admin port (listening on 127.0.0.1).
    #[arg(long, default_value_t = 9901)]
    admin_port: u16,
    /// Use State-of-the-World ADS instead of Delta.
    #[arg(long)]
    sotw: bool,
    /// CA (PEM file path on the sidecar) that the xDS server certificate must chain to:
    /// turns on TLS.
    #[arg(long)]
    xds_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM file path on the sidecar) for mutual TLS.
    #[arg(long, requires = "xds_tls_ca", requires = "xds_tls_key")]
    xds_tls_cert: Option<PathBuf>,
    /// Client key (PEM file path on the sidecar) for mutual TLS.
    #[arg(long, requires = "xds_tls_cert")]
    xds_tls_key: Option<PathBuf>,
    /// Name the xDS server certificate must carry (and SNI); default: the xDS host.
    #[arg(long, requires = "xds_tls_ca")]
    xds_tls_server_name: Option<String>,
    /// How the sidecar authenticates: token (its projected ServiceAccount token, sent over
    /// TLS; matches serve --xds-auth token), mtls (the client certificate given with
    /// --xds-tls-cert), none.
    #[arg(long, value_enum, default_value_t = AuthMode::None)]
    xds_auth: AuthMode,
    /// Path of the projected ServiceAccount token on the sidecar (--xds-auth token).
    #[arg(long, default_value = "/var/run/secrets/redis-xds/token")]
    token_path: PathBuf,
    /// Write the bootstrap to this file instead of stdout (for init containers).
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// Simulated Envoys (one connection and one ADS stream each).
    #[arg(long, default_value_t = 100)]
    streams: usize,
    /// RedisClusters in the generated model.
    #[arg(long, default_value_t = 10)]
    clusters: usize,
    /// Share of streams speaking State of the World instead of Delta.
    #[arg(long, default_value_t = 0.0)]
    sotw_share: f64,
    /// Changes pushed to the synced fleet, one after another; the latency figures are the
    /// round with the median p99 (and the floor's p99 is its median over as many rounds),
    /// so that one unlucky scheduling of a shared machine does not decide a figure.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// End with one JSON object on the last line.
    #[arg(long)]
    json: bool,
    /// Measure reconnect storms instead of changes: once the fleet is synced, every
    /// stream drops its connection at the same moment and connects again at once, as a
    /// redis-xds rollout makes its sidecars do (`--rounds` storms).
    #[arg(long)]
    reconnect: bool,
}

#[derive(clap::Args, Debug)]
struct BenchClientArgs {
    #[arg(long)]
    addr: std::net::SocketAddr,
    #[arg(long)]
    streams: usize,
    #[arg(long, default_value_t = 0.0)]
    sotw_share: f64,
    /// A file of ServiceAccount tokens, one per line: stream i sends line i modulo their
    /// number as `authorization: Bearer`.
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// Connect every stream at once instead of at most 128 at a time.
    #[arg(long)]
    all_at_once: bool,
}

#[derive(clap::Args, Debug)]
struct StatusArgs {
    /// Address of the server's debug HTTP endpoint.
    #[arg(long, default_value = "127.0.0.1:18001")]
    debug_addr: String,
    /// Print the raw /debug/syncz JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, crate::api::duration::DurationError> {
    crate::api::duration::parse(s)
}

#[derive(clap::Args, Debug)]
struct RenderArgs {
    /// Directory of *.yaml / *.yml manifests.
    #[arg(long)]
    manifests: PathBuf,
    /// Render the view of a proxy in this namespace.
    #[arg(long)]
    node_namespace: Option<String>,
    /// Render the view of a proxy with this label (repeatable).
    #[arg(long = "node-label", value_name = "KEY=VALUE", value_parser = parse_label)]
    node_labels: Vec<(String, String)>,
    /// Print a complete Envoy bootstrap with the resources as static_resources instead.
    /// It contains the AUTH passwords: it is meant to be handed to Envoy.
    #[arg(long)]
    static_bootstrap: bool,
    /// Admin port of the static bootstrap (listening on 127.0.0.1).
    #[arg(long, default_value_t = 9901)]
    admin_port: u16,
    /// Print the Istio EnvoyFilters (YAML documents, for `kubectl apply -f -` or GitOps)
    /// that give istio-proxy sidecars the same listeners and clusters through istiod.
    /// RedisClusters need spec.endpoints.service, and that Service in the manifests.
    #[arg(long, conflicts_with_all = ["static_bootstrap", "node_namespace", "node_labels"])]
    istio: bool,
    /// The mesh's root namespace (meshConfig.rootNamespace): where filters for clients in
    /// any namespace go.
    #[arg(long, default_value = "istio-system", requires = "istio")]
    istio_root_namespace: String,
    /// The mesh's trust domain (meshConfig.trustDomain): Redis Pods with an istio-proxy
    /// must prove spiffe://<trust domain>/ns/<namespace>/sa/<ServiceAccount>.
    #[arg(long, default_value = "cluster.local", requires = "istio")]
    istio_trust_domain: String,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Render(args) => run_render(&args),
        Command::Crd => run_crd().map(|()| ExitCode::SUCCESS),
        Command::Serve(args) => run_serve(*args).map(|()| ExitCode::SUCCESS),
        Command::Bootstrap(args) => run_bootstrap(args).map(|()| ExitCode::SUCCESS),
        Command::Status(args) => run_status(&args).map(|()| ExitCode::SUCCESS),
        Command::Bench(args) => run_bench(&args).map(|()| ExitCode::SUCCESS),
        Command::BenchClient(args) => run_bench_client(&args).map(|()| ExitCode::SUCCESS),
        Command::BenchFloor(args) => runtime()
            .and_then(|rt| {
                rt.block_on(crate::app::bench::floor_only(
                    crate::app::bench::BenchOptions {
                        streams: args.streams,
                        clusters: args.clusters.max(3),
                        sotw_share: 0.0,
                        rounds: args.rounds as usize,
                        reconnect: args.reconnect,
                    },
                ))
            })
            .map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run_crd() -> anyhow::Result<()> {
    let yaml = crd_yaml()?;
    std::io::stdout().write_all(yaml.as_bytes())?;
    Ok(())
}

/// The CRD as committed in `crds/redisclusters.yaml`.
pub fn crd_yaml() -> anyhow::Result<String> {
    let crd = RedisCluster::crd();
    let body = serde_yaml_ng::to_string(&crd).context("serializing the CRD")?;
    Ok(format!(
        "# Generated by `redis-xds crd`; do not edit. A test fails when this file is stale.\n{body}"
    ))
}

/// `render --istio`: EnvoyFilters on stdout, problems on stderr, exit 1 when there is any.
fn render_istio(
    args: &RenderArgs,
    loaded: &manifests::Loaded,
    compiled: &compile::Compiled,
) -> anyhow::Result<ExitCode> {
    let generated = crate::istio::envoy_filters(
        &loaded.model,
        compiled,
        &crate::istio::IstioOptions {
            root_namespace: args.istio_root_namespace.clone(),
            inline_secrets: false,
            trust_domain: args.istio_trust_domain.clone(),
        },
    );
    let mut stdout = std::io::stdout().lock();
    for filter in &generated.filters {
        writeln!(stdout, "---")?;
        serde_yaml_ng::to_writer(&mut stdout, filter)?;
    }
    let mut stderr = std::io::stderr().lock();
    for note in &loaded.notes {
        writeln!(stderr, "note: {note}")?;
    }
    let problems: Vec<String> = loaded
        .problems
        .iter()
        .map(ToString::to_string)
        .chain(compiled.problems.iter().map(ToString::to_string))
        .chain(generated.problems.iter().map(ToString::to_string))
        .collect();
    for p in &problems {
        writeln!(stderr, "problem: {p}")?;
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run_render(args: &RenderArgs) -> anyhow::Result<ExitCode> {
    if !args.manifests.is_dir() {
        bail!("--manifests {}: not a directory", args.manifests.display());
    }
    let loaded = manifests::load_dir(&args.manifests)
        .with_context(|| format!("reading {}", args.manifests.display()))?;
    let compiled = compile::compile(&loaded.model);
    if args.istio {
        return render_istio(args, &loaded, &compiled);
    }
    let proxy = ProxyIdentity {
        namespace: args.node_namespace.clone(),
        labels: (!args.node_labels.is_empty())
            .then(|| args.node_labels.iter().cloned().collect::<BTreeMap<_, _>>()),
    };
    let view = compiled.view(&proxy);
    let json = if args.static_bootstrap {
        protojson::to_json(&render::static_bootstrap(&view, args.admin_port))?
    } else {
        render::resources_json(&view)?
    };
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, &json)?;
    writeln!(stdout)?;

    let mut stderr = std::io::stderr().lock();
    for note in &loaded.notes {
        writeln!(stderr, "note: {note}")?;
    }
    for p in &loaded.problems {
        writeln!(stderr, "problem: {p}")?;
    }
    for p in &compiled.problems {
        writeln!(stderr, "problem: {p}")?;
    }
    let failed = !loaded.problems.is_empty() || !compiled.problems.is_empty();
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// How proxies authenticate, from `--xds-auth` and the flags that tune it: token with
/// Kubernetes and none with `--manifests` unless given, and a tuning flag only with the
/// mode it tunes (given with another, it would silently do nothing).
fn xds_auth(
    mode: Option<AuthMode>,
    kubernetes: bool,
    token_audience: Option<String>,
    token_verify: Option<TokenVerifyMode>,
    trust_domain: Option<String>,
) -> anyhow::Result<crate::app::serve::XdsAuth> {
    use crate::app::serve::XdsAuth;
    let mode = mode.unwrap_or(if kubernetes {
        AuthMode::Token
    } else {
        AuthMode::None
    });
    if token_audience.is_some() && mode != AuthMode::Token {
        anyhow::bail!(
            "--token-audience applies to --xds-auth token, and proxies authenticate with {mode:?} here: remove it, or pass --xds-auth token"
        );
    }
    if token_verify.is_some() && mode != AuthMode::Token {
        anyhow::bail!(
            "--token-verify applies to --xds-auth token, and proxies authenticate with {mode:?} here: remove it, or pass --xds-auth token"
        );
    }
    if trust_domain.is_some() && mode != AuthMode::Mtls {
        anyhow::bail!(
            "--trust-domain applies to --xds-auth mtls, and proxies authenticate with {mode:?} here: remove it, or pass --xds-auth mtls"
        );
    }
    Ok(match mode {
        AuthMode::None => XdsAuth::None,
        AuthMode::Token => XdsAuth::Token {
            audience: token_audience.unwrap_or_else(|| "redis-xds".into()),
            published_keys: token_verify != Some(TokenVerifyMode::Review),
        },
        AuthMode::Mtls => XdsAuth::Mtls {
            trust_domain: trust_domain.unwrap_or_else(|| "cluster.local".into()),
        },
    })
}

/// The whole configuration of `serve`, resolved once from its flags: every default that
/// depends on another flag is decided here, and every combination that cannot work is
/// refused here, before anything starts.
fn serve_options(args: ServeArgs) -> anyhow::Result<crate::app::serve::ServeOptions> {
    use crate::app::serve::{
        CaSettings, DebugAuth, IstioSettings, KubeOptions, ServeOptions, TlsFiles, WebhookSettings,
    };
    let kubernetes = args.manifests.is_none();
    let ServeArgs {
        manifests,
        xds_addr,
        debug_addr,
        debounce_quiet,
        debounce_max,
        poll_interval,
        service_name,
        log_format: _,
        tls,
        webhook,
        istio,
        kube,
        auth,
    } = args;
    let xds_auth = xds_auth(
        auth.xds_auth,
        kubernetes,
        auth.token_audience,
        auth.token_verify,
        auth.trust_domain,
    )?;
    let debug_auth = match auth.debug_auth {
        Some(DebugAuthMode::None) => DebugAuth::None,
        Some(DebugAuthMode::Kubernetes) => DebugAuth::Kubernetes {
            trust_loopback: auth.debug_trust_loopback,
        },
        // The source's default, with the loopback setting given.
        None if kubernetes => DebugAuth::Kubernetes {
            trust_loopback: auth.debug_trust_loopback,
        },
        None => DebugAuth::None,
    };
    let options = ServeOptions {
        manifests,
        xds_addr,
        debug_addr: Some(debug_addr),
        poll_interval,
        debounce: crate::snapshot::publish::Debounce {
            quiet: debounce_quiet,
            max_delay: debounce_max,
        },
        xds_auth,
        debug_auth,
        kube: KubeOptions {
            namespace: kube.namespace,
            lease_namespace: kube.lease_namespace,
            lease_name: kube.lease_name,
            identity: kube.identity.unwrap_or_else(default_identity),
        },
        tls: match (tls.xds_tls_cert, tls.xds_tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert,
                key,
                client_ca: tls.xds_tls_client_ca,
                ca_bundle: tls.xds_tls_ca_bundle,
            }),
            _ => None,
        },
        ca: tls.ca_secret.map(|secret| CaSettings {
            secret,
            extra_names: tls.tls_sans,
        }),
        webhook: webhook.webhook_addr.map(|addr| WebhookSettings {
            addr,
            configuration: webhook.webhook_configuration,
            xds_address: webhook.inject_xds_address,
            image: webhook.proxy_image,
        }),
        service_name,
        istio: istio.istio.map(|d| IstioSettings {
            delivery: match d {
                IstioDeliveryArg::Xds => crate::istio::Delivery::Xds(istio.istio_config_addr),
                IstioDeliveryArg::Write => crate::istio::Delivery::Write,
            },
            options: crate::istio::IstioOptions {
                root_namespace: istio.istio_root_namespace.clone(),
                inline_secrets: d == IstioDeliveryArg::Xds,
                trust_domain: istio.istio_trust_domain.clone(),
            },
            istiod_debug: istio.istiod_debug_addr.clone(),
            istiod_token_file: istio.istiod_token_file.clone(),
            istiod_debug_service_account: istio.istiod_debug_service_account.clone(),
        }),
    };
    options.check()?;
    Ok(options)
}

fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let opts = serve_options(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        crate::app::serve::cancel_on_signals(shutdown.clone());
        crate::app::serve::run(opts, shutdown, |_, _| {}).await
    })
}

fn run_bootstrap(args: BootstrapArgs) -> anyhow::Result<()> {
    let output = args.output.clone();
    if args.xds_auth == AuthMode::Mtls
        && (args.xds_tls_cert.is_none() || args.xds_tls_key.is_none())
    {
        bail!(
            "--xds-auth mtls needs the client certificate: --xds-tls-ca, --xds-tls-cert and --xds-tls-key"
        );
    }
    let opts = crate::bootstrap::BootstrapOptions {
        xds_address: args.xds_address,
        node_id: args.node_id,
        namespace: args.namespace,
        labels: args.labels.into_iter().collect(),
        zone: args.zone,
        admin_port: args.admin_port,
        sotw: args.sotw,
        token_path: (args.xds_auth == AuthMode::Token).then(|| args.token_path.clone()),
        tls: args.xds_tls_ca.map(|ca| crate::bootstrap::ClientTls {
            ca: ca.into(),
            cert: args.xds_tls_cert,
            key: args.xds_tls_key,
            server_name: args.xds_tls_server_name,
        }),
        status: None,
    };
    let json = crate::bootstrap::bootstrap(&opts)?;
    let mut text = serde_json::to_string_pretty(&json)?;
    text.push('\n');
    match &output {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    Ok(())
}

fn run_status(args: &StatusArgs) -> anyhow::Result<()> {
    let body = crate::debug::remote::http_get(&args.debug_addr, "/debug/syncz")?;
    let syncz: serde_json::Value = serde_json::from_str(&body).context("reading /debug/syncz")?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut stdout, &syncz)?;
        writeln!(stdout)?;
    } else {
        stdout.write_all(crate::debug::remote::table(&syncz).as_bytes())?;
    }
    Ok(())
}

/// The host name (the pod name in Kubernetes), with the process id as a fallback.
fn default_identity() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("redis-xds-{}", std::process::id()))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run_bench(args: &BenchArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.sotw_share) {
        bail!("--sotw-share is a fraction between 0 and 1");
    }
    let opts = crate::app::bench::BenchOptions {
        streams: args.streams,
        clusters: args.clusters.max(3),
        sotw_share: args.sotw_share,
        rounds: args.rounds as usize,
        reconnect: args.reconnect,
    };
    let json = if opts.reconnect {
        let report = runtime()?.block_on(crate::app::bench::run_reconnect(opts))?;
        println!("{}", crate::app::bench::storm_text(&report));
        serde_json::to_string(&report)?
    } else {
        let report = runtime()?.block_on(crate::app::bench::run(opts))?;
        println!("{}", crate::app::bench::text(&report));
        serde_json::to_string(&report)?
    };
    if args.json {
        println!("{json}");
    }
    Ok(())
}

fn run_bench_client(args: &BenchClientArgs) -> anyhow::Result<()> {
    let tokens = match &args.tokens {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the tokens in {}", path.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        None => Vec::new(),
    };
    let opts = crate::app::bench::envoys::ClientOptions {
        streams: args.streams,
        sotw_share: args.sotw_share,
        tokens,
        all_at_once: args.all_at_once,
    };
    runtime()?.block_on(crate::app::bench::envoys::run(args.addr, opts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::serve::{DebugAuth, ServeOptions, XdsAuth};

    /// `serve` with `args`, resolved.
    fn serve(args: &[&str]) -> anyhow::Result<ServeOptions> {
        let argv = ["redis-xds", "serve"].iter().chain(args);
        match Cli::try_parse_from(argv).expect("the flags parse").command {
            Command::Serve(args) => serve_options(*args),
            other => panic!("{other:?}"),
        }
    }

    fn refused(args: &[&str]) -> String {
        format!("{:#}", serve(args).expect_err("refused"))
    }

    #[test]
    fn serve_defaults_follow_the_source() {
        let files = serve(&["--manifests", "examples/quickstart"]).unwrap();
        assert_eq!(files.xds_auth, XdsAuth::None);
        assert_eq!(files.debug_auth, DebugAuth::None);
        let cluster = serve(&["--identity", "replica-a"]).unwrap();
        assert_eq!(
            cluster.xds_auth,
            XdsAuth::Token {
                audience: "redis-xds".into(),
                published_keys: true,
            }
        );
        assert_eq!(
            cluster.debug_auth,
            DebugAuth::Kubernetes {
                trust_loopback: true
            }
        );
        assert_eq!(cluster.kube.identity, "replica-a");
        // The case that once checked the wrong audience: --token-audience alone.
        let mesh = serve(&["--token-audience", "mesh"]).unwrap();
        assert_eq!(
            mesh.xds_auth,
            XdsAuth::Token {
                audience: "mesh".into(),
                published_keys: true,
            }
        );
    }

    #[test]
    fn serve_refuses_combinations_that_cannot_work_before_starting() {
        let istio = refused(&["--manifests", "d", "--istio"]);
        assert!(istio.contains("render --istio"), "{istio}");
        let ca = refused(&["--manifests", "d", "--ca-secret", "redis-xds-ca"]);
        assert!(ca.contains("--ca-secret keeps the CA in a Secret"), "{ca}");
        let webhook = refused(&["--webhook-addr", "0.0.0.0:15017"]);
        assert!(
            webhook.contains("--webhook-addr needs a serving certificate"),
            "{webhook}"
        );
        let no_bundle = refused(&[
            "--webhook-addr",
            "0.0.0.0:15017",
            "--xds-tls-cert",
            "c",
            "--xds-tls-key",
            "k",
        ]);
        assert!(no_bundle.contains("--xds-tls-ca-bundle"), "{no_bundle}");
        assert!(serve(&["--webhook-addr", "0.0.0.0:15017", "--ca-secret", "ca"]).is_ok());
        let mtls = refused(&[
            "--xds-auth",
            "mtls",
            "--xds-tls-cert",
            "c",
            "--xds-tls-key",
            "k",
        ]);
        assert!(mtls.contains("--xds-tls-client-ca"), "{mtls}");
        let audience = refused(&["--manifests", "d", "--token-audience", "mesh"]);
        assert!(
            audience.contains("--token-audience applies to --xds-auth token"),
            "{audience}"
        );
    }

    #[test]
    fn xds_auth_defaults_by_source_and_refuses_flags_of_another_mode() {
        let token = |audience: &str| XdsAuth::Token {
            audience: audience.into(),
            published_keys: true,
        };
        assert_eq!(
            xds_auth(None, true, None, None, None).unwrap(),
            token("redis-xds")
        );
        assert_eq!(
            xds_auth(None, false, None, None, None).unwrap(),
            XdsAuth::None
        );
        // The audience given counts with the Kubernetes default too.
        assert_eq!(
            xds_auth(None, true, Some("mesh".into()), None, None).unwrap(),
            token("mesh")
        );
        let refused = xds_auth(None, false, Some("mesh".into()), None, None).unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("--token-audience applies to --xds-auth token")
        );
        let refused =
            xds_auth(Some(AuthMode::Token), true, None, None, Some("x".into())).unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("--trust-domain applies to --xds-auth mtls")
        );
        // Waiting for TokenReview is a choice of the token mode only.
        assert_eq!(
            xds_auth(None, true, None, Some(TokenVerifyMode::Review), None).unwrap(),
            XdsAuth::Token {
                audience: "redis-xds".into(),
                published_keys: false,
            }
        );
        let refused = xds_auth(None, false, None, Some(TokenVerifyMode::Keys), None).unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("--token-verify applies to --xds-auth token"),
            "{refused}"
        );
        assert_eq!(
            xds_auth(Some(AuthMode::Mtls), true, None, None, Some("corp".into())).unwrap(),
            XdsAuth::Mtls {
                trust_domain: "corp".into()
            }
        );
    }
}
