//! Search values: prefixes, date ranges, numbers with implicit precision, tokens, references
//! and the accent- and case-folding of string search.

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use unicode_normalization::UnicodeNormalization;

/// A comparison prefix of number, date and quantity values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

impl Prefix {
    /// Splits a leading prefix off `value` (default `eq`).
    pub fn split(value: &str) -> (Prefix, &str) {
        let prefixes = [
            ("eq", Prefix::Eq),
            ("ne", Prefix::Ne),
            ("gt", Prefix::Gt),
            ("lt", Prefix::Lt),
            ("ge", Prefix::Ge),
            ("le", Prefix::Le),
            ("sa", Prefix::Sa),
            ("eb", Prefix::Eb),
            ("ap", Prefix::Ap),
        ];
        for (text, prefix) in prefixes {
            if let Some(rest) = value.strip_prefix(text)
                && rest.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.')
            {
                return (prefix, rest);
            }
        }
        (Prefix::Eq, value)
    }

    /// Whether a target range `[t_lo, t_hi)` satisfies this prefix against the search range
    /// `[s_lo, s_hi)`, with FHIR R4's range semantics.
    pub fn matches<T: PartialOrd + Copy>(self, s_lo: T, s_hi: T, t_lo: T, t_hi: T) -> bool {
        let contains = s_lo <= t_lo && t_hi <= s_hi;
        let overlaps = t_lo < s_hi && s_lo < t_hi;
        match self {
            Prefix::Eq => contains,
            Prefix::Ne => !contains,
            Prefix::Gt => t_hi > s_hi,
            Prefix::Lt => t_lo < s_lo,
            Prefix::Ge => t_hi > s_hi || contains,
            Prefix::Le => t_lo < s_lo || contains,
            Prefix::Sa => t_lo >= s_hi,
            Prefix::Eb => t_hi <= s_lo,
            Prefix::Ap => overlaps,
        }
    }
}

/// Microseconds since the Unix epoch; the bounds of dates and periods.
pub type Micros = i64;

/// The half-open instant range `[lo, hi)` a FHIR date, dateTime or instant denotes at its
/// precision: `2013` is the whole year, `2013-01-14T10:00` the whole minute. Values without a
/// time zone are taken as UTC.
pub fn date_range(text: &str) -> Option<(Micros, Micros)> {
    let text = text.trim();
    let (date_part, time_part) = match text.find('T') {
        Some(i) => (&text[..i], Some(&text[i + 1..])),
        None => (text, None),
    };
    let parts: Vec<&str> = date_part.split('-').collect();
    let year: i32 = parts.first()?.parse().ok()?;
    if parts[0].len() != 4 {
        return None;
    }
    let micros = |d: NaiveDateTime| d.and_utc().timestamp_micros();
    match (parts.len(), time_part) {
        (1, None) => {
            let lo = NaiveDate::from_ymd_opt(year, 1, 1)?;
            let hi = NaiveDate::from_ymd_opt(year + 1, 1, 1)?;
            Some((micros(lo.into()), micros(hi.into())))
        }
        (2, None) => {
            let month: u32 = parts[1].parse().ok()?;
            let lo = NaiveDate::from_ymd_opt(year, month, 1)?;
            let hi = if month == 12 {
                NaiveDate::from_ymd_opt(year + 1, 1, 1)?
            } else {
                NaiveDate::from_ymd_opt(year, month + 1, 1)?
            };
            Some((micros(lo.into()), micros(hi.into())))
        }
        (3, None) => {
            let lo = NaiveDate::from_ymd_opt(year, parts[1].parse().ok()?, parts[2].parse().ok()?)?;
            let hi = lo.succ_opt()?;
            Some((micros(lo.into()), micros(hi.into())))
        }
        (3, Some(time)) => {
            let day =
                NaiveDate::from_ymd_opt(year, parts[1].parse().ok()?, parts[2].parse().ok()?)?;
            let (clock, offset_secs) = split_zone(time)?;
            let pieces: Vec<&str> = clock.split(':').collect();
            let hour: u32 = pieces.first()?.parse().ok()?;
            let minute: u32 = pieces.get(1)?.parse().ok()?;
            let (second, frac, width) = match pieces.get(2) {
                None => (0, 0, 60_000_000),
                Some(s) => {
                    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
                    let second: u32 = whole.parse().ok()?;
                    if frac.is_empty() {
                        (second, 0, 1_000_000)
                    } else {
                        let digits = frac.len().min(6) as u32;
                        let value: i64 = frac[..digits as usize].parse().ok()?;
                        let scale = 10_i64.pow(6 - digits);
                        (second, value * scale, scale)
                    }
                }
            };
            let t = NaiveTime::from_hms_opt(hour, minute, second)?;
            let lo = micros(day.and_time(t)) + frac - offset_secs * 1_000_000;
            Some((lo, lo + width))
        }
        _ => None,
    }
}

