//! The heartbeat shell: one UDP socket, one thread of its own, the engine inside.
//!
//! ```text
//!   thread "flb-heartbeats" (its own current-thread tokio runtime), loop, biased:
//!  leave() ─▶│ 3 × LEAVING to every peer, 10 ms apart, then stop sending               │
//!  pacer ───▶│ the slots due: Engine::next_slot ─▶ signed heartbeat to ≤ 32 peers each │
//!  deadline ▶│ read what is queued (≤ 1,024, ≤ 25 ms), then tick                       │
//!  peers ───▶│ Engine::set_peers; kernel source filter; socket buffers for N peers     │
//!  ifaces ──▶│ Engine::set_interfaces, a heartbeat to every peer at once               │
//!  ready ───▶│ Engine::set_ready (caches synced, responders can open)                  │
//!  socket ──▶│ ≤ 64 datagrams (≤ 2 ms): Engine::receive (source, HMAC, rate limits,    │
//!            │ signature, detector)                                                     │
//!            │ after every event: Engine::tick; publish the view (only when it may have │
//!            │ changed) and why we do not serve                                         │
//!            └──────────────────────────────────────────────────────────────┬─────────┘
//!                       watch::Receiver<AliveView>, watch::Receiver<Option<NotServing>>
//! ```
//!
//! The thread is the heartbeats' own: a busy main runtime (a big re-list, a world rebuild)
//! cannot delay a send or a receive. What is due (sends, the deadline) is judged by the
//! clock on every turn of the loop, before the socket, and each read batch is bounded, so
//! a socket that is always readable (a flood) cannot delay them either: under a flood the
//! task never waits, and the runtime's timers alone would fire seconds late. A flood from
//! an address (and port) that is no member's is dropped by the kernel ([`super::filter`])
//! before it is queued; one spoofing a member's costs an HMAC per datagram, and a member's
//! own at most its source's rate of signature checks ([`super::limits`]). The thread's
//! priority is the process's: raising it needs `CAP_SYS_NICE`, which the speaker does not
//! have.
//!
//! Time is tokio's clock (`tokio::time::Instant`), converted for the engine, so expiry is
//! noticed at the deadline (tokio's timer resolution is 1 ms) without polling an idle loop. Dropping the
//! [`Liveness`] handle stops the thread: peers then see this node die after the timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::codec::{self, Key, KeyError, Malformed, SigningKey, VerifyingKey};
use super::detector::{AliveView, Config, Departures, NotServing};
use super::engine::{Batch, Counters, Engine};
use super::{filter, limits};

pub use super::engine::{CountersSnapshot, PeerAddr};

/// How many LEAVING datagrams [`Liveness::leave`] sends, so one lost packet does not matter.
pub const LEAVE_REPEATS: u32 = 3;
/// Pause between the LEAVING repeats.
pub const LEAVE_SPACING: Duration = Duration::from_millis(10);
/// DSCP CS6 (network control) in the TOS / traffic-class byte: heartbeats go first in queues.
const TOS_CS6: u32 = 0xc0;
/// Most datagrams read per wake-up before the loop looks at its timers again.
const READ_BATCH: usize = 64;
/// Longest a read batch may take before the loop looks at its timers again.
const READ_BUDGET: Duration = Duration::from_millis(2);
/// Most datagrams read before a deadline tick (what queued while the thread was stalled).
const DEADLINE_DRAIN: usize = 1024;
/// Longest that reading may take before a deadline tick (sends wait meanwhile).
const DEADLINE_BUDGET: Duration = Duration::from_millis(25);

/// Configuration of the heartbeat thread.
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

/// A fresh Ed25519 key for this start, from the OS's random source (`getrandom(2)` on
/// Linux): it signs our heartbeats, and its public half goes into our Lease. A new key per
/// start, like the incarnation; it never leaves the process.
pub fn generate_signing_key() -> Result<SigningKey, getrandom::Error> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Why the heartbeat thread could not start (all are configuration or host errors: not
/// retryable except `Bind`, which may succeed once the address is free).
#[derive(Debug, thiserror::Error)]
pub enum LivenessError {
    /// The shared secret is too short.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The OS's random source failed, so there is no key to sign heartbeats with.
    #[error("cannot draw a heartbeat signing key from the OS random source: {0}")]
    Random(getrandom::Error),
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
    /// The heartbeat thread or its runtime could not be started.
    #[error("starting the heartbeat thread: {0}")]
    Thread(io::Error),
}

enum Command {
    Leave(oneshot::Sender<()>),
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Leave")
    }
}

