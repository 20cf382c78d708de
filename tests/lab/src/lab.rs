//! The lab itself: namespaces, LAN, API server, controller, speakers, and the guard that
//! removes them all.
//!
//! ```text
//!                     <id>-switch: bridge <id>-br (multicast snooping off)
//!        ┌──────────────────┬──────────────┴───┬─────────────────────┐
//!   <id>-api              <id>-node1 … nodeN                   <id>-client1 … clientM
//!   198.51.100.2          198.51.100.1I                        198.51.100.5J
//!   2001:db8:100::2       2001:db8:100::1I                     2001:db8:100::5J
//!   API server :6443      ferrolb-speaker                      on-link 203.0.113.0/24,
//!   ferrolb-controller    arp_ignore=1 arp_announce=2          2001:db8:200::/64; arp_accept=1
//!   lab's kube client     local routes for VIPs, TCP responder
//!
//!   <id>-rogueK (attach_host, on demand): 198.51.100.10K, 2001:db8:100::10K
//! ```
//! Every address is documentation space (docs/design/lab-addresses.md); nothing is ever configured in the root
//! namespace: links are created *inside* the switch namespace with their peer placed
//! directly in the host namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ferrolb_crds::{IPAddressPool, L2Advertisement, L2AdvertisementSpec};
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Resource, ResourceExt};
pub use nix::sys::signal::Signal;
use pnet_base::MacAddr;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::names::{self, RunId};
use crate::netns::{self, NsRuntime};
use crate::objects::{self, Svc};
use crate::observe::{self, Observer, ProbeConfig, ProbeResult, Prober};
use crate::proc::{self, Proc, Spec};

/// The API server's lab address.
pub const API_ADDR: &str = "198.51.100.2:6443";
/// The controller's metrics/health address (inside the api namespace).
pub const CONTROLLER_METRICS: &str = "127.0.0.1:7472";
/// Each speaker's metrics/health address (inside its node namespace).
pub const SPEAKER_METRICS: &str = "127.0.0.1:7474";
/// Namespace of the controller's and speakers' Leases.
pub const LEASE_NAMESPACE: &str = "default";
/// Time the lab gives freshly started speakers to hear each other's heartbeats.
pub const SPEAKER_CONVERGE: Duration = Duration::from_secs(1);
/// The taint kube-apiserver's admission gives a new Node until it is Ready.
const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
/// Upper bound of one lab API call.
const KUBE_TIMEOUT: Duration = Duration::from_secs(20);

/// What to build.
#[derive(Clone, Debug)]
pub struct LabConfig {
    /// Node namespaces, each running a speaker (1–39).
    pub nodes: usize,
    /// Client namespaces (1–49).
    pub clients: usize,
    /// Start `ferrolb-speaker` on every node.
    pub speakers: bool,
    /// Start `ferrolb-controller` in the api namespace.
    pub controller: bool,
    /// API server executable; `None` = the built-in `ferrolb-testapi`. Defaults to
    /// `$FERROLB_LAB_APISERVER` (run with `LAB_API_ADDR` and `LAB_KUBECONFIG` set).
    pub apiserver: Option<PathBuf>,
    /// Extra flags for every speaker.
    pub speaker_args: Vec<String>,
    /// `RUST_LOG` of the lab's processes.
    pub rust_log: String,
}

impl LabConfig {
    /// Whether this configuration runs an external API server (see [`Lab::real_api`]).
    pub fn real_api(&self) -> bool {
        self.apiserver.is_some()
    }
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            nodes: 3,
            clients: 1,
            speakers: true,
            controller: true,
            apiserver: std::env::var_os("FERROLB_LAB_APISERVER").map(PathBuf::from),
            speaker_args: Vec::new(),
            rust_log: std::env::var("FERROLB_LAB_LOG").unwrap_or_else(|_| "info".into()),
        }
    }
}

/// How one node's speaker deviates from the lab's command line (see
/// [`Lab::set_speaker_override`]); kept across restarts of that speaker.
#[derive(Clone, Debug, Default)]
pub struct SpeakerOverride {
    /// A heartbeat key of its own instead of the lab's shared one (written to a key file of
    /// its own), e.g. to play a node that missed a key rotation.
    pub key: Option<String>,
    /// Flags appended after the lab's and [`LabConfig::speaker_args`].
    pub extra_args: Vec<String>,
}

/// One host on the lab LAN.
#[derive(Clone, Debug)]
pub struct Host {
    /// Role name (`api`, `node1`, `client1`): also the Node name for nodes.
    pub name: String,
    /// Its network namespace.
    pub ns: String,
    /// IPv4 address on `eth0` (/24).
    pub ipv4: Ipv4Addr,
    /// IPv6 address on `eth0` (/64).
    pub ipv6: Ipv6Addr,
    /// MAC address of `eth0`.
    pub mac: MacAddr,
}

impl Host {
    /// Its identity as a probe sender.
    pub fn prober(&self) -> Prober {
        Prober {
            mac: self.mac,
            ipv4: self.ipv4,
            ipv6: self.ipv6,
        }
    }
}

/// One object the lab wrote, kept to restore a restarted in-memory API server.
struct Entry {
    ar: ApiResource,
    namespace: Option<String>,
    name: String,
    object: Value,
}

/// Result of one failover measurement.
#[derive(Debug)]
pub struct Failover {
    /// The signal sent to the announcer's speaker.
    pub signal: Signal,
    /// The node that announced before.
    pub old: String,
    /// The node whose TCP responder answered after the kill.
    pub new: String,
    /// Per IP: kill → first gratuitous ARP / unsolicited NA at the client from another node.
    pub announce: Vec<(IpAddr, Option<Duration>)>,
    /// Kill → first TCP connect (to the first IP) served by another node.
    pub connect: Duration,
    /// How the killed speaker ended (None: still running 10 s later).
    pub exit: Option<ExitStatus>,
}

/// A running lab; everything it created is removed on drop, also on panic.
pub struct Lab {
    run: RunId,
    dir: PathBuf,
    cfg: LabConfig,
    namespaces: Vec<String>,
    api_host: Host,
    nodes: Vec<Host>,
    clients: Vec<Host>,
    kubeconfig: PathBuf,
    key_file: PathBuf,
    api: Option<Proc>,
    controller: Option<Proc>,
    speakers: BTreeMap<String, Proc>,
    speaker_bin: Option<PathBuf>,
    overrides: BTreeMap<String, (SpeakerOverride, Option<PathBuf>)>,
    runtimes: BTreeMap<String, NsRuntime>,
    kube: Option<kube::Client>,
    vips: Mutex<BTreeSet<IpAddr>>,
    ports: Mutex<BTreeSet<u16>>,
    journal: Mutex<Vec<Entry>>,
    last_rv: Option<u64>,
    dead: Vec<Proc>,
}

impl Lab {
    /// Builds the lab and waits until the API server, controller and speakers are ready.
    /// Panics without root. Removes leftovers of crashed runs first.
    pub fn start(cfg: LabConfig) -> Result<Lab> {
        netns::require_root();
        assert!((1..40).contains(&cfg.nodes), "1–39 nodes");
        assert!((1..50).contains(&cfg.clients), "1–49 clients");
        for gone in names::remove_leftovers() {
            eprintln!("lab: removed leftover {gone}");
        }
        let run = RunId::next();
        let dir = run.dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let host = |role: &str, last: u8| Host {
            name: role.to_string(),
            ns: run.ns(role),
            ipv4: Ipv4Addr::new(198, 51, 100, last),
            ipv6: format!("2001:db8:100::{last}").parse().expect("valid v6"),
            mac: MacAddr::zero(),
        };
        let mut lab = Lab {
            api_host: host("api", 2),
            nodes: (1..=cfg.nodes)
                .map(|i| host(&format!("node{i}"), 10 + i as u8))
                .collect(),
            clients: (1..=cfg.clients)
                .map(|i| host(&format!("client{i}"), 50 + i as u8))
                .collect(),
            kubeconfig: dir.join("kubeconfig"),
            key_file: dir.join("liveness.key"),
            run,
            dir,
            cfg,
            namespaces: Vec::new(),
            api: None,
            controller: None,
            speakers: BTreeMap::new(),
            speaker_bin: None,
            overrides: BTreeMap::new(),
            runtimes: BTreeMap::new(),
            kube: None,
            vips: Mutex::new(BTreeSet::new()),
            ports: Mutex::new(BTreeSet::new()),
            journal: Mutex::new(Vec::new()),
            last_rv: None,
            dead: Vec::new(),
        };
        lab.setup()?;
        Ok(lab)
    }

