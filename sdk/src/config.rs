//! Turning the JSON config weir passes to `init` into the filter.

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::Filter;

/// Parses a filter's config from the JSON text weir passes to `init`.
///
/// An empty text and `null` mean "no config" and parse as `{}`, so a config type whose
/// keys are all `#[serde(default)]` accepts them. An error names the filter and the
/// problem, e.g. ``headers: unknown field `foo`, expected `request` or `response` ``.
/// serde_json's line and column are left out: the JSON is weir's rendering of the
/// operator's TOML, not what the operator wrote.
///
/// [`export_filter!`](crate::export_filter) calls this for you; it is public so a
/// filter's tests can check its config errors without wasm.
pub fn parse_config<C: DeserializeOwned>(filter: &str, json: &str) -> Result<C, String> {
    let json = match json.trim() {
        "" | "null" => "{}",
        text => text,
    };
    serde_json::from_str(json).map_err(|e| {
        let message = e.to_string();
        let position = format!(" at line {} column {}", e.line(), e.column());
        let message = message.strip_suffix(&position).unwrap_or(&message);
        format!("{filter}: {message}")
    })
}

/// Builds a filter from config JSON exactly as the exported `init` does: parses the
/// config with [`parse_config`], calls [`Filter::new`] and prefixes its error with
/// [`Filter::NAME`].
///
/// Use it in a filter's unit tests to check config handling and the actions the filter
/// returns, on the host target, without building wasm.
pub fn build_filter<F: Filter>(config: &str) -> Result<F, String> {
    let config = parse_config::<F::Config>(F::NAME, config)?;
    F::new(config).map_err(|e| format!("{}: {e}", F::NAME))
}

/// The `Config` of a filter that takes none: accepts only an empty config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Config {
        rate: u32,
        name: Option<String>,
    }

    #[test]
    fn empty_null_and_empty_object_all_mean_defaults() {
        for text in ["", "  ", "null", "{}"] {
            assert_eq!(
                parse_config::<Config>("t", text),
                Ok(Config::default()),
                "{text:?}"
            );
        }
        assert_eq!(parse_config::<NoConfig>("t", ""), Ok(NoConfig {}));
    }

    #[test]
    fn parses_values() {
        assert_eq!(
            parse_config::<Config>("t", r#"{"rate": 5, "name": "x"}"#),
            Ok(Config {
                rate: 5,
                name: Some("x".into())
            })
        );
    }

    #[test]
    fn errors_name_the_filter_and_the_problem_without_json_positions() {
        assert_eq!(
            parse_config::<Config>("limiter", r#"{"rate": 5, "foo": 1}"#),
            Err("limiter: unknown field `foo`, expected `rate` or `name`".into())
        );
        assert_eq!(
            parse_config::<Config>("limiter", r#"{"rate": "fast"}"#),
            Err(r#"limiter: invalid type: string "fast", expected u32"#.into())
        );
        assert_eq!(
            parse_config::<NoConfig>("plain", r#"{"x": 1}"#),
            Err("plain: unknown field `x`, there are no fields".into())
        );
        let err = parse_config::<Config>("limiter", "{").unwrap_err();
        assert!(err.starts_with("limiter: EOF while parsing"), "{err}");
    }
}
