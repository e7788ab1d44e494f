//! Accepting connections: plain TCP, or TLS with rustls. TLS handshakes run in their own tasks
//! (with a deadline), so a slow or silent client never holds up the accept loop; finished
//! connections are handed to the HTTP server through a bounded channel.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

/// A connection: a TCP stream, or a TLS session over one.
pub trait Conn: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Conn for T {}

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Incoming {
    local: SocketAddr,
    inner: Inner,
}

enum Inner {
    Plain(TcpListener),
    Tls {
        rx: mpsc::Receiver<(BoxConn, SocketAddr)>,
        acceptor: tokio::task::JoinHandle<()>,
    },
}

type BoxConn = Box<dyn Conn>;

impl Drop for Incoming {
    fn drop(&mut self) {
        if let Inner::Tls { acceptor, .. } = &self.inner {
            acceptor.abort();
        }
    }
}

impl Incoming {
    pub fn plain(listener: TcpListener) -> io::Result<Self> {
        Ok(Incoming {
            local: listener.local_addr()?,
            inner: Inner::Plain(listener),
        })
    }

    /// TLS with the certificate chain and private key of two PEM files.
    pub fn tls(listener: TcpListener, cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let config = server_config(cert, key)?;
        let local = listener.local_addr()?;
        let tls = TlsAcceptor::from(Arc::new(config));
        let (tx, rx) = mpsc::channel(256);
        let acceptor = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        accept_failed(e).await;
                        continue;
                    }
                };
                let (tls, tx) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((Box::new(stream) as BoxConn, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Incoming {
            local,
            inner: Inner::Tls { rx, acceptor },
        })
    }
}

fn server_config(cert: &Path, key: &Path) -> anyhow::Result<rustls::ServerConfig> {
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading TLS certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing TLS certificate {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", cert.display());
    }
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading TLS private key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not form a usable pair")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Errors of `accept` are per connection (e.g. the peer reset it) or a lack of resources
/// (too many open files): back off a little on the latter rather than spin.
async fn accept_failed(e: io::Error) {
    let transient = matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    );
    if !transient {
        tracing::warn!(error = %e, "accepting a connection failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl axum::serve::Listener for Incoming {
    type Io = BoxConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match &mut self.inner {
                Inner::Plain(l) => match TcpListener::accept(l).await {
                    Ok((s, peer)) => return (Box::new(s) as BoxConn, peer),
                    Err(e) => accept_failed(e).await,
                },
                Inner::Tls { rx, .. } => match rx.recv().await {
                    Some(c) => return c,
                    // The acceptor task ended (it never does on its own): accept nothing more.
                    None => std::future::pending::<()>().await,
                },
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}
