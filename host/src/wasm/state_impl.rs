//! Host side of `weir:filter/state`: namespaces keys by filter and forwards to the backend.

use std::future::Future;
use std::time::Duration;

use super::bindings::weir::filter::state::{
    BucketPolicy, Host, StateError, TakeOutcome, TakeResult, TimeWindow, Window,
};
use super::{GuestHost, HostCallKind};
use crate::state::{self as backend, StateError as BackendError};

/// Keys and values beyond this are refused before they reach a backend.
const MAX_KEY_BYTES: usize = 1024;

impl GuestHost {
    fn key(&self, key: &str) -> Result<String, StateError> {
        if key.len() > MAX_KEY_BYTES {
            return Err(StateError::TooLarge);
        }
        // Not `format!`: this runs on every state call, and core::fmt costs more than the
        // two copies.
        let filter = &self.meta.filter;
        let mut namespaced = String::with_capacity(filter.len() + 1 + key.len());
        namespaced.push_str(filter);
        namespaced.push('/');
        namespaced.push_str(key);
        Ok(namespaced)
    }
}

impl GuestHost {
    /// Runs one backend operation, cut at the call's state deadline (so a slow backend
    /// never holds the request past its deadline), and counts it and its failure.
    async fn bounded<T>(
        &self,
        name: &'static str,
        op: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, StateError> {
        self.metrics.count_state_op(&self.meta.filter, name);
        let started = self.record_calls.then(tokio::time::Instant::now);
        let result = match self.state_deadline {
            Some(until) => tokio::time::timeout_at(until, op)
                .await
                .unwrap_or_else(|_| {
                    Err(BackendError::Unavailable(
                        "the request's deadline passed while waiting for the state store".into(),
                    ))
                }),
            None => op.await,
        };
        let result = result.map_err(|e| self.state_failed(e));
        if let Some(at) = started {
            let error = result.as_ref().err().map(|e| match e {
                StateError::Unavailable(_) => "unavailable",
                StateError::TooLarge => "too_large",
            });
            self.note_call(HostCallKind::State(name), at, error);
        }
        result
    }

    /// Counts a backend failure and turns it into the error the guest sees.
    fn state_failed(&self, e: BackendError) -> StateError {
        let kind = match &e {
            BackendError::Unavailable(_) => "unavailable",
            BackendError::TooLarge => "too_large",
            BackendError::NotAnInteger => "not_an_integer",
        };
        self.metrics.count_state_error(&self.meta.filter, kind);
        guest_error(e)
    }
}

fn guest_error(e: BackendError) -> StateError {
    match e {
        BackendError::Unavailable(why) => StateError::Unavailable(why),
        BackendError::TooLarge => StateError::TooLarge,
        BackendError::NotAnInteger => StateError::Unavailable("value is not an integer".into()),
    }
}

fn ttl(ms: Option<u64>) -> Option<Duration> {
    ms.map(Duration::from_millis)
}

impl Host for GuestHost {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, StateError> {
        let key = self.key(&key)?;
        self.bounded("get", self.state.get(&key)).await
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), StateError> {
        let key = self.key(&key)?;
        self.bounded("set", self.state.set(&key, value, ttl(ttl_ms)))
            .await
    }

    async fn delete(&mut self, key: String) -> Result<(), StateError> {
        let key = self.key(&key)?;
        self.bounded("delete", self.state.delete(&key)).await
    }

    async fn incr(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, StateError> {
        let key = self.key(&key)?;
        self.bounded("incr", self.state.incr(&key, delta, ttl(ttl_ms)))
            .await
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<bool, StateError> {
        let key = self.key(&key)?;
        let op = self
            .state
            .compare_and_swap(&key, expected.as_deref(), new, ttl(ttl_ms));
        self.bounded("compare_and_swap", op).await
    }

    async fn bucket_take(
        &mut self,
        key: String,
        policy: BucketPolicy,
        now_ns: u64,
    ) -> Result<TakeResult, StateError> {
        let key = self.key(&key)?;
        let policy = backend::BucketPolicy {
            interval_ns: policy.interval_ns,
            burst: policy.burst,
            max_wait_ns: policy.max_wait_ns,
            max_queue: policy.max_queue,
        };
        let r = self
            .bounded("bucket_take", self.state.bucket_take(&key, policy, now_ns))
            .await?;
        Ok(TakeResult {
            outcome: outcome(r.outcome),
            tat_ns: r.tat_ns,
            paused_until_ns: r.paused_until_ns,
            wait_ns: r.wait_ns,
        })
    }

    async fn bucket_pause(
        &mut self,
        key: String,
        until_ns: u64,
        now_ns: u64,
    ) -> Result<(), StateError> {
        let key = self.key(&key)?;
        self.bounded(
            "bucket_pause",
            self.state.bucket_pause(&key, until_ns, now_ns),
        )
        .await
    }

    async fn window_add(
        &mut self,
        key: String,
        window: Window,
        at_ns: u64,
        now_ns: u64,
        lanes: Option<Vec<i64>>,
        ttl_ms: Option<u64>,
    ) -> Result<Vec<i64>, StateError> {
        let key = self.key(&key)?;
        let window = match window {
            Window::Count(n) => backend::Window::Count(n),
            Window::Time(TimeWindow { slot_ms, slots }) => backend::Window::Time { slot_ms, slots },
        };
        self.bounded(
            "window_add",
            self.state
                .window_add(&key, window, at_ns, now_ns, lanes.as_deref(), ttl(ttl_ms)),
        )
        .await
    }
}

fn outcome(o: backend::TakeOutcome) -> TakeOutcome {
    match o {
        backend::TakeOutcome::Admitted => TakeOutcome::Admitted,
        backend::TakeOutcome::Reserved => TakeOutcome::Reserved,
        backend::TakeOutcome::Empty => TakeOutcome::Empty,
        backend::TakeOutcome::Paused => TakeOutcome::Paused,
        backend::TakeOutcome::QueueFull => TakeOutcome::QueueFull,
        backend::TakeOutcome::TooLong => TakeOutcome::TooLong,
    }
}