    fn setup(&mut self) -> Result<()> {
        // Binaries first: fail before building anything.
        let api_bin = match &self.cfg.apiserver {
            Some(p) => p.clone(),
            None => proc::binary("ferrolb-testapi")?,
        };
        let controller_bin = if self.cfg.controller {
            Some(proc::binary("ferrolb-controller")?)
        } else {
            None
        };
        if self.cfg.speakers {
            let bin = proc::binary("ferrolb-speaker")?;
            proc::check_speaker_contract(&bin)?;
            self.speaker_bin = Some(bin);
        }
        std::fs::write(&self.key_file, format!("{}\n", random_key()))?;

        self.build_network()?;

        // API server, then the lab's client, then CRDs.
        self.api = Some(self.start_api_process(&api_bin)?);
        self.runtimes
            .insert("api".into(), NsRuntime::new(&self.api_host.ns, 2)?);
        self.connect_api()?;
        let version = self.api_version("api")?;
        eprintln!(
            "lab: {} API server {} ({})",
            if self.real_api() { "external" } else { "test" },
            version.git_version,
            api_bin.display()
        );
        if self.real_api() {
            self.wait_default_namespace()?;
        }
        self.apply_crds()?;

        if let Some(bin) = controller_bin {
            let spec = Spec {
                name: "controller".into(),
                ns: self.api_host.ns.clone(),
                program: bin,
                args: vec![
                    "--metrics-addr".into(),
                    CONTROLLER_METRICS.into(),
                    "--lease-namespace".into(),
                    LEASE_NAMESPACE.into(),
                ],
                env: self.child_env(),
                log: self.dir.join("controller.log"),
            };
            let mut p = Proc::start(spec)?;
            self.wait_ready("api", CONTROLLER_METRICS, &mut p, Duration::from_secs(30))?;
            self.controller = Some(p);
        }

        for n in self.nodes.clone() {
            let node = self.apply(&objects::node(&n.name, n.ipv4, n.ipv6))?;
            self.untaint_ready_node(&node)?;
            self.runtimes
                .insert(n.name.clone(), NsRuntime::new(&n.ns, 1)?);
        }
        for c in &self.clients {
            self.runtimes
                .insert(c.name.clone(), NsRuntime::new(&c.ns, 1)?);
        }
        if self.cfg.speakers {
            let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
            for n in &names {
                let p = Proc::start(self.speaker_spec(n))?;
                self.speakers.insert(n.clone(), p);
            }
            for n in &names {
                self.wait_speaker_ready(n, Duration::from_secs(30))?;
            }
            // Speakers learn their peers from heartbeats (every 100 ms by default): give
            // every speaker time to hear every other before the lab counts as started.
            std::thread::sleep(SPEAKER_CONVERGE);
        }
        Ok(())
    }

