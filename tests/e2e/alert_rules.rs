//! The Prometheus rules and the Grafana dashboard in `deploy/`: `promtool` checks the
//! rules and runs their unit tests (`deploy/prometheus/weir-rules.test.yml`), every alert
//! carries what an operator needs, the dashboard reads through its variables, and every
//! metric the rules and the dashboard read (with the labels they match on) is one a real
//! weir serves on `/metrics`, so a renamed metric or label cannot leave an alert that
//! never fires.
//!
//! `promtool` comes with Debian's `prometheus` package; `scripts/setup-prometheus.sh`
//! installs it. Without it the promtool test fails, saying so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::jobs::{SECRET, accepted, until_final_within};
use crate::support::WAIT;
use crate::support::client::{client, metrics};
use crate::support::redis::RedisServer;
use crate::support::upstream::{Reply, Upstream, closed_port};
use crate::support::weir::{Weir, WeirBuilder};

/// `deploy/` in this repository.
fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn rules_text() -> String {
    let path = deploy_dir().join("prometheus/weir-rules.yml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn dashboard() -> serde_json::Value {
    let path = deploy_dir().join("grafana/weir-dashboard.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Runs `promtool` with `args` in `deploy/prometheus`; panics with its output unless it
/// succeeds.
fn promtool(args: &[&str]) {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(deploy_dir().join("prometheus"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}); scripts/setup-prometheus.sh installs it")
        });
    assert!(
        output.status.success(),
        "promtool {} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

#[test]
fn promtool_accepts_the_rules() {
    promtool(&["check", "rules", "weir-rules.yml"]);
}

#[test]
fn the_rules_pass_their_promtool_unit_tests() {
    promtool(&["test", "rules", "weir-rules.test.yml"]);
}

// === reading the rules file ===

/// The width of `line`'s indentation.
fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// One rule of the rules file: its `- alert:` or `- record:` line and the lines under it.
struct Rule<'a> {
    /// `alert` or `record`.
    kind: &'a str,
    name: &'a str,
    lines: Vec<&'a str>,
}

/// The rules of a rules file, each with its lines. A rule starts at a `- alert:` or
/// `- record:` item and ends at the next line, other than a comment, indented no deeper
/// than that item.
fn rules(yaml: &str) -> Vec<Rule<'_>> {
    let mut out: Vec<Rule<'_>> = Vec::new();
    let mut item_indent = None;
    for line in yaml.lines() {
        let trimmed = line.trim_start();
        let item = ["alert", "record"].into_iter().find_map(|kind| {
            let name = trimmed
                .strip_prefix("- ")?
                .strip_prefix(kind)?
                .strip_prefix(':')?;
            Some((kind, name.trim()))
        });
        if let Some((kind, name)) = item {
            item_indent = Some(indent(line));
            out.push(Rule {
                kind,
                name,
                lines: Vec::new(),
            });
        } else if item_indent.is_some_and(|at| {
            !trimmed.is_empty() && !trimmed.starts_with('#') && indent(line) <= at
        }) {
            // The next group, or another item at the rules' level that is not a rule.
            item_indent = None;
        } else if item_indent.is_some() {
            out.last_mut().expect("a rule is open").lines.push(line);
        }
    }
    out
}

/// The value of `key:` in `lines` (one rule's), with a `|` or `>` block scalar's lines
/// joined by newlines; `None` without the key.
fn value(lines: &[&str], key: &str) -> Option<String> {
    let at = lines.iter().position(|l| {
        l.trim_start()
            .strip_prefix(key)
            .is_some_and(|rest| rest.starts_with(':'))
    })?;
    let line = lines[at];
    let rest = line.trim_start()[key.len() + 1..].trim();
    if rest.starts_with('|') || rest.starts_with('>') {
        let block: Vec<&str> = lines[at + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
            .map(|l| l.trim())
            .collect();
        return Some(block.join("\n"));
    }
    let unquoted = rest
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .or_else(|| rest.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
        .unwrap_or(rest);
    Some(unquoted.to_owned())
}

#[test]
fn every_alert_has_a_for_a_severity_a_summary_and_a_description() {
    let text = rules_text();
    let rules = rules(&text);
    let alerts: Vec<&Rule<'_>> = rules.iter().filter(|r| r.kind == "alert").collect();
    // What the issue asks for, each at least once.
    for name in [
        "WeirBreakerOpen",
        "WeirRouteErrorRatioHigh",
        "WeirRouteLatencyHigh",
        "WeirJobsQueueStale",
        "WeirJobsDead",
        "WeirReloadFailed",
        "WeirStateBackendDown",
        "WeirFilterFailing",
    ] {
        assert!(
            alerts.iter().any(|a| a.name == name),
            "no alert {name} in weir-rules.yml"
        );
    }
    for alert in alerts {
        for key in ["expr", "for", "severity", "summary", "description"] {
            let v = value(&alert.lines, key);
            assert!(
                v.as_deref().is_some_and(|v| !v.trim().is_empty()),
                "alert {} has no {key}",
                alert.name
            );
        }
        let severity = value(&alert.lines, "severity").expect("checked above");
        assert!(
            ["warning", "critical"].contains(&severity.as_str()),
            "alert {}: severity {severity:?}",
            alert.name
        );
    }
}

// === reading PromQL ===

/// A selector of one of weir's metrics in a PromQL expression: `name{label op "value", …}`.
#[derive(Debug)]
struct Selector {
    metric: String,
    /// `(label, operator, value)` of each matcher between the braces.
    matchers: Vec<(String, String, String)>,
}

/// A character of a PromQL identifier or metric name (recording rules' names have `:`).
fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Reads the quoted string that starts at `chars[at]`, unescaping `\x`; returns it and
/// the index after its closing quote.
fn read_string(chars: &[char], at: usize, context: &str) -> (String, usize) {
    let quote = chars[at];
    let mut out = String::new();
    let mut i = at + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' && i + 1 < chars.len() => {
                out.push(match chars[i + 1] {
                    'n' => '\n',
                    other => other,
                });
                i += 2;
            }
            c if c == quote => return (out, i + 1),
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    panic!("an unterminated string in {context:?}")
}

/// Reads `label op "value"` matchers from `chars[at]` (just after a `{`) to the closing
/// `}`; returns them and the index after the `}`. Also reads an exposition's label set,
/// whose operators are all `=`.
fn read_matchers(
    chars: &[char],
    at: usize,
    context: &str,
) -> (Vec<(String, String, String)>, usize) {
    let mut out = Vec::new();
    let mut i = at;
    loop {
        while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
            i += 1;
        }
        match chars.get(i) {
            Some('}') => return (out, i + 1),
            None => panic!("an unclosed {{ in {context:?}"),
            Some(_) => {}
        }
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
            i += 1;
        }
        let label: String = chars[start..i].iter().collect();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let start = i;
        while i < chars.len() && matches!(chars[i], '=' | '!' | '~') {
            i += 1;
        }
        let op: String = chars[start..i].iter().collect();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        assert!(
            !label.is_empty()
                && ["=", "!=", "=~", "!~"].contains(&op.as_str())
                && matches!(chars.get(i), Some('"' | '\'' | '`')),
            "cannot read the matchers of {context:?}"
        );
        let (value, next) = read_string(chars, i, context);
        out.push((label, op, value));
        i = next;
    }
}

