//! Clients for calling weir (or an upstream) from a test.
//!
//! They never use a proxy from the environment and they time out, so a broken weir fails
//! the test instead of hanging it. `builder()` is the base every client here starts from,
//! for tests that need one more setting.

use std::time::Duration;

use super::body::PatternBody;

/// The whole-request timeout of these clients. Tests that move very large bodies in a
/// debug build should build their own client with a longer one.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// A builder with no proxy, a 5 s connect timeout and a [`TIMEOUT`] request timeout.
pub fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(TIMEOUT)
}

/// An HTTP/1.1 (or h2 by ALPN over TLS) client.
pub fn client() -> reqwest::Client {
    builder().build().expect("build client")
}

/// A client that speaks HTTP/2 in clear text from the first byte (prior knowledge).
pub fn h2_client() -> reqwest::Client {
    builder()
        .http2_prior_knowledge()
        .build()
        .expect("build h2 client")
}

/// A request body of `len` generated pattern bytes, streamed as it is sent (see
/// [`super::body`]); check it upstream with `body::pattern_digest(len)`.
pub fn pattern_body(len: u64) -> reqwest::Body {
    PatternBody::new(len).into_reqwest()
}

/// GETs `url` and reads the answer as JSON, whatever its status.
pub async fn get_json(url: &str) -> serde_json::Value {
    client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
}

/// The `/metrics` text of `weir`'s admin API (which must answer 200).
pub async fn metrics(weir: &super::weir::Weir) -> String {
    let resp = client()
        .get(weir.admin_url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status(), 200);
    resp.text().await.expect("metrics body")
}
