//! `weir filter new` end to end: the real binary writes a project for each language into
//! a temporary directory, the project's own test command builds it and runs its cases
//! with `weir filter test`, and `weir check` loads its `weir.toml`.
//!
//! The language tests need each language's toolchain; a missing one fails the test with
//! the setup script that installs it (nothing is skipped):
//!
//! - Rust: the toolchain with `wasm32-wasip2` (as for the rest of weir). Crates come
//!   from the local cargo cache (offline), and builds share `target/tmp/scaffold-rust`.
//! - JavaScript: `examples/filters/js/setup.sh` (node, npm and componentize-js in npm's
//!   cache; the project installs from that cache with `npm ci --offline`).
//! - Python: `examples/filters/python/setup.sh` (componentize-py).
//! - C: `examples/filters/c/setup.sh` (clang-16, wasi-libc, wit-bindgen, wasm-tools).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// The names of the cases every project's `cases.toml` has.
const CASES: &[&str] = &[
    "sets the header on a request",
    "replaces the value a client sent",
    "passes an upstream error on untouched",
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_owned()
}

/// Runs `weir ARGS` in `dir`.
fn weir(dir: &Path, args: &[&str]) -> Output {
    Command::new(WEIR)
        .args(args)
        .current_dir(dir)
        .env("XDG_CACHE_HOME", cache_dir())
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {WEIR}: {e}"))
}

/// weir's compile cache for these tests, under target/ rather than the user's home.
fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("scaffold-cache")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `weir filter new NAME --lang LANG` into a fresh temporary directory; returns the
/// directory (kept alive by the `TempDir`) and the project's path.
fn new_project(name: &str, lang: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let out = weir(tmp.path(), &["filter", "new", name, "--lang", lang]);
    assert!(
        out.status.success(),
        "weir filter new {name} --lang {lang} failed:\n{}",
        text(&out.stderr)
    );
    let project = tmp.path().join(name);
    assert!(project.join("cases.toml").is_file());
    (tmp, project)
}

/// A command for the project's toolchain: none of the outer `cargo test`'s settings
/// (its target, flags, wrappers) leak into it, and weir is found through `$WEIR`.
fn project_command(program: &str, args: &[&str], project: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(project);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("CARGO_") && k != "CARGO_HOME"
            || k.starts_with("RUSTC")
            || k == "RUSTFLAGS"
            || k == "RUSTDOCFLAGS"
        {
            cmd.env_remove(&key);
        }
    }
    cmd.env("WEIR", WEIR)
        .env("XDG_CACHE_HOME", cache_dir())
        .env("NO_COLOR", "1");
    cmd
}

/// Runs the project's test command and checks that every case passed; then checks that
/// `weir check` accepts the project's `weir.toml` with the component just built.
fn run_and_check(mut cmd: Command, project: &Path, lang: &str, started: Instant) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run the {lang} project's test command: {e}"));
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "the {lang} project's test command failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        text(&out.stderr)
    );
    for case in CASES {
        assert!(
            stdout.lines().any(|l| l == format!("ok   {case}")),
            "no `ok   {case}` line:\n{stdout}"
        );
    }
    assert!(
        stdout.contains(&format!("{} passed, 0 failed", CASES.len())),
        "{stdout}"
    );
    let name = project.file_name().unwrap().to_string_lossy().into_owned();
    assert!(project.join(format!("{name}.wasm")).is_file());
    let check = weir(project, &["check", "weir.toml"]);
    assert!(
        check.status.success(),
        "weir check weir.toml failed:\n{}",
        text(&check.stderr)
    );
    eprintln!(
        "{lang}: scaffolded, built and tested in {:.1?}",
        started.elapsed()
    );
}

/// Fails with the setup script to run when `program` is not on PATH.
fn require(program: &str, setup: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    assert!(
        found,
        "`{program}` is not on PATH: run {} first",
        workspace_root().join(setup).display()
    );
}

// === the languages ===

#[test]
fn a_rust_project_builds_and_passes_its_cases() {
    let started = Instant::now();
    let (_tmp, project) = new_project("stamp", "rust");
    let mut cmd = project_command("./test.sh", &[], &project);
    // Every run's crates compile once into one shared directory (under target/), from
    // the local cargo cache.
    cmd.env(
        "CARGO_TARGET_DIR",
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("scaffold-rust"),
    )
    .env("CARGO_NET_OFFLINE", "true");
    run_and_check(cmd, &project, "rust", started);
}

