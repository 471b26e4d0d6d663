//! `Secret`: a config string (password, token) that never appears in logs, errors or `Debug`.

use serde::{Deserialize, Deserializer};
use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for handing to a client library. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// Any YAML scalar (`password: 1234` is a number to YAML) becomes the secret's text; errors
/// name the kind of value, never the value.
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Scalar;
        impl serde::de::Visitor<'_> for Scalar {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string (a password or token)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
                Ok(Secret(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                // `1.50` would come back as `1.5`: the text is not what was written.
                Err(E::custom(
                    "a number with a decimal point cannot be a password exactly as written; quote it",
                ))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
        }
        deserializer.deserialize_any(Scalar)
    }
}

/// Secrets serialize redacted, so a config printed back (e.g. by `check`) leaks nothing.
impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

/// A URL for messages when it could not be parsed: everything between `scheme://` and the last
/// `@` is taken for credentials (as libpq and tokio-postgres do), and `password=` parameters are
/// hidden. It may hide more than the password, never less. Parsed URLs are shown from their
/// parsed parts instead (the plugins' `display_url`).
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return if url.contains('@') || url.to_ascii_lowercase().contains("password") {
            "(not shown: it may hold a password)".into()
        } else {
            url.to_string()
        };
    };
    let rest = &url[scheme_end + 3..];
    let shown = match rest.rfind('@') {
        Some(at) if rest[..at].contains(':') => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{}://{user}:***{}", &url[..scheme_end], &rest[at..])
        }
        Some(_) => url.to_string(),
        None => url.to_string(),
    };
    hide_password_params(&shown)
}

/// `password=…` (any case) becomes `password=***`, up to the next `&` that starts another
/// `name=value` parameter: a raw `&` in the password is followed by text without `=`.
fn hide_password_params(url: &str) -> String {
    let lower = url.to_ascii_lowercase();
    let mut out = String::with_capacity(url.len());
    let mut i = 0;
    while let Some(found) = lower[i..].find("password=") {
        let value_start = i + found + "password=".len();
        out.push_str(&url[i..value_start]);
        out.push_str("***");
        let mut end = value_start;
        i = loop {
            match url[end..].find('&') {
                None => break url.len(),
                Some(amp) => {
                    let next = end + amp + 1;
                    let segment = url[next..].split('&').next().unwrap_or("");
                    if segment.contains('=') {
                        break end + amp;
                    }
                    end = next;
                }
            }
        };
    }
    out.push_str(&url[i..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_serialize_hide_the_value() {
        let secret = Secret::new("hunter2");
        assert!(!format!("{secret:?}").contains("hunter2"));
        let yaml = serde_yaml::to_string(&secret).expect("serialize");
        assert!(!yaml.contains("hunter2"));
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn scalars_are_secrets_and_errors_do_not_echo() {
        let number: Secret = serde_yaml::from_str("123456").expect("number");
        assert_eq!(number.expose(), "123456");
        let flag: Secret = serde_yaml::from_str("true").expect("bool");
        assert_eq!(flag.expose(), "true");
        let error = serde_yaml::from_str::<Secret>("98765.25").expect_err("float");
        assert!(!error.to_string().contains("98765"), "{error}");
        let error = serde_yaml::from_str::<Secret>("[hunter2]").expect_err("list");
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }

    #[test]
    fn redact_url_takes_credentials_up_to_the_last_at() {
        for (raw, shown) in [
            ("postgres://u:pa/ss@h/db", "postgres://u:***@h/db"),
            (
                "postgres://u:p?a#s@s@h:5432/db",
                "postgres://u:***@h:5432/db",
            ),
            ("postgres://u:p%40ss@h/db", "postgres://u:***@h/db"),
            (
                "postgres://u@h/db?sslmode=require&PASSWORD=x%2Fy&a=b",
                "postgres://u@h/db?sslmode=require&PASSWORD=***&a=b",
            ),
            (
                "postgres://h/db?password=secret",
                "postgres://h/db?password=***",
            ),
            (
                "postgres://h/db?password=Ab&Sec&ret9&sslmode=require",
                "postgres://h/db?password=***&sslmode=require",
            ),
        ] {
            assert_eq!(redact_url(raw), shown, "{raw}");
        }
        assert!(!redact_url("u:secret@h").contains("secret"));
    }

    #[test]
    fn redact_url_hides_password_only() {
        assert_eq!(
            redact_url("postgres://u:p%40ss@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("mysql://h:3306/db?x=1"), "mysql://h:3306/db?x=1");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
