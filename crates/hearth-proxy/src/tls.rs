//! TLS material: the local CA, certificates issued on demand, and the
//! rustls server configuration.
//!
//! [`TlsMode::SelfSigned`] keeps a CA in a directory (`ca.pem`, `ca.key`
//! 0600), created on first use the same way the token key is: written and
//! synced under a private temporary name, then hard-linked into place (so it
//! is created at most once and never read half-written). Leaf certificates
//! are issued when a TLS handshake names a host (SNI) that is an endpoint
//! `<microvmId>.<domain>` or the domain itself, with that exact name as the
//! only SAN, an ECDSA P-256 key, and 30 days of validity; they are cached in
//! memory and re-issued after 7 days. A handshake naming any other host is
//! refused, so clients cannot make the proxy sign arbitrary names.
//!
//! Loading and creating run once at start-up (on a blocking thread); the
//! resolver runs inside rustls on the connection task doing the handshake,
//! under one short mutex (issuing a leaf takes about a millisecond).

use crate::route;
use crate::TlsMode;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Leaf certificates are valid this long...
const LEAF_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// ...and re-issued when older than this.
const LEAF_REISSUE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);
/// The CA is valid this long from its creation.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The leaf cache is emptied when it would hold more than this many names.
const MAX_CACHED_LEAVES: usize = 4096;
/// The CA's subject; leaves name it as their issuer.
const CA_COMMON_NAME: &str = "Hearth local endpoint CA";
const CA_ORGANIZATION: &str = "Hearth";

/// The CA certificate in `dir`, to give to clients (`--cacert`,
/// `SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`).
pub fn ca_pem_path(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}

/// The CA's private key in `dir` (mode 0600).
pub fn ca_key_path(dir: &Path) -> PathBuf {
    dir.join("ca.key")
}

/// Why the TLS material could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// A file does not hold what it should.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The CA key may be read by group or others.
    #[error("{path} has mode {mode:o}; it must not be accessible to group or others (chmod 600)")]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A certificate could not be made.
    #[error("cannot issue a certificate: {0}")]
    Issue(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The server configuration for `mode` (ALPN `h2`, `http/1.1`), or `None`
/// for [`TlsMode::Off`]. Blocking file I/O.
pub(crate) fn server_config(
    mode: &TlsMode,
    domain: &str,
) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    let provider = provider();
    let resolver: Arc<dyn ResolvesServerCert> = match mode {
        TlsMode::Off => return Ok(None),
        TlsMode::SelfSigned { dir } => {
            let ca = LocalCa::load_or_create(dir)?;
            let resolver = OnDemandCerts::new(ca, domain.to_string(), provider.clone());
            resolver.self_check(dir)?;
            Arc::new(resolver)
        }
        TlsMode::Files { cert, key } => {
            Arc::new(FixedCert(Arc::new(load_files(cert, key, &provider)?)))
        }
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

fn load_files(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let invalid = |path: &Path, reason: String| TlsError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| invalid(cert, format!("cannot read certificates: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(cert, format!("cannot parse certificates: {e}")))?;
    if chain.is_empty() {
        return Err(invalid(cert, "holds no PEM certificate".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| invalid(key, format!("cannot read a PEM private key: {e}")))?;
    CertifiedKey::from_der(chain, key_der, provider).map_err(|e| {
        invalid(
            key,
            format!("does not fit the certificate in {}: {e}", cert.display()),
        )
    })
}

/// Always the same certificate ([`TlsMode::Files`]).
#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The CA's fixed parameters. Leaves are issued by an [`Issuer`] rebuilt from
/// these and the stored key, so they must never change (the start-up self
/// check catches a CA that does not match them).
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, CA_ORGANIZATION);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// The CA: its signing identity and certificate.
struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
}

impl LocalCa {
    fn load_or_create(dir: &Path) -> Result<Self, TlsError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        let (key_path, cert_path) = (ca_key_path(dir), ca_pem_path(dir));
        if !key_path.exists() {
            if cert_path.exists() {
                return Err(TlsError::Invalid {
                    path: cert_path,
                    reason: format!(
                        "exists without its key {}; move both away to make a new CA",
                        key_path.display()
                    ),
                });
            }
            Self::create(dir)?;
        }
        Self::load(dir)
    }

    fn create(dir: &Path) -> Result<(), TlsError> {
        let (key_path, cert_path) = (ca_key_path(dir), ca_pem_path(dir));
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| TlsError::Issue(e.to_string()))?;
        let mut params = ca_params();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(3600);
        params.not_after = now + CA_VALIDITY;
        let cert = params
            .self_signed(&key)
            .map_err(|e| TlsError::Issue(e.to_string()))?;
        match write_exclusive(&key_path, key.serialize_pem().as_bytes(), 0o600) {
            Ok(()) => {}
            // Another process made the CA first: use theirs.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(()),
            Err(e) => return Err(io_err(&key_path)(e)),
        }
        write_exclusive(&cert_path, cert.pem().as_bytes(), 0o644).map_err(io_err(&cert_path))
    }

    fn load(dir: &Path) -> Result<Self, TlsError> {
        let (key_path, cert_path) = (ca_key_path(dir), ca_pem_path(dir));
        let meta = std::fs::metadata(&key_path).map_err(io_err(&key_path))?;
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(TlsError::KeyPermissions {
                path: key_path,
                mode,
            });
        }
        let key_pem = std::fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::Invalid {
            path: key_path.clone(),
            reason: format!("not a usable PEM private key: {e}"),
        })?;
        let cert_pem = read_cert_pem(&cert_path)?;
        let cert_der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| TlsError::Invalid {
                path: cert_path.clone(),
                reason: format!("not a PEM certificate: {e}"),
            })?;
        Ok(Self {
            issuer: Issuer::new(ca_params(), key),
            cert_der,
        })
    }

    /// A leaf certificate for exactly `name`, with its key.
    fn issue(&self, name: &str, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
        let issue_err = |e: rcgen::Error| TlsError::Issue(e.to_string());
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(issue_err)?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::DnsName(
            name.to_string().try_into().map_err(issue_err)?,
        )];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let mut serial = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut serial);
        serial[0] &= 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(3600);
        params.not_after = now + LEAF_VALIDITY;
        let cert = params.signed_by(&key, &self.issuer).map_err(issue_err)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        CertifiedKey::from_der(vec![cert.der().clone()], key_der, provider)
            .map_err(|e| TlsError::Issue(e.to_string()))
    }
}

