//! The small encodings the filter needs: base64 (Basic auth), percent-encoding (the API
//! key query parameter), form encoding (the token request), and the query edit.

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> shift & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so the result is
/// safe as a query parameter name or value whatever the upstream's parser.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `application/x-www-form-urlencoded` (the WHATWG URL standard's serializer, which RFC
/// 6749 §2.3.1 and appendix B use): space becomes `+`.
pub fn form_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b' ' => out.push('+'),
            b if b.is_ascii_alphanumeric() || matches!(b, b'*' | b'-' | b'.' | b'_') => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A form body from (name, value) pairs.
pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(n, v)| format!("{}={}", form_encode(n), form_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `path_with_query` with the (already encoded) parameter `name=value` appended, and any
/// parameter of the same name the client sent removed, so the upstream sees one key.
pub fn with_query_param(path_with_query: &str, name: &str, value: &str) -> String {
    let (path, query) = match path_with_query.split_once('?') {
        Some((p, q)) => (p, q),
        None => (path_with_query, ""),
    };
    let mut out = String::with_capacity(path_with_query.len() + name.len() + value.len() + 2);
    out.push_str(path);
    out.push('?');
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        if !key.eq_ignore_ascii_case(name) {
            out.push_str(pair);
            out.push('&');
        }
    }
    out.push_str(name);
    out.push('=');
    out.push_str(value);
    out
}

/// A 64-bit FNV-1a hash: state keys and the memo's token fingerprint. Not a security
/// measure; it only keeps keys short and tokens out of the memo.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_test_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want, "{input}");
        }
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn percent_encoding_keeps_only_unreserved() {
        assert_eq!(percent_encode("aZ09-._~"), "aZ09-._~");
        assert_eq!(percent_encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(percent_encode("+%?#"), "%2B%25%3F%23");
    }

    #[test]
    fn form_encoding_follows_whatwg() {
        assert_eq!(form_encode("a b*c-d.e_f"), "a+b*c-d.e_f");
        assert_eq!(form_encode("~:/+="), "%7E%3A%2F%2B%3D");
        assert_eq!(
            form(&[
                ("grant_type", "client_credentials"),
                ("scope", "read write")
            ]),
            "grant_type=client_credentials&scope=read+write"
        );
    }

    #[test]
    fn query_param_is_appended_and_replaces_the_clients() {
        assert_eq!(
            with_query_param("/v1/items", "key", "k%201"),
            "/v1/items?key=k%201"
        );
        assert_eq!(with_query_param("/v1?", "key", "k"), "/v1?key=k");
        assert_eq!(
            with_query_param("/v1?a=1&key=forged&b=&KEY&keyx=2", "key", "k"),
            "/v1?a=1&b=&keyx=2&key=k"
        );
        assert_eq!(with_query_param("/?a=%20", "k", "v"), "/?a=%20&k=v");
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
