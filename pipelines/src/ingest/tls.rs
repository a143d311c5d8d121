//! HTTPS for the API, and client certificates (mTLS) when `tls.client_ca` is set: a certificate must
//! chain to that CA; its names then say which `ingest.clients` entry (tenant) the caller is.

use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use super::config::TlsConfig;

pub fn acceptor(config: &TlsConfig) -> Result<tokio_rustls::TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&config.cert)
            .and_then(|it| it.collect())
            .with_context(|| format!("ingest.tls.cert: reading {}", config.cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "ingest.tls.cert: {} holds no certificate", config.cert.display());
    let key = PrivateKeyDer::from_pem_file(&config.key)
        .with_context(|| format!("ingest.tls.key: reading {}", config.key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("ingest.tls: protocol versions")?;
    let builder = match &config.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("ingest.tls.client_ca: reading {}", ca.display()))?
            {
                roots.add(cert).with_context(|| format!("ingest.tls.client_ca: a certificate of {}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            // Optional by default: a caller may still use an API key over HTTPS.
            let verifier = if config.require_client_certificate { verifier } else { verifier.allow_unauthenticated() };
            builder.with_client_cert_verifier(verifier.build().context("ingest.tls.client_ca")?)
        }
    };
    let mut server =
        builder.with_single_cert(chain, key).context("ingest.tls: the certificate and key do not match")?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}
