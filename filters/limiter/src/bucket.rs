//! The token bucket, as plain arithmetic on a stored value and the time.
//!
//! The bucket is kept in GCRA form: instead of a token count and a refill time it stores
//! one instant, the *theoretical arrival time* (`tat`), the moment the bucket will be
//! full again. A bucket with `tat <= now` is full; each token taken pushes `tat` one
//! `interval` later; a request fits when the new `tat` is at most `burst` intervals
//! ahead of now. One number, with no refill job and nothing to drift. The host's
//! `state::bucket_take` runs [`take`]'s arithmetic atomically in the store; the filter
//! keeps it here to report the bucket ([`status`]) and for its tests. Queue mode reserves a token by letting `tat` run further ahead: the
//! token becomes due when the new `tat` is `burst` intervals ahead, and how far beyond
//! that `tat` lies says how many reservations are waiting.
//!
//! Times are nanoseconds since the Unix epoch (the wall clock, which every weir process
//! sharing the state agrees on); nothing here reads a clock.

/// Nanoseconds per second.
pub const NS_PER_SEC: u64 = 1_000_000_000;

/// A bucket's numbers, worked out once from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Nanoseconds per token: `per / rate`.
    pub interval: u64,
    /// Capacity, in tokens.
    pub burst: u64,
    /// `rate`, for `RateLimit-Policy`'s `q`.
    pub quota: u64,
    /// `per` in seconds, for `RateLimit-Policy`'s `w`.
    pub window_secs: u64,
}

/// Queue mode's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queue {
    /// The longest a request may wait for its token, in nanoseconds.
    pub max_wait: u64,
    /// The most requests that may wait per key, this one included.
    pub max_queue: u64,
}

/// What the state store holds for one key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    /// When the bucket is full again (GCRA's theoretical arrival time).
    pub tat: u64,
    /// Until when the upstream asked for a pause with a 429; 0 when it did not.
    pub paused_until: u64,
}

/// Why a request did not get a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No token left (reject mode).
    Empty,
    /// The upstream answered 429 with `Retry-After`, and that time has not passed.
    Paused,
    /// `max_queue` requests are already waiting.
    QueueFull,
    /// The token would come later than `max_wait` (or the route deadline).
    TooLong,
}

/// What the `RateLimit` header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Whole tokens left (`r`).
    pub remaining: u64,
    /// Seconds, rounded up, until the bucket holds one more token (`t`).
    pub reset: u64,
}

/// The outcome of `take`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The request has its token; store `bucket`.
    Admit {
        /// The new bucket.
        bucket: Bucket,
        /// The bucket as the response reports it.
        status: Status,
    },
    /// The request has reserved the token due at `due`; store `bucket` and wait.
    Reserve {
        /// The new bucket.
        bucket: Bucket,
        /// When the reserved token is due.
        due: u64,
    },
    /// No token; the bucket is unchanged.
    Reject {
        /// Why.
        reason: Reason,
        /// Whole seconds (at least 1) until a request could be admitted.
        retry_after: u64,
    },
}

// === impl Bucket ===

impl Bucket {
    /// The stored form: `"<tat> <paused_until>"`.
    pub fn encode(&self) -> Vec<u8> {
        format!("{} {}", self.tat, self.paused_until).into_bytes()
    }

    /// Reads the stored form; `None` if it is not one.
    pub fn decode(bytes: &[u8]) -> Option<Bucket> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (tat, paused) = text.split_once(' ')?;
        Some(Bucket {
            tat: tat.parse().ok()?,
            paused_until: paused.parse().ok()?,
        })
    }

    /// How long the store must keep this value, in nanoseconds: once the bucket is full
    /// and not paused, an absent key means the same thing.
    pub fn ttl(&self, now: u64) -> u64 {
        self.tat.max(self.paused_until).saturating_sub(now)
    }

    /// This bucket paused until `until`, or as it is if it is already paused as long.
    pub fn paused(self, until: u64) -> Bucket {
        Bucket {
            paused_until: self.paused_until.max(until),
            ..self
        }
    }
}

