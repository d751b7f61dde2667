//! Test certificates, made fresh with rcgen for each test, and the TLS configs that use them.
//!
//! 1. `let pki = Pki::new();` gives a CA, a server certificate it signed for `localhost`
//!    and `127.0.0.1`, a second CA for clients with a client certificate, and a
//!    self-signed server certificate nobody trusts.
//! 2. Serve with `pki.server.server_config()` (or `server_config_requiring(&pki.client_ca)`
//!    for mutual TLS); hand the PEMs to weir with `WeirBuilder::files(pki.files())`.
//! 3. Call with `client(&pki.ca, Some(&pki.client))`.
//!
//! Everything uses the ring provider explicitly, so it never depends on which rustls
//! provider the process installed as its default.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// === impl Ca ===

/// A certificate authority that can sign server and client certificates.
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// A new self-signed CA with this common name.
    pub fn new(common_name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("generate ca key");
        let cert = params.self_signed(&key).expect("self-sign ca");
        Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for these DNS names and/or IP addresses, signed by this CA.
    pub fn server_cert(&self, names: &[&str]) -> Cert {
        self.issue(
            names,
            names.first().copied().unwrap_or("server"),
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate with this common name, signed by this CA.
    pub fn client_cert(&self, common_name: &str) -> Cert {
        self.issue(&[], common_name, ExtendedKeyUsagePurpose::ClientAuth)
    }

    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// A root store holding only this CA.
    pub fn root_store(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert_der()).expect("add ca to root store");
        roots
    }

    fn issue(&self, names: &[&str], common_name: &str, usage: ExtendedKeyUsagePurpose) -> Cert {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("generate leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Cert::new(cert.pem(), cert.der().clone(), key)
    }
}

// === impl Cert ===

/// A certificate and its private key (PKCS#8).
pub struct Cert {
    pub cert_pem: String,
    pub key_pem: String,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Cert {
    fn new(cert_pem: String, cert_der: CertificateDer<'static>, key: KeyPair) -> Self {
        Self {
            cert_pem,
            key_pem: key.serialize_pem(),
            cert_der,
            key_der: key.serialize_der(),
        }
    }

    /// A self-signed server certificate for these names, which no [`Ca`] trusts.
    pub fn self_signed(names: &[&str]) -> Self {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("self-signed params");
        params
            .distinguished_name
            .push(DnType::CommonName, "untrusted");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("generate key");
        let cert = params.self_signed(&key).expect("self-sign");
        Self::new(cert.pem(), cert.der().clone(), key)
    }

    /// Certificate then key, in one PEM buffer (what `reqwest::Identity::from_pem` wants).
    pub fn identity_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.key_pem)
    }

    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// A server config presenting this certificate, offering h2 and http/1.1.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        server_config(self, None, &[b"h2", b"http/1.1"])
    }

    /// Like [`Cert::server_config`], but requiring a client certificate signed by `client_ca`.
    pub fn server_config_requiring(&self, client_ca: &Ca) -> Arc<ServerConfig> {
        server_config(self, Some(client_ca), &[b"h2", b"http/1.1"])
    }
}

// === impl Pki ===

/// A full set of test certificates.
pub struct Pki {
    /// Signs `server`.
    pub ca: Ca,
    /// For `localhost` and `127.0.0.1`, signed by `ca`.
    pub server: Cert,
    /// Signs `client`; a different CA from `ca`.
    pub client_ca: Ca,
    /// Common name `test-client`, signed by `client_ca`.
    pub client: Cert,
    /// Self-signed, for `localhost` and `127.0.0.1`; trusted by nothing.
    pub untrusted: Cert,
}

impl Pki {
    pub fn new() -> Self {
        let ca = Ca::new("weir test ca");
        let server = ca.server_cert(&["localhost", "127.0.0.1"]);
        let client_ca = Ca::new("weir test client ca");
        let client = client_ca.client_cert("test-client");
        let untrusted = Cert::self_signed(&["localhost", "127.0.0.1"]);
        Self {
            ca,
            server,
            client_ca,
            client,
            untrusted,
        }
    }

    /// Every PEM under `certs/`, as `(relative path, contents)` for `WeirBuilder::files`:
    /// `ca.pem`, `server.pem`, `server.key`, `client-ca.pem`, `client.pem`, `client.key`,
    /// `untrusted.pem`, `untrusted.key`.
    pub fn files(&self) -> Vec<(String, String)> {
        [
            ("certs/ca.pem", &self.ca.cert_pem),
            ("certs/server.pem", &self.server.cert_pem),
            ("certs/server.key", &self.server.key_pem),
            ("certs/client-ca.pem", &self.client_ca.cert_pem),
            ("certs/client.pem", &self.client.cert_pem),
            ("certs/client.key", &self.client.key_pem),
            ("certs/untrusted.pem", &self.untrusted.cert_pem),
            ("certs/untrusted.key", &self.untrusted.key_pem),
        ]
        .into_iter()
        .map(|(path, pem)| (path.to_owned(), pem.clone()))
        .collect()
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

// === server and client configs ===

/// A rustls server config presenting `cert`, advertising `alpn` (e.g. `&[b"h2",
/// b"http/1.1"]`), and, with `client_ca`, requiring a client certificate it signed.
pub fn server_config(cert: &Cert, client_ca: Option<&Ca>, alpn: &[&[u8]]) -> Arc<ServerConfig> {
    let roots = client_ca.map(Ca::root_store);
    build_server_config(vec![cert.cert_der()], cert.key_der(), roots, alpn)
}

/// Like [`server_config`] from PEM text: a certificate chain, a key, and optionally the
/// PEM of the CA(s) whose client certificates to require. Offers h2 and http/1.1.
pub fn server_config_from_pem(
    cert_pem: &str,
    key_pem: &str,
    client_ca_pem: Option<&str>,
) -> Arc<ServerConfig> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("parse certificate PEM");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("parse key PEM");
    let roots = client_ca_pem.map(|pem| {
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(ca.expect("parse CA PEM")).expect("add CA");
        }
        roots
    });
    build_server_config(chain, key, roots, &[b"h2", b"http/1.1"])
}

fn build_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_roots: Option<RootCertStore>,
    alpn: &[&[u8]],
) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("tls versions");
    let builder = match client_roots {
        None => builder.with_no_client_auth(),
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .expect("server cert and key");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A reqwest builder (see [`super::client::builder`]) that trusts only `trust` and, with
/// `identity`, presents it as its client certificate.
pub fn client_builder(trust: &Ca, identity: Option<&Cert>) -> reqwest::ClientBuilder {
    let mut builder = super::client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(trust.cert_pem.as_bytes()).expect("CA PEM"),
        );
    if let Some(cert) = identity {
        builder = builder.identity(
            reqwest::Identity::from_pem(cert.identity_pem().as_bytes()).expect("identity PEM"),
        );
    }
    builder
}

/// A reqwest client that trusts only `trust` and optionally presents `identity`.
pub fn client(trust: &Ca, identity: Option<&Cert>) -> reqwest::Client {
    client_builder(trust, identity)
        .build()
        .expect("build TLS client")
}
