//! TLS for `--tls` and `wss://` URLs: which certificates the client trusts,
//! and a handshake whose refusal says why instead of a bare I/O error.
//!
//! By default the client trusts the system's roots and, when it exists, the
//! CA that `just up` generates (`.stack/dev/tls/ca.pem`, looked up from the
//! working directory and from the repository the binary was built in).
//! `--ca FILE` trusts that file only.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject as _},
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

/// The CA of the dev stack, relative to the repository root.
pub const DEV_CA: &str = ".stack/dev/tls/ca.pem";

/// The handshake failed because the server's certificate did not verify
/// (or the server refused us); retrying will not help.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// The client configuration: trusting `ca` only, or the defaults.
pub fn client_config(ca: Option<&Path>) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => add_pem(&mut roots, path)?,
        None => {
            // Unreadable system certificates are skipped: the dev CA alone
            // is enough for the dev stack.
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            if let Some(dev) = dev_ca() {
                add_pem(&mut roots, &dev)?;
            }
        }
    }
    anyhow::ensure!(
        !roots.is_empty(),
        "no trusted certificates: no system roots and no {DEV_CA}; name a CA with --ca FILE"
    );
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn dev_ca() -> Option<PathBuf> {
    let built_in = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(DEV_CA);
    [PathBuf::from(DEV_CA), built_in]
        .into_iter()
        .find(|p| p.is_file())
}

fn add_pem(roots: &mut RootCertStore, path: &Path) -> anyhow::Result<()> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read the CA certificates in {}", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{} holds no PEM certificate",
        path.display()
    );
    for cert in certs {
        roots
            .add(cert)
            .with_context(|| format!("{} is not a usable CA certificate", path.display()))?;
    }
    Ok(())
}

/// The host part of `host:port` or `[v6]:port`.
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// TLS over `stream`, verifying the certificate for `host` (a DNS name or an
/// IP address, as in the certificate's subject alternative names).
pub async fn handshake(
    config: Arc<ClientConfig>,
    host: &str,
    stream: TcpStream,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| anyhow::anyhow!("{host:?} is not a valid TLS server name"))?;
    TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| {
            let tls = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>());
            match tls {
                Some(rustls::Error::InvalidCertificate(why)) => {
                    anyhow::Error::new(Refused(format!(
                        "the certificate of {host} is not trusted ({why:?}); \
                         name its CA with --ca FILE (the dev stack's is {DEV_CA})"
                    )))
                }
                Some(other) => anyhow::Error::new(Refused(format!(
                    "TLS handshake with {host} failed: {other}"
                ))),
                None => anyhow::Error::new(e).context(format!("TLS handshake with {host} failed")),
            }
        })
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_of_addresses() {
        assert_eq!(host_of("127.0.0.1:8443"), "127.0.0.1");
        assert_eq!(host_of("localhost:8443"), "localhost");
        assert_eq!(host_of("[::1]:8443"), "::1");
        assert_eq!(host_of("example.org"), "example.org");
    }
}
