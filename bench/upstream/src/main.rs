//! The benchmark's upstream: answers every request with the same small body, as fast as
//! one thread can, over HTTP/1.1 keep-alive.
//!
//! `cargo run --release -p weir-bench-upstream -- 127.0.0.1:18080 [FIRST-LAST]` (in
//! `bench/`)
//!
//! With a port range it also listens on each of those ports of the same host: the
//! fan-out measurement's targets, which weir needs as distinct upstreams. It prints
//! `upstream listening on ADDR` once the first address is bound. The response carries no caching
//! headers, so weir's `cache` filter stores nothing (the miss path) unless a route sets
//! `default_ttl` (the hit path). Any path answers 200, so it is also the weir-otlp row's
//! OTLP/HTTP collector (`POST /v1/traces`). One thread: `bench/run.sh` pins it to the load
//! generator's core, and a second thread would only contend there.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Body as _;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const BODY: &[u8] = b"hello, bench\n";

async fn answer(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // A request with a body (the weir-otlp row's span exports to `/v1/traces`) is read
    // whole first: hyper closes a connection whose request body was left unread, and a
    // close with unread bytes resets it, which weir would count as a failed export.
    if !req.body().is_end_stream() {
        let _ = req.into_body().collect().await;
    }
    let mut resp = Response::new(Full::new(Bytes::from_static(BODY)));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    Ok(resp)
}

fn main() -> std::io::Result<()> {
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:18080".to_owned())
        .parse()
        .map_err(|e| invalid(format!("address: {e}")))?;
    let mut addrs = vec![addr];
    if let Some(range) = args.next() {
        let (first, last) = range
            .split_once('-')
            .ok_or_else(|| invalid(format!("{range:?}: expected FIRST-LAST ports")))?;
        let port = |p: &str| {
            p.parse::<u16>()
                .map_err(|e| invalid(format!("{range:?}: {e}")))
        };
        for p in port(first)?..=port(last)? {
            addrs.push(SocketAddr::new(addr.ip(), p));
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut listeners = Vec::new();
        for a in &addrs {
            listeners.push(TcpListener::bind(a).await?);
        }
        println!("upstream listening on {}", listeners[0].local_addr()?);
        let mut tasks = Vec::new();
        for listener in listeners {
            tasks.push(tokio::spawn(serve(listener)));
        }
        for t in tasks {
            t.await.map_err(std::io::Error::other)??;
        }
        Ok(())
    })
}

/// Answers every connection `listener` accepts, until accepting fails.
async fn serve(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            // A client that goes away mid-request is not the upstream's problem.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}
