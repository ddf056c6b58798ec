//! Describe-call filters and pagination (EC2_SEMANTICS.md §4.6), shared by every Describe.
//!
//! Filters: names and values are case-sensitive; the values of one filter are ORed, filters are
//! ANDed; `*` matches any run of characters and `?` one character (`\` escapes either).
//! Pagination: results are in id order; `next_token` is an opaque token naming the last id
//! returned, so a page never repeats or skips an item even while resources come and go.

use amisim_proto::Filter;

use crate::error::{Ec2Error, Ec2Result, ErrorCode};
use crate::state::Tags;

/// Wildcard match of `pattern` (with `*`, `?`, `\` escapes) against `value`.
pub fn wildcard_match(pattern: &str, value: &str) -> bool {
    // Tokenise the pattern: Some(c) literal, None for `*`, Some('\0')-free: '?' as special.
    #[derive(Clone, Copy)]
    enum T {
        Lit(char),
        Any,
        One,
    }
    let mut toks = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => toks.push(T::Lit(chars.next().unwrap_or('\\'))),
            '*' => toks.push(T::Any),
            '?' => toks.push(T::One),
            c => toks.push(T::Lit(c)),
        }
    }
    let v: Vec<char> = value.chars().collect();
    // Iterative glob matching with backtracking to the last `*`.
    let (mut p, mut i) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while i < v.len() {
        match toks.get(p) {
            Some(T::Lit(c)) if *c == v[i] => {
                p += 1;
                i += 1;
            }
            Some(T::One) => {
                p += 1;
                i += 1;
            }
            Some(T::Any) => {
                star = Some((p, i));
                p += 1;
            }
            _ => match star {
                Some((sp, si)) => {
                    p = sp + 1;
                    i = si + 1;
                    star = Some((sp, si + 1));
                }
                None => return false,
            },
        }
    }
    toks[p..].iter().all(|t| matches!(t, T::Any))
}

/// Checks every filter name against the names a Describe supports (plus `tag:<key>` and
/// `tag-key`): an unknown one gets `InvalidParameterValue` `The filter '<name>' is invalid`
/// (`[unconfirmed]` code, EC2_SEMANTICS.md §4.6). A filter without values is
/// `InvalidParameterValue` too.
pub fn check_filters(filters: &[Filter], known: &[&str]) -> Ec2Result<()> {
    for f in filters {
        let ok = known.contains(&f.name.as_str())
            || f.name == "tag-key"
            || (f.name.starts_with("tag:") && f.name.len() > 4);
        if !ok {
            return Err(Ec2Error::new(
                ErrorCode::InvalidParameterValue,
                format!("The filter '{}' is invalid", f.name),
            ));
        }
        if f.values.is_empty() {
            return Err(Ec2Error::new(
                ErrorCode::InvalidParameterValue,
                format!("The filter '{}' requires at least one value", f.name),
            ));
        }
    }
    Ok(())
}

/// True if a resource passes every filter. `values_of(name)` returns the resource's values for
/// a non-tag filter name (already checked with [`check_filters`]); tags are handled here.
pub fn matches(filters: &[Filter], tags: &Tags, values_of: impl Fn(&str) -> Vec<String>) -> bool {
    filters.iter().all(|f| {
        let values: Vec<String> = if let Some(key) = f.name.strip_prefix("tag:") {
            tags.get(key).cloned().into_iter().collect()
        } else if f.name == "tag-key" {
            tags.keys().cloned().collect()
        } else {
            values_of(&f.name)
        };
        values
            .iter()
            .any(|v| f.values.iter().any(|p| wildcard_match(p, v)))
    })
}

/// Formats a boolean as EC2 filter values do.
pub fn bool_str(b: bool) -> String {
    if b { "true" } else { "false" }.to_string()
}

/// A validated page request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Items per page; `None` means everything.
    pub max: Option<usize>,
    /// Resume after this key.
    pub after: Option<String>,
}

