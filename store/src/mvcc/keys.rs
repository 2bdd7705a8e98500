//! Byte layouts of the MVCC keyspace.
//!
//! - A **revision key** is etcd's: 8-byte big-endian main revision, `_`, 8-byte big-endian
//!   sub revision, plus a trailing `t` for a tombstone. Sorting by bytes sorts by revision.
//! - An **index key** is the user key in an order-preserving escaped form followed by the
//!   16-byte revision, so all revisions of one key are adjacent and in revision order, and a
//!   byte range of user keys maps onto a byte range of index keys.
//! - The **lease** column family holds `l` ++ id (8 bytes BE) → granted TTL (8 bytes BE),
//!   and `k` ++ id (8 bytes BE) ++ user key → empty: the key is attached to the lease.

/// A point in the store's history: `main` is the store revision of a write request, `sub`
/// numbers the changes inside it (a Txn or DeleteRange touches several keys in one revision).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

impl Revision {
    pub const fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }
}

pub const REV_KEY_LEN: usize = 17;

/// Tag of a lease record in the lease column family.
pub const LEASE_RECORD: u8 = b'l';
/// Tag of a key-attached-to-lease entry in the lease column family.
pub const LEASE_ATTACHED: u8 = b'k';

/// `tag` ++ lease id (8 bytes BE).
pub fn lease_prefixed(tag: u8, id: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(tag);
    k.extend_from_slice(&(id as u64).to_be_bytes());
    k
}

/// The key of lease `id`'s record (its granted TTL).
pub fn lease_record_key(id: i64) -> Vec<u8> {
    lease_prefixed(LEASE_RECORD, id)
}

/// The key that records `key` as attached to lease `id`.
pub fn lease_attach_key(id: i64, key: &[u8]) -> Vec<u8> {
    let mut k = lease_prefixed(LEASE_ATTACHED, id);
    k.extend_from_slice(key);
    k
}

/// etcd's revision key (17 bytes, 18 with the tombstone mark).
pub fn revision_key(rev: Revision, tombstone: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(REV_KEY_LEN + 1);
    k.extend_from_slice(&(rev.main as u64).to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&(rev.sub as u64).to_be_bytes());
    if tombstone {
        k.push(b't');
    }
    k
}

/// Parses a revision key into its revision and tombstone mark; `None` for anything that is
/// not one.
pub fn parse_revision_key(k: &[u8]) -> Option<(Revision, bool)> {
    if k.len() != REV_KEY_LEN && k.len() != REV_KEY_LEN + 1 {
        return None;
    }
    if k[8] != b'_' {
        return None;
    }
    let main = u64::from_be_bytes(k[0..8].try_into().ok()?) as i64;
    let sub = u64::from_be_bytes(k[9..17].try_into().ok()?) as i64;
    let tomb = k.len() == REV_KEY_LEN + 1 && k[17] == b't';
    Some((Revision { main, sub }, tomb))
}

/// Escapes a user key so that byte order of encoded keys equals byte order of user keys and
/// no encoded key is a prefix of another: 0x00 becomes 0x00 0xFF, and 0x00 0x01 ends it.
pub fn encode_user_key(key: &[u8], out: &mut Vec<u8>) {
    for &b in key {
        if b == 0 {
            out.extend_from_slice(&[0, 0xFF]);
        } else {
            out.push(b);
        }
    }
    out.extend_from_slice(&[0, 1]);
}

/// The index key of `key` at `rev`.
pub fn index_key(key: &[u8], rev: Revision) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2 + 16);
    encode_user_key(key, &mut out);
    out.extend_from_slice(&(rev.main as u64).to_be_bytes());
    out.extend_from_slice(&(rev.sub as u64).to_be_bytes());
    out
}

