//! `ntpscope-sink` binary: parse flags and environment, set up logging, run, exit.

use std::process::ExitCode;

use ntpscope_sink::{Cli, run, shutdown_signal};

/// mimalloc for every allocation of the process, SQLite's included (the `override` feature
/// replaces `malloc`). Multi-row upserts make SQLite keep a statement journal in memory, a few
/// thousand 1 KiB chunks allocated and freed per statement; with glibc's malloc about a fifth of
/// the sink's CPU went to `malloc` and `free` (`unlink_chunk`, `malloc_consolidate`), much of it
/// for those chunks. See docs/performance.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli: Cli = ntpscope_bus::settings::from_env();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NTPSCOPE_LOG").unwrap_or_else(|_| "info,sqlx=warn,sea_orm=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match cli.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ntpscope-sink: configuration error: {e}");
            return ExitCode::from(78); // EX_CONFIG
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ntpscope-sink: cannot start the runtime: {e}");
            return ExitCode::from(71); // EX_OSERR
        }
    };
    match runtime.block_on(run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ntpscope-sink: {e:#}");
            ExitCode::FAILURE
        }
    }
}
