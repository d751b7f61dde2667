//! Which breaker a request belongs to.

use regex::Regex;
use weir_filter::Request;

use crate::config::KeyConfig;

/// Keys longer than this are shortened to a prefix and a hash, so the state key stays
/// under the store's limit (1 KiB with the namespace).
pub const MAX_KEY_BYTES: usize = 512;

/// Where the breaker key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// The route's upstream origin, e.g. `https://api.example.com`.
    Origin,
    /// A request header's value; the origin when the header is absent, empty or not UTF-8.
    Header(String),
    /// A regex over upstream + path and query: its first capture group if it has one,
    /// else the whole match; the origin when it does not match (or matches nothing).
    Regex(Regex),
}

impl KeySource {
    /// Checks `key = { header = … }` / `key = { regex = … }`.
    pub fn from_config(config: Option<KeyConfig>) -> Result<KeySource, String> {
        let Some(config) = config else {
            return Ok(KeySource::Origin);
        };
        match (config.header, config.regex) {
            (Some(header), None) => {
                let valid = !header.is_empty()
                    && header
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                if !valid {
                    return Err(format!("key.header: {header:?} is not a valid header name"));
                }
                Ok(KeySource::Header(header.to_ascii_lowercase()))
            }
            (None, Some(pattern)) => Regex::new(&pattern)
                .map(KeySource::Regex)
                .map_err(|e| format!("key.regex: invalid regex {pattern:?}: {e}")),
            _ => Err("key: give exactly one of `header` or `regex`".to_owned()),
        }
    }

    /// The `key` label of the breaker's series for `key`, and whether it names this one
    /// breaker. The default key is the route's upstream origin, from the config, so it
    /// is its own label. A header or regex key is chosen by clients, and a label per
    /// key would grow weir's metrics with every new one: its series share one label
    /// naming the source (`header:<name>` or `regex`), and only counters use it.
    pub fn label<'a>(&'a self, key: &'a str) -> (std::borrow::Cow<'a, str>, bool) {
        match self {
            KeySource::Origin => (key.into(), true),
            KeySource::Header(name) => (format!("header:{name}").into(), false),
            KeySource::Regex(_) => ("regex".into(), false),
        }
    }

    /// The breaker key for `req`.
    pub fn key_for(&self, req: &Request) -> String {
        let key = match self {
            KeySource::Origin => None,
            KeySource::Header(name) => {
                let value = req.header_str(name);
                value
                    .as_deref()
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned)
            }
            KeySource::Regex(re) => {
                let url = format!("{}{}", req.upstream(), req.path_with_query());
                re.captures(&url)
                    .and_then(|c| c.get(1).or_else(|| c.get(0)))
                    .map(|m| m.as_str())
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned)
            }
        };
        bounded(key.unwrap_or_else(|| req.upstream().to_owned()))
    }
}

/// `key`, or for a key over [`MAX_KEY_BYTES`] its first 256 bytes (cut at a character
/// boundary), `#` and a 64-bit FNV-1a hash of the whole key in hex.
fn bounded(key: String) -> String {
    if key.len() <= MAX_KEY_BYTES {
        return key;
    }
    let mut cut = 256;
    while !key.is_char_boundary(cut) {
        cut -= 1;
    }
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{}#{hash:016x}", &key[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str, headers: &[(&str, &str)]) -> Request {
        headers.iter().fold(
            Request::new("GET", path).with_upstream("https://api.example.com"),
            |req, (n, v)| req.with_header(*n, *v),
        )
    }

    fn source(header: Option<&str>, regex: Option<&str>) -> Result<KeySource, String> {
        KeySource::from_config(Some(KeyConfig {
            header: header.map(str::to_owned),
            regex: regex.map(str::to_owned),
        }))
    }

    #[test]
    fn origin_by_default() {
        let k = KeySource::from_config(None).unwrap();
        assert_eq!(k.key_for(&req("/a", &[])), "https://api.example.com");
    }

    #[test]
    fn header_key_falls_back_to_the_origin() {
        let k = source(Some("X-Tenant"), None).unwrap();
        assert_eq!(k.key_for(&req("/", &[("x-tenant", "acme")])), "acme");
        assert_eq!(k.key_for(&req("/", &[])), "https://api.example.com");
        assert_eq!(
            k.key_for(&req("/", &[("x-tenant", " ")])),
            "https://api.example.com"
        );
    }

    #[test]
    fn regex_key_prefers_the_first_group_and_falls_back_to_the_origin() {
        let k = source(None, Some(r"/v1/([a-z]+)/")).unwrap();
        assert_eq!(k.key_for(&req("/v1/orders/7?x=1", &[])), "orders");
        assert_eq!(
            k.key_for(&req("/v2/orders/7", &[])),
            "https://api.example.com"
        );
        let k = source(None, Some(r"^https://[^/]+/v\d+")).unwrap();
        assert_eq!(
            k.key_for(&req("/v2/orders", &[])),
            "https://api.example.com/v2"
        );
        // An optional group that does not take part: the whole match.
        let k = source(None, Some(r"/items(/[0-9]+)?")).unwrap();
        assert_eq!(k.key_for(&req("/items", &[])), "/items");
        assert_eq!(k.key_for(&req("/items/42", &[])), "/42");
    }

    #[test]
    fn only_the_origin_key_is_its_own_label() {
        let origin = KeySource::from_config(None).unwrap();
        assert_eq!(
            origin.label("https://api.example.com"),
            ("https://api.example.com".into(), true)
        );
        let header = source(Some("X-Tenant"), None).unwrap();
        assert_eq!(header.label("acme"), ("header:x-tenant".into(), false));
        let regex = source(None, Some("/v1/([a-z]+)/")).unwrap();
        assert_eq!(regex.label("orders"), ("regex".into(), false));
    }

    #[test]
    fn bad_key_configs_are_refused() {
        assert_eq!(
            source(None, None).unwrap_err(),
            "key: give exactly one of `header` or `regex`"
        );
        assert_eq!(
            source(Some("x"), Some("y")).unwrap_err(),
            "key: give exactly one of `header` or `regex`"
        );
        assert_eq!(
            source(Some("x tenant"), None).unwrap_err(),
            "key.header: \"x tenant\" is not a valid header name"
        );
        let err = source(None, Some("(")).unwrap_err();
        assert!(err.starts_with("key.regex: invalid regex \"(\""), "{err}");
    }

    #[test]
    fn long_keys_are_bounded_and_stay_distinct() {
        let k = source(Some("x-tenant"), None).unwrap();
        let a = k.key_for(&req("/", &[("x-tenant", &"é".repeat(400))]));
        let b = k.key_for(&req("/", &[("x-tenant", &format!("{}x", "é".repeat(400)))]));
        assert!(a.len() < MAX_KEY_BYTES && b.len() < MAX_KEY_BYTES);
        assert_ne!(a, b);
        assert!(a.starts_with("éé"));
    }
}
