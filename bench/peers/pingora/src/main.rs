//! A minimal pingora reverse proxy: the `pingora` row of weir's benchmark (`bench/`).
//!
//! 1. `weir-bench-pingora LISTEN UPSTREAM`, e.g. `127.0.0.1:18083 127.0.0.1:18080`.
//! 2. Every request goes to `UPSTREAM` over plain HTTP/1.1; pingora keeps those
//!    connections alive in its pool (`upstream_keepalive_pool_size`).
//!
//! One worker thread, no logger installed (so pingora's `log` calls cost a level check),
//! no filters: the least a pingora proxy does.

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

/// The allocator weir uses too (`host/src/main.rs`): pingora spends a fifth of its
/// instructions in glibc's malloc and free without it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sends everything to one upstream.
struct Forward {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Forward {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: weir-bench-pingora LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads: 1,
        // The benchmark's 64 client connections each keep one upstream connection.
        upstream_keepalive_pool_size: 128,
        pid_file: std::env::temp_dir()
            .join("weir-bench-pingora.pid")
            .to_string_lossy()
            .into_owned(),
        // Stop at once on a signal: the benchmark has its numbers by then.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Forward { upstream });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    println!("pingora listening on {listen}");
    server.run_forever();
}
