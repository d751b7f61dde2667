//! `headers`: weir's standard filter for setting and removing request and response
//! headers.
//!
//! On the way out it applies `request.set` and `request.remove` to every request (and to
//! every retry that passes it); on the way back it applies `response.set` and
//! `response.remove` to every upstream response, or to a response a later filter made.
//! It never looks at bodies and never answers on its own.
//!
//! # Config reference
//!
//! Every key is optional; an empty config changes nothing. Unknown keys are errors.
//!
//! | key | type | default | meaning |
//! | --- | --- | --- | --- |
//! | `request.set` | table of name = value | `{}` | headers to set on the request, replacing every existing value of that name |
//! | `request.remove` | list of names | `[]` | headers to remove from the request |
//! | `response.set` | table of name = value | `{}` | headers to set on the response, replacing every existing value of that name |
//! | `response.remove` | list of names | `[]` | headers to remove from the response |
//!
//! Names are case-insensitive and are sent in lowercase. weir checks them when it loads
//! the config (`weir check` and every reload) and rejects the config, naming the header,
//! when:
//!
//! - a name is empty or has a character HTTP does not allow in a name (letters, digits
//!   and ``!#$%&'*+-.^_`|~`` are allowed);
//! - a value contains CR, LF or NUL;
//! - one name is set twice in the same table, e.g. `X-Team` and `x-team`;
//! - one name is both set and removed on the same side.
//!
//! # Example
//!
//! ```toml
//! [filters.headers]
//! wasm = "filters/headers.wasm"
//! config = { request = { set = { "x-api-key" = "secret", "x-team" = "payments" }, remove = ["cookie"] }, response = { set = { "x-served-by" = "weir" }, remove = ["server"] } }
//!
//! [[routes]]
//! name = "payments"
//! match = { path_prefix = "/payments/" }
//! upstream = "payments"
//! # A route can replace the defaults above with its own config.
//! filters = [{ use = "headers", config = { request = { set = { "x-team" = "billing" } } } }]
//! ```

// The SDK keeps all the unsafe ABI glue in its own crate; a filter needs none.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use weir_filter::{
    Filter, Info, Outcome, Phases, Request, RequestAction, RequestEdit, RequestInfo,
    ResponseAction, ResponseEdit,
};

/// The filter's config, as documented in the crate docs.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Changes to every request on its way upstream.
    pub request: Rules,
    /// Changes to every response on its way back to the client.
    pub response: Rules,
}

/// What to change on one side, request or response.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rules {
    /// Headers to set, replacing every existing value of that name.
    pub set: BTreeMap<String, String>,
    /// Headers to remove.
    pub remove: Vec<String>,
}

/// The filter: the edits its config describes, checked and built once at init.
#[derive(Debug)]
pub struct Headers {
    request: Option<RequestEdit>,
    response: Option<ResponseEdit>,
}

impl Headers {
    /// The edit applied to every request; `None` if the config changes nothing there.
    pub fn request_edit(&self) -> Option<&RequestEdit> {
        self.request.as_ref()
    }

    /// The edit applied to every response; `None` if the config changes nothing there.
    pub fn response_edit(&self) -> Option<&ResponseEdit> {
        self.response.as_ref()
    }
}

impl Filter for Headers {
    type Config = Config;
    const NAME: &'static str = "headers";

    fn new(config: Config) -> Result<Self, String> {
        let request = config.request.validate("request")?;
        let response = config.response.validate("response")?;
        let request = RequestEdit {
            set_headers: request.set,
            remove_headers: request.remove,
            ..RequestEdit::new()
        };
        let response = ResponseEdit {
            set_headers: response.set,
            remove_headers: response.remove,
        };
        Ok(Headers {
            request: (!request.is_empty()).then_some(request),
            response: (!response.is_empty()).then_some(response),
        })
    }

    /// weir calls only the phases the config changes something in.
    fn info(&self) -> Info {
        Info {
            phases: Phases {
                request: self.request.is_some(),
                response: self.response.is_some(),
            },
            ..Info::default()
        }
    }

    fn on_request(&mut self, _: &RequestInfo, _: &Request) -> RequestAction {
        // An action owns its edit, so each request gets its own copy.
        RequestAction::proceed_with(self.request.clone(), None)
    }

