//! `[listen] workers`: client connections are served by that many threads, each with its
//! own event loop, all accepting on the one listening socket.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::WAIT;
use crate::support::upstream::{Reply, Upstream};
use crate::support::weir::Weir;

/// The names of weir's threads, from `/proc`.
fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect();
    names.sort();
    names
}

/// Sends `count` keep-alive GETs one after another on one connection; returns their
/// status lines.
async fn keep_alive_gets(addr: std::net::SocketAddr, count: usize) -> Vec<String> {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let mut statuses = Vec::new();
    for i in 0..count {
        let head = format!("GET /w/{i} HTTP/1.1\r\nhost: weir\r\n\r\n");
        conn.write_all(head.as_bytes()).await.unwrap();
        // The upstream answers "ok" with a content-length: read to the end of it.
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        while !(got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"ok")) {
            let n = conn.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed after {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        statuses.push(text.lines().next().unwrap_or_default().to_owned());
    }
    statuses
}

/// Three workers start, named for `top` and debuggers; 24 clients at once, 5 requests
/// each, are all answered; and the upstream connections are pooled across them: never
/// more are opened than requests were in flight, though each worker keeps its own.
#[tokio::test]
async fn three_workers_serve_concurrent_clients_over_pooled_upstream_connections() {
    let up = Upstream::start(|_, _| Reply::ok().body("ok")).await;
    let weir = Weir::start(&format!(
        r#"[listen]
addr = "127.0.0.1:0"
workers = 3

[upstreams.api]
url = "{}"

[[routes]]
name = "r"
upstream = "api"
"#,
        up.url()
    ))
    .await;
    // A new thread names itself once it runs: weir may answer before the last worker
    // has, so its name is waited for (at most WAIT).
    let workers = || -> Vec<String> {
        thread_names(weir.pid())
            .into_iter()
            .filter(|n| n.starts_with("weir-worker-"))
            .collect()
    };
    let deadline = std::time::Instant::now() + WAIT;
    while workers().len() < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        workers(),
        ["weir-worker-1", "weir-worker-2", "weir-worker-3"],
        "{:?}",
        thread_names(weir.pid())
    );

    const CLIENTS: usize = 24;
    const EACH: usize = 5;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(keep_alive_gets(weir.addr(), EACH)))
        .collect();
    for c in clients {
        let statuses = tokio::time::timeout(WAIT, c).await.unwrap().unwrap();
        assert_eq!(statuses, vec!["HTTP/1.1 200 OK"; EACH]);
    }
    assert_eq!(up.count(), CLIENTS * EACH);
    assert!(
        up.connections() <= CLIENTS,
        "{} upstream connections for at most {CLIENTS} requests in flight",
        up.connections()
    );

    // One client after the burst reuses a pooled connection, whichever worker takes it.
    // (A connection is back in its pool before its last byte reaches the client.)
    let before = up.connections();
    assert_eq!(keep_alive_gets(weir.addr(), 1).await, ["HTTP/1.1 200 OK"]);
    assert_eq!(
        up.connections(),
        before,
        "a new upstream connection was opened"
    );
}
