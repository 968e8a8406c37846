//! The `kloak` binary: parse the command line, start logging, dispatch.

use clap::Parser;

use kloak::cli::{Cli, Command};
use kloak::{certs, controller, doctor, run, telemetry, uninstall, webhook};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(err) = telemetry::init(&cli.global) {
        eprintln!("kloak: {err:#}");
        return std::process::ExitCode::from(2);
    }
    // One TLS crypto provider for every client and server in the process
    // (kube's client builds its TLS from the default). An error only means
    // one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("kloak: cannot start the async runtime: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::Doctor(args) => doctor::run(args),
            Command::Controller(args) => controller::run(args).await,
            Command::Webhook(args) => webhook::run(args).await,
            Command::Certgen(args) => certs::run(args).await,
            Command::RunGuard(args) => run::guard::run(args),
            Command::Uninstall(args) => uninstall::run(args).await,
        }
    });
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(err) => {
            eprintln!("kloak: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}
