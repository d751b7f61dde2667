//! RFC 9111 rules as plain functions: what may be stored, how long it is fresh, how old
//! it is, and which request headers select a variant. Times are milliseconds since the
//! Unix epoch, passed in by the caller.

use std::time::{Duration, UNIX_EPOCH};

use weir_filter::FieldsExt;

use crate::directives::{CacheControl, split_list};

/// Statuses a cache may store with heuristic freshness (RFC 9110 §15.1).
pub const HEURISTIC_STATUSES: [u16; 12] =
    [200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

/// Heuristic freshness is this fraction of the time since `Last-Modified` (RFC 9111
/// §4.2.2 suggests 10%)…
pub const HEURISTIC_PERCENT: u64 = 10;

/// …and at most this long.
pub const HEURISTIC_MAX_MS: u64 = 24 * 3600 * 1000;

/// Why a response is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// Only responses to GET are stored.
    Method,
    /// The request had `Range`: partial content is not cached.
    Range,
    /// 1xx, 206 or 304: not a complete final response.
    NotFinal,
    /// `no-store` on the request.
    RequestNoStore,
    /// `no-store` on the response.
    NoStore,
    /// `private` on the response.
    Private,
    /// `Authorization` on the request, without `public`, `s-maxage` or `must-revalidate`.
    Authorization,
    /// `Vary: *`: no later request can match it.
    VaryStar,
    /// `Set-Cookie`: a shared cache would hand one client's cookie to another.
    SetCookie,
    /// No `max-age`, `s-maxage`, `Expires` or `public`, and no heuristic or default TTL.
    NoFreshness,
}

impl NotStored {
    /// A short label for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            NotStored::Method => "method",
            NotStored::Range => "range request",
            NotStored::NotFinal => "not a complete final response",
            NotStored::RequestNoStore => "request no-store",
            NotStored::NoStore => "no-store",
            NotStored::Private => "private",
            NotStored::Authorization => "authorization",
            NotStored::VaryStar => "vary *",
            NotStored::SetCookie => "set-cookie",
            NotStored::NoFreshness => "no freshness information",
        }
    }
}

/// Whether a shared cache may store `status`/`resp` given in answer to a `method`
/// request with `req` headers (RFC 9111 §3, §3.5). `default_ttl` says whether the
/// operator's default TTL is on.
pub fn storable(
    method: &str,
    req: &(impl FieldsExt + ?Sized),
    status: u16,
    resp: &(impl FieldsExt + ?Sized),
    default_ttl: bool,
) -> Result<(), NotStored> {
    if method != "GET" {
        return Err(NotStored::Method);
    }
    if req.header("range").is_some() {
        return Err(NotStored::Range);
    }
    if !(200..=599).contains(&status) || status == 206 || status == 304 {
        return Err(NotStored::NotFinal);
    }
    if CacheControl::parse(req).no_store {
        return Err(NotStored::RequestNoStore);
    }
    let cc = CacheControl::parse(resp);
    if cc.no_store {
        return Err(NotStored::NoStore);
    }
    if cc.private {
        return Err(NotStored::Private);
    }
    if req.header("authorization").is_some()
        && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate)
    {
        return Err(NotStored::Authorization);
    }
    if matches!(vary(resp), Vary::Star) {
        return Err(NotStored::VaryStar);
    }
    if resp.header("set-cookie").is_some() {
        return Err(NotStored::SetCookie);
    }
    let explicit =
        cc.max_age.is_some() || cc.s_maxage.is_some() || resp.header("expires").is_some();
    let heuristic_status = HEURISTIC_STATUSES.contains(&status);
    let heuristic = heuristic_status && resp.header("last-modified").is_some();
    if !(explicit || cc.public || heuristic || (default_ttl && heuristic_status)) {
        return Err(NotStored::NoFreshness);
    }
    Ok(())
}

