//! `Duration`: the string durations of the route schema (`500ms`, `30s`, `1h`).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative span of time written as a string: a number followed by a unit
/// (`ms`, `s`, `m`, `h`), several parts allowed (`1m30s`). `0s` means "none" where
/// the schema says so.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

/// The longest duration wsgate accepts (ten years); the CRD refuses longer ones too.
pub const MAX: std::time::Duration = std::time::Duration::from_secs(87_600 * 3600);
/// [`MAX`] as the CRD's CEL rule writes it.
pub const MAX_TEXT: &str = "87600h";

/// The pattern the CRD schema enforces; the same grammar `FromStr` accepts.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

impl Duration {
    /// Builds a duration from whole seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }

    /// True for the `0s` that means "off".
    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }

    /// `None` for zero ("off"), the span otherwise.
    pub fn non_zero(&self) -> Option<std::time::Duration> {
        (!self.0.is_zero()).then_some(self.0)
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "invalid duration {s:?}: expected a number and a unit such as 500ms, 30s, 5m, 1h"
            )
        };
        if s.is_empty() {
            return Err(bad());
        }
        let mut total = 0f64;
        let mut rest = s;
        while !rest.is_empty() {
            let num_end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(bad)?;
            if num_end == 0 {
                return Err(bad());
            }
            let value: f64 = rest[..num_end].parse().map_err(|_| bad())?;
            rest = &rest[num_end..];
            let unit_end = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let scale = match &rest[..unit_end] {
                "ms" => 0.001,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return Err(bad()),
            };
            total += value * scale;
            rest = &rest[unit_end..];
        }
        if !total.is_finite() || total > MAX.as_secs_f64() {
            return Err(format!(
                "duration {s:?} is above {MAX_TEXT}, the longest wsgate holds"
            ));
        }
        Ok(Duration(std::time::Duration::from_secs_f64(total)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(3_600_000) && ms > 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) && ms > 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_schema_examples() {
        let d = |s: &str| s.parse::<Duration>().map(|d| d.0.as_millis());
        assert_eq!(d("500ms"), Ok(500));
        assert_eq!(d("30s"), Ok(30_000));
        assert_eq!(d("1h"), Ok(3_600_000));
        assert_eq!(d("1m30s"), Ok(90_000));
        assert_eq!(d("0s"), Ok(0));
        assert_eq!(d("1.5s"), Ok(1500));
        for bad in ["", "30", "s", "-1s", "1d", "1 s", "abc"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn displays_round_trip() {
        for s in ["500ms", "30s", "5m", "1h", "0s", "1500ms"] {
            assert_eq!(s.parse::<Duration>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn pattern_agrees_with_parser() {
        // The CRD pattern and the parser must accept the same inputs.
        for s in ["500ms", "1m30s", "0s", "2.5h"] {
            assert!(s.parse::<Duration>().is_ok());
        }
    }
}
