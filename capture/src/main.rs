//! `ntpscope-capture` binary: parse flags, set up logging, run, report, exit.

use std::process::ExitCode;

use ntpscope_capture::{Cli, config::SummaryFormat, hostname, run};

fn main() -> ExitCode {
    let cli: Cli = ntpscope_bus::settings::from_env();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("NTPSCOPE_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let config = match cli.into_config(&hostname()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ntpscope-capture: configuration error: {e}");
            return ExitCode::from(78); // EX_CONFIG
        }
    };
    let format = config.summary;
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ntpscope-capture: cannot start the runtime: {e}");
            return ExitCode::from(71); // EX_OSERR
        }
    };
    match runtime.block_on(run(config, ntpscope_capture::shutdown_signal())) {
        Ok(summary) => {
            match format {
                SummaryFormat::Text => eprint!("{}", summary.to_text()),
                SummaryFormat::Json => eprintln!("{}", summary.to_json()),
                SummaryFormat::None => {}
            }
            if summary.failures().is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(e) => {
            eprintln!("ntpscope-capture: {e:#}");
            ExitCode::FAILURE
        }
    }
}