/// Every selector of a `weir_…` metric in `expr`. Names with `:` are recording rules'
/// results, not weir's metrics, and are left out.
fn selectors(expr: &str) -> Vec<Selector> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = read_string(&chars, i, expr).1;
            continue;
        }
        if !is_ident(c) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        if !word.starts_with("weir_") || word.contains(':') {
            continue;
        }
        let mut j = i;
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        let mut matchers = Vec::new();
        if chars.get(j) == Some(&'{') {
            (matchers, i) = read_matchers(&chars, j + 1, expr);
        }
        out.push(Selector {
            metric: word,
            matchers,
        });
    }
    out
}

/// The expressions of every rule in the rules file.
fn rule_exprs() -> Vec<String> {
    let text = rules_text();
    let rules = rules(&text);
    assert!(!rules.is_empty(), "no rules read from weir-rules.yml");
    rules
        .iter()
        .map(|r| value(&r.lines, "expr").unwrap_or_else(|| panic!("rule {} has no expr", r.name)))
        .collect()
}

/// The PromQL of the dashboard: every `expr` of its panels' targets, and the queries
/// (`query`, `definition`) of its template variables.
fn dashboard_exprs() -> Vec<String> {
    fn walk(value: &serde_json::Value, key: &str, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    walk(v, k, out);
                }
            }
            serde_json::Value::Array(items) => {
                for v in items {
                    walk(v, key, out);
                }
            }
            serde_json::Value::String(s) if ["expr", "query", "definition"].contains(&key) => {
                out.push(s.clone());
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dashboard(), "", &mut out);
    out
}

