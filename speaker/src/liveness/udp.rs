//! The heartbeat shell: one UDP socket, one tokio task, the pure detector inside.
//!
//! ```text
//!            ┌───────────────────────── task loop (select!) ─────────────────────────┐
//!  ticker ──▶│ send Heartbeat{seq+1, serving, settled, heard} to every peer          │
//!  socket ──▶│ decode (current key, then the other accepted one) ─▶ Detector::observe│
//!  deadline ▶│ (sleep_until Detector::next_deadline)                                 │
//!  peers ───▶│ Detector::set_members (with Lease incarnations), new send targets     │
//!  ifaces ──▶│ Detector::set_self_interfaces, send a heartbeat at once               │
//!  ready ───▶│ Detector::set_ready (caches synced, responders can open)              │
//!  leave() ─▶│ 3 × LEAVING, 10 ms apart, then stop sending                          │
//!            │ after every event: Detector::tick(now); publish view and serving state │
//!            └──────────────────────────────────────────────────────────────┬────────┘
//!                       watch::Receiver<AliveView>, watch::Receiver<Option<NotServing>>
//! ```
//!
//! Time is tokio's clock (`tokio::time::Instant`), converted for the detector, so expiry is
//! noticed at the deadline (tokio's timer resolution is 1 ms) without polling. Dropping the
//! [`Liveness`] handle stops the task: peers then see this node die after the timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, trace, warn};

use super::codec::{self, DecodeError, Heard, Heartbeat, Key, KeyError, Malformed};
use super::detector::{AliveView, Config, Detector, Member, NotServing, Observed};

/// How many LEAVING datagrams [`Liveness::leave`] sends, so one lost packet does not matter.
pub const LEAVE_REPEATS: u32 = 3;
/// Pause between the LEAVING repeats.
pub const LEAVE_SPACING: Duration = Duration::from_millis(10);
/// Receive buffer requested for the heartbeat socket (best effort).
const RECV_BUFFER: usize = 1 << 20;
/// DSCP CS6 (network control) in the TOS / traffic-class byte: heartbeats go first in queues.
const TOS_CS6: u32 = 0xc0;

/// Configuration of the heartbeat task.
#[derive(Clone)]
pub struct LivenessConfig {
    /// Our Kubernetes Node name, sent in every heartbeat.
    pub node: String,
    /// Local address to bind (IPv4 or IPv6; `[::]` also reaches IPv4 peers).
    pub bind: SocketAddr,
    /// Time between heartbeats (default 100 ms).
    pub interval: Duration,
    /// Silence after which a peer is dead (default 350 ms; must be ≥ 2 × interval).
    pub timeout: Duration,
    /// How long a speaker that comes back serves before it takes IPs back (default 3 s).
    pub hold_down: Duration,
    /// Shared secret (≥ 16 bytes) from the Kubernetes Secret; keys the HMAC we send.
    pub key: Vec<u8>,
    /// Another secret whose heartbeats are accepted too (the next or the previous key
    /// during a rotation); never used to send.
    pub accept_key: Option<Vec<u8>>,
    /// This start's incarnation: random, published in our Lease so peers accept it.
    pub incarnation: u64,
}

impl LivenessConfig {
    /// A configuration with the default timings.
    pub fn new(node: impl Into<String>, bind: SocketAddr, key: Vec<u8>) -> LivenessConfig {
        let detector = Config::default();
        LivenessConfig {
            node: node.into(),
            bind,
            interval: Duration::from_millis(100),
            timeout: detector.timeout,
            hold_down: detector.hold_down,
            key,
            accept_key: None,
            incarnation: random_incarnation(),
        }
    }

    /// How long a starting speaker should wait, once it knows the members, before announcing:
    /// until then a live peer may simply not have been heard yet (one timeout + one interval).
    pub fn warmup(&self) -> Duration {
        self.timeout + self.interval
    }
}

impl fmt::Debug for LivenessConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LivenessConfig")
            .field("node", &self.node)
            .field("bind", &self.bind)
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .field("hold_down", &self.hold_down)
            .field("incarnation", &self.incarnation)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A random incarnation for this start: the keys of std's `RandomState` come from the OS's
/// random source, so no clock is involved (a clock that steps back across a restart must
/// not make the node look like a replay).
pub fn random_incarnation() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::process::id())
}

