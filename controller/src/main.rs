//! `ferrolb-controller`: parse flags, start logging and the metrics endpoint, run.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use ferrolb_controller::lease::{Fence, Timing};
use ferrolb_controller::{Clients, Config, index::Index, metrics::Metrics};
use ferrolb_ops::{Health, LogArgs};

/// Allocates external IPs for LoadBalancer Services from FerroLB IPAddressPools.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The spec.loadBalancerClass to serve (Services without a class are served too).
    #[arg(long, env = "FERROLB_LB_CLASS", default_value = ferrolb_crds::DEFAULT_LB_CLASS)]
    lb_class: String,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "ferrolb-system")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "ferrolb-controller")]
    lease_name: String,
    /// Identity in the Lease (defaults to the pod name, else host name and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a leader's claim lasts without renewal (crash takeover time).
    #[arg(long, default_value_t = 8)]
    lease_duration: u64,
    /// Seconds after which a leader that could not renew steps down (< lease duration).
    #[arg(long, default_value_t = 6)]
    renew_deadline: u64,
    /// Seconds between lease polls and renewals.
    #[arg(long, default_value_t = 2)]
    retry_period: u64,
    /// Secret (in the lease namespace) holding the speakers' heartbeat key; created if
    /// missing. Empty disables it.
    #[arg(long, default_value = "ferrolb-liveness")]
    liveness_secret: String,
    /// Address of the /metrics, /healthz and /readyz endpoint.
    #[arg(long, default_value = "0.0.0.0:7472")]
    metrics_addr: SocketAddr,
    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.log.init();
    anyhow::ensure!(
        args.renew_deadline < args.lease_duration,
        "--renew-deadline ({}) must be shorter than --lease-duration ({})",
        args.renew_deadline,
        args.lease_duration
    );
    let identity = args.identity.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let config = Config {
        lb_class: args.lb_class,
        lease_namespace: args.lease_namespace,
        lease_name: args.lease_name,
        identity,
        timing: Timing {
            lease_duration: Duration::from_secs(args.lease_duration),
            renew_deadline: Duration::from_secs(args.renew_deadline),
            retry_period: Duration::from_secs(args.retry_period),
        },
    };
    let client = ferrolb_ops::client().await?;
    // Status writes go through a transport that refuses to send once the lease is not
    // valid by local time, so a frozen-then-resumed leader sends nothing stale.
    let fence = Arc::new(Fence::default());
    let writes = ferrolb_ops::client::fenced_client(fence.gate()).await?;
    if !args.liveness_secret.is_empty() {
        // Not fatal: speakers wait for the Secret, and the next start retries.
        if let Err(e) = ferrolb_controller::secret::ensure(
            client.clone(),
            &config.lease_namespace,
            &args.liveness_secret,
        )
        .await
        {
            tracing::error!(error = %e, "cannot create the heartbeat key Secret");
        }
    }
    let index = Arc::new(Mutex::new(Index::new(config.lb_class.clone())));
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry, index.clone());
    let health = Arc::new(Health::default());
    let (addr, _server) =
        ferrolb_ops::serve(args.metrics_addr, Arc::new(registry), health.clone()).await?;
    tracing::info!(%addr, identity = %config.identity, "ferrolb-controller starting");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        ferrolb_ops::shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    let clients = Clients {
        api: client,
        writes,
        fence,
    };
    ferrolb_controller::run_with(clients, config, index, metrics, health, stop_rx).await
}
