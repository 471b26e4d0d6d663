//! Opening connections to MySQL/MariaDB with the session settings the snapshot and the stream
//! rely on (utf8mb4 text, UTC TIMESTAMPs, DESIGN §3), and the TLS rules of `ssl-mode`.
//!
//! # `ssl-mode=VERIFY_CA`
//!
//! VERIFY_CA means: the certificate chain must lead to `ssl-ca`; the host name is not checked.
//! mysql_async 0.37 cannot do that by itself with rustls 0.23: for
//! `with_danger_skip_domain_validation` it lets an error pass only when its *text* contains
//! `NotValidForName`, and rustls 0.23 reports a name mismatch as `NotValidForNameContext`, whose
//! text ("certificate not valid for name …") does not — so a certificate for another name was
//! refused. Its public API takes no rustls `ClientConfig` or verifier of our own, so the
//! `ChainOnly` verifier of the PostgreSQL source cannot be plugged in either. What it does take
//! is `with_danger_tls_hostname_override`: the name the certificate is verified against, while
//! the TCP connection still goes to the URL's host. So VERIFY_CA here:
//!
//! 1. connects as mysql_async does (chain against `ssl-ca` only, built-in roots off);
//! 2. when that fails with rustls' name mismatch — which rustls reports only after the chain
//!    verified (`WebPkiServerVerifier` checks the chain first) — takes a name the certificate
//!    does have from the error's `presented` names (DNS name first, else IP address) and
//!    connects again verifying *in full* (chain and name, no skipping) against that name;
//! 3. remembers that name per `host:port`, so later connections (snapshot workers, the binlog
//!    connection, reconnects) verify against it at once; a name that stops matching (a new
//!    certificate) is learnt again the same way, once per connection.
//!
//! The chain is thus always verified by rustls' own verifier against `ssl-ca`; only the name
//! comes from the certificate, which is what VERIFY_CA allows. Every other certificate error
//! (unknown CA, expired, …) fails as before. The `presented` names are rustls-webpki's
//! `DnsName("…")` / `IpAddress(…)` texts; should a later version word them differently, no name
//! is read and the connection fails with an error saying so (never accepted unverified). A
//! certificate with no DNS or IP subjectAltName (host name only in the CN, which rustls
//! ignores) cannot pass VERIFY_CA this way and is refused with an error saying that. Rejected
//! alternatives: a probe TLS handshake of our own before each connection (MySQL protocol code
//! here, and one more half-open connection per server), and a host name override containing
//! the text `NotValidForName` to trip mysql_async's text match (relies on two error texts).

use crate::error::{MysqlError, Result};
use mysql_async::prelude::*;
use mysql_async::{Conn, Opts, OptsBuilder, SslOpts};
use std::sync::Mutex;

/// Opens a connection with the session settings snapshot and stream rely on (utf8mb4 text,
/// UTC TIMESTAMPs). A refused server certificate is a configuration error (retrying cannot fix
/// it), with a message naming what to change.
pub async fn connect(opts: &Opts) -> Result<Conn> {
    let target = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
    let mut conn = open(opts, &target).await?;
    conn.query_drop("SET NAMES utf8mb4, time_zone = '+00:00'")
        .await
        .map_err(|e| MysqlError::driver(format!("setting up the session on {target}"), e))?;
    Ok(conn)
}

/// `ssl-mode=VERIFY_CA` as `config::parse_url` sets it: certificates verified, names skipped.
fn verify_ca(ssl: &SslOpts) -> bool {
    ssl.skip_domain_validation() && !ssl.accept_invalid_certs()
}