/// Why the heartbeat task could not start (all are configuration or host errors: not retryable
/// except `Bind`, which may succeed once the address is free).
#[derive(Debug, thiserror::Error)]
pub enum LivenessError {
    /// The shared secret is too short.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Our node name cannot be sent in a heartbeat.
    #[error("node name cannot be sent in a heartbeat: {0}")]
    InvalidNode(Malformed),
    /// `timeout` must be at least twice `interval` (and `interval` non-zero), or one lost
    /// heartbeat would kill a peer.
    #[error("heartbeat timeout {timeout:?} must be at least 2 × interval {interval:?} (> 0)")]
    Timing {
        /// Configured interval.
        interval: Duration,
        /// Configured timeout.
        timeout: Duration,
    },
    /// The UDP socket could not be created or bound.
    #[error("binding heartbeat socket {addr}: {source}")]
    Bind {
        /// Address we tried.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
}

/// Live counters, updated by the task without locks.
#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    send_errors: AtomicU64,
    received: AtomicU64,
    recv_errors: AtomicU64,
    accepted: AtomicU64,
    rejected_bad_tag: AtomicU64,
    rejected_stale: AtomicU64,
    rejected_malformed: AtomicU64,
    rejected_version: AtomicU64,
    rejected_unknown_node: AtomicU64,
    rejected_unknown_source: AtomicU64,
    peer_deaths: AtomicU64,
    isolations: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A point-in-time copy of the counters, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountersSnapshot {
    /// Heartbeat datagrams handed to the OS.
    pub sent: u64,
    /// Sends that failed (unreachable, buffer full, family mismatch); never fatal.
    pub send_errors: u64,
    /// Datagrams read from the socket.
    pub received: u64,
    /// Socket read errors.
    pub recv_errors: u64,
    /// Heartbeats that passed every check (LEAVING included).
    pub accepted: u64,
    /// Rejected: HMAC mismatch (wrong key, forgery, corruption).
    pub rejected_bad_tag: u64,
    /// Rejected: replayed, duplicated, reordered or from an old incarnation.
    pub rejected_stale: u64,
    /// Rejected: too short, too long, not ours (magic) or malformed body.
    pub rejected_malformed: u64,
    /// Rejected: another wire version (mixed versions during an upgrade).
    pub rejected_version: u64,
    /// Rejected: from a node that is not a member, or carrying our own name.
    pub rejected_unknown_node: u64,
    /// Dropped before any hashing: the source address is no member's heartbeat address
    /// (LAN noise or a flood; costs one lookup, not an HMAC).
    pub rejected_unknown_source: u64,
    /// Peers declared dead (timeout or LEAVING).
    pub peer_deaths: u64,
    /// Times this speaker stopped serving because it was cut off from its peers.
    pub isolations: u64,
}

impl Counters {
    fn snapshot(&self) -> CountersSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            sent: g(&self.sent),
            send_errors: g(&self.send_errors),
            received: g(&self.received),
            recv_errors: g(&self.recv_errors),
            accepted: g(&self.accepted),
            rejected_bad_tag: g(&self.rejected_bad_tag),
            rejected_stale: g(&self.rejected_stale),
            rejected_malformed: g(&self.rejected_malformed),
            rejected_version: g(&self.rejected_version),
            rejected_unknown_node: g(&self.rejected_unknown_node),
            rejected_unknown_source: g(&self.rejected_unknown_source),
            peer_deaths: g(&self.peer_deaths),
            isolations: g(&self.isolations),
        }
    }
}

enum Command {
    Leave(oneshot::Sender<()>),
}

/// Handle to the running heartbeat task; dropping it stops the task (without LEAVING).
#[derive(Debug)]
pub struct Liveness {
    commands: mpsc::Sender<Command>,
    counters: Arc<Counters>,
    local_addr: SocketAddr,
    rejoins: watch::Receiver<u64>,
    not_serving: watch::Receiver<Option<NotServing>>,
    task: JoinHandle<()>,
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Leave")
    }
}

impl Liveness {
    /// Binds the socket and starts the task (must be called inside a tokio runtime).
    ///
    /// `peers` maps each member's node name to its heartbeat address and published
    /// incarnation (our own entry, if present, is ignored); `interfaces` is our usable
    /// interface set; `ready` says whether we can answer at all. The returned receiver
    /// holds the alive view (us included only while we serve).
    pub fn spawn(
        cfg: LivenessConfig,
        peers: watch::Receiver<BTreeMap<String, PeerAddr>>,
        interfaces: watch::Receiver<BTreeSet<String>>,
        ready: watch::Receiver<bool>,
    ) -> Result<(Liveness, watch::Receiver<AliveView>), LivenessError> {
        let mut keys = vec![Key::new(&cfg.key)?];
        if let Some(k) = &cfg.accept_key {
            keys.push(Key::new(k)?);
        }
        codec::check_node(&cfg.node).map_err(LivenessError::InvalidNode)?;
        if cfg.interval.is_zero() || cfg.timeout < cfg.interval * 2 {
            return Err(LivenessError::Timing {
                interval: cfg.interval,
                timeout: cfg.timeout,
            });
        }
        let socket = bind(cfg.bind).map_err(|source| LivenessError::Bind {
            addr: cfg.bind,
            source,
        })?;
        let local_addr = socket.local_addr().map_err(|source| LivenessError::Bind {
            addr: cfg.bind,
            source,
        })?;
        let detector = Detector::new(
            cfg.node.clone(),
            BTreeSet::new(),
            Config {
                timeout: cfg.timeout,
                hold_down: cfg.hold_down,
                // Three heartbeats: peers have heard our new state before we act on it.
                grace: cfg.interval * 3,
            },
        );
        let now = Instant::now().into_std();
        let (view_tx, view_rx) = watch::channel(detector.alive(now));
        let (serving_tx, serving_rx) = watch::channel(detector.not_serving(now));
        let (rejoin_tx, rejoin_rx) = watch::channel(0u64);
        let (cmd_tx, cmd_rx) = mpsc::channel(4);
        let counters = Arc::new(Counters::default());
        let incarnation = cfg.incarnation;
        info!(node = %cfg.node, addr = %local_addr, incarnation, "heartbeats starting");
        let task = Task {
            socket,
            v6: local_addr.is_ipv6(),
            keys,
            node: cfg.node,
            incarnation,
            seq: 0,
            interval: cfg.interval,
            detector,
            targets: BTreeMap::new(),
            sources: Default::default(),
            interfaces: BTreeSet::new(),
            left: false,
            counters: counters.clone(),
            view_tx,
            serving_tx,
            rejoin_tx,
        };
        let task = tokio::spawn(task.run(peers, interfaces, ready, cmd_rx));
        Ok((
            Liveness {
                commands: cmd_tx,
                counters,
                local_addr,
                rejoins: rejoin_rx,
                not_serving: serving_rx,
                task,
            },
            view_rx,
        ))
    }

