//! `weir filter test`: runs one filter against a file of cases, offline.
//!
//! A case is a request, a scripted upstream and what must come out. The cases run in
//! order against one [`Harness`], the same runtime, limits and host interfaces as a
//! route, on a virtual clock. The instance pool, the state store and the clock carry over
//! from one case to the next, so a sequence (a burst, then a 429) fits in one file. There
//! is no proxy and no socket.
//!
//! 1. [`load_config`] reads the filter's config: a `.json` file, or a `.toml` file whose
//!    top-level table is the config.
//! 2. [`CaseFile::load`] reads and checks the case file. Unknown keys are errors, and
//!    every error names its `file:line:col`.
//! 3. [`Harness::load_with`] loads the component and calls its `init`.
//! 4. [`run`] plays the cases and writes `ok` or `FAIL` per case, with a diff of every
//!    field that differs, then the summary.
//!
//! [`test_filter`] does all four for the CLI. The format of the case file is in the
//! README ("Testing a filter offline").

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

use crate::authoring::harness::{Harness, request};
use crate::chain::MAX_ATTEMPTS;
use crate::config::{
    ByteSize, ConfigError, ConfigErrors, FilterConfig, HumanDuration, MAX_FILTER_MEMORY, key_span,
    line_col,
};
use crate::wasm::{CallError, LoadError, Outcome, Request, Response, UpstreamError};

/// Where the guest's stdout and stderr go in weir's log (`tracing` target).
const STDIO_TARGET: &str = "weir::wasm::stdio";

/// Where the guest's `weir:filter/log` messages go in weir's log.
const LOG_TARGET: &str = "weir::wasm::log_impl";

/// The most characters of a body shown in a diff before it is cut around the difference.
const BODY_SHOWN: usize = 72;

// === the case file ===

/// A header name: checked, and lowercased as filters see it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct FieldName(pub String);

impl TryFrom<String> for FieldName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        http::HeaderName::from_bytes(s.as_bytes())
            .map(|n| FieldName(n.as_str().to_owned()))
            .map_err(|_| format!("invalid header name {s:?}"))
    }
}

/// A header's values: `"v"`, or `["v1", "v2"]` for a header sent more than once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldValues(pub Vec<String>);

impl<'de> Deserialize<'de> for FieldValues {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FieldValues;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a header value (a string) or an array of them")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<FieldValues, E> {
                check_value(s).map_err(E::custom)?;
                Ok(FieldValues(vec![s.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FieldValues, A::Error> {
                let mut values = Vec::new();
                while let Some(v) = seq.next_element::<String>()? {
                    check_value(&v).map_err(de::Error::custom)?;
                    values.push(v);
                }
                if values.is_empty() {
                    return Err(de::Error::custom(
                        "an empty array of values: use `absent_headers` for a header that must not be there",
                    ));
                }
                Ok(FieldValues(values))
            }
        }
        d.deserialize_any(V)
    }
}

fn check_value(v: &str) -> Result<(), String> {
    http::HeaderValue::from_str(v)
        .map(drop)
        .map_err(|_| format!("invalid header value {v:?}: CR, LF and NUL are not allowed"))
}

/// A header table: `{ "name" = "value", "x-multi" = ["a", "b"] }`.
pub type Fields = BTreeMap<FieldName, FieldValues>;

fn to_fields(table: &Fields) -> Vec<(String, Vec<u8>)> {
    table
        .iter()
        .flat_map(|(n, vs)| vs.0.iter().map(|v| (n.0.clone(), v.as_bytes().to_vec())))
        .collect()
}

/// A method such as `"POST"`: an HTTP token, in upper case as filters see it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Method(pub String);

impl TryFrom<String> for Method {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if http::Method::from_bytes(s.as_bytes()).is_err() {
            return Err(format!(
                "invalid method {s:?}: expected an HTTP method such as \"GET\" or \"POST\""
            ));
        }
        if s.to_ascii_uppercase() != s {
            return Err(format!(
                "method {s:?} must be upper case: {:?}",
                s.to_ascii_uppercase()
            ));
        }
        Ok(Method(s))
    }
}

/// A path and query such as `"/v1/charges?x=1"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PathQuery(pub String);

impl TryFrom<String> for PathQuery {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if !s.starts_with('/') || s.parse::<http::uri::PathAndQuery>().is_err() {
            return Err(format!(
                "invalid path {s:?}: expected a path and query starting with `/`, like \"/v1/items?x=1\""
            ));
        }
        Ok(PathQuery(s))
    }
}

/// A status code, 100 to 999.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "i64")]
pub struct Status(pub u16);

impl TryFrom<i64> for Status {
    type Error = String;
    fn try_from(n: i64) -> Result<Self, String> {
        u16::try_from(n)
            .ok()
            .filter(|s| (100..=999).contains(s))
            .map(Status)
            .ok_or_else(|| format!("invalid status {n}: expected 100 to 999"))
    }
}

/// Bytes written as base64 (standard alphabet, padding optional).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Base64(pub Vec<u8>);

impl TryFrom<String> for Base64 {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        decode_base64(&s).map(Base64)
    }
}

/// Standard alphabet; padding optional, as people write it by hand.
fn decode_base64(s: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    LENIENT
        .decode(s)
        .map_err(|e| format!("invalid base64 {s:?}: {e}"))
}

/// An upstream error, by its WIT name: `"connect-failed"`, `"timeout"`, …
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorName {
    /// The connection was refused or failed.
    ConnectFailed,
    /// The connection took longer than the upstream's `connect_timeout`.
    ConnectTimeout,
    /// No answer before the deadline.
    Timeout,
    /// The connection broke after the request was sent.
    Reset,
    /// The TLS handshake failed.
    Tls,
    /// The upstream spoke broken HTTP.
    Protocol,
    /// weir's own connection limit for the upstream was reached.
    Overloaded,
}

impl ErrorName {
    fn of(e: UpstreamError) -> ErrorName {
        match e {
            UpstreamError::ConnectFailed => ErrorName::ConnectFailed,
            UpstreamError::ConnectTimeout => ErrorName::ConnectTimeout,
            UpstreamError::Timeout => ErrorName::Timeout,
            UpstreamError::Reset => ErrorName::Reset,
            UpstreamError::Tls => ErrorName::Tls,
            UpstreamError::Protocol => ErrorName::Protocol,
            UpstreamError::Overloaded => ErrorName::Overloaded,
        }
    }

    fn error(self) -> UpstreamError {
        match self {
            ErrorName::ConnectFailed => UpstreamError::ConnectFailed,
            ErrorName::ConnectTimeout => UpstreamError::ConnectTimeout,
            ErrorName::Timeout => UpstreamError::Timeout,
            ErrorName::Reset => UpstreamError::Reset,
            ErrorName::Tls => UpstreamError::Tls,
            ErrorName::Protocol => UpstreamError::Protocol,
            ErrorName::Overloaded => UpstreamError::Overloaded,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ErrorName::ConnectFailed => "connect-failed",
            ErrorName::ConnectTimeout => "connect-timeout",
            ErrorName::Timeout => "timeout",
            ErrorName::Reset => "reset",
            ErrorName::Tls => "tls",
            ErrorName::Protocol => "protocol",
            ErrorName::Overloaded => "overloaded",
        }
    }
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    defaults: Defaults,
    #[serde(default, rename = "case")]
    cases: Vec<Spanned<RawCase>>,
}

/// `[defaults]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    /// Applied under every case's `[case.request]`; the case's headers win by name.
    #[serde(default)]
    request: RequestSpec,
}

