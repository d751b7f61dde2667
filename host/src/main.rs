//! The `weir` command: parses the CLI and calls the library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weir::config::Config;
use weir::config::LogFormat;
use weir::telemetry::init_logging;

/// mimalloc instead of glibc's malloc: fewer instructions per allocation on the request
/// path, and freed memory goes back to the thread that owns it instead of piling up in
/// glibc's per-thread arenas. `bench/README.md` has the measurement.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// weir: an egress proxy with WebAssembly filters.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log format on stderr (default: the config's `[log] format`, else pretty). The
    /// level comes from RUST_LOG, else the config's `[log] level`, else info.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with CONFIG until SIGTERM or SIGINT.
    Run {
        /// The TOML config file.
        config: PathBuf,
    },
    /// Validate CONFIG, load every filter and call each `init`; print every error.
    Check {
        /// The TOML config file.
        config: PathBuf,
    },
    /// Write and test filters.
    Filter {
        #[command(subcommand)]
        command: FilterCommand,
    },
}

#[derive(Subcommand)]
enum FilterCommand {
    /// Write a new filter project: the source, the WIT, build and test commands, test
    /// cases for `weir filter test`, a weir.toml that runs it, and a README.
    New {
        /// The filter's name: lowercase letters, digits, `-` and `_`, starting with a letter.
        name: String,
        /// The language to write the filter in.
        #[arg(long, value_enum)]
        lang: weir::authoring::scaffold::Lang,
        /// Where to write the project (default: ./NAME); it must be absent or empty.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run a filter against a case file, offline, on a virtual clock: one `ok` or `FAIL`
    /// line per case, with a diff. Exit 0 if every case passes, 1 if any fails, 2 on bad
    /// input. A failing case shows what the filter printed and logged; RUST_LOG=info
    /// writes weir's log to stderr as well.
    Test {
        /// The filter component (.wasm).
        wasm: PathBuf,
        /// The filter's config: a .json file, or a .toml file whose top-level table is
        /// the config (default: {}).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The case file (TOML).
        #[arg(long = "case", value_name = "CASES")]
        cases: PathBuf,
        /// The most time one call may take, like `max_call_time` (default 100ms).
        #[arg(long, value_parser = weir::authoring::filter_test::parse_call_time)]
        max_call_time: Option<std::time::Duration>,
        /// The most memory one instance may use, like `max_memory` (default 64MiB).
        #[arg(long, value_parser = weir::authoring::filter_test::parse_memory)]
        max_memory: Option<u64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Check { config } => {
                init_logging(cli.log_format.unwrap_or(LogFormat::Pretty), None);
                check(config).await
            }
            Command::Run { config } => run(config, cli.log_format).await,
            Command::Filter {
                command: FilterCommand::New { name, lang, dir },
            } => new_filter(&name, lang, dir.as_deref()),
            Command::Filter {
                command:
                    FilterCommand::Test {
                        wasm,
                        config,
                        cases,
                        max_call_time,
                        max_memory,
                    },
            } => {
                weir::authoring::filter_test::init_logging(
                    cli.log_format.unwrap_or(LogFormat::Pretty),
                );
                let opts = weir::authoring::filter_test::Options {
                    wasm,
                    config,
                    cases,
                    max_call_time,
                    max_memory,
                };
                test_filter(&opts).await
            }
        }
    })
}

fn new_filter(name: &str, lang: weir::authoring::scaffold::Lang, dir: Option<&Path>) -> ExitCode {
    let dir = dir.unwrap_or(Path::new(name));
    match weir::authoring::scaffold::create(name, lang, dir) {
        Ok(project) => {
            print!(
                "{}",
                project.next_steps(&weir::authoring::scaffold::weir_command())
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn test_filter(opts: &weir::authoring::filter_test::Options) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match weir::authoring::filter_test::test_filter(opts, &mut out).await {
        Ok(summary) if summary.failed == 0 => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            for line in e.to_string().lines() {
                eprintln!("error: {line}");
            }
            ExitCode::from(2)
        }
    }
}

async fn check(path: PathBuf) -> ExitCode {
    let result = match Config::load(&path) {
        Ok(config) => weir::check(&config).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(()) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            for line in e.lines() {
                eprintln!("error: {line}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(path: PathBuf, log_format: Option<LogFormat>) -> ExitCode {
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            for line in e.to_string().lines() {
                eprintln!("error: {line}");
            }
            return ExitCode::FAILURE;
        }
    };
    let log = &config.raw.log;
    init_logging(
        log_format.or(log.format).unwrap_or(LogFormat::Pretty),
        log.level.as_deref(),
    );
    let server = match weir::Server::start(config).await {
        Ok(s) => s,
        Err(e) => {
            for line in e.to_string().lines() {
                eprintln!("error: {line}");
            }
            return ExitCode::FAILURE;
        }
    };
    // Installed before the ready lines: until then SIGTERM or SIGINT would kill weir
    // outright instead of draining it.
    let shutdown = shutdown_signal();
    // Scripts and tests read these lines to find the ports (the config may say port 0).
    let mut out = std::io::stdout().lock();
    if let Ok(addr) = server.local_addr() {
        let _ = writeln!(out, "weir listening on {addr}");
    }
    if let Some(addr) = server.admin_addr() {
        let _ = writeln!(out, "weir admin on {addr}");
    }
    let _ = out.flush();
    drop(out);
    tracing::info!("ready");
    server.run(shutdown).await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Installs the SIGTERM and SIGINT handlers now; the future resolves on the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let (mut term, mut int) = match (term, int) {
            (Ok(t), Ok(i)) => (t, i),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM or SIGINT");
                return std::future::pending().await;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
        }
    }
}
