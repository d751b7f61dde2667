//! `{{name}}`: a weir filter that sets one header on every request it lets through.
//!
//! weir builds the filter once per instance from its config ([`Filter::new`]), then
//! calls [`Filter::on_request`] for each request on the routes that use it. The SDK's
//! documentation (`weir-filter/src/lib.rs`) describes everything else a filter can do:
//! answer requests itself, edit responses, retry, keep shared state, log and count.
//!
//! # Config
//!
//! ```toml
//! [filters.{{name}}]
//! wasm = "{{name}}.wasm"
//! config = { header = "x-team", value = "payments" }
//! ```
//!
//! | key | meaning |
//! | --- | --- |
//! | `header` | the name of the header to set; an existing one of that name is replaced |
//! | `value` | its value |

// The SDK keeps the unsafe ABI glue in its own crate; a filter needs none.
#![forbid(unsafe_code)]

use serde::Deserialize;
use weir_filter::{Filter, Info, Phases, Request, RequestAction, RequestEdit, RequestInfo, log};

/// The filter's config: what weir.toml's `config = { … }` holds, as JSON.
#[derive(Debug, Deserialize)]
// A typo in the config is an error at `weir check`, not a silently ignored key.
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The header to set.
    pub header: String,
    /// Its value.
    pub value: String,
}

/// The filter: one value per instance, built by `new` and kept between calls.
pub struct SetHeader {
    /// The header name, in lowercase.
    header: String,
    value: String,
}

impl Filter for SetHeader {
    type Config = Config;
    const NAME: &'static str = "{{name}}";

    fn new(config: Config) -> Result<Self, String> {
        let header = config.header.to_ascii_lowercase();
        if header.is_empty() || !header.bytes().all(is_token_byte) {
            return Err(format!(
                "`header` must be an HTTP header name, not {:?}",
                config.header
            ));
        }
        if config.value.contains(['\r', '\n', '\0']) {
            return Err("`value` must not contain CR, LF or NUL".to_owned());
        }
        Ok(SetHeader {
            header,
            value: config.value,
        })
    }

    /// Nothing to do on the way back: weir skips `on_response` altogether.
    fn info(&self) -> Info {
        Info {
            phases: Phases::REQUEST,
            ..Info::default()
        }
    }

    fn on_request(&mut self, _info: &RequestInfo, req: &Request) -> RequestAction {
        // `header` asks weir for that one header; logging crosses into weir too: worth it
        // here, where a client's own value is lost.
        if req
            .header(&self.header)
            .is_some_and(|v| v != self.value.as_bytes())
        {
            log::debug(&format!("replacing the client's {} header", self.header));
        }
        let edit = RequestEdit::new().set_header(self.header.as_str(), self.value.as_str());
        RequestAction::proceed_with_edit(edit)
    }
}

/// The characters HTTP allows in a header name.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

weir_filter::export_filter!(SetHeader);

// The logic runs natively under `cargo test`; `cases.toml` tests the built component.
// (`log` needs wasm: off wasm it panics, so these tests stay off that path.)
#[cfg(test)]
mod tests {
    use weir_filter::build_filter;

    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request {
        headers
            .iter()
            .fold(Request::new("GET", "/"), |r, (n, v)| r.with_header(*n, *v))
    }

    fn info() -> RequestInfo {
        RequestInfo::new("req-1")
    }

    #[test]
    fn sets_the_configured_header() {
        let mut filter =
            build_filter::<SetHeader>(r#"{"header": "X-Team", "value": "payments"}"#).unwrap();
        let action = filter.on_request(&info(), &request(&[("accept", "*/*")]));
        let edit = RequestEdit::new().set_header("x-team", "payments");
        assert_eq!(action, RequestAction::proceed_with_edit(edit));
    }

    #[test]
    fn rejects_a_bad_config() {
        let err = build_filter::<SetHeader>(r#"{"header": "x team", "value": "a"}"#)
            .err()
            .unwrap();
        assert_eq!(
            err,
            r#"{{name}}: `header` must be an HTTP header name, not "x team""#
        );
        let err = build_filter::<SetHeader>(r#"{"header": "x-team"}"#)
            .err()
            .unwrap();
        assert_eq!(err, "{{name}}: missing field `value`");
    }
}
