//! Opening connections: tokio-postgres for catalog queries and COPY, pgwire-replication for the
//! replication session, both with the session settings of DESIGN §3 and the same TLS rules
//! (rustls with the ring provider; `sslmode` as libpq reads it).

use crate::config::{SslMode, Valid};
use crate::error::pg;
use etcdsync_core::{Error, Result};
use pgwire_replication::{Lsn, ReplicationConfig, TlsConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::{Client, NoTls};

/// Opens a query connection; its driver runs on a spawned task that ends with the connection.
pub async fn connect(valid: &Valid, purpose: &str) -> Result<Client> {
    let context = format!("connecting to {} ({purpose})", valid.display_url);
    let mut config = valid.pg.clone();
    let client = match valid.sslmode {
        SslMode::Disable => {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            let (client, connection) = config.connect(NoTls).await.map_err(pg(context))?;
            tokio::spawn(drive(connection));
            client
        }
        mode => {
            config.ssl_mode(if mode == SslMode::Prefer {
                tokio_postgres::config::SslMode::Prefer
            } else {
                tokio_postgres::config::SslMode::Require
            });
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(client_tls(valid)?);
            let (client, connection) = config.connect(tls).await.map_err(pg(context))?;
            tokio::spawn(drive(connection));
            if mode == SslMode::Prefer {
                warn_once_if_plaintext(&client, valid).await;
            }
            client
        }
    };
    Ok(client)
}

/// `sslmode: prefer` falls back to plaintext when the server has no TLS: said once per server
/// (address and port) and process, however many connections find it so.
async fn warn_once_if_plaintext(client: &Client, valid: &Valid) {
    static WARNED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let encrypted = client
        .query_opt(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .ok()
        .flatten()
        .map(|row| row.get::<_, bool>(0));
    if encrypted != Some(false) {
        return;
    }
    let server = first_host(valid)
        .map(|e| format!("{}:{}", e.addr, e.port))
        .unwrap_or_default();
    let first = match WARNED.lock() {
        Ok(mut warned) if !warned.contains(&server) => {
            warned.push(server);
            true
        }
        _ => false,
    };
    if first {
        tracing::warn!(server = %valid.display_url, "sslmode: prefer fell back to an unencrypted connection (the server offers no TLS): passwords and rows cross the network in clear; set sslmode: verify-full (or require) to refuse that");
    }
}

async fn drive<F, E>(connection: F)
where
    F: std::future::Future<Output = std::result::Result<(), E>>,
    E: std::fmt::Display,
{
    if let Err(error) = connection.await {
        tracing::debug!(error = %error, "postgres connection ended");
    }
}

/// The rustls client configuration for `sslmode`.
fn client_tls(valid: &Valid) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::fatal(format!("TLS setup failed: {e}")))?;
    let config = match valid.sslmode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth(),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = Arc::new(root_store(valid)?);
            let webpki =
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| Error::config(format!("at `source.sslrootcert`: {e}")))?;
            if valid.sslmode == SslMode::VerifyFull {
                builder.with_webpki_verifier(webpki).with_no_client_auth()
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly {
                        webpki,
                        server: server_key(valid),
                    }))
                    .with_no_client_auth()
            }
        }
    };
    Ok(config)
}