/// Takes a token for a request arriving at `now` from `current` (`None`: no stored
/// bucket, so a full one). With `queue`, a request that finds no token reserves the next
/// one if it comes within the bounds.
pub fn take(policy: &Policy, current: Option<Bucket>, now: u64, queue: Option<Queue>) -> Decision {
    let b = current.unwrap_or_default();
    if b.paused_until > now {
        return Decision::Reject {
            reason: Reason::Paused,
            retry_after: secs_ceil(b.paused_until - now).max(1),
        };
    }
    let capacity = policy.burst * policy.interval;
    let new_tat = b.tat.max(now) + policy.interval;
    let ahead = new_tat - now;
    if ahead <= capacity {
        let bucket = Bucket { tat: new_tat, ..b };
        return Decision::Admit {
            bucket,
            status: status(policy, new_tat, now),
        };
    }
    // The token this request would take comes when `tat` is back within capacity.
    let wait = ahead - capacity;
    let reject = |reason| Decision::Reject {
        reason,
        retry_after: secs_ceil(wait).max(1),
    };
    let Some(q) = queue else {
        return reject(Reason::Empty);
    };
    // Each waiting request holds one interval of `tat` beyond capacity.
    if wait.div_ceil(policy.interval) > q.max_queue {
        return reject(Reason::QueueFull);
    }
    if wait > q.max_wait {
        return reject(Reason::TooLong);
    }
    Decision::Reserve {
        bucket: Bucket { tat: new_tat, ..b },
        due: now + wait,
    }
}

/// The bucket whose `tat` is this, as seen at `now`: tokens left and seconds until the
/// next one.
pub fn status(policy: &Policy, tat: u64, now: u64) -> Status {
    let capacity = policy.burst * policy.interval;
    let debt = tat.saturating_sub(now);
    let remaining = capacity.saturating_sub(debt) / policy.interval;
    if remaining >= policy.burst {
        return Status {
            remaining: policy.burst,
            reset: 0,
        };
    }
    // One more token once the debt is down to what `remaining + 1` tokens allow.
    let allowed = capacity - (remaining + 1) * policy.interval;
    Status {
        remaining,
        reset: secs_ceil(debt - allowed).max(1),
    }
}

/// Seconds, rounded up.
pub fn secs_ceil(ns: u64) -> u64 {
    ns.div_ceil(NS_PER_SEC)
}

/// Milliseconds, rounded up, for `wait`: the host never calls back before `ns` passed.
pub fn millis_ceil(ns: u64) -> u32 {
    u32::try_from(ns.div_ceil(1_000_000)).unwrap_or(u32::MAX)
}

/// The longest pause an upstream's `Retry-After` can cause.
pub const MAX_PAUSE_NS: u64 = 24 * 3600 * NS_PER_SEC;

