//! Parsing the points in history an auditor names: a seq or an ISO 8601 simulated time.

/// A point in a region's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// After the event with this seq (0: before any event).
    Seq(u64),
    /// After every event whose simulated time is at or before this (ms since the Unix epoch).
    SimTime(u64),
}

impl Point {
    /// From the protobuf `AsOf` (unset: `default`).
    pub fn from_proto(as_of: Option<&amisim_proto::AsOf>, default: Point) -> Point {
        use amisim_proto::as_of::Point as P;
        match as_of.and_then(|a| a.point) {
            Some(P::Seq(s)) => Point::Seq(s),
            Some(P::SimTimeMs(t)) => Point::SimTime(t),
            None => default,
        }
    }
}

impl std::str::FromStr for Point {
    type Err = String;

    /// `123` (a seq) or an ISO 8601 UTC time (`2024-05-01T12:00:00Z`, optional fraction,
    /// `Z` / `+00:00` / no offset).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse()
                .map(Point::Seq)
                .map_err(|_| format!("seq {s} is out of range"));
        }
        parse_iso_ms(s).map(Point::SimTime)
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff][Z|+00:00]` (or a date alone, `YYYY-MM-DD`: midnight) as ms
/// since the Unix epoch, UTC.
pub fn parse_iso_ms(s: &str) -> Result<u64, String> {
    let err =
        || format!("{s:?} is neither a seq nor an ISO 8601 UTC time like 2024-05-01T12:00:00Z");
    let s = s.trim();
    let body = s
        .strip_suffix('Z')
        .or_else(|| s.strip_suffix("+00:00"))
        .unwrap_or(s);
    let (date, time) = match body.split_once(['T', ' ']) {
        Some((d, t)) => (d, Some(t)),
        None => (body, None),
    };
    let mut d = date.split('-');
    let (Some(y), Some(mo), Some(da), None) = (d.next(), d.next(), d.next(), d.next()) else {
        return Err(err());
    };
    let num = |v: &str, lo: u64, hi: u64| -> Result<u64, String> {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        v.parse::<u64>()
            .ok()
            .filter(|n| (lo..=hi).contains(n))
            .ok_or_else(err)
    };
    let (y, mo, da) = (num(y, 1970, 9999)?, num(mo, 1, 12)?, num(da, 1, 31)?);
    let (mut h, mut mi, mut sec, mut ms) = (0, 0, 0, 0);
    if let Some(t) = time {
        let (hms, frac) = match t.split_once('.') {
            Some((a, b)) => (a, Some(b)),
            None => (t, None),
        };
        let mut parts = hms.split(':');
        let (Some(hh), Some(mm), ss, None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(err());
        };
        h = num(hh, 0, 23)?;
        mi = num(mm, 0, 59)?;
        sec = ss.map(|s| num(s, 0, 60)).transpose()?.unwrap_or(0);
        if let Some(f) = frac {
            if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
            let digits: String = f.chars().chain("000".chars()).take(3).collect();
            ms = digits.parse::<u64>().map_err(|_| err())?;
        }
    }
    let days = days_from_civil(y as i64, mo as u32, da as u32);
    let days = u64::try_from(days).map_err(|_| err())?;
    Ok(((days * 86_400 + h * 3600 + mi * 60 + sec) * 1000) + ms)
}

// Howard Hinnant's civil date -> days algorithm (the inverse of amisim_core::time).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = (y - era * 400) as u64;
    let mp = if m > 2 { m - 3 } else { m + 9 } as u64;
    let doy = (153 * mp + 2) / 5 + d as u64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe as i64 - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_core_iso() {
        for ms in [
            0,
            1_714_521_600_000,
            1_714_521_600_123,
            951_782_400_000,
            4_102_444_799_999,
        ] {
            assert_eq!(parse_iso_ms(&amisim_core::time::iso(ms)).unwrap(), ms);
        }
        assert_eq!(parse_iso_ms("2024-05-01").unwrap(), 1_714_521_600_000);
        assert_eq!(
            parse_iso_ms("2024-05-01T00:00:00+00:00").unwrap(),
            1_714_521_600_000
        );
        assert_eq!(
            parse_iso_ms("2024-05-01T00:00:00.5Z").unwrap(),
            1_714_521_600_500
        );
    }

    #[test]
    fn points() {
        assert_eq!("42".parse::<Point>().unwrap(), Point::Seq(42));
        assert_eq!(
            "2024-05-01T00:00:00Z".parse::<Point>().unwrap(),
            Point::SimTime(1_714_521_600_000)
        );
        for bad in [
            "",
            "x",
            "2024-13-01",
            "2024-05-01T25:00:00Z",
            "2024-05-01T00:00:00.Z",
            "-1",
        ] {
            assert!(bad.parse::<Point>().is_err(), "{bad}");
        }
    }
}
