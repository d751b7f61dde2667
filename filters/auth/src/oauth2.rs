//! The OAuth2 client credentials grant (RFC 6749 §4.4): fetching a token through
//! `outbound`, caching it in `state` for every instance, one fetch at a time, and
//! dropping it when the upstream refuses it.

use std::time::Duration;

use serde::Deserialize;
use weir_filter::UpstreamError;
use weir_filter::outbound::{OutboundError, OutboundRequest, OutboundResponse};
use weir_filter::serde_json::{self, Value};

use crate::encode::{base64, fnv1a_64, form, form_encode};

/// How the client authenticates to the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// HTTP Basic with the form-encoded id and secret: what servers must support.
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Body,
}

/// What the engine needs from the host. The filter uses weir's state store and
/// `outbound`; the unit tests use a map and a scripted endpoint.
pub trait Env {
    /// The value under `key`, if any and not expired.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    /// Stores `value` under `key` for `ttl`.
    fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), String>;
    /// Removes `key`.
    fn delete(&self, key: &str) -> Result<(), String>;
    /// Stores `new` under `key` for `ttl` if the value is still `expected`.
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl: Duration,
    ) -> Result<bool, String>;
    /// Sends an HTTP request through `outbound`.
    fn send(&self, req: OutboundRequest) -> Result<OutboundResponse, OutboundError>;
    /// Counts a token fetch: `"ok"` or `"error"`.
    fn fetched(&self, result: &'static str);
    /// Logs a warning. Never called with a credential.
    fn warn(&self, message: &str);
}

/// What [`OAuth2::token`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Token {
    /// A token to send.
    Ready(String),
    /// Another request is fetching one; ask again shortly.
    Busy,
    /// No token: the message says why (for the 503), without any credential.
    Failed(String),
}

/// A token response (RFC 6749 §5.1). Unknown members are ignored.
#[derive(Debug, PartialEq, Eq)]
pub struct Issued {
    /// The access token.
    pub access_token: String,
    /// Its lifetime, if the server said.
    pub expires_in: Option<u64>,
}

/// The validated `oauth2` section. No `Debug`: it holds the client secret.
pub struct OAuth2 {
    upstream: String,
    token_path: String,
    client_id: String,
    client_secret: String,
    scope: Option<String>,
    audience: Option<String>,
    client_auth: ClientAuth,
    refresh_before: Duration,
    timeout: Duration,
    reissue_upstream: Option<String>,
    /// The state key of the cached token.
    token_key: String,
    /// The state key of the fetch lock.
    lock_key: String,
}

/// The lifetime assumed when the token response has no `expires_in`.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

/// How long a refused token stays marked as refused: just long enough for the
/// compare-and-swap to replace it atomically; an empty value reads as "no token".
const TOMBSTONE_TTL: Duration = Duration::from_millis(1);

