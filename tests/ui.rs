//! Config error cases kept as files: every `tests/ui/NAME.toml` is checked with the real
//! `weir check`, and its stderr must equal `tests/ui/NAME.err` exactly.
//!
//! The binary runs in the workspace root with the relative path `tests/ui/NAME.toml`, so
//! the file names in the messages are the same on every machine.
//!
//! After an intended change to a message, regenerate the expected files and review the
//! diff:
//!
//! ```sh
//! WEIR_BLESS=1 cargo test -p weir --test ui
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The directory of the cases, relative to the workspace root.
const UI_DIR: &str = "tests/ui";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_owned()
}

fn blessing() -> bool {
    std::env::var_os("WEIR_BLESS").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Runs `weir check CONFIG` in the workspace root. The compile cache goes under target/
/// (never the user's home), and logging is left at its default so stderr is what an
/// operator sees.
fn weir_check(config: &str) -> Output {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-cache");
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("check")
        .arg(config)
        .current_dir(workspace_root())
        .env("XDG_CACHE_HOME", &cache)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", env!("CARGO_BIN_EXE_weir")))
}

/// The case names (file stems) of every file in `tests/ui` ending in `.ext`, sorted.
fn names_with(ext: &str) -> Vec<String> {
    let dir = workspace_root().join(UI_DIR);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A line diff of `expected` against `actual` (longest common subsequence): `-` lines are
/// only expected, `+` lines only actual, `  ` lines both.
fn line_diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    // lcs[i][j]: the LCS length of a[i..] and b[j..].
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            let _ = writeln!(out, "  {}", a[i]);
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            let _ = writeln!(out, "+ {}", b[j]);
            j += 1;
        } else {
            let _ = writeln!(out, "- {}", a[i]);
            i += 1;
        }
    }
    if a == b && expected != actual {
        // Same lines; only the final newline (or a CR) differs.
        let _ = writeln!(
            out,
            "(the texts differ only in line endings or the final newline)"
        );
    }
    out
}

#[test]
fn config_errors_match_their_err_files() {
    let root = workspace_root();
    let bless = blessing();
    let cases = names_with("toml");
    assert!(!cases.is_empty(), "no cases in {UI_DIR}/*.toml");
    let mut failures = Vec::new();
    for name in &cases {
        let config = format!("{UI_DIR}/{name}.toml");
        let err_path = root.join(UI_DIR).join(format!("{name}.err"));
        let out = weir_check(&config);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut problems = String::new();
        if out.status.success() {
            let _ = writeln!(problems, "`weir check` exited 0; a case must fail");
        }
        if !stdout.is_empty() {
            let _ = writeln!(problems, "stdout is not empty:\n{stdout}");
        }
        if bless {
            std::fs::write(&err_path, &stderr)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", err_path.display()));
        } else {
            match std::fs::read_to_string(&err_path) {
                Ok(expected) if expected == stderr => {}
                Ok(expected) => {
                    let _ = writeln!(
                        problems,
                        "stderr differs from {UI_DIR}/{name}.err (- expected, + actual):\n{}",
                        line_diff(&expected, &stderr)
                    );
                }
                Err(e) => {
                    let _ = writeln!(
                        problems,
                        "cannot read {UI_DIR}/{name}.err ({e}); run with WEIR_BLESS=1 to create it. stderr was:\n{stderr}"
                    );
                }
            }
        }
        if !problems.is_empty() {
            failures.push(format!("=== {config}\n{problems}"));
        }
    }
    for orphan in names_with("err") {
        if !cases.contains(&orphan) {
            failures.push(format!(
                "=== {UI_DIR}/{orphan}.err\nhas no {UI_DIR}/{orphan}.toml; remove it\n"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} ui cases failed{}:\n\n{}",
        failures.len(),
        cases.len(),
        if bless {
            " (while blessing)"
        } else {
            "; after an intended change, run with WEIR_BLESS=1 and review the diff"
        },
        failures.join("\n")
    );
}

#[test]
fn quickstart_config_passes_check() {
    let config = "examples/quickstart/weir.toml";
    let out = weir_check(config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "`weir check {config}` failed ({}):\n{stderr}",
        out.status
    );
    assert!(
        stdout.trim_end().ends_with(": ok"),
        "`weir check {config}` printed {stdout:?}, expected it to end with \": ok\""
    );
}
