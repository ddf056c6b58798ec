//! [`ConsistencyToken`]: a point in the region logs, `region → seq` (DESIGN.md §4.4).
//!
//! A write to a region node returns `region:seq` (the seq of the last event it wrote) in the
//! response metadata `x-amisim-consistency-token`; a global read may pass a token and then sees
//! at least that point. The text form is `us-east-1:12,eu-west-1:7`, so a region node's
//! single-pair token is already a valid global token, and tokens from several writes combine by
//! joining them with commas (the larger seq of a region wins). The coordinator's answers carry
//! the point they reflect in the same form.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Region → the seq a reader must see at least. Empty: any point (no wait).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsistencyToken {
    seqs: BTreeMap<String, u64>,
}

/// Why a token could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid consistency token {token:?}: {why} (expected region:seq pairs separated by commas, \
     e.g. us-east-1:12,eu-west-1:7)"
)]
pub struct TokenError {
    /// The token as given.
    pub token: String,
    /// What is wrong with it.
    pub why: String,
}

impl ConsistencyToken {
    /// The empty token.
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises the requirement for `region` to at least `seq` (a merge: the larger seq wins).
    pub fn require(&mut self, region: impl Into<String>, seq: u64) {
        let e = self.seqs.entry(region.into()).or_insert(0);
        *e = (*e).max(seq);
    }

    /// `region → seq`, ordered by region.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.seqs.iter().map(|(r, s)| (r.as_str(), *s))
    }

    /// The seq required of `region` (0 if it is not named).
    pub fn get(&self, region: &str) -> u64 {
        self.seqs.get(region).copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Merges `other` into this token (per region, the larger seq).
    pub fn merge(&mut self, other: &ConsistencyToken) {
        for (r, s) in other.iter() {
            self.require(r, s);
        }
    }

    /// Parses the text form; blank text is the empty token. Spaces around pairs are ignored.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let err = |why: String| TokenError {
            token: text.to_string(),
            why,
        };
        let mut token = ConsistencyToken::new();
        if text.trim().is_empty() {
            return Ok(token);
        }
        for pair in text.split(',') {
            let pair = pair.trim();
            let (region, seq) = pair
                .rsplit_once(':')
                .ok_or_else(|| err(format!("{pair:?} has no ':'")))?;
            let region = region.trim();
            if !valid_region(region) {
                return Err(err(format!(
                    "{region:?} is not a region name (lowercase letters, digits, '-')"
                )));
            }
            let seq: u64 = seq
                .trim()
                .parse()
                .map_err(|_| err(format!("{:?} is not a sequence number", seq.trim())))?;
            token.require(region, seq);
        }
        Ok(token)
    }
}

/// `us-east-1`-shaped: lowercase ASCII letters and digits in `-`-separated non-empty parts.
fn valid_region(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.split('-').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

impl FromStr for ConsistencyToken {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for ConsistencyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (r, s) in &self.seqs {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{r}:{s}")?;
        }
        Ok(())
    }
}

impl<S: Into<String>> FromIterator<(S, u64)> for ConsistencyToken {
    fn from_iter<I: IntoIterator<Item = (S, u64)>>(iter: I) -> Self {
        let mut t = ConsistencyToken::new();
        for (r, s) in iter {
            t.require(r, s);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_global_and_the_region_form() {
        let t = ConsistencyToken::parse("us-east-1:12,eu-west-1:7").unwrap();
        assert_eq!(t.get("us-east-1"), 12);
        assert_eq!(t.get("eu-west-1"), 7);
        assert_eq!(t.get("ap-south-1"), 0);
        assert_eq!(t.to_string(), "eu-west-1:7,us-east-1:12");

        let t = ConsistencyToken::parse("us-east-1:3").unwrap();
        assert_eq!(t.iter().collect::<Vec<_>>(), [("us-east-1", 3)]);
    }

    #[test]
    fn blank_is_empty_and_repeats_take_the_max() {
        assert!(ConsistencyToken::parse("").unwrap().is_empty());
        assert!(ConsistencyToken::parse("  ").unwrap().is_empty());
        let t = ConsistencyToken::parse(" us-east-1:3 , us-east-1:9,us-east-1:4").unwrap();
        assert_eq!(t.to_string(), "us-east-1:9");
    }

    #[test]
    fn display_round_trips() {
        let t: ConsistencyToken = [("b-1", 2u64), ("a-1", 1)].into_iter().collect();
        assert_eq!(ConsistencyToken::parse(&t.to_string()).unwrap(), t);
    }

    #[test]
    fn bad_tokens_say_why() {
        for bad in [
            "us-east-1",
            "us-east-1:",
            "us-east-1:x",
            "us-east-1:-1",
            ":5",
            "US-EAST-1:5",
            "us-east-1:1,,eu-west-1:2",
            "us_east:1",
        ] {
            let e = ConsistencyToken::parse(bad).unwrap_err();
            assert_eq!(e.token, bad);
            assert!(e.to_string().contains("expected region:seq"), "{e}");
        }
    }
}
