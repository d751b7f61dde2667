//! Durations and sizes as operators write them in weir's TOML, for filter configs, so
//! every filter reads `"250ms"` and `"1MiB"` the same way weir itself does.

use std::time::Duration;

/// Parses `"250ms"`, `"2s"`, `"1.5m"`, `"1h"` or `"1d"`: a number and a unit.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(weir_filter::units::parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
/// assert!(weir_filter::units::parse_duration("2 weeks").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration {text:?}: write a number and a unit (ms, s, m, h, d), e.g. \"250ms\" or \"2s\""
        )
    };
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(bad)?;
    let (number, unit) = t.split_at(split);
    let n: f64 = number.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("invalid duration {text:?}: too large"))
}

/// Parses a size into bytes: a whole number with `B`, `KB`, `MB`, `GB`, `KiB`, `MiB` or
/// `GiB` (no unit: bytes).
///
/// ```
/// assert_eq!(weir_filter::units::parse_size("64KiB"), Ok(65536));
/// assert!(weir_filter::units::parse_size("10 megs").is_err());
/// ```
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || {
        format!(
            "invalid size {text:?}: write a whole number and a unit (B, KB, MB, GB, KiB, MiB, GiB), e.g. \"1MiB\""
        )
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        for bad in [
            "",
            "2",
            "s",
            "2 weeks",
            "2 s",
            "-1s",
            "1..5s",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("1KB"), Ok(1000));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert!(parse_size("10 megs").is_err());
        assert!(parse_size("99999999999GiB").is_err());
    }
}