    fn on_response(
        &mut self,
        _: &RequestInfo,
        _: &Request,
        _: Option<Vec<u8>>,
        outcome: &Outcome,
    ) -> ResponseAction {
        match outcome {
            Outcome::Response(_) => ResponseAction::Continue(self.response.clone()),
            // There are no headers to edit when the upstream never answered.
            Outcome::Error(_) => ResponseAction::proceed(),
        }
    }
}

weir_filter::export_filter!(Headers);

// === impl Rules ===

/// One side's rules after validation: lowercase names, set in name order.
struct Checked {
    set: Vec<(String, Vec<u8>)>,
    remove: Vec<String>,
}

impl Rules {
    /// Checks every name and value, and lowercases the names. `side` is `"request"` or
    /// `"response"`, for the error message.
    fn validate(self, side: &str) -> Result<Checked, String> {
        let mut set = BTreeMap::new();
        for (name, value) in self.set {
            let lower = header_name(&name).map_err(|e| format!("{side}.set: {e}"))?;
            if value.bytes().any(|b| matches!(b, b'\r' | b'\n' | b'\0')) {
                return Err(format!(
                    "{side}.set: the value of header {name:?} contains CR, LF or NUL"
                ));
            }
            if set.insert(lower, value.into_bytes()).is_some() {
                return Err(format!(
                    "{side}.set: header {name:?} is set twice (names are case-insensitive)"
                ));
            }
        }
        let mut remove = BTreeSet::new();
        for name in self.remove {
            let lower = header_name(&name).map_err(|e| format!("{side}.remove: {e}"))?;
            if set.contains_key(&lower) {
                return Err(format!(
                    "{side}: header {name:?} is both in `set` and in `remove`"
                ));
            }
            remove.insert(lower);
        }
        Ok(Checked {
            set: set.into_iter().collect(),
            remove: remove.into_iter().collect(),
        })
    }
}

