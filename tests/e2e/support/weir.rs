//! Runs the real `weir` binary.
//!
//! 1. Write the config with `format!`, using `addr = "127.0.0.1:0"` for `[listen]` (and
//!    `[admin]`), so weir picks free ports.
//! 2. `Weir::start(&toml).await`, or `WeirBuilder::new(toml).file("certs/ca.pem", pem)
//!    .start().await` to put more files next to `weir.toml` (paths relative to it).
//! 3. `start` returns once weir has printed `weir listening on ADDR` on stdout (and
//!    `weir admin on ADDR` when the config has an `[admin]` table). Call `weir.url(path)`.
//! 4. Read weir's stderr with `weir.logs()`, or wait for a line with `wait_for_log`.
//!
//! The process is killed when the `Weir` is dropped. If the test is panicking by then,
//! weir's stderr is printed, so a failing test shows what weir said.
//!
//! `check(toml, files)` runs `weir check` instead and returns its exit code and output.
//!
//! The binary is `CARGO_BIN_EXE_weir` when this is built as weir's `e2e` test, else the
//! `WEIR_BIN` environment variable. `WEIR_TEST_ECHO=1` echoes weir's output live.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::sync::watch;

/// The line weir prints on stdout once its listener is bound.
const LISTENING: &str = "weir listening on ";
/// The line weir prints on stdout once its admin listener is bound.
const ADMIN: &str = "weir admin on ";
/// How long `weir check` may take (it compiles every filter).
const CHECK_TIMEOUT: Duration = Duration::from_secs(120);
/// Proxy variables the child must not inherit: weir's upstream calls stay on 127.0.0.1.
const PROXY_VARS: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
];

/// The `weir` binary under test.
pub fn weir_bin() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_weir") {
        return path.into();
    }
    std::env::var_os("WEIR_BIN")
        .map(PathBuf::from)
        .expect("no weir binary: build these tests as weir's `e2e` test, or set WEIR_BIN")
}

/// Runs `weir check weir.toml` with `files` next to it; returns `(exit code, stdout,
/// stderr)`. The exit code is -1 if weir died from a signal. Blocks the calling thread.
pub fn check(config_toml: &str, files: &[(&str, &[u8])]) -> (i32, String, String) {
    files
        .iter()
        .fold(WeirBuilder::new(config_toml), |b, (path, contents)| {
            b.file(path, contents)
        })
        .check()
}

// === impl WeirBuilder ===

/// A weir config plus the files it refers to, ready to run.
pub struct WeirBuilder {
    config: String,
    files: Vec<(PathBuf, Vec<u8>)>,
    env: Vec<(OsString, OsString)>,
    startup_timeout: Duration,
    expect_admin: Option<bool>,
    binary: Option<PathBuf>,
}

impl WeirBuilder {
    pub fn new(config_toml: impl Into<String>) -> Self {
        Self {
            config: config_toml.into(),
            files: Vec::new(),
            env: Vec::new(),
            // Compiling filters with Cranelift in a debug build takes seconds.
            startup_timeout: Duration::from_secs(60),
            expect_admin: None,
            binary: None,
        }
    }

