//! A test PKI (rcgen): a CA and one certificate it signs, as PEM for
//! Envoy's `inline_string` data sources and as rustls configurations for
//! TLS backends and test clients. Nothing is written to disk.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;

/// A CA and a certificate for `names` (DNS names, or IP addresses such as
/// `127.0.0.1`), valid for servers and clients.
pub struct TestPki {
    /// The CA certificate, PEM: what a peer trusts.
    pub ca_pem: String,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM.
    pub key_pem: String,
    ca_der: CertificateDer<'static>,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TestPki {
    /// A fresh CA and certificate. Errors: rcgen refusing a name.
    pub fn new(names: &[&str]) -> Result<TestPki> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "Switchyard test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca.self_signed(&ca_key)?;
        let key = KeyPair::generate()?;
        let mut leaf =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        leaf.distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("test"));
        leaf.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = leaf.signed_by(&key, &ca, &ca_key)?;
        Ok(TestPki {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_der: ca.der().clone(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        })
    }

    /// A server configuration presenting the certificate, offering `alpn`
    /// (e.g. `[b"h2", b"http/1.1"]`).
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert_der.clone()], key)?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(cfg))
    }

    /// A client configuration trusting only the CA, offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone())?;
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(cfg))
    }
}

/// What an HTTPS exchange gave: the status, the HTTP version spoken
/// (`HTTP/1.1` or `HTTP/2`, from ALPN), the headers (names lowercase).
#[derive(Debug, Clone)]
pub struct HttpsResponse {
    pub status: u16,
    pub version: &'static str,
    pub headers: Vec<(String, String)>,
}

impl HttpsResponse {
    /// First value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One GET over a new TLS connection to `addr` (loopback), `server_name`
/// as SNI and authority, HTTP/2 when the server picks `h2` by ALPN, else
/// HTTP/1.1. Errors: connect, handshake (e.g. an untrusted certificate), or
/// the exchange.
pub async fn https_get(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<HttpsResponse> {
    use http_body_util::{BodyExt, Empty};
    use hyper::client::conn::{http1, http2};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    anyhow::ensure!(
        addr.ip().is_loopback(),
        "test traffic goes to loopback only"
    );
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_string()).context("server name")?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let mut req = hyper::Request::get(format!("https://{server_name}{path}"));
    if !h2 {
        req = req.header("host", server_name);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::<bytes::Bytes>::new())?;
    let io = TokioIo::new(tls);
    let resp = if h2 {
        let (mut send, conn) = http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        send.send_request(req).await?
    } else {
        let (mut send, conn) = http1::handshake(io).await?;
        tokio::spawn(conn);
        send.send_request(req).await?
    };
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    resp.into_body().collect().await?;
    Ok(HttpsResponse {
        status,
        version: if h2 { "HTTP/2" } else { "HTTP/1.1" },
        headers,
    })
}