/// `ca.pem` may be linked a moment after `ca.key` by another process that
/// is creating the CA: wait briefly for it.
fn read_cert_pem(path: &Path) -> Result<String, TlsError> {
    for _ in 0..50 {
        match std::fs::read_to_string(path) {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other.map_err(io_err(path)),
        }
    }
    std::fs::read_to_string(path).map_err(io_err(path))
}

/// Writes `bytes` at `path` with `mode`, at most once: a synced temporary
/// file beside it is hard-linked to `path` (`AlreadyExists` if it exists),
/// then the directory is synced.
fn write_exclusive(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut suffix = [0u8; 8];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut suffix);
    let tmp = dir.join(format!(
        ".{}.tmp-{:016x}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        u64::from_le_bytes(suffix)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    result?;
    std::fs::File::open(dir)?.sync_all()
}

/// Issues and caches leaf certificates for endpoint names.
struct OnDemandCerts {
    ca: LocalCa,
    domain: String,
    provider: Arc<CryptoProvider>,
    cache: Mutex<HashMap<String, (Instant, Arc<CertifiedKey>)>>,
}

impl std::fmt::Debug for OnDemandCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnDemandCerts")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl OnDemandCerts {
    fn new(ca: LocalCa, domain: String, provider: Arc<CryptoProvider>) -> Self {
        Self {
            ca,
            domain,
            provider,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The certificate for `name` (lowercase), if it is ours to serve.
    fn cert_for(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        if name != self.domain && route::microvm_of_host(name, &self.domain).is_none() {
            tracing::debug!(
                name,
                "TLS handshake for a name that is not an endpoint refused"
            );
            return None;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((issued, cert)) = cache.get(name) {
            if issued.elapsed() < LEAF_REISSUE_AFTER {
                return Some(cert.clone());
            }
        }
        match self.ca.issue(name, &self.provider) {
            Ok(cert) => {
                let cert = Arc::new(cert);
                if cache.len() >= MAX_CACHED_LEAVES {
                    cache.clear();
                }
                cache.insert(name.to_string(), (Instant::now(), cert.clone()));
                Some(cert)
            }
            Err(e) => {
                tracing::error!(name, error = %e, "cannot issue a certificate");
                None
            }
        }
    }

    /// Issues a leaf and checks it chains to `ca.pem` with rustls' own
    /// verifier: a CA whose key and certificate do not belong together, or
    /// that differs from [`ca_params`], is caught at start-up.
    fn self_check(&self, dir: &Path) -> Result<(), TlsError> {
        let name = format!("self-check.{}", self.domain);
        let leaf = self.ca.issue(&name, &self.provider)?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.ca.cert_der.clone())
            .map_err(|e| TlsError::Invalid {
                path: ca_pem_path(dir),
                reason: format!("not a usable CA certificate: {e}"),
            })?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
        let server_name = ServerName::try_from(name).map_err(|e| TlsError::Issue(e.to_string()))?;
        verifier
            .verify_server_cert(&leaf.cert[0], &[], &server_name, &[], UnixTime::now())
            .map_err(|e| TlsError::Invalid {
                path: ca_pem_path(dir),
                reason: format!(
                    "certificates issued with {} do not verify against it ({e}); move both away to make a new CA",
                    ca_key_path(dir).display()
                ),
            })?;
        Ok(())
    }
}

impl ResolvesServerCert for OnDemandCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = match hello.server_name() {
            Some(n) => n.trim_end_matches('.').to_ascii_lowercase(),
            None => self.domain.clone(),
        };
        self.cert_for(&name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn ca_is_created_once_with_a_private_key_and_reloaded_with_the_same_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("tls");
        let first = LocalCa::load_or_create(&ca_dir).unwrap();
        let key_mode = std::fs::metadata(ca_key_path(&ca_dir))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(&ca_dir).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let second = LocalCa::load_or_create(&ca_dir).unwrap();
        assert_eq!(first.cert_der, second.cert_der);
        let certs = OnDemandCerts::new(second, "localhost".into(), provider());
        certs.self_check(&ca_dir).unwrap();
    }

    #[test]
    fn ca_key_open_to_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        LocalCa::load_or_create(dir.path()).unwrap();
        std::fs::set_permissions(
            ca_key_path(dir.path()),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let err = LocalCa::load_or_create(dir.path()).err().unwrap();
        assert!(matches!(err, TlsError::KeyPermissions { .. }), "{err}");
        assert!(err.to_string().contains("ca.key"));
    }

    #[test]
    fn certificate_without_its_key_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(ca_pem_path(dir.path()), "x").unwrap();
        let err = LocalCa::load_or_create(dir.path()).err().unwrap();
        assert!(err.to_string().contains("without its key"), "{err}");
        assert_eq!(std::fs::read(ca_pem_path(dir.path())).unwrap(), b"x");
    }

    #[test]
    fn mismatched_ca_files_fail_the_self_check() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        LocalCa::load_or_create(a.path()).unwrap();
        LocalCa::load_or_create(b.path()).unwrap();
        // b's certificate with a's key.
        std::fs::remove_file(ca_pem_path(a.path())).unwrap();
        std::fs::copy(ca_pem_path(b.path()), ca_pem_path(a.path())).unwrap();
        let err = server_config(
            &TlsMode::SelfSigned {
                dir: a.path().to_path_buf(),
            },
            "localhost",
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("do not verify"), "{err}");
    }

    #[test]
    fn only_endpoint_names_and_the_domain_get_certificates_and_they_are_cached() {
        let dir = tempfile::tempdir().unwrap();
        let certs = OnDemandCerts::new(
            LocalCa::load_or_create(dir.path()).unwrap(),
            "localhost".into(),
            provider(),
        );
        let a = certs.cert_for("mvm-a.localhost").unwrap();
        let again = certs.cert_for("mvm-a.localhost").unwrap();
        assert!(Arc::ptr_eq(&a, &again));
        assert!(certs.cert_for("localhost").is_some());
        for other in [
            "example.com",
            "a.b.localhost",
            "evil.localhost.com",
            "x_y.localhost",
        ] {
            assert!(certs.cert_for(other).is_none(), "{other}");
        }
    }
}
