// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

use crate::*;
use bytes::Bytes;
use http::header;

#[derive(Debug, Clone)]
pub struct CaseHeaderName(Bytes);

impl CaseHeaderName {
    pub fn new(name: String) -> Self {
        CaseHeaderName(name.into())
    }
}

impl CaseHeaderName {
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    pub fn from_slice(buf: &[u8]) -> Self {
        CaseHeaderName(Bytes::copy_from_slice(buf))
    }
}

/// A trait that converts into case-sensitive header names.
pub trait IntoCaseHeaderName {
    fn into_case_header_name(self) -> CaseHeaderName;
}

impl IntoCaseHeaderName for CaseHeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        self
    }
}

impl IntoCaseHeaderName for String {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self.into())
    }
}

impl IntoCaseHeaderName for &'static str {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self.into())
    }
}

impl IntoCaseHeaderName for HeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(titled_header_name(&self))
    }
}

impl IntoCaseHeaderName for &HeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(titled_header_name(self))
    }
}

impl IntoCaseHeaderName for Bytes {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self)
    }
}

fn titled_header_name(header_name: &HeaderName) -> Bytes {
    titled_header_name_str(header_name).map_or_else(
        || Bytes::copy_from_slice(header_name.as_str().as_bytes()),
        |s| Bytes::from_static(s.as_bytes()),
    )
}

pub(crate) fn titled_header_name_str(header_name: &HeaderName) -> Option<&'static str> {
    Some(match *header_name {
        header::ACCEPT_RANGES => "Accept-Ranges",
        header::AGE => "Age",
        header::CACHE_CONTROL => "Cache-Control",
        header::CONNECTION => "Connection",
        header::CONTENT_TYPE => "Content-Type",
        header::CONTENT_ENCODING => "Content-Encoding",
        header::CONTENT_LENGTH => "Content-Length",
        header::DATE => "Date",
        header::TRANSFER_ENCODING => "Transfer-Encoding",
        header::HOST => "Host",
        header::SERVER => "Server",
        header::SET_COOKIE => "Set-Cookie",
        // Switchyard: the usual spellings that are not Title-Case, so a
        // head carrying them (`ETag` on most static responses) needs no
        // case map and one without a map writes them the usual way.
        header::ETAG => "ETag",
        header::WWW_AUTHENTICATE => "WWW-Authenticate",
        header::TE => "TE",
        header::DNT => "DNT",
        header::X_XSS_PROTECTION => "X-XSS-Protection",
        // TODO: add more const header here to map to their titled case
        // TODO: automatically upper case the first letter?
        _ => {
            return None;
        }
    })
}

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGH: u64 = ONES * 0x80;

/// Eight bytes of a header name (lowercase ASCII, as `HeaderName` holds
/// it; short chunks padded with zeros) in Title-Case, eight at a time: a
/// lowercase letter at the start of the name (`word_start`) or after a
/// dash is made uppercase. Returns the chunk and whether its last byte is a
/// dash (a word starts at the next chunk's first byte).
///
/// Each byte is below 0x80, so adding a constant below 0x80 to the word
/// never carries from one byte into the next.
#[inline]
fn title_case_chunk(chunk: u64, word_start: bool) -> (u64, bool) {
    // High bit of each byte at or above b'a' and not above b'z'.
    let lower = (chunk.wrapping_add(ONES * (0x80 - u64::from(b'a'))))
        & !(chunk.wrapping_add(ONES * (0x80 - u64::from(b'z') - 1)))
        & HIGH;
    // High bit of each byte that is a dash.
    let not_dash = (chunk ^ (ONES * u64::from(b'-'))).wrapping_add(ONES * 0x7f) & HIGH;
    let dash = !not_dash & HIGH;
    // A word starts after each dash, and at the first byte if asked.
    let starts = (dash << 8) | if word_start { 0x80 } else { 0 };
    // Clearing 0x20 makes a lowercase letter uppercase.
    let titled = chunk ^ ((starts & lower) >> 2);
    (titled, dash >> 63 != 0)
}

