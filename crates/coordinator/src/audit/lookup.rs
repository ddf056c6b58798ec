//! LookupEvents across regions: each region's page (its own LookupEvents, newest first) merged
//! into one page, and a `next_token` that holds every region's position.
//!
//! A page of N is built from at most N records of each region still to read, asked from the
//! region's position; the merged list is ordered newest first (time descending, then region
//! name, each region's own order kept), cut at N. A region's new position is the `position` of
//! its last record taken (or unchanged if none was taken); a region whose records are all taken
//! and who said it had no more is done. Records added meanwhile never shift a page: every
//! position is a point in that region's log order.
//!
//! Token form (opaque to clients): `g1.<fingerprint>.<region>=<position>~…`, `-` for a region
//! not read yet; the fingerprint (FNV-1a of the attribute and time range) refuses a token used
//! with other parameters, as a node does.

use std::collections::BTreeMap;

use amisim_proto::TrailEvent;

/// Default and largest page size (CloudTrail's).
pub const MAX_RESULTS: u32 = 50;

/// Why a global token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not one this lookup returned")]
    Malformed,
    #[error("the token belongs to a lookup with other parameters")]
    OtherParameters,
    #[error("the token names region {0:?}, which this coordinator does not follow")]
    UnknownRegion(String),
}

/// Every region's position: `None` not read yet; absent from the map: done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Positions {
    pub fingerprint: u64,
    pub regions: BTreeMap<String, Option<String>>,
}

