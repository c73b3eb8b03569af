//! Time representations shared across ntpscope, with no clock reads.
//!
//! - Capture and database times are `i64` nanoseconds since the Unix epoch (UTC). Integers sort and
//!   compare correctly everywhere (SQLite, PostgreSQL, MIN/MAX upserts), unlike text timestamps.
//! - NTP timestamps stay raw `u64` (32.32 fixed point seconds since 1900) on the wire; they are
//!   converted to Unix time only for display, resolving the NTP era against a nearby reference time.
//! - RFC 3339 with nine fraction digits is the only human-facing text form.

/// Seconds between the NTP epoch (1900-01-01) and the Unix epoch (1970-01-01).
pub const NTP_UNIX_OFFSET_SECS: i64 = 2_208_988_800;

const NANOS_PER_SEC: i64 = 1_000_000_000;
const SECS_PER_DAY: i64 = 86_400;
/// Length of one NTP era (2^32 seconds) in seconds.
const ERA_SECS: i64 = 1 << 32;

/// Converts a 32.32 NTP timestamp to Unix nanoseconds, choosing the NTP era that puts the result
/// closest to `pivot_ns` (normally the packet's capture time).
///
/// An all-zero timestamp means "unknown" in NTP; callers should test for it before converting.
pub fn ntp_to_unix_ns(ts: u64, pivot_ns: i64) -> i64 {
    let secs_in_era = (ts >> 32) as i64;
    let frac = ts & 0xffff_ffff;
    let frac_ns = ((frac * 1_000_000_000) >> 32) as i64;
    let pivot_ntp_secs = pivot_ns.div_euclid(NANOS_PER_SEC) + NTP_UNIX_OFFSET_SECS;
    // Pick the era so that the result lies within half an era of the pivot.
    let era = (pivot_ntp_secs - secs_in_era + ERA_SECS / 2).div_euclid(ERA_SECS);
    let ntp_secs = era * ERA_SECS + secs_in_era;
    (ntp_secs - NTP_UNIX_OFFSET_SECS).saturating_mul(NANOS_PER_SEC).saturating_add(frac_ns)
}

/// Converts Unix nanoseconds to a 32.32 NTP timestamp (era dropped, as on the wire).
pub fn unix_ns_to_ntp(ns: i64) -> u64 {
    let secs = ns.div_euclid(NANOS_PER_SEC) + NTP_UNIX_OFFSET_SECS;
    let sub_ns = ns.rem_euclid(NANOS_PER_SEC) as u64;
    let frac = (sub_ns << 32).div_ceil(NANOS_PER_SEC as u64);
    ((secs as u64 & 0xffff_ffff) << 32) | (frac & 0xffff_ffff)
}

/// Signed difference `a - b` of two NTP timestamps in seconds, valid when they are less than 68
/// years apart (the NTP wrap-around rule of RFC 5905).
pub fn ntp_diff_seconds(a: u64, b: u64) -> f64 {
    let d = a.wrapping_sub(b) as i64;
    d as f64 / 4_294_967_296.0
}

/// Converts an NTP short format value (16.16 fixed point, root delay and dispersion) to seconds.
pub fn ntp_short_to_seconds(v: u32) -> f64 {
    f64::from(v) / 65_536.0
}

/// Formats Unix nanoseconds as RFC 3339 UTC with nine fraction digits, e.g.
/// `2019-05-30T20:03:34.027454000Z`.
pub fn format_rfc3339(ns: i64) -> String {
    String::from_utf8_lossy(&rfc3339_bytes(ns)).into_owned()
}

/// [`format_rfc3339`] without an allocation, for the API's hot path (a page of 100 rows prints
/// 800–900 of them). Every `i64` of nanoseconds lies in the years 1677–2262, so the text is
/// always these 30 bytes. The date comes from [`gregorian_from_days`] and the digits two at a
/// time from a table, all in `u32` arithmetic (4 % of a page's CPU before, `perf`;
/// docs/performance.md).
pub fn rfc3339_bytes(ns: i64) -> [u8; 30] {
    let secs = ns.div_euclid(NANOS_PER_SEC);
    let sub = ns.rem_euclid(NANOS_PER_SEC) as u32;
    let (y, m, d) = gregorian_from_days(secs.div_euclid(SECS_PER_DAY) as i32);
    let sod = secs.rem_euclid(SECS_PER_DAY) as u32;
    let mut out = *b"0000-00-00T00:00:00.000000000Z";
    let mut put2 = |at: usize, v: u32| out[at..at + 2].copy_from_slice(&DIGIT_PAIRS[v as usize % 100]);
    put2(0, y / 100);
    put2(2, y % 100);
    put2(5, m);
    put2(8, d);
    put2(11, sod / 3600);
    put2(14, sod / 60 % 60);
    put2(17, sod % 60);
    let rest = sub % 100_000_000;
    let (hi, lo) = (rest / 10_000, rest % 10_000);
    put2(21, hi / 100);
    put2(23, hi % 100);
    put2(25, lo / 100);
    put2(27, lo % 100);
    out[20] = b'0' + (sub / 100_000_000) as u8;
    out
}

