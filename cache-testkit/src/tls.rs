//! Certificates for TLS test servers, made at test time: a throwaway certificate authority
//! and a server certificate it signs for `127.0.0.1` and `localhost`.

use crate::TestkitError;
use std::path::{Path, PathBuf};

/// A certificate authority made for one test: its certificate (PEM) is what a client must
/// trust to reach a server it signed.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new authority, unrelated to every other (so a client trusting another one fails).
    ///
    /// # Errors
    /// If key generation fails.
    pub fn new() -> Result<TestCa, TestkitError> {
        let key = rcgen::KeyPair::generate().map_err(tls_error)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(tls_error)?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // A name of its own: a client trusting another test authority must not even find
        // an issuer of that name.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let serial = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("redis-memo test CA {} {serial}", std::process::id()),
        );
        let cert = params.self_signed(&key).map_err(tls_error)?;
        Ok(TestCa { cert, key })
    }

    /// The authority's certificate, PEM.
    pub fn cert_pem(&self) -> Vec<u8> {
        self.cert.pem().into_bytes()
    }

    /// A client certificate and key this authority signed, for servers that ask clients for
    /// one (see [`RedisServer::start_tls_requiring_client_certs`](crate::RedisServer::start_tls_requiring_client_certs)).
    ///
    /// # Errors
    /// If key generation fails.
    pub fn client_tls(&self) -> Result<redis::ClientTlsConfig, TestkitError> {
        let key = rcgen::KeyPair::generate().map_err(tls_error)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(tls_error)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "redis-memo test client");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(tls_error)?;
        Ok(redis::ClientTlsConfig {
            client_cert: cert.pem().into_bytes(),
            client_key: key.serialize_pem().into_bytes(),
        })
    }

    /// Writes a server certificate and key signed by this authority, and the authority's
    /// certificate, into `dir`.
    pub(crate) fn write_server_files(&self, dir: &Path) -> Result<ServerFiles, TestkitError> {
        let key = rcgen::KeyPair::generate().map_err(tls_error)?;
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .map_err(tls_error)?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(tls_error)?;
        let files = ServerFiles {
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            ca: dir.join("ca.crt"),
        };
        std::fs::write(&files.cert, cert.pem())?;
        std::fs::write(&files.key, key.serialize_pem())?;
        std::fs::write(&files.ca, self.cert.pem())?;
        Ok(files)
    }
}

/// Where a TLS server's files are.
#[derive(Debug)]
pub(crate) struct ServerFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) ca: PathBuf,
}

impl ServerFiles {
    /// The server settings: TLS on `tls_port` (the plain port stays, for the testkit's own
    /// checks), clients not asked for certificates.
    pub(crate) fn args(&self, tls_port: u16) -> Vec<String> {
        let path = |path: &PathBuf| path.to_string_lossy().into_owned();
        vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            path(&self.cert),
            "--tls-key-file".into(),
            path(&self.key),
            "--tls-ca-cert-file".into(),
            path(&self.ca),
            "--tls-auth-clients".into(),
            "no".into(),
        ]
    }
}

fn tls_error(error: rcgen::Error) -> TestkitError {
    TestkitError::Io(std::io::Error::other(format!("test certificate: {error}")))
}
