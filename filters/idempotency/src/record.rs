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

/// FNV-1a 64 forwards and backwards over length-prefixed parts: 128 bits. Not
/// cryptographic; records repeat their identity and reads check it.
#[derive(Default)]
struct Hasher {
    bytes: Vec<u8>,
}

impl Hasher {
    fn part(&mut self, b: &[u8]) {
        self.bytes
            .extend_from_slice(&(b.len() as u64).to_be_bytes());
        self.bytes.extend_from_slice(b);
    }

    fn finish(self) -> [u8; 16] {
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let fnv = |it: &mut dyn Iterator<Item = &u8>| {
            it.fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
        };
        let a = fnv(&mut self.bytes.iter());
        let b = fnv(&mut self.bytes.iter().rev());
        let mut out = [0; 16];
        out[..8].copy_from_slice(&a.to_be_bytes());
        out[8..].copy_from_slice(&b.to_be_bytes());
        out
    }
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
    fn uuids_have_version_and_variant() {
        let u = uuid([0xff; 16], 4);
        assert_eq!(u, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let u = uuid([0; 16], 8);
        assert_eq!(u, "00000000-0000-8000-8000-000000000000");
    }
}
