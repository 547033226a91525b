//! HPACK decoding (RFC 7541): integers, string literals, the static and dynamic tables.
//! Huffman-coded strings are decoded by `httlib-huffman`'s table-driven decoder, whose cost
//! is linear in the input (a decoder that builds its code tables per string lets a peer buy
//! milliseconds of CPU with a few octets of header block).

use std::collections::VecDeque;

/// RFC 7541 Appendix A.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Octets an entry counts for besides its name and value (RFC 7541 section 4.1).
const ENTRY_OVERHEAD: usize = 32;

/// Why a header block could not be decoded; the connection's HPACK state is then lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Error(pub &'static str);

/// A connection's decoder: the dynamic table its peer's encoder fills.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first.
    table: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max_size: usize,
    /// What SETTINGS_HEADER_TABLE_SIZE allows the peer.
    allowed: usize,
    /// Most octets of names and values one block may decode to.
    max_decoded: usize,
}

impl Decoder {
    /// A decoder whose peer may use a table of up to `allowed` octets, for blocks that
    /// decode to at most `max_decoded` octets of names and values.
    pub fn new(allowed: usize, max_decoded: usize) -> Self {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size: allowed,
            allowed,
            max_decoded,
        }
    }

    /// Decodes a complete header block, handing each field to `field` in order.
    pub fn decode(
        &mut self,
        mut block: &[u8],
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), Error> {
        let mut first = true;
        let mut decoded = 0;
        let max_decoded = self.max_decoded;
        let mut count = |n: usize| {
            decoded += n;
            if decoded > max_decoded {
                return Err(Error("header block decodes to too much"));
            }
            Ok(())
        };
        while let Some(&octet) = block.first() {
            if octet & 0x80 != 0 {
                let index = integer(&mut block, 7)?;
                let (name, value) = self.entry(index)?;
                count(name.len() + value.len())?;
                field(name, value);
            } else if octet & 0xe0 == 0x20 {
                // Dynamic table size update: only before the block's fields.
                if !first {
                    return Err(Error("table size update after a header field"));
                }
                let size = integer(&mut block, 5)?;
                if size > self.allowed {
                    return Err(Error("table size update beyond SETTINGS_HEADER_TABLE_SIZE"));
                }
                self.max_size = size;
                self.evict(0);
                continue;
            } else {
                // Literal: with incremental indexing (01), without (0000) or never indexed
                // (0001).
                let indexing = octet & 0xc0 == 0x40;
                let prefix = if indexing { 6 } else { 4 };
                let index = integer(&mut block, prefix)?;
                let literal = if index == 0 {
                    Some(string(&mut block)?)
                } else {
                    None
                };
                let value = string(&mut block)?;
                let name = match &literal {
                    Some(n) => n.as_slice(),
                    None => self.entry(index)?.0,
                };
                count(name.len() + value.len())?;
                field(name, &value);
                if indexing {
                    let name = match literal {
                        Some(n) => n,
                        None => self.entry(index)?.0.to_vec(),
                    };
                    self.insert(name, value);
                }
            }
            first = false;
        }
        Ok(())
    }

    fn entry(&self, index: usize) -> Result<(&[u8], &[u8]), Error> {
        match index {
            0 => Err(Error("index 0")),
            1..=61 => {
                let (n, v) = STATIC[index - 1];
                Ok((n.as_bytes(), v.as_bytes()))
            }
            _ => self
                .table
                .get(index - 62)
                .map(|(n, v)| (n.as_slice(), v.as_slice()))
                .ok_or(Error("index beyond the dynamic table")),
        }
    }

    fn insert(&mut self, mut name: Vec<u8>, mut value: Vec<u8>) {
        // Decoded Huffman strings have room to spare; kept entries should not.
        name.shrink_to_fit();
        value.shrink_to_fit();
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        if size > self.max_size {
            // Too large for the table: it empties it (RFC 7541 section 4.4).
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.size += size;
        self.table.push_front((name, value));
    }

    /// Evicts the oldest entries until `room` more octets fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            let Some((n, v)) = self.table.pop_back() else {
                break;
            };
            self.size -= n.len() + v.len() + ENTRY_OVERHEAD;
        }
        if self.table.is_empty() {
            self.table = VecDeque::new();
        }
    }
}

