//! Durations in config files: humantime text (`10s`, `1m 30s`, `250ms`) or a number of seconds.
//! Use as `#[serde(with = "etcdsync_core::duration")]`.

use serde::{Deserialize, Deserializer, Serializer};
use std::time::Duration;

#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Seconds(u64),
    Fractional(f64),
    Text(String),
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    match Raw::deserialize(deserializer)? {
        Raw::Seconds(s) => Ok(Duration::from_secs(s)),
        Raw::Fractional(f) => Duration::try_from_secs_f64(f).map_err(|_| {
            serde::de::Error::custom(format!("`{f}` is not a valid number of seconds"))
        }),
        Raw::Text(text) => humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration ({e}); write e.g. `10s`, `500ms` or `1m`"
            ))
        }),
    }
}

pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&humantime::format_duration(*value).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, serde::Serialize)]
    struct Holder {
        #[serde(with = "super")]
        d: Duration,
    }

    #[test]
    fn text_and_numbers() {
        let parse = |y: &str| serde_yaml::from_str::<Holder>(y).map(|h| h.d);
        assert_eq!(parse("d: 10s").ok(), Some(Duration::from_secs(10)));
        assert_eq!(parse("d: 1m 30s").ok(), Some(Duration::from_secs(90)));
        assert_eq!(parse("d: 3").ok(), Some(Duration::from_secs(3)));
        assert_eq!(parse("d: 0.25").ok(), Some(Duration::from_millis(250)));
        let err = parse("d: soon").expect_err("not a duration").to_string();
        assert!(err.contains("`soon` is not a duration"), "{err}");
        let text = serde_yaml::to_string(&Holder {
            d: Duration::from_millis(1500),
        })
        .expect("ser");
        assert!(text.contains("1s 500ms"), "{text}");
    }
}