/// The last `count` bytes of `bytes` (`count` at most eight, and at most
/// `bytes.len()`) as a little-endian word, padded with zeros: one load of
/// the last eight bytes when there are eight, otherwise read as two
/// overlapping halves (a copy of a length known only when running is a call
/// to `memcpy`).
#[inline]
fn tail_word(bytes: &[u8], count: usize) -> u64 {
    let n = bytes.len();
    if count == 0 {
        return 0;
    }
    if let Some(last) = n.checked_sub(8).and_then(|start| bytes.get(start..)) {
        if let Ok(word) = <[u8; 8]>::try_from(last) {
            return u64::from_le_bytes(word) >> (8 * (8 - count));
        }
    }
    // Fewer than eight bytes in all: `count` is all of them.
    if n >= 4 {
        let low = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let high = u32::from_le_bytes([bytes[n - 4], bytes[n - 3], bytes[n - 2], bytes[n - 1]]);
        u64::from(low) | (u64::from(high) << (8 * (n - 4)))
    } else if n >= 2 {
        let low = u16::from_le_bytes([bytes[0], bytes[1]]);
        let high = u16::from_le_bytes([bytes[n - 2], bytes[n - 1]]);
        u64::from(low) | (u64::from(high) << (8 * (n - 2)))
    } else {
        bytes.first().map_or(0, |b| u64::from(*b))
    }
}

/// An eight-byte chunk as a little-endian word.
#[inline]
fn chunk_word(chunk: &[u8]) -> u64 {
    <[u8; 8]>::try_from(chunk).map_or(0, u64::from_le_bytes)
}

/// Write `header_name` the way a header without a case map spells it: the
/// usual spelling of a common standard name, otherwise each dash-separated
/// word with its first letter in uppercase (`X-Request-Id`).
pub(crate) fn put_default_case(header_name: &HeaderName, buf: &mut impl crate::WireBuf) {
    if let Some(titled) = titled_header_name_str(header_name) {
        buf.put(titled.as_bytes());
        return;
    }
    // Switchyard: eight bytes at a time into a block written with one call
    // (a call per byte and per word cost about 10 instructions a byte).
    let bytes = header_name.as_str().as_bytes();
    let mut block = [0u8; 64];
    let mut filled = 0;
    let mut word_start = true;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let (titled, dash_last) = title_case_chunk(chunk_word(chunk), word_start);
        word_start = dash_last;
        block[filled..filled + 8].copy_from_slice(&titled.to_le_bytes());
        filled += 8;
        if filled == block.len() {
            buf.put(&block);
            filled = 0;
        }
    }
    let tail = chunks.remainder().len();
    if tail > 0 {
        let (titled, _) = title_case_chunk(tail_word(bytes, tail), word_start);
        // All eight bytes (a fixed-size store); the tail's count are kept.
        block[filled..filled + 8].copy_from_slice(&titled.to_le_bytes());
        filled += tail;
    }
    buf.put(&block[..filled]);
}