impl OAuth2 {
    /// The section, validated by the caller.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        upstream: String,
        token_path: String,
        client_id: String,
        client_secret: String,
        scope: Option<String>,
        audience: Option<String>,
        client_auth: ClientAuth,
        refresh_before: Duration,
        timeout: Duration,
        reissue_upstream: Option<String>,
    ) -> OAuth2 {
        // One token per (endpoint, client, scope, audience), whichever route asks: the
        // key is hashed to keep it short; the upstream name keeps it readable.
        let identity = [
            upstream.as_str(),
            &token_path,
            &client_id,
            scope.as_deref().unwrap_or(""),
            audience.as_deref().unwrap_or(""),
        ]
        .join("\0");
        let id = format!("{upstream}:{:016x}", fnv1a_64(identity.as_bytes()));
        OAuth2 {
            token_key: format!("token:{id}"),
            lock_key: format!("lock:{id}"),
            upstream,
            token_path,
            client_id,
            client_secret,
            scope,
            audience,
            client_auth,
            refresh_before,
            timeout,
            reissue_upstream,
        }
    }

    /// The token path on the endpoint.
    pub fn token_path(&self) -> &str {
        &self.token_path
    }

    /// How long before its expiry a token is replaced.
    pub fn refresh_before(&self) -> Duration {
        self.refresh_before
    }

    /// The token request's timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How the client authenticates.
    pub fn client_auth(&self) -> ClientAuth {
        self.client_auth
    }

    /// The upstream a request refused with 401 is re-issued through, if any.
    pub fn reissue_upstream(&self) -> Option<&str> {
        self.reissue_upstream.as_deref()
    }

    /// The state key of the cached token (without weir's `auth/` prefix).
    pub fn token_key(&self) -> &str {
        &self.token_key
    }

    /// The state key of the fetch lock.
    pub fn lock_key(&self) -> &str {
        &self.lock_key
    }

    /// A token for the next request: the cached one, or a fresh one if this caller wins
    /// the fetch lock. With `may_wait`, a caller that loses answers [`Token::Busy`];
    /// without (on the way back, where weir cannot wait), it fetches anyway. `refused` is
    /// the fingerprint of a token the upstream just refused, never handed out again.
    /// `owner` marks the lock; `budget` bounds the fetch.
    pub fn token(
        &self,
        env: &impl Env,
        owner: &str,
        budget: Duration,
        may_wait: bool,
        refused: Option<u64>,
    ) -> Token {
        if let Some(t) = self.cached(env, refused) {
            return Token::Ready(t);
        }
        // The lock outlives the longest fetch, so a holder that dies frees it by itself.
        let lock_ttl = self.timeout + Duration::from_secs(1);
        match env.compare_and_swap(&self.lock_key, None, owner.as_bytes(), lock_ttl) {
            Ok(true) => {
                // The previous holder may have stored its token between our look and our
                // lock: use it rather than fetching again.
                let result = match self.cached(env, refused) {
                    Some(t) => Token::Ready(t),
                    None => self.fetch(env, budget),
                };
                if let Err(e) = env.delete(&self.lock_key) {
                    env.warn(&format!("cannot release the token fetch lock: {e}"));
                }
                result
            }
            Ok(false) if may_wait => Token::Busy,
            Ok(false) => self.fetch(env, budget),
            Err(e) => {
                // No shared state: each request fetches for itself rather than fail.
                env.warn(&format!(
                    "state store failed ({e}); fetching a token without the lock"
                ));
                self.fetch(env, budget)
            }
        }
    }

    /// Drops the cached token if it is still the one with fingerprint `refused`; a token
    /// another request fetched since stays.
    pub fn invalidate(&self, env: &impl Env, refused: u64) {
        match env.get(&self.token_key) {
            Ok(Some(current)) if fingerprint(&current) == refused => {
                if let Err(e) =
                    env.compare_and_swap(&self.token_key, Some(&current), b"", TOMBSTONE_TTL)
                {
                    env.warn(&format!("cannot drop the refused token: {e}"));
                }
            }
            Ok(_) => {}
            Err(e) => env.warn(&format!("cannot drop the refused token: {e}")),
        }
    }

    /// The cached token, unless it is absent, dropped, or the refused one.
    fn cached(&self, env: &impl Env, refused: Option<u64>) -> Option<String> {
        let stored = match env.get(&self.token_key) {
            Ok(v) => v?,
            Err(e) => {
                env.warn(&format!("state store failed ({e}); fetching a token"));
                return None;
            }
        };
        if stored.is_empty() || Some(fingerprint(&stored)) == refused {
            return None;
        }
        String::from_utf8(stored).ok()
    }

    /// Fetches a token and caches it; the answer never contains a credential.
    fn fetch(&self, env: &impl Env, budget: Duration) -> Token {
        let result = self.request_token(env, budget.min(self.timeout));
        env.fetched(if result.is_ok() { "ok" } else { "error" });
        let issued = match result {
            Ok(issued) => issued,
            Err(message) => {
                env.warn(&message);
                return Token::Failed(message);
            }
        };
        let lifetime = issued
            .expires_in
            .map_or(DEFAULT_LIFETIME, Duration::from_secs);
        let ttl = cache_ttl(lifetime, self.refresh_before);
        if !ttl.is_zero()
            && let Err(e) = env.set(&self.token_key, issued.access_token.as_bytes(), ttl)
        {
            env.warn(&format!("cannot cache the token: {e}"));
        }
        Token::Ready(issued.access_token)
    }

    /// The token request and its answer.
    fn request_token(&self, env: &impl Env, timeout: Duration) -> Result<Issued, String> {
        let mut fields = vec![("grant_type", "client_credentials")];
        if let Some(s) = &self.scope {
            fields.push(("scope", s));
        }
        if let Some(a) = &self.audience {
            fields.push(("audience", a));
        }
        let mut req = OutboundRequest::new(&self.upstream, "POST", &self.token_path)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .timeout(timeout);
        match self.client_auth {
            ClientAuth::Basic => {
                let pair = format!(
                    "{}:{}",
                    form_encode(&self.client_id),
                    form_encode(&self.client_secret)
                );
                req = req.header(
                    "authorization",
                    format!("Basic {}", base64(pair.as_bytes())),
                );
            }
            ClientAuth::Body => {
                fields.push(("client_id", &self.client_id));
                fields.push(("client_secret", &self.client_secret));
            }
        }
        let resp = env.send(req.body(form(&fields))).map_err(|e| match e {
            OutboundError::NotAllowed(m) => format!("token endpoint not allowed: {m}"),
            OutboundError::Invalid(m) => format!("token request refused by weir: {m}"),
            OutboundError::Upstream(e) => format!("token endpoint failed: {}", upstream_error(e)),
            OutboundError::TooLarge => "token endpoint answered with too large a body".into(),
        })?;
        if !(200..300).contains(&resp.status) {
            return Err(format!("token endpoint answered {}", resp.status));
        }
        parse_token(&resp.body)
            .map_err(|why| format!("token endpoint answered {} but {why}", resp.status))
    }
}

