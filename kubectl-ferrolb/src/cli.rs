//! Command line: parse, read, report. Exit codes: 0 fine, 1 `migrate --check` found an IP
//! that would move, 2 an error (nothing could be decided).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use k8s_openapi::jiff::Timestamp;

use crate::render::{Output, structured};
use crate::{check, cluster, explain, migrate, status};

/// FerroLB from kubectl: what is allocated and announced, why, and moving from MetalLB.
#[derive(Parser, Debug)]
#[command(name = "kubectl ferrolb", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Kubeconfig file (default: KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, env = "KUBECONFIG", hide_env_values = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: the current one).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The loadBalancerClass FerroLB serves, as given to the controller and speakers.
    #[arg(
        long,
        global = true,
        env = "FERROLB_LB_CLASS",
        default_value = ferrolb_crds::DEFAULT_LB_CLASS
    )]
    pub lb_class: String,
    /// Namespace of the speakers' Leases.
    #[arg(long, global = true, default_value = "ferrolb-system")]
    pub speaker_namespace: String,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Pools and their usage, every LoadBalancer IP with its Services and announcer, pending
    /// Services with the reason.
    Status {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Why a Service has its IP (or none), which nodes may announce it and which one does.
    Explain {
        /// The Service: svc/NAME, service/NAME or NAME.
        target: String,
        /// Its namespace (default: the kubeconfig context's, else `default`).
        #[arg(short, long)]
        namespace: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// The speakers run with --ignore-exclude-lb (the plugin cannot see their flags).
        #[arg(long)]
        ignore_exclude_lb: bool,
    },
    /// Convert MetalLB's IPAddressPools and L2Advertisements to FerroLB's (YAML on stdout,
    /// changes and warnings on stderr), or check that no assigned IP would move.
    Migrate {
        /// Read MetalLB's objects from the cluster (the default without -f).
        #[arg(long, conflicts_with = "files")]
        from_cluster: bool,
        /// Read MetalLB's (or already converted FerroLB) objects from YAML files; `-` is stdin.
        #[arg(short = 'f', long = "filename", value_name = "FILE", num_args = 1..)]
        files: Vec<PathBuf>,
        /// Instead of printing the objects, prove from the live Services that every assigned
        /// IP stays; exit 1 if any would move.
        #[arg(long)]
        check: bool,
        /// Output format of --check.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

/// `svc/NAME`, `service/NAME`, `services/NAME` or `NAME` to the name.
pub fn service_name(target: &str) -> anyhow::Result<&str> {
    let name = match target.split_once('/') {
        None => target,
        Some(("svc" | "service" | "services", name)) => name,
        Some((kind, _)) => {
            anyhow::bail!("explain takes a Service (svc/NAME), not a {kind}")
        }
    };
    anyhow::ensure!(!name.is_empty(), "no Service name in {target:?}");
    Ok(name)
}

fn emit<T: serde::Serialize>(
    report: &T,
    output: Output,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    match structured(report, output)? {
        Some(s) => print!("{s}"),
        None => print!("{}", text()),
    }
    Ok(())
}

/// Runs one command against the cluster.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = &cli.global;
    let target = cluster::Target {
        kubeconfig: g.kubeconfig.clone(),
        context: g.context.clone(),
    };
    let now = Timestamp::now();
    match cli.command {
        Command::Status { output } => {
            let client = cluster::client(&target).await?;
            let snap = cluster::snapshot(&client, &g.speaker_namespace, &g.lb_class, None).await?;
            let r = status::report(&snap);
            emit(&r, output, || status::render(&r, now))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain {
            target: what,
            namespace,
            output,
            ignore_exclude_lb,
        } => {
            let name = service_name(&what)?;
            let client = cluster::client(&target).await?;
            let ns = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
            let snap =
                cluster::snapshot(&client, &g.speaker_namespace, &g.lb_class, Some(&ns)).await?;
            let opts = explain::Options { ignore_exclude_lb };
            let r = explain::report(&snap, &ns, name, now, &opts)
                .with_context(|| format!("services {name:?} not found in namespace {ns:?}"))?;
            emit(&r, output, || explain::render(&r, now))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate {
            from_cluster: _,
            files,
            check: do_check,
            output,
        } => {
            let objects = if files.is_empty() {
                let client = cluster::client(&target).await?;
                cluster::metallb_objects(&client).await?
            } else {
                let mut all = Vec::new();
                for f in &files {
                    let text = if f.as_os_str() == "-" {
                        std::io::read_to_string(std::io::stdin())?
                    } else {
                        std::fs::read_to_string(f)
                            .with_context(|| format!("reading {}", f.display()))?
                    };
                    all.extend(
                        migrate::parse_yaml(&text)
                            .with_context(|| format!("parsing {}", f.display()))?,
                    );
                }
                all
            };
            let conv = migrate::convert(&objects);
            for n in &conv.notes {
                eprintln!("{n}");
            }
            if !do_check {
                print!("{}", conv.to_yaml()?);
                return Ok(ExitCode::SUCCESS);
            }
            let client = cluster::client(&target).await?;
            let snap = cluster::services(&client, &g.lb_class).await?;
            let r = check::check(&conv.pools, &snap);
            emit(&r, output, || check::render(&r))?;
            Ok(if r.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explain_targets() {
        assert_eq!(service_name("svc/web").unwrap(), "web");
        assert_eq!(service_name("service/web").unwrap(), "web");
        assert_eq!(service_name("web").unwrap(), "web");
        assert!(service_name("pod/web").is_err());
        assert!(service_name("svc/").is_err());
    }

    #[test]
    fn command_line_parses() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "kubectl-ferrolb",
            "migrate",
            "-f",
            "a.yaml",
            "b.yaml",
            "--check",
        ])
        .unwrap();
        assert!(
            matches!(cli.command, Command::Migrate { check: true, ref files, .. } if files.len() == 2)
        );
        assert!(
            Cli::try_parse_from(["kubectl-ferrolb", "migrate", "--from-cluster", "-f", "x"])
                .is_err()
        );
    }

    use clap::CommandFactory as _;
}
