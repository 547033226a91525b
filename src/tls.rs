//! Server-side TLS for the xDS and webhook ports: rustls through tokio-rustls, with the
//! serving certificate swapped in place when it is renewed (a new certificate from the CA
//! in [`crate::ca`], or new files from cert-manager), so renewal never restarts a port or
//! drops a connection.
//!
//! Handshakes run concurrently, each in its own task bounded by [`HANDSHAKE_TIMEOUT`]; a
//! client that never finishes one holds nothing but its socket and that task.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// A TLS handshake that takes longer is abandoned.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them; the accept loop waits when
/// this many are queued.
const ACCEPT_QUEUE: usize = 128;

/// A certificate chain and its private key, both PEM.
#[derive(Clone)]
pub struct PemPair {
    /// Leaf first, then intermediates.
    pub chain: Vec<u8>,
    /// PKCS#8, PKCS#1 or SEC1.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for PemPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never reaches a log.
        f.debug_struct("PemPair")
            .field("chain_bytes", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// What is wrong with a certificate, a key or a CA. Messages name the file or the port
/// (`what`) and never quote key material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A certificate file that does not parse as PEM.
    #[error("{what}: the certificate is not PEM")]
    CertificateNotPem {
        /// Whose certificate.
        what: String,
    },
    /// A certificate file without a certificate.
    #[error("{what}: no PEM certificate")]
    NoCertificate {
        /// Whose certificate.
        what: String,
    },
    /// A key file without a private key rustls reads.
    #[error("{what}: no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoPrivateKey {
        /// Whose key.
        what: String,
    },
    /// A key that is not the certificate's.
    #[error("{what}: the certificate and key do not match: {cause}")]
    KeyMismatch {
        /// Whose pair.
        what: String,
        /// rustls's reason.
        cause: rustls::Error,
    },
    /// A file that cannot be read.
    #[error("reading the {what} {}: {cause}", path.display())]
    Read {
        /// Which file it is.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The system's reason.
        cause: std::io::Error,
    },
    /// A client CA that is not PEM certificates, or that rustls refuses.
    #[error("the client CA: {0}")]
    ClientCa(String),
    /// rustls refused the protocol versions (a build without a provider).
    #[error("TLS protocol versions: {0}")]
    Versions(rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses `pair` into what rustls signs with. Errors name `what` and never quote key
/// material.
pub fn certified_key(pair: &PemPair, what: &str) -> Result<CertifiedKey, Error> {
    let what = || what.to_owned();
    let chain = CertificateDer::pem_slice_iter(&pair.chain)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| Error::CertificateNotPem { what: what() })?;
    if chain.is_empty() {
        return Err(Error::NoCertificate { what: what() });
    }
    let key = PrivateKeyDer::from_pem_slice(&pair.key)
        .map_err(|_| Error::NoPrivateKey { what: what() })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|cause| Error::KeyMismatch {
        what: what(),
        cause,
    })
}

/// The serving certificate of a port; [`ServingCert::set`] swaps it for the next
/// handshakes.
#[derive(Debug)]
pub struct ServingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServingCert {
    /// Starts with `pair`; errors as [`certified_key`].
    pub fn new(pair: &PemPair, what: &str) -> Result<Arc<Self>, Error> {
        Ok(Arc::new(ServingCert {
            current: RwLock::new(Arc::new(certified_key(pair, what)?)),
        }))
    }

    /// Serves `pair` from the next handshake on; errors as [`certified_key`], and then the
    /// current certificate stays.
    pub fn set(&self, pair: &PemPair, what: &str) -> Result<(), Error> {
        let key = Arc::new(certified_key(pair, what)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = key;
        Ok(())
    }

    fn get(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// Reads a PEM file pair, naming the file in errors.
pub fn read_pair(cert: &PathBuf, key: &PathBuf) -> Result<PemPair, Error> {
    let read = |p: &PathBuf, what: &'static str| {
        std::fs::read(p).map_err(|cause| Error::Read {
            what,
            path: p.clone(),
            cause,
        })
    };
    Ok(PemPair {
        chain: read(cert, "TLS certificate")?,
        key: read(key, "TLS key")?,
    })
}

/// A rustls server configuration that presents `cert`, offers `alpn` and, with
/// `client_ca` (PEM), requires client certificates chaining to it (mutual TLS).
pub fn server_config(
    cert: Arc<ServingCert>,
    client_ca: Option<&[u8]>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(Error::Versions)?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pem) {
                let c = c.map_err(|_| Error::ClientCa("not PEM".into()))?;
                roots.add(c).map_err(|e| Error::ClientCa(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(Error::ClientCa("no PEM certificate".into()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| Error::ClientCa(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(cert);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Accepts TCP connections on `listener` until `shutdown`, runs each TLS handshake in its
/// own task (at most [`HANDSHAKE_TIMEOUT`]), and yields the finished ones. `on_accept` is
/// applied to each TCP socket first (TCP_NODELAY, keepalive).
pub fn accept(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    on_accept: fn(&TcpStream),
    shutdown: CancellationToken,
) -> mpsc::Receiver<TlsStream<TcpStream>> {
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                () = shutdown.cancelled() => return,
                () = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a moment rather
                        // than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            on_accept(&tcp);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(tls).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

/// The handshaken connections of [`accept`] as an axum listener, for the webhook port.
pub struct AxumTlsListener {
    /// From [`accept`].
    pub connections: mpsc::Receiver<TlsStream<TcpStream>>,
    /// The bound address.
    pub local: std::net::SocketAddr,
}

impl axum::serve::Listener for AxumTlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.connections.recv().await {
                Some(tls) => {
                    let Ok(peer) = tls.get_ref().0.peer_addr() else {
                        continue;
                    };
                    return (tls, peer);
                }
                // The acceptor stopped (shutdown): park until axum's graceful shutdown
                // ends the server.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
