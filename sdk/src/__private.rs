//! What [`export_filter!`](crate::export_filter) expands to calls into. Not a public API.

use std::cell::RefCell;
use std::thread::LocalKey;

use crate::bindings::weir::filter0_2_1::types as wit;
use crate::{Filter, Outcome, Request, RequestAction, RequestInfo, ResponseAction};

pub use crate::bindings::exports::weir::filter0_2_1::filter::Guest;
pub use wit::{
    FilterInfo, Request as RequestHandle, RequestAction as WitRequestAction,
    Response as ResponseHandle, ResponseAction as WitResponseAction,
};

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
    let mut phases = wit::Phases::empty();
    if info.phases.request {
        phases |= wit::Phases::REQUEST;
    }
    if info.phases.response {
        phases |= wit::Phases::RESPONSE;
    }
    Ok(FilterInfo {
        name: F::NAME.to_owned(),
        version: version.to_owned(),
        phases,
        wants_request_body: info.wants_request_body,
        wants_response_body: info.wants_response_body,
        may_retry: info.may_retry,
    })
}

/// `on-request`: hand the call to the filter `init` kept, then make its changes through
/// the handle.
pub fn on_request<F: Filter>(slot: &'static Slot<F>, handle: &RequestHandle) -> wit::RequestAction {
    let (info, req) = (RequestInfo::lent(handle), Request::lent(handle));
    match slot.with_borrow_mut(|s| initialised(s).on_request(&info, &req)) {
        RequestAction::Continue((edit, memo)) => {
            if let Some(edit) = edit {
                edit.apply(handle);
            }
            if let Some(memo) = memo {
                handle.set_memo(&memo);
            }
            wit::RequestAction::Continue
        }
        RequestAction::Respond(resp) => wit::RequestAction::Respond(crate::http::reply(resp)),
        RequestAction::Wait(ms) => wit::RequestAction::Wait(ms),
    }
}

/// `on-response`: hand the call to the filter `init` kept, then make its changes through
/// the handle.
pub fn on_response<F: Filter>(
    slot: &'static Slot<F>,
    req: &RequestHandle,
    resp: &ResponseHandle,
) -> wit::ResponseAction {
    let (info, request) = (RequestInfo::lent(req), Request::lent(req));
    // The error, the status and the memo in one call into weir.
    let facts = resp.facts();
    let outcome = Outcome::lent(resp, &facts);
    let memo = facts.memo;
    let action =
        slot.with_borrow_mut(|s| initialised(s).on_response(&info, &request, memo, &outcome));
    match action {
        ResponseAction::Continue(edit) => {
            if let Some(edit) = edit {
                edit.apply(resp);
            }
            wit::ResponseAction::Continue
        }
        ResponseAction::Respond(r) => wit::ResponseAction::Respond(crate::http::reply(r)),
        ResponseAction::Retry(ms) => wit::ResponseAction::Retry(ms),
    }
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
                phases: crate::Phases::REQUEST,
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

    #[test]
    fn init_keeps_the_filter_and_reports_info() {
        let got = init(&SLOT, r#"{"greeting":"hi"}"#, "1.2.3").unwrap();
        assert_eq!(
            got,
            FilterInfo {
                name: "hello".into(),
                version: "1.2.3".into(),
                phases: wit::Phases::REQUEST,
                wants_request_body: false,
                wants_response_body: false,
                may_retry: true,
            }
        );
        let action = SLOT.with_borrow_mut(|s| {
            initialised(s).on_request(&RequestInfo::new("r1"), &Request::new("GET", "/"))
        });
        assert_eq!(
            action,
            RequestAction::Continue((None, Some(b"hi".to_vec())))
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
        EMPTY.with_borrow_mut(|s| {
            initialised(s);
        });
    }
}