/// `[[case]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: String,
    #[serde(default)]
    advance: Option<HumanDuration>,
    #[serde(default)]
    attempts: Option<u32>,
    #[serde(default)]
    request: RequestSpec,
    #[serde(default)]
    upstream: Option<Script>,
    #[serde(default)]
    expect: Option<Expect>,
}

/// `[case.request]` and `[defaults.request]`: the request as it reaches the filter.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// Default `"GET"`.
    #[serde(default)]
    pub method: Option<Method>,
    /// Default `"/"`.
    #[serde(default)]
    pub path: Option<PathQuery>,
    /// The request headers.
    #[serde(default)]
    pub headers: Fields,
    /// The body as UTF-8 text.
    #[serde(default)]
    pub body: Option<String>,
    /// The body as base64, for bytes that are not text.
    #[serde(default)]
    pub body_base64: Option<Base64>,
}

/// `[case.upstream]` or one `[[case.upstream]]`: what the upstream answers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// Default 200.
    #[serde(default)]
    pub status: Option<Status>,
    /// The response headers.
    #[serde(default)]
    pub headers: Fields,
    /// The body as UTF-8 text.
    #[serde(default)]
    pub body: Option<String>,
    /// The body as base64.
    #[serde(default)]
    pub body_base64: Option<Base64>,
    /// No response at all, for this reason (instead of status, headers and body).
    #[serde(default)]
    pub error: Option<ErrorName>,
}

impl UpstreamSpec {
    fn outcome(&self) -> Outcome {
        if let Some(e) = self.error {
            return Outcome::Error(e.error());
        }
        Outcome::Response(Response {
            status: self.status.map_or(200, |s| s.0),
            headers: to_fields(&self.headers),
            body: body_of(&self.body, &self.body_base64),
        })
    }
}

fn body_of(text: &Option<String>, base64: &Option<Base64>) -> Option<Vec<u8>> {
    match (text, base64) {
        (Some(t), _) => Some(t.as_bytes().to_vec()),
        (None, Some(b)) => Some(b.0.clone()),
        (None, None) => None,
    }
}

/// `upstream`: one table (the answer to every try) or an array of tables (one per try).
#[derive(Debug, Clone)]
enum Script {
    Every(UpstreamSpec),
    PerTry(Vec<UpstreamSpec>),
}

impl<'de> Deserialize<'de> for Script {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Script;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table [case.upstream], or tables [[case.upstream]], one per try")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Script, A::Error> {
                UpstreamSpec::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(Script::Every)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Script, A::Error> {
                Vec::<UpstreamSpec>::deserialize(de::value::SeqAccessDeserializer::new(seq))
                    .map(Script::PerTry)
            }
        }
        d.deserialize_any(V)
    }
}

/// What `on-request` must have decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// It let the request through (after any waits).
    Continue,
    /// It answered itself.
    Respond,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Continue => "continue",
            Action::Respond => "respond",
        }
    }
}

/// `[case.expect]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// What `on-request` decided.
    #[serde(default)]
    pub action: Option<Action>,
    /// How many times the upstream was called.
    #[serde(default)]
    pub upstream_calls: Option<u32>,
    /// The last request the upstream received.
    #[serde(default)]
    pub upstream_request: Option<ExpectRequest>,
    /// What the client gets in the end.
    #[serde(default)]
    pub response: Option<ExpectResponse>,
}

/// `[case.expect.upstream_request]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectRequest {
    /// The method.
    #[serde(default)]
    pub method: Option<Method>,
    /// The path and query.
    #[serde(default)]
    pub path: Option<PathQuery>,
    /// Each must be present with exactly these values.
    #[serde(default)]
    pub headers: Fields,
    /// Each must be absent.
    #[serde(default)]
    pub absent_headers: Vec<FieldName>,
    /// Each must be present, with any value.
    #[serde(default)]
    pub present_headers: Vec<FieldName>,
    /// Exactly this text.
    #[serde(default)]
    pub body: Option<String>,
    /// Exactly these bytes.
    #[serde(default)]
    pub body_base64: Option<Base64>,
    /// Contains this text.
    #[serde(default)]
    pub body_contains: Option<String>,
}

/// `[case.expect.response]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectResponse {
    /// The status.
    #[serde(default)]
    pub status: Option<Status>,
    /// Instead of a response: this upstream error.
    #[serde(default)]
    pub error: Option<ErrorName>,
    /// Each must be present with exactly these values.
    #[serde(default)]
    pub headers: Fields,
    /// Each must be absent.
    #[serde(default)]
    pub absent_headers: Vec<FieldName>,
    /// Each must be present, with any value.
    #[serde(default)]
    pub present_headers: Vec<FieldName>,
    /// Exactly this text.
    #[serde(default)]
    pub body: Option<String>,
    /// Exactly these bytes.
    #[serde(default)]
    pub body_base64: Option<Base64>,
    /// Contains this text.
    #[serde(default)]
    pub body_contains: Option<String>,
}

/// The header checks of an expectation, request or response alike.
struct HeaderChecks<'a> {
    exact: &'a Fields,
    absent: &'a [FieldName],
    present: &'a [FieldName],
}

impl HeaderChecks<'_> {
    fn count(&self) -> usize {
        self.exact.len() + self.absent.len() + self.present.len()
    }
}

/// The body checks of an expectation, request or response alike.
struct BodyChecks<'a> {
    text: Option<&'a String>,
    base64: Option<&'a Base64>,
    contains: Option<&'a String>,
}

impl BodyChecks<'_> {
    fn count(&self) -> usize {
        usize::from(self.text.is_some())
            + usize::from(self.base64.is_some())
            + usize::from(self.contains.is_some())
    }
}

impl ExpectRequest {
    fn header_checks(&self) -> HeaderChecks<'_> {
        HeaderChecks {
            exact: &self.headers,
            absent: &self.absent_headers,
            present: &self.present_headers,
        }
    }

    fn body_checks(&self) -> BodyChecks<'_> {
        BodyChecks {
            text: self.body.as_ref(),
            base64: self.body_base64.as_ref(),
            contains: self.body_contains.as_ref(),
        }
    }
}

impl ExpectResponse {
    fn header_checks(&self) -> HeaderChecks<'_> {
        HeaderChecks {
            exact: &self.headers,
            absent: &self.absent_headers,
            present: &self.present_headers,
        }
    }

    fn body_checks(&self) -> BodyChecks<'_> {
        BodyChecks {
            text: self.body.as_ref(),
            base64: self.body_base64.as_ref(),
            contains: self.body_contains.as_ref(),
        }
    }
}

/// One case, checked and ready to run.
#[derive(Debug, Clone)]
pub struct Case {
    /// Its name, unique in the file.
    pub name: String,
    /// How far the virtual clock moves before the case.
    pub advance: Duration,
    /// The most tries the filter may make (1 = no retry).
    pub attempts: u32,
    /// The request as it reaches the filter.
    pub request: Request,
    /// The upstream's answers: the same on every try, or one per try.
    pub upstream: Vec<Outcome>,
    /// `upstream` has one answer per try (`[[case.upstream]]`).
    pub per_try: bool,
    /// What must come out.
    pub expect: Expect,
}

/// A checked case file.
#[derive(Debug, Clone)]
pub struct CaseFile {
    /// The file, as given.
    pub path: PathBuf,
    /// Its cases, in order.
    pub cases: Vec<Case>,
}