    fn build_network(&mut self) -> Result<()> {
        let switch = self.run.ns("switch");
        let bridge = self.run.ifname("br");
        let mut all = vec![switch.clone(), self.api_host.ns.clone()];
        all.extend(self.nodes.iter().map(|h| h.ns.clone()));
        all.extend(self.clients.iter().map(|h| h.ns.clone()));
        for ns in &all {
            add_namespace(&mut self.namespaces, ns)?;
        }
        netns::sysctl_in(
            &switch,
            &[
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        )?;
        netns::ip_in(
            &switch,
            &[
                "link",
                "add",
                &bridge,
                "type",
                "bridge",
                "mcast_snooping",
                "0",
                "stp_state",
                "0",
            ],
        )?;
        netns::ip_in(&switch, &["link", "set", &bridge, "up"])?;
        for n in &self.nodes {
            netns::sysctl_in(
                &n.ns,
                &[
                    "net.ipv4.conf.all.arp_ignore=1",
                    "net.ipv4.conf.default.arp_ignore=1",
                    "net.ipv4.conf.all.arp_announce=2",
                    "net.ipv4.conf.default.arp_announce=2",
                ],
            )?;
        }
        for c in &self.clients {
            netns::sysctl_in(
                &c.ns,
                &[
                    "net.ipv4.conf.all.arp_accept=1",
                    "net.ipv4.conf.default.arp_accept=1",
                ],
            )?;
            // Learn new entries from unsolicited NAs too (kernel ≥ 5.19; optional).
            let _ = netns::sysctl_in(
                &c.ns,
                &[
                    "net.ipv6.conf.all.accept_untracked_na=1",
                    "net.ipv6.conf.default.accept_untracked_na=1",
                ],
            );
        }
        let mut hosts: Vec<(String, &mut Host)> = Vec::new();
        hosts.push(("a".into(), &mut self.api_host));
        for (i, n) in self.nodes.iter_mut().enumerate() {
            hosts.push((format!("n{}", i + 1), n));
        }
        for (i, c) in self.clients.iter_mut().enumerate() {
            hosts.push((format!("c{}", i + 1), c));
        }
        for (short, h) in hosts {
            plug(&switch, &bridge, &self.run.ifname(&short), h, None)?;
        }
        for c in &self.clients {
            // The client plays the upstream router: the pools are on-link (docs/design/lab-addresses.md#reaching-a-loadbalancer-ip).
            netns::ip_in(&c.ns, &["route", "add", "203.0.113.0/24", "dev", "eth0"])?;
            netns::ip_in(
                &c.ns,
                &["-6", "route", "add", "2001:db8:200::/64", "dev", "eth0"],
            )?;
        }
        Ok(())
    }

    fn child_env(&self) -> Vec<(String, String)> {
        vec![
            ("KUBECONFIG".into(), self.kubeconfig.display().to_string()),
            ("RUST_LOG".into(), self.cfg.rust_log.clone()),
        ]
    }

    fn start_api_process(&self, bin: &Path) -> Result<Proc> {
        let _ = std::fs::remove_file(&self.kubeconfig);
        let args = if self.cfg.apiserver.is_none() {
            vec![
                "--listen".into(),
                API_ADDR.into(),
                "--kubeconfig".into(),
                self.kubeconfig.display().to_string(),
            ]
        } else {
            Vec::new()
        };
        let env = vec![
            ("LAB_API_ADDR".into(), API_ADDR.into()),
            (
                "LAB_KUBECONFIG".into(),
                self.kubeconfig.display().to_string(),
            ),
            ("RUST_LOG".into(), self.cfg.rust_log.clone()),
        ];
        let mut p = Proc::start(Spec {
            name: "apiserver".into(),
            ns: self.api_host.ns.clone(),
            program: bin.to_path_buf(),
            args,
            env,
            log: self.dir.join("apiserver.log"),
        })?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.kubeconfig.exists() {
            if let Some(st) = p.exited() {
                bail!(
                    "API server {} exited ({st}) before writing {}:\n{}",
                    bin.display(),
                    self.kubeconfig.display(),
                    p.log_tail(30)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "API server {} wrote no kubeconfig at {} within 60 s:\n{}",
                    bin.display(),
                    self.kubeconfig.display(),
                    p.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(p)
    }

    fn connect_api(&mut self) -> Result<()> {
        self.kube = Some(self.client_in("api")?);
        Ok(())
    }

    /// A kube client from the lab's admin kubeconfig whose connections start in `role`'s
    /// namespace (it lives on that host's runtime: use it there, e.g. through
    /// [`Lab::run_in`]).
    pub fn client_in(&self, role: &str) -> Result<kube::Client> {
        let path = self.kubeconfig.clone();
        self.runtime(role).run(async move {
            let kc = Kubeconfig::read_from(&path).context("read lab kubeconfig")?;
            let mut config =
                kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
            config.connect_timeout = Some(Duration::from_secs(3));
            config.read_timeout = Some(Duration::from_secs(90));
            anyhow::Ok(kube::Client::try_from(config)?)
        })
    }

    /// The API server's `/version` as seen from `role`'s namespace, through the admin
    /// kubeconfig (TLS and client certificate on a real server, plain HTTP on the test one).
    pub fn api_version(&self, role: &str) -> Result<k8s_openapi::apimachinery::pkg::version::Info> {
        let client = self.client_in(role)?;
        self.runtime(role).run(async move {
            tokio::time::timeout(KUBE_TIMEOUT, client.apiserver_version())
                .await
                .map_err(|_| anyhow!("GET /version timed out after {KUBE_TIMEOUT:?}"))?
                .context("GET /version")
        })
    }

    /// Waits until namespace `default` exists. A real kube-apiserver reports ready before
    /// its bootstrap controller has created the system namespaces, and admission rejects
    /// objects in a namespace that does not exist yet (the test server needs none).
    fn wait_default_namespace(&self) -> Result<()> {
        self.kube(|c| async move {
            let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c);
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                match api.get_opt("default").await {
                    Ok(Some(_)) => return Ok(()),
                    Ok(None) | Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    Ok(None) => {
                        bail!("namespace default not created 15 s after the API server was ready")
                    }
                    Err(e) => return Err(e).context("get namespace default"),
                }
            }
        })
    }

    /// Creates the CRDs from `deploy/crds/*.yaml` but its `kustomization.yaml` (existing ones
    /// are kept) and waits until
    /// both kinds are served.
    fn apply_crds(&self) -> Result<()> {
        let dir = crds_dir();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("read {}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            // deploy/crds is also a kustomization (`kubectl apply -k deploy/crds`).
            .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
            .collect();
        files.sort();
        let mut crds = Vec::new();
        for f in &files {
            let text = std::fs::read_to_string(f)?;
            let docs: Vec<CustomResourceDefinition> = serde_saphyr::from_multiple(&text)
                .with_context(|| format!("parse {}", f.display()))?;
            crds.extend(docs);
        }
        if crds.is_empty() {
            bail!("no CRDs found in {}", dir.display());
        }
        self.kube(move |c| async move {
            let api: Api<CustomResourceDefinition> = Api::all(c.clone());
            for crd in &crds {
                match api.create(&PostParams::default(), crd).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => return Err(e).context("create CRD"),
                }
            }
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let pools = Api::<IPAddressPool>::all(c.clone())
                    .list(&Default::default())
                    .await;
                let ads = Api::<L2Advertisement>::all(c.clone())
                    .list(&Default::default())
                    .await;
                match (pools, ads) {
                    (Ok(_), Ok(_)) => return Ok(()),
                    (Err(e), _) | (_, Err(e)) if Instant::now() > deadline => {
                        return Err(e).context("CRDs not served 15 s after creation");
                    }
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })
    }

    fn speaker_spec(&self, node: &str) -> Spec {
        let host = self.host(node);
        let (extra, key_file) = match self.overrides.get(node) {
            Some((o, key)) => (o.extra_args.clone(), key.as_ref().unwrap_or(&self.key_file)),
            None => (Vec::new(), &self.key_file),
        };
        let mut args: Vec<String> = vec![
            "--node-name".into(),
            host.name.clone(),
            "--exclude-interfaces".into(),
            "lo".into(),
            "--advertise-addr".into(),
            host.ipv4.to_string(),
            "--liveness-key-file".into(),
            key_file.display().to_string(),
            "--metrics-addr".into(),
            SPEAKER_METRICS.into(),
            "--lease-namespace".into(),
            LEASE_NAMESPACE.into(),
        ];
        args.extend(self.cfg.speaker_args.iter().cloned());
        args.extend(extra);
        Spec {
            name: format!("speaker-{node}"),
            ns: host.ns.clone(),
            program: self
                .speaker_bin
                .clone()
                .expect("speaker binary checked at start"),
            args,
            env: self.child_env(),
            log: self.dir.join(format!("speaker-{node}.log")),
        }
    }

    fn wait_ready(&self, role: &str, addr: &str, p: &mut Proc, timeout: Duration) -> Result<()> {
        let addr: SocketAddr = addr.parse().expect("metrics address");
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok((200, _)) = self.http_get(role, addr, "/readyz", Duration::from_secs(1)) {
                return Ok(());
            }
            if let Some(st) = p.exited() {
                bail!(
                    "{} exited ({st}) before it was ready:\n{}",
                    p.name(),
                    p.log_tail(40)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready (GET {addr}/readyz) after {timeout:?}:\n{}",
                    p.name(),
                    p.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_speaker_ready(&mut self, node: &str, timeout: Duration) -> Result<()> {
        let mut p = self
            .speakers
            .remove(node)
            .ok_or_else(|| anyhow!("no speaker on {node}"))?;
        let r = self.wait_ready(node, SPEAKER_METRICS, &mut p, timeout);
        self.speakers.insert(node.to_string(), p);
        r
    }

    // ---------------------------------------------------------------- accessors

    /// The run prefix (`flb<pid>x<seq>`).
    pub fn id(&self) -> String {
        self.run.prefix()
    }

    /// The work directory (logs, kubeconfig, liveness key).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The admin kubeconfig of the lab's API server (reachable only from lab namespaces).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Whether this lab runs an external API server (`FERROLB_LAB_APISERVER`, e.g. the real
    /// kube-apiserver through `shared/k8s/lab-apiserver`) instead of the built-in in-memory
    /// `ferrolb-testapi`. A scenario part that needs the test server's fault injection
    /// would run on its own lab with `apiserver: None` and print why when this is true (no
    /// scenario needs one today: README, "On a real API server").
    pub fn real_api(&self) -> bool {
        self.cfg.real_api()
    }

    /// The API server host.
    pub fn api_host(&self) -> &Host {
        &self.api_host
    }

    /// The nodes, in order.
    pub fn nodes(&self) -> &[Host] {
        &self.nodes
    }

    /// The clients, in order.
    pub fn clients(&self) -> &[Host] {
        &self.clients
    }

    /// A host by role name (`api`, `node2`, `client1`); panics on an unknown name.
    pub fn host(&self, name: &str) -> &Host {
        std::iter::once(&self.api_host)
            .chain(&self.nodes)
            .chain(&self.clients)
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("unknown lab host {name}"))
    }

    /// The namespace of a role (`switch`, `api`, `node1`, `client1`).
    pub fn ns(&self, role: &str) -> String {
        self.run.ns(role)
    }

    /// MAC of a node's `eth0`.
    pub fn node_mac(&self, node: &str) -> MacAddr {
        self.host(node).mac
    }

    /// The node owning a MAC.
    pub fn node_by_mac(&self, mac: MacAddr) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| n.mac == mac)
            .map(|n| n.name.as_str())
    }

    /// The lab's API client (use it through [`Lab::kube`]: it only works on lab threads).
    pub fn client(&self) -> kube::Client {
        self.kube.clone().expect("API client")
    }

    fn runtime(&self, role: &str) -> &NsRuntime {
        self.runtimes
            .get(role)
            .unwrap_or_else(|| panic!("no runtime for {role}"))
    }

    /// Runs `f(client)` on the api namespace's runtime, bounded by 20 s.
    pub fn kube<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(kube::Client) -> Fut,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        let fut = f(self.client());
        self.runtime("api").run(async move {
            tokio::time::timeout(KUBE_TIMEOUT, fut)
                .await
                .map_err(|_| anyhow!("lab API call timed out after {KUBE_TIMEOUT:?}"))?
        })
    }

    /// Runs any future on a lab host's runtime (its sockets live in that namespace).
    pub fn run_in<F>(&self, role: &str, fut: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime(role).run(fut)
    }

    /// Spawns a future on a lab host's runtime and returns at once (a background watch, say);
    /// it ends with the lab at the latest.
    pub fn spawn_in<F>(&self, role: &str, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime(role).spawn(fut)
    }

    /// Attaches one more host to the LAN of a running lab: namespace `<id>-<role>` (removed
    /// with the lab's own), bridge port `<id>-<short>`, and `eth0` with `mac` (else the
    /// kernel's random one) at 198.51.100.`last`/24 and 2001:db8:100::`last`/64. No Node, no
    /// runtime: a host outside the cluster, e.g. a [`crate::rogue::Rogue`].
    pub fn attach_host(
        &mut self,
        role: &str,
        short: &str,
        last: u8,
        mac: Option<MacAddr>,
    ) -> Result<Host> {
        let mut h = Host {
            name: role.to_string(),
            ns: self.run.ns(role),
            ipv4: Ipv4Addr::new(198, 51, 100, last),
            ipv6: format!("2001:db8:100::{last}").parse().expect("valid v6"),
            mac: MacAddr::zero(),
        };
        if self.namespaces.contains(&h.ns) {
            bail!("lab host {role} exists already");
        }
        add_namespace(&mut self.namespaces, &h.ns)?;
        plug(
            &self.run.ns("switch"),
            &self.run.ifname("br"),
            &self.run.ifname(short),
            &mut h,
            mac,
        )?;
        Ok(h)
    }

    // ---------------------------------------------------------------- processes

    /// The speaker process id on `node`, if one was started.
    pub fn speaker_pid(&self, node: &str) -> Option<nix::unistd::Pid> {
        self.speakers.get(node).map(Proc::pid)
    }

    /// Whether `node`'s speaker is running.
    pub fn speaker_alive(&mut self, node: &str) -> bool {
        self.speakers
            .get_mut(node)
            .is_some_and(|p| p.exited().is_none())
    }

    /// Sends `sig` to `node`'s speaker; returns the time taken just before sending it.
    pub fn kill_speaker(&mut self, node: &str, sig: Signal) -> Result<Instant> {
        let p = self
            .speakers
            .get(node)
            .ok_or_else(|| anyhow!("no speaker on {node}"))?;
        let t = Instant::now();
        p.signal(sig)?;
        Ok(t)
    }

    /// Waits up to `timeout` for `node`'s speaker to exit.
    pub fn wait_speaker_exit(&mut self, node: &str, timeout: Duration) -> Option<ExitStatus> {
        self.speakers.get_mut(node)?.wait_exit(timeout)
    }

    /// (Re)starts `node`'s speaker (stopping a running one with SIGTERM) and waits until ready.
    pub fn restart_speaker(&mut self, node: &str) -> Result<()> {
        if self.speaker_bin.is_none() {
            bail!("this lab runs no speakers");
        }
        if let Some(mut old) = self.speakers.remove(node) {
            old.stop(Signal::SIGTERM, Duration::from_secs(10));
            self.dead.push(old);
        }
        let p = Proc::start(self.speaker_spec(node))?;
        self.speakers.insert(node.to_string(), p);
        self.wait_speaker_ready(node, Duration::from_secs(30))
    }

    /// Makes `node`'s speaker start with `o` from its next (re)start on; the default
    /// override restores the lab's command line. A key of its own goes to
    /// `<dir>/liveness-<node>.key`.
    pub fn set_speaker_override(&mut self, node: &str, o: SpeakerOverride) -> Result<()> {
        self.host(node);
        let key_file = match &o.key {
            Some(key) => {
                let path = self.dir.join(format!("liveness-{node}.key"));
                std::fs::write(&path, format!("{key}\n"))
                    .with_context(|| format!("write {}", path.display()))?;
                Some(path)
            }
            None => None,
        };
        self.overrides.insert(node.to_string(), (o, key_file));
        Ok(())
    }

    /// (Re)starts `node`'s speaker like [`Lab::restart_speaker`], but waits only until it is
    /// alive (`/healthz`), not ready: for a speaker that is expected to stay unready, e.g.
    /// one cut off from its peers.
    pub fn restart_speaker_unready(&mut self, node: &str) -> Result<()> {
        if self.speaker_bin.is_none() {
            bail!("this lab runs no speakers");
        }
        if let Some(mut old) = self.speakers.remove(node) {
            old.stop(Signal::SIGTERM, Duration::from_secs(10));
            self.dead.push(old);
        }
        let mut p = Proc::start(self.speaker_spec(node))?;
        let addr: SocketAddr = SPEAKER_METRICS.parse().expect("metrics address");
        let deadline = Instant::now() + Duration::from_secs(30);
        let r = loop {
            if let Ok((200, _)) = self.http_get(node, addr, "/healthz", Duration::from_secs(1)) {
                break Ok(());
            }
            if let Some(st) = p.exited() {
                break Err(anyhow!(
                    "{} exited ({st}) before it served /healthz:\n{}",
                    p.name(),
                    p.log_tail(40)
                ));
            }
            if Instant::now() > deadline {
                break Err(anyhow!(
                    "{} does not serve {addr}/healthz after 30 s:\n{}",
                    p.name(),
                    p.log_tail(40)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.speakers.insert(node.to_string(), p);
        r
    }

    /// Whether `node`'s speaker answers `/readyz` with 200 now.
    pub fn speaker_ready(&self, node: &str) -> bool {
        let addr: SocketAddr = SPEAKER_METRICS.parse().expect("metrics address");
        matches!(
            self.http_get(node, addr, "/readyz", Duration::from_secs(1)),
            Ok((200, _))
        )
    }

    /// Stops the speakers on `nodes` (`sig`, then SIGKILL after 10 s).
    pub fn stop_speakers(&mut self, nodes: &[&str], sig: Signal) {
        for n in nodes {
            if let Some(mut old) = self.speakers.remove(*n) {
                old.stop(sig, Duration::from_secs(10));
                self.dead.push(old);
            }
        }
    }

    /// Starts speakers on `nodes` all at once (as after a power cut or a DaemonSet
    /// rollout) and waits until each is ready.
    pub fn start_speakers(&mut self, nodes: &[&str]) -> Result<()> {
        if self.speaker_bin.is_none() {
            bail!("this lab runs no speakers");
        }
        for n in nodes {
            if self.speakers.contains_key(*n) {
                bail!("the speaker on {n} is still running");
            }
        }
        for n in nodes {
            let p = Proc::start(self.speaker_spec(n))?;
            self.speakers.insert(n.to_string(), p);
        }
        for n in nodes {
            self.wait_speaker_ready(n, Duration::from_secs(30))?;
        }
        Ok(())
    }

    /// The speaker's resident set size in bytes.
    pub fn speaker_rss(&self, node: &str) -> Option<u64> {
        self.speakers.get(node)?.rss_bytes()
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`) the API server: an unreachable server whose
    /// TCP connections stay open.
    pub fn freeze_api(&mut self, frozen: bool) -> Result<()> {
        let p = self
            .api
            .as_ref()
            .ok_or_else(|| anyhow!("API server not running"))?;
        p.signal(if frozen {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        })
    }

    /// Stops the API server (SIGTERM, then SIGKILL after 10 s). The in-memory test server
    /// loses everything: first the record of the lab's objects (with status) and its
    /// resourceVersion are refreshed so [`Lab::start_api`] can restore them. A real server
    /// keeps its state in etcd, which `lab-apiserver` leaves running.
    pub fn stop_api(&mut self) -> Result<()> {
        if !self.real_api() {
            self.refresh_journal();
            self.last_rv = self
                .api_counts()
                .ok()
                .and_then(|c| c["resourceVersion"].as_u64());
        }
        let mut p = self
            .api
            .take()
            .ok_or_else(|| anyhow!("API server not running"))?;
        let _ = p.signal(Signal::SIGCONT);
        p.stop(Signal::SIGTERM, Duration::from_secs(10));
        self.dead.push(p);
        Ok(())
    }

    /// Starts the API server again and waits until it serves the CRDs. A real server finds
    /// every object (status, resourceVersions) in the etcd it restarts on. A fresh
    /// in-memory server gets the CRDs and every object the lab wrote, with the last status
    /// seen (as a restored etcd would hold them), and its resourceVersion is moved past the
    /// old server's so watchers resume instead of waiting for a "future" version.
    pub fn start_api(&mut self) -> Result<()> {
        if self.api.is_some() {
            bail!("API server already running");
        }
        let bin = match &self.cfg.apiserver {
            Some(p) => p.clone(),
            None => proc::binary("ferrolb-testapi")?,
        };
        self.api = Some(self.start_api_process(&bin)?);
        self.connect_api()?;
        self.apply_crds()?;
        if self.real_api() {
            return Ok(());
        }
        self.replay_journal()?;
        match self.last_rv.take() {
            Some(rv) => self.advance_rv(rv),
            None => Ok(()),
        }
    }

    /// Writes a scratch ConfigMap until the (restarted, in-memory) test API server's
    /// resourceVersion passes `past`, so the sequence continues as etcd's would: watchers
    /// resume from their last RV instead of waiting for a "future" one.
    fn advance_rv(&self, past: u64) -> Result<()> {
        let cm = serde_json::from_value::<k8s_openapi::api::core::v1::ConfigMap>(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "ferrolb-lab-rv", "namespace": "default"},
        }))?;
        self.apply(&cm)?;
        self.forget::<k8s_openapi::api::core::v1::ConfigMap>(Some("default"), "ferrolb-lab-rv");
        let mut n = 0u64;
        for _ in 0..100_000 {
            let rv = self.api_counts()?["resourceVersion"].as_u64().unwrap_or(0);
            if rv > past {
                return Ok(());
            }
            let batch = (past - rv + 1).min(64);
            let start = n;
            n += batch;
            self.kube(move |c| async move {
                let api: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(c, "default");
                let writes = (start..start + batch).map(|i| {
                    let api = api.clone();
                    async move {
                        api.patch(
                            "ferrolb-lab-rv",
                            &PatchParams::default(),
                            &Patch::Merge(json!({"data": {"n": i.to_string()}})),
                        )
                        .await
                    }
                });
                for r in futures::future::join_all(writes).await {
                    r?;
                }
                Ok(())
            })?;
        }
        bail!("could not advance the API server's resourceVersion past {past}")
    }

    /// CPU time used so far by each lab process (`apiserver`, `controller`, `speaker-nodeI`).
    pub fn cpu_times(&self) -> BTreeMap<String, Duration> {
        self.api
            .iter()
            .chain(self.controller.iter())
            .chain(self.speakers.values())
            .filter_map(|p| Some((p.name().to_string(), p.cpu_time()?)))
            .collect()
    }

    /// Runs `iptables <args>` and then `ip6tables <args>` inside a role's namespace (its own
    /// netfilter tables: nothing outside the lab is touched; they go with the namespace).
    /// Needs Debian's `iptables` package; a missing binary is named in the error.
    pub fn firewall(&self, role: &str, args: &[&str]) -> Result<()> {
        firewall_in(&self.ns(role), args)
    }

    /// Runs `cmd` inside a role's namespace (`ip netns exec`), returning stdout.
    pub fn exec(&self, role: &str, cmd: &[&str]) -> Result<String> {
        netns::exec_in(&self.ns(role), cmd)
    }

    /// GETs `http://addr/path` from inside a role's namespace: (status, body).
    pub fn http_get(
        &self,
        role: &str,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> Result<(u16, String)> {
        let path = path.to_string();
        self.runtime(role).run(async move {
            tokio::time::timeout(timeout, http_get(addr, &path))
                .await
                .map_err(|_| anyhow!("GET {addr}{path} timed out"))?
        })
    }

    /// Write counters of the built-in test API server (`/_testapi/counts`); an error on
    /// an external API server, which has no such endpoint (see [`Lab::write_requests`]).
    pub fn api_counts(&self) -> Result<Value> {
        if self.real_api() {
            bail!("/_testapi/counts needs the test API server; this lab runs an external one");
        }
        let (code, body) = self.http_get(
            "api",
            API_ADDR.parse().expect("addr"),
            "/_testapi/counts",
            Duration::from_secs(5),
        )?;
        if code != 200 {
            bail!("/_testapi/counts answered {code}: the API server has no test counters");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// Write requests the API server has answered so far, also those that changed nothing,
    /// by kind: on the test server its counters by verb (`create`, `update`, `patch`,
    /// `delete`); on a real kube-apiserver its `apiserver_request_total` by
    /// `VERB resource[/subresource]`, which also counts the server's own few writes (its
    /// identity Lease, every 10 s). Subtract two readings to count a window.
    pub fn write_requests(&self) -> Result<BTreeMap<String, u64>> {
        if !self.real_api() {
            let c = self.api_counts()?;
            return Ok(["create", "update", "patch", "delete"]
                .into_iter()
                .map(|k| (k.to_string(), c[k].as_u64().unwrap_or(0)))
                .collect());
        }
        let text = self.kube(|c| async move {
            let req = kube::core::Request::new("").get("metrics", &Default::default())?;
            c.request_text(req).await.context("GET /metrics")
        })?;
        Ok(write_request_counts(&text))
    }

    /// A speaker's metric value: the first line of its `/metrics` starting with `series`
    /// (a name, optionally with labels, e.g. `ferrolb_speaker_elections{result="won"}`).
    pub fn speaker_metric(&self, node: &str, series: &str) -> Result<Option<f64>> {
        self.metric(node, SPEAKER_METRICS, series)
    }

    /// The controller's metric value (it runs in the api namespace), as [`Lab::speaker_metric`].
    pub fn controller_metric(&self, series: &str) -> Result<Option<f64>> {
        self.metric("api", CONTROLLER_METRICS, series)
    }

    /// The value of `series` in the `/metrics` of the process serving `addr` in `role`'s
    /// namespace; `None` when no line starts with it.
    fn metric(&self, role: &str, addr: &str, series: &str) -> Result<Option<f64>> {
        let (code, body) = self.http_get(
            role,
            addr.parse().expect("addr"),
            "/metrics",
            Duration::from_secs(5),
        )?;
        if code != 200 {
            bail!("{role}'s /metrics at {addr} answered {code}");
        }
        Ok(body
            .lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok()))
    }

    // ---------------------------------------------------------------- the LAN

    /// Makes every node accept traffic for `ips` (a `local` route on `lo`, as kube-proxy
    /// would); idempotent.
    pub fn add_vips(&self, ips: &[IpAddr]) -> Result<()> {
        let mut vips = self.vips.lock().expect("vips");
        for ip in ips {
            if vips.contains(ip) {
                continue;
            }
            for n in &self.nodes {
                let r = match ip {
                    IpAddr::V4(v4) => netns::ip_in(
                        &n.ns,
                        &["route", "add", "local", &format!("{v4}/32"), "dev", "lo"],
                    ),
                    IpAddr::V6(v6) => netns::ip_in(
                        &n.ns,
                        &[
                            "-6",
                            "route",
                            "add",
                            "local",
                            &format!("{v6}/128"),
                            "dev",
                            "lo",
                        ],
                    ),
                };
                if let Err(e) = r
                    && !format!("{e}").contains("File exists")
                {
                    return Err(e);
                }
            }
            vips.insert(*ip);
        }
        Ok(())
    }

    /// Makes every node's TCP responder listen on `port` (all addresses, both families);
    /// each connection gets the node's name and a close.
    pub fn serve_port(&self, port: u16) -> Result<()> {
        let mut ports = self.ports.lock().expect("ports");
        if ports.contains(&port) {
            return Ok(());
        }
        for n in &self.nodes {
            let reply = format!("{}\n", n.name);
            self.runtime(&n.name).run(async move {
                let listener =
                    tokio::net::TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
                        .await
                        .with_context(|| format!("listen on port {port}"))?;
                tokio::spawn(respond(listener, reply));
                anyhow::Ok(())
            })?;
        }
        ports.insert(port);
        Ok(())
    }

    /// One TCP connection from `client` to `ip:port`; returns the answering node's name.
    pub fn client_connect(
        &self,
        client: &str,
        ip: IpAddr,
        port: u16,
        timeout: Duration,
    ) -> Result<String> {
        self.runtime(client)
            .run(connect_once(SocketAddr::new(ip, port), timeout))
    }

    /// Connects from `client` every 2 ms (each attempt bounded by 300 ms) until a node
    /// whose name satisfies `accept` answers or `deadline` passes; returns when and who.
    pub fn connect_until(
        &self,
        client: &str,
        ip: IpAddr,
        port: u16,
        deadline: Instant,
        accept: impl Fn(&str) -> bool + Send + 'static,
    ) -> Result<(Instant, String)> {
        let addr = SocketAddr::new(ip, port);
        self.runtime(client).run(async move {
            let mut last = String::from("no attempt");
            for _ in 0..10_000 {
                match connect_once(addr, Duration::from_millis(300)).await {
                    Ok(node) if accept(&node) => return Ok((Instant::now(), node)),
                    Ok(node) => last = format!("answered by {node}"),
                    Err(e) => last = format!("{e:#}"),
                }
                if Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            bail!("no acceptable answer from {addr} before the deadline (last: {last})")
        })
    }

    /// The MAC `client`'s kernel has for `ip` (`ip neigh`), if it has a usable one.
    pub fn client_neigh(&self, client: &str, ip: IpAddr) -> Option<MacAddr> {
        let out = netns::ip_in(
            &self.ns(client),
            &["-j", "neigh", "show", "to", &ip.to_string(), "dev", "eth0"],
        )
        .ok()?;
        let entries: Vec<Value> = serde_json::from_str(&out).ok()?;
        entries
            .iter()
            .find_map(|e| e.get("lladdr")?.as_str()?.parse().ok())
    }

    /// Forgets `client`'s neighbour entry for `ip`, so its next packet resolves afresh.
    pub fn client_forget(&self, client: &str, ip: IpAddr) -> Result<()> {
        netns::ip_in(
            &self.ns(client),
            &["neigh", "flush", "to", &ip.to_string(), "dev", "eth0"],
        )
        .map(drop)
    }

    /// Starts an observer on `client`'s `eth0`.
    pub fn observe(&self, client: &str) -> Result<Observer> {
        Observer::start(&self.ns(client), "eth0", false)
    }

    /// Starts an observer on the bridge (promiscuous): every frame crossing the LAN.
    pub fn observe_lan(&self) -> Result<Observer> {
        Observer::start(&self.ns("switch"), &self.run.ifname("br"), true)
    }

    /// Which nodes answer each of `ips` now, asked from `client` all at once (see
    /// [`observe::sweep`]): per IP (in order), the answering nodes' names, sorted; a MAC
    /// that is no node's is given as the MAC.
    pub fn answerers(
        &self,
        client: &str,
        ips: &[IpAddr],
        window: Duration,
    ) -> Result<Vec<Vec<String>>> {
        let h = self.host(client);
        let macs = observe::sweep(&h.ns, "eth0", h.prober(), ips, window)?;
        Ok(macs
            .into_iter()
            .map(|m| {
                let mut names: Vec<String> = m
                    .into_iter()
                    .map(|mac| {
                        self.node_by_mac(mac)
                            .map(str::to_string)
                            .unwrap_or_else(|| mac.to_string())
                    })
                    .collect();
                names.sort();
                names
            })
            .collect())
    }

    /// Sends ARP requests / Neighbor Solicitations from `client` (see [`observe::probe`]).
    pub fn probe(
        &self,
        client: &str,
        targets: &[IpAddr],
        rounds: usize,
        cfg: ProbeConfig,
    ) -> Result<Vec<ProbeResult>> {
        let h = self.host(client);
        observe::probe(&h.ns, "eth0", h.prober(), targets, rounds, cfg)
    }

    // ---------------------------------------------------------------- objects

    fn record<K>(&self, obj: &K)
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        let ar = ApiResource::erase::<K>(&());
        let namespace = obj.meta().namespace.clone();
        let name = obj.name_any();
        let object = serde_json::to_value(obj).expect("serializable object");
        let mut j = self.journal.lock().expect("journal");
        match j
            .iter_mut()
            .find(|e| e.ar == ar && e.namespace == namespace && e.name == name)
        {
            Some(e) => e.object = object,
            None => j.push(Entry {
                ar,
                namespace,
                name,
                object,
            }),
        }
    }

    fn forget<K: Resource<DynamicType = ()>>(&self, namespace: Option<&str>, name: &str) {
        let ar = ApiResource::erase::<K>(&());
        self.journal
            .lock()
            .expect("journal")
            .retain(|e| !(e.ar == ar && e.namespace.as_deref() == namespace && e.name == name));
    }

    /// Creates `obj`, or replaces it when it exists; records it for API server restarts.
    pub fn apply<K>(&self, obj: &K) -> Result<K>
    where
        K: Resource<DynamicType = ()> + Serialize + DeserializeOwned,
    {
        let ar = ApiResource::erase::<K>(&());
        let ns = obj.meta().namespace.clone();
        let name = obj.name_any();
        let value = serde_json::to_value(obj)?;
        let status = value.get("status").cloned().filter(|s| !s.is_null());
        let dynobj: DynamicObject = serde_json::from_value(value)?;
        let out = self.kube(move |c| async move {
            let api = dyn_api(c, &ar, ns.as_deref());
            let created = match api.create(&PostParams::default(), &dynobj).await {
                Ok(o) => o,
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    let cur = api.get(&name).await?;
                    let mut new = dynobj.clone();
                    new.metadata.resource_version = cur.metadata.resource_version;
                    api.replace(&name, &PostParams::default(), &new).await?
                }
                Err(e) => return Err(e).with_context(|| format!("create {name}")),
            };
            // A real API server drops status on create; write it where the lab sets one.
            match status {
                Some(st) => Ok(api
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({ "status": st })),
                    )
                    .await
                    .with_context(|| format!("status of {name}"))?),
                None => Ok(created),
            }
        })?;
        let out: K = from_dyn(out)?;
        self.record(&out);
        Ok(out)
    }

    /// Merge-patches an object (e.g. labels) and records the result.
    pub fn patch<K>(&self, namespace: Option<&str>, name: &str, patch: Value) -> Result<K>
    where
        K: Resource<DynamicType = ()> + Serialize + DeserializeOwned,
    {
        let ar = ApiResource::erase::<K>(&());
        let (ns, name) = (namespace.map(str::to_string), name.to_string());
        let out = self.kube(move |c| async move {
            let api = dyn_api(c, &ar, ns.as_deref());
            Ok(api
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await?)
        })?;
        let out: K = from_dyn(out)?;
        self.record(&out);
        Ok(out)
    }

    /// Deletes an object (absent is fine).
    pub fn delete<K>(&self, namespace: Option<&str>, name: &str) -> Result<()>
    where
        K: Resource<DynamicType = ()>,
    {
        let ar = ApiResource::erase::<K>(&());
        let (ns, name_owned) = (namespace.map(str::to_string), name.to_string());
        self.kube(move |c| async move {
            let api = dyn_api(c, &ar, ns.as_deref());
            match api.delete(&name_owned, &Default::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(e.into()),
            }
        })?;
        self.forget::<K>(namespace, name);
        Ok(())
    }

    /// Gets an object.
    pub fn get<K>(&self, namespace: Option<&str>, name: &str) -> Result<K>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        let ar = ApiResource::erase::<K>(&());
        let (ns, name) = (namespace.map(str::to_string), name.to_string());
        let out = self
            .kube(move |c| async move { Ok(dyn_api(c, &ar, ns.as_deref()).get(&name).await?) })?;
        from_dyn(out)
    }

    /// Lists objects (in `namespace`, or everywhere).
    pub fn list<K>(&self, namespace: Option<&str>) -> Result<Vec<K>>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        let ar = ApiResource::erase::<K>(&());
        let ns = namespace.map(str::to_string);
        let out = self.kube(move |c| async move {
            Ok(dyn_api(c, &ar, ns.as_deref())
                .list(&Default::default())
                .await?)
        })?;
        out.items.into_iter().map(from_dyn).collect()
    }

    /// Watches objects of kind `K` for `window` and counts the writes seen (ADDED and
    /// MODIFIED events, i.e. resourceVersion changes) per `namespace/name`.
    pub fn count_writes<K>(&self, window: Duration) -> Result<BTreeMap<String, u64>>
    where
        K: Resource<DynamicType = ()>,
    {
        let ar = ApiResource::erase::<K>(&());
        let client = self.client();
        self.runtime("api").run(async move {
            let api = dyn_api(client, &ar, None);
            let mut rv = api
                .list(&Default::default())
                .await?
                .metadata
                .resource_version
                .unwrap_or_default();
            let end = tokio::time::Instant::now() + window;
            let mut counts: BTreeMap<String, u64> = BTreeMap::new();
            'outer: for _ in 0..10_000 {
                if tokio::time::Instant::now() >= end {
                    break;
                }
                let left = (end - tokio::time::Instant::now()).as_secs().max(1) as u32;
                let stream = api
                    .watch(&WatchParams::default().timeout(left), &rv)
                    .await?;
                let mut stream = std::pin::pin!(stream);
                loop {
                    match tokio::time::timeout_at(end, stream.try_next()).await {
                        Err(_) => break 'outer,
                        Ok(Ok(None)) => break,
                        Ok(Err(e)) => return Err(anyhow::Error::from(e)),
                        Ok(Ok(Some(ev))) => match ev {
                            WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                                let key = format!(
                                    "{}/{}",
                                    o.namespace().unwrap_or_default(),
                                    o.name_any()
                                );
                                *counts.entry(key).or_default() += 1;
                                rv = o.resource_version().unwrap_or_default();
                            }
                            WatchEvent::Deleted(o) => rv = o.resource_version().unwrap_or_default(),
                            WatchEvent::Bookmark(b) => rv = b.metadata.resource_version,
                            WatchEvent::Error(e) => bail!("watch {}: {e:?}", ar.plural),
                        },
                    }
                }
            }
            Ok(counts)
        })
    }

    /// Creates an IPAddressPool.
    pub fn create_pool(&self, name: &str, addresses: &[&str]) -> Result<()> {
        self.apply(&objects::pool(name, addresses)).map(drop)
    }

    /// Creates or replaces an L2Advertisement.
    pub fn apply_l2adv(&self, name: &str, spec: L2AdvertisementSpec) -> Result<()> {
        self.apply(&objects::l2_advertisement(name, spec)).map(drop)
    }

    /// Pool `default` (203.0.113.10–.99 and 2001:db8:200::10–::99) announced by an
    /// L2Advertisement `default` from every node.
    pub fn default_pool(&self) -> Result<()> {
        self.create_pool(
            "default",
            &[
                "203.0.113.10-203.0.113.99",
                "2001:db8:200::10-2001:db8:200::99",
            ],
        )?;
        self.apply_l2adv(
            "default",
            L2AdvertisementSpec {
                ip_address_pools: vec!["default".into()],
                ..Default::default()
            },
        )
    }

    /// Creates a Service and its EndpointSlices, and serves its ports on every node.
    pub fn create_service(&self, svc: &Svc) -> Result<()> {
        for p in &svc.ports {
            self.serve_port(*p)?;
        }
        self.apply(&objects::service(svc))?;
        self.write_endpoints(svc)
    }

    /// Moves a Service's ready endpoints to exactly `nodes` (an empty list: none ready).
    pub fn set_endpoints(&self, svc: &Svc, nodes: &[&str]) -> Result<()> {
        let mut svc = svc.clone();
        svc.endpoints = Some(nodes.iter().map(|n| n.to_string()).collect());
        self.write_endpoints(&svc)
    }

    fn write_endpoints(&self, svc: &Svc) -> Result<()> {
        let hosts: Vec<(String, Ipv4Addr, Ipv6Addr)> = self
            .nodes
            .iter()
            .filter(|n| svc.endpoints.as_ref().is_none_or(|e| e.contains(&n.name)))
            .map(|n| (n.name.clone(), n.ipv4, n.ipv6))
            .collect();
        for slice in objects::endpoint_slices(svc, &hosts) {
            self.apply(&slice)?;
        }
        Ok(())
    }

    /// Deletes a Service and its EndpointSlices.
    pub fn delete_service(&self, svc: &Svc) -> Result<()> {
        for fam in ["ipv4", "ipv6"] {
            self.delete::<EndpointSlice>(Some(&svc.namespace), &format!("{}-{fam}", svc.name))?;
        }
        self.delete::<Service>(Some(&svc.namespace), &svc.name)
    }

    /// Removes the `node.kubernetes.io/not-ready` taint a real kube-apiserver's admission
    /// (TaintNodesByCondition) puts on every new Node: in a cluster the node lifecycle
    /// controller lifts it once the kubelet reports Ready, and the lab's Nodes are Ready.
    fn untaint_ready_node(&self, node: &Node) -> Result<()> {
        let taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let keep: Vec<_> = taints
            .iter()
            .filter(|t| t.key != NOT_READY_TAINT)
            .cloned()
            .collect();
        if keep.len() == taints.len() {
            return Ok(());
        }
        let keep = (!keep.is_empty()).then_some(keep);
        self.patch::<Node>(None, &node.name_any(), json!({"spec": {"taints": keep}}))
            .map(drop)
    }

    /// Sets (`Some`) or removes (`None`) a label on a Node.
    pub fn label_node(&self, node: &str, key: &str, value: Option<&str>) -> Result<()> {
        self.patch::<Node>(None, node, json!({"metadata": {"labels": {key: value}}}))
            .map(drop)
    }

    /// Waits until the Service has `want` ingress IPs (at least one), makes the nodes accept
    /// them ([`Lab::add_vips`]) and returns them in status order.
    pub fn wait_ingress(&self, svc: &Svc, want: usize, timeout: Duration) -> Result<Vec<IpAddr>> {
        let (ns, name) = (svc.namespace.clone(), svc.name.clone());
        let deadline = Instant::now() + timeout;
        loop {
            let s: Service = self.get(Some(&ns), &name)?;
            let ips = ingress_ips(&s);
            if !ips.is_empty() && ips.len() >= want.max(1) {
                self.add_vips(&ips)?;
                return Ok(ips);
            }
            if Instant::now() > deadline {
                let status = serde_json::to_string(&s.status).unwrap_or_default();
                bail!(
                    "Service {ns}/{name} has no {want} ingress IPs after {timeout:?}; status: {status}\ncontroller log:\n{}",
                    self.controller
                        .as_ref()
                        .map(|p| p.log_tail(30))
                        .unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Which node answers TCP on `ip:port` from `client` (one connection).
    pub fn announcer(&self, client: &str, ip: IpAddr, port: u16) -> Result<String> {
        self.client_connect(client, ip, port, Duration::from_secs(3))
    }

    /// Kills the speaker of the node that answers for `ips` (all must be announced by the
    /// same node) and measures, from just before the signal: the first gratuitous ARP /
    /// unsolicited NA for each IP from another node seen by `obs`, and the first TCP connect
    /// to `ips[0]` answered by another node. Does not restart the killed speaker.
    pub fn failover(
        &mut self,
        client: &str,
        obs: &Observer,
        ips: &[IpAddr],
        port: u16,
        sig: Signal,
        timeout: Duration,
    ) -> Result<Failover> {
        let old = self.announcer(client, ips[0], port)?;
        for ip in &ips[1..] {
            let other = self.announcer(client, *ip, port)?;
            if other != old {
                bail!(
                    "{ip} is announced by {other} but {} by {old}: a dual-stack Service must land on one node",
                    ips[0]
                );
            }
        }
        let old_mac = self.node_mac(&old);
        let t0 = self.kill_speaker(&old, sig)?;
        let deadline = t0 + timeout;
        let old2 = old.clone();
        let (t_conn, new) = self
            .connect_until(client, ips[0], port, deadline, move |n| n != old2)
            .with_context(|| format!("after {sig} to the speaker on {old}"))?;
        let mut announce = Vec::new();
        for ip in ips {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(500));
            let seen = obs.wait_for(left, |e| {
                e.at >= t0 && e.gratuitous && e.answers_for(*ip) && e.sender_mac != old_mac
            });
            announce.push((*ip, seen.map(|e| e.at - t0)));
        }
        let exit = self.wait_speaker_exit(&old, Duration::from_secs(10));
        Ok(Failover {
            signal: sig,
            old,
            new,
            announce,
            connect: t_conn - t0,
            exit,
        })
    }

    fn refresh_journal(&self) {
        let keys: Vec<(ApiResource, Option<String>, String)> = self
            .journal
            .lock()
            .expect("journal")
            .iter()
            .map(|e| (e.ar.clone(), e.namespace.clone(), e.name.clone()))
            .collect();
        let Some(client) = self.kube.clone() else {
            return;
        };
        let fresh: Vec<Option<Value>> = self.runtime("api").run(async move {
            let mut out = Vec::new();
            for (ar, ns, name) in keys {
                let api = dyn_api(client.clone(), &ar, ns.as_deref());
                let got = tokio::time::timeout(Duration::from_secs(2), api.get(&name)).await;
                out.push(match got {
                    Ok(Ok(o)) => serde_json::to_value(o).ok(),
                    _ => None,
                });
            }
            out
        });
        let mut j = self.journal.lock().expect("journal");
        for (e, v) in j.iter_mut().zip(fresh) {
            if let Some(v) = v {
                e.object = v;
            }
        }
    }

    fn replay_journal(&self) -> Result<()> {
        let entries: Vec<(ApiResource, Option<String>, String, Value)> = self
            .journal
            .lock()
            .expect("journal")
            .iter()
            .map(|e| {
                (
                    e.ar.clone(),
                    e.namespace.clone(),
                    e.name.clone(),
                    e.object.clone(),
                )
            })
            .collect();
        self.kube(move |c| async move {
            for (ar, ns, name, mut value) in entries {
                let api = dyn_api(c.clone(), &ar, ns.as_deref());
                if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
                    for k in [
                        "resourceVersion",
                        "uid",
                        "creationTimestamp",
                        "generation",
                        "managedFields",
                    ] {
                        meta.remove(k);
                    }
                }
                let status = value.get("status").cloned().filter(|s| !s.is_null());
                let obj: DynamicObject = serde_json::from_value(value)?;
                match api.create(&PostParams::default(), &obj).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(e) => return Err(e).with_context(|| format!("restore {name}")),
                }
                if let Some(st) = status {
                    // Kinds without a status subresource kept it on create already.
                    let _ = api
                        .patch_status(
                            &name,
                            &PatchParams::default(),
                            &Patch::Merge(json!({ "status": st })),
                        )
                        .await;
                }
            }
            Ok(())
        })
    }

    /// Prints the tail of every process log of this lab to stderr.
    pub fn dump_logs(&self, lines: usize) {
        let procs = self
            .api
            .iter()
            .chain(self.controller.iter())
            .chain(self.speakers.values());
        for p in procs {
            eprintln!(
                "----- {} ({}) last {lines} lines -----\n{}",
                p.name(),
                p.log().display(),
                p.log_tail(lines)
            );
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            self.dump_logs(40);
        }
        // Processes first (a SIGSTOPped API server dies of SIGKILL too), then the threads
        // that live in the namespaces, then the namespaces with every link inside them.
        self.speakers.clear();
        self.controller = None;
        self.api = None;
        self.dead.clear();
        self.kube = None;
        self.runtimes.clear();
        for ns in self.namespaces.iter().rev() {
            if let Ok(pids) = netns::run("ip", &["netns", "pids", ns]) {
                for p in pids
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), Signal::SIGKILL);
                }
            }
            if let Err(e) = netns::run("ip", &["netns", "del", ns]) {
                eprintln!("lab: could not delete namespace {ns}: {e:#}");
            }
        }
        if panicking || std::env::var_os("FERROLB_LAB_KEEP_LOGS").is_some() {
            eprintln!("lab: logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs `iptables <args>` and then `ip6tables <args>` inside namespace `ns` (see
/// [`Lab::firewall`]); usable from any thread, since it only runs commands.
pub fn firewall_in(ns: &str, args: &[&str]) -> Result<()> {
    for tool in ["iptables", "ip6tables"] {
        let mut cmd = vec![tool];
        cmd.extend_from_slice(args);
        netns::exec_in(ns, &cmd).with_context(|| {
            format!("{tool} in {ns} (the lab's firewall faults need Debian's `iptables` package)")
        })?;
    }
    Ok(())
}

fn dyn_api(c: kube::Client, ar: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(c, ns, ar),
        None => Api::all_with(c, ar),
    }
}

fn from_dyn<K: DeserializeOwned>(o: DynamicObject) -> Result<K> {
    Ok(serde_json::from_value(serde_json::to_value(o)?)?)
}

/// The ingress IPs in a Service's status, in order.
pub fn ingress_ips(s: &Service) -> Vec<IpAddr> {
    s.status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ing| {
            ing.iter()
                .filter_map(|i| i.ip.as_ref()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The write requests in kube-apiserver's `/metrics`: `apiserver_request_total` summed
/// over codes per `VERB resource[/subresource]`, for the verbs that write.
fn write_request_counts(metrics: &str) -> BTreeMap<String, u64> {
    const WRITES: [&str; 6] = [
        "POST",
        "PUT",
        "PATCH",
        "APPLY",
        "DELETE",
        "DELETECOLLECTION",
    ];
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split("\",")
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"'))
                .unwrap_or("")
        };
        let verb = label("verb");
        if !WRITES.contains(&verb) {
            continue;
        }
        let mut what = format!("{verb} {}", label("resource"));
        if !label("subresource").is_empty() {
            what = format!("{what}/{}", label("subresource"));
        }
        let n = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
        *out.entry(what).or_default() += n;
    }
    out
}

/// Where the generated CRD manifests live.
pub fn crds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crds")
}

fn random_key() -> String {
    use std::io::Read;
    let mut buf = [0u8; 32];
    let mut f = std::fs::File::open("/dev/urandom").expect("/dev/urandom");
    f.read_exact(&mut buf).expect("random bytes");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates namespace `ns` (recorded in `namespaces` at once, so the lab's Drop removes it
/// whatever fails next) with `lo` up and IPv6 DAD off for the links it will get.
fn add_namespace(namespaces: &mut Vec<String>, ns: &str) -> Result<()> {
    netns::run("ip", &["netns", "add", ns])?;
    namespaces.push(ns.to_string());
    netns::ip_in(ns, &["link", "set", "lo", "up"])?;
    // Before any link exists, so eth0 inherits the defaults.
    netns::sysctl_in(
        ns,
        &[
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ],
    )
}

/// Plugs host `h` into the bridge: a veth made in the switch namespace, its end `port` on
/// `bridge` and its peer `eth0` in the host's namespace, with the host's addresses and `mac`
/// (else the kernel's random one), up; fills in `h.mac`.
fn plug(switch: &str, bridge: &str, port: &str, h: &mut Host, mac: Option<MacAddr>) -> Result<()> {
    netns::ip_in(
        switch,
        &[
            "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", &h.ns,
        ],
    )?;
    netns::ip_in(switch, &["link", "set", port, "master", bridge, "up"])?;
    if let Some(mac) = mac {
        netns::ip_in(&h.ns, &["link", "set", "eth0", "address", &mac.to_string()])?;
    }
    netns::ip_in(
        &h.ns,
        &["addr", "add", &format!("{}/24", h.ipv4), "dev", "eth0"],
    )?;
    netns::ip_in(
        &h.ns,
        &[
            "-6",
            "addr",
            "add",
            &format!("{}/64", h.ipv6),
            "dev",
            "eth0",
            "nodad",
        ],
    )?;
    netns::ip_in(&h.ns, &["link", "set", "eth0", "up"])?;
    h.mac = read_mac(&h.ns, "eth0")?;
    Ok(())
}

fn read_mac(ns: &str, dev: &str) -> Result<MacAddr> {
    let out = netns::ip_in(ns, &["-j", "link", "show", "dev", dev])?;
    let v: Value = serde_json::from_str(&out)?;
    v.get(0)
        .and_then(|l| l.get("address"))
        .and_then(Value::as_str)
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| anyhow!("no MAC for {dev} in {ns}"))
}

async fn respond(listener: tokio::net::TcpListener, reply: String) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let reply = reply.clone();
        tokio::spawn(async move {
            let _ = s.write_all(reply.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}

async fn connect_once(addr: SocketAddr, timeout: Duration) -> Result<String> {
    tokio::time::timeout(timeout, async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await?;
        if buf.trim().is_empty() {
            bail!("{addr} closed without a node name");
        }
        anyhow::Ok(buf.trim().to_string())
    })
    .await
    .map_err(|_| anyhow!("connect to {addr}: no answer within {timeout:?}"))?
}

async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad HTTP response from {addr}"))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Ok((
        code,
        if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    ))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }

    #[test]
    fn counts_write_requests_in_apiserver_metrics() {
        let m = r#"# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="services",scope="resource",subresource="status",verb="PATCH",version="v1"} 5
apiserver_request_total{code="409",component="apiserver",dry_run="",group="",resource="services",scope="resource",subresource="status",verb="PATCH",version="v1"} 2
apiserver_request_total{code="201",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="POST",version="v1"} 1
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="services",scope="cluster",subresource="",verb="LIST",version="v1"} 9
apiserver_request_total{code="0",component="apiserver",dry_run="",group="",resource="services",scope="cluster",subresource="",verb="WATCH",version="v1"} 3
apiserver_request_duration_seconds_count{verb="PATCH"} 7
"#;
        let c = write_request_counts(m);
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c["PATCH services/status"], 7);
        assert_eq!(c["POST leases"], 1);
    }

    #[test]
    fn crds_are_where_the_lab_reads_them() {
        assert!(crds_dir().join("ferrolb.io_ipaddresspools.yaml").is_file());
    }
}
