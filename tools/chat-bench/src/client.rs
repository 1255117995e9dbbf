//! A minimal classic-protocol client for load: NUL-terminated requests out,
//! newline-terminated JSON in. On the measured path: chats (msgid 6, 10),
//! and for receivers that acknowledge, acks (msgid 12). Plain TCP, or TLS
//! to a terminating proxy (`--tls-nodes`).

use std::{net::SocketAddr, path::Path, sync::Arc};

use anyhow::Context as _;
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject as _},
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader, BufWriter},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

pub struct Client {
    pub reader: BufReader<Reader>,
    pub writer: BufWriter<Writer>,
}

/// A TLS connector trusting only the CA certificates in `ca` (PEM).
pub fn tls_connector(ca: &Path) -> anyhow::Result<TlsConnector> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read the CA certificates in {}", ca.display()))?;
    for cert in certs {
        roots.add(cert)?;
    }
    anyhow::ensure!(!roots.is_empty(), "{} holds no certificate", ca.display());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

impl Client {
    /// Plain TCP, or TLS with `tls` (the certificate is checked against
    /// the address's IP).
    pub async fn connect_via(addr: SocketAddr, tls: Option<&TlsConnector>) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (read, write): (Reader, Writer) = match tls {
            None => {
                let (read, write) = stream.into_split();
                (Box::new(read), Box::new(write))
            }
            Some(connector) => {
                let name = ServerName::IpAddress(addr.ip().into());
                let stream = connector
                    .connect(name, stream)
                    .await
                    .with_context(|| format!("TLS handshake with {addr}"))?;
                let (read, write) = tokio::io::split(stream);
                (Box::new(read), Box::new(write))
            }
        };
        Ok(Self {
            reader: BufReader::with_capacity(64 * 1024, read),
            writer: BufWriter::with_capacity(64 * 1024, write),
        })
    }

    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        Self::connect_via(addr, None).await
    }

    /// Queues a request (call `flush` to send).
    pub async fn queue(&mut self, request: &Value) -> anyhow::Result<()> {
        self.writer
            .write_all(request.to_string().as_bytes())
            .await?;
        self.writer.write_all(&[0]).await?;
        Ok(())
    }

    pub async fn flush(&mut self) -> anyhow::Result<()> {
        self.writer.flush().await?;
        Ok(())
    }

    pub async fn send(&mut self, request: &Value) -> anyhow::Result<()> {
        self.queue(request).await?;
        self.flush().await
    }

    pub async fn recv(&mut self) -> anyhow::Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).await? == 0 {
            anyhow::bail!("connection closed");
        }
        Ok(serde_json::from_str(line.trim_end())?)
    }

    pub async fn register(&mut self, name: &str, password: &str) -> anyhow::Result<i64> {
        self.send(&json!({"msgid": 4, "name": name, "password": password}))
            .await?;
        let ack = self.recv().await?;
        ack["id"]
            .as_i64()
            .ok_or_else(|| anyhow::anyhow!("register {name} failed: {ack}"))
    }

    pub async fn login(&mut self, id: i64, password: &str) -> anyhow::Result<Value> {
        self.login_as(id, password, false).await
    }

    /// Logs in; with `acks`, as a client that acknowledges deliveries.
    pub async fn login_as(&mut self, id: i64, password: &str, acks: bool) -> anyhow::Result<Value> {
        self.send(&json!({"msgid": 1, "id": id, "password": password, "acks": acks}))
            .await?;
        let ack = self.recv().await?;
        if ack["errno"] != 0 {
            anyhow::bail!("login {id} failed: {ack}");
        }
        Ok(ack)
    }
}
