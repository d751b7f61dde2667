//! The least a hyper proxy does: the `hyper` row of weir's benchmark (`bench/`).
//!
//! 1. `weir-bench-hyper LISTEN UPSTREAM`, e.g. `127.0.0.1:18093 127.0.0.1:18080`.
//! 2. Each client connection gets its own upstream connection, opened when the client
//!    connects and kept for as long as it stays: no pool, no lookup, no lock.
//! 3. A request goes upstream as it came (same head, same body), and the upstream's
//!    answer comes back as it came.
//!
//! weir's request path stands on these crates: hyper's HTTP/1 server and client, tokio
//! (here one current-thread runtime, as weir runs one per core) and mimalloc. This
//! program does nothing else, so its row is the floor under weir's empty chain: what
//! those crates cost before weir routes, counts or rewrites anything.

use std::cell::RefCell;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::{Request, server::conn::http1};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// The allocator weir uses (`host/src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: weir-bench-hyper LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse().map_err(|e| format!("{listen}: {e}"))?;
    let upstream: SocketAddr = upstream.parse().map_err(|e| format!("{upstream}: {e}"))?;
    // The clock and timer driver too, as weir's runtimes have: a proxy needs timeouts,
    // and the driver is consulted each time the runtime parks.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::bind(listen).await?;
        println!("hyper listening on {}", listener.local_addr()?);
        loop {
            let (client, _) = listener.accept().await?;
            tokio::task::spawn_local(async move {
                if let Err(e) = serve(client, upstream).await {
                    eprintln!("connection: {e}");
                }
            });
        }
    })
}

/// Serves one client connection over its own upstream connection.
async fn serve(client: TcpStream, upstream: SocketAddr) -> Result<(), Error> {
    client.set_nodelay(true)?;
    let up = TcpStream::connect(upstream).await?;
    up.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(up)).await?;
    tokio::task::spawn_local(async move {
        if let Err(e) = conn.await {
            eprintln!("upstream connection: {e}");
        }
    });
    let sender: Rc<RefCell<SendRequest<Incoming>>> = Rc::new(RefCell::new(sender));
    let service = service_fn(move |req: Request<Incoming>| {
        let sender = Rc::clone(&sender);
        async move {
            // HTTP/1 serves one request at a time, so no borrow is ever contended; none
            // is held across an await.
            poll_fn(|cx| sender.borrow_mut().poll_ready(cx)).await?;
            let response = sender.borrow_mut().send_request(req);
            response.await
        }
    });
    http1::Builder::new()
        .serve_connection(TokioIo::new(client), service)
        .await?;
    Ok(())
}