/// Splits an index key into the encoded user key part and the revision.
pub fn split_index_key(k: &[u8]) -> Option<(&[u8], Revision)> {
    if k.len() < 18 {
        return None;
    }
    let (prefix, rev) = k.split_at(k.len() - 16);
    let main = u64::from_be_bytes(rev[0..8].try_into().ok()?) as i64;
    let sub = u64::from_be_bytes(rev[8..16].try_into().ok()?) as i64;
    Some((prefix, Revision { main, sub }))
}

/// Inverse of [`encode_user_key`] for the prefix part of an index key.
pub fn decode_user_key(enc: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(enc.len());
    let mut i = 0;
    while i < enc.len() {
        if enc[i] == 0 {
            match enc.get(i + 1) {
                Some(0xFF) => out.push(0),
                Some(1) if i + 2 == enc.len() => return Some(out),
                _ => return None,
            }
            i += 2;
        } else {
            out.push(enc[i]);
            i += 1;
        }
    }
    None
}

/// A request's key range in etcd's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRange {
    /// Exactly one key (empty `range_end`).
    Single(Vec<u8>),
    /// `[start, end)`; `end = None` means no upper bound (`range_end == "\0"`).
    Span { start: Vec<u8>, end: Option<Vec<u8>> },
}

impl KeyRange {
    /// Interprets `key`/`range_end` exactly as etcd does.
    pub fn new(key: &[u8], range_end: &[u8]) -> KeyRange {
        if range_end.is_empty() {
            KeyRange::Single(key.to_vec())
        } else if range_end == [0] {
            KeyRange::Span {
                start: key.to_vec(),
                end: None,
            }
        } else {
            KeyRange::Span {
                start: key.to_vec(),
                end: Some(range_end.to_vec()),
            }
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        match self {
            KeyRange::Single(s) => s.as_slice() == k,
            KeyRange::Span { start, end } => k >= start.as_slice() && end.as_deref().is_none_or(|e| k < e),
        }
    }

    /// True when no key can fall in the range (`key >= range_end`).
    pub fn is_empty(&self) -> bool {
        match self {
            KeyRange::Single(_) => false,
            KeyRange::Span { start, end: Some(e) } => start.as_slice() >= e.as_slice(),
            KeyRange::Span { end: None, .. } => false,
        }
    }

    /// True when the two ranges share at least one key.
    pub fn overlaps(&self, other: &KeyRange) -> bool {
        if self.is_empty() || other.is_empty() {
            return false;
        }
        let (a_lo, a_hi) = self.bounds();
        let (b_lo, b_hi) = other.bounds();
        // [a_lo, a_hi) ∩ [b_lo, b_hi) ≠ ∅, with single keys as closed points.
        let lo_ok = |lo: &[u8], hi: &Bound<'_>| match hi {
            Bound::Unbounded => true,
            Bound::Excluded(h) => lo < *h,
            Bound::Included(h) => lo <= *h,
        };
        lo_ok(a_lo, &b_hi) && lo_ok(b_lo, &a_hi)
    }

    fn bounds(&self) -> (&[u8], Bound<'_>) {
        match self {
            KeyRange::Single(k) => (k, Bound::Included(k)),
            KeyRange::Span { start, end: Some(e) } => (start, Bound::Excluded(e)),
            KeyRange::Span { start, end: None } => (start, Bound::Unbounded),
        }
    }

    /// Lower and upper bounds of the range in the index keyspace.
    pub fn index_bounds(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        match self {
            KeyRange::Single(k) => {
                let mut lo = Vec::new();
                encode_user_key(k, &mut lo);
                let mut hi = lo.clone();
                // Every index key of `k` is `enc(k) ++ 16 bytes`; 0xFF.. bounds them.
                hi.extend_from_slice(&[0xFF; 17]);
                (lo, Some(hi))
            }
            KeyRange::Span { start, end } => {
                let mut lo = Vec::new();
                encode_user_key(start, &mut lo);
                let hi = end.as_ref().map(|e| {
                    let mut hi = Vec::new();
                    encode_user_key(e, &mut hi);
                    hi
                });
                (lo, hi)
            }
        }
    }
}