    /// Run this program instead of [`weir_bin`] (e.g. a release build).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Write `contents` to `path`, relative to the config's directory.
    pub fn file(mut self, path: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> Self {
        let path = path.as_ref();
        assert!(path.is_relative(), "{} must be relative", path.display());
        self.files
            .push((path.to_owned(), contents.as_ref().to_vec()));
        self
    }

    /// Several files, e.g. `Pki::files()`.
    pub fn files<P: AsRef<Path>, C: AsRef<[u8]>>(
        self,
        files: impl IntoIterator<Item = (P, C)>,
    ) -> Self {
        files
            .into_iter()
            .fold(self, |b, (path, contents)| b.file(path, contents))
    }

    /// Copy the file at `src` (e.g. a built filter `.wasm`) to `path` in the config's directory.
    pub fn copy(self, path: impl AsRef<Path>, src: impl AsRef<Path>) -> Self {
        let src = src.as_ref();
        let contents = std::fs::read(src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
        self.file(path, contents)
    }

    /// Set an environment variable for weir.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// How long to wait for the listening line (default 60 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Whether to wait for the `weir admin on` line too. By default, only if the config
    /// has an `admin` table.
    pub fn expect_admin(mut self, expect: bool) -> Self {
        self.expect_admin = Some(expect);
        self
    }

    /// Start weir and wait until it listens; panics with weir's output if it doesn't.
    pub async fn start(self) -> Weir {
        match self.try_start().await {
            Ok(weir) => weir,
            Err(e) => panic!("{e}"),
        }
    }

    /// Starts weir expecting it to refuse its config: it must exit non-zero by itself.
    /// Returns the first line of its stderr that contains `needle`.
    pub async fn refused(self, needle: &str) -> String {
        let err = match self.try_start().await {
            Ok(_) => panic!("weir started, but it must refuse this config"),
            Err(err) => err,
        };
        assert!(
            matches!(err.exit_code(), Some(code) if code != 0),
            "weir should exit non-zero by itself: {err}"
        );
        err.stderr
            .lines()
            .find(|l| l.contains(needle))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no line with {needle:?} in stderr: {err}"))
    }

    /// Start weir and wait until it listens, or return why it didn't (e.g. for tests that
    /// expect weir to refuse a config).
    pub async fn try_start(self) -> Result<Weir, StartError> {
        let expect_admin = self.expect_admin.unwrap_or_else(|| {
            toml::from_str::<toml::Table>(&self.config).is_ok_and(|t| t.contains_key("admin"))
        });
        let timeout = self.startup_timeout;
        let dir = self.write_dir();
        let config_path = dir.path().join("weir.toml");
        let mut child = self
            .command(&dir, "run", &config_path)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn weir: {e}"));
        let output = Arc::new(Output::default());
        let readers = vec![
            read_lines(
                child.stdout.take().expect("piped stdout"),
                output.clone(),
                Stream::Stdout,
            ),
            read_lines(
                child.stderr.take().expect("piped stderr"),
                output.clone(),
                Stream::Stderr,
            ),
        ];
        let mut weir = Weir {
            child,
            dir,
            config_path,
            listen: None,
            admin: None,
            output,
            readers,
        };

        let mut changed = weir.output.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        let (failure, grace) = loop {
            let (listen, admin, stdout_closed) = {
                let state = weir.output.state.lock().unwrap();
                (state.listen, state.admin, state.stdout_closed)
            };
            if let Some(listen) = listen
                && (!expect_admin || admin.is_some())
            {
                weir.listen = Some(listen);
                weir.admin = admin;
                return Ok(weir);
            }
            if stdout_closed {
                // It is exiting: give it a moment so its exit status is known.
                let reason = "weir exited (or closed stdout) before it was listening";
                break (reason.to_owned(), Duration::from_secs(5));
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                let what = if expect_admin {
                    "`weir listening on` and `weir admin on`"
                } else {
                    "`weir listening on`"
                };
                break (
                    format!("weir printed no {what} within {timeout:?}"),
                    Duration::ZERO,
                );
            }
        };
        Err(weir.fail(failure, grace).await)
    }

    /// Run `weir check weir.toml`; returns `(exit code, stdout, stderr)`.
    pub fn check(self) -> (i32, String, String) {
        let dir = self.write_dir();
        let config_path = dir.path().join("weir.toml");
        let mut child = self
            .command(&dir, "check", &config_path)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn weir: {e}"));
        // Read both pipes on their own threads so a full pipe can't stall weir.
        let stdout = drain(child.stdout.take().expect("piped stdout"));
        let stderr = drain(child.stderr.take().expect("piped stderr"));
        let deadline = Instant::now() + CHECK_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for weir check") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "weir check did not finish within {CHECK_TIMEOUT:?}; stderr:\n{}",
                    stderr.join().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (
            status.code().unwrap_or(-1),
            stdout.join().unwrap_or_default(),
            stderr.join().unwrap_or_default(),
        )
    }

    /// A fresh temp dir holding `weir.toml` and the extra files.
    fn write_dir(&self) -> TempDir {
        let dir = tempfile::Builder::new()
            .prefix("weir-e2e-")
            .tempdir()
            .expect("create temp dir");
        write_file(dir.path(), Path::new("weir.toml"), self.config.as_bytes());
        for (path, contents) in &self.files {
            write_file(dir.path(), path, contents);
        }
        dir
    }

    fn command(&self, dir: &TempDir, subcommand: &str, config_path: &Path) -> Command {
        let mut cmd = Command::new(self.binary.clone().unwrap_or_else(weir_bin));
        cmd.arg(subcommand)
            .arg(config_path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1");
        for var in PROXY_VARS {
            cmd.env_remove(var);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }
}

/// Write `contents` to `dir/path`, creating directories, atomically (write then rename),
/// so a watching weir never reads half a file.
fn write_file(dir: &Path, path: &Path, contents: &[u8]) {
    let full = dir.join(path);
    let parent = full.parent().expect("file path has a parent");
    std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
    let tmp = parent.join(format!(
        ".{}.tmp",
        full.file_name().expect("file name").to_string_lossy()
    ));
    std::fs::write(&tmp, contents).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, &full).unwrap_or_else(|e| panic!("rename to {}: {e}", full.display()));
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

// === impl StartError ===

/// Why weir did not come up: what went wrong, how it exited, and what it printed.
#[derive(Debug)]
pub struct StartError {
    pub reason: String,
    /// `None` if weir was still running (and was then killed) when we gave up.
    pub exit: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl StartError {
    /// The exit code, if weir exited by itself with one.
    pub fn exit_code(&self) -> Option<i32> {
        self.exit.and_then(|s| s.code())
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.reason)?;
        match self.exit {
            Some(status) => write!(f, " ({status})")?,
            None => write!(f, " (killed)")?,
        }
        write!(
            f,
            "\n--- weir stdout ---\n{}\n--- weir stderr ---\n{}",
            self.stdout, self.stderr
        )
    }
}

impl std::error::Error for StartError {}

// === output capture ===

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// What weir printed so far; `changed` ticks on every line and on each pipe's end.
#[derive(Default)]
struct Output {
    state: Mutex<OutputState>,
    changed: watch::Sender<()>,
}

#[derive(Default)]
struct OutputState {
    stdout: Vec<String>,
    stderr: Vec<String>,
    listen: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    stdout_closed: bool,
    stderr_closed: bool,
}

/// The address after `prefix` in `line`, if the line has it.
fn parse_addr(line: &str, prefix: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(prefix)? + prefix.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// Reads `pipe` line by line into `output` on a thread of its own. Plain threads, not
/// tokio tasks, so capture doesn't depend on which runtime a test uses.
fn read_lines(
    pipe: impl Read + Send + 'static,
    output: Arc<Output>,
    stream: Stream,
) -> JoinHandle<()> {
    let echo = std::env::var_os("WEIR_TEST_ECHO").is_some();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&buf)
                .trim_end_matches(['\r', '\n'])
                .to_owned();
            if echo {
                let tag = if stream == Stream::Stdout {
                    "out"
                } else {
                    "err"
                };
                eprintln!("[weir {tag}] {line}");
            }
            let mut state = output.state.lock().unwrap();
            match stream {
                Stream::Stdout => {
                    if state.listen.is_none() {
                        state.listen = parse_addr(&line, LISTENING);
                    }
                    if state.admin.is_none() {
                        state.admin = parse_addr(&line, ADMIN);
                    }
                    state.stdout.push(line);
                }
                Stream::Stderr => state.stderr.push(line),
            }
            drop(state);
            output.changed.send_replace(());
        }
        let mut state = output.state.lock().unwrap();
        match stream {
            Stream::Stdout => state.stdout_closed = true,
            Stream::Stderr => state.stderr_closed = true,
        }
        drop(state);
        output.changed.send_replace(());
    })
}

// === impl Weir ===

/// A running weir process. Killed on drop.
pub struct Weir {
    child: Child,
    dir: TempDir,
    config_path: PathBuf,
    listen: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    output: Arc<Output>,
    readers: Vec<JoinHandle<()>>,
}

impl Weir {
    /// Start weir with this config and no other files; panics if it doesn't come up.
    pub async fn start(config_toml: &str) -> Self {
        WeirBuilder::new(config_toml).start().await
    }