/// Where a freshness lifetime came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `s-maxage`.
    SMaxAge,
    /// `max-age`.
    MaxAge,
    /// `Expires` − `Date`.
    Expires,
    /// The route's `default_ttl`.
    DefaultTtl,
    /// 10% of `Date` − `Last-Modified`.
    Heuristic,
    /// Nothing: the response is stale at once.
    None,
}

/// The freshness lifetime of a stored response in milliseconds, for a shared cache
/// (RFC 9111 §4.2.1): `s-maxage`, else `max-age`, else `Expires − Date`; without any of
/// those, the operator's `default_ttl`, else the heuristic. The last two apply only to a
/// heuristically cacheable status or a `public` response. `response_time` stands in for a
/// missing `Date`.
pub fn freshness_lifetime(
    status: u16,
    resp: &(impl FieldsExt + ?Sized),
    response_time: u64,
    default_ttl: Option<Duration>,
) -> (u64, Source) {
    let cc = CacheControl::parse(resp);
    if let Some(s) = cc.s_maxage {
        return (s * 1000, Source::SMaxAge);
    }
    if let Some(s) = cc.max_age {
        return (s * 1000, Source::MaxAge);
    }
    let date = http_date(resp, "date").unwrap_or(response_time);
    if resp.header("expires").is_some() {
        // An invalid Expires (e.g. "0") means "already expired" (RFC 9111 §5.3).
        let expires = http_date(resp, "expires").unwrap_or(0);
        return (expires.saturating_sub(date), Source::Expires);
    }
    if HEURISTIC_STATUSES.contains(&status) || cc.public {
        if let Some(ttl) = default_ttl {
            return (ttl.as_millis() as u64, Source::DefaultTtl);
        }
        if let Some(lm) = http_date(resp, "last-modified") {
            let lifetime = date.saturating_sub(lm) / 100 * HEURISTIC_PERCENT;
            return (lifetime.min(HEURISTIC_MAX_MS), Source::Heuristic);
        }
    }
    (0, Source::None)
}

/// The response's age when it arrived, corrected for the time it spent on the way
/// (RFC 9111 §4.2.3: `corrected_initial_age`), in milliseconds.
pub fn corrected_initial_age(
    resp: &(impl FieldsExt + ?Sized),
    request_time: u64,
    response_time: u64,
) -> u64 {
    let date = http_date(resp, "date").unwrap_or(response_time);
    let apparent_age = response_time.saturating_sub(date);
    let age_value = resp
        .header_str("age")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0)
        .min(1 << 31);
    let response_delay = response_time.saturating_sub(request_time);
    let corrected_age_value = age_value * 1000 + response_delay;
    apparent_age.max(corrected_age_value)
}

/// `current_age` (RFC 9111 §4.2.3) at `now`, in milliseconds.
pub fn current_age(corrected_initial_age: u64, response_time: u64, now: u64) -> u64 {
    corrected_initial_age + now.saturating_sub(response_time)
}

/// A header holding an HTTP date, in milliseconds since the epoch.
pub fn http_date(headers: &(impl FieldsExt + ?Sized), name: &str) -> Option<u64> {
    let text = headers.header_str(name)?;
    let t = httpdate::parse_http_date(text.trim()).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64)
}

/// A response's `Vary`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vary {
    /// `Vary: *`.
    Star,
    /// The request header names, lowercase, sorted, without repeats (empty: no `Vary`).
    Names(Vec<String>),
}

/// The `Vary` of a response, from all its `Vary` fields.
pub fn vary(resp: &(impl FieldsExt + ?Sized)) -> Vary {
    let mut names = Vec::new();
    for value in resp.header_all("vary") {
        for name in split_list(&String::from_utf8_lossy(value)) {
            if name == "*" {
                return Vary::Star;
            }
            names.push(name.to_ascii_lowercase());
        }
    }
    names.sort();
    names.dedup();
    Vary::Names(names)
}

