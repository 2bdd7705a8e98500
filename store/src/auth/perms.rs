//! Whether a user's permissions cover a requested key range.
//!
//! etcd names ranges three ways: an empty `range_end` is the single key, `range_end == "\0"`
//! is every key from `key` on, anything else is `[key, range_end)`. Here all three become
//! half-open intervals (a single key `k` is `[k, k\0)`), a user's permissions are merged into
//! disjoint sorted intervals once per auth change, and a request is allowed only when one
//! merged interval holds all of it. Merging matters: grants on `[a, b)` and `[b, c)` together
//! cover a request for `[a, c)`; and a grant on one key never covers a from-key request
//! starting there (etcd's GHSA-xg4h-6gfc-h4m8).

/// What a request does to a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// A half-open key interval; `end == None` is unbounded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Interval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

fn interval(key: &[u8], range_end: &[u8]) -> Interval {
    let end = match range_end {
        [] => {
            let mut e = key.to_vec();
            e.push(0);
            Some(e)
        }
        [0] => None,
        end => Some(end.to_vec()),
    };
    Interval {
        start: key.to_vec(),
        end,
    }
}

/// True when `key`/`range_end` name a non-empty range (what a permission must be).
pub fn is_valid_range(key: &[u8], range_end: &[u8]) -> bool {
    match range_end {
        [] | [0] => true,
        end => key < end,
    }
}

/// The ranges one user may access one way, merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    merged: Vec<Interval>,
}

impl RangeSet {
    /// Merges `(key, range_end)` permissions; invalid (empty) ranges grant nothing.
    pub fn new<'a>(ranges: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> RangeSet {
        let mut all: Vec<Interval> = ranges
            .into_iter()
            .filter(|(k, e)| is_valid_range(k, e))
            .map(|(k, e)| interval(k, e))
            .collect();
        all.sort_by(|a, b| a.start.cmp(&b.start));
        let mut merged: Vec<Interval> = Vec::with_capacity(all.len());
        for next in all {
            if let Some(last) = merged.last_mut() {
                // Overlapping or touching: extend the previous interval.
                let joins = match &last.end {
                    None => true,
                    Some(end) => next.start <= *end,
                };
                if joins {
                    last.end = match (last.end.take(), next.end) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        _ => None,
                    };
                    continue;
                }
            }
            merged.push(next);
        }
        RangeSet { merged }
    }

    /// True when the range `key`/`range_end` (etcd's naming) lies inside one merged
    /// interval. A range that names no key (`range_end <= key`) is judged by its start key.
    pub fn covers(&self, key: &[u8], range_end: &[u8]) -> bool {
        let want = if is_valid_range(key, range_end) {
            interval(key, range_end)
        } else {
            interval(key, &[])
        };
        // The last interval starting at or before the request's start is the only candidate.
        let i = self
            .merged
            .partition_point(|iv| iv.start.as_slice() <= want.start.as_slice());
        let Some(iv) = i.checked_sub(1).map(|i| &self.merged[i]) else {
            return false;
        };
        match (&iv.end, &want.end) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(have), Some(want)) => want <= have,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(perms: &[(&str, &str)]) -> RangeSet {
        RangeSet::new(perms.iter().map(|(k, e)| (k.as_bytes(), e.as_bytes())))
    }

    #[test]
    fn a_single_key_grant_covers_only_that_key() {
        let s = set(&[("foo", "")]);
        assert!(s.covers(b"foo", b""));
        assert!(!s.covers(b"fo", b""));
        assert!(!s.covers(b"foo\0", b""));
        assert!(!s.covers(b"foo", b"fop"), "the prefix foo* is more than the key");
        assert!(!s.covers(b"foo", b"\0"), "a from-key request is more than the key");
        assert!(s.covers(b"foo", b"foo\0"), "[foo, foo\\0) is exactly the key");
    }

    #[test]
    fn ranges_and_prefixes() {
        let s = set(&[("a", "c")]);
        assert!(s.covers(b"a", b""));
        assert!(s.covers(b"b", b"c"));
        assert!(s.covers(b"bzzz", b""));
        assert!(!s.covers(b"c", b""), "the end is exclusive");
        assert!(!s.covers(b"b", b"d"));
        assert!(!s.covers(b"a", b"\0"));
    }

    #[test]
    fn from_key_grants_cover_everything_after() {
        let s = set(&[("m", "\0")]);
        assert!(s.covers(b"m", b"\0"));
        assert!(s.covers(b"zzz", b""));
        assert!(s.covers(b"n", b"\0"));
        assert!(!s.covers(b"l", b"\0"));
        assert!(!s.covers(b"a", b""));
    }

    #[test]
    fn adjacent_and_overlapping_grants_merge() {
        let s = set(&[("b", "c"), ("a", "b"), ("c", ""), ("c\0", "e"), ("x", "z"), ("y", "\0")]);
        assert!(s.covers(b"a", b"e"));
        assert!(!s.covers(b"a", b"e\0"));
        assert!(s.covers(b"x", b"\0"));
        assert!(!s.covers(b"e", b""));
        assert!(!s.covers(b"d", b"y"), "a gap between e and x");
    }

    #[test]
    fn empty_ranges_grant_nothing_and_empty_requests_are_judged_by_their_start() {
        assert!(!is_valid_range(b"b", b"a"));
        assert!(!is_valid_range(b"a", b"a"));
        assert!(is_valid_range(b"a", b"\0"));
        assert!(is_valid_range(b"", b""));
        let s = set(&[("b", "a")]);
        assert!(!s.covers(b"b", b""));
        let s = set(&[("k", "")]);
        assert!(s.covers(b"k", b"a"));
        assert!(!s.covers(b"z", b"a"));
        assert!(!RangeSet::default().covers(b"", b""));
    }
}