async fn open(opts: &Opts, target: &str) -> Result<Conn> {
    let ssl = match opts.ssl_opts() {
        Some(ssl) if verify_ca(ssl) => ssl,
        _ => {
            return Conn::new(opts.clone())
                .await
                .map_err(|e| connect_error(target, opts, e))
        }
    };
    let known = known_certificate_name(target);
    let first = match &known {
        Some(name) => Conn::new(with_name(opts, ssl, name)).await,
        None => Conn::new(opts.clone()).await,
    };
    let error = match first {
        Ok(conn) => return Ok(conn),
        Err(error) => error,
    };
    let presented = match name_mismatch(&error) {
        Some((_, presented)) => presented,
        None => return Err(connect_error(target, opts, error)),
    };
    let Some(name) = usable_name(presented) else {
        return Err(MysqlError::Config(format!(
            "connecting to {target}: ssl-mode=VERIFY_CA: the server's certificate chain verified \
             against ssl-ca, but the certificate names no DNS name or IP address in its \
             subjectAltName ({}), so there is no name it can be verified as (the host name in its \
             CN is ignored); reissue the server certificate with a subjectAltName",
            names_text(presented)
        )));
    };
    if known.as_deref() == Some(name.as_str()) {
        return Err(connect_error(target, opts, error));
    }
    tracing::debug!(server = %target, certificate_name = %name, "ssl-mode=VERIFY_CA: verifying the certificate's chain against ssl-ca as a name it has");
    let conn = Conn::new(with_name(opts, ssl, &name))
        .await
        .map_err(|e| connect_error(target, opts, e))?;
    remember_certificate_name(target, name);
    Ok(conn)
}

/// `opts` verifying the certificate in full (chain against `ssl-ca`, and the name) as `name`.
fn with_name(opts: &Opts, ssl: &SslOpts, name: &str) -> Opts {
    let ssl = ssl
        .clone()
        .with_danger_skip_domain_validation(false)
        .with_danger_tls_hostname_override(Some(name.to_string()));
    Opts::from(OptsBuilder::from_opts(opts.clone()).ssl_opts(ssl))
}

/// Names read from certificates that verified against `ssl-ca`, by `host:port` of the URL.
static CERTIFICATE_NAMES: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

fn remember_certificate_name(target: &str, name: String) {
    if let Ok(mut names) = CERTIFICATE_NAMES.lock() {
        names.retain(|(key, _)| key != target);
        names.push((target.to_string(), name));
    }
}

fn known_certificate_name(target: &str) -> Option<String> {
    CERTIFICATE_NAMES.lock().ok().and_then(|names| {
        names
            .iter()
            .find(|(key, _)| key == target)
            .map(|(_, name)| name.clone())
    })
}

/// The rustls error inside a driver error (tokio-rustls wraps it in an `io::Error`, whose
/// `source()` skips it, so that is opened with `get_ref`).
fn rustls_error(error: &mysql_async::Error) -> Option<&rustls::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(found) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// The name the certificate was checked against and the names it has, when rustls refused it
/// for its name only.
fn name_mismatch(error: &mysql_async::Error) -> Option<(String, &[String])> {
    match rustls_error(error)? {
        rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext {
            expected,
            presented,
        }) => Some((expected.to_str().into_owned(), presented.as_slice())),
        rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName) => {
            Some((String::new(), &[]))
        }
        _ => None,
    }
}

/// A name to verify the certificate as, from rustls' `presented` names: the first DNS name (a
/// wildcard `*.example.com` as `x.example.com`, which it covers), else the first IP address.
fn usable_name(presented: &[String]) -> Option<String> {
    let valid = |name: String| {
        rustls::pki_types::ServerName::try_from(name.as_str())
            .is_ok()
            .then_some(name)
    };
    let dns = presented.iter().find_map(|p| {
        let name = p.strip_prefix("DnsName(\"")?.strip_suffix("\")")?;
        let name = match name.strip_prefix("*.") {
            Some(rest) => format!("x.{rest}"),
            None => name.to_string(),
        };
        valid(name)
    });
    dns.or_else(|| {
        presented.iter().find_map(|p| {
            let ip = p.strip_prefix("IpAddress(")?.strip_suffix(')')?;
            let ip: std::net::IpAddr = ip.parse().ok()?;
            valid(ip.to_string())
        })
    })
}