/// Splits a time into the clock part and the zone offset in seconds (`Z` and none are 0).
fn split_zone(time: &str) -> Option<(&str, i64)> {
    if let Some(clock) = time.strip_suffix('Z') {
        return Some((clock, 0));
    }
    if let Some(i) = time.rfind(['+', '-']) {
        let (clock, zone) = time.split_at(i);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let (h, m) = zone[1..].split_once(':')?;
        let secs = h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60;
        return Some((clock, sign * secs));
    }
    Some((time, 0))
}

/// Widens a search range for `ap` (approximately; the margin is the server's choice in
/// FHIR): by a tenth of its own width, at least a day on each side.
pub fn approximate(lo: Micros, hi: Micros) -> (Micros, Micros) {
    let margin = ((hi - lo) / 10).max(86_400_000_000);
    (lo.saturating_sub(margin), hi.saturating_add(margin))
}

/// A number search value with its implicit precision: `100` is `[99.5, 100.5)`, `1e2` too,
/// `100.0` is `[99.95, 100.05)`.
pub fn number_range(text: &str) -> Option<(f64, f64)> {
    let value: f64 = text.parse().ok()?;
    let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
    let exponent: i32 = text
        .split_once(['e', 'E'])
        .map(|(_, e)| e.parse().unwrap_or(0))
        .unwrap_or(0);
    let decimals = mantissa.split_once('.').map_or(0, |(_, f)| f.len()) as i32;
    let half = 0.5 * 10f64.powi(exponent - decimals);
    Some((value - half, value + half))
}

/// Case- and accent-insensitive form used by string search.
pub fn fold(text: &str) -> String {
    text.nfd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

/// Splits on a separator not preceded by a backslash and unescapes `\,`, `\|`, `\$`, `\\`.
pub fn split_escaped(text: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n @ (',' | '|' | '$' | '\\')) => parts.last_mut().unwrap().push(n),
                Some(n) => {
                    let last = parts.last_mut().unwrap();
                    last.push('\\');
                    last.push(n);
                }
                None => parts.last_mut().unwrap().push('\\'),
            }
        } else if c == sep {
            parts.push(String::new());
        } else {
            parts.last_mut().unwrap().push(c);
        }
    }
    parts
}

/// Splits on the first unescaped `sep` only.
pub fn split_once_escaped(text: &str, sep: char) -> Option<(String, String)> {
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            let unescape = |s: &str| split_escaped(s, '\u{0}').concat();
            return Some((unescape(&text[..i]), unescape(&text[i + 1..])));
        }
    }
    None
}

