//! `weir filter test` as a user runs it: the real binary against standard filters'
//! components, with the case and config files in `tests/filter_test/`.
//!
//! The binary runs in the workspace root with relative paths, so the file names in its
//! messages are the same on every machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The directory of the case and config files, relative to the workspace root.
const DIR: &str = "tests/filter_test";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_owned()
}

/// What one run printed and how it ended.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn show(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `weir filter test WASM [--config DIR/CONFIG] --case DIR/CASES EXTRA…` in the
/// workspace root, with the compile cache under target/ and logging left at its default.
fn filter_test(wasm: &str, config: Option<&str>, cases: &str, extra: &[&str]) -> Run {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("filter-test-cache");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(["filter", "test", wasm]);
    if let Some(c) = config {
        cmd.arg("--config").arg(format!("{DIR}/{c}"));
    }
    let out: Output = cmd
        .arg("--case")
        .arg(format!("{DIR}/{cases}"))
        .args(extra)
        .current_dir(workspace_root())
        .env("XDG_CACHE_HOME", &cache)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", env!("CARGO_BIN_EXE_weir")));
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn a_good_case_file_for_headers_passes() {
    let run = filter_test(
        env!("WEIR_BUILTIN_HEADERS"),
        Some("headers.toml"),
        "headers_pass.toml",
        &[],
    );
    assert_eq!(run.code, Some(0), "{}", run.show());
    assert_eq!(
        run.stdout,
        "ok   sets the API key and drops the cookie\n\
         ok   passes an upstream error on\n\
         2 cases: 2 passed, 0 failed\n",
        "{}",
        run.show()
    );
    assert_eq!(run.stderr, "", "{}", run.show());
}

#[test]
fn a_wrong_expectation_fails_with_a_diff_and_later_cases_still_run() {
    let run = filter_test(
        env!("WEIR_BUILTIN_HEADERS"),
        Some("headers.toml"),
        "headers_fail.toml",
        &[],
    );
    assert_eq!(run.code, Some(1), "{}", run.show());
    assert_eq!(
        run.stdout,
        "ok   sets the API key\n\
         FAIL expects the wrong key\n     \
         upstream_request.headers.x-api-key\n       \
         expected: \"k-124\"\n       \
         actual:   \"k-123\"\n\
         ok   still runs after a failure\n\
         3 cases: 2 passed, 1 failed\n",
        "{}",
        run.show()
    );
}

#[test]
fn a_limiter_sequence_shares_the_bucket_and_the_virtual_clock() {
    let run = filter_test(
        env!("WEIR_BUILTIN_LIMITER"),
        Some("limiter.json"),
        "limiter_sequence.toml",
        &[],
    );
    assert_eq!(run.code, Some(0), "{}", run.show());
    assert_eq!(
        run.stdout,
        "ok   first of the burst\n\
         ok   second of the burst\n\
         ok   the third is rejected\n\
         ok   a token is back ten seconds later\n\
         4 cases: 4 passed, 0 failed\n",
        "{}",
        run.show()
    );
}

#[test]
fn retry_gets_one_scripted_answer_per_try() {
    let run = filter_test(
        env!("WEIR_BUILTIN_RETRY"),
        Some("retry.json"),
        "retry_per_try.toml",
        &[],
    );
    assert_eq!(run.code, Some(0), "{}", run.show());
    assert_eq!(
        run.stdout,
        "ok   retries a 503 and gets the 200\n1 case: 1 passed, 0 failed\n",
        "{}",
        run.show()
    );
}

#[test]
fn a_bad_case_file_exits_2_with_its_place() {
    let run = filter_test(env!("WEIR_BUILTIN_HEADERS"), None, "bad_key.toml", &[]);
    assert_eq!(run.code, Some(2), "{}", run.show());
    assert_eq!(run.stdout, "", "{}", run.show());
    assert_eq!(
        run.stderr,
        "error: tests/filter_test/bad_key.toml:6:1: unknown field `respons`, expected one of `action`, `upstream_calls`, `upstream_request`, `response`\n",
        "{}",
        run.show()
    );
}

#[test]
fn a_config_the_filter_rejects_exits_2_with_its_message() {
    let run = filter_test(
        env!("WEIR_BUILTIN_LIMITER"),
        Some("retry.json"),
        "limiter_sequence.toml",
        &[],
    );
    assert_eq!(run.code, Some(2), "{}", run.show());
    assert_eq!(run.stdout, "", "{}", run.show());
    assert!(
        run.stderr
            .contains(": init rejected its config: limiter: unknown field")
            && run
                .stderr
                .contains("(config: tests/filter_test/retry.json)"),
        "{}",
        run.show()
    );
}

#[test]
fn a_trap_fails_its_case_with_the_filters_output_and_the_next_case_still_runs() {
    let run = filter_test(
        env!("WEIR_TEST_MISBEHAVE"),
        Some("misbehave_trap.json"),
        "misbehave.toml",
        &[],
    );
    assert_eq!(run.code, Some(1), "{}", run.show());
    let failed = |name: &str| {
        format!(
            "FAIL {name}\n     \
             error: the filter failed: wasm trap: wasm `unreachable` instruction executed\n     \
             filter output:\n"
        )
    };
    let cases: Vec<&str> = run.stdout.split("FAIL ").skip(1).collect();
    assert_eq!(cases.len(), 2, "{}", run.show());
    for (case, name) in cases
        .iter()
        .zip(["the first call fails", "the next case still runs"])
    {
        let case = format!("FAIL {case}");
        assert!(case.starts_with(&failed(name)), "{}", run.show());
        assert!(
            case.contains("       stderr: misbehave: trapping in on-response, as configured\n"),
            "{}",
            run.show()
        );
    }
    assert!(
        run.stdout.ends_with("2 cases: 0 passed, 2 failed\n"),
        "{}",
        run.show()
    );
}

#[test]
fn a_call_past_max_call_time_fails_its_case() {
    let run = filter_test(
        env!("WEIR_TEST_MISBEHAVE"),
        Some("misbehave_loop.json"),
        "misbehave.toml",
        &["--max-call-time", "20ms"],
    );
    assert_eq!(run.code, Some(1), "{}", run.show());
    assert_eq!(
        run.stdout,
        "FAIL the first call fails\n     \
         error: the filter exceeded its call time of 20ms\n\
         FAIL the next case still runs\n     \
         error: the filter exceeded its call time of 20ms\n\
         2 cases: 0 passed, 2 failed\n",
        "{}",
        run.show()
    );
}