    /// Graceful shutdown: sends LEAVING to every peer [`LEAVE_REPEATS`] times,
    /// [`LEAVE_SPACING`] apart, then stops sending (peers take over at once). Call at SIGTERM.
    pub async fn leave(&self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.commands.send(Command::Leave(done_tx)).await.is_ok() {
            let _ = done_rx.await;
        }
    }

    /// Counts the times we serve again after having stopped (cut off, then heard again):
    /// meanwhile peers may have taken our IPs and clients learned their MACs, so we must
    /// announce ours again.
    pub fn rejoins(&self) -> watch::Receiver<u64> {
        self.rejoins.clone()
    }

    /// Why we do not serve (`None` while we do): for `/readyz`, logs and conditions.
    pub fn not_serving(&self) -> watch::Receiver<Option<NotServing>> {
        self.not_serving.clone()
    }

    /// The counters as they are now.
    pub fn counters(&self) -> CountersSnapshot {
        self.counters.snapshot()
    }

    /// The bound address (useful when binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for Liveness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A non-blocking UDP socket; dual-stack when IPv6, DSCP CS6 when the OS allows it.
fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
        // Best effort: priority marking is an optimisation, not a requirement.
        let _ = socket.set_tclass_v6(TOS_CS6);
    } else {
        let _ = socket.set_tos_v4(TOS_CS6);
    }
    socket.set_nonblocking(true)?;
    // Room for bursts (a flood from the LAN, a late wake-up) before the kernel drops
    // heartbeats; the kernel caps it at net.core.rmem_max.
    let _ = socket.set_recv_buffer_size(RECV_BUFFER);
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Where a member listens for heartbeats, and what its Lease says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr {
    /// Heartbeat address.
    pub addr: SocketAddr,
    /// Published incarnation; `None` (a Lease without one) accepts any newer heartbeat.
    pub incarnation: Option<u64>,
    /// The Lease was renewed within its duration, as observed by this speaker.
    pub fresh: bool,
}

struct Task {
    socket: UdpSocket,
    v6: bool,
    /// The key we sign with first, then the other accepted one.
    keys: Vec<Key>,
    node: String,
    incarnation: u64,
    seq: u64,
    interval: Duration,
    detector: Detector,
    /// Peer node → heartbeat address (ourselves excluded).
    targets: BTreeMap<String, SocketAddr>,
    /// The IP addresses of `targets` (IPv4-mapped ones as IPv4): the accepted sources.
    sources: std::collections::HashSet<IpAddr>,
    /// Our usable interfaces, as sent (invalid names dropped).
    interfaces: BTreeSet<String>,
    left: bool,
    counters: Arc<Counters>,
    view_tx: watch::Sender<AliveView>,
    serving_tx: watch::Sender<Option<NotServing>>,
    rejoin_tx: watch::Sender<u64>,
}

