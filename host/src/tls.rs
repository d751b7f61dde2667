//! TLS settings: loading PEM files into rustls configs for the listener and upstreams.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ListenTls, UpstreamTls};

/// A TLS file or setting that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("{what}: cannot read {path}: {source}")]
    Read {
        /// Which setting, e.g. "listen.tls.cert".
        what: String,
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file held nothing usable.
    #[error("{what}: {path}: {detail}")]
    File {
        /// Which setting, e.g. "listen.tls.cert".
        what: String,
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// rustls refused the combination (e.g. a key that does not match the certificate).
    #[error("{what}: {source}")]
    Rustls {
        /// Which setting.
        what: String,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
}

impl TlsError {
    /// The setting this error is about, as a dotted path such as `listen.tls.cert`.
    pub fn setting(&self) -> &str {
        match self {
            TlsError::Read { what, .. }
            | TlsError::File { what, .. }
            | TlsError::Rustls { what, .. } => what,
        }
    }

    /// The upstream this error is about, for `upstreams.NAME.tls…` settings.
    pub fn upstream(&self) -> &str {
        self.setting()
            .strip_prefix("upstreams.")
            .and_then(|w| w.split('.').next())
            .unwrap_or("")
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_error(what: &str, path: &Path, detail: impl ToString) -> TlsError {
    TlsError::File {
        what: what.to_owned(),
        path: path.display().to_string(),
        detail: detail.to_string(),
    }
}

/// A PEM parsing error in words, without rustls-pki-types' byte dumps; `wanted` names
/// what the file should hold, e.g. "certificate".
fn pem_error(what: &str, path: &Path, wanted: &str, e: pem::Error) -> TlsError {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_owned();
    let detail = match e {
        pem::Error::Io(source) => {
            return TlsError::Read {
                what: what.to_owned(),
                path: path.display().to_string(),
                source,
            };
        }
        pem::Error::NoItemsFound => format!("no PEM {wanted} found"),
        pem::Error::MissingSectionEnd { end_marker } => {
            format!(
                "a PEM section has no \"-----END {}-----\" line",
                text(&end_marker)
            )
        }
        pem::Error::IllegalSectionStart { line } => {
            format!("malformed PEM section start {:?}", text(&line))
        }
        pem::Error::Base64Decode(e) => format!("bad base64 in a PEM section: {e}"),
        other => other.to_string(),
    };
    file_error(what, path, detail)
}

/// Reads every certificate in a PEM file.
pub fn load_certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(what, path, "certificate", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, path, "certificate", e))?;
    if certs.is_empty() {
        return Err(pem_error(
            what,
            path,
            "certificate",
            pem::Error::NoItemsFound,
        ));
    }
    Ok(certs)
}

/// Reads the first private key in a PEM file.
pub fn load_key(what: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(what, path, "private key", e))
}

fn roots(what: &str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(what, path)? {
        roots.add(cert).map_err(|source| TlsError::Rustls {
            what: what.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

/// The listener's config: ALPN h2 and http/1.1, and client certificates required when
/// `client_ca` is set.
pub fn server_config(tls: &ListenTls) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs("listen.tls.cert", &tls.cert)?;
    let key = load_key("listen.tls.key", &tls.key)?;
    let rustls_err = |what: &str| {
        let what = what.to_owned();
        move |source| TlsError::Rustls { what, source }
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_err("listen.tls"))?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let roots = roots("listen.tls.client_ca", ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| file_error("listen.tls.client_ca", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(rustls_err("listen.tls"))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// An upstream's client config: the public web roots, or only `ca` when given; a client
/// certificate when given; ALPN h2 and http/1.1.
pub fn client_config(name: &str, tls: Option<&UpstreamTls>) -> Result<Arc<ClientConfig>, TlsError> {
    let what = |key: &str| format!("upstreams.{name}.tls.{key}");
    let roots = match tls.and_then(|t| t.ca.as_deref()) {
        Some(ca) => roots(&what("ca"), ca)?,
        None => RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: what(""),
            source,
        })?
        .with_root_certificates(roots);
    let mut cfg = match tls.and_then(|t| t.client_cert.as_deref().zip(t.client_key.as_deref())) {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                load_certs(&what("client_cert"), cert)?,
                load_key(&what("client_key"), key)?,
            )
            .map_err(|source| TlsError::Rustls {
                what: what("client_cert"),
                source,
            })?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
