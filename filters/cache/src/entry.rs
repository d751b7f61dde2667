//! A stored response and its binary encoding, and the state keys it lives under.
//!
//! An entry is one value in the state store: a version byte, then the fields below in
//! order. Integers are big-endian; a byte string is a `u32` length and the bytes; an
//! optional string is a `0`/`1` byte and, for `1`, the string.
//!
//! | field | encoding |
//! | --- | --- |
//! | primary key (`GET <upstream><path-with-query>`) | string |
//! | vary: the request's values of the `Vary` headers | `u16` count, then name and optional value |
//! | status | `u16` |
//! | headers | `u16` count, then name and value |
//! | body | bytes |
//! | response time (ms since epoch) | `u64` |
//! | corrected initial age (ms) | `u64` |
//! | freshness lifetime (ms) | `u64` |
//! | size charge: class, bucket, bytes | `u8`, `u64`, `u64` |

use weir_filter::codec::{Reader, put_bytes};

/// The version byte of the encoding.
const VERSION: u8 = 1;

/// One stored response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `GET <upstream><path-with-query>`: what the entry answers, checked on every read.
    pub primary: String,
    /// The request's values of the response's `Vary` headers, names lowercase, sorted.
    pub vary: Vec<(String, Option<String>)>,
    /// The response status.
    pub status: u16,
    /// The response headers, without `Age` (recomputed on every hit).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The whole body.
    pub body: Vec<u8>,
    /// When the response (or the last 304 that refreshed it) arrived, ms since the epoch.
    pub response_time: u64,
    /// Its `corrected_initial_age` (RFC 9111 §4.2.3), ms.
    pub initial_age: u64,
    /// Its freshness lifetime, ms.
    pub freshness: u64,
    /// Where its bytes are counted against `max_total_bytes`.
    pub charge: Charge,
}

/// The bytes an entry is counted for, and the counter that holds them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Charge {
    /// The TTL class: the entry lives at most 2^class seconds.
    pub class: u8,
    /// The time bucket: `stored-at / 2^class s`.
    pub bucket: u64,
    /// The bytes counted.
    pub bytes: u64,
}

impl Charge {
    /// The state key of the counter this charge went to.
    pub fn key(&self) -> String {
        bytes_key(self.class, self.bucket)
    }
}

impl Entry {
    /// The encoded entry.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(self.body.len() + 256);
        w.push(VERSION);
        put_bytes(&mut w, self.primary.as_bytes());
        w.extend_from_slice(&(self.vary.len() as u16).to_be_bytes());
        for (name, value) in &self.vary {
            put_bytes(&mut w, name.as_bytes());
            match value {
                None => w.push(0),
                Some(v) => {
                    w.push(1);
                    put_bytes(&mut w, v.as_bytes());
                }
            }
        }
        w.extend_from_slice(&self.status.to_be_bytes());
        w.extend_from_slice(&(self.headers.len() as u16).to_be_bytes());
        for (name, value) in &self.headers {
            put_bytes(&mut w, name.as_bytes());
            put_bytes(&mut w, value);
        }
        put_bytes(&mut w, &self.body);
        for n in [self.response_time, self.initial_age, self.freshness] {
            w.extend_from_slice(&n.to_be_bytes());
        }
        w.push(self.charge.class);
        w.extend_from_slice(&self.charge.bucket.to_be_bytes());
        w.extend_from_slice(&self.charge.bytes.to_be_bytes());
        w
    }

    /// Decodes an entry; `None` if the bytes are not one (another version, or damaged).
    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        let mut r = Reader::new(bytes);
        if r.u8()? != VERSION {
            return None;
        }
        let primary = r.string()?;
        let mut vary = Vec::new();
        for _ in 0..r.u16()? {
            let name = r.string()?;
            let value = match r.u8()? {
                0 => None,
                1 => Some(r.string()?),
                _ => return None,
            };
            vary.push((name, value));
        }
        let status = r.u16()?;
        let mut headers = Vec::new();
        for _ in 0..r.u16()? {
            headers.push((r.string()?, r.bytes()?.to_vec()));
        }
        let body = r.bytes()?.to_vec();
        let entry = Entry {
            primary,
            vary,
            status,
            headers,
            body,
            response_time: r.u64()?,
            initial_age: r.u64()?,
            freshness: r.u64()?,
            charge: Charge {
                class: r.u8()?,
                bucket: r.u64()?,
                bytes: r.u64()?,
            },
        };
        r.is_empty().then_some(entry)
    }
}

// === keys ===
//
// The host prefixes every key with `cache/`. URLs can be longer than a state key may be,
// so keys hold a 128-bit hash; the entry repeats what it answers, and a read checks it,
// so a collision is a miss, never a wrong answer.