/// `ip`, with an IPv4-mapped IPv6 address (what a dual-stack socket reports for IPv4
/// peers) as plain IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The part of `heard` that fits one heartbeat: all of it when it fits, else a window of
/// `capacity` entries that moves on with every heartbeat, so each peer is listed at least
/// every ⌈len / capacity⌉ heartbeats (receivers keep the freshest news they got).
fn heard_window(heard: Vec<Heard>, capacity: usize, seq: u64) -> Vec<Heard> {
    if heard.len() <= capacity {
        return heard;
    }
    let len = heard.len();
    let start = usize::try_from(seq.wrapping_mul(capacity as u64) % len as u64).unwrap_or(0);
    let mut window: Vec<Heard> = (0..capacity).map(|k| heard[(start + k) % len]).collect();
    window.sort_by_key(|h| h.id);
    window
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl Task {
    async fn run(
        mut self,
        mut peers: watch::Receiver<BTreeMap<String, PeerAddr>>,
        mut interfaces: watch::Receiver<BTreeSet<String>>,
        mut ready: watch::Receiver<bool>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        self.set_peers(&peers.borrow_and_update().clone());
        self.set_interfaces(&interfaces.borrow_and_update().clone());
        self.detector.set_ready(*ready.borrow_and_update());
        self.publish();
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let (mut peers_open, mut ifaces_open, mut ready_open) = (true, true, true);
        // Largest valid heartbeat is codec::MAX_LEN; anything bigger is read truncated and
        // then refused as too long.
        let mut buf = vec![0u8; codec::MAX_LEN + 1];
        loop {
            let now = Instant::now().into_std();
            let deadline = self.detector.next_deadline(now).map(Instant::from_std);
            let mut dirty = false;
            tokio::select! {
                _ = ticker.tick(), if !self.left => self.send_heartbeat(false),
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => dirty = self.on_datagram(&buf[..len], from),
                    Err(error) => {
                        inc(&self.counters.recv_errors);
                        debug!(%error, "heartbeat receive failed");
                    }
                },
                () = sleep_until(deadline) => {}
                changed = peers.changed(), if peers_open => match changed {
                    Ok(()) => {
                        self.set_peers(&peers.borrow_and_update().clone());
                        dirty = true;
                    }
                    Err(_) => peers_open = false,
                },
                changed = interfaces.changed(), if ifaces_open => match changed {
                    Ok(()) => {
                        self.set_interfaces(&interfaces.borrow_and_update().clone());
                        if !self.left {
                            self.send_heartbeat(false);
                        }
                        dirty = true;
                    }
                    Err(_) => ifaces_open = false,
                },
                changed = ready.changed(), if ready_open => match changed {
                    Ok(()) => {
                        // Members first: ready with an empty member list would look alone.
                        if peers.has_changed().unwrap_or(false) {
                            self.set_peers(&peers.borrow_and_update().clone());
                        }
                        self.detector.set_ready(*ready.borrow_and_update());
                        dirty = true;
                    }
                    Err(_) => ready_open = false,
                },
                command = commands.recv() => match command {
                    Some(Command::Leave(done)) => {
                        self.leave().await;
                        let _ = done.send(());
                    }
                    None => return,
                },
            }
            self.tick(dirty);
        }
    }

    fn set_peers(&mut self, peers: &BTreeMap<String, PeerAddr>) {
        let old = std::mem::take(&mut self.targets);
        self.targets = peers
            .iter()
            .filter(|(node, _)| **node != self.node)
            .map(|(node, p)| (node.clone(), p.addr))
            .collect();
        let members = peers
            .iter()
            .map(|(node, p)| {
                let m = Member {
                    incarnation: p.incarnation,
                    fresh: p.fresh,
                };
                (node.clone(), m)
            })
            .collect();
        self.detector
            .set_members(members, Instant::now().into_std());
        // Members whose Lease went away while they beat are kept (a cleanup, a prune):
        // keep sending to them too, or they would stop hearing us.
        for node in self.detector.retained() {
            if let Some(addr) = old.get(node) {
                self.targets.insert(node.clone(), *addr);
            }
        }
        self.sources = self.targets.values().map(|a| canonical(a.ip())).collect();
        debug!(peers = self.targets.len(), "heartbeat peers updated");
    }

    fn set_interfaces(&mut self, wanted: &BTreeSet<String>) {
        let usable: BTreeSet<String> = wanted
            .iter()
            .filter(|name| codec::check_interface(name).is_ok())
            .take(codec::MAX_INTERFACES)
            .cloned()
            .collect();
        if usable.len() != wanted.len() {
            let dropped: Vec<&String> = wanted.difference(&usable).collect();
            warn!(
                ?dropped,
                "interfaces left out of heartbeats (invalid name or over the limit)"
            );
        }
        self.detector.set_self_interfaces(usable.clone());
        self.interfaces = usable;
    }

    fn send_heartbeat(&mut self, leaving: bool) {
        self.seq += 1;
        let now = Instant::now().into_std();
        let out = self.detector.outgoing(now);
        let hb = Heartbeat::new(
            self.node.clone(),
            self.incarnation,
            self.seq,
            self.interfaces.clone(),
        )
        .map(|hb| {
            hb.with_leaving(leaving)
                .with_state(out.serving && !leaving, out.settled)
                .with_established(out.established && !leaving)
        });
        let hb = hb.and_then(|hb| {
            let window = heard_window(out.heard, hb.heard_capacity(), self.seq);
            hb.with_heard(window)
        });
        let hb = match hb {
            Ok(hb) => hb,
            Err(error) => {
                // Unreachable: the node and interfaces were checked before, the window fits.
                warn!(%error, "cannot build heartbeat");
                return;
            }
        };
        let bytes = codec::encode(&hb, &self.keys[0]);
        for (node, addr) in &self.targets {
            match self.socket.try_send_to(&bytes, self.target(*addr)) {
                Ok(_) => inc(&self.counters.sent),
                Err(error) => {
                    inc(&self.counters.send_errors);
                    trace!(peer = %node, %addr, %error, "heartbeat send failed");
                }
            }
        }
    }

    /// IPv4 peers are reached through their IPv4-mapped address from an IPv6 socket.
    fn target(&self, addr: SocketAddr) -> SocketAddr {
        match addr.ip() {
            IpAddr::V4(v4) if self.v6 => {
                SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), addr.port())
            }
            _ => addr,
        }
    }

    async fn leave(&mut self) {
        info!(node = %self.node, "leaving: telling peers");
        self.left = true;
        for i in 0..LEAVE_REPEATS {
            if i > 0 {
                tokio::time::sleep(LEAVE_SPACING).await;
            }
            self.send_heartbeat(true);
        }
    }

    /// Handles one datagram; true when the alive view changed.
    fn on_datagram(&mut self, bytes: &[u8], from: SocketAddr) -> bool {
        let c = &self.counters;
        inc(&c.received);
        // Only members' addresses are worth an HMAC: anything else on the port is dropped
        // with one lookup (a LAN host flooding 7473 costs no hashing).
        if !self.sources.contains(&canonical(from.ip())) {
            inc(&c.rejected_unknown_source);
            trace!(%from, "datagram from an address no member uses");
            return false;
        }
        let hb = match codec::decode_any(bytes, &self.keys) {
            Ok(hb) => hb,
            Err(error) => {
                inc(match error {
                    DecodeError::BadTag => &c.rejected_bad_tag,
                    DecodeError::UnsupportedVersion { .. } => &c.rejected_version,
                    DecodeError::TooShort { .. }
                    | DecodeError::TooLong { .. }
                    | DecodeError::BadMagic
                    | DecodeError::Malformed { .. } => &c.rejected_malformed,
                });
                trace!(%from, %error, "heartbeat rejected");
                return false;
            }
        };
        let now = Instant::now().into_std();
        match self.detector.observe(&hb, now) {
            Observed::Accepted { revived } => {
                inc(&c.accepted);
                if revived {
                    info!(peer = %hb.node(), %from, interfaces = ?hb.interfaces(),
                        serving = hb.is_serving(), "peer heard");
                }
                true
            }
            Observed::Left => {
                inc(&c.accepted);
                inc(&c.peer_deaths);
                info!(peer = %hb.node(), %from, "peer left");
                true
            }
            Observed::Stale => {
                inc(&c.rejected_stale);
                trace!(peer = %hb.node(), %from, seq = hb.seq(), "stale heartbeat");
                false
            }
            Observed::UnknownNode | Observed::Own => {
                inc(&c.rejected_unknown_node);
                trace!(peer = %hb.node(), %from, "heartbeat from a non-member");
                false
            }
        }
    }

    /// Applies the time: peers gone silent, our own serving state; publishes the view.
    /// Datagrams already waiting in the socket are read first: if this process was
    /// stalled (CPU starvation, a VM pause), its peers were not silent, it was deaf, and
    /// what they sent meanwhile is queued here.
    fn tick(&mut self, dirty: bool) {
        let mut buf = [0u8; codec::MAX_LEN + 1];
        while let Ok((len, from)) = self.socket.try_recv_from(&mut buf) {
            self.on_datagram(&buf[..len], from);
        }
        let now = Instant::now().into_std();
        let t = self.detector.tick(now);
        for peer in &t.silent {
            inc(&self.counters.peer_deaths);
            warn!(peer = %peer, "peer silent: heartbeats stopped");
        }
        match t.serving {
            Some(false) => {
                let why = self.detector.not_serving(now);
                if matches!(
                    why,
                    Some(NotServing::HearNobody | NotServing::NobodyHearsUs)
                ) {
                    inc(&self.counters.isolations);
                }
                warn!(reason = ?why, "not serving: announcing nothing");
            }
            Some(true) => {
                info!(rejoined = t.rejoined, "serving");
                if t.rejoined {
                    self.rejoin_tx.send_modify(|n| *n += 1);
                }
            }
            None => {}
        }
        let _ = dirty;
        self.publish();
    }

    fn publish(&self) {
        let now = Instant::now().into_std();
        let why = self
            .detector
            .not_serving(now)
            .filter(|_| !self.detector.serving());
        self.serving_tx.send_if_modified(|current| {
            let changed = *current != why;
            *current = why;
            changed
        });
        let view = self.detector.alive(now);
        self.view_tx.send_if_modified(|current| {
            if *current == view {
                false
            } else {
                *current = view;
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant as StdInstant;
    use std::time::{SystemTime, UNIX_EPOCH};

    const KEY: &[u8] = b"ferrolb-test-shared-secret";
    const LIMIT: Duration = Duration::from_secs(2);

    struct Node {
        name: &'static str,
        incarnation: u64,
        handle: Liveness,
        view: watch::Receiver<AliveView>,
        peers: watch::Sender<BTreeMap<String, PeerAddr>>,
        interfaces: watch::Sender<BTreeSet<String>>,
        _ready: watch::Sender<bool>,
    }

    impl Node {
        fn peer(&self) -> PeerAddr {
            PeerAddr {
                addr: self.handle.local_addr(),
                incarnation: Some(self.incarnation),
                fresh: true,
            }
        }
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn spawn_node(
        cfg: LivenessConfig,
        peers_rx: watch::Receiver<BTreeMap<String, PeerAddr>>,
        ifaces_rx: watch::Receiver<BTreeSet<String>>,
    ) -> Result<(Liveness, watch::Receiver<AliveView>, watch::Sender<bool>), LivenessError> {
        let (ready, ready_rx) = watch::channel(true);
        let (handle, view) = Liveness::spawn(cfg, peers_rx, ifaces_rx, ready_rx)?;
        Ok((handle, view, ready))
    }

    fn start_with(name: &'static str, cfg: LivenessConfig) -> Node {
        let (peers, peers_rx) = watch::channel(BTreeMap::new());
        let (interfaces, ifaces_rx) = watch::channel(set(&["eth0"]));
        let incarnation = cfg.incarnation;
        let (handle, view, ready) = spawn_node(cfg, peers_rx, ifaces_rx).unwrap();
        Node {
            name,
            incarnation,
            handle,
            view,
            peers,
            interfaces,
            _ready: ready,
        }
    }

    fn start(name: &'static str) -> Node {
        let bind = "127.0.0.1:0".parse().unwrap();
        start_with(name, LivenessConfig::new(name, bind, KEY.to_vec()))
    }

    /// Tells every node about every other (full mesh, as the API would).
    fn connect(nodes: &[&Node]) {
        let all: BTreeMap<String, PeerAddr> = nodes
            .iter()
            .map(|n| (n.name.to_string(), n.peer()))
            .collect();
        for n in nodes {
            n.peers.send_replace(all.clone());
        }
    }

    /// Waits until `pred` holds for the view; returns how long it took, or the last view.
    async fn wait_for(
        view: &mut watch::Receiver<AliveView>,
        pred: impl Fn(&AliveView) -> bool,
    ) -> Result<Duration, AliveView> {
        let start = StdInstant::now();
        loop {
            if pred(&view.borrow_and_update()) {
                return Ok(start.elapsed());
            }
            let left = LIMIT.saturating_sub(start.elapsed());
            if tokio::time::timeout(left, view.changed()).await.is_err() {
                return Err(view.borrow().clone());
            }
        }
    }

    fn has(names: &[&str]) -> impl Fn(&AliveView) -> bool {
        let want = set(names);
        move |v| v.keys().cloned().collect::<BTreeSet<_>>() == want
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_speakers_see_each_other_and_a_crash() {
        let (a, b, c) = (start("a"), start("b"), start("c"));
        connect(&[&a, &b, &c]);
        for n in [&a, &b, &c] {
            let mut v = n.view.clone();
            wait_for(&mut v, has(&["a", "b", "c"])).await.unwrap();
        }
        assert_eq!(a.view.borrow()["b"].interfaces, set(&["eth0"]));

        // Crash at an arbitrary point of c's 100 ms heartbeat cycle.
        let phase = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_millis()
            % 100;
        tokio::time::sleep(Duration::from_millis(u64::from(phase))).await;
        let crash = StdInstant::now();
        drop(c.handle); // aborts the task: no LEAVING, heartbeats just stop
        let (mut va, mut vb) = (a.view.clone(), b.view.clone());
        let by_a = wait_for(&mut va, has(&["a", "b"])).await.unwrap();
        wait_for(&mut vb, has(&["a", "b"])).await.unwrap();
        let by_both = crash.elapsed();
        println!(
            "crash detection time: {by_a:?} at a, {by_both:?} at both (timeout 350 ms; crashed \
             {phase} ms after the views converged)"
        );
        assert!(by_both < LIMIT);

        let stats = a.handle.counters();
        assert!(stats.sent > 0 && stats.accepted > 0, "{stats:?}");
        assert_eq!(stats.peer_deaths, 1, "{stats:?}");
        assert_eq!(stats.rejected_bad_tag, 0, "{stats:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leave_hands_over_without_waiting_for_the_timeout() {
        // A 10 s timeout: if `b` disappears within 2 s it can only be because of LEAVING.
        let slow = |name: &'static str| {
            let mut cfg = LivenessConfig::new(name, "127.0.0.1:0".parse().unwrap(), KEY.to_vec());
            cfg.timeout = Duration::from_secs(10);
            start_with(name, cfg)
        };
        let (a, b) = (slow("a"), slow("b"));
        connect(&[&a, &b]);
        let mut va = a.view.clone();
        wait_for(&mut va, has(&["a", "b"])).await.unwrap();

        let (seen, ()) = tokio::join!(wait_for(&mut va, has(&["a"])), b.handle.leave());
        let handover = seen.unwrap();
        println!("graceful handover time: {handover:?} (from leave() to the peer's view)");
        assert!(handover < LIMIT);
        assert_eq!(a.handle.counters().peer_deaths, 1);
        let sent = b.handle.counters().sent;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(b.handle.counters().sent, sent, "no heartbeat after leaving");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_with_another_key_is_never_counted_and_counts_nobody() {
        let a = start("a");
        let bind = "127.0.0.1:0".parse().unwrap();
        let m = start_with(
            "mallory",
            LivenessConfig::new("mallory", bind, b"not-the-shared-secret".to_vec()),
        );
        connect(&[&a, &m]);
        let deadline = StdInstant::now() + LIMIT;
        while a.handle.counters().rejected_bad_tag < 5 && StdInstant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(!a.view.borrow().contains_key("mallory"));
        }
        let stats = a.handle.counters();
        assert!(stats.rejected_bad_tag >= 5, "{stats:?}");
        assert_eq!(stats.accepted, 0, "{stats:?}");
        // Both hear nobody: neither serves (neither can tell who is cut off), so no IP
        // gets two answerers; with a third, well-keyed node, a would serve (see below).
        assert!(a.view.borrow().is_empty(), "{:?}", *a.view.borrow());
        assert!(m.view.borrow().is_empty());
        assert_eq!(
            *m.handle.not_serving().borrow(),
            Some(NotServing::HearNobody)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_that_hears_nobody_serves_nothing_and_nobody_counts_it() {
        // m's heartbeat port is firewalled inbound: a and b send to a port nobody reads.
        let (a, b, m) = (start("a"), start("b"), start("m"));
        connect(&[&a, &b, &m]);
        let hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut wrong = BTreeMap::from([
            ("a".to_string(), a.peer()),
            ("b".to_string(), b.peer()),
            ("m".to_string(), m.peer()),
        ]);
        wrong.get_mut("m").unwrap().addr = hole.local_addr().unwrap();
        a.peers.send_replace(wrong.clone());
        b.peers.send_replace(wrong);
        let (mut va, mut vb, mut vm) = (a.view.clone(), b.view.clone(), m.view.clone());
        wait_for(&mut va, has(&["a", "b"])).await.unwrap();
        wait_for(&mut vb, has(&["a", "b"])).await.unwrap();
        wait_for(&mut vm, has(&[])).await.unwrap();
        assert_eq!(
            *m.handle.not_serving().borrow(),
            Some(NotServing::HearNobody)
        );
        assert!(m.handle.counters().isolations >= 1 || m.handle.counters().accepted == 0);
        // Lifted: m takes part again.
        connect(&[&a, &b, &m]);
        wait_for(&mut vm, has(&["a", "b", "m"])).await.unwrap();
        wait_for(&mut va, has(&["a", "b", "m"])).await.unwrap();
        assert_eq!(*m.handle.not_serving().borrow(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_rotate_without_a_split() {
        // Step 1: everyone signs with K1 and also accepts K2 (the next key).
        // Step 2: a signs with K2 (accepting K1); b still on step 1. No split.
        let (k1, k2) = (
            b"first-heartbeat-key-0001".to_vec(),
            b"second-heartbeat-key-002".to_vec(),
        );
        let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mk = |name: &'static str, sign: &[u8], accept: &[u8]| {
            let mut cfg = LivenessConfig::new(name, bind, sign.to_vec());
            cfg.accept_key = Some(accept.to_vec());
            start_with(name, cfg)
        };
        let a = mk("a", &k2, &k1);
        let b = mk("b", &k1, &k2);
        connect(&[&a, &b]);
        let (mut va, mut vb) = (a.view.clone(), b.view.clone());
        wait_for(&mut va, has(&["a", "b"])).await.unwrap();
        wait_for(&mut vb, has(&["a", "b"])).await.unwrap();
        assert_eq!(a.handle.counters().rejected_bad_tag, 0);
        assert_eq!(b.handle.counters().rejected_bad_tag, 0);
        // Without the accepted key, the same pair splits: what the procedure avoids.
        let c = start_with("c", LivenessConfig::new("c", bind, k2.clone()));
        let d = start_with("d", LivenessConfig::new("d", bind, k1.clone()));
        connect(&[&c, &d]);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(c.handle.counters().rejected_bad_tag > 0);
        assert!(c.view.borrow().is_empty() && d.view.borrow().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_is_accepted_through_its_lease_whatever_its_incarnation() {
        let (a, b) = (start("a"), start("b"));
        connect(&[&a, &b]);
        let mut va = a.view.clone();
        wait_for(&mut va, has(&["a", "b"])).await.unwrap();
        // b restarts with a smaller incarnation (a clock that stepped back would do that to
        // time-based incarnations): accepted once its Lease publishes it.
        drop(b);
        let mut cfg = LivenessConfig::new("b", "127.0.0.1:0".parse().unwrap(), KEY.to_vec());
        cfg.incarnation = 1;
        let b2 = start_with("b", cfg);
        connect(&[&a, &b2]);
        wait_for(&mut va, has(&["a", "b"])).await.unwrap();
        let mut vb = b2.view.clone();
        wait_for(&mut vb, has(&["a", "b"])).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn interface_changes_propagate() {
        let (a, b) = (start("a"), start("b"));
        connect(&[&a, &b]);
        let mut vb = b.view.clone();
        wait_for(&mut vb, has(&["a", "b"])).await.unwrap();

        a.interfaces
            .send_replace(set(&["bond0", "eth7", "bad/name"]));
        let took = wait_for(&mut vb, |v| {
            v.get("a").map(|l| &l.interfaces) == Some(&set(&["bond0", "eth7"]))
        })
        .await
        .unwrap();
        println!("interface change propagated in {took:?}");
        let mut va = a.view.clone();
        wait_for(&mut va, |v| {
            v.get("a").map(|l| &l.interfaces) == Some(&set(&["bond0", "eth7"]))
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_senders_are_ignored_until_they_become_members() {
        let (a, b) = (start("a"), start("b"));
        // b knows a, a does not know b yet.
        b.peers
            .send_replace(BTreeMap::from([("a".to_string(), a.peer())]));
        let deadline = StdInstant::now() + LIMIT;
        while a.handle.counters().rejected_unknown_source < 3 && StdInstant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let c = a.handle.counters();
        assert!(c.rejected_unknown_source >= 3, "{c:?}");
        assert_eq!(c.rejected_bad_tag + c.accepted, 0, "no HMAC spent: {c:?}");
        assert!(!a.view.borrow().contains_key("b"));
        connect(&[&a, &b]);
        let mut va = a.view.clone();
        wait_for(&mut va, has(&["a", "b"])).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_from_a_non_member_address_costs_no_hmac() {
        let (a, b) = (start("a"), start("b"));
        connect(&[&a, &b]);
        let mut va = a.view.clone();
        wait_for(&mut va, has(&["a", "b"])).await.unwrap();
        // Another loopback address: no member's heartbeat address.
        let Ok(rogue) = std::net::UdpSocket::bind("127.0.0.2:0") else {
            println!("127.0.0.2 unavailable here; skipping");
            return;
        };
        let junk = [0xa5u8; 200];
        for _ in 0..500 {
            let _ = rogue.send_to(&junk, a.handle.local_addr());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let c = a.handle.counters();
        // What the socket buffer kept of the burst was dropped unhashed, every datagram.
        assert!(c.rejected_unknown_source >= 100, "{c:?}");
        assert_eq!(c.received, c.accepted + c.rejected_unknown_source, "{c:?}");
        assert_eq!(c.rejected_bad_tag + c.rejected_malformed, 0, "{c:?}");
        assert!(a.view.borrow().contains_key("b"), "b stays alive");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dual_stack_socket_reaches_ipv4_peers() {
        let mut cfg = LivenessConfig::new("a", "[::]:0".parse().unwrap(), KEY.to_vec());
        cfg.bind = "[::]:0".parse().unwrap();
        let incarnation = cfg.incarnation;
        let (peers, peers_rx) = watch::channel(BTreeMap::new());
        let (_ifaces, ifaces_rx) = watch::channel(set(&["eth0"]));
        let Ok((handle, view, _ready)) = spawn_node(cfg, peers_rx, ifaces_rx) else {
            println!("IPv6 unavailable here; skipping");
            return;
        };
        let b = start("b");
        let a_addr = SocketAddr::new("127.0.0.1".parse().unwrap(), handle.local_addr().port());
        let mesh = BTreeMap::from([
            (
                "a".to_string(),
                PeerAddr {
                    addr: a_addr,
                    incarnation: Some(incarnation),
                    fresh: true,
                },
            ),
            ("b".to_string(), b.peer()),
        ]);
        peers.send_replace(mesh.clone());
        b.peers.send_replace(mesh);
        let (mut va, mut vb) = (view, b.view.clone());
        wait_for(&mut va, has(&["a", "b"])).await.unwrap();
        wait_for(&mut vb, has(&["a", "b"])).await.unwrap();
    }

    #[test]
    fn the_heard_window_lists_everyone_within_a_few_heartbeats() {
        let heard: Vec<Heard> = (0..10u32)
            .map(|id| Heard {
                id,
                age_ms: 0,
                serving: true,
                settled: true,
            })
            .collect();
        assert_eq!(heard_window(heard.clone(), 10, 7), heard);
        let mut seen = BTreeSet::new();
        for seq in 1..=3 {
            let w = heard_window(heard.clone(), 4, seq);
            assert_eq!(w.len(), 4);
            assert!(w.windows(2).all(|p| p[0].id < p[1].id));
            seen.extend(w.iter().map(|h| h.id));
        }
        assert_eq!(seen.len(), 10, "⌈10 / 4⌉ = 3 heartbeats list all");
    }

    #[test]
    fn config_is_checked() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let spawn = |cfg| {
            let (_p, peers) = watch::channel(BTreeMap::new());
            let (_i, ifaces) = watch::channel(BTreeSet::new());
            spawn_node(cfg, peers, ifaces).map(|_| ())
        };
        let short = LivenessConfig::new("a", bind, b"short".to_vec());
        assert!(matches!(spawn(short), Err(LivenessError::Key(_))));
        let mut short_accept = LivenessConfig::new("a", bind, KEY.to_vec());
        short_accept.accept_key = Some(b"short".to_vec());
        assert!(matches!(spawn(short_accept), Err(LivenessError::Key(_))));
        let nameless = LivenessConfig::new("", bind, KEY.to_vec());
        assert!(matches!(
            spawn(nameless),
            Err(LivenessError::InvalidNode(_))
        ));
        let mut tight = LivenessConfig::new("a", bind, KEY.to_vec());
        tight.timeout = Duration::from_millis(150);
        assert!(matches!(spawn(tight), Err(LivenessError::Timing { .. })));
        assert_eq!(
            LivenessConfig::new("a", bind, KEY.to_vec()).warmup(),
            Duration::from_millis(450)
        );
        let debug = format!("{:?}", LivenessConfig::new("a", bind, KEY.to_vec()));
        assert!(
            !debug.contains("ferrolb-test"),
            "key must not be printed: {debug}"
        );
        assert_ne!(random_incarnation(), random_incarnation());
    }
}
