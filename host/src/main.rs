//! The `weir` command: parses the CLI and calls the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weir::config::Config;
use weir::telemetry::{LogFormat, init_logging};

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
        }
    })
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