impl CaseFile {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<CaseFile, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_owned(),
                pos: None,
                message: format!("cannot read the case file: {e}"),
            }])
        })?;
        CaseFile::parse(path, &text)
    }

    /// Checks `text`, which came from `path`; every problem is reported, in file order.
    pub fn parse(path: &Path, text: &str) -> Result<CaseFile, ConfigErrors> {
        let error = |span: Option<Span>, message: String| ConfigError {
            file: path.to_owned(),
            pos: span.map(|s| line_col(text, s.start)),
            message,
        };
        let raw: RawFile = toml::from_str(text)
            .map_err(|e| ConfigErrors(vec![error(e.span(), e.message().trim().to_owned())]))?;
        let mut check = Checker {
            text,
            problems: Vec::new(),
        };
        let cases = check.file(&raw);
        let mut errors: Vec<ConfigError> = check
            .problems
            .into_iter()
            .map(|(span, message)| error(Some(span), message))
            .collect();
        errors.sort_by_key(|e| e.pos);
        if errors.is_empty() {
            Ok(CaseFile {
                path: path.to_owned(),
                cases,
            })
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// A byte range in the case file.
type Span = std::ops::Range<usize>;

/// The checks one value cannot make alone, with each problem placed at its key.
struct Checker<'t> {
    text: &'t str,
    problems: Vec<(Span, String)>,
}

/// Where the keys of one `[[case]]` are.
struct CaseKeys<'t> {
    text: &'t str,
    index: String,
    /// The case's table, for a key that is not written (a default).
    table: Span,
}

impl CaseKeys<'_> {
    /// The span of `case.N.<path>`, else of the case.
    fn at(&self, path: &[&str]) -> Span {
        let mut full = vec!["case", self.index.as_str()];
        full.extend_from_slice(path);
        key_span(self.text, &full).unwrap_or_else(|| self.table.clone())
    }
}

impl Checker<'_> {
    fn problem(&mut self, span: Span, message: String) {
        self.problems.push((span, message));
    }

    fn file(&mut self, raw: &RawFile) -> Vec<Case> {
        let defaults = &raw.defaults.request;
        if defaults.body.is_some() && defaults.body_base64.is_some() {
            let span = key_span(self.text, &["defaults", "request", "body_base64"]);
            self.problem(
                span.unwrap_or(0..0),
                format!("[defaults.request]: {TWO_BODIES}"),
            );
        }
        if raw.cases.is_empty() {
            self.problem(0..0, "no cases: add at least one [[case]]".to_owned());
        }
        // Each name, with the index of the case that has it first.
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        let mut cases = Vec::new();
        for (i, spanned) in raw.cases.iter().enumerate() {
            let c = spanned.get_ref();
            let keys = CaseKeys {
                text: self.text,
                index: i.to_string(),
                table: spanned.span(),
            };
            if c.name.trim().is_empty() {
                self.problem(keys.at(&["name"]), "a case's name must not be empty".into());
            } else if let Some(&first) = names.get(c.name.as_str()) {
                let first_line = key_span(self.text, &["case", &first.to_string(), "name"])
                    .map(|s| format!(" (first at line {})", line_col(self.text, s.start).0))
                    .unwrap_or_default();
                self.problem(
                    keys.at(&["name"]),
                    format!(
                        "case `{}` is defined twice{first_line}; case names must be unique",
                        c.name
                    ),
                );
            } else {
                names.insert(&c.name, i);
            }
            cases.push(self.case(c, &keys, defaults));
        }
        cases
    }

    fn case(&mut self, c: &RawCase, keys: &CaseKeys<'_>, defaults: &RequestSpec) -> Case {
        let what = format!("case `{}`", c.name);
        let attempts = c.attempts.unwrap_or(1);
        if !(1..=MAX_ATTEMPTS).contains(&attempts) {
            self.problem(
                keys.at(&["attempts"]),
                format!(
                    "{what}: attempts must be 1 to {MAX_ATTEMPTS} (weir makes at most {MAX_ATTEMPTS} tries)"
                ),
            );
        }
        if c.request.body.is_some() && c.request.body_base64.is_some() {
            self.problem(
                keys.at(&["request", "body_base64"]),
                format!("{what}: [case.request]: {TWO_BODIES}"),
            );
        }
        let (answers, per_try) = match &c.upstream {
            None => (vec![UpstreamSpec::default().outcome()], false),
            Some(Script::Every(spec)) => {
                self.answer(spec, &what, |k| keys.at(&["upstream", k]));
                (vec![spec.outcome()], false)
            }
            Some(Script::PerTry(list)) => {
                if list.is_empty() {
                    self.problem(
                        keys.at(&["upstream"]),
                        format!("{what}: `upstream` is an empty array: script at least one answer"),
                    );
                } else if list.len() > attempts as usize {
                    self.problem(
                        keys.at(&["upstream"]),
                        format!(
                            "{what}: [[case.upstream]] scripts {n} tries but `attempts` is {attempts}, so the answers past try {attempts} are never used: set `attempts = {n}` (or more)",
                            n = list.len()
                        ),
                    );
                }
                for (j, spec) in list.iter().enumerate() {
                    let j = j.to_string();
                    self.answer(spec, &what, |k| keys.at(&["upstream", &j, k]));
                }
                (list.iter().map(UpstreamSpec::outcome).collect(), true)
            }
        };
        match &c.expect {
            None => self.problem(
                keys.at(&["name"]),
                format!(
                    "{what} asserts nothing: add a [case.expect] table (action, upstream_calls, upstream_request or response)"
                ),
            ),
            Some(expect) => self.expect(expect, &what, keys),
        }
        Case {
            name: c.name.clone(),
            advance: c.advance.map_or(Duration::ZERO, |d| d.0),
            attempts,
            request: build_request(defaults, &c.request),
            upstream: answers,
            per_try,
            expect: c.expect.clone().unwrap_or_default(),
        }
    }

    /// Checks one scripted answer; `at` places one of its keys.
    fn answer(&mut self, spec: &UpstreamSpec, what: &str, at: impl Fn(&str) -> Span) {
        if spec.body.is_some() && spec.body_base64.is_some() {
            self.problem(
                at("body_base64"),
                format!("{what}: the upstream's answer: {TWO_BODIES}"),
            );
        }
        let has_response = spec.status.is_some()
            || !spec.headers.is_empty()
            || spec.body.is_some()
            || spec.body_base64.is_some();
        if spec.error.is_some() && has_response {
            self.problem(
                at("error"),
                format!(
                    "{what}: an upstream `error` means no response: remove status, headers and body from that answer"
                ),
            );
        }
    }

    fn expect(&mut self, expect: &Expect, what: &str, keys: &CaseKeys<'_>) {
        let mut count =
            usize::from(expect.action.is_some()) + usize::from(expect.upstream_calls.is_some());
        if let Some(r) = &expect.upstream_request {
            let n = usize::from(r.method.is_some())
                + usize::from(r.path.is_some())
                + r.header_checks().count()
                + r.body_checks().count();
            self.checks(n, &r.body_checks(), what, "upstream_request", keys);
            count += n;
        }
        if let Some(r) = &expect.response {
            let n = usize::from(r.status.is_some())
                + usize::from(r.error.is_some())
                + r.header_checks().count()
                + r.body_checks().count();
            if r.error.is_some() && n > 1 {
                self.problem(
                    keys.at(&["expect", "response", "error"]),
                    format!(
                        "{what}: an expected `error` means no response: it cannot have a status, headers or a body"
                    ),
                );
            }
            self.checks(n, &r.body_checks(), what, "response", keys);
            count += n;
        }
        // An empty sub-table was reported above, with its own place.
        if count == 0 && expect.upstream_request.is_none() && expect.response.is_none() {
            self.problem(
                keys.at(&["expect"]),
                format!(
                    "{what}: [case.expect] asserts nothing: set action, upstream_calls, upstream_request or response"
                ),
            );
        }
    }

    /// Checks `[case.expect.<table>]`, which makes `n` checks.
    fn checks(
        &mut self,
        n: usize,
        body: &BodyChecks<'_>,
        what: &str,
        table: &str,
        keys: &CaseKeys<'_>,
    ) {
        if n == 0 {
            self.problem(
                keys.at(&["expect", table]),
                format!("{what}: [case.expect.{table}] asserts nothing"),
            );
        }
        if body.count() > 1 {
            self.problem(
                keys.at(&["expect", table]),
                format!(
                    "{what}: [case.expect.{table}] has more than one of `body`, `body_base64` and `body_contains`: keep one"
                ),
            );
        }
    }
}