/// Validates `max_results`/`next_token`: `max_results` must be `min..` (larger than 1000 means
/// 1000) and may not be combined with explicit ids (`InvalidParameterCombination`); a token that
/// is not one of ours gets `InvalidNextToken`.
pub fn page(
    max_results: Option<i32>,
    next_token: &str,
    ids_given: bool,
    min: i32,
) -> Ec2Result<Page> {
    let max = match max_results {
        None => None,
        Some(_) if ids_given => {
            return Err(Ec2Error::new(
                ErrorCode::InvalidParameterCombination,
                "The parameter MaxResults cannot be used with the parameter ids",
            ))
        }
        Some(n) if n < min => {
            return Err(Ec2Error::new(
                ErrorCode::InvalidParameterValue,
                format!("Value ( {n} ) for parameter maxResults is invalid. Parameter must be between {min} and 1000."),
            ))
        }
        Some(n) => Some(n.min(1000) as usize),
    };
    let after = if next_token.is_empty() {
        None
    } else {
        Some(decode_token(next_token).ok_or_else(|| {
            Ec2Error::new(ErrorCode::InvalidNextToken, "The token provided is invalid")
        })?)
    };
    Ok(Page { max, after })
}

fn encode_token(key: &str) -> String {
    hex::encode(format!("amisim1:{key}"))
}

fn decode_token(token: &str) -> Option<String> {
    let bytes = hex::decode(token).ok()?;
    let s = String::from_utf8(bytes).ok()?;
    s.strip_prefix("amisim1:").map(str::to_string)
}

/// Takes one page from items sorted by key (after `page.after`), returning them and the token of
/// the next page (empty when this is the last).
pub fn paginate<T>(items: impl Iterator<Item = (String, T)>, page: &Page) -> (Vec<T>, String) {
    let mut out = Vec::new();
    let mut last_key = String::new();
    let mut iter = items.filter(|(k, _)| page.after.as_ref().is_none_or(|a| k > a));
    for (k, item) in iter.by_ref() {
        if page.max.is_some_and(|m| out.len() >= m) {
            return (out, encode_token(&last_key));
        }
        last_key = k;
        out.push(item);
    }
    (out, String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard_match("ubuntu-*", "ubuntu-22.04"));
        assert!(wildcard_match("2021-09-29T*", "2021-09-29T12:00:00.000Z"));
        assert!(wildcard_match("a?c", "abc"));
        assert!(!wildcard_match("a?c", "ac"));
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("*b*", "abc"));
        assert!(!wildcard_match("Ubuntu*", "ubuntu"), "case-sensitive");
        assert!(wildcard_match("a\\*", "a*"));
        assert!(!wildcard_match("a\\*", "ab"));
        assert!(wildcard_match("a*b*c", "aXbYbZc"));
    }

    #[test]
    fn unknown_filter_is_rejected() {
        let f = vec![Filter {
            name: "colour".into(),
            values: vec!["red".into()],
        }];
        let e = check_filters(&f, &["state"]).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParameterValue);
        assert_eq!(e.message, "The filter 'colour' is invalid");
        let ok = vec![Filter {
            name: "tag:Name".into(),
            values: vec!["x".into()],
        }];
        assert!(check_filters(&ok, &["state"]).is_ok());
    }

    #[test]
    fn values_or_filters_and() {
        let mut tags = Tags::new();
        tags.insert("env".into(), "prod".into());
        let f = vec![
            Filter {
                name: "state".into(),
                values: vec!["pending".into(), "available".into()],
            },
            Filter {
                name: "tag:env".into(),
                values: vec!["pr*".into()],
            },
        ];
        assert!(matches(&f, &tags, |_| vec!["available".into()]));
        assert!(!matches(&f, &tags, |_| vec!["failed".into()]));
        assert!(!matches(&f, &Tags::new(), |_| vec!["available".into()]));
    }

    #[test]
    fn pagination_walks_every_item_once() {
        let keys: Vec<String> = (0..12).map(|i| format!("k{i:02}")).collect();
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let p = page(Some(5), &token, false, 5).unwrap();
            let (items, next) = paginate(keys.iter().map(|k| (k.clone(), k.clone())), &p);
            seen.extend(items);
            if next.is_empty() {
                break;
            }
            token = next;
        }
        assert_eq!(seen, keys);
    }

    #[test]
    fn page_checks() {
        assert_eq!(
            page(Some(4), "", false, 5).unwrap_err().code,
            ErrorCode::InvalidParameterValue
        );
        assert_eq!(
            page(Some(5), "", true, 5).unwrap_err().code,
            ErrorCode::InvalidParameterCombination
        );
        assert_eq!(
            page(None, "garbage", false, 5).unwrap_err().code,
            ErrorCode::InvalidNextToken
        );
        assert_eq!(page(Some(5000), "", false, 5).unwrap().max, Some(1000));
    }
}