/// Year, month and day of a day count since 1970-01-01, for every day an `i64` of nanoseconds
/// reaches (±106 752): Neri and Schneider's calendar algorithm ("Euclidean affine functions and
/// their application to calendar algorithms", 2022), which needs no 64-bit division. The test
/// checks it against Hinnant's `civil_from_days` over the whole range.
fn gregorian_from_days(days: i32) -> (u32, u32, u32) {
    // Shifted by 82 cycles of 400 years, so every day in range counts from a positive number.
    const CYCLES: u32 = 82;
    const SHIFT: u32 = 719_468 + 146_097 * CYCLES;
    let n = days.wrapping_add_unsigned(SHIFT) as u32;
    let n1 = 4 * n + 3;
    let century = n1 / 146_097;
    let n2 = (n1 % 146_097) | 3;
    let p2 = 2_939_745 * u64::from(n2);
    let year_of_century = (p2 >> 32) as u32;
    let day_of_year = (p2 as u32) / 2_939_745 / 4;
    let n3 = 2_141 * day_of_year + 197_913;
    let (month, day) = (n3 >> 16, (n3 & 0xffff) / 2_141 + 1);
    let jan_feb = day_of_year >= 306;
    let year = 100 * century + year_of_century + u32::from(jan_feb) - 400 * CYCLES;
    (year, if jan_feb { month - 12 } else { month }, day)
}

/// The two ASCII digits of every number below 100.
const DIGIT_PAIRS: [[u8; 2]; 100] = {
    let mut t = [[0; 2]; 100];
    let mut i = 0;
    while i < 100 {
        t[i] = [b'0' + (i / 10) as u8, b'0' + (i % 10) as u8];
        i += 1;
    }
    t
};