#[test]
fn a_js_project_builds_and_passes_its_cases() {
    const SETUP: &str = "examples/filters/js/setup.sh";
    require("node", SETUP);
    require("npm", SETUP);
    let started = Instant::now();
    let (_tmp, project) = new_project("tagger-js", "js");
    // The project's setup.sh is `npm ci`; offline, it installs from npm's cache, which the
    // example's setup.sh filled with the same pinned packages.
    let mut setup = project_command("./setup.sh", &[], &project);
    setup.env("npm_config_offline", "true");
    let out = setup.output().expect("run the project's setup.sh");
    assert!(
        out.status.success(),
        "npm ci --offline failed: run {} first, which fills npm's cache with the pinned \
         packages\n{}{}",
        workspace_root().join(SETUP).display(),
        text(&out.stdout),
        text(&out.stderr)
    );
    let cmd = project_command("npm", &["test"], &project);
    run_and_check(cmd, &project, "js", started);
}

#[test]
fn a_python_project_builds_and_passes_its_cases() {
    require("componentize-py", "examples/filters/python/setup.sh");
    let started = Instant::now();
    let (_tmp, project) = new_project("tagger-py", "python");
    let cmd = project_command("./test.sh", &[], &project);
    run_and_check(cmd, &project, "python", started);
}

#[test]
fn a_c_project_builds_and_passes_its_cases() {
    const SETUP: &str = "examples/filters/c/setup.sh";
    for tool in ["clang-16", "wit-bindgen", "wasm-tools", "make"] {
        require(tool, SETUP);
    }
    let started = Instant::now();
    let (_tmp, project) = new_project("tagger-c", "c");
    let cmd = project_command("make", &["test"], &project);
    run_and_check(cmd, &project, "c", started);
}

// === the command itself ===

#[test]
fn bad_names_are_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, reason) in [
        ("Stamp", "it must start with a lowercase letter (a-z)"),
        (
            "my.filter",
            "'.' is not allowed; use lowercase letters, digits, `-` and `_`",
        ),
        ("stamp-", "it must not end with `-` or `_`"),
        ("crate", "Rust reserves it; choose another name"),
    ] {
        let out = weir(tmp.path(), &["filter", "new", name, "--lang", "rust"]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert_eq!(
            text(&out.stderr),
            format!("error: invalid filter name `{name}`: {reason}\n")
        );
        assert!(!tmp.path().join(name).exists(), "{name}");
    }
}

#[test]
fn a_non_empty_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("stamp")).unwrap();
    std::fs::write(tmp.path().join("stamp/notes.txt"), "mine").unwrap();
    let out = weir(tmp.path(), &["filter", "new", "stamp", "--lang", "rust"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: stamp already exists and is not empty; choose another --dir or remove it\n"
    );
    let entries: Vec<OsString> = std::fs::read_dir(tmp.path().join("stamp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, vec![OsString::from("notes.txt")]);
}

#[test]
fn an_unknown_language_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = weir(tmp.path(), &["filter", "new", "stamp", "--lang", "cobol"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("invalid value 'cobol' for '--lang <LANG>'"),
        "{stderr}"
    );
    assert!(
        stderr.contains("[possible values: rust, js, python, c]"),
        "{stderr}"
    );
    assert!(!tmp.path().join("stamp").exists());
}

#[test]
fn the_output_names_the_next_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("teams/tagger");
    let out = weir(
        tmp.path(),
        &[
            "filter",
            "new",
            "tagger",
            "--lang",
            "rust",
            "--dir",
            dir.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    // The test binary's weir is not the one on PATH, so the commands name it by path.
    for line in [
        format!("  cd {}", dir.display()),
        format!("  WEIR={WEIR} ./test.sh"),
        format!("  {WEIR} run weir.toml"),
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(&line)),
            "no line starting {line:?}:\n{stdout}"
        );
    }
    assert!(stdout.contains("README.md"), "{stdout}");
    assert!(dir.join("src/lib.rs").is_file());
}
