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
    /// From the protobuf `AsOf` (unset, or a `token`, which needs a region: `default`; see
    /// [`Point::from_proto_for`]).
    pub fn from_proto(as_of: Option<&amisim_proto::AsOf>, default: Point) -> Point {
        use amisim_proto::as_of::Point as P;
        match as_of.and_then(|a| a.point.as_ref()) {
            Some(P::Seq(s)) => Point::Seq(*s),
            Some(P::SimTimeMs(t)) => Point::SimTime(*t),
            Some(P::Token(_)) | None => default,
        }
    }
}

impl Point {
    /// From the protobuf `AsOf` as a node of `region` reads it: a `token` point is this
    /// region's seq in it (0 if the token does not name the region). Unset: `default`.
    pub fn from_proto_for(
        as_of: Option<&amisim_proto::AsOf>,
        default: Point,
        region: &str,
    ) -> Result<Point, String> {
        use amisim_proto::as_of::Point as P;
        match as_of.and_then(|a| a.point.as_ref()) {
            Some(P::Token(t)) => Ok(Point::Seq(
                parse_token(t)?
                    .into_iter()
                    .find(|(r, _)| r == region)
                    .map_or(0, |(_, s)| s),
            )),
            _ => Ok(Point::from_proto(as_of, default)),
        }
    }
}

/// Parses a consistency-token-shaped point, `us-east-1:12,eu-west-1:7`, into (region, seq)
/// pairs (a region given twice keeps its larger seq). Blank: no pairs.
pub fn parse_token(text: &str) -> Result<Vec<(String, u64)>, String> {
    let mut out: Vec<(String, u64)> = Vec::new();
    if text.trim().is_empty() {
        return Ok(out);
    }
    for pair in text.split(',') {
        let pair = pair.trim();
        let bad = || {
            format!(
                "{pair:?} is not region:seq (a point is region:seq pairs separated by commas, \
                 e.g. us-east-1:12,eu-west-1:7)"
            )
        };
        let (region, seq) = pair.rsplit_once(':').ok_or_else(bad)?;
        let region = region.trim();
        let ok_region = !region.is_empty()
            && region.len() <= 64
            && region.split('-').all(|p| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            });
        let seq: u64 = seq.trim().parse().map_err(|_| bad())?;
        if !ok_region {
            return Err(bad());
        }
        match out.iter_mut().find(|(r, _)| r == region) {
            Some((_, s)) => *s = (*s).max(seq),
            None => out.push((region.to_string(), seq)),
        }
    }
    Ok(out)
}

/// Parses a duration such as `90d`, `36h`, `15m`, `30s` or `500ms` (a bare number: seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90d, 36h, 15m, 30s or 500ms"))?;
    let secs = |k: u64| {
        n.checked_mul(k)
            .map(std::time::Duration::from_secs)
            .ok_or_else(|| format!("{s:?} is too long"))
    };
    match unit.trim() {
        "" | "s" => secs(1),
        "ms" => Ok(std::time::Duration::from_millis(n)),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => Err(format!(
            "{s:?} is not a duration like 90d, 36h, 15m, 30s or 500ms"
        )),
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
    fn tokens_and_durations() {
        assert_eq!(
            parse_token("us-east-1:12, eu-west-1:7,us-east-1:3").unwrap(),
            [("us-east-1".to_string(), 12), ("eu-west-1".to_string(), 7)]
        );
        assert!(parse_token("").unwrap().is_empty());
        for bad in ["us-east-1", "US:1", "us-east-1:x", ":1"] {
            assert!(parse_token(bad).is_err(), "{bad}");
        }
        let as_of = amisim_proto::AsOf {
            point: Some(amisim_proto::as_of::Point::Token("eu-west-1:7".into())),
        };
        assert_eq!(
            Point::from_proto_for(Some(&as_of), Point::Seq(1), "eu-west-1"),
            Ok(Point::Seq(7))
        );
        assert_eq!(
            Point::from_proto_for(Some(&as_of), Point::Seq(1), "us-east-1"),
            Ok(Point::Seq(0))
        );
        use std::time::Duration;
        assert_eq!(
            parse_duration("90d").unwrap(),
            Duration::from_secs(90 * 86_400)
        );
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("d").is_err());
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