/// The problem with a table that has both `body` and `body_base64`.
const TWO_BODIES: &str = "`body` and `body_base64` are two ways to give one body: keep one";

/// The case's request over the defaults: the case's method, path and body win, and its
/// headers replace the defaults' of the same name.
fn build_request(defaults: &RequestSpec, spec: &RequestSpec) -> Request {
    let method = spec.method.as_ref().or(defaults.method.as_ref());
    let path = spec.path.as_ref().or(defaults.path.as_ref());
    let mut req = request(
        method.map_or("GET", |m| m.0.as_str()),
        path.map_or("/", |p| p.0.as_str()),
    );
    let mut headers = defaults.headers.clone();
    headers.extend(spec.headers.clone());
    req.headers = to_fields(&headers);
    req.body = if spec.body.is_some() || spec.body_base64.is_some() {
        body_of(&spec.body, &spec.body_base64)
    } else {
        body_of(&defaults.body, &defaults.body_base64)
    };
    req
}

// === the filter's config ===

/// Reads the filter's config: a `.json` file, or a `.toml` file whose top-level table is
/// the config. It must be an object (a table), as `[filters.NAME] config` is.
pub fn load_config(path: &Path) -> Result<serde_json::Value, ConfigErrors> {
    let fail = |pos: Option<(usize, usize)>, message: String| {
        ConfigErrors(vec![ConfigError {
            file: path.to_owned(),
            pos,
            message,
        }])
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| fail(None, format!("cannot read the filter's config: {e}")))?;
    let value: serde_json::Value = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => serde_json::from_str(&text).map_err(|e| {
            let full = e.to_string();
            // serde_json ends its message with the place, which the prefix already gives.
            let message = full
                .rsplit_once(" at line ")
                .map_or(full.as_str(), |(m, _)| m);
            fail(Some((e.line(), e.column())), message.to_owned())
        })?,
        Some("toml") => toml::from_str(&text).map_err(|e| {
            fail(
                e.span().map(|s| line_col(&text, s.start)),
                e.message().trim().to_owned(),
            )
        })?,
        _ => {
            return Err(fail(
                None,
                "the filter's config must be a .json file or a .toml file".to_owned(),
            ));
        }
    };
    if !value.is_object() {
        return Err(fail(
            None,
            "the filter's config must be an object (a table), as `[filters.NAME] config` is"
                .to_owned(),
        ));
    }
    Ok(value)
}

/// Parses `--max-call-time`: a duration such as `"250ms"`, more than zero.
pub fn parse_call_time(s: &str) -> Result<Duration, String> {
    let d = HumanDuration::try_from(s.to_owned())?.0;
    if d.is_zero() {
        return Err("the call time must be more than zero".to_owned());
    }
    Ok(d)
}

/// Parses `--max-memory`: a size such as `"64MiB"`, 1 byte to 1GiB.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let size = ByteSize::deserialize(de::value::StrDeserializer::<de::value::Error>::new(s))
        .map_err(|e| e.to_string())?
        .0;
    if size == 0 || size > MAX_FILTER_MEMORY {
        return Err("the memory cap must be between 1 byte and 1GiB".to_owned());
    }
    Ok(size)
}

// === the filter's output ===

/// What filters printed and logged since the last [`Captured::take`], line by line.
///
/// A `tracing` layer: the host sends a guest's stdout, stderr and `log` calls to weir's
/// log, and this keeps them, so a failing case can show what its filter said (a panic's
/// message goes to stderr), the way `cargo test` shows a failing test's output.
#[derive(Debug, Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<String>>>);

impl Captured {
    /// The lines kept so far, which are then forgotten.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Captured {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        #[derive(Default)]
        struct Fields {
            message: String,
            stream: String,
        }
        impl tracing::field::Visit for Fields {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                match field.name() {
                    "message" => self.message = value.to_owned(),
                    "stream" => self.stream = value.to_owned(),
                    _ => {}
                }
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
                if field.name() == "message" {
                    self.message = format!("{value:?}");
                }
            }
        }
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let line = match meta.target() {
            STDIO_TARGET if fields.message.trim().is_empty() => return,
            STDIO_TARGET => format!("{}: {}", fields.stream, fields.message),
            LOG_TARGET => format!(
                "log {}: {}",
                meta.level().as_str().to_ascii_lowercase(),
                fields.message
            ),
            _ => return,
        };
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }
}

/// The capture [`run_case`] reads, once [`init_logging`] installed it.
static CAPTURED: OnceLock<Captured> = OnceLock::new();

/// Installs the process's `tracing` subscriber for `weir filter test`: it keeps what
/// filters print and log for the report, and writes nothing itself unless `RUST_LOG` is
/// set, in which case weir's log goes to stderr as usual, in `format`.
pub fn init_logging(format: crate::config::LogFormat) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let captured = CAPTURED.get_or_init(Captured::default).clone();
    let guest_only = tracing_subscriber::filter::filter_fn(|meta| {
        matches!(meta.target(), STDIO_TARGET | LOG_TARGET)
    });
    let log = tracing_subscriber::EnvFilter::try_from_default_env()
        .ok()
        .map(|filter| {
            let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
            match format {
                crate::config::LogFormat::Pretty => layer.with_filter(filter).boxed(),
                crate::config::LogFormat::Json => layer.json().with_filter(filter).boxed(),
            }
        });
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(log)
        .with(captured.with_filter(guest_only))
        .try_init();
}

// === running ===

/// What the CLI was given.
#[derive(Debug, Clone)]
pub struct Options {
    /// The filter component.
    pub wasm: PathBuf,
    /// The filter's config file; `{}` when absent.
    pub config: Option<PathBuf>,
    /// The case file.
    pub cases: PathBuf,
    /// The most time one call may take; `max_call_time`'s default when absent.
    pub max_call_time: Option<Duration>,
    /// The most memory one instance may use; `max_memory`'s default when absent.
    pub max_memory: Option<u64>,
}

impl Options {
    /// The `[filters.NAME]` settings these options stand for.
    fn limits(&self) -> FilterConfig {
        let mut limits = FilterConfig::default();
        if let Some(t) = self.max_call_time {
            limits.max_call_time = HumanDuration(t);
        }
        if let Some(m) = self.max_memory {
            limits.max_memory = ByteSize(m);
        }
        limits
    }
}

/// Why `weir filter test` could not run the cases (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    /// The component, the config or the case file is wrong; each error has its place.
    #[error("{0}")]
    Input(#[from] ConfigErrors),
    /// The report could not be written.
    #[error("cannot write the report: {0}")]
    Output(#[from] std::io::Error),
}

/// How many cases passed and failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    /// Cases whose every expectation held.
    pub passed: usize,
    /// Cases with a difference or an error.
    pub failed: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.passed + self.failed;
        let noun = if total == 1 { "case" } else { "cases" };
        write!(
            f,
            "{total} {noun}: {} passed, {} failed",
            self.passed, self.failed
        )
    }
}

