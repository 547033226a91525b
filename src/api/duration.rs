//! Durations written the Kubernetes way (`500ms`, `5s`, `1m30s`), as in Go's
//! `time.ParseDuration` without negative values.
//!
//! Used by the API types; `compile` converts them to `google.protobuf.Duration`.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Pattern the CRD schema enforces; [`parse`] accepts exactly the same language.
pub const PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$";

/// A non-negative duration that keeps the text it was written as, so objects round-trip
/// unchanged.
#[derive(Clone, PartialEq, Eq)]
pub struct GoDuration {
    text: String,
    value: Duration,
}

impl GoDuration {
    /// The parsed value.
    pub fn get(&self) -> Duration {
        self.value
    }
}

impl fmt::Debug for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for GoDuration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let value = parse(text)?;
        Ok(GoDuration {
            text: text.to_owned(),
            value,
        })
    }
}

/// The largest seconds of `google.protobuf.Duration` (10,000 years).
const MAX_SECONDS: u64 = 315_576_000_000;

/// Longest duration text accepted by the CRD: room for any duration Envoy takes, written
/// with every unit.
pub const MAX_LENGTH: usize = 64;

/// Why a duration text was refused; each message quotes the text and says what to write.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not numbers with units.
    #[error(
        "invalid duration {0:?}: write a number and a unit (ns, us, ms, s, m, h), e.g. 500ms, 5s or 1m30s"
    )]
    Malformed(String),
    /// Longer than `google.protobuf.Duration` holds: its seconds stop at 315,576,000,000
    /// (10,000 years).
    #[error(
        "invalid duration {0:?}: longer than the largest duration Envoy takes (about 10,000 years, 87660000h); write a shorter one"
    )]
    TooLong(String),
    /// More than [`MAX_LENGTH`] characters.
    #[error(
        "invalid duration {0:?}: more than {MAX_LENGTH} characters; write it shorter, e.g. 1h30m"
    )]
    TooManyCharacters(String),
}

/// Parses `1h2m3.5s`-style text (Go's `time.ParseDuration` without signs), up to the
/// largest `google.protobuf.Duration`.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let bad = || DurationError::Malformed(text.to_owned());
    let too_long = || DurationError::TooLong(text.to_owned());
    if text.is_empty() {
        return Err(bad());
    }
    if text.len() > MAX_LENGTH {
        return Err(DurationError::TooManyCharacters(text.to_owned()));
    }
    let mut total_nanos: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number = &rest[..digits_end];
        rest = &rest[digits_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            _ => return Err(bad()),
        };
        let (whole, frac) = match number.split_once('.') {
            Some((w, f)) if !w.is_empty() && !f.is_empty() => (w, f),
            None if !number.is_empty() => (number, ""),
            _ => return Err(bad()),
        };
        if frac.contains('.') {
            return Err(bad());
        }
        // Only digits are left: a parse error is an overflow.
        let whole: u128 = whole.parse().map_err(|_| too_long())?;
        let mut nanos = whole.checked_mul(unit_nanos).ok_or_else(too_long)?;
        // Fractions: keep at most 9 digits of precision, like Go does for the smallest unit.
        let mut scale = unit_nanos;
        for d in frac.chars().take(18) {
            scale /= 10;
            nanos += u128::from(d.to_digit(10).ok_or_else(bad)?) * scale;
        }
        total_nanos = total_nanos.checked_add(nanos).ok_or_else(too_long)?;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| too_long())?;
    if secs > MAX_SECONDS {
        return Err(too_long());
    }
    Ok(Duration::new(secs, (total_nanos % 1_000_000_000) as u32))
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for GoDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": PATTERN,
            "maxLength": MAX_LENGTH,
            "description": "A duration such as 500ms, 5s or 1m30s."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_say_that_a_duration_is_too_long_rather_than_malformed() {
        for text in [
            "99999999999999999999h",
            "87660001h",
            &format!("{}s", "9".repeat(45)),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(
                e.contains("longer than the largest duration"),
                "{text}: {e}"
            );
        }
        assert!(
            parse("87660000h").is_ok(),
            "10,000 years is still a duration"
        );
        let e = parse(&"1s".repeat(40)).unwrap_err().to_string();
        assert!(e.contains("more than 64 characters"), "{e}");
    }

    #[test]
    fn should_parse_go_style_durations() {
        assert_eq!(parse("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse("3ms").unwrap(), Duration::from_millis(3));
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(parse("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn should_reject_text_without_units_or_with_garbage() {
        for bad in [
            "", "5", "s", "5 s", "-5s", "5sec", "1..5s", ".5s", "5.s", "1d",
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err, DurationError::Malformed(bad.to_owned()));
            assert!(err.to_string().contains("invalid duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn should_round_trip_the_original_text() {
        let d: GoDuration = serde_json::from_str("\"1m30s\"").unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1m30s\"");
        assert!(serde_json::from_str::<GoDuration>("\"soon\"").is_err());
    }
}
