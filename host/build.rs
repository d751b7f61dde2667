//! Builds the standard filters (and the test filters) to wasm32-wasip2 components, so the
//! `weir` binary can embed them and the tests can load them.
//!
//! A nested `cargo build` with its own target directory, like wasmtime's test-programs:
//! the outer build holds the lock on its own directory.

use std::path::{Path, PathBuf};
use std::process::Command;

/// (package, env var that receives the component's path)
const COMPONENTS: &[(&str, &str)] = &[
    ("weir-filter-headers", "WEIR_BUILTIN_HEADERS"),
    ("weir-filter-retry", "WEIR_BUILTIN_RETRY"),
    ("weir-filter-breaker", "WEIR_BUILTIN_BREAKER"),
    ("weir-filter-limiter", "WEIR_BUILTIN_LIMITER"),
    ("weir-filter-cache", "WEIR_BUILTIN_CACHE"),
    ("weir-filter-idempotency", "WEIR_BUILTIN_IDEMPOTENCY"),
    ("weir-filter-sanitize", "WEIR_BUILTIN_SANITIZE"),
    ("weir-filter-auth", "WEIR_BUILTIN_AUTH"),
    ("weir-test-misbehave", "WEIR_TEST_MISBEHAVE"),
    ("weir-test-scripted", "WEIR_TEST_SCRIPTED"),
    ("weir-test-legacy", "WEIR_TEST_LEGACY"),
    ("weir-test-v020", "WEIR_TEST_V020"),
];

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest
        .parent()
        .expect("host/ sits in the workspace")
        .to_owned();
    for dir in ["wit", "sdk", "filters", "tests/filters"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );

    check_wasm_target();

    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("wasm-filters");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .arg("--target-dir")
        .arg(&target_dir);
    for (pkg, _) in COMPONENTS {
        cmd.args(["-p", pkg]);
    }
    // Nothing of the outer build (flags, wrappers such as clippy-driver, coverage
    // instrumentation) applies to the guests.
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
    cmd.env("CARGO_PROFILE_RELEASE_DEBUG", "0")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo");
    let status = cmd
        .status()
        .expect("cannot run cargo to build the filter components");
    assert!(
        status.success(),
        "building the filter components failed (see above)"
    );

    for (pkg, var) in COMPONENTS {
        let file = target_dir
            .join("wasm32-wasip2/release")
            .join(format!("{}.wasm", pkg.replace('-', "_")));
        assert!(
            Path::new(&file).exists(),
            "{} was not built",
            file.display()
        );
        println!("cargo:rustc-env={var}={}", file.display());
    }
}

/// Fails at once, saying what to do, when the pinned toolchain lacks the wasm target:
/// otherwise the nested build fails much later with "can't find crate for `core`".
fn check_wasm_target() {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let libdir = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", "wasm32-wasip2"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let has_core = libdir
        .as_deref()
        .and_then(|d| std::fs::read_dir(d).ok())
        .is_some_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
        });
    assert!(
        has_core,
        "the wasm32-wasip2 target is not installed for this toolchain, and weir's filters \
         build to it: run scripts/setup-rust.sh (or `rustup target add wasm32-wasip2`)"
    );
}