/// Checks every input, loads the filter, runs the cases and writes the report to `out`.
pub async fn test_filter(opts: &Options, out: &mut dyn Write) -> Result<Summary, TestError> {
    // Every input is checked before any is used, so one run reports every mistake.
    let mut errors = Vec::new();
    let wasm = std::fs::read(&opts.wasm)
        .map_err(|e| {
            errors.push(ConfigError {
                file: opts.wasm.clone(),
                pos: None,
                message: format!("cannot read the filter: {e}"),
            })
        })
        .ok();
    let config = match &opts.config {
        None => Some(serde_json::json!({})),
        Some(path) => load_config(path).map_err(|e| errors.extend(e.0)).ok(),
    };
    let cases = CaseFile::load(&opts.cases)
        .map_err(|e| errors.extend(e.0))
        .ok();
    let (Some(wasm), Some(config), Some(cases)) = (wasm, config, cases) else {
        return Err(ConfigErrors(errors).into());
    };
    let harness = Harness::load_with(&wasm, config, &opts.limits())
        .await
        .map_err(|e| {
            let message = match e {
                LoadError::Init { detail, .. } => match &opts.config {
                    Some(c) => format!("{detail} (config: {})", c.display()),
                    None => format!("{detail} (config: {{}}, no --config given)"),
                },
                LoadError::Invalid { detail, .. } => {
                    format!("not a valid weir filter component: {detail}")
                }
                other => other.to_string(),
            };
            ConfigErrors(vec![ConfigError {
                file: opts.wasm.clone(),
                pos: None,
                message,
            }])
        })?;
    Ok(run(&harness, &cases, out).await?)
}

/// Runs every case in order on `harness`, writing each result as it comes and the
/// summary last.
pub async fn run(
    harness: &Harness,
    cases: &CaseFile,
    out: &mut dyn Write,
) -> std::io::Result<Summary> {
    let mut summary = Summary::default();
    for (i, case) in cases.cases.iter().enumerate() {
        let report = run_case(harness, i + 1, case).await;
        if report.passed() {
            summary.passed += 1;
        } else {
            summary.failed += 1;
        }
        write!(out, "{report}")?;
        out.flush()?;
    }
    writeln!(out, "{summary}")?;
    out.flush()?;
    Ok(summary)
}

/// What one case came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseReport {
    /// The case's name.
    pub name: String,
    /// The filter failed (trapped, timed out, ran out of memory, answered something the
    /// host refuses), and why.
    pub error: Option<String>,
    /// Every field that differs from the expectation.
    pub diffs: Vec<Diff>,
    /// What the filter printed and logged during the case; shown when it failed.
    pub output: Vec<String>,
}

impl CaseReport {
    /// Whether the case passed.
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.diffs.is_empty()
    }
}

impl fmt::Display for CaseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.passed() {
            return writeln!(f, "ok   {}", self.name);
        }
        writeln!(f, "FAIL {}", self.name)?;
        if let Some(e) = &self.error {
            let mut lines = e.lines();
            writeln!(f, "     error: {}", lines.next().unwrap_or_default())?;
            for l in lines {
                writeln!(f, "            {l}")?;
            }
        }
        for d in &self.diffs {
            write!(f, "{d}")?;
        }
        if !self.output.is_empty() {
            writeln!(f, "     filter output:")?;
            for line in &self.output {
                writeln!(f, "       {line}")?;
            }
        }
        Ok(())
    }
}

/// One field that is not as expected, rendered for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    /// The field, as its path in the case file: `upstream_request.headers.x-signature`.
    pub field: String,
    /// What the case expects.
    pub expected: String,
    /// What happened.
    pub actual: String,
}

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "     {}", self.field)?;
        writeln!(f, "       expected: {}", self.expected)?;
        writeln!(f, "       actual:   {}", self.actual)
    }
}

/// What one case did.
struct Seen {
    responded: bool,
    upstream_calls: u32,
    /// The last request the upstream got.
    upstream_request: Option<Request>,
    outcome: Outcome,
}

/// Runs case number `n` (from 1): moves the clock, plays the exchange, compares.
pub async fn run_case(harness: &Harness, n: usize, case: &Case) -> CaseReport {
    let captured = CAPTURED.get();
    // What came before (an instance's `init`) belongs to no case.
    captured.map(Captured::take);
    harness.advance(case.advance);
    let mut last = None;
    let result = harness
        .exchange(
            &format!("case-{n}"),
            case.request.clone(),
            case.attempts,
            |req, attempt| {
                last = Some(req.clone());
                let i = (attempt as usize - 1).min(case.upstream.len() - 1);
                case.upstream[i].clone()
            },
        )
        .await;
    let mut report = CaseReport {
        name: case.name.clone(),
        error: None,
        diffs: Vec::new(),
        output: Vec::new(),
    };
    match result {
        Err(e) => report.error = Some(failure(&e)),
        Ok(ex) => {
            let seen = Seen {
                responded: ex.responded,
                upstream_calls: ex.upstream_calls,
                upstream_request: last,
                outcome: ex.outcome,
            };
            report.diffs = compare(case, &seen);
        }
    }
    report.output = captured.map(Captured::take).unwrap_or_default();
    report
}

fn failure(e: &CallError) -> String {
    match e {
        CallError::Trap(detail) => format!("the filter failed: {detail}"),
        other => format!("the filter {other}"),
    }
}

// === comparing ===

fn compare(case: &Case, seen: &Seen) -> Vec<Diff> {
    let mut diffs = Vec::new();
    let mut diff = |field: &str, expected: String, actual: String| {
        diffs.push(Diff {
            field: field.to_owned(),
            expected,
            actual,
        })
    };
    let e = &case.expect;
    let answered = |status: u16| format!("the filter answered from on-request with {status}");
    let responded_note = match (&seen.outcome, seen.responded) {
        (Outcome::Response(r), true) => Some(answered(r.status)),
        _ => None,
    };
    if let Some(want) = e.action {
        let got = if seen.responded {
            Action::Respond
        } else {
            Action::Continue
        };
        if want != got {
            let note = responded_note
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            diff(
                "action",
                quote(want.name()),
                format!("{}{note}", quote(got.name())),
            );
        }
    }
    if let Some(want) = e.upstream_calls
        && want != seen.upstream_calls
    {
        diff(
            "upstream_calls",
            want.to_string(),
            seen.upstream_calls.to_string(),
        );
    }
    if case.per_try && seen.upstream_calls as usize > case.upstream.len() {
        diff(
            "upstream",
            format!(
                "at most {} calls (one per [[case.upstream]] table)",
                case.upstream.len()
            ),
            format!(
                "{} calls (the last answer was repeated)",
                seen.upstream_calls
            ),
        );
    }
    if let Some(want) = &e.upstream_request {
        match &seen.upstream_request {
            Some(req) => compare_request(want, req, &mut diff),
            None => {
                let why = format!(
                    "(absent: the upstream was not called; {})",
                    responded_note
                        .clone()
                        .unwrap_or_else(|| "the filter did not let the request through".into())
                );
                for (field, expected) in expected_request_fields(want) {
                    diff(&format!("upstream_request.{field}"), expected, why.clone());
                }
            }
        }
    }
    if let Some(want) = &e.response {
        compare_response(want, &seen.outcome, seen.responded, &mut diff);
    }
    diffs
}

fn compare_request(
    want: &ExpectRequest,
    req: &Request,
    diff: &mut impl FnMut(&str, String, String),
) {
    if let Some(m) = &want.method
        && m.0 != req.method
    {
        diff("upstream_request.method", quote(&m.0), quote(&req.method));
    }
    if let Some(p) = &want.path
        && p.0 != req.path_with_query
    {
        diff(
            "upstream_request.path",
            quote(&p.0),
            quote(&req.path_with_query),
        );
    }
    compare_headers(
        &want.header_checks(),
        &req.headers,
        "upstream_request",
        diff,
    );
    compare_body(
        &want.body_checks(),
        req.body.as_deref(),
        "upstream_request",
        diff,
    );
}