/// Handle to the running heartbeat thread; dropping it stops the thread (without LEAVING).
#[derive(Debug)]
pub struct Liveness {
    commands: mpsc::Sender<Command>,
    counters: Arc<Counters>,
    local_addr: SocketAddr,
    public_key: VerifyingKey,
    rejoins: watch::Receiver<u64>,
    departures: watch::Receiver<Departures>,
    not_serving: watch::Receiver<Option<NotServing>>,
    stopped: Arc<AtomicBool>,
}

impl Liveness {
    /// Binds the socket and starts the heartbeat thread (callable from anywhere: the
    /// thread runs a runtime of its own).
    ///
    /// `peers` maps each member's node name to its heartbeat address, published incarnation
    /// and public key (our own entry, if present, is ignored); `interfaces` is our usable
    /// interface set; `ready` says whether we can answer at all. The returned receiver
    /// holds the alive view (us included only while we serve). A signing key is drawn for
    /// this start: publish [`Liveness::public_key`] in our Lease.
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
        let signer = generate_signing_key().map_err(LivenessError::Random)?;
        let public_key = signer.verifying_key();
        let socket = bind(cfg.bind).map_err(|source| LivenessError::Bind {
            addr: cfg.bind,
            source,
        })?;
        let local_addr = socket.local_addr().map_err(|source| LivenessError::Bind {
            addr: cfg.bind,
            source,
        })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(LivenessError::Thread)?;
        let counters = Arc::new(Counters::default());
        let now = Instant::now();
        let engine = Engine::new(
            cfg.node.clone(),
            cfg.incarnation,
            cfg.interval,
            Config {
                timeout: cfg.timeout,
                hold_down: cfg.hold_down,
                // Three heartbeats: peers have heard our new state before we act on it.
                grace: cfg.interval * 3,
            },
            keys,
            signer,
            counters.clone(),
            now.into_std(),
        );
        let (view_tx, view_rx) = watch::channel(engine.detector().alive(now.into_std()));
        let (departures_tx, departures_rx) = watch::channel(Departures::new());
        let (serving_tx, serving_rx) =
            watch::channel(engine.detector().not_serving(now.into_std()));
        let (rejoin_tx, rejoin_rx) = watch::channel(0u64);
        let (cmd_tx, cmd_rx) = mpsc::channel(4);
        let stopped = Arc::new(AtomicBool::new(false));
        info!(node = %cfg.node, addr = %local_addr, incarnation = cfg.incarnation,
            "heartbeats starting");
        let task = Task {
            v6: local_addr.is_ipv6(),
            interval: cfg.interval,
            engine,
            filtered: None,
            buffers_for: None,
            stopped: stopped.clone(),
            view_tx,
            departures_tx,
            serving_tx,
            rejoin_tx,
        };
        std::thread::Builder::new()
            .name("flb-heartbeats".into())
            .spawn(move || {
                runtime.block_on(async move {
                    // Registered with this thread's reactor.
                    match UdpSocket::from_std(socket) {
                        Ok(socket) => task.run(socket, peers, interfaces, ready, cmd_rx).await,
                        Err(error) => warn!(%error, "heartbeat socket unusable; stopping"),
                    }
                });
            })
            .map_err(LivenessError::Thread)?;
        Ok((
            Liveness {
                commands: cmd_tx,
                counters,
                local_addr,
                public_key,
                rejoins: rejoin_rx,
                departures: departures_rx,
                not_serving: serving_rx,
                stopped,
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

    /// When each speaker that left the alive view was last heard of (its last heartbeat,
    /// direct or relayed, or its LEAVING), updated before the view that drops it is
    /// published: a takeover's delay is measured from there.
    pub fn departures(&self) -> watch::Receiver<Departures> {
        self.departures.clone()
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

    /// The public key of this start's signing key: what our Lease must publish, or peers
    /// that know an older key of ours reject our heartbeats.
    pub fn public_key(&self) -> VerifyingKey {
        self.public_key
    }
}

impl Drop for Liveness {
    fn drop(&mut self) {
        // The thread sees the flag before its next send, and the closed command channel
        // wakes it up; it then returns without LEAVING.
        self.stopped.store(true, Ordering::SeqCst);
    }
}

/// A non-blocking UDP socket; dual-stack when IPv6, DSCP CS6 when the OS allows it.
fn bind(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
        // Best effort: priority marking is an optimisation, not a requirement.
        let _ = socket.set_tclass_v6(TOS_CS6);
    } else {
        let _ = socket.set_tos_v4(TOS_CS6);
    }
    socket.set_nonblocking(true)?;
    // Until the members are known, no source may pass (the kernel drops everything).
    if let Some(prog) = filter::source_filter([]) {
        let _ = socket.attach_filter(&filter::to_socket(&prog));
    }
    // Room for bursts (a late wake-up) before the kernel drops heartbeats; resized for the
    // number of peers once known. The kernel caps it at net.core.rmem_max.
    let _ = socket.set_recv_buffer_size(limits::recv_buffer(0));
    let _ = socket.set_send_buffer_size(limits::send_buffer(0));
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Sizes the socket's buffers for `peers` peers ([`limits::send_buffer`],
/// [`limits::recv_buffer`]); says so when the kernel caps them.
fn apply_buffers(sock: &SockRef<'_>, peers: usize) {
    let (want_snd, want_rcv) = (limits::send_buffer(peers), limits::recv_buffer(peers));
    let _ = sock.set_send_buffer_size(want_snd);
    let _ = sock.set_recv_buffer_size(want_rcv);
    // The kernel reports twice what it grants; less than asked is its cap.
    if let (Ok(snd), Ok(rcv)) = (sock.send_buffer_size(), sock.recv_buffer_size())
        && (snd < want_snd || rcv < want_rcv)
    {
        info!(
            peers,
            send = snd,
            receive = rcv,
            want_snd,
            want_rcv,
            "heartbeat socket buffers capped by the kernel (net.core.wmem_max, rmem_max)"
        );
    }
}

/// When the next slot of heartbeats is due.
struct Pacer {
    next: Instant,
}

struct Task {
    v6: bool,
    interval: Duration,
    engine: Engine,
    /// The source set the kernel filter was built for (`None`: not yet).
    filtered: Option<std::collections::HashSet<SocketAddr>>,
    /// The number of peers the socket buffers were sized for.
    buffers_for: Option<usize>,
    stopped: Arc<AtomicBool>,
    view_tx: watch::Sender<AliveView>,
    departures_tx: watch::Sender<Departures>,
    serving_tx: watch::Sender<Option<NotServing>>,
    rejoin_tx: watch::Sender<u64>,
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Why the loop woke up.
enum Woke {
    Other,
    Deadline,
    Readable,
}

impl Task {
    async fn run(
        mut self,
        socket: UdpSocket,
        mut peers: watch::Receiver<BTreeMap<String, PeerAddr>>,
        mut interfaces: watch::Receiver<BTreeSet<String>>,
        mut ready: watch::Receiver<bool>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        let now = Instant::now();
        self.set_peers(&socket, &peers.borrow_and_update().clone(), now);
        self.engine
            .set_interfaces(&interfaces.borrow_and_update().clone());
        self.engine.set_ready(*ready.borrow_and_update());
        self.tick(Instant::now());
        let mut pacer = Pacer { next: now };
        let (mut peers_open, mut ifaces_open, mut ready_open) = (true, true, true);
        // Largest valid heartbeat is codec::MAX_LEN; anything bigger is read truncated and
        // then refused as too long.
        let mut buf = vec![0u8; codec::MAX_LEN + 1];
        loop {
            if self.stopped.load(Ordering::SeqCst) {
                return;
            }
            let sending = !self.engine.left();
            // What is due by the clock first. Under a flood the socket is always readable,
            // so this task never waits and the runtime's timer driver is seldom polled: a
            // `sleep` alone would fire seconds late. The timers below only wake an idle loop.
            let now = Instant::now();
            if sending && now >= pacer.next {
                self.send_due(&socket, &mut pacer);
            }
            let deadline = self
                .engine
                .next_deadline(now.into_std())
                .map(Instant::from_std);
            if deadline.is_some_and(|d| now >= d) {
                self.read(&socket, &mut buf, DEADLINE_DRAIN, DEADLINE_BUDGET);
                self.tick(Instant::now());
                continue;
            }
            // Branches in order of urgency: a readable socket (a flood) never delays a
            // send, a deadline or a command.
            let woke = tokio::select! {
                biased;
                command = commands.recv() => match command {
                    Some(Command::Leave(done)) => {
                        self.leave(&socket).await;
                        let _ = done.send(());
                        Woke::Other
                    }
                    None => return,
                },
                () = tokio::time::sleep_until(pacer.next), if sending => {
                    self.send_due(&socket, &mut pacer);
                    Woke::Other
                }
                () = sleep_until(deadline) => Woke::Deadline,
                changed = peers.changed(), if peers_open => {
                    match changed {
                        Ok(()) => {
                            let p = peers.borrow_and_update().clone();
                            self.set_peers(&socket, &p, Instant::now());
                        }
                        Err(_) => peers_open = false,
                    }
                    Woke::Other
                }
                changed = interfaces.changed(), if ifaces_open => {
                    match changed {
                        Ok(()) => {
                            let wanted = interfaces.borrow_and_update().clone();
                            self.engine.set_interfaces(&wanted);
                            if sending {
                                let b = self.engine.all(Instant::now().into_std());
                                self.send(&socket, &b);
                            }
                        }
                        Err(_) => ifaces_open = false,
                    }
                    Woke::Other
                }
                changed = ready.changed(), if ready_open => {
                    match changed {
                        Ok(()) => {
                            // Members first: ready with an empty member list would look alone.
                            if peers.has_changed().unwrap_or(false) {
                                let p = peers.borrow_and_update().clone();
                                self.set_peers(&socket, &p, Instant::now());
                            }
                            self.engine.set_ready(*ready.borrow_and_update());
                        }
                        Err(_) => ready_open = false,
                    }
                    Woke::Other
                }
                readable = socket.readable() => {
                    if let Err(error) = readable {
                        self.engine.counters().recv_error();
                        debug!(%error, "heartbeat socket not readable");
                    }
                    Woke::Readable
                }
            };
            match woke {
                Woke::Readable => self.read(&socket, &mut buf, READ_BATCH, READ_BUDGET),
                // If this thread was stalled (CPU starvation, a VM pause), its peers were not
                // silent, it was deaf: what they sent meanwhile is queued here, read it first.
                Woke::Deadline => self.read(&socket, &mut buf, DEADLINE_DRAIN, DEADLINE_BUDGET),
                Woke::Other => {}
            }
            self.tick(Instant::now());
        }
    }

    /// Reads up to `max` datagrams, for at most `budget`.
    fn read(&mut self, socket: &UdpSocket, buf: &mut [u8], max: usize, budget: Duration) {
        let start = std::time::Instant::now();
        for _ in 0..max {
            match socket.try_recv_from(buf) {
                Ok((len, from)) => {
                    let now = std::time::Instant::now();
                    self.engine.receive(&buf[..len], from, now);
                    if now.duration_since(start) >= budget {
                        return;
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) => {
                    self.engine.counters().recv_error();
                    debug!(%error, "heartbeat receive failed");
                    return;
                }
            }
        }
    }

    /// Sends every slot due by now: one normally; after a stall, the rest of the round at
    /// once (each peer gets a heartbeat now), and the pacing starts again from now.
    fn send_due(&mut self, socket: &UdpSocket, pacer: &mut Pacer) {
        let now = Instant::now();
        let slots = self.engine.slots();
        let slot_len = self.interval / u32::try_from(slots).unwrap_or(u32::MAX).max(1);
        let late = now.saturating_duration_since(pacer.next);
        let due = usize::try_from(late.as_nanos() / slot_len.as_nanos().max(1))
            .unwrap_or(usize::MAX)
            .saturating_add(1)
            .min(slots);
        for _ in 0..due {
            let b = self.engine.next_slot(now.into_std());
            self.send(socket, &b);
        }
        pacer.next += slot_len * u32::try_from(due).unwrap_or(1);
        if pacer.next <= now {
            pacer.next = now + slot_len;
        }
    }

    fn send(&self, socket: &UdpSocket, batch: &Batch) {
        if self.stopped.load(Ordering::SeqCst) {
            return;
        }
        let counters = self.engine.counters();
        for (addr, i) in &batch.sends {
            let ok = socket.try_send_to(&batch.payloads[*i], self.target(*addr));
            if let Err(error) = &ok {
                debug!(%addr, %error, "heartbeat send failed");
            }
            counters.sent(ok.is_ok());
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

    fn set_peers(&mut self, socket: &UdpSocket, peers: &BTreeMap<String, PeerAddr>, now: Instant) {
        self.engine.set_peers(peers, now.into_std());
        let sock = SockRef::from(socket);
        // The kernel drops datagrams from any other address before they are queued.
        if self.filtered.as_ref() != Some(self.engine.sources()) {
            let sources = self.engine.sources().clone();
            let attached = match filter::source_filter(sources.iter().copied()) {
                Some(prog) => sock.attach_filter(&filter::to_socket(&prog)),
                None => {
                    warn!(
                        sources = sources.len(),
                        "too many member addresses for the kernel source filter; \
                         filtering in the heartbeat thread only"
                    );
                    sock.detach_filter()
                }
            };
            if let Err(error) = attached {
                warn!(%error, "cannot set the heartbeat socket's source filter");
            }
            self.filtered = Some(sources);
        }
        let n = self.engine.peers();
        if self.buffers_for != Some(n) {
            apply_buffers(&sock, n);
            self.buffers_for = Some(n);
        }
    }

    async fn leave(&mut self, socket: &UdpSocket) {
        info!("leaving: telling peers");
        for i in 0..LEAVE_REPEATS {
            if i > 0 {
                tokio::time::sleep(LEAVE_SPACING).await;
            }
            let b = self.engine.leaving(Instant::now().into_std());
            self.send(socket, &b);
        }
    }

    /// Applies the time; publishes the view (when it may have changed) and why we do not
    /// serve.
    fn tick(&mut self, now: Instant) {
        let update = self.engine.tick(now.into_std());
        if update.rejoined {
            self.rejoin_tx.send_modify(|n| *n += 1);
        }
        self.serving_tx.send_if_modified(|current| {
            let changed = *current != update.not_serving;
            *current = update.not_serving;
            changed
        });
        if let Some(view) = update.view {
            let detector = self.engine.detector();
            let now = now.into_std();
            self.departures_tx.send_if_modified(|d| {
                let before = d.len();
                d.retain(|n, _| !view.contains_key(n));
                let mut changed = d.len() != before;
                for name in self.view_tx.borrow().keys() {
                    if !view.contains_key(name)
                        && let Some(at) = detector.last_news(name, now)
                    {
                        changed |= d.insert(name.clone(), at) != Some(at);
                    }
                }
                changed
            });
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::liveness::codec::{Heard, Heartbeat};
    use crate::liveness::detector::NotServing;
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
                pubkey: Some(self.handle.public_key()),
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
        let dropped_at = StdInstant::now();
        wait_for(&mut vb, has(&["a", "b"])).await.unwrap();
        let by_both = crash.elapsed();
        // Where a takeover is measured from: c's last heartbeat, before the crash, and a
        // whole timeout before a gave up on it (published before the view that drops c).
        let departures = a.handle.departures().borrow().clone();
        assert_eq!(departures.keys().collect::<Vec<_>>(), ["c"]);
        let last = departures["c"];
        // A heartbeat c's thread was already sending when the handle dropped may still
        // arrive just after `crash` (the thread checks its stop flag before each send); a
        // later one would come an interval (100 ms) on.
        assert!(
            last <= crash + Duration::from_millis(50),
            "c's last heartbeat is at most one in flight after its crash: {:?} after",
            last.saturating_duration_since(crash)
        );
        assert!(
            dropped_at.duration_since(last) >= Duration::from_millis(350),
            "dropped {:?} after its last heartbeat",
            dropped_at.duration_since(last)
        );
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

        let leave_at = StdInstant::now();
        let (seen, ()) = tokio::join!(wait_for(&mut va, has(&["a"])), b.handle.leave());
        let handover = seen.unwrap();
        let left = a.handle.departures().borrow().get("b").copied();
        assert!(
            left.is_some_and(|t| t >= leave_at),
            "measured from the LEAVING, not from b's last regular heartbeat: {left:?}"
        );
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
        while b.handle.counters().sent < 5 && StdInstant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let c = a.handle.counters();
        assert!(b.handle.counters().sent >= 5);
        // Dropped by the kernel filter, or (what got past it) with one lookup: no HMAC.
        assert_eq!(c.received, c.rejected_unknown_source, "{c:?}");
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
        // Another loopback address (no member's), and another socket of the members' own
        // address (not a heartbeat socket).
        let Ok(rogue) = std::net::UdpSocket::bind("127.0.0.2:0") else {
            println!("127.0.0.2 unavailable here; skipping");
            return;
        };
        let neighbour = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = a.handle.counters();
        let junk = [0xa5u8; 200];
        let mut sent = 0;
        for _ in 0..5000 {
            for s in [&rogue, &neighbour] {
                if s.send_to(&junk, a.handle.local_addr()).is_ok() {
                    sent += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(sent > 2000, "the flood was sent: {sent}");
        // The kernel filter dropped every datagram before the socket queue: the thread
        // read only b's heartbeats, all accepted. (The counters are read one by one while
        // b's heartbeats keep coming: one may be counted received and not yet accepted, so
        // read again until none is halfway.)
        let in_flight = |c: &CountersSnapshot| {
            i128::from(c.received - before.received) - i128::from(c.accepted - before.accepted)
        };
        let mut c = a.handle.counters();
        for _ in 0..50 {
            if in_flight(&c) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            c = a.handle.counters();
        }
        assert_eq!(c.rejected_unknown_source, 0, "{c:?}");
        assert_eq!(in_flight(&c), 0, "{c:?}");
        assert_eq!(c.rejected_bad_tag + c.rejected_malformed, 0, "{c:?}");
        assert!(a.view.borrow().contains_key("b"), "b stays alive");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_it_must_read_does_not_delay_its_heartbeats() {
        // Junk from a member's own heartbeat address (it passes the kernel filter and the
        // source check: one HMAC each), as fast as one thread sends, for 1.5 s.
        let (a, b) = (start("a"), start("b"));
        let junk_socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut mesh = BTreeMap::from([("a".to_string(), a.peer()), ("b".to_string(), b.peer())]);
        let m = PeerAddr {
            addr: junk_socket.local_addr().unwrap(),
            incarnation: Some(9),
            fresh: false,
            pubkey: Some(generate_signing_key().unwrap().verifying_key()),
        };
        mesh.insert("m".into(), m);
        a.peers.send_replace(mesh.clone());
        b.peers.send_replace(mesh);
        let (mut va, mut vb) = (a.view.clone(), b.view.clone());
        wait_for(&mut va, has(&["a", "b"])).await.unwrap();
        wait_for(&mut vb, has(&["a", "b"])).await.unwrap();
        let to = a.handle.local_addr();
        let flood = std::thread::spawn(move || {
            let mut junk = vec![0xa5u8; codec::MAX_LEN];
            junk[..5].copy_from_slice(b"FLHB\x03");
            let end = StdInstant::now() + Duration::from_millis(1500);
            let mut sent = 0u64;
            while StdInstant::now() < end {
                for _ in 0..64 {
                    if junk_socket.send_to(&junk, to).is_ok() {
                        sent += 1;
                    }
                }
            }
            sent
        });
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (sent0, b0) = (a.handle.counters().sent, b.handle.counters());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (sent1, b1) = (a.handle.counters().sent, b.handle.counters());
        let flooded = flood.join().unwrap();
        let c = a.handle.counters();
        println!(
            "flood of {flooded} datagrams in 1.5 s; a read {} and sent {} heartbeats in 1 s",
            c.received,
            sent1 - sent0
        );
        assert!(c.rejected_bad_tag > 1000, "the flood reached a: {c:?}");
        // Two peers (b and m), ten a second each.
        assert!(
            sent1 - sent0 >= 16,
            "a sent {} in 1 s: {c:?}",
            sent1 - sent0
        );
        assert_eq!(b1.peer_deaths, b0.peer_deaths, "b never lost a: {b1:?}");
        // (What a hears is another matter: b's heartbeats drown in a's full buffer with
        // the junk; a may find itself cut off and stop serving. Never two answerers.)
    }

    #[test]
    fn heartbeats_keep_going_while_the_callers_runtime_is_blocked() {
        // One current-thread runtime for the whole test: blocking it stops everything
        // that runs on it (as a world rebuild or a big re-list can on the speaker's).
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (a, b) = (start("a"), start("b"));
            connect(&[&a, &b]);
            let mut va = a.view.clone();
            wait_for(&mut va, has(&["a", "b"])).await.unwrap();
            let (sa, sb) = (a.handle.counters().sent, b.handle.counters().sent);
            // A second without a single await.
            std::thread::sleep(Duration::from_secs(1));
            let (ca, cb) = (a.handle.counters(), b.handle.counters());
            // Ten a second each; half is plenty (on the blocked runtime: none).
            assert!(ca.sent >= sa + 5, "a kept sending: {sa} → {}", ca.sent);
            assert!(cb.sent >= sb + 5, "b kept sending: {sb} → {}", cb.sent);
            assert_eq!(ca.peer_deaths + cb.peer_deaths, 0, "{ca:?} {cb:?}");
            assert!(has(&["a", "b"])(&a.view.borrow()));
        });
    }

    #[test]
    fn socket_buffers_are_sized_for_the_peers() {
        let socket = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let cap = |f: &str| -> usize {
            std::fs::read_to_string(format!("/proc/sys/net/core/{f}"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(usize::MAX)
        };
        let sock = SockRef::from(&socket);
        apply_buffers(&sock, 1000);
        // The kernel grants min(asked, its cap) and reports twice that.
        let want_snd = limits::send_buffer(1000).min(cap("wmem_max"));
        let want_rcv = limits::recv_buffer(1000).min(cap("rmem_max"));
        assert!(sock.send_buffer_size().unwrap() >= want_snd, "{want_snd}");
        assert!(sock.recv_buffer_size().unwrap() >= want_rcv, "{want_rcv}");
        assert!(limits::send_buffer(1000) >= 1000 * codec::MAX_LEN);
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
                    pubkey: Some(handle.public_key()),
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

    /// A node with a 10 s timeout: if a peer disappears within [`LIMIT`], only a LEAVING
    /// heartbeat can have done it.
    fn slow(name: &'static str) -> Node {
        let mut cfg = LivenessConfig::new(name, "127.0.0.1:0".parse().unwrap(), KEY.to_vec());
        cfg.timeout = Duration::from_secs(10);
        start_with(name, cfg)
    }

    /// A heartbeat that says LEAVING for `victim`, with its published incarnation and a
    /// sequence above anything it sent: all a holder of the cluster key can make up.
    fn forged_leaving(victim: &Node) -> Heartbeat {
        Heartbeat::new(
            victim.name,
            victim.incarnation,
            u64::MAX / 2,
            set(&["eth0"]),
        )
        .unwrap()
        .with_leaving(true)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_forged_leaving_from_a_third_socket_does_not_remove_a_live_peer() {
        let (a, b) = (slow("a"), slow("b"));
        connect(&[&a, &b]);
        let mut va = a.view.clone();
        wait_for(&mut va, has(&["a", "b"])).await.unwrap();
        // Mallory: a compromised member (so it passes the source check), holding the
        // cluster key and a signing key of its own, published in its Lease.
        let mallory = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let key = Key::new(KEY).unwrap();
        let own = generate_signing_key().unwrap();
        let member = |pubkey, fresh| PeerAddr {
            addr: mallory.local_addr().unwrap(),
            incarnation: Some(7),
            fresh,
            pubkey,
        };
        let mut mesh = BTreeMap::from([("a".to_string(), a.peer()), ("b".to_string(), b.peer())]);
        mesh.insert("mallory".into(), member(Some(own.verifying_key()), true));
        a.peers.send_replace(mesh);
        // a's first heartbeat to Mallory: a knows it as a member from then on.
        mallory.set_read_timeout(Some(LIMIT)).unwrap();
        mallory.recv(&mut [0u8; 1500]).unwrap();
        let hb = forged_leaving(&b);
        let forgeries = [codec::encode(&hb, &key, &own), codec::encode_v2(&hb, &key)];
        for bytes in forgeries.iter().cycle().take(6) {
            mallory.send_to(bytes, a.handle.local_addr()).unwrap();
        }
        let deadline = StdInstant::now() + LIMIT;
        while a.handle.counters().rejected_bad_signature < 6 && StdInstant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let c = a.handle.counters();
        assert_eq!(c.rejected_bad_signature, 6, "{c:?}");
        assert_eq!(c.peer_deaths, 0, "{c:?}");
        assert!(a.view.borrow().contains_key("b"), "{:?}", *a.view.borrow());

        // Without published keys (a cluster of previous-version speakers), the same
        // unsigned LEAVING takes b out at once: what the keys prevent.
        let (c1, d1) = (slow("c"), slow("d"));
        let unkeyed: BTreeMap<String, PeerAddr> = [&c1, &d1]
            .iter()
            .map(|n| {
                let p = PeerAddr {
                    pubkey: None,
                    ..n.peer()
                };
                (n.name.to_string(), p)
            })
            .collect();
        let mut with_mallory = unkeyed.clone();
        // (Its Lease not renewed lately: once d is gone, c hears no member that counts,
        // and serves alone.)
        with_mallory.insert("mallory".into(), member(None, false));
        c1.peers.send_replace(with_mallory);
        d1.peers.send_replace(unkeyed);
        let mut vc = c1.view.clone();
        wait_for(&mut vc, has(&["c", "d"])).await.unwrap();
        let mut buf = [0u8; 1500];
        while mallory.recv_from(&mut buf).unwrap().1 != c1.handle.local_addr() {}
        let forged = codec::encode_v2(&forged_leaving(&d1), &key);
        mallory.send_to(&forged, c1.handle.local_addr()).unwrap();
        wait_for(&mut vc, has(&["c"])).await.unwrap();
        assert_eq!(c1.handle.counters().peer_deaths, 1);
        assert_eq!(c1.handle.counters().rejected_bad_signature, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_previous_version_peer_gets_v2_and_is_heard_on_the_hmac_until_its_lease_has_a_key() {
        let a = start("a");
        // "old": a speaker of the previous version, HMAC only; its Lease publishes no key.
        let old = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let old_peer = PeerAddr {
            addr: old.local_addr().unwrap(),
            incarnation: Some(5),
            fresh: true,
            pubkey: None,
        };
        let mesh =
            |old: PeerAddr| BTreeMap::from([("a".to_string(), a.peer()), ("old".into(), old)]);
        a.peers.send_replace(mesh(old_peer));
        let key = Key::new(KEY).unwrap();
        let heard_a = Heard {
            id: codec::node_id("a"),
            age_ms: 0,
            serving: true,
            settled: true,
        };
        let mut seq = 0;
        let mut beat = || {
            seq += 1;
            let hb = Heartbeat::new("old", 5, seq, set(&["eth0"]))
                .unwrap()
                .with_state(true, true)
                .with_heard(vec![heard_a])
                .unwrap();
            codec::encode_v2(&hb, &key)
        };
        let mut buf = [0u8; codec::MAX_LEN + 1];
        let mut va = a.view.clone();
        let deadline = StdInstant::now() + LIMIT;
        let mut versions = BTreeSet::new();
        while !has(&["a", "old"])(&va.borrow_and_update()) && StdInstant::now() < deadline {
            old.send_to(&beat(), a.handle.local_addr()).await.unwrap();
            while let Ok((len, _)) = old.try_recv_from(&mut buf) {
                versions.insert(buf[4]);
                // What a previous-version speaker can read: version 2, the HMAC alone.
                let hb = codec::decode(&buf[..len], &key)
                    .unwrap()
                    .verify(None)
                    .unwrap();
                assert_eq!(hb.node(), "a");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(has(&["a", "old"])(&va.borrow()), "{:?}", *va.borrow());
        assert_eq!(versions, BTreeSet::from([codec::VERSION_V2]));
        assert_eq!(a.handle.counters().rejected_bad_signature, 0);

        // Its Lease now publishes a key (it was upgraded): a signs what it sends there, and
        // turns its unsigned heartbeats away.
        let upgraded = generate_signing_key().unwrap().verifying_key();
        a.peers.send_replace(mesh(PeerAddr {
            pubkey: Some(upgraded),
            ..old_peer
        }));
        let deadline = StdInstant::now() + LIMIT;
        let mut signed = false;
        while (!signed || a.handle.counters().rejected_bad_signature < 3)
            && StdInstant::now() < deadline
        {
            old.send_to(&beat(), a.handle.local_addr()).await.unwrap();
            while let Ok((len, _)) = old.try_recv_from(&mut buf) {
                if buf[4] == codec::VERSION {
                    let hb = codec::decode(&buf[..len], &key)
                        .unwrap()
                        .verify(Some(&a.handle.public_key()))
                        .unwrap();
                    assert_eq!(hb.node(), "a");
                    signed = true;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(signed, "a signs for a peer whose Lease has a key");
        assert!(a.handle.counters().rejected_bad_signature >= 3);
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
