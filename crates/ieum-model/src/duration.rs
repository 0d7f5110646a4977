//! Durations as people write them: `"250ms"`, `"15s"`, `"10m"`, `"1h30m"`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative span of time, written as a string with units (`"15s"`, `"250ms"`).
///
/// Parsing accepts what `humantime` accepts (`"1m 30s"`, `"1h30m"`, `"500us"`); printing
/// uses composite units, largest first (`"90s"` prints as `"1m30s"`, `"120s"` as `"2m"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(std::time::Duration);

impl Duration {
    /// The zero duration (`"0s"`), which disables a timeout where the field says so.
    pub const ZERO: Duration = Duration(std::time::Duration::ZERO);

    /// A duration of whole seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }

    /// A duration of whole milliseconds.
    pub const fn from_millis(millis: u64) -> Self {
        Duration(std::time::Duration::from_millis(millis))
    }

    /// The standard library value.
    pub const fn get(self) -> std::time::Duration {
        self.0
    }

    /// Whether this is `0s`.
    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    /// The same duration without its fraction of a second (for uptimes people read).
    pub fn whole_seconds(self) -> Self {
        Duration(std::time::Duration::from_secs(self.0.as_secs()))
    }

    /// Whole milliseconds, saturating.
    pub fn as_millis_u64(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Duration(d)
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a duration: write a number with a unit, like `250ms`, `15s` or `10m`")]
pub struct ParseDurationError {
    input: String,
}

impl FromStr for Duration {
    type Err = ParseDurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim();
        let err = || ParseDurationError {
            input: s.to_owned(),
        };
        // A bare number is ambiguous (seconds? milliseconds?): require a unit, except 0.
        if trimmed == "0" {
            return Ok(Duration::ZERO);
        }
        if trimmed.is_empty() || trimmed.chars().all(|c| c.is_ascii_digit()) {
            return Err(err());
        }
        humantime::parse_duration(trimmed)
            .map(Duration)
            .map_err(|_| err())
    }
}

impl fmt::Display for Duration {
    /// Composite units, largest first, without spaces: `2m`, `1m30s`, `1s500ms`, `3h12m`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u128); 6] = [
            ("h", 3_600_000_000_000),
            ("m", 60_000_000_000),
            ("s", 1_000_000_000),
            ("ms", 1_000_000),
            ("us", 1_000),
            ("ns", 1),
        ];
        let mut nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in UNITS {
            if nanos >= size {
                write!(f, "{}{unit}", nanos / size)?;
                nanos %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for Duration {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("A duration with a unit, like `250ms`, `15s`, `10m`"))
            .examples(["15s"])
            .into()
    }
}

impl utoipa::ToSchema for Duration {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!("15s".parse::<Duration>().unwrap(), Duration::from_secs(15));
        assert_eq!(
            "250ms".parse::<Duration>().unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!("10m".parse::<Duration>().unwrap(), Duration::from_secs(600));
        assert_eq!(
            "1h30m".parse::<Duration>().unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!("0".parse::<Duration>().unwrap(), Duration::ZERO);
        assert_eq!("0s".parse::<Duration>().unwrap(), Duration::ZERO);
    }

    #[test]
    fn rejects_numbers_without_units_and_garbage() {
        for bad in ["15", "", "fast", "-1s", "1x"] {
            let err = bad.parse::<Duration>().unwrap_err();
            assert!(err.to_string().contains("like `250ms`"), "{bad}: {err}");
        }
    }

    #[test]
    fn prints_composite_units() {
        assert_eq!(Duration::from_secs(120).to_string(), "2m");
        assert_eq!(Duration::from_secs(90).to_string(), "1m30s");
        assert_eq!(Duration::from_millis(1500).to_string(), "1s500ms");
        assert_eq!(
            Duration::from_secs(3 * 3600 + 12 * 60 + 5).to_string(),
            "3h12m5s"
        );
        assert_eq!(Duration::from_secs(7200).to_string(), "2h");
        assert_eq!(Duration::ZERO.to_string(), "0s");
    }

    proptest! {
        #[test]
        fn display_round_trips(nanos in 0u64..10_000_000_000_000) {
            let d = Duration(std::time::Duration::from_nanos(nanos));
            prop_assert_eq!(d.to_string().parse::<Duration>().unwrap(), d);
        }
    }
}