/// Every field an `upstream_request` expectation names, with its expected value shown.
fn expected_request_fields(want: &ExpectRequest) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    if let Some(m) = &want.method {
        fields.push(("method".to_owned(), quote(&m.0)));
    }
    if let Some(p) = &want.path {
        fields.push(("path".to_owned(), quote(&p.0)));
    }
    for (name, values) in &want.headers {
        fields.push((format!("headers.{}", name.0), show_values(&values.0)));
    }
    for name in &want.absent_headers {
        fields.push((format!("headers.{}", name.0), "(absent)".to_owned()));
    }
    for name in &want.present_headers {
        fields.push((format!("headers.{}", name.0), "(present)".to_owned()));
    }
    if let Some((field, expected)) = expected_body(&want.body_checks()) {
        fields.push((field.to_owned(), expected));
    }
    fields
}

fn compare_response(
    want: &ExpectResponse,
    outcome: &Outcome,
    responded: bool,
    diff: &mut impl FnMut(&str, String, String),
) {
    let r = match outcome {
        Outcome::Error(e) => {
            let name = ErrorName::of(*e);
            match want.error {
                Some(w) if w == name => {}
                Some(w) => diff("response.error", quote(w.name()), quote(name.name())),
                None => {
                    let why = format!(
                        "(absent: no response, the upstream error was {:?})",
                        name.name()
                    );
                    if let Some(s) = want.status {
                        diff("response.status", s.0.to_string(), why.clone());
                    }
                    for (name, values) in &want.headers {
                        diff(
                            &format!("response.headers.{}", name.0),
                            show_values(&values.0),
                            why.clone(),
                        );
                    }
                    for name in &want.present_headers {
                        diff(
                            &format!("response.headers.{}", name.0),
                            "(present)".to_owned(),
                            why.clone(),
                        );
                    }
                    if let Some((field, expected)) = expected_body(&want.body_checks()) {
                        diff(&format!("response.{field}"), expected, why.clone());
                    }
                }
            }
            return;
        }
        Outcome::Response(r) => r,
    };
    let note = if responded {
        " (the filter answered from on-request)"
    } else {
        ""
    };
    if let Some(w) = want.error {
        diff(
            "response.error",
            quote(w.name()),
            format!("(none: the response has status {}{note})", r.status),
        );
    }
    if let Some(s) = want.status
        && s.0 != r.status
    {
        diff(
            "response.status",
            s.0.to_string(),
            format!("{}{note}", r.status),
        );
    }
    compare_headers(&want.header_checks(), &r.headers, "response", diff);
    compare_body(&want.body_checks(), r.body.as_deref(), "response", diff);
}

fn compare_headers(
    want: &HeaderChecks<'_>,
    fields: &[(String, Vec<u8>)],
    side: &str,
    diff: &mut impl FnMut(&str, String, String),
) {
    let values = |name: &str| -> Vec<&[u8]> {
        fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .collect()
    };
    for (name, expected) in want.exact {
        let got = values(&name.0);
        let same = got.len() == expected.0.len()
            && got.iter().zip(&expected.0).all(|(g, e)| *g == e.as_bytes());
        if !same {
            diff(
                &format!("{side}.headers.{}", name.0),
                show_values(&expected.0),
                show_got(&got),
            );
        }
    }
    for name in want.absent {
        let got = values(&name.0);
        if !got.is_empty() {
            diff(
                &format!("{side}.headers.{}", name.0),
                "(absent)".to_owned(),
                show_got(&got),
            );
        }
    }
    for name in want.present {
        if values(&name.0).is_empty() {
            diff(
                &format!("{side}.headers.{}", name.0),
                "(present)".to_owned(),
                "(absent)".to_owned(),
            );
        }
    }
}

/// The body field an expectation checks and its expected value, shown.
fn expected_body(want: &BodyChecks<'_>) -> Option<(&'static str, String)> {
    if let Some(b) = want.text {
        return Some(("body", show_bytes(b.as_bytes())));
    }
    if let Some(b) = want.base64 {
        return Some(("body_base64", show_bytes(&b.0)));
    }
    want.contains
        .as_ref()
        .map(|b| ("body_contains", show_bytes(b.as_bytes())))
}

