//! Accepting connections without spinning, for the proxy and the admin listener alike.
//!
//! `accept` fails for reasons that outlast the call: out of file descriptors (`EMFILE`,
//! `ENFILE`), out of socket buffers. Retrying at once would spin a core at 100 % and fill
//! the log until the condition clears; so [`next`] logs the failure, waits [`BACKOFF`]
//! (in which connections in progress may finish and free their descriptors), and tries
//! again.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// How long to wait after a failed `accept` before the next one.
pub const BACKOFF: Duration = Duration::from_millis(50);

/// Something connections are accepted from: a [`TcpListener`], or a test's script.
pub trait Accept {
    /// What one accepted connection is.
    type Conn;

    /// Waits for the next connection. Must be cancel-safe, as
    /// [`TcpListener::accept`] is: the listeners call it inside `select!`.
    fn accept(&self) -> impl Future<Output = io::Result<Self::Conn>> + Send;
}

impl Accept for TcpListener {
    type Conn = (TcpStream, SocketAddr);

    fn accept(&self) -> impl Future<Output = io::Result<Self::Conn>> + Send {
        TcpListener::accept(self)
    }
}

/// The next connection from `listener`. A failed accept is logged (naming `listener_name`)
/// and retried after [`BACKOFF`], as often as it takes. Cancel-safe.
pub async fn next<L: Accept>(listener: &L, listener_name: &str) -> L::Conn {
    loop {
        match listener.accept().await {
            Ok(conn) => return conn,
            Err(e) => {
                tracing::warn!(
                    listener = listener_name,
                    error = %e,
                    retry_in_ms = BACKOFF.as_millis() as u64,
                    "accept failed"
                );
                tokio::time::sleep(BACKOFF).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::time::Instant;

    /// Fails with `EMFILE` for its first `failures` calls, then accepts; a connection is
    /// the number of the call that made it. Notes when each call was made.
    struct Scripted {
        failures: usize,
        calls: Mutex<Vec<Instant>>,
    }

    impl Scripted {
        fn new(failures: usize) -> Scripted {
            Scripted {
                failures,
                calls: Mutex::new(Vec::new()),
            }
        }

        fn calls(&self) -> Vec<Instant> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl Accept for Scripted {
        type Conn = usize;

        fn accept(&self) -> impl Future<Output = io::Result<usize>> + Send {
            let mut calls = self.calls.lock().unwrap();
            calls.push(Instant::now());
            let n = calls.len();
            // Fail rather than hang the test: a spinning loop never lets paused time move.
            assert!(n <= 1000, "accept called {n} times: the loop spins");
            let failed = n <= self.failures;
            async move {
                if failed {
                    // EMFILE: "Too many open files".
                    Err(io::Error::from_raw_os_error(24))
                } else {
                    Ok(n)
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_failure_waits_the_backoff_before_the_next_try() {
        let listener = Scripted::new(3);
        let started = Instant::now();
        assert_eq!(next(&listener, "test").await, 4);
        let calls = listener.calls();
        assert_eq!(calls.len(), 4);
        for pair in calls.windows(2) {
            assert_eq!(pair[1] - pair[0], BACKOFF, "{calls:?}");
        }
        assert_eq!(Instant::now() - started, 3 * BACKOFF);
    }

    #[tokio::test(start_paused = true)]
    async fn an_accept_that_keeps_failing_is_retried_at_the_backoff_rate_not_in_a_spin() {
        let listener = Scripted::new(usize::MAX);
        let second = Duration::from_secs(1);
        let waited = tokio::time::timeout(second, next(&listener, "test")).await;
        assert!(waited.is_err(), "no connection was ever accepted");
        // One try at once, then one per backoff; the timeout and the last backoff end
        // together, and the timer fires first.
        let tries = listener.calls().len() as u32;
        let want = second.as_millis() / BACKOFF.as_millis();
        assert!(
            (want..=want + 1).contains(&u128::from(tries)),
            "{tries} tries in {second:?}, want about {want}"
        );
    }

    #[tokio::test]
    async fn a_tcp_listener_accepts_through_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move { TcpStream::connect(addr).await.unwrap() });
        let (_stream, peer) = next(&listener, "test").await;
        let client = client.await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
    }
}