#[test]
fn the_dashboard_reads_through_its_datasource_and_route_variables() {
    let dash = dashboard();
    let vars = dash["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    assert_eq!(
        var("route")["definition"],
        "label_values(weir_requests_total, route)"
    );
    let panels = dash["panels"].as_array().expect("panels");
    let mut targets = 0;
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = &panel["title"];
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        for target in panel["targets"].as_array().expect("targets") {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            let expr = target["expr"].as_str().expect("expr");
            // A route's series follow the route picker.
            for s in selectors(expr) {
                if s.matchers.iter().any(|(label, _, _)| label == "route") {
                    assert!(
                        s.matchers
                            .iter()
                            .any(|(l, op, v)| l == "route" && op == "=~" && v == "$route"),
                        "{title}: {expr}"
                    );
                }
            }
            targets += 1;
        }
    }
    assert!(targets > 20, "only {targets} queries");
}

// === against a real weir ===

/// Each sample name of a Prometheus text exposition, with the label set of each sample.
/// Histograms are exposed, stored and queried as `_bucket`, `_sum` and `_count` samples,
/// so a query's names compare with these as they are: a query of a histogram's bare
/// name matches nothing in Prometheus, and nothing here either.
fn exposed(text: &str) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let mut out: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = if line[end..].starts_with('{') {
            let chars: Vec<char> = line[end + 1..].chars().collect();
            read_matchers(&chars, 0, line)
                .0
                .into_iter()
                .map(|(label, _, value)| (label, value))
                .collect()
        } else {
            BTreeMap::new()
        };
        out.entry(line[..end].to_owned()).or_default().push(labels);
    }
    out
}

/// What in `exprs` the scrape does not have: a metric name, a label a selector matches
/// on, or the exact value an `=` matcher asks for (values with a Grafana `$variable`
/// and regex matchers are checked for their label only).
fn missing(
    what: &str,
    exprs: &[String],
    scrape: &BTreeMap<String, Vec<BTreeMap<String, String>>>,
) -> Vec<String> {
    let mut out = BTreeSet::new();
    for expr in exprs {
        for s in selectors(expr) {
            let Some(samples) = scrape.get(&s.metric) else {
                out.insert(format!("{what}: {} is not on /metrics", s.metric));
                continue;
            };
            for (label, op, value) in &s.matchers {
                if !samples.iter().any(|l| l.contains_key(label)) {
                    out.insert(format!("{what}: {} has no label {label}", s.metric));
                } else if op == "="
                    && !value.contains('$')
                    && !samples.iter().any(|l| l.get(label) == Some(value))
                {
                    out.insert(format!("{what}: no {}{{{label}={value:?}}}", s.metric));
                }
            }
        }
    }
    out.into_iter().collect()
}

/// The names of weir's metrics that `exprs` read.
fn names(exprs: &[String]) -> BTreeSet<String> {
    exprs
        .iter()
        .flat_map(|e| selectors(e))
        .map(|s| s.metric)
        .collect()
}

/// A config that makes every series the rules and the dashboard read exist: a Redis
/// state backend (`weir_state_up`), a limiter that rejects the second request, a cache,
/// a breaker that opens on four failures, a retry, an upstream that refuses, a filter
/// that traps, and async jobs whose webhook never gets through.
fn config(redis: &str, api: &str, hooks: &str, down_port: u16) -> String {
    format!(
        r#"[listen]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"

[state]
backend = "redis"

[state.redis]
url = "{redis}"

[upstreams.api]
url = "{api}"

[upstreams.down]
url = "http://127.0.0.1:{down_port}"

[jobs]
store = "journal"
journal = "jobs.redb"

[jobs.webhooks]
origins = ["{hooks}"]
secret = "{SECRET}"
schedule = ["50ms"]

[filters.bad]
wasm = "filters/misbehave.wasm"
config = {{ mode = "trap" }}

[[routes]]
name = "limited"
match = {{ path_prefix = "/limited/" }}
upstream = "api"
filters = [{{ use = "limiter", config = {{ rate = 1, per = "1h" }} }}]

[[routes]]
name = "cached"
match = {{ path_prefix = "/cached/" }}
upstream = "api"
filters = ["cache"]

[[routes]]
name = "broken"
match = {{ path_prefix = "/broken/" }}
upstream = "api"
filters = [{{ use = "breaker", config = {{ window_size = 4, minimum_calls = 4, wait_in_open = "1h" }} }}]

[[routes]]
name = "retried"
match = {{ path_prefix = "/retried/" }}
upstream = "api"
filters = ["retry"]

[[routes]]
name = "down"
match = {{ path_prefix = "/down/" }}
upstream = "down"

[[routes]]
name = "trap"
match = {{ path_prefix = "/trap/" }}
upstream = "api"
filters = ["bad"]

[[routes]]
name = "jobs"
match = {{ path_prefix = "/jobs/" }}
upstream = "api"
async = {{ mode = "prefer" }}
"#
    )
}