/// `GET <upstream><path-with-query>`: the cache key before `Vary`.
pub fn primary_key(upstream: &str, path_with_query: &str) -> String {
    ["GET ", upstream, path_with_query].concat()
}

/// The key of the index that lists a URL's `Vary` header names.
pub fn index_key(primary: &str) -> String {
    hashed("i:", primary.as_bytes())
}

/// The key of the variant of `primary` that these request values select.
pub fn entry_key(primary: &str, vary: &[(String, Option<String>)]) -> String {
    let mut text = primary.as_bytes().to_vec();
    for (name, value) in vary {
        text.push(0);
        text.extend_from_slice(name.as_bytes());
        match value {
            None => text.push(1),
            Some(v) => {
                text.push(2);
                text.extend_from_slice(v.as_bytes());
            }
        }
    }
    hashed("e:", &text)
}

/// The key of the stale-while-revalidate refresh lock for the entry under `entry_key`.
pub fn lock_key(entry_key: &str) -> String {
    format!("l:{}", entry_key.trim_start_matches("e:"))
}

/// The key of the byte counter for TTL class `class`, time bucket `bucket`.
pub fn bytes_key(class: u8, bucket: u64) -> String {
    format!("b:{class}:{bucket}")
}

/// `prefix`, then 128 bits of hash as hex: FNV-1a 64 forwards and backwards over the
/// bytes. Not cryptographic; reads verify what they find.
///
/// Made on every request, so written out by hand: `format!` with `{:016x}` and an
/// iterator behind `dyn` cost several times as much.
fn hashed(prefix: &str, bytes: &[u8]) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let step = |h: u64, b: &u8| (h ^ u64::from(*b)).wrapping_mul(PRIME);
    let forwards = bytes.iter().fold(OFFSET, step);
    let backwards = bytes.iter().rev().fold(OFFSET, step);
    let mut key = String::with_capacity(prefix.len() + 32);
    key.push_str(prefix);
    for n in [forwards, backwards] {
        key.extend(
            (0..16)
                .rev()
                .map(|k| char::from(HEX[(n >> (4 * k)) as usize & 0xf])),
        );
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_the_format_stored_entries_have() {
        // FNV-1a 64 forwards and backwards, as 32 lowercase hex digits: a shared store
        // filled by an older weir is still read. (Values from an independent FNV-1a.)
        assert_eq!(
            index_key("GET http://up/a?b=1"),
            "i:f782f1babf1c3129acfc18f851058131"
        );
        assert_eq!(
            index_key(&primary_key("http://up", "/")),
            "i:e90c863147e6ab33fa3867ea3a1846b3"
        );
        assert_eq!(
            entry_key("GET http://up/", &[]),
            "e:e90c863147e6ab33fa3867ea3a1846b3"
        );
    }

    fn entry() -> Entry {
        Entry {
            primary: primary_key("http://up", "/a?b=1"),
            vary: vec![
                ("accept".into(), Some("text/html".into())),
                ("x-t".into(), None),
            ],
            status: 200,
            headers: vec![
                ("etag".into(), b"\"v1\"".to_vec()),
                ("x-raw".into(), vec![0xff]),
            ],
            body: b"hello".to_vec(),
            response_time: 1_700_000_000_123,
            initial_age: 2_000,
            freshness: 60_000,
            charge: Charge {
                class: 7,
                bucket: 13_281_250,
                bytes: 321,
            },
        }
    }

    #[test]
    fn round_trips() {
        let e = entry();
        assert_eq!(Entry::decode(&e.encode()), Some(e));
    }

    #[test]
    fn rejects_damaged_or_foreign_bytes() {
        let bytes = entry().encode();
        assert_eq!(Entry::decode(&bytes[..bytes.len() - 1]), None);
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Entry::decode(&longer), None);
        let mut other = bytes;
        other[0] = 9;
        assert_eq!(Entry::decode(&other), None);
        assert_eq!(Entry::decode(b""), None);
    }

    #[test]
    fn keys_separate_urls_and_variants() {
        let p = primary_key("http://up", "/a");
        assert_ne!(index_key(&p), index_key(&primary_key("http://up", "/b")));
        let html = vec![("accept".to_string(), Some("text/html".to_string()))];
        let json = vec![("accept".to_string(), Some("application/json".to_string()))];
        let none = vec![("accept".to_string(), None)];
        let empty = vec![("accept".to_string(), Some(String::new()))];
        let keys = [&html, &json, &none, &empty].map(|v| entry_key(&p, v));
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(entry_key(&p, &html), entry_key(&p, &html.clone()));
        assert!(lock_key(&keys[0]).starts_with("l:"));
        assert_eq!(index_key(&p).len(), 2 + 32);
    }
}