/// How long a token with `lifetime` stays cached: until `refresh_before` its expiry, or
/// half its lifetime when that is shorter; zero (not cached) for an expired token.
pub fn cache_ttl(lifetime: Duration, refresh_before: Duration) -> Duration {
    if lifetime > refresh_before {
        lifetime - refresh_before
    } else {
        lifetime / 2
    }
}

/// Parses a token response. The error says what is wrong, never what the body holds.
pub fn parse_token(body: &[u8]) -> Result<Issued, String> {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return Err("the body is not a JSON object".into());
    };
    let access_token = match map.get("access_token") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        Some(_) => return Err("access_token is not a non-empty string".into()),
        None => return Err("the body has no access_token".into()),
    };
    // RFC 6750 §2.1: b64token characters; anything else could not go in a header.
    if !access_token.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err("access_token has characters a header cannot carry".into());
    }
    match map.get("token_type") {
        // RFC 6749 §5.1: case-insensitive.
        Some(Value::String(t)) if t.eq_ignore_ascii_case("bearer") => {}
        None => {}
        Some(Value::String(t)) => {
            return Err(format!("token_type {t:?} is not supported (only Bearer)"));
        }
        Some(_) => return Err("token_type is not a string".into()),
    }
    // Some servers send the lifetime as a string.
    let expires_in = match map.get("expires_in") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                .ok_or("expires_in is negative")?,
        ),
        Some(Value::String(s)) => Some(
            s.trim()
                .parse::<u64>()
                .map_err(|_| "expires_in is not a whole number of seconds")?,
        ),
        Some(_) => return Err("expires_in is not a number".into()),
    };
    Ok(Issued {
        access_token,
        expires_in,
    })
}

