//! `Cache-Control` directives (RFC 9111 §5.2, RFC 5861), request and response alike.

use weir_filter::FieldsExt;

/// The directives this cache acts on, from every `Cache-Control` field of a message.
///
/// Unknown directives are ignored (RFC 9111 §5.2.3). A qualified `private="…"` or
/// `no-cache="…"` is treated as the unqualified form: the cache does not keep per-field
/// exceptions, so it stays on the safe side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache` (any form).
    pub no_cache: bool,
    /// `private` (any form).
    pub private: bool,
    /// `public`.
    pub public: bool,
    /// `must-revalidate`.
    pub must_revalidate: bool,
    /// `proxy-revalidate`.
    pub proxy_revalidate: bool,
    /// `only-if-cached` (request).
    pub only_if_cached: bool,
    /// `max-age=N`, seconds.
    pub max_age: Option<u64>,
    /// `s-maxage=N`, seconds.
    pub s_maxage: Option<u64>,
    /// `min-fresh=N` (request), seconds.
    pub min_fresh: Option<u64>,
    /// `stale-while-revalidate=N`, seconds.
    pub stale_while_revalidate: Option<u64>,
    /// `stale-if-error=N`, seconds.
    pub stale_if_error: Option<u64>,
}

impl CacheControl {
    /// Parses every `Cache-Control` field in `headers`. Without one, a request's
    /// `Pragma: no-cache` counts as `no-cache` (RFC 9111 §5.4 allows this for requests).
    pub fn parse(headers: &(impl FieldsExt + ?Sized)) -> CacheControl {
        let mut cc = CacheControl::default();
        let mut seen = false;
        for value in headers.header_all("cache-control") {
            seen = true;
            for directive in split_list(&String::from_utf8_lossy(value)) {
                cc.apply(&directive);
            }
        }
        if !seen {
            let pragma = headers
                .header_all("pragma")
                .flat_map(|v| split_list(&String::from_utf8_lossy(v)))
                .any(|d| d.eq_ignore_ascii_case("no-cache"));
            cc.no_cache = pragma;
        }
        cc
    }

    fn apply(&mut self, directive: &str) {
        let (name, arg) = match directive.split_once('=') {
            Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
            None => (directive.trim(), None),
        };
        let seconds = || arg.and_then(delta_seconds);
        match name.to_ascii_lowercase().as_str() {
            "no-store" => self.no_store = true,
            "no-cache" => self.no_cache = true,
            "private" => self.private = true,
            "public" => self.public = true,
            "must-revalidate" => self.must_revalidate = true,
            "proxy-revalidate" => self.proxy_revalidate = true,
            "only-if-cached" => self.only_if_cached = true,
            // RFC 9111 §4.2.1: with a directive given twice, or an invalid value, the
            // response is treated as stale: an unparseable max-age counts as 0.
            "max-age" => self.max_age = Some(min_opt(self.max_age, seconds().unwrap_or(0))),
            "s-maxage" => self.s_maxage = Some(min_opt(self.s_maxage, seconds().unwrap_or(0))),
            "min-fresh" => self.min_fresh = seconds(),
            "stale-while-revalidate" => self.stale_while_revalidate = seconds(),
            "stale-if-error" => self.stale_if_error = seconds(),
            _ => {}
        }
    }

    /// Whether the response forbids serving it stale without revalidation
    /// (`must-revalidate`, `proxy-revalidate`, `no-cache`).
    pub fn forbids_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate || self.no_cache
    }
}

fn min_opt(old: Option<u64>, new: u64) -> u64 {
    old.map_or(new, |o| o.min(new))
}

/// A `delta-seconds` value; values past 2^31 are capped there (RFC 9111 §1.2.2).
fn delta_seconds(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse::<u64>().unwrap_or(u64::MAX).min(1 << 31))
}

/// Splits a comma-separated list, keeping commas inside quoted strings.
pub fn split_list(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => {
                out.push(std::mem::take(&mut cur));
            }
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(values: &[&str]) -> CacheControl {
        let headers: Vec<(String, Vec<u8>)> = values
            .iter()
            .map(|v| ("cache-control".to_string(), v.as_bytes().to_vec()))
            .collect();
        CacheControl::parse(&headers)
    }

    #[test]
    fn parses_directives_across_fields() {
        let c = cc(&[
            "public, max-age=60",
            "S-MaxAge=\"120\", stale-while-revalidate=30, stale-if-error=600",
        ]);
        assert!(c.public && !c.private && !c.no_store);
        assert_eq!(c.max_age, Some(60));
        assert_eq!(c.s_maxage, Some(120));
        assert_eq!(c.stale_while_revalidate, Some(30));
        assert_eq!(c.stale_if_error, Some(600));
    }

    #[test]
    fn qualified_forms_count_as_unqualified() {
        let c = cc(&["private=\"set-cookie, x-user\", no-cache=\"a\""]);
        assert!(c.private && c.no_cache);
        assert!(c.forbids_stale());
    }

    #[test]
    fn invalid_or_duplicate_max_age_is_the_strictest() {
        assert_eq!(cc(&["max-age=abc"]).max_age, Some(0));
        assert_eq!(cc(&["max-age=60, max-age=10"]).max_age, Some(10));
        assert_eq!(cc(&["max-age=99999999999999"]).max_age, Some(1 << 31));
        assert_eq!(cc(&["min-fresh=x"]).min_fresh, None);
    }

    #[test]
    fn pragma_no_cache_only_without_cache_control() {
        let pragma = vec![("pragma".to_string(), b"no-cache".to_vec())];
        assert!(CacheControl::parse(&pragma).no_cache);
        let mut both = pragma.clone();
        both.push(("cache-control".into(), b"max-age=5".to_vec()));
        assert!(!CacheControl::parse(&both).no_cache);
    }

    #[test]
    fn list_splitting_respects_quotes() {
        assert_eq!(
            split_list(" a, b=\"x, y\" ,, c"),
            vec!["a".to_string(), "b=\"x, y\"".into(), "c".into()]
        );
    }
}