/// GETs `path` from weir; returns the status.
async fn get(weir: &Weir, path: &str) -> u16 {
    client()
        .get(weir.url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .status()
        .as_u16()
}

#[tokio::test]
async fn every_metric_the_rules_and_the_dashboard_read_is_on_weirs_metrics() {
    let rule_exprs = rule_exprs();
    let dashboard_exprs = dashboard_exprs();
    // The extraction found what the rules and panels are about, so an empty reading
    // cannot pass.
    let (in_rules, in_dashboard) = (names(&rule_exprs), names(&dashboard_exprs));
    for name in [
        "weir_requests_total",
        "weir_request_duration_seconds_bucket",
        "weir_filter_breaker_state",
        "weir_jobs_oldest_pending_seconds",
        "weir_jobs_total",
        "weir_reloads_total",
        "weir_state_up",
        "weir_filter_failures_total",
    ] {
        assert!(in_rules.contains(name), "the rules read no {name}");
        assert!(in_dashboard.contains(name), "the dashboard reads no {name}");
    }
    for name in [
        "weir_upstream_errors_total",
        "weir_filter_limiter_tokens",
        "weir_filter_limiter_rejected_total",
        "weir_filter_cache_responses_total",
        "weir_jobs_pending",
        "weir_filter_call_duration_seconds_bucket",
    ] {
        assert!(in_dashboard.contains(name), "the dashboard reads no {name}");
    }

    let mut redis = RedisServer::start();
    let api = Upstream::start(|r, _| {
        if r.path.starts_with("/cached/") {
            Reply::ok()
                .header("cache-control", "max-age=300")
                .body(&b"cached"[..])
        } else if r.path.starts_with("/broken/") || r.path.starts_with("/retried/") {
            Reply::new(500)
        } else {
            Reply::ok()
        }
    })
    .await;
    let hooks = Upstream::start(|_, _| Reply::new(500)).await;
    let weir = WeirBuilder::new(config(
        &redis.url(),
        &api.url(),
        &hooks.url(),
        closed_port(),
    ))
    .copy("filters/misbehave.wasm", env!("WEIR_TEST_MISBEHAVE"))
    .start()
    .await;

    // One token an hour: the second request gets 429.
    assert_eq!(get(&weir, "/limited/a").await, 200);
    assert_eq!(get(&weir, "/limited/a").await, 429);
    // A miss, then a hit.
    assert_eq!(get(&weir, "/cached/a").await, 200);
    assert_eq!(get(&weir, "/cached/a").await, 200);
    // Four failures open the breaker; the next call is rejected.
    for _ in 0..4 {
        assert_eq!(get(&weir, "/broken/a").await, 500);
    }
    assert_eq!(get(&weir, "/broken/a").await, 503);
    // Retried once, failed twice.
    assert_eq!(get(&weir, "/retried/a").await, 500);
    assert_eq!(get(&weir, "/down/a").await, 502);
    assert_eq!(get(&weir, "/trap/a").await, 503);
    // A job that runs, whose webhook is refused until it is dead.
    let resp = client()
        .post(weir.url("/jobs/a"))
        .header("prefer", "respond-async")
        .header("weir-callback-url", format!("{}/hook", hooks.url()))
        .body("work")
        .send()
        .await
        .expect("POST /jobs/a");
    let location = accepted(resp).await;
    let job = until_final_within(&weir, &location, WAIT).await;
    assert_eq!(job["state"], "dead", "{job}");
    // Redis goes away: the limiter's next state operation fails.
    redis.kill();
    let deadline = Instant::now() + WAIT;
    let text = loop {
        // Whatever it answers (it fails open), the limiter asked the state store.
        get(&weir, "/limited/a").await;
        let text = metrics(&weir).await;
        if text
            .lines()
            .any(|l| l.starts_with("weir_state_errors_total{"))
        {
            break text;
        }
        assert!(Instant::now() < deadline, "no state error counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let scrape = exposed(&text);
    let mut problems = missing("weir-rules.yml", &rule_exprs, &scrape);
    problems.extend(missing("weir-dashboard.json", &dashboard_exprs, &scrape));
    assert!(
        problems.is_empty(),
        "{problems:#?}\n--- /metrics ---\n{text}"
    );
}

// === the readers themselves ===

#[test]
fn selectors_read_names_matchers_and_skip_recorded_series() {
    let s = selectors(
        r#"sum without (instance) (rate(weir_requests_total{status="5xx", route=~"$route"}[5m]))
            / route:weir_requests:rate5m and on (job) weir_state_up == 0
            or label_replace(vector(1), "x", "weir_not_a_metric", "", "")"#,
    );
    let metrics: Vec<&str> = s.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(metrics, ["weir_requests_total", "weir_state_up"]);
    let matchers: Vec<(&str, &str, &str)> = s[0]
        .matchers
        .iter()
        .map(|(l, op, v)| (l.as_str(), op.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        matchers,
        [("status", "=", "5xx"), ("route", "=~", "$route")]
    );
    assert!(s[1].matchers.is_empty());
}

#[test]
fn missing_names_absent_metrics_labels_and_values() {
    let scrape = exposed(
        "# TYPE weir_requests_total counter\n\
         weir_requests_total{method=\"GET\",route=\"a\",status=\"2xx\"} 1\n\
         weir_state_up 1\n\
         weir_request_duration_seconds_bucket{route=\"a\",le=\"+Inf\"} 1\n",
    );
    let exprs = |e: &str| vec![e.to_owned()];
    assert!(
        missing(
            "t",
            &exprs(r#"weir_requests_total{route=~"$route"}"#),
            &scrape
        )
        .is_empty()
    );
    assert!(
        missing(
            "t",
            &exprs("histogram_quantile(0.99, rate(weir_request_duration_seconds_bucket[5m]))"),
            &scrape
        )
        .is_empty()
    );
    assert_eq!(
        missing(
            "t",
            &exprs("rate(weir_request_duration_seconds[5m])"),
            &scrape
        ),
        vec!["t: weir_request_duration_seconds is not on /metrics"]
    );
    assert_eq!(
        missing("t", &exprs(r#"weir_requests_total{code="500"}"#), &scrape),
        vec!["t: weir_requests_total has no label code"]
    );
    assert_eq!(
        missing("t", &exprs(r#"weir_requests_total{status="5xx"}"#), &scrape),
        vec![r#"t: no weir_requests_total{status="5xx"}"#]
    );
}

#[test]
fn rules_are_read_with_their_block_exprs() {
    let yaml = "groups:\n  - name: g\n    rules:\n      - record: r:x:rate5m\n        expr: sum(rate(weir_a[5m]))\n      - alert: A\n        expr: |\n          weir_b\n          and weir_c\n        for: 5m\n        labels:\n          severity: warning\n  - name: h\n    rules: []\n";
    let rules = rules(yaml);
    assert_eq!(rules.len(), 2);
    assert_eq!((rules[0].kind, rules[0].name), ("record", "r:x:rate5m"));
    assert_eq!(
        value(&rules[0].lines, "expr").as_deref(),
        Some("sum(rate(weir_a[5m]))")
    );
    assert_eq!((rules[1].kind, rules[1].name), ("alert", "A"));
    assert_eq!(
        value(&rules[1].lines, "expr").as_deref(),
        Some("weir_b\nand weir_c")
    );
    assert_eq!(value(&rules[1].lines, "for").as_deref(), Some("5m"));
    assert_eq!(
        value(&rules[1].lines, "severity").as_deref(),
        Some("warning")
    );
    assert!(value(&rules[1].lines, "summary").is_none());
}