/// Whether `wire` is exactly how [`put_default_case`] writes `header_name`.
pub(crate) fn is_default_case(header_name: &HeaderName, wire: &[u8]) -> bool {
    if let Some(titled) = titled_header_name_str(header_name) {
        return titled.as_bytes() == wire;
    }
    let name = header_name.as_str().as_bytes();
    if name.len() != wire.len() {
        return false;
    }
    let mut word_start = true;
    let mut names = name.chunks_exact(8);
    let mut wires = wire.chunks_exact(8);
    for (chunk, wire_chunk) in (&mut names).zip(&mut wires) {
        let (titled, dash_last) = title_case_chunk(chunk_word(chunk), word_start);
        if titled != chunk_word(wire_chunk) {
            return false;
        }
        word_start = dash_last;
    }
    let tail = names.remainder().len();
    tail == 0 || title_case_chunk(tail_word(name, tail), word_start).0 == tail_word(wire, tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_case_header_name() {
        assert_eq!("FoO".into_case_header_name().as_slice(), b"FoO");
        assert_eq!("FoO".to_string().into_case_header_name().as_slice(), b"FoO");
        assert_eq!(header::SERVER.into_case_header_name().as_slice(), b"Server");
    }

    /// Title-Case one byte at a time: the rule `put_default_case` follows.
    fn title_case_bytewise(name: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(name.len());
        let mut word_start = true;
        for b in name.bytes() {
            out.push(if word_start {
                b.to_ascii_uppercase()
            } else {
                b
            });
            word_start = b == b'-';
        }
        out
    }

    fn written(name: &HeaderName) -> Vec<u8> {
        let mut buf = bytes::BytesMut::new();
        put_default_case(name, &mut buf);
        buf.to_vec()
    }

    /// Names of every length up to past the 64-byte block, with dashes,
    /// digits and the other token characters at every place in an
    /// eight-byte chunk, including its first and last byte.
    fn varied_names() -> Vec<String> {
        let alphabet = b"abcxyz-09!#$%&'*+.^_`|~-q-";
        let mut names = Vec::new();
        for len in 1..=80 {
            for shift in 0..alphabet.len() {
                let name: String = (0..len)
                    .map(|i| alphabet[(i * 7 + shift) % alphabet.len()] as char)
                    .collect();
                names.push(name);
            }
            // A dash at each place, between letters.
            for dash in 0..len {
                let name: String = (0..len)
                    .map(|i| {
                        if i == dash {
                            '-'
                        } else {
                            (b'a' + (i % 26) as u8) as char
                        }
                    })
                    .collect();
                names.push(name);
            }
        }
        names
    }

    #[test]
    fn default_case_is_title_case_eight_bytes_at_a_time() {
        for name in varied_names() {
            let header = HeaderName::from_bytes(name.as_bytes()).expect("a token");
            let expected = title_case_bytewise(header.as_str());
            assert_eq!(written(&header), expected, "{name}");
            assert!(is_default_case(&header, &expected), "{name}");
        }
        assert_eq!(
            written(&HeaderName::from_static("x-request-id")),
            b"X-Request-Id"
        );
        assert_eq!(
            written(&HeaderName::from_static("sec-fetch-dest")),
            b"Sec-Fetch-Dest"
        );
    }

    #[test]
    fn default_case_refuses_any_other_spelling() {
        for name in varied_names() {
            let header = HeaderName::from_bytes(name.as_bytes()).expect("a token");
            let expected = title_case_bytewise(header.as_str());
            for i in 0..expected.len() {
                let mut other = expected.clone();
                if other[i].is_ascii_alphabetic() {
                    other[i] ^= 0x20;
                } else {
                    other[i] = b'a';
                }
                assert!(!is_default_case(&header, &other), "{name} as {other:?}");
            }
            assert!(!is_default_case(&header, &expected[1..]), "{name}");
            let mut longer = expected.clone();
            longer.push(b'a');
            assert!(!is_default_case(&header, &longer), "{name}");
        }
    }

    #[test]
    fn default_case_keeps_the_usual_spellings_of_the_table() {
        let table = [
            header::ACCEPT_RANGES,
            header::AGE,
            header::CACHE_CONTROL,
            header::CONNECTION,
            header::CONTENT_TYPE,
            header::CONTENT_ENCODING,
            header::CONTENT_LENGTH,
            header::DATE,
            header::TRANSFER_ENCODING,
            header::HOST,
            header::SERVER,
            header::SET_COOKIE,
            header::ETAG,
            header::WWW_AUTHENTICATE,
            header::TE,
            header::DNT,
            header::X_XSS_PROTECTION,
        ];
        for name in table {
            let usual = titled_header_name_str(&name).expect("in the table");
            assert_eq!(written(&name), usual.as_bytes(), "{name}");
            assert!(is_default_case(&name, usual.as_bytes()), "{name}");
            if usual.as_bytes() != title_case_bytewise(name.as_str()) {
                assert!(
                    !is_default_case(&name, &title_case_bytewise(name.as_str())),
                    "{name}"
                );
            }
        }
    }
}