/// The names of a certificate as an error shows them: `localhost, 127.0.0.1`.
fn names_text(presented: &[String]) -> String {
    if presented.is_empty() {
        return "none".into();
    }
    presented
        .iter()
        .map(|p| {
            p.strip_prefix("DnsName(\"")
                .and_then(|n| n.strip_suffix("\")"))
                .or_else(|| {
                    p.strip_prefix("IpAddress(")
                        .and_then(|n| n.strip_suffix(')'))
                })
                .unwrap_or(p)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A failed connection attempt: a refused certificate is a configuration error that says what
/// to change; anything else is classified as driver errors are.
fn connect_error(target: &str, opts: &Opts, error: mysql_async::Error) -> MysqlError {
    let context = format!("connecting to {target}");
    if let Some((expected, presented)) = name_mismatch(&error) {
        let expected = if expected.is_empty() {
            opts.ip_or_hostname().to_string()
        } else {
            expected
        };
        return MysqlError::Config(format!(
            "{context}: the server's TLS certificate is not valid for the name `{expected}` (it \
             names: {}); with ssl-mode=VERIFY_IDENTITY connect by a name the certificate has, or \
             use ssl-mode=VERIFY_CA to verify the chain against ssl-ca without the name ({error})",
            names_text(presented)
        ));
    }
    match rustls_error(&error) {
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented) => {
            MysqlError::Config(format!(
                "{context}: the server's TLS certificate was refused ({error}); ssl-ca must be the \
                 CA that signed the server's certificate (with ssl-ca only that CA is trusted)"
            ))
        }
        _ => MysqlError::driver(context, error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presented(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_dns_name_comes_first_then_an_ip_address() {
        let names = presented(&["IpAddress(127.0.0.1)", "DnsName(\"localhost\")"]);
        assert_eq!(usable_name(&names).as_deref(), Some("localhost"));
        let names = presented(&["IpAddress(10.1.2.3)", "DirectoryName"]);
        assert_eq!(usable_name(&names).as_deref(), Some("10.1.2.3"));
        let names = presented(&["DnsName(\"*.db.example.com\")"]);
        assert_eq!(usable_name(&names).as_deref(), Some("x.db.example.com"));
        let names = presented(&["IpAddress(::1)"]);
        assert_eq!(usable_name(&names).as_deref(), Some("::1"));
        assert_eq!(usable_name(&[]), None);
        assert_eq!(
            usable_name(&presented(&["UniformResourceIdentifier(\"x:y\")"])),
            None
        );
        assert_eq!(
            names_text(&presented(&[
                "IpAddress(127.0.0.1)",
                "DnsName(\"localhost\")"
            ])),
            "127.0.0.1, localhost"
        );
    }

    #[test]
    fn only_verify_ca_skips_the_name() {
        use crate::config::parse_url;
        let ssl = |url: &str| parse_url(url).expect("url").ssl_opts().cloned();
        let ca = "ssl-ca=/etc/ca.pem";
        assert!(verify_ca(
            &ssl(&format!("mysql://u:p@h/?ssl-mode=VERIFY_CA&{ca}")).expect("tls")
        ));
        assert!(!verify_ca(
            &ssl(&format!("mysql://u:p@h/?ssl-mode=VERIFY_IDENTITY&{ca}")).expect("tls")
        ));
        assert!(!verify_ca(
            &ssl("mysql://u:p@h/?ssl-mode=REQUIRED").expect("tls")
        ));
        let opts = parse_url(&format!("mysql://u:p@h/?ssl-mode=VERIFY_CA&{ca}")).expect("url");
        let named = with_name(&opts, opts.ssl_opts().expect("tls"), "localhost");
        let ssl = named.ssl_opts().expect("tls");
        assert_eq!(ssl.tls_hostname_override(), Some("localhost"));
        assert!(!ssl.skip_domain_validation() && !ssl.accept_invalid_certs());
        assert!(ssl.disable_built_in_roots(), "still only ssl-ca is trusted");
        assert_eq!(
            named.ip_or_hostname(),
            "h",
            "TCP still goes to the URL's host"
        );
    }
}