fn compare_body(
    want: &BodyChecks<'_>,
    got: Option<&[u8]>,
    side: &str,
    diff: &mut impl FnMut(&str, String, String),
) {
    let got_bytes = got.unwrap_or_default();
    // No body compares as an empty one, but is shown as what it is.
    let pair = |expected: &[u8]| {
        let (e, a) = body_pair(expected, got_bytes);
        (
            e,
            if got.is_some() {
                a
            } else {
                "(no body)".to_owned()
            },
        )
    };
    let exact = match (want.text, want.base64) {
        (Some(t), _) => Some(("body", t.as_bytes())),
        (None, Some(b)) => Some(("body_base64", b.0.as_slice())),
        (None, None) => None,
    };
    if let Some((field, expected)) = exact
        && expected != got_bytes
    {
        let (e, a) = pair(expected);
        diff(&format!("{side}.{field}"), e, a);
    }
    if let Some(part) = want.contains
        && !contains(got_bytes, part.as_bytes())
    {
        let (_, a) = pair(b"");
        diff(
            &format!("{side}.body_contains"),
            show_bytes(part.as_bytes()),
            a,
        );
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn quote(s: &str) -> String {
    format!("{s:?}")
}

/// Expected header values: `"v"`, or `["a", "b"]`.
fn show_values(values: &[String]) -> String {
    match values {
        [one] => quote(one),
        many => format!(
            "[{}]",
            many.iter().map(|v| quote(v)).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Actual header values, as [`show_values`] shows expected ones.
fn show_got(values: &[&[u8]]) -> String {
    match values {
        [] => "(absent)".to_owned(),
        [one] => show_bytes(one),
        many => format!(
            "[{}]",
            many.iter()
                .map(|v| show_bytes(v))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Bytes as a quoted string: text as text, other bytes escaped (`b"\xff"`).
fn show_bytes(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => quote(s),
        Err(_) => format!("b\"{}\"", b.escape_ascii()),
    }
}

/// An expected and an actual body, shown whole when short, else cut to a window around
/// where they first differ, with their lengths.
fn body_pair(expected: &[u8], actual: &[u8]) -> (String, String) {
    if let (Ok(e), Ok(a)) = (std::str::from_utf8(expected), std::str::from_utf8(actual)) {
        let e: Vec<char> = e.chars().collect();
        let a: Vec<char> = a.chars().collect();
        return cut_pair(&e, &a, expected.len(), actual.len(), |s| {
            quote(&s.iter().collect::<String>())
        });
    }
    cut_pair(expected, actual, expected.len(), actual.len(), |s| {
        format!("b\"{}\"", s.escape_ascii())
    })
}

fn cut_pair<T: PartialEq>(
    e: &[T],
    a: &[T],
    e_bytes: usize,
    a_bytes: usize,
    show: impl Fn(&[T]) -> String,
) -> (String, String) {
    if e.len() <= BODY_SHOWN && a.len() <= BODY_SHOWN {
        return (show(e), show(a));
    }
    let first = e.iter().zip(a).take_while(|(x, y)| x == y).count();
    let start = first.saturating_sub(BODY_SHOWN / 3);
    let cut = |s: &[T], bytes: usize| {
        let end = (start + BODY_SHOWN).min(s.len());
        let from = start.min(s.len());
        format!(
            "{}{}{} ({bytes} bytes)",
            if from > 0 { "…" } else { "" },
            show(&s[from..end]),
            if end < s.len() { "…" } else { "" },
        )
    };
    (cut(e, e_bytes), cut(a, a_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CaseFile, ConfigErrors> {
        CaseFile::parse(Path::new("cases.toml"), text)
    }

    fn errors(text: &str) -> Vec<String> {
        parse(text)
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    const GOOD: &str = r#"
[defaults.request]
headers = { "host" = "api.example.com", "x-team" = "a" }

[[case]]
name = "signs a POST"
advance = "2s"
attempts = 3

[case.request]
method = "POST"
path = "/v1/charges?x=1"
headers = { "Content-Type" = "application/json", "x-multi" = ["a", "b"], "x-team" = "b" }
body = '{"amount": 100}'

[[case.upstream]]
status = 503
[[case.upstream]]
error = "reset"

[case.expect]
action = "continue"
upstream_calls = 2

[case.expect.upstream_request]
headers = { "x-signature" = "abc" }
absent_headers = ["authorization"]
present_headers = ["x-timestamp"]
body_contains = "amount"

[case.expect.response]
error = "reset"

[[case]]
name = "plain"
request.body_base64 = "/wA="
expect.response = { status = 200, body = "" }
"#;

    #[test]
    fn a_good_file_parses_with_defaults_applied() {
        let f = parse(GOOD).unwrap();
        assert_eq!(f.cases.len(), 2);
        let c = &f.cases[0];
        assert_eq!(c.advance, Duration::from_secs(2));
        assert_eq!(c.attempts, 3);
        assert_eq!(c.request.method, "POST");
        assert_eq!(c.request.path_with_query, "/v1/charges?x=1");
        let headers: Vec<(&str, &[u8])> = c
            .request
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        assert_eq!(
            headers,
            vec![
                ("content-type", &b"application/json"[..]),
                ("host", b"api.example.com"),
                ("x-multi", b"a"),
                ("x-multi", b"b"),
                ("x-team", b"b"),
            ]
        );
        assert_eq!(c.request.body.as_deref(), Some(&br#"{"amount": 100}"#[..]));
        assert!(c.per_try);
        assert!(matches!(&c.upstream[0], Outcome::Response(r) if r.status == 503));
        assert!(matches!(
            c.upstream[1],
            Outcome::Error(UpstreamError::Reset)
        ));
        let d = &f.cases[1];
        assert_eq!(d.request.method, "GET");
        assert_eq!(d.request.path_with_query, "/");
        assert_eq!(d.request.body.as_deref(), Some(&[0xff, 0x00][..]));
        assert_eq!(d.attempts, 1);
        assert!(!d.per_try);
        assert!(matches!(&d.upstream[..], [Outcome::Response(r)] if r.status == 200));
    }

    #[test]
    fn an_unknown_key_is_an_error_at_its_line_and_column() {
        let text = "[[case]]\nname = \"a\"\n[case.expect]\nstatus = 200\n";
        assert_eq!(
            errors(text),
            vec![
                "cases.toml:4:1: unknown field `status`, expected one of `action`, `upstream_calls`, `upstream_request`, `response`"
            ]
        );
        let text = "[[case]]\nname = \"a\"\n[case.expect.response]\nstatus = 200\nbdy = \"x\"\n";
        let e = errors(text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("cases.toml:5:1: unknown field `bdy`"),
            "{e:?}"
        );
        let text = "[[case]]\nname = \"a\"\n[case.expect.response]\nstatus = 200\nabsent_headers = [\"a b\"]\n";
        let e = errors(text);
        assert!(
            e[0].starts_with("cases.toml:5:18: invalid header name \"a b\""),
            "{e:?}"
        );
    }

    #[test]
    fn bad_values_are_errors_at_the_value() {
        let e = errors(
            "[[case]]\nname = \"a\"\nrequest.method = \"post\"\nexpect.upstream_calls = 1\n",
        );
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("cases.toml:3:18: "), "{e:?}");
        assert!(e[0].contains("must be upper case: \"POST\""), "{e:?}");
        let e = errors(
            "[[case]]\nname = \"a\"\nupstream.error = \"gone\"\nexpect.upstream_calls = 1\n",
        );
        assert!(e[0].starts_with("cases.toml:3:"), "{e:?}");
        assert!(e[0].contains("unknown variant `gone`"), "{e:?}");
        let e = errors(
            "[[case]]\nname = \"a\"\nrequest.headers = { \"bad name\" = \"x\" }\nexpect.upstream_calls = 1\n",
        );
        assert!(e[0].contains("invalid header name \"bad name\""), "{e:?}");
        let e = errors("[[case]]\nname = \"a\"\nupstream.status = 42\nexpect.upstream_calls = 1\n");
        assert!(
            e[0].contains("invalid status 42: expected 100 to 999"),
            "{e:?}"
        );
    }

    #[test]
    fn a_case_that_asserts_nothing_is_an_error() {
        assert_eq!(
            errors("[[case]]\nname = \"empty\"\n[case.expect]\n"),
            vec![
                "cases.toml:3:7: case `empty`: [case.expect] asserts nothing: set action, upstream_calls, upstream_request or response"
            ]
        );
        assert_eq!(
            errors("[[case]]\nname = \"none\"\n"),
            vec![
                "cases.toml:2:1: case `none` asserts nothing: add a [case.expect] table (action, upstream_calls, upstream_request or response)"
            ]
        );
        let e = errors("[[case]]\nname = \"sub\"\n[case.expect.response]\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("cases.toml:3:14: case `sub`: [case.expect.response] asserts nothing"),
            "{e:?}"
        );
    }

    #[test]
    fn cross_checks_report_every_problem_in_file_order() {
        let text = r#"
[[case]]
name = "twice"
expect.upstream_calls = 1

[[case]]
name = "twice"
attempts = 1
[[case.upstream]]
status = 503
[[case.upstream]]
status = 200
error = "timeout"
[case.expect.response]
status = 200
error = "timeout"
body = "x"
body_contains = "y"
"#;
        let e = errors(text);
        assert_eq!(e.len(), 5, "{e:#?}");
        assert_eq!(
            e[0],
            "cases.toml:7:1: case `twice` is defined twice (first at line 3); case names must be unique"
        );
        assert!(e[1].starts_with("cases.toml:9:8: case `twice`: [[case.upstream]] scripts 2 tries but `attempts` is 1"), "{e:#?}");
        assert!(
            e[2].starts_with(
                "cases.toml:13:1: case `twice`: an upstream `error` means no response"
            ),
            "{e:#?}"
        );
        assert!(
            e[3].starts_with(
                "cases.toml:14:14: case `twice`: [case.expect.response] has more than one of"
            ),
            "{e:#?}"
        );
        assert!(
            e[4].starts_with(
                "cases.toml:16:1: case `twice`: an expected `error` means no response"
            ),
            "{e:#?}"
        );
        assert_eq!(
            errors("")[0],
            "cases.toml:1:1: no cases: add at least one [[case]]"
        );
        let e = errors("[[case]]\nname = \"a\"\nattempts = 11\nexpect.upstream_calls = 1\n");
        assert_eq!(
            e,
            vec![
                "cases.toml:3:1: case `a`: attempts must be 1 to 10 (weir makes at most 10 tries)"
            ]
        );
    }

    #[test]
    fn base64_decodes_the_rfc_4648_vectors() {
        for (text, bytes) in [
            ("", ""),
            ("Zg==", "f"),
            ("Zm8=", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg", "foob"),
            ("Zm9vYmE=", "fooba"),
            ("Zm9vYmFy", "foobar"),
        ] {
            assert_eq!(decode_base64(text).unwrap(), bytes.as_bytes(), "{text}");
        }
        assert!(decode_base64("Zm9v!").is_err());
        assert!(decode_base64("Z").is_err());
        assert!(decode_base64("Zg===").is_err());
    }

    #[test]
    fn config_files_are_json_or_toml_objects() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let json = write("c.json", r#"{"rate": 2}"#);
        assert_eq!(load_config(&json).unwrap(), serde_json::json!({"rate": 2}));
        let toml = write("c.toml", "rate = 2\nkey = { header = \"x\" }\n");
        assert_eq!(
            load_config(&toml).unwrap(),
            serde_json::json!({"rate": 2, "key": {"header": "x"}})
        );
        let bad = write("bad.json", "{\n  \"rate\": ,\n}");
        let e = load_config(&bad).unwrap_err().to_string();
        assert!(e.ends_with("bad.json:2:11: expected value"), "{e}");
        let list = write("list.json", "[1]");
        let e = load_config(&list).unwrap_err().to_string();
        assert!(e.contains("must be an object"), "{e}");
        let yaml = write("c.yaml", "rate: 2");
        let e = load_config(&yaml).unwrap_err().to_string();
        assert!(e.contains("a .json file or a .toml file"), "{e}");
    }

    fn seen(outcome: Outcome, req: Option<Request>) -> Seen {
        Seen {
            responded: false,
            upstream_calls: u32::from(req.is_some()),
            upstream_request: req,
            outcome,
        }
    }

    fn case_with(text: &str) -> Case {
        parse(&format!("[[case]]\nname = \"c\"\n{text}"))
            .unwrap()
            .cases
            .remove(0)
    }

    #[test]
    fn diffs_name_the_field_and_show_both_values() {
        let case = case_with(
            r#"
[case.expect.upstream_request]
method = "POST"
headers = { "x-signature" = "abc", "x-multi" = ["a", "b"] }
absent_headers = ["authorization"]
present_headers = ["x-timestamp"]
[case.expect.response]
status = 200
body = "ok"
"#,
        );
        let mut req = request("GET", "/");
        req.headers = vec![
            ("x-signature".into(), b"abd".to_vec()),
            ("x-multi".into(), b"a".to_vec()),
            ("authorization".into(), b"Bearer t".to_vec()),
        ];
        let outcome = Outcome::Response(Response {
            status: 502,
            headers: Vec::new(),
            body: Some(b"no\xff".to_vec()),
        });
        let report = CaseReport {
            name: "signs".into(),
            error: None,
            output: Vec::new(),
            diffs: compare(&case, &seen(outcome, Some(req))),
        };
        assert_eq!(
            report.to_string(),
            r#"FAIL signs
     upstream_request.method
       expected: "POST"
       actual:   "GET"
     upstream_request.headers.x-multi
       expected: ["a", "b"]
       actual:   "a"
     upstream_request.headers.x-signature
       expected: "abc"
       actual:   "abd"
     upstream_request.headers.authorization
       expected: (absent)
       actual:   "Bearer t"
     upstream_request.headers.x-timestamp
       expected: (present)
       actual:   (absent)
     response.status
       expected: 200
       actual:   502
     response.body
       expected: b"ok"
       actual:   b"no\xff"
"#
        );
    }

    #[test]
    fn diffs_say_why_a_value_is_absent() {
        let case = case_with(
            "expect.upstream_request.headers = { \"x-a\" = \"1\" }\nexpect.response.status = 200\nexpect.action = \"continue\"\n",
        );
        let mut s = seen(
            Outcome::Response(Response {
                status: 401,
                headers: Vec::new(),
                body: None,
            }),
            None,
        );
        s.responded = true;
        let report = CaseReport {
            name: "c".into(),
            error: None,
            output: Vec::new(),
            diffs: compare(&case, &s),
        };
        assert_eq!(
            report.to_string(),
            r#"FAIL c
     action
       expected: "continue"
       actual:   "respond" (the filter answered from on-request with 401)
     upstream_request.headers.x-a
       expected: "1"
       actual:   (absent: the upstream was not called; the filter answered from on-request with 401)
     response.status
       expected: 200
       actual:   401 (the filter answered from on-request)
"#
        );
        let diffs = compare(
            &case_with("expect.response = { status = 200 }\n"),
            &seen(
                Outcome::Error(UpstreamError::Timeout),
                Some(request("GET", "/")),
            ),
        );
        assert_eq!(
            diffs,
            vec![Diff {
                field: "response.status".into(),
                expected: "200".into(),
                actual: "(absent: no response, the upstream error was \"timeout\")".into(),
            }]
        );
        let diffs = compare(
            &case_with("expect.response = { error = \"timeout\" }\n"),
            &seen(
                Outcome::Error(UpstreamError::Timeout),
                Some(request("GET", "/")),
            ),
        );
        assert!(diffs.is_empty(), "{diffs:?}");
    }

    #[test]
    fn a_passing_case_and_an_error_render_as_one_line_and_the_error() {
        let ok = CaseReport {
            name: "fine".into(),
            error: None,
            diffs: Vec::new(),
            output: vec!["stdout: shown only on failure".into()],
        };
        assert_eq!(ok.to_string(), "ok   fine\n");
        let trapped = CaseReport {
            name: "boom".into(),
            error: Some(failure(&CallError::Timeout(Duration::from_millis(100)))),
            diffs: Vec::new(),
            output: vec!["stderr: spinning".into(), "log warn: still spinning".into()],
        };
        assert_eq!(
            trapped.to_string(),
            "FAIL boom\n     error: the filter exceeded its call time of 100ms\n     filter output:\n       stderr: spinning\n       log warn: still spinning\n"
        );
        let s = Summary {
            passed: 1,
            failed: 1,
        };
        assert_eq!(s.to_string(), "2 cases: 1 passed, 1 failed");
    }

    #[test]
    fn the_filters_output_and_log_are_captured_and_nothing_else() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let captured = Captured::default();
        let subscriber = tracing_subscriber::registry().with(captured.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: STDIO_TARGET, route = "test", stream = "stderr", "panicked at src/lib.rs:7");
            tracing::info!(target: STDIO_TARGET, stream = "stdout", " ");
            tracing::debug!(target: LOG_TARGET, route = "test", "key {} missed", "k1");
            tracing::warn!("weir's own account of the call");
        });
        assert_eq!(
            captured.take(),
            vec![
                "stderr: panicked at src/lib.rs:7".to_owned(),
                "log debug: key k1 missed".to_owned()
            ]
        );
        assert!(captured.take().is_empty());
    }

    #[test]
    fn long_bodies_are_cut_around_the_first_difference() {
        let e = format!("{}expected-tail{}", "a".repeat(100), "z".repeat(100));
        let a = format!("{}actual-tail{}", "a".repeat(100), "z".repeat(100));
        let (se, sa) = body_pair(e.as_bytes(), a.as_bytes());
        assert!(se.starts_with("…\"aaaa"), "{se}");
        assert!(se.contains("expected-tail"), "{se}");
        assert!(
            se.ends_with("…  (213 bytes)") || se.ends_with("… (213 bytes)"),
            "{se}"
        );
        assert!(sa.contains("actual-tail"), "{sa}");
        assert!(sa.ends_with("… (211 bytes)"), "{sa}");
        assert_eq!(
            body_pair(b"short", b"shirt"),
            ("\"short\"".into(), "\"shirt\"".into())
        );
    }
}