enum Bound<'a> {
    Included(&'a [u8]),
    Excluded(&'a [u8]),
    Unbounded,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_key_round_trip_and_order() {
        let a = revision_key(Revision::new(5, 0), false);
        let b = revision_key(Revision::new(5, 1), true);
        let c = revision_key(Revision::new(300, 0), false);
        assert_eq!(a.len(), 17);
        assert_eq!(b.len(), 18);
        assert!(a < b && b < c);
        assert_eq!(parse_revision_key(&b), Some((Revision::new(5, 1), true)));
        assert_eq!(parse_revision_key(&c), Some((Revision::new(300, 0), false)));
        assert_eq!(parse_revision_key(b"short"), None);
    }

    #[test]
    fn user_key_encoding_preserves_order_and_prefix_freedom() {
        let keys: Vec<&[u8]> = vec![b"", b"\0", b"\0\0", b"\0a", b"a", b"a\0", b"a\0b", b"ab", b"b", b"\xff"];
        let enc: Vec<Vec<u8>> = keys
            .iter()
            .map(|k| {
                let mut v = Vec::new();
                encode_user_key(k, &mut v);
                v
            })
            .collect();
        for i in 0..keys.len() {
            assert_eq!(decode_user_key(&enc[i]).unwrap(), keys[i]);
            for j in 0..keys.len() {
                assert_eq!(
                    keys[i].cmp(keys[j]),
                    enc[i].cmp(&enc[j]),
                    "{:?} vs {:?}",
                    keys[i],
                    keys[j]
                );
                if i != j {
                    assert!(!enc[j].starts_with(&enc[i]));
                }
            }
        }
    }

    #[test]
    fn index_keys_group_revisions_of_one_key() {
        let k1 = index_key(b"a", Revision::new(2, 0));
        let k2 = index_key(b"a", Revision::new(10, 3));
        let k3 = index_key(b"a\0", Revision::new(1, 0));
        assert!(k1 < k2 && k2 < k3);
        let (p, r) = split_index_key(&k2).unwrap();
        assert_eq!(decode_user_key(p).unwrap(), b"a");
        assert_eq!(r, Revision::new(10, 3));
    }

    #[test]
    fn key_range_semantics() {
        assert!(KeyRange::new(b"a", b"").contains(b"a"));
        assert!(!KeyRange::new(b"a", b"").contains(b"ab"));
        let from = KeyRange::new(b"b", b"\0");
        assert!(from.contains(b"zzz") && !from.contains(b"a"));
        let all = KeyRange::new(b"\0", b"\0");
        assert!(all.contains(b"\0") && all.contains(b"\xff\xff"));
        let prefix = KeyRange::new(b"foo", b"fop");
        assert!(prefix.contains(b"foo/bar") && !prefix.contains(b"fop"));
        assert!(KeyRange::new(b"b", b"a").is_empty());
        assert!(KeyRange::new(b"b", b"b").is_empty());
        assert!(!KeyRange::new(b"b", b"").is_empty());
    }

    #[test]
    fn overlaps() {
        let r = |a: &[u8], b: &[u8]| KeyRange::new(a, b);
        assert!(r(b"a", b"").overlaps(&r(b"a", b"")));
        assert!(!r(b"a", b"").overlaps(&r(b"b", b"")));
        assert!(r(b"a", b"c").overlaps(&r(b"b", b"")));
        assert!(!r(b"a", b"c").overlaps(&r(b"c", b"")));
        assert!(r(b"a", b"\0").overlaps(&r(b"zz", b"")));
        assert!(!r(b"a", b"b").overlaps(&r(b"b", b"c")));
        assert!(r(b"a", b"c").overlaps(&r(b"b", b"d")));
        assert!(!r(b"b", b"a").overlaps(&r(b"a", b"z")));
    }
}