/// When the pause an upstream's `Retry-After` value asks for ends, or `None` if the value
/// is neither delay-seconds nor an HTTP-date, or is not in the future. Capped at
/// [`MAX_PAUSE_NS`] from now.
pub fn retry_after_until(value: &str, now: u64) -> Option<u64> {
    let value = value.trim();
    let delay = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        value
            .parse::<u64>()
            .map_or(MAX_PAUSE_NS, |s| s.saturating_mul(NS_PER_SEC))
    } else {
        let date = httpdate::parse_http_date(value).ok()?;
        let at = date.duration_since(std::time::UNIX_EPOCH).ok()?;
        u64::try_from(at.as_nanos()).ok()?.checked_sub(now)?
    };
    (delay > 0).then(|| now + delay.min(MAX_PAUSE_NS))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = NS_PER_SEC;
    const MS: u64 = 1_000_000;
    /// Some wall-clock time, so that nothing depends on starting at 0.
    const T0: u64 = 1_700_000_000 * S + 123_456_789;

    /// `rate` per second with `burst`.
    fn policy(rate: u64, burst: u64) -> Policy {
        Policy {
            interval: S / rate,
            burst,
            quota: rate,
            window_secs: 1,
        }
    }

    /// Applies `take` and stores the result, as the filter does.
    fn step(p: &Policy, b: &mut Option<Bucket>, now: u64, q: Option<Queue>) -> Decision {
        let d = take(p, *b, now, q);
        match d {
            Decision::Admit { bucket, .. } | Decision::Reserve { bucket, .. } => {
                *b = Some(bucket);
            }
            Decision::Reject { .. } => {}
        }
        d
    }

    fn admitted(d: Decision) -> Option<Status> {
        match d {
            Decision::Admit { status, .. } => Some(status),
            _ => None,
        }
    }

    #[test]
    fn encode_decode() {
        let b = Bucket {
            tat: T0,
            paused_until: 7,
        };
        assert_eq!(Bucket::decode(&b.encode()), Some(b));
        assert_eq!(b.encode(), format!("{T0} 7").into_bytes());
        for bad in [
            &b""[..],
            b"1",
            b"1 x",
            b"x 1",
            b"1 2 3",
            &[0xff, b' ', b'1'],
        ] {
            assert_eq!(Bucket::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_full_bucket_admits_burst_then_rejects_until_the_next_token() {
        let p = policy(20, 10);
        let mut b = None;
        for i in 0..10 {
            let s = admitted(step(&p, &mut b, T0, None)).expect("within burst");
            assert_eq!(s.remaining, 9 - i);
            assert_eq!(s.reset, 1);
        }
        assert_eq!(
            step(&p, &mut b, T0, None),
            Decision::Reject {
                reason: Reason::Empty,
                retry_after: 1
            }
        );
        // The next token is 50 ms away: not at 49.999 ms, exactly at 50 ms.
        assert!(admitted(step(&p, &mut b, T0 + 50 * MS - 1, None)).is_none());
        let s = admitted(step(&p, &mut b, T0 + 50 * MS, None)).unwrap();
        assert_eq!(s.remaining, 0);
        assert!(admitted(step(&p, &mut b, T0 + 50 * MS, None)).is_none());
    }

    #[test]
    fn retry_after_and_reset_count_whole_seconds_up() {
        // 2 per 10 s, burst 3: one token every 5 s.
        let p = Policy {
            interval: 5 * S,
            burst: 3,
            quota: 2,
            window_secs: 10,
        };
        let mut b = None;
        let statuses: Vec<_> = (0..3)
            .map(|_| admitted(step(&p, &mut b, T0, None)).unwrap())
            .collect();
        assert_eq!(
            statuses,
            [
                Status {
                    remaining: 2,
                    reset: 5
                },
                Status {
                    remaining: 1,
                    reset: 5
                },
                Status {
                    remaining: 0,
                    reset: 5
                },
            ]
        );
        let reject = |now| match take(&p, b, now, None) {
            Decision::Reject {
                reason: Reason::Empty,
                retry_after,
            } => retry_after,
            d => panic!("{d:?}"),
        };
        assert_eq!(reject(T0), 5);
        assert_eq!(reject(T0 + 3200 * MS), 2);
        assert_eq!(reject(T0 + 4 * S), 1);
        assert_eq!(reject(T0 + 5 * S - 1), 1);
        // After 7 s, one token came back at 5 s and the next comes at 10 s.
        assert_eq!(
            status(&p, b.unwrap().tat, T0 + 7 * S),
            Status {
                remaining: 1,
                reset: 3
            }
        );
        // A full bucket has nothing to wait for.
        assert_eq!(
            status(&p, T0, T0 + S),
            Status {
                remaining: 3,
                reset: 0
            }
        );
    }

    #[test]
    fn the_long_run_rate_is_rate_plus_burst() {
        // A request every 10 ms for 60 s against 20/s, burst 10.
        let p = policy(20, 10);
        let mut b = None;
        let admitted = (0..6000)
            .filter(|i| admitted(step(&p, &mut b, T0 + i * 10 * MS, None)).is_some())
            .count();
        // Tokens at 0 (the burst) and every 50 ms after: 10 + 59 990 / 50.
        assert_eq!(admitted, 10 + 1199);
    }

    #[test]
    fn an_idle_bucket_refills_to_burst_and_no_further() {
        let p = policy(10, 3);
        let mut b = None;
        for _ in 0..3 {
            assert!(admitted(step(&p, &mut b, T0, None)).is_some());
        }
        let later = T0 + 60 * S;
        let got = (0..10)
            .filter(|_| admitted(step(&p, &mut b, later, None)).is_some())
            .count();
        assert_eq!(got, 3);
    }

    #[test]
    fn queue_reserves_the_next_tokens_in_order() {
        let p = policy(5, 1);
        let q = Some(Queue {
            max_wait: 10 * S,
            max_queue: 100,
        });
        let mut b = None;
        assert!(admitted(step(&p, &mut b, T0, q)).is_some());
        for k in 1..=3u64 {
            match step(&p, &mut b, T0, q) {
                Decision::Reserve { due, .. } => assert_eq!(due, T0 + k * 200 * MS),
                d => panic!("{d:?}"),
            }
        }
        // The reservations hold the tokens: a newcomer at 450 ms waits behind them.
        match step(&p, &mut b, T0 + 450 * MS, q) {
            Decision::Reserve { due, .. } => assert_eq!(due, T0 + 800 * MS),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn queue_is_bounded_by_max_queue_and_max_wait_without_taking_tokens() {
        let p = policy(1, 1);
        let q = Some(Queue {
            max_wait: 10 * S,
            max_queue: 3,
        });
        let mut b = None;
        assert!(admitted(step(&p, &mut b, T0, q)).is_some());
        for _ in 0..3 {
            assert!(matches!(step(&p, &mut b, T0, q), Decision::Reserve { .. }));
        }
        let before = b;
        assert_eq!(
            step(&p, &mut b, T0, q),
            Decision::Reject {
                reason: Reason::QueueFull,
                retry_after: 4
            }
        );
        assert_eq!(b, before, "a rejected request takes nothing");
        // One second on, the first reservation is served and its place is free.
        assert!(matches!(
            step(&p, &mut b, T0 + S, q),
            Decision::Reserve { due, .. } if due == T0 + 4 * S
        ));

        let short = Some(Queue {
            max_wait: 1500 * MS,
            max_queue: 100,
        });
        let mut b = None;
        assert!(admitted(step(&p, &mut b, T0, short)).is_some());
        assert!(matches!(
            step(&p, &mut b, T0, short),
            Decision::Reserve { .. }
        ));
        assert_eq!(
            step(&p, &mut b, T0, short),
            Decision::Reject {
                reason: Reason::TooLong,
                retry_after: 2
            }
        );
    }

    #[test]
    fn a_pause_rejects_until_it_ends_and_keeps_the_tokens() {
        let p = policy(10, 10);
        let mut b = Some(Bucket::default().paused(T0 + 2 * S));
        assert_eq!(
            step(&p, &mut b, T0, None),
            Decision::Reject {
                reason: Reason::Paused,
                retry_after: 2
            }
        );
        assert_eq!(
            step(&p, &mut b, T0 + 1500 * MS, None),
            Decision::Reject {
                reason: Reason::Paused,
                retry_after: 1
            }
        );
        let s = admitted(step(&p, &mut b, T0 + 2 * S, None)).unwrap();
        assert_eq!(s.remaining, 9);
        // A shorter pause never cuts a longer one short.
        let long = Bucket::default().paused(T0 + 5 * S);
        assert_eq!(long.paused(T0 + S).paused_until, T0 + 5 * S);
        assert_eq!(long.ttl(T0), 5 * S);
    }

    #[test]
    fn retry_after_values() {
        assert_eq!(retry_after_until("2", T0), Some(T0 + 2 * S));
        assert_eq!(retry_after_until(" 120 ", T0), Some(T0 + 120 * S));
        assert_eq!(retry_after_until("0", T0), None);
        assert_eq!(retry_after_until("", T0), None);
        assert_eq!(retry_after_until("-3", T0), None);
        assert_eq!(retry_after_until("soon", T0), None);
        assert_eq!(
            retry_after_until("99999999999999999999999", T0),
            Some(T0 + MAX_PAUSE_NS)
        );
        // 1 700 000 000 s after the epoch is Tue, 14 Nov 2023 22:13:20 GMT.
        let now = 1_700_000_000 * S;
        assert_eq!(
            retry_after_until("Tue, 14 Nov 2023 22:13:25 GMT", now),
            Some(now + 5 * S)
        );
        assert_eq!(
            retry_after_until("Tue, 14 Nov 2023 22:13:20 GMT", now),
            None
        );
        assert_eq!(
            retry_after_until("Tue, 14 Nov 2023 22:13:25 GMT", now + 500 * MS),
            Some(now + 5 * S)
        );
    }

    #[test]
    fn rounding_helpers() {
        assert_eq!(secs_ceil(0), 0);
        assert_eq!(secs_ceil(1), 1);
        assert_eq!(secs_ceil(S), 1);
        assert_eq!(secs_ceil(S + 1), 2);
        assert_eq!(millis_ceil(1), 1);
        assert_eq!(millis_ceil(200 * MS), 200);
        assert_eq!(millis_ceil(200 * MS + 1), 201);
        assert_eq!(millis_ceil(u64::MAX), u32::MAX);
    }
}
