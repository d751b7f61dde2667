//! Host side of `weir:filter/state`: namespaces keys by filter and forwards to the backend.

use std::time::Duration;

use super::GuestHost;
use super::bindings::weir::filter::state::{Host, StateError};
use crate::state::StateError as BackendError;

/// Keys and values beyond this are refused before they reach a backend.
const MAX_KEY_BYTES: usize = 1024;

impl GuestHost {
    fn key(&self, key: &str) -> Result<String, StateError> {
        if key.len() > MAX_KEY_BYTES {
            return Err(StateError::TooLarge);
        }
        Ok(format!("{}/{}", self.meta.filter, key))
    }
}

impl GuestHost {
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
        self.state.get(&key).await.map_err(|e| self.state_failed(e))
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), StateError> {
        let key = self.key(&key)?;
        self.state
            .set(&key, value, ttl(ttl_ms))
            .await
            .map_err(|e| self.state_failed(e))
    }

    async fn delete(&mut self, key: String) -> Result<(), StateError> {
        let key = self.key(&key)?;
        self.state
            .delete(&key)
            .await
            .map_err(|e| self.state_failed(e))
    }

    async fn incr(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, StateError> {
        let key = self.key(&key)?;
        self.state
            .incr(&key, delta, ttl(ttl_ms))
            .await
            .map_err(|e| self.state_failed(e))
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<bool, StateError> {
        let key = self.key(&key)?;
        self.state
            .compare_and_swap(&key, expected.as_deref(), new, ttl(ttl_ms))
            .await
            .map_err(|e| self.state_failed(e))
    }
}
