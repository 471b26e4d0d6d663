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

/// `sslmode: prefer` falls back to plaintext when the server has no TLS: said once per process.
async fn warn_once_if_plaintext(client: &Client, valid: &Valid) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let encrypted = client
        .query_opt(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .ok()
        .flatten()
        .map(|row| row.get::<_, bool>(0));
    if encrypted == Some(false) && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
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
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }?;
        if let Some(name) = certificate_name(end_entity) {
            remember_certificate_name(&self.server, name);
        }
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

/// Names read from certificates whose chain a verify-ca check accepted, by the server name the
/// connection asked for (`host`), for the replication session of the same server.
static CERTIFICATE_NAMES: std::sync::Mutex<Vec<(String, String)>> =
    std::sync::Mutex::new(Vec::new());

fn remember_certificate_name(server: &str, name: String) {
    if let Ok(mut names) = CERTIFICATE_NAMES.lock() {
        names.retain(|(key, _)| key != server);
        names.push((server.to_string(), name));
    }
}

fn known_certificate_name(server: &str) -> Option<String> {
    CERTIFICATE_NAMES.lock().ok().and_then(|names| {
        names
            .iter()
            .find(|(key, _)| key == server)
            .map(|(_, name)| name.clone())
    })
}

/// The first host of the URL (the one the replication session connects to) and its port.
fn first_host(valid: &Valid) -> Option<(String, u16)> {
    let host = match valid.pg.get_hosts().first()? {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
    };
    Some((host, valid.pg.get_ports().first().copied().unwrap_or(5432)))
}

/// The server a verify-ca name belongs to: first host, port and trusted roots of `valid`.
fn server_key(valid: &Valid) -> String {
    let (host, port) = first_host(valid).unwrap_or_default();
    let roots = valid
        .sslrootcert
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    format!("{host}:{port}|{roots}")
}

/// The first DNS name (else IP address) of a certificate's subject alternative names.
fn certificate_name(der: &CertificateDer<'_>) -> Option<String> {
    use x509_cert::der::{oid::ObjectIdentifier, Decode};
    use x509_cert::ext::pkix::name::GeneralName;
    const SUBJECT_ALT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
    let cert = x509_cert::Certificate::from_der(der.as_ref()).ok()?;
    let extensions = cert.tbs_certificate.extensions?;
    let san = extensions.iter().find(|e| e.extn_id == SUBJECT_ALT_NAME)?;
    let names = x509_cert::ext::pkix::SubjectAltName::from_der(san.extn_value.as_bytes()).ok()?;
    // A wildcard is no name to connect as: `*.example.com` becomes `x.example.com`, which it
    // covers.
    let dns = names.0.iter().find_map(|n| match n {
        GeneralName::DnsName(name) => {
            let name = name.to_string();
            Some(match name.strip_prefix("*.") {
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

/// The replication session's settings: same server, credentials, TLS and session settings as
/// the query connections; standby status every second so `confirmed_flush_lsn` follows etcd.
pub fn replication_config(valid: &Valid, start: Lsn, acked: Lsn) -> Result<ReplicationConfig> {
    let (host, port) =
        first_host(valid).ok_or_else(|| Error::config("at `source.url`: no host"))?;
    let user = valid.pg.get_user().unwrap_or_default();
    let password = valid
        .pg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let database = valid.pg.get_dbname().unwrap_or_default();
    let tls = match valid.sslmode {
        SslMode::Disable => TlsConfig::disabled(),
        SslMode::Prefer => TlsConfig {
            mode: pgwire_replication::SslMode::Prefer,
            ..TlsConfig::default()
        },
        SslMode::Require => TlsConfig::require(),
        // pgwire-replication's own verify-ca lets only rustls' older name error pass (rustls
        // 0.23 reports a DNS name mismatch with a newer one), so the session verifies in full
        // against a name the certificate has: the one a query connection's verify-ca check
        // read from the same server's certificate after verifying its chain. That checks the
        // chain and not the host name: verify-ca.
        SslMode::VerifyCa => match known_certificate_name(&server_key(valid)) {
            Some(name) => TlsConfig::verify_full(valid.sslrootcert.clone()).with_sni_hostname(name),
            None => TlsConfig::verify_ca(valid.sslrootcert.clone()),
        },
        SslMode::VerifyFull => TlsConfig::verify_full(valid.sslrootcert.clone()),
    };
    let mut config = ReplicationConfig::new(
        host,
        user,
        password,
        database,
        valid.slot.clone(),
        valid.publications(),
    )
    .with_port(port)
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