/// A token's fingerprint, for the memo: the token itself never leaves the state store.
pub fn fingerprint(token: &[u8]) -> u64 {
    fnv1a_64(token)
}

/// The WIT name of an upstream error, for messages.
pub fn upstream_error(e: UpstreamError) -> &'static str {
    match e {
        UpstreamError::ConnectFailed => "connect-failed",
        UpstreamError::ConnectTimeout => "connect-timeout",
        UpstreamError::Timeout => "timeout",
        UpstreamError::Reset => "reset",
        UpstreamError::Tls => "tls",
        UpstreamError::Protocol => "protocol",
        UpstreamError::Overloaded => "overloaded",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_responses() {
        let ok = |body: &str| parse_token(body.as_bytes()).unwrap();
        assert_eq!(
            ok(r#"{"access_token":"abc.DEF-1","token_type":"Bearer","expires_in":3600}"#),
            Issued {
                access_token: "abc.DEF-1".into(),
                expires_in: Some(3600)
            }
        );
        assert_eq!(
            ok(r#"{"access_token":"t","token_type":"bearer","expires_in":"60","scope":"x"}"#)
                .expires_in,
            Some(60)
        );
        assert_eq!(
            ok(r#"{"access_token":"t","expires_in":59.9}"#).expires_in,
            Some(59)
        );
        assert_eq!(ok(r#"{"access_token":"t"}"#).expires_in, None);
        assert_eq!(
            ok(r#"{"access_token":"t","expires_in":null}"#).expires_in,
            None
        );

        for (body, want) in [
            ("not json", "not a JSON object"),
            ("[1]", "not a JSON object"),
            (r#"{"token_type":"Bearer"}"#, "no access_token"),
            (r#"{"access_token":""}"#, "not a non-empty string"),
            (r#"{"access_token":7}"#, "not a non-empty string"),
            (
                r#"{"access_token":"a b"}"#,
                "characters a header cannot carry",
            ),
            (
                r#"{"access_token":"a\nb"}"#,
                "characters a header cannot carry",
            ),
            (
                r#"{"access_token":"t","token_type":"mac"}"#,
                "token_type \"mac\" is not supported",
            ),
            (
                r#"{"access_token":"t","expires_in":-5}"#,
                "expires_in is negative",
            ),
            (
                r#"{"access_token":"t","expires_in":"soon"}"#,
                "not a whole number",
            ),
            (
                r#"{"access_token":"t","expires_in":[]}"#,
                "expires_in is not a number",
            ),
        ] {
            let err = parse_token(body.as_bytes()).unwrap_err();
            assert!(err.contains(want), "{body}: {err}");
        }
    }

    #[test]
    fn cache_ttl_keeps_refresh_before_or_half_the_lifetime() {
        let s = Duration::from_secs;
        assert_eq!(cache_ttl(s(3600), s(30)), s(3570));
        assert_eq!(cache_ttl(s(2), s(1)), s(1));
        assert_eq!(cache_ttl(s(20), s(30)), s(10));
        assert_eq!(cache_ttl(s(0), s(30)), s(0));
    }

    #[test]
    fn keys_differ_by_client_and_scope_but_not_by_secret() {
        let o = |client: &str, scope: Option<&str>, secret: &str| {
            OAuth2::new(
                "oauth".into(),
                "/token".into(),
                client.into(),
                secret.into(),
                scope.map(Into::into),
                None,
                ClientAuth::Basic,
                Duration::ZERO,
                Duration::from_secs(1),
                None,
            )
        };
        let a = o("a", None, "s1");
        assert!(a.token_key().starts_with("token:oauth:"));
        assert!(a.lock_key().starts_with("lock:oauth:"));
        assert_eq!(a.token_key(), o("a", None, "s2").token_key());
        assert_ne!(a.token_key(), o("b", None, "s1").token_key());
        assert_ne!(a.token_key(), o("a", Some("read"), "s1").token_key());
        assert!(!a.token_key().contains("s1"));
    }
}
