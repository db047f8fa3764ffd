//! Durations as the strings users write ("5s", "1m30s", "250ms").
//!
//! The accepted form is Go's duration syntax without signs, fractions included ("1.5s",
//! ".5h"), because that is what Kubernetes' CEL `duration()` parses: the CRD's validation rules
//! and the worker then agree on every value a user can write.

use std::fmt;
use std::time::Duration as StdDuration;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The pattern the CRD schema enforces; [`Duration::parse`] accepts exactly these strings.
pub const DURATION_PATTERN: &str = r"^(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|ms|s|m|h))+$";

/// A non-negative duration written as a human string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub StdDuration);

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}; write a number and a unit, e.g. \"500ms\", \"5s\", \"1m30s\" (units: ns, us, ms, s, m, h)")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(StdDuration::from_secs(secs))
    }

    pub const fn from_millis(ms: u64) -> Self {
        Self(StdDuration::from_millis(ms))
    }

    pub fn as_std(self) -> StdDuration {
        self.0
    }

    pub fn as_millis(self) -> u128 {
        self.0.as_millis()
    }

    /// Milliseconds as the worker's times count them, saturating (a spec bounds durations
    /// far below `i64::MAX` ms anyway).
    pub fn as_millis_i64(self) -> i64 {
        i64::try_from(self.0.as_millis()).unwrap_or(i64::MAX)
    }

    /// Parses "1h2m3s4ms" or "1.5s": a number (with an optional fraction) then a unit,
    /// repeated. Fractions below a nanosecond are dropped, as Go drops them.
    ///
    /// # Errors
    /// When the string is empty, has a number without a unit, an unknown unit, or overflows.
    pub fn parse(input: &str) -> Result<Self, DurationError> {
        let err = |reason| DurationError {
            input: input.to_string(),
            reason,
        };
        if input.is_empty() {
            return Err(err("it is empty"));
        }
        let bytes = input.as_bytes();
        let mut i = 0;
        let mut total: u128 = 0;
        while i < bytes.len() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            let whole_end = i;
            let mut frac = None;
            if i < bytes.len() && bytes[i] == b'.' {
                i += 1;
                let f = i;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                frac = Some(&input[f..i]);
            }
            if start == whole_end && frac.is_none_or(str::is_empty) {
                return Err(err("expected a number"));
            }
            let n: u128 = if start == whole_end {
                0
            } else {
                input[start..whole_end]
                    .parse()
                    .map_err(|_| err("number too large"))?
            };
            let unit_start = i;
            while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            let nanos_per: u128 = match &input[unit_start..i] {
                "ns" => 1,
                "us" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                "" => return Err(err("a number has no unit")),
                _ => return Err(err("unknown unit")),
            };
            // Each fraction digit is worth a tenth of the one before; past nanoseconds, nothing.
            let mut fraction: u128 = 0;
            let mut scale = nanos_per;
            for d in frac.unwrap_or_default().bytes() {
                scale /= 10;
                if scale == 0 {
                    break;
                }
                fraction += u128::from(d - b'0') * scale;
            }
            total = n
                .checked_mul(nanos_per)
                .and_then(|v| v.checked_add(fraction))
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| err("too large"))?;
        }
        let secs = u64::try_from(total / 1_000_000_000).map_err(|_| err("too large"))?;
        // Capped far below u64 seconds so arithmetic on batch times cannot overflow.
        if secs > 100 * 365 * 24 * 3600 {
            return Err(err("longer than 100 years"));
        }
        Ok(Self(StdDuration::new(secs, (total % 1_000_000_000) as u32)))
    }
}

impl fmt::Display for Duration {
    /// The shortest exact form in the accepted syntax, so a value round-trips.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [
            ("h", 3_600_000_000_000u128),
            ("m", 60_000_000_000),
            ("s", 1_000_000_000),
            ("ms", 1_000_000),
            ("us", 1_000),
            ("ns", 1),
        ] {
            if nanos >= size {
                write!(f, "{}{unit}", nanos / size)?;
                nanos %= size;
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for Duration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
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
        Duration::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": 32,
            "description": "A duration such as \"500ms\", \"1.5s\", \"1m30s\" (units: ns, us, ms, s, m, h)."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        for (s, ms) in [
            ("5s", 5_000),
            ("1m30s", 90_000),
            ("250ms", 250),
            ("2h", 7_200_000),
        ] {
            let d = Duration::parse(s).unwrap();
            assert_eq!(d.as_millis(), ms);
            assert_eq!(d.to_string(), s);
        }
        assert_eq!(Duration::parse("90s").unwrap().to_string(), "1m30s");
    }

    #[test]
    fn fractions_are_accepted_as_go_and_kubernetes_cel_accept_them() {
        for (s, ms) in [
            ("1.5s", 1_500),
            (".5s", 500),
            ("1.s", 1_000),
            ("0.25m", 15_000),
            ("1.5h30m", 7_200_000),
            ("2.5ms", 2),
        ] {
            assert_eq!(Duration::parse(s).unwrap().as_millis(), ms, "{s}");
        }
        assert_eq!(Duration::parse("1.5s").unwrap().to_string(), "1s500ms");
        assert_eq!(
            Duration::parse("1.0000000019s").unwrap().0.as_nanos(),
            1_000_000_001
        );
    }

    #[test]
    fn rejects_with_a_reason_and_the_fix() {
        for bad in ["", "5", "5 s", "-1s", ".s", "1..5s", "3d", "s", "1.5"] {
            let e = Duration::parse(bad).unwrap_err().to_string();
            assert!(e.contains("e.g. \"500ms\""), "{bad}: {e}");
        }
        assert!(Duration::parse("99999999999999999999999h").is_err());
    }

    #[test]
    fn pattern_accepts_exactly_what_parse_accepts() {
        // A tiny matcher of the pattern keeps the schema honest without a regex dependency.
        fn matches_pattern(s: &str) -> bool {
            let mut rest = s;
            if rest.is_empty() {
                return false;
            }
            while !rest.is_empty() {
                let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                rest = &rest[digits..];
                if let Some(r) = rest.strip_prefix('.') {
                    let fraction = r.bytes().take_while(u8::is_ascii_digit).count();
                    rest = &r[fraction..];
                    if digits == 0 && fraction == 0 {
                        return false;
                    }
                } else if digits == 0 {
                    return false;
                }
                let unit = ["ns", "us", "ms", "s", "m", "h"]
                    .iter()
                    .find(|u| rest.starts_with(*u) && !(**u == "m" && rest.starts_with("ms")));
                match unit {
                    Some(u) => rest = &rest[u.len()..],
                    None => return false,
                }
            }
            true
        }
        for s in [
            "5s",
            "1m30s",
            "10ms",
            "1h1m1s1ms1us1ns",
            "5",
            "x",
            "1d",
            "5sm",
            "1.5s",
            ".5s",
            "1.s",
            ".s",
            "1..5s",
        ] {
            assert_eq!(matches_pattern(s), Duration::parse(s).is_ok(), "{s}");
        }
        assert_eq!(
            DURATION_PATTERN,
            r"^(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|ms|s|m|h))+$"
        );
    }
}