/// `Type/id` of a reference, from a relative (`Patient/1`), versioned
/// (`Patient/1/_history/2`) or absolute (`http://x/fhir/Patient/1`) form.
pub fn reference_key(reference: &str) -> Option<(&str, &str)> {
    let reference = match reference.find("/_history/") {
        Some(i) => &reference[..i],
        None => reference,
    };
    let mut parts = reference.rsplit('/');
    let id = parts.next()?;
    let ty = parts.next()?;
    if id.is_empty() || !ty.starts_with(|c: char| c.is_ascii_uppercase()) {
        return None;
    }
    Some((ty, id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Datelike, TimeZone, Utc};

    /// Formats microseconds as an RFC 3339 instant (for sort keys and messages).
    fn format_micros(micros: Micros) -> String {
        Utc.timestamp_micros(micros)
            .single()
            .map(|d: DateTime<Utc>| d.to_rfc3339())
            .unwrap_or_default()
    }

    /// The year of an instant, used to sanity-check parsed dates in tests.
    fn year_of(micros: Micros) -> i32 {
        Utc.timestamp_micros(micros)
            .single()
            .map_or(0, |d| d.year())
    }

    #[test]
    fn date_precision_and_zones() {
        let (lo, hi) = date_range("2013").unwrap();
        assert_eq!(format_micros(lo), "2013-01-01T00:00:00+00:00");
        assert_eq!(format_micros(hi), "2014-01-01T00:00:00+00:00");
        let (lo, hi) = date_range("2013-02").unwrap();
        assert_eq!(format_micros(hi - 1).get(..10), Some("2013-02-28"));
        assert_eq!(year_of(lo), 2013);
        let (lo, hi) = date_range("2013-01-14T10:00").unwrap();
        assert_eq!(hi - lo, 60_000_000);
        let (lo, _) = date_range("2013-01-14T10:00:00+02:00").unwrap();
        assert_eq!(format_micros(lo), "2013-01-14T08:00:00+00:00");
        let (lo, hi) = date_range("2013-01-14T10:00:00.123Z").unwrap();
        assert_eq!(hi - lo, 1_000);
        assert_eq!(lo % 1_000_000, 123_000);
        assert!(date_range("13-01").is_none());
        assert!(date_range("2013-13").is_none());
    }

    #[test]
    fn prefixes_follow_range_semantics() {
        let day = date_range("2013-01-14").unwrap();
        let inside = date_range("2013-01-14T10:00:00Z").unwrap();
        let after = date_range("2013-01-15").unwrap();
        assert!(Prefix::Eq.matches(day.0, day.1, inside.0, inside.1));
        assert!(!Prefix::Eq.matches(day.0, day.1, after.0, after.1));
        assert!(Prefix::Gt.matches(day.0, day.1, after.0, after.1));
        assert!(Prefix::Sa.matches(day.0, day.1, after.0, after.1));
        assert!(Prefix::Ge.matches(day.0, day.1, inside.0, inside.1));
        assert!(!Prefix::Lt.matches(day.0, day.1, inside.0, inside.1));
        assert!(Prefix::Eb.matches(after.0, after.1, day.0, day.1));
        assert!(Prefix::Ne.matches(day.0, day.1, after.0, after.1));
        assert_eq!(Prefix::split("ge2013"), (Prefix::Ge, "2013"));
        assert_eq!(Prefix::split("2013"), (Prefix::Eq, "2013"));
        assert_eq!(Prefix::split("eq"), (Prefix::Eq, "eq"));
    }

    #[test]
    fn numbers_carry_precision() {
        assert_eq!(number_range("100"), Some((99.5, 100.5)));
        let (lo, hi) = number_range("100.0").unwrap();
        assert!((lo - 99.95).abs() < 1e-9 && (hi - 100.05).abs() < 1e-9);
        let (lo, hi) = number_range("1e2").unwrap();
        assert!((lo - 50.0).abs() < 1e-9 && (hi - 150.0).abs() < 1e-9);
    }

    #[test]
    fn folding_escapes_and_references() {
        assert_eq!(fold("Zoë Ångström"), "zoe angstrom");
        assert_eq!(split_escaped(r"a\,b,c", ','), ["a,b", "c"]);
        assert_eq!(
            split_once_escaped(r"http://x|a\|b", '|'),
            Some(("http://x".into(), "a|b".into()))
        );
        assert_eq!(reference_key("Patient/1"), Some(("Patient", "1")));
        assert_eq!(
            reference_key("http://h/fhir/Patient/1/_history/3"),
            Some(("Patient", "1"))
        );
        assert_eq!(reference_key("urn:uuid:abc"), None);
    }
}
