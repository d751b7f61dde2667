//! Raw HTTP/1.x over a `TcpStream`, for requests a client library would not send as
//! written: dot segments and escapes in the target (reqwest resolves and re-encodes
//! them), a missing or repeated `Host`, absolute-form targets, HTTP/1.0.
//!
//! 1. Write the whole request head yourself, ending in `\r\n\r\n`.
//! 2. `raw::send(weir.addr(), head).await` sends those bytes as they are on a new
//!    connection and reads one response: head, then a `content-length` body, or
//!    everything up to the end of the connection when there is no `content-length`.
//! 3. Read `status`, `header(name)`, `body` or `json()`.
//!
//! `raw::converse(weir.addr(), requests)` writes several pipelined requests at once and
//! returns everything weir said until it closed the connection.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

/// One response as it came off the wire.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Every header line, names lowercase, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON; panics if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Writes `requests` (several, pipelined, the last asking to close) all at once on a
/// new connection to `addr`, and reads everything weir says until it closes. Panics if
/// it has not closed within [`WAIT`], or said something that is not text.
pub async fn converse(addr: SocketAddr, requests: &str) -> String {
    let mut conn = TcpStream::connect(addr).await.expect("connect to weir");
    conn.write_all(requests.as_bytes())
        .await
        .expect("write the requests");
    let mut said = Vec::new();
    tokio::time::timeout(WAIT, conn.read_to_end(&mut said))
        .await
        .expect("weir closes after the last request")
        .expect("read what weir said");
    String::from_utf8(said).expect("weir's answers are text")
}

/// Sends `request` as it is on a new connection to `addr` and reads one response. Panics
/// if that takes longer than [`WAIT`] or the response is not HTTP/1.x.
pub async fn send(addr: SocketAddr, request: impl AsRef<[u8]>) -> RawResponse {
    let request = request.as_ref();
    tokio::time::timeout(WAIT, exchange(addr, request))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no response within {WAIT:?} to {:?}",
                String::from_utf8_lossy(request)
            )
        })
}

async fn exchange(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.write_all(request).await.expect("write request");
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read response");
        assert!(
            n > 0,
            "connection closed before a whole response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.x status line: {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (name, value) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line {l:?}"));
            (name.trim().to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    let mut body = buf.split_off(head_end);
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse::<usize>().expect("numeric content-length"));
    match length {
        Some(len) => {
            while body.len() < len {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.expect("read response body");
                assert!(
                    n > 0,
                    "connection closed {} bytes into a {len}-byte body",
                    body.len()
                );
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(len);
        }
        None => {
            stream
                .read_to_end(&mut body)
                .await
                .expect("read response body");
        }
    }
    RawResponse {
        status,
        headers,
        body,
    }
}