/// Parses an RFC 3339 date-time (`2024-01-02T03:04:05Z`, optional fraction up to nanoseconds,
/// `Z` or a `±hh:mm` offset) into Unix nanoseconds. Returns `None` for anything else.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) { part.parse().ok() } else { None }
    };
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut idx = 19;
    let mut frac_ns = 0i64;
    if b.get(idx) == Some(&b'.') {
        idx += 1;
        let start = idx;
        while idx < b.len() && b[idx].is_ascii_digit() {
            idx += 1;
        }
        let digits = idx - start;
        if digits == 0 || digits > 9 {
            return None;
        }
        frac_ns = num(start..idx)? * 10i64.pow(9 - digits as u32);
    }
    let offset_secs = match b.get(idx..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let oh = i64::from(h1 - b'0') * 10 + i64::from(h2 - b'0');
            let om = i64::from(m1 - b'0') * 10 + i64::from(m2 - b'0');
            if oh > 23 || om > 59 {
                return None;
            }
            let v = oh * 3600 + om * 60;
            if *sign == b'-' { -v } else { v }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * SECS_PER_DAY + h * 3600 + mi * 60 + sec.min(59) - offset_secs;
    secs.checked_mul(NANOS_PER_SEC)?.checked_add(frac_ns)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
#[cfg(test)]
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Howard Hinnant's `days_from_civil`: (year, month, day) to days since 1970-01-01.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        // 2019-05-30T20:03:34.027454Z is frame 1 of zeek-ntp.pcap (tshark frame.time_epoch).
        assert_eq!(format_rfc3339(1_559_246_614_027_454_000), "2019-05-30T20:03:34.027454000Z");
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59.999999999Z");
        // Leap day.
        assert_eq!(format_rfc3339(951_782_400 * NANOS_PER_SEC), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn both_calendar_algorithms_agree_on_every_day_in_range() {
        let days = |ns: i64| ns.div_euclid(NANOS_PER_SEC).div_euclid(SECS_PER_DAY);
        for day in days(i64::MIN)..=days(i64::MAX) {
            let (y, m, d) = gregorian_from_days(day as i32);
            assert_eq!((i64::from(y), i64::from(m), i64::from(d)), civil_from_days(day), "day {day}");
        }
    }

    #[test]
    fn the_allocation_free_form_is_the_same_text() {
        // An independent oracle: the same calendar arithmetic printed by `format!`.
        let oracle = |ns: i64| {
            let secs = ns.div_euclid(NANOS_PER_SEC);
            let sub = ns.rem_euclid(NANOS_PER_SEC);
            let (y, m, d) = civil_from_days(secs.div_euclid(SECS_PER_DAY));
            let sod = secs.rem_euclid(SECS_PER_DAY);
            format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{sub:09}Z", sod / 3600, (sod / 60) % 60, sod % 60)
        };
        // Random instants over the whole i64 range (a 64-bit LCG walk), and its edges.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut all = vec![0, -1, 1, i64::MIN, i64::MAX, 951_782_400 * NANOS_PER_SEC];
        for _ in 0..20_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            all.push(x as i64);
        }
        for ns in all {
            assert_eq!(std::str::from_utf8(&rfc3339_bytes(ns)).ok(), Some(oracle(ns).as_str()), "{ns}");
        }
    }

    #[test]
    fn parses_what_it_formats_and_offsets() {
        for ns in [0, 1_559_246_614_027_454_000, -1, 4_102_444_800_123_456_789] {
            assert_eq!(parse_rfc3339(&format_rfc3339(ns)), Some(ns));
        }
        assert_eq!(parse_rfc3339("2019-05-30T22:03:34.5+02:00"), Some(1_559_246_614_500_000_000));
        assert_eq!(parse_rfc3339("2019-05-30T20:03:34Z"), Some(1_559_246_614_000_000_000));
        for bad in [
            "",
            "2019-05-30",
            "2019-13-30T20:03:34Z",
            "2019-02-30T20:03:34Z",
            "2019-05-30T20:03:34",
            "2019-05-30T20:03:34.Z",
            "2019-05-30T20:03:34.1234567890Z",
            "2019-05-30T20:03:34+2:00",
            "2019-05-30T2a:03:34Z",
            "'; DROP TABLE ntp_clients; --",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn ntp_timestamps_resolve_to_the_era_of_the_pivot() {
        // Transmit timestamp e09ab59607050baa from zeek-ntp.pcap frame 1; tshark prints
        // "May 30, 2019 20:03:34.027420739 UTC".
        let ts = 0xe09a_b596_0705_0baa;
        let pivot = 1_559_246_614_027_454_000;
        assert_eq!(format_rfc3339(ntp_to_unix_ns(ts, pivot)), "2019-05-30T20:03:34.027420739Z");
        // After the 2036 rollover the same seconds field maps to era 1.
        let era1 = ntp_to_unix_ns(0x0000_0010_0000_0000, 2_085_978_496 * NANOS_PER_SEC + 100);
        assert_eq!(era1, (ERA_SECS - NTP_UNIX_OFFSET_SECS + 16) * NANOS_PER_SEC);
    }

    #[test]
    fn ntp_round_trip_is_within_a_nanosecond() {
        for ns in [1_559_246_614_027_454_000i64, 1_700_000_000_999_999_999, 1_483_228_800_000_000_001] {
            let back = ntp_to_unix_ns(unix_ns_to_ntp(ns), ns);
            assert!((back - ns).abs() <= 1, "{ns} -> {back}");
        }
    }

    #[test]
    fn differences_wrap_and_shorts_scale() {
        assert!((ntp_diff_seconds(0x0000_0001_8000_0000, 0x0000_0001_0000_0000) - 0.5).abs() < 1e-12);
        assert!((ntp_diff_seconds(0x0000_0000_0000_0000, 0xffff_ffff_8000_0000) - 0.5).abs() < 1e-12);
        assert!((ntp_diff_seconds(0x0000_0001_0000_0000, 0x0000_0001_8000_0000) + 0.5).abs() < 1e-12);
        assert!((ntp_short_to_seconds(0x0001_8000) - 1.5).abs() < 1e-12);
    }
}