fn root_store(valid: &Valid) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    match &valid.sslrootcert {
        Some(path) => {
            use rustls::pki_types::pem::PemObject;
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
                Error::config(format!(
                    "at `source.sslrootcert`: cannot read {}: {e}",
                    path.display()
                ))
            })?;
            for cert in certs {
                let cert = cert.map_err(|e| {
                    Error::config(format!(
                        "at `source.sslrootcert`: {} is not PEM: {e}",
                        path.display()
                    ))
                })?;
                roots.add(cert).map_err(|e| {
                    Error::config(format!(
                        "at `source.sslrootcert`: bad certificate in {}: {e}",
                        path.display()
                    ))
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(roots)
}

/// `sslmode=prefer|require`: encrypt, verify nothing (as libpq does).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain must lead to a trusted root; the host name is not checked.
///
/// On query connections (tokio-postgres) this is the whole check. The replication session
/// cannot use it: pgwire-replication 0.5 builds its rustls configuration itself (from
/// [`TlsConfig`]'s mode, CA file, SNI name and client certificate; it takes no
/// `ClientConfig`, verifier or stream of ours), and its own verify-ca lets only rustls'
/// `NotValidForName` through, while rustls 0.23 reports every name mismatch as
/// `NotValidForNameContext`: a server whose certificate does not name the host it is reached
/// by is refused there. So each check here also remembers a name the accepted certificate
/// carries, by server ([`server_key`]), and [`replication_config`] has the session verify in
/// full against that name: the chain against the same roots, and a name the server's own
/// certificate has, which is verify-ca.
#[derive(Debug)]
struct ChainOnly {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    /// Which server (and trusted roots) a name it reads is remembered for ([`server_key`]).
    server: String,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let verified = match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            // Only the name failed: every other check (chain, validity, usage) passed first.
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }?;
        remember_certificate_name(&self.server, certificate_name(end_entity));
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// What the last verify-ca check of each server ([`server_key`]) read from the certificate it
/// accepted: a name to verify the replication session against, or `None` when the
/// certificate has no usable subject alternative name.
type CertificateNames = Vec<(String, Option<String>)>;
static CERTIFICATE_NAMES: std::sync::Mutex<CertificateNames> = std::sync::Mutex::new(Vec::new());

fn remember_certificate_name(server: &str, name: Option<String>) {
    if let Ok(mut names) = CERTIFICATE_NAMES.lock() {
        names.retain(|(key, _)| key != server);
        names.push((server.to_string(), name));
    }
}

/// `None`: no certificate of `server` was checked yet; `Some(None)`: the last one had no name.
fn known_certificate_name(server: &str) -> Option<Option<String>> {
    CERTIFICATE_NAMES.lock().ok().and_then(|names| {
        names
            .iter()
            .find(|(key, _)| key == server)
            .map(|(_, name)| name.clone())
    })
}

/// Where a session connects, and the name TLS checks there.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    /// The address to connect to: `hostaddr` when the URL has one, else the host.
    addr: String,
    /// The host (as libpq: the name TLS verifies, even when `hostaddr` says where to connect).
    name: String,
    port: u16,
}

/// The first host of the URL (the one the replication session connects to): its address (the
/// first `hostaddr`, when given), name and port.
fn first_host(valid: &Valid) -> Option<Endpoint> {
    let name = valid.pg.get_hosts().first().map(|host| match host {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
    });
    let addr = valid.pg.get_hostaddrs().first().map(|ip| ip.to_string());
    let (addr, name) = match (addr, name) {
        (Some(addr), Some(name)) => (addr, name),
        (Some(one), None) | (None, Some(one)) => (one.clone(), one),
        (None, None) => return None,
    };
    let port = valid.pg.get_ports().first().copied().unwrap_or(5432);
    Some(Endpoint { addr, name, port })
}

/// The server a verify-ca name belongs to: first host, address, port and trusted roots.
fn server_key(valid: &Valid) -> String {
    let Endpoint { addr, name, port } = first_host(valid).unwrap_or(Endpoint {
        addr: String::new(),
        name: String::new(),
        port: 0,
    });
    let roots = valid
        .sslrootcert
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    format!("{name}|{addr}:{port}|{roots}")
}

/// The first DNS name (else IP address) of a certificate's subject alternative names that
/// rustls can verify a connection against.
fn certificate_name(der: &CertificateDer<'_>) -> Option<String> {
    use x509_cert::der::{oid::ObjectIdentifier, Decode};
    use x509_cert::ext::pkix::name::GeneralName;
    const SUBJECT_ALT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
    let cert = x509_cert::Certificate::from_der(der.as_ref()).ok()?;
    let extensions = cert.tbs_certificate.extensions?;
    let san = extensions.iter().find(|e| e.extn_id == SUBJECT_ALT_NAME)?;
    let names = x509_cert::ext::pkix::SubjectAltName::from_der(san.extn_value.as_bytes()).ok()?;
    let usable = |name: String| ServerName::try_from(name.clone()).is_ok().then_some(name);
    // A wildcard is no name to connect as: `*.example.com` becomes `x.example.com`, which it
    // covers.
    let dns = names.0.iter().find_map(|n| match n {
        GeneralName::DnsName(name) => {
            let name = name.to_string();
            usable(match name.strip_prefix("*.") {
                Some(rest) => format!("x.{rest}"),
                None => name,
            })
        }
        _ => None,
    });
    dns.or_else(|| {
        names.0.iter().find_map(|n| match n {
            GeneralName::IpAddress(bytes) => {
                let bytes = bytes.as_bytes();
                <[u8; 4]>::try_from(bytes)
                    .map(std::net::IpAddr::from)
                    .or_else(|_| <[u8; 16]>::try_from(bytes).map(std::net::IpAddr::from))
                    .ok()
                    .map(|ip| ip.to_string())
            }
            _ => None,
        })
    })
}

/// The replication session's TLS settings: the query connections' `sslmode`, checked as they
/// check it (see [`ChainOnly`] for verify-ca).
fn replication_tls(valid: &Valid, endpoint: &Endpoint) -> Result<TlsConfig> {
    // With `hostaddr` the session connects to the address and verifies (and sends as SNI) the
    // host name, as libpq and the query connections do.
    let sni = (endpoint.addr != endpoint.name).then(|| endpoint.name.clone());
    let tls = match valid.sslmode {
        SslMode::Disable => TlsConfig::disabled(),
        SslMode::Prefer => TlsConfig {
            mode: pgwire_replication::SslMode::Prefer,
            sni_hostname: sni,
            ..TlsConfig::default()
        },
        SslMode::Require => TlsConfig {
            sni_hostname: sni,
            ..TlsConfig::require()
        },
        // Never pgwire-replication's own verify-ca, which refuses every certificate that does
        // not name the host (see [`ChainOnly`]): verify-full against a name the server's
        // certificate carries, read by the verify-ca check of a query connection (the
        // catalog connection always opens before the replication session).
        SslMode::VerifyCa => match known_certificate_name(&server_key(valid)) {
            Some(Some(name)) => {
                TlsConfig::verify_full(valid.sslrootcert.clone()).with_sni_hostname(name)
            }
            Some(None) => {
                return Err(Error::config(format!(
                    "at `source.sslmode`: verify-ca cannot be checked on the replication session to {}: \
                     the server's certificate has no subject alternative name (DNS name or IP address), \
                     and the replication client verifies a certificate against one of its names; \
                     reissue the certificate with a subjectAltName, or use `sslmode: verify-full` \
                     with a certificate naming the host",
                    valid.display_url
                )))
            }
            None => {
                return Err(Error::fatal(format!(
                    "sslmode verify-ca: no query connection to {} has verified the server's \
                     certificate yet, so the replication session has no name to check it against",
                    valid.display_url
                )))
            }
        },
        SslMode::VerifyFull => {
            let tls = TlsConfig::verify_full(valid.sslrootcert.clone());
            match sni {
                Some(name) => tls.with_sni_hostname(name),
                None => tls,
            }
        }
    };
    Ok(tls)
}

/// The replication session's settings: same server, credentials, TLS and session settings as
/// the query connections; standby status every second so `confirmed_flush_lsn` follows etcd.
pub fn replication_config(valid: &Valid, start: Lsn, acked: Lsn) -> Result<ReplicationConfig> {
    let endpoint = first_host(valid).ok_or_else(|| Error::config("at `source.url`: no host"))?;
    let user = valid.pg.get_user().unwrap_or_default();
    let password = valid
        .pg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let database = valid.pg.get_dbname().unwrap_or_default();
    let tls = replication_tls(valid, &endpoint)?;
    let mut config = ReplicationConfig::new(
        endpoint.addr,
        user,
        password,
        database,
        valid.slot.clone(),
        valid.publications(),
    )
    .with_port(endpoint.port)
    .with_tls(tls)
    .with_start_lsn(start)
    .with_ack_lsn(acked)
    .with_status_interval(Duration::from_secs(1))
    .with_wakeup_interval(Duration::from_secs(10))
    .with_application_name(valid.application_name.clone());
    if let Some(options) = valid.pg.get_options() {
        config = config.with_options(options);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PgxConfig;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// A throwaway PKI made with the openssl command (as tools/testenv.sh makes its own).
    struct Pki(PathBuf);

    impl Pki {
        fn new() -> Pki {
            static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("etcdsync-pgx-connect-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir");
            Pki(dir)
        }

        fn path(&self, file: &str) -> PathBuf {
            self.0.join(file)
        }

        /// Runs `openssl` with `command` split at white space.
        fn openssl(&self, command: &str) {
            let args: Vec<&str> = command.split_whitespace().collect();
            let out = Command::new("openssl")
                .current_dir(&self.0)
                .args(&args)
                .output()
                .expect("the openssl command (as tools/testenv.sh needs it)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        /// A self-signed CA: `<name>.pem`, `<name>-key.pem`.
        fn ca(&self, name: &str) -> &Self {
            self.openssl(&format!(
                "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -sha256 \
                 -keyout {name}-key.pem -out {name}.pem -subj /CN={name} \
                 -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
            ));
            self
        }

        /// A server certificate `<name>.pem` signed by `ca`, with these subject alternative
        /// names (none: the subject CN only).
        fn leaf(&self, name: &str, ca: &str, san: Option<&str>) -> &Self {
            let mut ext = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                           extendedKeyUsage=serverAuth\n"
                .to_string();
            if let Some(san) = san {
                ext.push_str(&format!("subjectAltName={san}\n"));
            }
            std::fs::write(self.path(&format!("{name}.cnf")), ext).expect("write ext");
            self.openssl(&format!(
                "req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
                 -keyout {name}-key.pem -out {name}.csr -subj /CN=db.example.com"
            ));
            self.openssl(&format!(
                "x509 -req -in {name}.csr -CA {ca}.pem -CAkey {ca}-key.pem -CAcreateserial \
                 -days 2 -sha256 -extfile {name}.cnf -out {name}.pem"
            ));
            self
        }

        fn cert(&self, file: &str) -> CertificateDer<'static> {
            use rustls::pki_types::pem::PemObject;
            CertificateDer::from_pem_file(self.path(file)).expect("certificate")
        }
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn valid(url: &str, tls: &str, ca: &Path) -> Valid {
        let yaml = format!(
            "url: \"{url}\"\ntables: {{ include: [\"public.*\"] }}\n{tls}\nsslrootcert: \"{}\"\n",
            ca.display()
        );
        serde_yaml::from_str::<PgxConfig>(&yaml)
            .expect("yaml")
            .validated("connect-test")
            .expect("valid")
    }

    /// The query connections' verify-ca verifier of `valid`.
    fn chain_only(valid: &Valid) -> ChainOnly {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(root_store(valid).expect("roots"));
        ChainOnly {
            webpki: rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .expect("verifier"),
            server: server_key(valid),
        }
    }

    fn check(
        verifier: &ChainOnly,
        cert: &CertificateDer<'_>,
        name: &str,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let name = ServerName::try_from(name.to_string()).expect("server name");
        verifier.verify_server_cert(cert, &[], &name, &[], UnixTime::now())
    }

    #[test]
    fn chain_only_skips_the_name_and_nothing_else() {
        let pki = Pki::new();
        pki.ca("ca").ca("other-ca");
        pki.leaf("server", "ca", Some("DNS:db.example.com,IP:10.1.2.3"))
            .leaf(
                "stranger",
                "other-ca",
                Some("DNS:db.example.com,IP:10.1.2.3"),
            );
        let valid = valid(
            "postgres://u@wrong.example.net:5433/app",
            "sslmode: verify-ca",
            &pki.path("ca.pem"),
        );
        let verifier = chain_only(&valid);
        let server = pki.cert("server.pem");

        // The CA's certificate for another name, by DNS name or IP address: accepted, and its
        // name remembered for the replication session.
        check(&verifier, &server, "wrong.example.net").expect("wrong DNS name, right CA");
        assert_eq!(
            known_certificate_name(&server_key(&valid)),
            Some(Some("db.example.com".to_string()))
        );
        check(&verifier, &server, "127.0.0.2").expect("wrong IP address, right CA");
        check(&verifier, &server, "db.example.com").expect("right name, right CA");

        // Another CA's certificate, even for the right name: refused.
        for name in ["db.example.com", "wrong.example.net"] {
            let error = check(&verifier, &pki.cert("stranger.pem"), name)
                .expect_err("a certificate of another CA");
            assert!(
                matches!(
                    error,
                    rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
                ),
                "{error:?}"
            );
        }
        // The CA itself is no server certificate either.
        check(&verifier, &pki.cert("ca.pem"), "wrong.example.net").expect_err("a CA certificate");

        // The replication session then checks the chain and that remembered name, connecting
        // to the configured host.
        let config = replication_config(&valid, Lsn::ZERO, Lsn::ZERO).expect("config");
        assert_eq!(config.host, "wrong.example.net");
        assert_eq!(config.tls.mode, pgwire_replication::SslMode::VerifyFull);
        assert_eq!(config.tls.sni_hostname.as_deref(), Some("db.example.com"));
        assert_eq!(config.tls.ca_pem_path, Some(pki.path("ca.pem")));
    }

    #[test]
    fn verify_ca_without_a_name_is_an_error_not_pgwire_verify_ca() {
        let pki = Pki::new();
        pki.ca("ca").leaf("nameless", "ca", None);
        let valid = valid(
            "postgres://u@nameless.example.net:5433/app",
            "sslmode: verify-ca",
            &pki.path("ca.pem"),
        );
        // Before any query connection checked the certificate: no silent fallback.
        let error = replication_config(&valid, Lsn::ZERO, Lsn::ZERO).expect_err("no name yet");
        assert_eq!(error.kind(), etcdsync_core::ErrorKind::Fatal, "{error}");
        assert!(error.to_string().contains("verify-ca"), "{error}");

        // A certificate with no subject alternative name passes the chain check, and leaves the
        // replication session nothing to verify against: a config error naming the fix.
        let verifier = chain_only(&valid);
        check(&verifier, &pki.cert("nameless.pem"), "nameless.example.net").expect("chain");
        assert_eq!(known_certificate_name(&server_key(&valid)), Some(None));
        let error = replication_config(&valid, Lsn::ZERO, Lsn::ZERO).expect_err("no name");
        assert_eq!(error.kind(), etcdsync_core::ErrorKind::Config, "{error}");
        assert!(
            error.to_string().contains("subject alternative name"),
            "{error}"
        );
    }

    #[test]
    fn hostaddr_is_where_the_replication_session_connects_and_host_what_it_verifies() {
        let pki = Pki::new();
        pki.ca("ca");
        let valid = valid(
            "postgres://u@db.example.com:5433/app?hostaddr=10.1.2.3",
            "sslmode: verify-full",
            &pki.path("ca.pem"),
        );
        let config = replication_config(&valid, Lsn::ZERO, Lsn::ZERO).expect("config");
        assert_eq!((config.host.as_str(), config.port), ("10.1.2.3", 5433));
        assert_eq!(config.tls.mode, pgwire_replication::SslMode::VerifyFull);
        assert_eq!(config.tls.sni_hostname.as_deref(), Some("db.example.com"));

        let valid = self::valid(
            "postgres://u@db.example.com:5433/app",
            "sslmode: verify-full",
            &pki.path("ca.pem"),
        );
        let config = replication_config(&valid, Lsn::ZERO, Lsn::ZERO).expect("config");
        assert_eq!(config.host, "db.example.com");
        assert_eq!(config.tls.sni_hostname, None);
    }
}
