//! What the filter keeps under a key, its binary encoding, and the state keys.
//!
//! A record is one value in the state store: a version byte, a kind byte (`0` in flight,
//! `1` done), then the fields below in order. Integers are big-endian; a byte string is a
//! `u32` length and the bytes; an optional byte string is a `0`/`1` byte and, for `1`,
//! the string.
//!
//! | field | encoding |
//! | --- | --- |
//! | owner: the request id and client address of the request that holds the key | bytes |
//! | route | bytes |
//! | tenant | optional bytes |
//! | the client's `Idempotency-Key` | bytes |
//! | fingerprint of method, path and body | 16 bytes |
//! | *done only:* status | `u16` |
//! | *done only:* headers | `u16` count, then name and value |
//! | *done only:* body | bytes |

use weir_filter::codec::{Reader, put_bytes};

/// The version byte of the encoding.
const VERSION: u8 = 1;

/// Whose key it is: the route, the tenant and the client's key. The state key is a hash
/// of this; the record repeats it and every read checks it, so a hash collision is never
/// a replay of another tenant's response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The route's name.
    pub route: String,
    /// The tenant; `None` when the route has no tenant or the request did not name one.
    pub tenant: Option<Vec<u8>>,
    /// The `Idempotency-Key` value.
    pub key: Vec<u8>,
}

/// A stored response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The status.
    pub status: u16,
    /// The headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The whole body.
    pub body: Vec<u8>,
}

/// One key's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `"<request id> <client address>"` of the request that claimed the key; its own
    /// retries may claim it again.
    pub owner: String,
    /// Whose key this is.
    pub identity: Identity,
    /// The request's fingerprint ([`fingerprint`]).
    pub fingerprint: [u8; 16],
    /// `None` while the request is in flight; the response once it is done.
    pub response: Option<Stored>,
}

impl Record {
    /// The encoded record.
    pub fn encode(&self) -> Vec<u8> {
        let body_len = self.response.as_ref().map_or(0, |r| r.body.len());
        let mut w = Vec::with_capacity(body_len + 256);
        w.push(VERSION);
        w.push(u8::from(self.response.is_some()));
        put_bytes(&mut w, self.owner.as_bytes());
        put_bytes(&mut w, self.identity.route.as_bytes());
        match &self.identity.tenant {
            None => w.push(0),
            Some(t) => {
                w.push(1);
                put_bytes(&mut w, t);
            }
        }
        put_bytes(&mut w, &self.identity.key);
        w.extend_from_slice(&self.fingerprint);
        if let Some(r) = &self.response {
            w.extend_from_slice(&r.status.to_be_bytes());
            w.extend_from_slice(&(r.headers.len() as u16).to_be_bytes());
            for (name, value) in &r.headers {
                put_bytes(&mut w, name.as_bytes());
                put_bytes(&mut w, value);
            }
            put_bytes(&mut w, &r.body);
        }
        w
    }

    /// Decodes a record; `None` if the bytes are not one (another version, damaged, or
    /// the empty value a released key holds for a moment).
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        let mut r = Reader::new(bytes);
        if r.u8()? != VERSION {
            return None;
        }
        let done = match r.u8()? {
            0 => false,
            1 => true,
            _ => return None,
        };
        let owner = r.string()?;
        let route = r.string()?;
        let tenant = match r.u8()? {
            0 => None,
            1 => Some(r.bytes()?.to_vec()),
            _ => return None,
        };
        let key = r.bytes()?.to_vec();
        let fingerprint = r.take(16)?.try_into().ok()?;
        let response = if done {
            let status = r.u16()?;
            let mut headers = Vec::new();
            for _ in 0..r.u16()? {
                headers.push((r.string()?, r.bytes()?.to_vec()));
            }
            let body = r.bytes()?.to_vec();
            Some(Stored {
                status,
                headers,
                body,
            })
        } else {
            None
        };
        let record = Record {
            owner,
            identity: Identity { route, tenant, key },
            fingerprint,
            response,
        };
        r.is_empty().then_some(record)
    }
}

// === keys ===
//
// The host prefixes every key with `idempotency/`. A tenant header can be longer than a
// state key may be, so keys hold a 128-bit hash of length-prefixed parts.

/// The state key of a client key's record: `k:<hash>`.
pub fn record_key(id: &Identity) -> String {
    let mut h = Hasher::default();
    h.part(id.route.as_bytes());
    match &id.tenant {
        None => h.part(b"\x00"),
        Some(t) => {
            h.part(b"\x01");
            h.part(t);
        }
    }
    h.part(&id.key);
    format!("k:{}", hex(&h.finish()))
}