    pub fn builder(config_toml: impl Into<String>) -> WeirBuilder {
        WeirBuilder::new(config_toml)
    }

    /// The proxy listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.listen.expect("weir is listening")
    }

    /// `http://ADDR/path` (a leading `/` is added if missing).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), slash(path))
    }

    /// `https://127.0.0.1:PORT/path`, for a TLS listener.
    pub fn https_url(&self, path: &str) -> String {
        format!("https://{}{}", self.addr(), slash(path))
    }

    /// The admin listener's address, if weir printed one by the time it was listening.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// `http://ADMIN_ADDR/path`; panics if weir reported no admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        let admin = self
            .admin
            .expect("weir reported no admin listener (is there an [admin] table?)");
        format!("http://{admin}{}", slash(path))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The directory holding `weir.toml` and the extra files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Replace (or create) a file in the config's directory, atomically; e.g.
    /// `write_file("weir.toml", new_config)` for a reload test.
    pub fn write_file(&self, path: impl AsRef<Path>, contents: impl AsRef<[u8]>) {
        write_file(self.dir.path(), path.as_ref(), contents.as_ref());
    }

    /// Everything weir wrote to stderr so far, one line per line.
    pub fn logs(&self) -> String {
        self.output.state.lock().unwrap().stderr.join("\n")
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.output.state.lock().unwrap().stderr.clone()
    }

    /// The number of stderr lines so far: pass it to [`Weir::wait_for_log_after`] to wait
    /// for a line printed after this point.
    pub fn log_mark(&self) -> usize {
        self.output.state.lock().unwrap().stderr.len()
    }

    /// Everything weir wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.output.state.lock().unwrap().stdout.join("\n")
    }

    /// Waits for a stderr line containing `needle` and returns it; panics with the logs
    /// if none comes within `timeout` or weir's stderr closes first.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_log_after(0, needle, timeout).await
    }

    /// Like [`Weir::wait_for_log`], looking only at lines after `mark` (see [`Weir::log_mark`]).
    pub async fn wait_for_log_after(&self, mark: usize, needle: &str, timeout: Duration) -> String {
        let mut changed = self.output.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let state = self.output.state.lock().unwrap();
                if let Some(line) = state.stderr.iter().skip(mark).find(|l| l.contains(needle)) {
                    return line.clone();
                }
                if state.stderr_closed {
                    panic!(
                        "weir's stderr closed without a line containing {needle:?}:\n{}",
                        state.stderr.join("\n")
                    );
                }
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                panic!(
                    "no weir log line containing {needle:?} within {timeout:?}:\n{}",
                    self.logs()
                );
            }
        }
    }

    /// Peak resident set size (VmHWM) of the running process, in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        self.proc_status_kb("VmHWM") * 1024
    }

    /// Current resident set size (VmRSS), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        self.proc_status_kb("VmRSS") * 1024
    }

    fn proc_status_kb(&self, field: &str) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {path}"))
    }

    /// Send a signal by name, e.g. `"TERM"` or `"HUP"`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name} {} failed", self.pid());
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for weir to exit by itself (e.g. after `signal("TERM")`); panics on timeout.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for weir") {
                return status;
            }
            if Instant::now() > deadline {
                panic!("weir did not exit within {timeout:?}:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kill the process (SIGKILL) and reap it. Does nothing if it already exited.
    pub fn kill(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    /// Give weir up to `grace` to exit by itself, then kill it, collect everything it
    /// printed, and describe it as a failure.
    async fn fail(mut self, reason: String, grace: Duration) -> StartError {
        let deadline = Instant::now() + grace;
        let exit = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                _ => break None,
            }
        };
        self.kill();
        // Both pipes hit EOF now that the process is gone.
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let state = self.output.state.lock().unwrap();
        StartError {
            reason,
            exit,
            stdout: state.stdout.join("\n"),
            stderr: state.stderr.join("\n"),
        }
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let state = self.output.state.lock().unwrap();
            let tail = state.stderr.len().saturating_sub(300);
            eprintln!(
                "--- weir stdout ---\n{}\n--- weir stderr (last 300 lines) ---\n{}",
                state.stdout.join("\n"),
                state.stderr[tail..].join("\n")
            );
        }
    }
}

fn slash(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    }
}
