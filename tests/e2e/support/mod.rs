//! Test support for the end-to-end tests.
//!
//! - [`upstream`]: a scripted, recording hyper upstream (HTTP/1.1 + HTTP/2, optional TLS).
//! - [`weir`]: runs the real `weir` binary against a config written to a temp dir.
//! - [`tls`]: test CAs and certificates (rcgen), rustls server configs, TLS clients.
//! - [`client`]: plain reqwest clients for calling weir.
//! - [`raw`]: raw HTTP/1.x bytes over a TCP stream, for requests no client would send.
//! - [`body`]: deterministic generated bodies and a streaming checksum, for big-body tests.

// Each test uses a different subset of these helpers, so any one build of the test
// binary leaves some of them unused; that is expected, not dead code.
#![allow(dead_code)]

pub mod body;
pub mod client;
pub mod raw;
pub mod tls;
pub mod upstream;
pub mod weir;

use std::time::Duration;

/// A generous bound for anything a test waits on. It only matters when something is
/// broken: a passing test never waits this long.
pub const WAIT: Duration = Duration::from_secs(30);
