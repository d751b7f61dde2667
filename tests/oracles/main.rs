//! The standard filters against their oracles (ORACLES.md: Envoy, resilience4j, the IETF
//! RateLimit drafts, RFC 9111), run in the filter harness on a virtual clock: every
//! sequence is reproduced exactly, with no real sleeping.
mod auth;
mod breaker;
mod cache;
mod idempotency;
mod limiter;
mod retry;
mod sanitize;