/// The lowercase form of `name`, if it is a valid HTTP field name (an RFC 9110 token).
fn header_name(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("a header name is empty".into());
    }
    if let Some(c) = name.chars().find(|&c| !is_token_char(c)) {
        return Err(format!(
            "header name {name:?} contains {c:?}, which HTTP does not allow in a name"
        ));
    }
    Ok(name.to_ascii_lowercase())
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_filter::{Response, UpstreamError, build_filter};

    fn build(json: &str) -> Result<Headers, String> {
        build_filter::<Headers>(json)
    }

    fn info() -> RequestInfo {
        RequestInfo::new("r1").with_route("payments")
    }

    fn request() -> Request {
        Request::new("GET", "/").with_header("cookie", "a=b")
    }

    const EXAMPLE: &str = r#"{
        "request": {"set": {"x-api-key": "secret", "X-Team": "payments"}, "remove": ["Cookie"]},
        "response": {"set": {"x-served-by": "weir"}, "remove": ["server"]}
    }"#;

    #[test]
    fn the_example_config_builds_both_edits() {
        let mut f = build(EXAMPLE).unwrap();
        let request_edit = RequestEdit::new()
            .set_header("x-api-key", "secret")
            .set_header("x-team", "payments")
            .remove_header("cookie");
        let response_edit = ResponseEdit::new()
            .set_header("x-served-by", "weir")
            .remove_header("server");
        assert_eq!(f.request_edit(), Some(&request_edit));
        assert_eq!(f.response_edit(), Some(&response_edit));

        assert_eq!(
            f.on_request(&info(), &request()),
            RequestAction::Continue((Some(request_edit), None))
        );
        let outcome = Outcome::Response(Response::new(200).with_header("server", "nginx"));
        assert_eq!(
            f.on_response(&info(), &request(), None, &outcome),
            ResponseAction::Continue(Some(response_edit))
        );
    }

    #[test]
    fn weir_calls_only_the_phases_with_something_to_change() {
        let phases = |json: &str| build(json).unwrap().info().phases;
        assert_eq!(phases(EXAMPLE), Phases::BOTH);
        assert_eq!(
            phases(r#"{"request": {"remove": ["cookie"]}}"#),
            Phases::REQUEST
        );
        assert_eq!(
            phases(r#"{"response": {"remove": ["server"]}}"#),
            Phases::RESPONSE
        );
        let none = Phases {
            request: false,
            response: false,
        };
        assert_eq!(phases("{}"), none);
    }

    #[test]
    fn an_empty_config_changes_nothing() {
        for json in [
            "",
            "{}",
            r#"{"request": {}, "response": {"set": {}, "remove": []}}"#,
        ] {
            let mut f = build(json).unwrap();
            assert_eq!(f.on_request(&info(), &request()), RequestAction::proceed());
            let outcome = Outcome::Response(Response::new(200));
            assert_eq!(
                f.on_response(&info(), &request(), None, &outcome),
                ResponseAction::proceed()
            );
        }
    }

    #[test]
    fn one_side_only() {
        let mut f = build(r#"{"response": {"remove": ["server"]}}"#).unwrap();
        assert_eq!(f.on_request(&info(), &request()), RequestAction::proceed());
        let outcome = Outcome::Response(Response::new(200));
        assert_eq!(
            f.on_response(&info(), &request(), None, &outcome),
            ResponseAction::proceed_with_edit(ResponseEdit::new().remove_header("server"))
        );
    }

    #[test]
    fn no_edit_when_the_upstream_failed() {
        let mut f = build(EXAMPLE).unwrap();
        let outcome = Outcome::Error(UpstreamError::ConnectFailed);
        assert_eq!(
            f.on_response(&info(), &request(), None, &outcome),
            ResponseAction::proceed()
        );
    }

    #[test]
    fn config_errors_name_the_filter_and_the_header() {
        let cases = [
            (
                r#"{"requests": {}}"#,
                "headers: unknown field `requests`, expected `request` or `response`",
            ),
            (
                r#"{"request": {"add": {}}}"#,
                "headers: unknown field `add`, expected `set` or `remove`",
            ),
            (
                r#"{"request": {"set": {"x-a": 1}}}"#,
                "headers: invalid type: integer `1`, expected a string",
            ),
            (
                r#"{"request": {"set": {"": "v"}}}"#,
                "headers: request.set: a header name is empty",
            ),
            (
                r#"{"request": {"set": {"x a": "v"}}}"#,
                r#"headers: request.set: header name "x a" contains ' ', which HTTP does not allow in a name"#,
            ),
            (
                r#"{"response": {"remove": ["x:y"]}}"#,
                r#"headers: response.remove: header name "x:y" contains ':', which HTTP does not allow in a name"#,
            ),
            (
                r#"{"request": {"set": {"x-a": "v\r\nx-evil: 1"}}}"#,
                r#"headers: request.set: the value of header "x-a" contains CR, LF or NUL"#,
            ),
            (
                r#"{"response": {"set": {"x-a": "v\u0000"}}}"#,
                r#"headers: response.set: the value of header "x-a" contains CR, LF or NUL"#,
            ),
            (
                r#"{"request": {"set": {"X-A": "1", "x-a": "2"}}}"#,
                r#"headers: request.set: header "x-a" is set twice (names are case-insensitive)"#,
            ),
            (
                r#"{"request": {"set": {"x-a": "1"}, "remove": ["X-A"]}}"#,
                r#"headers: request: header "X-A" is both in `set` and in `remove`"#,
            ),
        ];
        for (json, want) in cases {
            assert_eq!(build(json).unwrap_err(), want, "config {json}");
        }
    }

    #[test]
    fn values_may_hold_any_other_text() {
        let f = build(r#"{"request": {"set": {"x-note": "café; q=0.5\t!"}}}"#).unwrap();
        assert_eq!(
            f.request_edit(),
            Some(&RequestEdit::new().set_header("x-note", "café; q=0.5\t!"))
        );
    }

    #[test]
    fn removed_names_are_lowercased_and_deduplicated() {
        let f = build(r#"{"request": {"remove": ["Cookie", "cookie", "x-b"]}}"#).unwrap();
        assert_eq!(
            f.request_edit(),
            Some(
                &RequestEdit::new()
                    .remove_header("cookie")
                    .remove_header("x-b")
            )
        );
    }
}
