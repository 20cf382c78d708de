//! `kubectl-ferrolb`: on PATH, `kubectl ferrolb status|explain|migrate` runs it.

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = kubectl_ferrolb::cli::Cli::parse();
    match kubectl_ferrolb::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