/// The state key under which the key generated for one request is kept, so the request's
/// retries send the same one: `g:<hash>` of the route, request id and client address.
pub fn generated_key(route: &str, request_id: &str, client_addr: &str) -> String {
    format!("g:{}", hex(&request_hash(route, request_id, client_addr)))
}

/// The 128-bit hash of a request's identity inside weir.
pub fn request_hash(route: &str, request_id: &str, client_addr: &str) -> [u8; 16] {
    let mut h = Hasher::default();
    h.part(route.as_bytes());
    h.part(request_id.as_bytes());
    h.part(client_addr.as_bytes());
    h.finish()
}

/// The fingerprint of a request: a 128-bit hash of its method, path with query and body.
pub fn fingerprint(method: &str, path_with_query: &str, body: &[u8]) -> [u8; 16] {
    let mut h = Hasher::default();
    h.part(method.as_bytes());
    h.part(path_with_query.as_bytes());
    h.part(body);
    h.finish()
}

/// 16 bytes as a UUID of `version` (4: random, 8: derived by the filter), RFC 9562
/// layout: `xxxxxxxx-xxxx-Vxxx-Nxxx-xxxxxxxxxxxx`.
pub fn uuid(mut bytes: [u8; 16], version: u8) -> String {
    bytes[6] = (bytes[6] & 0x0f) | (version << 4);
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let h = hex(&bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A 128-bit hash of length-prefixed parts, fed as they come: a request body is hashed
/// where it lies, never copied. Not cryptographic; records repeat their identity and
/// reads check it.
///
/// Four xxHash64-style lanes take a 32-byte stripe per round, so the multiplies of one
/// round are independent and a body of tens of MiB hashes in a few milliseconds; the
/// 256 bits of lane state then fold into two differently mixed 64-bit halves.
struct Hasher {
    lanes: [u64; 4],
    /// Bytes not yet in a full stripe.
    tail: [u8; STRIPE],
    tail_len: usize,
    len: u64,
}

const STRIPE: usize = 32;
const P1: u64 = 0x9e37_79b1_85eb_ca87;
const P2: u64 = 0xc2b2_ae3d_27d4_eb4f;
const P3: u64 = 0x1656_67b1_9e37_79f9;

impl Default for Hasher {
    fn default() -> Self {
        Hasher {
            lanes: [P1.wrapping_add(P2), P2, 0, P1.wrapping_neg()],
            tail: [0; STRIPE],
            tail_len: 0,
            len: 0,
        }
    }
}

impl Hasher {
    fn part(&mut self, b: &[u8]) {
        self.write(&(b.len() as u64).to_be_bytes());
        self.write(b);
    }

    fn write(&mut self, mut b: &[u8]) {
        self.len = self.len.wrapping_add(b.len() as u64);
        if self.tail_len > 0 {
            let n = (STRIPE - self.tail_len).min(b.len());
            self.tail[self.tail_len..self.tail_len + n].copy_from_slice(&b[..n]);
            self.tail_len += n;
            b = &b[n..];
            if self.tail_len < STRIPE {
                return;
            }
            let stripe = self.tail;
            self.stripe(&stripe);
            self.tail_len = 0;
        }
        let mut stripes = b.chunks_exact(STRIPE);
        for stripe in &mut stripes {
            self.stripe(stripe);
        }
        let rest = stripes.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.tail_len = rest.len();
    }

    fn stripe(&mut self, stripe: &[u8]) {
        for (lane, word) in self.lanes.iter_mut().zip(stripe.chunks_exact(8)) {
            let mut w = [0; 8];
            w.copy_from_slice(word);
            *lane = lane
                .wrapping_add(u64::from_le_bytes(w).wrapping_mul(P2))
                .rotate_left(31)
                .wrapping_mul(P1);
        }
    }

    fn finish(mut self) -> [u8; 16] {
        // The zeros that fill the last stripe are told apart by the length, mixed in below.
        if self.tail_len > 0 {
            let mut last = [0; STRIPE];
            last[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
            self.stripe(&last);
        }
        let [a, b, c, d] = self.lanes;
        let high = a
            .rotate_left(1)
            .wrapping_add(b.rotate_left(7))
            .wrapping_add(c.rotate_left(12))
            .wrapping_add(d.rotate_left(18));
        let low =
            (a ^ c.rotate_left(29)).wrapping_mul(P3) ^ (b ^ d.rotate_left(41)).wrapping_mul(P1);
        let mut out = [0; 16];
        out[..8].copy_from_slice(&avalanche(high ^ self.len).to_be_bytes());
        out[8..]
            .copy_from_slice(&avalanche(low.wrapping_add(self.len.wrapping_mul(P2))).to_be_bytes());
        out
    }
}

/// xxHash64's final mix: every input bit affects every output bit.
fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            route: "payments".into(),
            tenant: Some(b"acme".to_vec()),
            key: b"order-1".to_vec(),
        }
    }

    fn done() -> Record {
        Record {
            owner: "r1 127.0.0.1:5000".into(),
            identity: identity(),
            fingerprint: fingerprint("POST", "/charges", b"{}"),
            response: Some(Stored {
                status: 503,
                headers: vec![
                    ("content-type".into(), b"text/plain".to_vec()),
                    ("x-raw".into(), vec![0xff]),
                ],
                body: b"busy".to_vec(),
            }),
        }
    }

    #[test]
    fn round_trips() {
        let d = done();
        assert_eq!(Record::decode(&d.encode()), Some(d.clone()));
        let in_flight = Record {
            response: None,
            identity: Identity {
                tenant: None,
                ..identity()
            },
            ..d
        };
        assert_eq!(Record::decode(&in_flight.encode()), Some(in_flight));
    }

    #[test]
    fn rejects_damaged_or_foreign_bytes() {
        let bytes = done().encode();
        assert_eq!(Record::decode(&bytes[..bytes.len() - 1]), None);
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Record::decode(&longer), None);
        let mut other = bytes;
        other[0] = 9;
        assert_eq!(Record::decode(&other), None);
        assert_eq!(Record::decode(b""), None);
    }

    #[test]
    fn keys_separate_routes_tenants_and_keys() {
        let base = identity();
        let variants = [
            base.clone(),
            Identity {
                route: "other".into(),
                ..base.clone()
            },
            Identity {
                tenant: None,
                ..base.clone()
            },
            Identity {
                tenant: Some(Vec::new()),
                ..base.clone()
            },
            Identity {
                tenant: Some(b"acm".to_vec()),
                key: b"eorder-1".to_vec(),
                ..base.clone()
            },
            Identity {
                key: b"order-2".to_vec(),
                ..base.clone()
            },
        ];
        let keys: Vec<String> = variants.iter().map(record_key).collect();
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(record_key(&base), record_key(&identity()));
        assert_eq!(keys[0].len(), 2 + 32);
        assert_ne!(
            generated_key("r", "id1", "a"),
            generated_key("r", "id2", "a")
        );
    }

    #[test]
    fn fingerprints_cover_method_path_and_body() {
        let f = fingerprint("POST", "/a", b"x");
        assert_eq!(f, fingerprint("POST", "/a", b"x"));
        assert_ne!(f, fingerprint("PATCH", "/a", b"x"));
        assert_ne!(f, fingerprint("POST", "/b", b"x"));
        assert_ne!(f, fingerprint("POST", "/a", b"y"));
        assert_ne!(
            fingerprint("POST", "/ax", b""),
            fingerprint("POST", "/a", b"x")
        );
    }

    #[test]
    fn the_hash_does_not_depend_on_how_the_bytes_arrive() {
        let bytes: Vec<u8> = (0..200u32).map(|i| (i * 7 % 251) as u8).collect();
        let whole = {
            let mut h = Hasher::default();
            h.write(&bytes);
            h.finish()
        };
        for split in [1, 7, 31, 32, 33, 64, 199] {
            let mut h = Hasher::default();
            for piece in bytes.chunks(split) {
                h.write(piece);
            }
            assert_eq!(h.finish(), whole, "in pieces of {split}");
        }
    }

    #[test]
    fn every_byte_and_every_length_changes_the_fingerprint() {
        // Bodies of 0 to 99 zero bytes (the zeros that fill a stripe are not the body),
        // and each 99-byte body with one byte changed: all different.
        let mut seen = std::collections::HashSet::new();
        for len in 0..100 {
            assert!(
                seen.insert(fingerprint("POST", "/", &vec![0; len])),
                "{len}"
            );
        }
        for at in 0..99 {
            let mut body = vec![0; 99];
            body[at] = 1;
            assert!(seen.insert(fingerprint("POST", "/", &body)), "{at}");
        }
    }

    #[test]
    fn uuids_have_version_and_variant() {
        let u = uuid([0xff; 16], 4);
        assert_eq!(u, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let u = uuid([0; 16], 8);
        assert_eq!(u, "00000000-0000-8000-8000-000000000000");
    }
}