/// FNV-1a 64 of the parameters a token is bound to.
pub fn fingerprint(attributes: &[(String, String)], start: Option<u64>, end: Option<u64>) -> u64 {
    let text = format!("{attributes:?}|{start:?}|{end:?}");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Positions {
    /// The start: every region of `regions` not read yet.
    pub fn fresh(fingerprint: u64, regions: &[String]) -> Self {
        Positions {
            fingerprint,
            regions: regions.iter().map(|r| (r.clone(), None)).collect(),
        }
    }

    /// Parses a token made by [`Positions::token`] for the same parameters.
    pub fn parse(token: &str, fingerprint: u64, followed: &[String]) -> Result<Self, TokenError> {
        let rest = token.strip_prefix("g1.").ok_or(TokenError::Malformed)?;
        let (fp, body) = rest.split_once('.').ok_or(TokenError::Malformed)?;
        let fp = u64::from_str_radix(fp, 16).map_err(|_| TokenError::Malformed)?;
        if fp != fingerprint {
            return Err(TokenError::OtherParameters);
        }
        let mut regions = BTreeMap::new();
        for entry in body.split('~').filter(|e| !e.is_empty()) {
            let (region, pos) = entry.split_once('=').ok_or(TokenError::Malformed)?;
            if !followed.iter().any(|f| f == region) {
                return Err(TokenError::UnknownRegion(region.to_string()));
            }
            if pos.is_empty() || pos.contains('~') {
                return Err(TokenError::Malformed);
            }
            let pos = (pos != "-").then(|| pos.to_string());
            if regions.insert(region.to_string(), pos).is_some() {
                return Err(TokenError::Malformed);
            }
        }
        if regions.is_empty() {
            return Err(TokenError::Malformed);
        }
        Ok(Positions {
            fingerprint,
            regions,
        })
    }

    /// The token, or empty when every region is done.
    pub fn token(&self) -> String {
        if self.regions.is_empty() {
            return String::new();
        }
        let body: Vec<String> = self
            .regions
            .iter()
            .map(|(r, p)| format!("{r}={}", p.as_deref().unwrap_or("-")))
            .collect();
        format!("g1.{:016x}.{}", self.fingerprint, body.join("~"))
    }
}

/// One region's answer to its part of a page.
#[derive(Debug, Clone, Default)]
pub struct RegionPage {
    pub events: Vec<TrailEvent>,
    /// The region's own `next_token` (empty: it has nothing older).
    pub next_token: String,
}

/// Merges the regions' pages into one page of at most `max` records, newest first, and moves
/// `positions` past what was taken.
pub fn merge_pages(
    pages: BTreeMap<String, RegionPage>,
    max: usize,
    positions: &mut Positions,
) -> Vec<TrailEvent> {
    let mut all: Vec<(usize, String, TrailEvent)> = Vec::new();
    for (region, page) in &pages {
        for (i, e) in page.events.iter().enumerate() {
            all.push((i, region.clone(), e.clone()));
        }
    }
    // Newest first; ties by region, then each region's own order (stable).
    all.sort_by(|a, b| {
        b.2.event_time_ms
            .cmp(&a.2.event_time_ms)
            .then_with(|| a.1.cmp(&b.1))
            .then_with(|| a.0.cmp(&b.0))
    });
    all.truncate(max);
    let mut taken: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, region, _) in &all {
        *taken.entry(region.as_str()).or_default() += 1;
    }
    for (region, page) in &pages {
        let k = taken.get(region.as_str()).copied().unwrap_or(0);
        let exhausted = k == page.events.len() && page.next_token.is_empty();
        if exhausted {
            positions.regions.remove(region);
        } else if k > 0 {
            let pos = page.events[k - 1].position.clone();
            positions.regions.insert(region.clone(), Some(pos));
        }
    }
    all.into_iter()
        .map(|(_, _, mut e)| {
            // A node's position means nothing to the coordinator.
            e.position.clear();
            e
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(region: &str, time: u64, n: u32) -> TrailEvent {
        TrailEvent {
            event_id: format!("{region}-{n}"),
            event_time_ms: time,
            region: region.into(),
            position: format!("v1.x.{time}.1.{n}"),
            ..Default::default()
        }
    }

    #[test]
    fn tokens_round_trip_and_refuse_other_parameters() {
        let followed = vec!["eu-west-1".to_string(), "us-east-1".to_string()];
        let mut p = Positions::fresh(7, &followed);
        p.regions
            .insert("us-east-1".into(), Some("v1.ab.12.1.3".into()));
        let t = p.token();
        assert_eq!(Positions::parse(&t, 7, &followed), Ok(p));
        assert_eq!(
            Positions::parse(&t, 8, &followed),
            Err(TokenError::OtherParameters)
        );
        assert_eq!(
            Positions::parse(&t, 7, &followed[..1]),
            Err(TokenError::UnknownRegion("us-east-1".into()))
        );
        for bad in [
            "",
            "x",
            "g1.zz.a=b",
            "g1.0000000000000007.",
            "g1.0000000000000007.a",
        ] {
            assert!(Positions::parse(bad, 7, &followed).is_err(), "{bad}");
        }
        assert_ne!(
            fingerprint(&[], Some(1), None),
            fingerprint(&[], None, Some(1))
        );
    }

    #[test]
    fn pages_merge_newest_first_and_positions_move() {
        let regions = vec!["eu".to_string(), "us".to_string()];
        let mut p = Positions::fresh(1, &regions);
        let mut pages = BTreeMap::new();
        pages.insert(
            "us".to_string(),
            RegionPage {
                events: vec![ev("us", 9, 1), ev("us", 5, 2)],
                next_token: "more".into(),
            },
        );
        pages.insert(
            "eu".to_string(),
            RegionPage {
                events: vec![ev("eu", 9, 1), ev("eu", 1, 2)],
                next_token: String::new(),
            },
        );
        let page = merge_pages(pages, 3, &mut p);
        let ids: Vec<&str> = page.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, ["eu-1", "us-1", "us-2"]);
        assert!(page.iter().all(|e| e.position.is_empty()));
        assert_eq!(p.regions["eu"].as_deref(), Some("v1.x.9.1.1"));
        assert_eq!(p.regions["us"].as_deref(), Some("v1.x.5.1.2"));
        // the next page: eu's last record; us said it has more but returned none past it
        let mut pages = BTreeMap::new();
        pages.insert(
            "eu".to_string(),
            RegionPage {
                events: vec![ev("eu", 1, 2)],
                next_token: String::new(),
            },
        );
        pages.insert("us".to_string(), RegionPage::default());
        let page = merge_pages(pages, 3, &mut p);
        assert_eq!(page.len(), 1);
        assert!(p.regions.is_empty());
        assert_eq!(p.token(), "");
    }
}
