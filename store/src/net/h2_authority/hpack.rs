//! Just enough HPACK (RFC 7541) to follow an HTTP/2 client's header compression table and
//! repair one field in place: an `:authority` that carries a URL scheme (see
//! [`super`] for why). Nothing here builds header maps; the HTTP/2 stack behind
//! the repair decodes the blocks itself.

use std::collections::VecDeque;

/// The dynamic table size every HTTP/2 decoder starts with (SETTINGS_HEADER_TABLE_SIZE's
/// default, which tonic's server keeps).
const INITIAL_TABLE_SIZE: usize = 4096;
/// Per-entry overhead the table size counts (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;

/// A header block the walk could not follow. The caller stops repairing the connection and
/// leaves judging the bytes to the HTTP/2 stack.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HpackError {
    #[error("header block ends inside a field")]
    Truncated,
    #[error("integer too large")]
    Overflow,
    #[error("index {0} is not in the table")]
    BadIndex(usize),
    #[error("invalid Huffman code")]
    Huffman,
    #[error("table size update to {0} above the {INITIAL_TABLE_SIZE} the server allows")]
    TableSize(usize),
}

/// One entry of the client's dynamic table, as far as the repair needs it.
#[derive(Debug, Clone, Copy)]
struct Entry {
    authority: bool,
    name_len: usize,
    size: usize,
}

/// The client's dynamic table: which entries are named `:authority`, and their sizes, so
/// that indices resolve as the client means them.
#[derive(Debug)]
pub struct ClientTable {
    entries: VecDeque<Entry>,
    size: usize,
    max: usize,
}

impl Default for ClientTable {
    fn default() -> Self {
        ClientTable {
            entries: VecDeque::new(),
            size: 0,
            max: INITIAL_TABLE_SIZE,
        }
    }
}

impl ClientTable {
    /// Walks one complete header block, updating the table as the client's encoder did.
    /// Returns the block with every schemed `:authority` literal replaced by a raw literal of
    /// the same kind holding only host and port, or `None` when nothing needed repair.
    pub fn repair(&mut self, block: &[u8]) -> Result<Option<Vec<u8>>, HpackError> {
        let mut edits: Vec<(std::ops::Range<usize>, Vec<u8>)> = Vec::new();
        let mut pos = 0;
        while pos < block.len() {
            let start = pos;
            let first = block[pos];
            if first & 0x80 != 0 {
                // Indexed field: a reference only; a repaired entry resolves to its repair.
                let idx = integer(block, &mut pos, 7)?;
                self.lookup(idx)?;
                continue;
            }
            if first & 0xe0 == 0x20 {
                let size = integer(block, &mut pos, 5)?;
                if size > INITIAL_TABLE_SIZE {
                    return Err(HpackError::TableSize(size));
                }
                self.max = size;
                self.evict(0);
                continue;
            }
            // Literal field: with incremental indexing (01), without indexing (0000) or never
            // indexed (0001).
            let indexing = first & 0x40 != 0;
            let prefix = if indexing { 6 } else { 4 };
            let name_idx = integer(block, &mut pos, prefix)?;
            let (authority, name_len) = if name_idx == 0 {
                let name = string(block, &mut pos)?;
                (name.as_slice() == b":authority", name.len())
            } else {
                let e = self.lookup(name_idx)?;
                (e.authority, e.name_len)
            };
            let name_end = pos;
            let value = string(block, &mut pos)?;
            if let Some(host) = strip_scheme(&value).filter(|_| authority) {
                let mut rep = block[start..name_end].to_vec();
                raw_string(&mut rep, host);
                edits.push((start..pos, rep));
            }
            if indexing {
                // The client's view of the entry: its original value's length.
                self.insert(Entry {
                    authority,
                    name_len,
                    size: name_len + value.len() + ENTRY_OVERHEAD,
                });
            }
        }
        if edits.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(block.len());
        let mut at = 0;
        for (range, rep) in edits {
            out.extend_from_slice(&block[at..range.start]);
            out.extend_from_slice(&rep);
            at = range.end;
        }
        out.extend_from_slice(&block[at..]);
        Ok(Some(out))
    }

