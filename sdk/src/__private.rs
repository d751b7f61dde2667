//! What [`export_filter!`](crate::export_filter) expands to calls into. Not a public API.

use std::cell::RefCell;
use std::thread::LocalKey;

use crate::{Filter, FilterInfo, Outcome, Request, RequestAction, RequestInfo, ResponseAction};

pub use crate::bindings::exports::weir::filter::filter::Guest;

/// Where an instance keeps its filter between calls.
pub type Slot<F> = LocalKey<RefCell<Option<F>>>;

/// `init`: parse the config, build the filter, keep it, and describe it to the host.
pub fn init<F: Filter>(
    slot: &'static Slot<F>,
    config: &str,
    version: &str,
) -> Result<FilterInfo, String> {
    let filter = crate::build_filter::<F>(config)?;
    let info = filter.info();
    slot.with_borrow_mut(|s| *s = Some(filter));
    Ok(FilterInfo {
        name: F::NAME.to_owned(),
        version: version.to_owned(),
        wants_request_body: info.wants_request_body,
        wants_response_body: info.wants_response_body,
        may_retry: info.may_retry,
    })
}

/// `on-request`: hand the call to the filter `init` kept.
pub fn on_request<F: Filter>(
    slot: &'static Slot<F>,
    info: RequestInfo,
    req: Request,
) -> RequestAction {
    slot.with_borrow_mut(|s| initialised(s).on_request(&info, &req))
}

/// `on-response`: hand the call to the filter `init` kept.
pub fn on_response<F: Filter>(
    slot: &'static Slot<F>,
    info: RequestInfo,
    req: Request,
    memo: Option<Vec<u8>>,
    outcome: Outcome,
) -> ResponseAction {
    slot.with_borrow_mut(|s| initialised(s).on_response(&info, &req, memo, &outcome))
}

fn initialised<F: Filter>(slot: &mut Option<F>) -> &mut F {
    // The host calls `init` before anything else and drops an instance whose `init`
    // failed, so this is a host bug; trapping is the only sensible answer.
    slot.as_mut().unwrap_or_else(|| {
        panic!(
            "weir-filter: filter `{}` was called without a successful `init`",
            F::NAME
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Default)]
    #[serde(default, deny_unknown_fields)]
    struct Config {
        greeting: String,
    }

    struct Hello {
        greeting: String,
    }

    impl Filter for Hello {
        type Config = Config;
        const NAME: &'static str = "hello";

        fn new(config: Config) -> Result<Self, String> {
            if config.greeting == "no" {
                return Err("greeting refused".into());
            }
            Ok(Hello {
                greeting: config.greeting,
            })
        }

        fn info(&self) -> crate::Info {
            crate::Info {
                may_retry: true,
                ..Default::default()
            }
        }

        fn on_request(&mut self, _: &RequestInfo, _: &Request) -> RequestAction {
            RequestAction::proceed_with(None, Some(self.greeting.clone().into_bytes()))
        }
    }

    thread_local! {
        static SLOT: RefCell<Option<Hello>> = const { RefCell::new(None) };
    }

    fn info() -> RequestInfo {
        RequestInfo {
            id: "r1".into(),
            route: "test".into(),
            attempt: 1,
            remaining_ms: 1000,
            client_addr: "127.0.0.1:1".into(),
        }
    }

    fn request() -> Request {
        Request {
            method: "GET".into(),
            upstream: "http://example.test".into(),
            path_with_query: "/".into(),
            headers: vec![],
            body: None,
        }
    }

    #[test]
    fn init_keeps_the_filter_and_reports_info() {
        let got = init(&SLOT, r#"{"greeting":"hi"}"#, "1.2.3").unwrap();
        assert_eq!(
            got,
            FilterInfo {
                name: "hello".into(),
                version: "1.2.3".into(),
                wants_request_body: false,
                wants_response_body: false,
                may_retry: true,
            }
        );
        assert_eq!(
            on_request(&SLOT, info(), request()),
            RequestAction::Continue((None, Some(b"hi".to_vec())))
        );
        assert_eq!(
            on_response(
                &SLOT,
                info(),
                request(),
                None,
                Outcome::Error(crate::UpstreamError::Timeout)
            ),
            ResponseAction::Continue(None)
        );
    }

    #[test]
    fn init_names_the_filter_in_errors() {
        assert_eq!(
            init(&SLOT, r#"{"greeting":"no"}"#, "1").unwrap_err(),
            "hello: greeting refused"
        );
        let err = init(&SLOT, r#"{"greting":"hi"}"#, "1").unwrap_err();
        assert!(
            err.starts_with("hello: unknown field `greting`"),
            "got {err:?}"
        );
    }

    #[test]
    #[should_panic(expected = "without a successful `init`")]
    fn a_call_before_init_panics() {
        thread_local! {
            static EMPTY: RefCell<Option<Hello>> = const { RefCell::new(None) };
        }
        on_request(&EMPTY, info(), request());
    }
}
