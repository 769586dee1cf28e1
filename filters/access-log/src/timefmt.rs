//! RFC 3339 timestamps in UTC with milliseconds (`2026-01-01T00:00:00.000Z`),
//! the form Envoy's `%START_TIME%` JSON users expect. No date crate: the
//! civil-calendar conversion is a few lines (H. Hinnant's algorithms).

const NANOS_PER_MS: u64 = 1_000_000;
const SECS_PER_DAY: u64 = 86_400;

/// Formats nanoseconds since the Unix epoch.
pub fn format_rfc3339_ms(unix_nanos: u64) -> String {
    let mut out = String::with_capacity(24);
    write_rfc3339_ms(&mut out, unix_nanos);
    out
}

/// Appends the [`format_rfc3339_ms`] form to `out` (records are written
/// into one buffer, without a temporary string per timestamp).
pub fn write_rfc3339_ms(out: &mut String, unix_nanos: u64) {
    let ms_total = unix_nanos / NANOS_PER_MS;
    let secs = ms_total / 1000;
    let rem = secs % SECS_PER_DAY;
    let (y, m, d) = civil_from_days((secs / SECS_PER_DAY) as i64);
    // Fixed-width digits by hand: `write!` costs more than the rest of a
    // record's numbers together (it runs once per record).
    let mut b = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for k in (at..at + width).rev() {
            b[k] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, y.clamp(0, 9999) as u64);
    put(5, 2, m.into());
    put(8, 2, d.into());
    put(11, 2, rem / 3600);
    put(14, 2, (rem % 3600) / 60);
    put(17, 2, rem % 60);
    put(20, 3, ms_total % 1000);
    out.push_str(std::str::from_utf8(&b).unwrap_or_default());
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (what [`format_rfc3339_ms`]
/// writes, plus any fraction length) into nanoseconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let t = s.get(r)?;
        if t.bytes().all(|c| c.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let rest = s.get(19..)?;
    let (frac, tail) = match rest.strip_prefix('.') {
        Some(r) => {
            let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            (&r[..end], &r[end..])
        }
        None => ("", rest),
    };
    if !matches!(tail, "Z" | "z" | "+00:00") {
        return None;
    }
    let mut nanos = 0u64;
    for (i, c) in frac.bytes().take(9).enumerate() {
        nanos += u64::from(c - b'0') * 10u64.pow(8 - i as u32);
    }
    let days = days_from_civil(y as i64, mo as u32, d as u32);
    let days = u64::try_from(days).ok()?;
    let secs = days * SECS_PER_DAY + h * 3600 + mi * 60 + sec;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339_ms(1_767_225_600_123_456_789),
            "2026-01-01T00:00:00.123Z"
        );
        // 2024-02-29 (leap day) 23:59:59.999
        assert_eq!(
            format_rfc3339_ms(1_709_251_199_999_000_000),
            "2024-02-29T23:59:59.999Z"
        );
    }

    #[test]
    fn parse_inverts_format() {
        for ns in [
            0u64,
            1_767_225_600_123_000_000,
            1_709_251_199_999_000_000,
            4_102_444_800_000_000_000,
        ] {
            assert_eq!(parse_rfc3339(&format_rfc3339_ms(ns)), Some(ns));
        }
        assert_eq!(
            parse_rfc3339("2026-01-01T00:00:00Z"),
            Some(1_767_225_600_000_000_000)
        );
        assert_eq!(
            parse_rfc3339("2026-01-01T00:00:00.5+00:00"),
            Some(1_767_225_600_500_000_000)
        );
        for bad in [
            "",
            "2026-01-01",
            "2026-13-01T00:00:00Z",
            "2026-01-01T00:00:00+01:00",
            "x026-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