    fn lookup(&self, idx: usize) -> Result<Entry, HpackError> {
        match idx {
            0 => Err(HpackError::BadIndex(0)),
            1..=61 => {
                let name = STATIC_NAMES[idx - 1];
                Ok(Entry {
                    authority: idx == 1,
                    name_len: name.len(),
                    size: 0,
                })
            }
            _ => self.entries.get(idx - 62).copied().ok_or(HpackError::BadIndex(idx)),
        }
    }

    fn insert(&mut self, e: Entry) {
        if e.size > self.max {
            // An entry larger than the table empties it and is not added (RFC 7541 §4.4).
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict(e.size);
        self.size += e.size;
        self.entries.push_front(e);
    }

    /// Evicts the oldest entries until `incoming` more bytes fit.
    fn evict(&mut self, incoming: usize) {
        while self.size + incoming > self.max {
            match self.entries.pop_back() {
                Some(old) => self.size -= old.size,
                None => break,
            }
        }
    }
}

/// `http://host:port[/...]` → `host:port`; `None` for a value that is already an authority.
fn strip_scheme(value: &[u8]) -> Option<&[u8]> {
    let rest = [&b"http://"[..], &b"https://"[..]].iter().find_map(|scheme| {
        (value.len() > scheme.len() && value[..scheme.len()].eq_ignore_ascii_case(scheme))
            .then(|| &value[scheme.len()..])
    })?;
    let host = rest.split(|&b| b == b'/').next().unwrap_or(rest);
    (!host.is_empty()).then_some(host)
}

/// Decodes an integer with an `n`-bit prefix (RFC 7541 §5.1).
fn integer(buf: &[u8], pos: &mut usize, n: u32) -> Result<usize, HpackError> {
    let mask = (1usize << n) - 1;
    let mut value = (*buf.get(*pos).ok_or(HpackError::Truncated)? as usize) & mask;
    *pos += 1;
    if value < mask {
        return Ok(value);
    }
    let mut shift = 0;
    loop {
        let b = *buf.get(*pos).ok_or(HpackError::Truncated)?;
        *pos += 1;
        if shift > 21 {
            return Err(HpackError::Overflow);
        }
        value += ((b & 0x7f) as usize) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
}

/// Appends an integer with an `n`-bit prefix; `first` carries the representation's flag bits.
fn put_integer(out: &mut Vec<u8>, first: u8, n: u32, value: usize) {
    let mask = (1usize << n) - 1;
    if value < mask {
        out.push(first | value as u8);
        return;
    }
    out.push(first | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        out.push((rest as u8 & 0x7f) | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// Decodes a string literal (RFC 7541 §5.2), Huffman-coded or raw.
fn string(buf: &[u8], pos: &mut usize) -> Result<Vec<u8>, HpackError> {
    let huffman = *buf.get(*pos).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = integer(buf, pos, 7)?;
    let end = pos
        .checked_add(len)
        .filter(|&e| e <= buf.len())
        .ok_or(HpackError::Truncated)?;
    let bytes = &buf[*pos..end];
    *pos = end;
    if huffman {
        huffman_decode(bytes)
    } else {
        Ok(bytes.to_vec())
    }
}

/// Appends a raw (not Huffman-coded) string literal.
fn raw_string(out: &mut Vec<u8>, s: &[u8]) {
    put_integer(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// Decoding tree of the HPACK Huffman code: node `i` has children `TREE[i][bit]`; a child
/// value with [`LEAF`] set is a symbol.
const LEAF: u16 = 0x8000;

fn tree() -> &'static Vec<[u16; 2]> {
    static TREE: std::sync::OnceLock<Vec<[u16; 2]>> = std::sync::OnceLock::new();
    TREE.get_or_init(|| {
        let mut nodes = vec![[0u16; 2]];
        for (sym, &(code, len)) in HUFFMAN.iter().enumerate() {
            let mut node = 0usize;
            for i in (0..len).rev() {
                let bit = ((code >> i) & 1) as usize;
                if i == 0 {
                    nodes[node][bit] = LEAF | sym as u16;
                } else {
                    if nodes[node][bit] == 0 {
                        nodes.push([0, 0]);
                        nodes[node][bit] = (nodes.len() - 1) as u16;
                    }
                    node = nodes[node][bit] as usize;
                }
            }
        }
        nodes
    })
}

fn huffman_decode(bytes: &[u8]) -> Result<Vec<u8>, HpackError> {
    let tree = tree();
    let mut out = Vec::with_capacity(bytes.len() * 8 / 5);
    let mut node = 0usize;
    // Bits read since the last symbol, and whether they were all ones: the only valid tail
    // is up to 7 one-bits, a prefix of EOS (RFC 7541 §5.2).
    let mut pending = 0u32;
    let mut ones = true;
    for &byte in bytes {
        for i in (0..8).rev() {
            let bit = ((byte >> i) & 1) as usize;
            pending += 1;
            ones &= bit == 1;
            let next = tree[node][bit];
            if next & LEAF != 0 {
                let sym = next & !LEAF;
                if sym == 256 {
                    return Err(HpackError::Huffman);
                }
                out.push(sym as u8);
                node = 0;
                pending = 0;
                ones = true;
            } else if next == 0 {
                return Err(HpackError::Huffman);
            } else {
                node = next as usize;
            }
        }
    }
    if pending > 7 || !ones {
        return Err(HpackError::Huffman);
    }
    Ok(out)
}

/// Names of the static table (RFC 7541 Appendix A), index 1 first.
const STATIC_NAMES: [&str; 61] = [
    ":authority",
    ":method",
    ":method",
    ":path",
    ":path",
    ":scheme",
    ":scheme",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "accept",
    "access-control-allow-origin",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-range",
    "content-type",
    "cookie",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "link",
    "location",
    "max-forwards",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "refresh",
    "retry-after",
    "server",
    "set-cookie",
    "strict-transport-security",
    "transfer-encoding",
    "user-agent",
    "vary",
    "via",
    "www-authenticate",
];

/// The HPACK Huffman code (RFC 7541 Appendix B): `(code, bit length)` for symbols 0..=255
/// and EOS (256).
#[rustfmt::skip]
const HUFFMAN: [(u32, u8); 257] = [
    (0x1ff8, 13), (0x7fffd8, 23), (0xfffffe2, 28), (0xfffffe3, 28), (0xfffffe4, 28), (0xfffffe5, 28),
    (0xfffffe6, 28), (0xfffffe7, 28), (0xfffffe8, 28), (0xffffea, 24), (0x3ffffffc, 30), (0xfffffe9, 28),
    (0xfffffea, 28), (0x3ffffffd, 30), (0xfffffeb, 28), (0xfffffec, 28), (0xfffffed, 28), (0xfffffee, 28),
    (0xfffffef, 28), (0xffffff0, 28), (0xffffff1, 28), (0xffffff2, 28), (0x3ffffffe, 30), (0xffffff3, 28),
    (0xffffff4, 28), (0xffffff5, 28), (0xffffff6, 28), (0xffffff7, 28), (0xffffff8, 28), (0xffffff9, 28),
    (0xffffffa, 28), (0xffffffb, 28), (0x14, 6), (0x3f8, 10), (0x3f9, 10), (0xffa, 12),
    (0x1ff9, 13), (0x15, 6), (0xf8, 8), (0x7fa, 11), (0x3fa, 10), (0x3fb, 10),
    (0xf9, 8), (0x7fb, 11), (0xfa, 8), (0x16, 6), (0x17, 6), (0x18, 6),
    (0x0, 5), (0x1, 5), (0x2, 5), (0x19, 6), (0x1a, 6), (0x1b, 6),
    (0x1c, 6), (0x1d, 6), (0x1e, 6), (0x1f, 6), (0x5c, 7), (0xfb, 8),
    (0x7ffc, 15), (0x20, 6), (0xffb, 12), (0x3fc, 10), (0x1ffa, 13), (0x21, 6),
    (0x5d, 7), (0x5e, 7), (0x5f, 7), (0x60, 7), (0x61, 7), (0x62, 7),
    (0x63, 7), (0x64, 7), (0x65, 7), (0x66, 7), (0x67, 7), (0x68, 7),
    (0x69, 7), (0x6a, 7), (0x6b, 7), (0x6c, 7), (0x6d, 7), (0x6e, 7),
    (0x6f, 7), (0x70, 7), (0x71, 7), (0x72, 7), (0xfc, 8), (0x73, 7),
    (0xfd, 8), (0x1ffb, 13), (0x7fff0, 19), (0x1ffc, 13), (0x3ffc, 14), (0x22, 6),
    (0x7ffd, 15), (0x3, 5), (0x23, 6), (0x4, 5), (0x24, 6), (0x5, 5),
    (0x25, 6), (0x26, 6), (0x27, 6), (0x6, 5), (0x74, 7), (0x75, 7),
    (0x28, 6), (0x29, 6), (0x2a, 6), (0x7, 5), (0x2b, 6), (0x76, 7),
    (0x2c, 6), (0x8, 5), (0x9, 5), (0x2d, 6), (0x77, 7), (0x78, 7),
    (0x79, 7), (0x7a, 7), (0x7b, 7), (0x7ffe, 15), (0x7fc, 11), (0x3ffd, 14),
    (0x1ffd, 13), (0xffffffc, 28), (0xfffe6, 20), (0x3fffd2, 22), (0xfffe7, 20), (0xfffe8, 20),
    (0x3fffd3, 22), (0x3fffd4, 22), (0x3fffd5, 22), (0x7fffd9, 23), (0x3fffd6, 22), (0x7fffda, 23),
    (0x7fffdb, 23), (0x7fffdc, 23), (0x7fffdd, 23), (0x7fffde, 23), (0xffffeb, 24), (0x7fffdf, 23),
    (0xffffec, 24), (0xffffed, 24), (0x3fffd7, 22), (0x7fffe0, 23), (0xffffee, 24), (0x7fffe1, 23),
    (0x7fffe2, 23), (0x7fffe3, 23), (0x7fffe4, 23), (0x1fffdc, 21), (0x3fffd8, 22), (0x7fffe5, 23),
    (0x3fffd9, 22), (0x7fffe6, 23), (0x7fffe7, 23), (0xffffef, 24), (0x3fffda, 22), (0x1fffdd, 21),
    (0xfffe9, 20), (0x3fffdb, 22), (0x3fffdc, 22), (0x7fffe8, 23), (0x7fffe9, 23), (0x1fffde, 21),
    (0x7fffea, 23), (0x3fffdd, 22), (0x3fffde, 22), (0xfffff0, 24), (0x1fffdf, 21), (0x3fffdf, 22),
    (0x7fffeb, 23), (0x7fffec, 23), (0x1fffe0, 21), (0x1fffe1, 21), (0x3fffe0, 22), (0x1fffe2, 21),
    (0x7fffed, 23), (0x3fffe1, 22), (0x7fffee, 23), (0x7fffef, 23), (0xfffea, 20), (0x3fffe2, 22),
    (0x3fffe3, 22), (0x3fffe4, 22), (0x7ffff0, 23), (0x3fffe5, 22), (0x3fffe6, 22), (0x7ffff1, 23),
    (0x3ffffe0, 26), (0x3ffffe1, 26), (0xfffeb, 20), (0x7fff1, 19), (0x3fffe7, 22), (0x7ffff2, 23),
    (0x3fffe8, 22), (0x1ffffec, 25), (0x3ffffe2, 26), (0x3ffffe3, 26), (0x3ffffe4, 26), (0x7ffffde, 27),
    (0x7ffffdf, 27), (0x3ffffe5, 26), (0xfffff1, 24), (0x1ffffed, 25), (0x7fff2, 19), (0x1fffe3, 21),
    (0x3ffffe6, 26), (0x7ffffe0, 27), (0x7ffffe1, 27), (0x3ffffe7, 26), (0x7ffffe2, 27), (0xfffff2, 24),
    (0x1fffe4, 21), (0x1fffe5, 21), (0x3ffffe8, 26), (0x3ffffe9, 26), (0xffffffd, 28), (0x7ffffe3, 27),
    (0x7ffffe4, 27), (0x7ffffe5, 27), (0xfffec, 20), (0xfffff3, 24), (0xfffed, 20), (0x1fffe6, 21),
    (0x3fffe9, 22), (0x1fffe7, 21), (0x1fffe8, 21), (0x7ffff3, 23), (0x3fffea, 22), (0x3fffeb, 22),
    (0x1ffffee, 25), (0x1ffffef, 25), (0xfffff4, 24), (0xfffff5, 24), (0x3ffffea, 26), (0x7ffff4, 23),
    (0x3ffffeb, 26), (0x7ffffe6, 27), (0x3ffffec, 26), (0x3ffffed, 26), (0x7ffffe7, 27), (0x7ffffe8, 27),
    (0x7ffffe9, 27), (0x7ffffea, 27), (0x7ffffeb, 27), (0xffffffe, 28), (0x7ffffec, 27), (0x7ffffed, 27),
    (0x7ffffee, 27), (0x7ffffef, 27), (0x7fffff0, 27), (0x3ffffee, 26), (0x3fffffff, 30),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The request header block etcdctl 3.4 sent for `endpoint status` against
    /// `http://127.0.0.1:23999` (captured from the real binary).
    const ETCDCTL_STATUS: &str = "8386459760a924882d9dcb6571afa066a925a87510ac6e48d36a3f41909d29aee30c044eae05c0b86e0997df7f5f8b1d75d0620d263d4c4d65647a8b9acac8b4c7602bb2caecff40027465864d833505b11f40899acac8b24d494f6a7f867df7c4e376ff408d25062d495875996ee5b1063d5f03332e34";

    #[test]
    fn integers_as_in_rfc_7541_appendix_c1() {
        let mut out = Vec::new();
        put_integer(&mut out, 0, 5, 10);
        assert_eq!(out, [0x0a]);
        out.clear();
        put_integer(&mut out, 0, 5, 1337);
        assert_eq!(out, [0x1f, 0x9a, 0x0a]);
        let mut pos = 0;
        assert_eq!(integer(&out, &mut pos, 5), Ok(1337));
        assert_eq!(pos, 3);
        assert_eq!(integer(&[0x1f, 0x9a], &mut 0, 5), Err(HpackError::Truncated));
        assert_eq!(
            integer(&[0x1f, 0xff, 0xff, 0xff, 0xff, 0x7f], &mut 0, 5),
            Err(HpackError::Overflow)
        );
    }

    #[test]
    fn huffman_as_in_rfc_7541_appendix_c4() {
        assert_eq!(
            huffman_decode(&hex("f1e3c2e5f23a6ba0ab90f4ff")).unwrap(),
            b"www.example.com"
        );
        assert_eq!(huffman_decode(&hex("a8eb10649cbf")).unwrap(), b"no-cache");
        // Padding longer than 7 bits, or not all ones, is an error.
        assert_eq!(
            huffman_decode(&hex("f1e3c2e5f23a6ba0ab90f4ffff")),
            Err(HpackError::Huffman)
        );
        assert_eq!(
            huffman_decode(&hex("f1e3c2e5f23a6ba0ab90f4fe")),
            Err(HpackError::Huffman)
        );
    }

    #[test]
    fn repairs_the_authority_etcdctl_sends() {
        let block = hex(ETCDCTL_STATUS);
        let mut table = ClientTable::default();
        let fixed = table.repair(&block).unwrap().expect("repaired");
        // `41 90 <16 Huffman bytes>` became `41 0f "127.0.0.1:23999"`; nothing else moved.
        let at = block.windows(2).position(|w| w == [0x41, 0x90]).unwrap();
        assert_eq!(&fixed[..at], &block[..at]);
        assert_eq!(&fixed[at..at + 2], &[0x41, 15]);
        assert_eq!(&fixed[at + 2..at + 17], b"127.0.0.1:23999");
        assert_eq!(&fixed[at + 17..], &block[at + 18..]);
        // The client indexed :path, :authority, content-type, user-agent, te, grpc-timeout
        // and client-api-version; the :authority entry is the sixth newest (index 67).
        assert_eq!(table.entries.len(), 7);
        assert!(table.lookup(67).unwrap().authority);
        assert!(!table.lookup(66).unwrap().authority);
        assert!(!table.lookup(68).unwrap().authority);
        // The repaired block walks cleanly and needs nothing more.
        assert_eq!(ClientTable::default().repair(&fixed), Ok(None));
    }

    #[test]
    fn leaves_plain_authorities_and_other_fields_alone() {
        let mut table = ClientTable::default();
        let mut block = vec![0x83, 0x86, 0x41];
        raw_string(&mut block, b"127.0.0.1:2379");
        block.push(0x5f); // content-type, literal with indexing
        raw_string(&mut block, b"http://not-an-authority");
        assert_eq!(table.repair(&block), Ok(None));
        assert_eq!(table.entries.len(), 2);
        // References to both entries resolve.
        assert_eq!(table.repair(&[0xbe, 0xbf]), Ok(None));
        assert_eq!(table.repair(&[0xc0]), Err(HpackError::BadIndex(64)));
    }

    #[test]
    fn literal_names_and_every_literal_kind_are_repaired() {
        for first in [0x40u8, 0x00, 0x10] {
            let mut block = vec![first];
            raw_string(&mut block, b":authority");
            raw_string(&mut block, b"HTTPS://10.0.0.1:2379/some/path");
            let mut table = ClientTable::default();
            let fixed = table.repair(&block).unwrap().unwrap();
            let mut want = vec![first];
            raw_string(&mut want, b":authority");
            raw_string(&mut want, b"10.0.0.1:2379");
            assert_eq!(fixed, want);
            assert_eq!(table.entries.len(), usize::from(first == 0x40));
        }
    }

    #[test]
    fn follows_eviction_and_size_updates() {
        let mut table = ClientTable::default();
        // Each entry: name "x-<n>" (3 bytes) + 1000-byte value + 32 = 1035; four fit in 4096
        // only three at a time.
        for n in 0..4u8 {
            let mut block = vec![0x40];
            raw_string(&mut block, format!("x-{n}").as_bytes());
            raw_string(&mut block, &[b'v'; 1000]);
            table.repair(&block).unwrap();
        }
        assert_eq!(table.entries.len(), 3);
        assert_eq!(table.size, 3 * 1035);
        // Shrinking the table to 2100 keeps the two newest; to 0 empties it.
        let size_update = |size| {
            let mut b = Vec::new();
            put_integer(&mut b, 0x20, 5, size);
            b
        };
        table.repair(&size_update(2100)).unwrap();
        assert_eq!(table.entries.len(), 2);
        table.repair(&size_update(0)).unwrap();
        assert_eq!(table.entries.len(), 0);
        assert_eq!(table.repair(&size_update(4097)), Err(HpackError::TableSize(4097)));
        // A schemed authority literal that is indexed: the entry is the client's size.
        let mut table = ClientTable::default();
        let mut block = vec![0x41];
        raw_string(&mut block, b"http://127.0.0.1:2379");
        table.repair(&block).unwrap().unwrap();
        assert_eq!(table.size, ":authority".len() + "http://127.0.0.1:2379".len() + 32);
    }

    #[test]
    fn truncated_blocks_are_errors() {
        let block = hex(ETCDCTL_STATUS);
        for cut in [3, 5, 20, block.len() - 1] {
            assert!(ClientTable::default().repair(&block[..cut]).is_err(), "cut at {cut}");
        }
    }
}