/// The request's values of the `names` headers, normalised so that whitespace around
/// commas and the split into several fields do not matter (RFC 9111 §4.1). An absent
/// header is `None`, which matches only another absent header.
pub fn vary_values(
    req: &(impl FieldsExt + ?Sized),
    names: &[String],
) -> Vec<(String, Option<String>)> {
    names
        .iter()
        .map(|name| {
            let mut parts = Vec::new();
            let mut present = false;
            for v in req.header_all(name) {
                present = true;
                parts.extend(split_list(&String::from_utf8_lossy(v)));
            }
            (name.clone(), present.then(|| parts.join(",")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    const NOW: u64 = 1_700_000_000_000;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn date(ms: u64) -> String {
        httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
    }

    fn store(req: &[(&str, &str)], status: u16, resp: &[(&str, &str)]) -> Result<(), NotStored> {
        storable("GET", &h(req), status, &h(resp), false)
    }

    #[test]
    fn storability_rules() {
        let ok = [("cache-control", "max-age=60")];
        assert_eq!(store(&[], 200, &ok), Ok(()));
        assert_eq!(
            storable("POST", &h(&[]), 200, &h(&ok), false),
            Err(NotStored::Method)
        );
        assert_eq!(
            storable("HEAD", &h(&[]), 200, &h(&ok), false),
            Err(NotStored::Method)
        );
        assert_eq!(
            store(&[("range", "bytes=0-1")], 200, &ok),
            Err(NotStored::Range)
        );
        assert_eq!(store(&[], 103, &ok), Err(NotStored::NotFinal));
        assert_eq!(store(&[], 206, &ok), Err(NotStored::NotFinal));
        assert_eq!(store(&[], 304, &ok), Err(NotStored::NotFinal));
        assert_eq!(
            store(&[("cache-control", "no-store")], 200, &ok),
            Err(NotStored::RequestNoStore)
        );
        assert_eq!(
            store(&[], 200, &[("cache-control", "max-age=60, no-store")]),
            Err(NotStored::NoStore)
        );
        assert_eq!(
            store(&[], 200, &[("cache-control", "private, max-age=60")]),
            Err(NotStored::Private)
        );
        let auth = [("authorization", "Bearer x")];
        assert_eq!(store(&auth, 200, &ok), Err(NotStored::Authorization));
        for cc in [
            "public, max-age=60",
            "s-maxage=60",
            "max-age=60, must-revalidate",
        ] {
            assert_eq!(store(&auth, 200, &[("cache-control", cc)]), Ok(()), "{cc}");
        }
        assert_eq!(
            store(
                &[],
                200,
                &[("cache-control", "max-age=60"), ("vary", "accept, *")]
            ),
            Err(NotStored::VaryStar)
        );
        assert_eq!(
            store(
                &[],
                200,
                &[("cache-control", "max-age=60"), ("set-cookie", "a=b")]
            ),
            Err(NotStored::SetCookie)
        );
        assert_eq!(store(&[], 200, &[]), Err(NotStored::NoFreshness));
        assert_eq!(store(&[], 200, &[("expires", &date(NOW))]), Ok(()));
        assert_eq!(store(&[], 500, &[("cache-control", "public")]), Ok(()));
        let lm = [("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")];
        assert_eq!(store(&[], 200, &lm), Ok(()));
        assert_eq!(store(&[], 404, &lm), Ok(()));
        assert_eq!(store(&[], 500, &lm), Err(NotStored::NoFreshness));
        assert_eq!(store(&[], 302, &lm), Err(NotStored::NoFreshness));
        // default_ttl opens heuristic statuses only.
        assert_eq!(storable("GET", &h(&[]), 200, &h(&[]), true), Ok(()));
        assert_eq!(
            storable("GET", &h(&[]), 500, &h(&[]), true),
            Err(NotStored::NoFreshness)
        );
    }

    #[test]
    fn freshness_precedence() {
        let d = date(NOW);
        let e = date(NOW + 300_000);
        let all = h(&[
            ("cache-control", "max-age=60, s-maxage=120"),
            ("date", &d),
            ("expires", &e),
        ]);
        assert_eq!(
            freshness_lifetime(200, &all, NOW, None),
            (120_000, Source::SMaxAge)
        );
        let no_s = h(&[
            ("cache-control", "max-age=60"),
            ("date", &d),
            ("expires", &e),
        ]);
        assert_eq!(
            freshness_lifetime(200, &no_s, NOW, None),
            (60_000, Source::MaxAge)
        );
        let exp = h(&[("date", &d), ("expires", &e)]);
        assert_eq!(
            freshness_lifetime(200, &exp, NOW, None),
            (300_000, Source::Expires)
        );
        let bad = h(&[("date", &d), ("expires", "0")]);
        assert_eq!(
            freshness_lifetime(200, &bad, NOW, None),
            (0, Source::Expires)
        );
    }

    #[test]
    fn heuristic_and_default_ttl() {
        let d = date(NOW);
        let lm = date(NOW - 1000 * 1000);
        let resp = h(&[("date", &d), ("last-modified", &lm)]);
        assert_eq!(
            freshness_lifetime(200, &resp, NOW, None),
            (100_000, Source::Heuristic)
        );
        let ancient = h(&[
            ("date", &d),
            ("last-modified", "Thu, 01 Jan 1970 00:00:00 GMT"),
        ]);
        assert_eq!(
            freshness_lifetime(200, &ancient, NOW, None),
            (HEURISTIC_MAX_MS, Source::Heuristic)
        );
        let ttl = Some(Duration::from_secs(30));
        assert_eq!(
            freshness_lifetime(200, &resp, NOW, ttl),
            (30_000, Source::DefaultTtl)
        );
        assert_eq!(
            freshness_lifetime(500, &h(&[]), NOW, ttl),
            (0, Source::None)
        );
        let explicit = h(&[("cache-control", "max-age=5")]);
        assert_eq!(
            freshness_lifetime(200, &explicit, NOW, ttl),
            (5_000, Source::MaxAge)
        );
    }

    #[test]
    fn age_arithmetic() {
        // Date 3 s before arrival, Age 10, 2 s on the way: corrected_age_value = 12 s.
        let resp = h(&[("date", &date(NOW - 3000)), ("age", "10")]);
        assert_eq!(corrected_initial_age(&resp, NOW - 2000, NOW), 12_000);
        // The apparent age wins when the Date is older than Age says.
        let resp = h(&[("date", &date(NOW - 20_000)), ("age", "10")]);
        assert_eq!(corrected_initial_age(&resp, NOW, NOW), 20_000);
        // A Date in the future counts as 0.
        let resp = h(&[("date", &date(NOW + 50_000))]);
        assert_eq!(corrected_initial_age(&resp, NOW, NOW), 0);
        assert_eq!(current_age(12_000, NOW, NOW + 5_000), 17_000);
    }

    #[test]
    fn vary_names_and_values() {
        let resp = h(&[("vary", "Accept-Encoding, accept"), ("vary", "accept")]);
        assert_eq!(
            vary(&resp),
            Vary::Names(vec!["accept".into(), "accept-encoding".into()])
        );
        assert_eq!(vary(&h(&[])), Vary::Names(vec![]));
        assert_eq!(vary(&h(&[("vary", "*")])), Vary::Star);
        let names = vec!["accept".to_string(), "x-tenant".to_string()];
        let a = vary_values(&h(&[("accept", "a/b ,  c/d")]), &names);
        let b = vary_values(&h(&[("accept", "a/b"), ("accept", "c/d")]), &names);
        assert_eq!(a, b);
        assert_eq!(
            a,
            vec![
                ("accept".into(), Some("a/b,c/d".into())),
                ("x-tenant".into(), None)
            ]
        );
        let empty = vary_values(&h(&[("x-tenant", "")]), &names);
        assert_ne!(empty[1], a[1]);
    }
}
