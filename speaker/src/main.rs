//! `ferrolb-speaker`: parse flags, start logging and the metrics endpoint, run.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ferrolb_ops::{Health, LogArgs};
use ferrolb_speaker::dataplane::{
    AnnounceSchedule, ConflictConfig, DEFAULT_EXCLUDE, DataPlaneConfig,
};
use ferrolb_speaker::{Config, liveness::LivenessConfig, metrics::Metrics};

/// Announces FerroLB LoadBalancer IPs on the LAN: one elected node per IP answers ARP/NDP.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// This node's name (the Node object's name).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// The spec.loadBalancerClass to serve (Services without a class are served too).
    #[arg(long, env = "FERROLB_LB_CLASS", default_value = ferrolb_crds::DEFAULT_LB_CLASS)]
    lb_class: String,
    /// Also announce from nodes labelled node.kubernetes.io/exclude-from-external-load-balancers.
    #[arg(long)]
    ignore_exclude_lb: bool,
    /// Interface name patterns never announced on (comma-separated globs); replaces the defaults.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_EXCLUDE.iter().map(|s| s.to_string()))]
    exclude_interfaces: Vec<String>,
    /// Namespace of the speaker Leases.
    #[arg(long, env = "POD_NAMESPACE", default_value = "ferrolb-system")]
    lease_namespace: String,
    /// Seconds between renewals of this speaker's Lease (liveness itself uses heartbeats).
    #[arg(long, default_value_t = 30)]
    lease_renew: u64,
    /// This node's address on the LAN, where peers send heartbeats (the pod IP with hostNetwork).
    #[arg(long, env = "POD_IP")]
    advertise_addr: IpAddr,
    /// UDP port for heartbeats between speakers.
    #[arg(long, default_value_t = 7473)]
    heartbeat_port: u16,
    /// File holding the shared heartbeat key (a mounted Secret); at least 16 bytes.
    #[arg(
        long,
        env = "FERROLB_LIVENESS_KEY_FILE",
        default_value = "/etc/ferrolb/liveness/key"
    )]
    liveness_key_file: std::path::PathBuf,
    /// File holding a second heartbeat key that is accepted but never sent (the next or
    /// the previous key during a rotation); ignored when the file does not exist.
    #[arg(
        long,
        env = "FERROLB_LIVENESS_ACCEPT_KEY_FILE",
        default_value = "/etc/ferrolb/liveness/accept"
    )]
    liveness_accept_key_file: std::path::PathBuf,
    /// Milliseconds between heartbeats.
    #[arg(long, default_value_t = 100)]
    heartbeat_interval_ms: u64,
    /// Milliseconds of silence after which a peer is dead.
    #[arg(long, default_value_t = 350)]
    failure_timeout_ms: u64,
    /// Milliseconds a speaker that comes back serves before it takes IPs back (hold-down
    /// against a flapping node).
    #[arg(long, default_value_t = 3000)]
    hold_down_ms: u64,
    /// Seconds between periodic gratuitous ARP/NA refreshes (0 = off).
    #[arg(long, default_value_t = 0)]
    refresh_secs: u64,
    /// Address conflict detection (RFC 5227 / IPv6 DAD): probe before first announcing an
    /// IP, never announce one another host uses, defend once against a claim.
    #[arg(long, env = "FERROLB_CONFLICT_DETECTION", default_value_t = true, action = clap::ArgAction::Set)]
    conflict_detection: bool,
    /// Milliseconds a probe runs (3 probes spread over it) before a new IP is announced.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    conflict_probe_ms: u64,
    /// Longest wait, in milliseconds, between probes of an IP another host uses (the wait
    /// starts at 1 s and doubles).
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1_000..))]
    conflict_retry_max_ms: u64,
    /// Answering threads per interface and family, each pinned to a share of the CPUs and
    /// fed the frames those CPUs receive (PACKET_FANOUT_CPU): an answer starts on the CPU
    /// that took the request in, instead of waking another. 0: one per CPU the speaker may
    /// run on, at most 8.
    #[arg(long, env = "FERROLB_ANSWER_THREADS", default_value_t = 0)]
    answer_threads: usize,
    /// For externalTrafficPolicy: Local Services, probe this node's kube-proxy health check
    /// (healthCheckNodePort) and make the node ineligible while it fails.
    #[arg(long, env = "FERROLB_KUBE_PROXY_HEALTH_CHECK", default_value_t = true, action = clap::ArgAction::Set)]
    kube_proxy_health_check: bool,
    /// Address of the /metrics, /healthz and /readyz endpoint (default: the advertised
    /// address, port 7474: the node's address, not every interface of the host).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Tokio worker threads (the responders and heartbeats have their own threads).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    worker_threads: u16,
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.log.init();
    // Few threads (docs/architecture.md#memory): the ARP/NDP responders and the heartbeats
    // have threads of their own, and the main loop runs on this thread; the workers only
    // carry the API connections, the metrics server and small tasks. Tokio's default, one
    // worker per core, would start dozens on a large node, each with a stack and, with
    // glibc, an arena of its own that keeps what the big initial lists freed.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.worker_threads.into())
        .max_blocking_threads(2)
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let key = read_key(&args.liveness_key_file)?;
    let accept_key = match args.liveness_accept_key_file.exists() {
        true => Some(read_key(&args.liveness_accept_key_file)?),
        false => None,
    };
    let advertise = SocketAddr::new(args.advertise_addr, args.heartbeat_port);
    let metrics_addr = args
        .metrics_addr
        .unwrap_or(SocketAddr::new(args.advertise_addr, 7474));
    // Bound to the advertised address, so heartbeats leave from the address peers know
    // (they drop datagrams from any other before hashing). An address not on this host
    // (NAT) falls back to the wildcard, where the kernel picks the source by route.
    let bind = match std::net::UdpSocket::bind(advertise) {
        Ok(_) => advertise,
        Err(e) => {
            let any = match args.advertise_addr {
                IpAddr::V4(_) => SocketAddr::new([0, 0, 0, 0].into(), args.heartbeat_port),
                IpAddr::V6(_) => {
                    SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), args.heartbeat_port)
                }
            };
            tracing::warn!(%advertise, error = %e, %any,
                "cannot bind the heartbeat socket to the advertised address; peers accept our heartbeats only if they leave from it");
            any
        }
    };
    let mut schedule = AnnounceSchedule::default();
    if args.refresh_secs > 0 {
        schedule.refresh = Some(Duration::from_secs(args.refresh_secs));
    }
    let config = Config {
        node: args.node_name.clone(),
        lb_class: args.lb_class,
        ignore_exclude_lb: args.ignore_exclude_lb,
        exclude_interfaces: args.exclude_interfaces,
        lease_namespace: args.lease_namespace,
        lease_renew: Duration::from_secs(args.lease_renew),
        liveness: LivenessConfig {
            interval: Duration::from_millis(args.heartbeat_interval_ms),
            timeout: Duration::from_millis(args.failure_timeout_ms),
            hold_down: Duration::from_millis(args.hold_down_ms),
            accept_key,
            ..LivenessConfig::new(args.node_name, bind, key)
        },
        advertise,
        dataplane: DataPlaneConfig {
            schedule,
            conflict: ConflictConfig {
                enabled: args.conflict_detection,
                probe: Duration::from_millis(args.conflict_probe_ms),
                retry_max: Duration::from_millis(args.conflict_retry_max_ms),
                ..ConflictConfig::default()
            },
            answer_threads: match args.answer_threads {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
                n => n,
            },
            ..Default::default()
        },
        kube_proxy_health_check: args.kube_proxy_health_check,
    };
    let client = ferrolb_ops::client().await?;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    let health = Arc::new(Health::default());
    let (addr, _server) =
        ferrolb_ops::serve(metrics_addr, Arc::new(registry), health.clone()).await?;
    tracing::info!(%addr, node = %config.node, "ferrolb-speaker starting");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        ferrolb_ops::shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    ferrolb_speaker::run(client, config, metrics, health, stop_rx).await
}

/// Reads a heartbeat key file (surrounding whitespace ignored); at least 16 bytes.
fn read_key(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let raw = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("cannot read the heartbeat key {}: {e}", path.display()))?;
    let key: Vec<u8> = String::from_utf8_lossy(&raw).trim().as_bytes().to_vec();
    anyhow::ensure!(
        key.len() >= 16,
        "the heartbeat key {} must be at least 16 bytes",
        path.display()
    );
    Ok(key)
}