/// An integer with an `prefix`-bit prefix (RFC 7541 section 5.1); values past 2^32 are
/// refused.
fn integer(block: &mut &[u8], prefix: u32) -> Result<usize, Error> {
    let (&first, mut rest) = block.split_first().ok_or(Error("truncated integer"))?;
    let max = (1usize << prefix) - 1;
    let mut value = usize::from(first) & max;
    if value == max {
        let mut shift = 0;
        loop {
            let (&octet, tail) = rest.split_first().ok_or(Error("truncated integer"))?;
            rest = tail;
            value += usize::from(octet & 0x7f) << shift;
            if octet & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 28 {
                return Err(Error("integer too large"));
            }
        }
        if value > u32::MAX as usize {
            return Err(Error("integer too large"));
        }
    }
    *block = rest;
    Ok(value)
}

/// A string literal (RFC 7541 section 5.2).
fn string(block: &mut &[u8]) -> Result<Vec<u8>, Error> {
    let huffman = block.first().is_some_and(|o| o & 0x80 != 0);
    let len = integer(block, 7)?;
    if len > block.len() {
        return Err(Error("string longer than the header block"));
    }
    let (raw, rest) = block.split_at(len);
    *block = rest;
    if !huffman {
        return Ok(raw.to_vec());
    }
    // The shortest code is 5 bits.
    let mut out = Vec::with_capacity(len * 8 / 5);
    httlib_huffman::decode(raw, &mut out, httlib_huffman::DecoderSpeed::FourBits)
        .map_err(|_| Error("invalid Huffman code"))?;
    // The decoder does not check the padding, which must be under 8 bits of the EOS code's
    // leading ones: then encoding the result again gives the same octets.
    let mut again = Vec::with_capacity(len);
    if httlib_huffman::encode(&out, &mut again).is_err() || again != raw {
        return Err(Error("invalid Huffman padding"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(d: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, Error> {
        let mut out = Vec::new();
        d.decode(block, |n, v| {
            out.push((
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            ))
        })?;
        Ok(out)
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // The request examples of RFC 7541 Appendix C.3 (without Huffman coding) and C.4
    // (with), each three requests on one connection sharing the dynamic table.
    #[test]
    fn should_decode_the_rfc_request_examples_in_sequence() {
        for blocks in [
            [
                "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                "8286 84be 5808 6e6f 2d63 6163 6865",
                "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
            ],
            [
                "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
                "8286 84be 5886 a8eb 1064 9cbf",
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ],
        ] {
            let mut d = Decoder::new(4096, 1 << 20);
            assert_eq!(
                decode(&mut d, &hex(blocks[0])).unwrap(),
                pairs(&[
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":path", "/"),
                    (":authority", "www.example.com")
                ])
            );
            assert_eq!(d.size, 57);
            assert_eq!(
                decode(&mut d, &hex(blocks[1])).unwrap(),
                pairs(&[
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":path", "/"),
                    (":authority", "www.example.com"),
                    ("cache-control", "no-cache")
                ])
            );
            assert_eq!(d.size, 110);
            assert_eq!(
                decode(&mut d, &hex(blocks[2])).unwrap(),
                pairs(&[
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":path", "/index.html"),
                    (":authority", "www.example.com"),
                    ("custom-key", "custom-value")
                ])
            );
            assert_eq!(d.size, 164);
            assert_eq!(d.table.len(), 3);
        }
    }

    #[test]
    fn should_evict_the_oldest_entries_to_fit_and_honour_size_updates() {
        let mut d = Decoder::new(4096, 1 << 20);
        // Size update to 100 octets, then two literals with indexing of 44 and 45 octets.
        let mut block = vec![0x3f, 0x45];
        for (name, value) in [("aaaa", "bbbbbbbb"), ("cccc", "ddddddddd")] {
            block.push(0x40);
            block.push(name.len() as u8);
            block.extend_from_slice(name.as_bytes());
            block.push(value.len() as u8);
            block.extend_from_slice(value.as_bytes());
        }
        decode(&mut d, &block).unwrap();
        assert_eq!(d.max_size, 100);
        assert_eq!(d.table.len(), 2, "both fit in 100 octets");
        // A third entry evicts the oldest; index 62 is the newest.
        let third = [0x40, 1, b'e', 1, b'f'];
        decode(&mut d, &third).unwrap();
        assert_eq!(d.table.len(), 2);
        assert_eq!(decode(&mut d, &[0x80 | 62]).unwrap(), pairs(&[("e", "f")]));
        assert_eq!(
            decode(&mut d, &[0x80 | 63]).unwrap(),
            pairs(&[("cccc", "ddddddddd")])
        );
        assert!(decode(&mut d, &[0x80 | 64]).is_err(), "evicted");
        // Size 0 empties the table.
        decode(&mut d, &[0x20]).unwrap();
        assert!(d.table.is_empty() && d.size == 0);
    }

    #[test]
    fn should_refuse_what_rfc_7541_forbids() {
        let cases: &[(&[u8], &str)] = &[
            (&[0x80], "index 0"),
            (&[0xbf], "index beyond"),
            (&[0x3f, 0xe2, 0x1f], "beyond SETTINGS_HEADER_TABLE_SIZE"),
            (&[0x82, 0x20], "after a header field"),
            (&[0x7f], "truncated integer"),
            (&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], "too large"),
            (&[0x00, 0x05, b'a'], "longer than the header block"),
            // A Huffman string whose padding is not the EOS prefix.
            (&[0x00, 0x81, 0x00, 0x00], "Huffman"),
        ];
        for (block, why) in cases {
            let err = decode(&mut Decoder::new(4096, 1 << 20), block).unwrap_err();
            assert!(err.0.contains(why), "{block:?}: {}", err.0);
        }
    }

    #[test]
    fn should_stop_a_block_that_decodes_to_too_much() {
        let mut d = Decoder::new(4096, 100);
        // One 40-octet entry, then references to it: 2 fit, the 3rd passes 100 octets.
        let mut block = vec![0x40, 20];
        block.extend_from_slice(&[b'n'; 20]);
        block.push(20);
        block.extend_from_slice(&[b'v'; 20]);
        assert!(d.decode(&block, |_, _| {}).is_ok());
        assert!(d.decode(&[0x80 | 62, 0x80 | 62], |_, _| {}).is_ok());
        let err = d.decode(&[0x80 | 62, 0x80 | 62, 0x80 | 62], |_, _| {});
        assert_eq!(err, Err(Error("header block decodes to too much")));
    }

    proptest::proptest! {
        #[test]
        fn huffman_coded_strings_decode_to_what_was_encoded(
            value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100)
        ) {
            let mut coded = Vec::new();
            httlib_huffman::encode(&value, &mut coded).unwrap();
            // Literal without indexing, name "x", value Huffman coded.
            let mut block = vec![0x00, 1, b'x'];
            if coded.len() < 127 {
                block.push(0x80 | coded.len() as u8);
            } else {
                block.extend([0xff, (coded.len() - 127) as u8]);
            }
            block.extend_from_slice(&coded);
            let mut got = Vec::new();
            Decoder::new(4096, 1 << 20).decode(&block, |_, v| got = v.to_vec()).unwrap();
            proptest::prop_assert_eq!(got, value);
        }

        #[test]
        fn no_block_panics_the_decoder(blocks in proptest::collection::vec(
            proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64), 1..4)) {
            let mut d = Decoder::new(4096, 1 << 20);
            for b in &blocks {
                let _ = d.decode(b, |_, _| {});
                proptest::prop_assert!(d.size <= d.max_size);
            }
        }
    }
}
