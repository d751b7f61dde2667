//! Test support for the end-to-end tests.
//!
//! - [`upstream`]: a scripted, recording hyper upstream (HTTP/1.1 + HTTP/2, optional TLS).
//! - [`weir`]: runs the real `weir` binary against a config written to a temp dir.
//! - [`tls`]: test CAs and certificates (rcgen), rustls server configs, TLS clients.
//! - [`client`]: plain reqwest clients for calling weir.
//! - [`raw`]: raw HTTP/1.x bytes over a TCP stream, for requests no client would send.
//! - [`redis`]: real `redis-server` processes and a local Redis Cluster.
//! - [`body`]: deterministic generated bodies and a streaming checksum, for big-body tests.
//! - [`disk`]: a directory whose writes fail as on a full disk, for the journal's tests.

// Each test uses a different subset of these helpers, so any one build of the test
// binary leaves some of them unused; that is expected, not dead code.
#![allow(dead_code)]

pub mod body;
pub mod client;
pub mod disk;
pub mod raw;
pub mod redis;
pub mod tls;
pub mod upstream;
pub mod weir;

use std::time::Duration;

/// A generous bound for anything a test waits on. It only matters when something is
/// broken: a passing test never waits this long.
pub const WAIT: Duration = Duration::from_secs(30);

/// How much later than a configured time (a route timeout, a call limit, a delay) a test
/// accepts weir's answer. The tests run a debug build on a busy 2-core machine, where a
/// process may not be scheduled for a second or more, so an upper bound is the
/// configured value plus this; a weir that ignores the configured value overshoots it by
/// far more (each test that uses it makes sure of that). Lower bounds need no margin: a
/// timer never fires early.
pub const SLACK: Duration = Duration::from_secs(5);
