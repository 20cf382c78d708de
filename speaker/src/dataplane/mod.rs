//! The speaker's data plane: answers ARP/NDP for the IPs this node announces and sends
//! gratuitous ARP / unsolicited NA when it takes one over.
//!
//! ```text
//!  speaker core ──set_announcements(IP → ifaces)──┐      LinkWatcher ──set_links(Links)──┐
//!                                                 ▼                                      ▼
//!                                  DataPlane::reconcile ── narrow_to_subnets ── AnnounceSet
//!                                        │                  (answers, swapped first)
//!                                        │ one worker per (interface, family) that has IPs
//!                     ┌──────────────────┴──────────────────┐
//!             worker eth0/arp (thread)             worker eth0/ndp (thread)
//!             AF_PACKET ETH_P_ARP                  AF_PACKET ETH_P_IPV6 + BPF(NS only)
//!             recv ─▶ decide_arp ─▶ reply          recv ─▶ decide_ndp ─▶ reply; joins
//!             AnnounceTimer ─▶ gratuitous ARP      solicited-node groups; unsolicited NA
//! ```
//!
//! Decisions are pure ([`responder`], [`schedule`], [`links`] classification and subnet
//! narrowing, [`socket::responder_filter`]); this module only owns threads and sockets.
//! Withdrawn IPs stop being answered as soon as `set_announcements` returns; dropping the
//! [`DataPlane`] stops every worker within one poll interval (50 ms by default).

pub mod links;
pub mod responder;
pub mod schedule;
pub mod socket;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{debug, info, trace, warn};

pub use links::{DEFAULT_EXCLUDE, LinkInfo, LinkWatcher, Links, narrow_to_subnets, usable};
pub use responder::{AnnounceSet, DropReason, decide_arp, decide_ndp};
pub use schedule::AnnounceSchedule;
pub use socket::Family;

use crate::wire::arp::ArpRepr;
use crate::wire::ndp::{NeighborAdvertRepr, solicited_node_multicast};
use schedule::AnnounceTimer;
use socket::{Membership, ResponderSocket};

/// Whether this node can answer ARP/NDP at all: a responder socket opens on at least one
/// usable interface (an interface that is up and not excluded; root or CAP_NET_RAW). A
/// speaker that cannot is not ready, so peers do not elect it for IPs it would leave dark.
pub fn can_answer(links: &Links) -> Result<(), String> {
    let mut errors = Vec::new();
    for (name, link) in links.iter().filter(|(_, l)| l.up) {
        match ResponderSocket::open(name, link, Family::V4, Duration::from_millis(10)) {
            Ok(_) => return Ok(()),
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    if errors.is_empty() {
        return Err("no usable interface (up and not excluded)".into());
    }
    Err(format!("no responder socket opens: {}", errors.join("; ")))
}

/// The speaker's desired announcements: each IP and the interfaces the election allows
/// for it on this node (the data plane answers on the one whose subnet holds the IP when
/// exactly one does: [`narrow_to_subnets`]).
pub type Announcements = BTreeMap<IpAddr, BTreeSet<String>>;

/// Tunables of the data plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataPlaneConfig {
    /// Repeats and optional refresh of gratuitous ARP / unsolicited NA.
    pub schedule: AnnounceSchedule,
    /// Longest a responder waits for a frame: bounds how late a stop or a scheduled repeat
    /// can be (a frame wakes it at once).
    pub poll_interval: Duration,
    /// Join the solicited-node group of each announced IPv6 address (needed on real NICs,
    /// which filter multicast).
    pub join_solicited_node_groups: bool,
}

impl Default for DataPlaneConfig {
    fn default() -> Self {
        DataPlaneConfig {
            schedule: AnnounceSchedule::default(),
            poll_interval: Duration::from_millis(50),
            join_solicited_node_groups: true,
        }
    }
}

/// Counters of one protocol (ARP or NDP); atomics, so workers count without locks.
#[derive(Debug, Default)]
pub struct ProtoCounters {
    requests: AtomicU64,
    replies: AtomicU64,
    announcements: AtomicU64,
    send_errors: AtomicU64,
    recv_errors: AtomicU64,
    drops: [AtomicU64; DropReason::LABELS.len()],
}

/// A point-in-time copy of [`ProtoCounters`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProtoSnapshot {
    /// Frames read from the responder sockets (answered or dropped).
    pub requests: u64,
    /// Replies sent.
    pub replies: u64,
    /// Gratuitous ARP / unsolicited NA frames sent.
    pub announcements: u64,
    /// Frames (replies or announcements) the socket refused.
    pub send_errors: u64,
    /// Socket read errors other than timeouts.
    pub recv_errors: u64,
    /// Unanswered frames by [`DropReason::as_str`] label (every label present).
    pub drops: BTreeMap<&'static str, u64>,
}

impl ProtoCounters {
    fn snapshot(&self) -> ProtoSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProtoSnapshot {
            requests: get(&self.requests),
            replies: get(&self.replies),
            announcements: get(&self.announcements),
            send_errors: get(&self.send_errors),
            recv_errors: get(&self.recv_errors),
            drops: DropReason::LABELS
                .iter()
                .zip(self.drops.iter())
                .map(|(l, a)| (*l, get(a)))
                .collect(),
        }
    }
}

/// All data-plane counters.
#[derive(Debug, Default)]
pub struct Counters {
    arp: ProtoCounters,
    ndp: ProtoCounters,
    open_errors: AtomicU64,
    join_errors: AtomicU64,
}

/// A point-in-time copy of [`Counters`], for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CountersSnapshot {
    /// ARP (IPv4).
    pub arp: ProtoSnapshot,
    /// NDP (IPv6).
    pub ndp: ProtoSnapshot,
    /// Responder sockets that could not be opened.
    pub open_errors: u64,
    /// Solicited-node multicast groups that could not be joined.
    pub join_errors: u64,
}

impl Counters {
    fn proto(&self, family: Family) -> &ProtoCounters {
        match family {
            Family::V4 => &self.arp,
            Family::V6 => &self.ndp,
        }
    }

    /// Copies every counter.
    pub fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            arp: self.arp.snapshot(),
            ndp: self.ndp.snapshot(),
            open_errors: self.open_errors.load(Ordering::Relaxed),
            join_errors: self.join_errors.load(Ordering::Relaxed),
        }
    }
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking worker must not take the whole data plane down with it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// State shared by the handle and every worker.
#[derive(Debug, Default)]
struct Shared {
    counters: Counters,
    answers: RwLock<Arc<AnnounceSet>>,
}

impl Shared {
    fn answers(&self) -> Arc<AnnounceSet> {
        self.answers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// What one worker announces, and its timers and group memberships.
struct WorkerState {
    ips: BTreeSet<IpAddr>,
    timer: AnnounceTimer<IpAddr>,
    groups: BTreeMap<Ipv6Addr, (Membership, usize)>,
}

/// The part of a worker both its thread and the handle use.
struct WorkerShared {
    name: String,
    family: Family,
    link: LinkInfo,
    stop: AtomicBool,
    /// Read by the worker's thread only; sent on by it and by the handle (announcements).
    socket: ResponderSocket,
    state: Mutex<WorkerState>,
}

impl WorkerShared {
    fn send(&self, frame: &[u8], counters: &ProtoCounters) -> bool {
        match self.socket.send(frame) {
            Ok(()) => true,
            Err(e) => {
                bump(&counters.send_errors);
                warn!(iface = %self.name, error = %e, "sending frame failed");
                false
            }
        }
    }

    /// Sends one round of gratuitous ARP (request and reply forms) or unsolicited NA.
    fn announce(&self, ip: IpAddr, counters: &Counters) {
        let c = counters.proto(self.family);
        let mac = self.link.mac;
        let frames: Vec<Vec<u8>> = match ip {
            IpAddr::V4(v4) => vec![
                ArpRepr::gratuitous(v4, mac).to_bytes(),
                ArpRepr::gratuitous_reply(v4, mac).to_bytes(),
            ],
            IpAddr::V6(v6) => vec![NeighborAdvertRepr::unsolicited(v6, mac).to_bytes()],
        };
        for f in frames {
            if self.send(&f, c) {
                bump(&c.announcements);
            }
        }
        debug!(iface = %self.name, %ip, "announced");
    }

    /// Answers or drops one received frame.
    fn handle(&self, frame: &[u8], shared: &Shared) {
        let c = shared.counters.proto(self.family);
        bump(&c.requests);
        let answers = shared.answers();
        let mut buf = [0u8; 128];
        let decided = match self.family {
            Family::V4 => decide_arp(frame, self.link.mac, &self.name, &answers)
                .map(|r| (r.emit(&mut buf), IpAddr::V4(r.sender_ip))),
            Family::V6 => decide_ndp(frame, self.link.mac, &self.name, &answers)
                .map(|r| (r.emit(&mut buf), IpAddr::V6(r.target))),
        };
        match decided {
            Ok((Ok(len), ip)) => {
                if self.send(&buf[..len], c) {
                    bump(&c.replies);
                    debug!(iface = %self.name, %ip, "answered");
                }
            }
            Ok((Err(e), _)) => {
                bump(&c.send_errors);
                warn!(iface = %self.name, error = %e, "could not build reply");
            }
            Err(reason) => {
                bump(&c.drops[reason.index()]);
                trace!(iface = %self.name, proto = self.family.as_str(), reason = reason.as_str(), detail = ?reason, "dropped");
            }
        }
    }

    /// Brings the worker's IP set to `want`: new IPs are announced at once and scheduled,
    /// withdrawn ones unscheduled; IPv6 group memberships follow.
    fn sync(&self, want: &BTreeSet<IpAddr>, config: &DataPlaneConfig, counters: &Counters) {
        let mut st = lock(&self.state);
        let now = Instant::now();
        let removed: Vec<IpAddr> = st.ips.difference(want).copied().collect();
        let added: Vec<IpAddr> = want.difference(&st.ips).copied().collect();
        for ip in &removed {
            st.timer.cancel(ip);
            if let IpAddr::V6(v6) = ip {
                let group = solicited_node_multicast(*v6);
                if let Some((_, refs)) = st.groups.get_mut(&group) {
                    *refs -= 1;
                    if *refs == 0 {
                        st.groups.remove(&group);
                    }
                }
            }
            info!(iface = %self.name, %ip, "withdrawn");
        }
        for ip in &added {
            if let (IpAddr::V6(v6), true) = (ip, config.join_solicited_node_groups) {
                self.join(&mut st, solicited_node_multicast(*v6), counters);
            }
            st.timer.start(*ip, now);
            info!(iface = %self.name, %ip, "announcing");
        }
        st.ips = want.clone();
        drop(st);
        for ip in added {
            self.announce(ip, counters);
        }
    }

    fn join(&self, st: &mut WorkerState, group: Ipv6Addr, counters: &Counters) {
        if let Some((_, refs)) = st.groups.get_mut(&group) {
            *refs += 1;
            return;
        }
        match Membership::join(group, self.link.index) {
            Ok(m) => {
                st.groups.insert(group, (m, 1));
            }
            Err(e) => {
                bump(&counters.join_errors);
                warn!(iface = %self.name, %group, error = %e, "joining solicited-node group failed");
            }
        }
    }

    /// Restarts the announcement cadence of every IP (the link came back up).
    fn reannounce(&self, counters: &Counters) {
        let ips: Vec<IpAddr> = {
            let mut st = lock(&self.state);
            let now = Instant::now();
            let ips: Vec<IpAddr> = st.ips.iter().copied().collect();
            for ip in &ips {
                st.timer.start(*ip, now);
            }
            ips
        };
        for ip in ips {
            self.announce(ip, counters);
        }
    }
}

/// Which responders must run: one per (interface, family) that is up and has IPs of that
/// family to announce, with those IPs. Interfaces unknown or down get none.
pub fn plan_workers(
    desired: &Announcements,
    links: &Links,
) -> BTreeMap<(String, Family), BTreeSet<IpAddr>> {
    let mut wanted: BTreeMap<(String, Family), BTreeSet<IpAddr>> = BTreeMap::new();
    for (ip, ifaces) in desired {
        let family = if ip.is_ipv4() { Family::V4 } else { Family::V6 };
        for iface in ifaces {
            if links.get(iface).is_some_and(|l| l.up) {
                wanted
                    .entry((iface.clone(), family))
                    .or_default()
                    .insert(*ip);
            }
        }
    }
    wanted
}

/// Bytes read of one frame: more than any ARP or Neighbor Solicitation frame (a longer
/// frame is truncated and then dropped as malformed, or answered if still whole).
const RECV_BUFFER: usize = 4096;

fn run_worker(w: Arc<WorkerShared>, shared: Arc<Shared>) {
    let idle = Duration::from_millis(20);
    let mut buf = vec![0u8; RECV_BUFFER];
    while !w.stop.load(Ordering::Acquire) {
        let due = lock(&w.state).timer.due(Instant::now());
        if !due.is_empty() {
            // A repeat may race a withdrawal; the answer set has the last word.
            let answers = shared.answers();
            for ip in due {
                if answers.lookup(ip, &w.name) == responder::Announced::Here {
                    w.announce(ip, &shared.counters);
                }
            }
        }
        match w.socket.recv(&mut buf) {
            Ok(Some(frame)) => w.handle(frame, &shared),
            Ok(None) => {}
            Err(e) => {
                bump(&shared.counters.proto(w.family).recv_errors);
                debug!(iface = %w.name, error = %e, "receive failed");
                std::thread::sleep(idle);
            }
        }
    }
    debug!(iface = %w.name, proto = w.family.as_str(), "responder stopped");
}

struct Worker {
    shared: Arc<WorkerShared>,
    thread: JoinHandle<()>,
    /// The link as last seen, to notice carrier flaps.
    link: LinkInfo,
}

#[derive(Default)]
struct PlaneState {
    links: Links,
    desired: Announcements,
    workers: BTreeMap<(String, Family), Worker>,
    stopped: Vec<JoinHandle<()>>,
    shut_down: bool,
}

/// Handle of the data plane; the speaker feeds it links and announcements.
///
/// Cheap to call repeatedly with unchanged input. Dropping it stops everything.
pub struct DataPlane {
    config: DataPlaneConfig,
    shared: Arc<Shared>,
    state: Mutex<PlaneState>,
}

impl DataPlane {
    /// A data plane with nothing announced (no socket is opened until needed).
    pub fn new(config: DataPlaneConfig) -> DataPlane {
        DataPlane {
            config,
            shared: Arc::default(),
            state: Mutex::default(),
        }
    }

    /// Updates the candidate interfaces (from [`LinkWatcher`]); interfaces that come up get
    /// their IPs announced again, ones that go down or vanish close their sockets.
    pub fn set_links(&self, links: Links) {
        let mut st = lock(&self.state);
        if st.shut_down || st.links == links {
            return;
        }
        st.links = links;
        self.reconcile(&mut st);
    }

    /// Sets what this node announces: IP → interfaces. Withdrawn IPs are not answered any
    /// more when this returns; new (IP, interface) pairs are announced before it returns.
    pub fn set_announcements(&self, desired: Announcements) {
        let mut st = lock(&self.state);
        if st.shut_down {
            return;
        }
        st.desired = desired;
        self.reconcile(&mut st);
    }

    /// Announces every current IP again (gratuitous ARP / unsolicited NA, with repeats):
    /// after a partition heals, clients that learned another node's MAC come back.
    pub fn announce_again(&self) {
        let st = lock(&self.state);
        for w in st.workers.values() {
            w.shared.reannounce(&self.shared.counters);
        }
    }

    /// A copy of every counter.
    pub fn counters(&self) -> CountersSnapshot {
        self.shared.counters.snapshot()
    }

    /// What is being answered right now, per interface: IPs with a running responder.
    pub fn active(&self) -> BTreeMap<String, BTreeSet<IpAddr>> {
        let st = lock(&self.state);
        let mut out: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
        for ((name, _), w) in &st.workers {
            out.entry(name.clone())
                .or_default()
                .extend(lock(&w.shared.state).ips.iter().copied());
        }
        out
    }

    /// Follows a link watcher: calls [`DataPlane::set_links`] on every change until the
    /// watcher is dropped. Needs a tokio runtime.
    pub fn follow_links(
        self: &Arc<Self>,
        mut rx: tokio::sync::watch::Receiver<Links>,
    ) -> tokio::task::JoinHandle<()> {
        let plane = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let links = rx.borrow_and_update().clone();
                let p = Arc::clone(&plane);
                // set_links may open sockets; keep it off the async workers.
                if tokio::task::spawn_blocking(move || p.set_links(links))
                    .await
                    .is_err()
                {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
    }

    /// Stops answering everything and joins every worker thread (within one poll interval).
    /// Idempotent; also done on drop.
    pub fn shutdown(&self) {
        let mut st = lock(&self.state);
        st.shut_down = true;
        st.desired.clear();
        *self
            .shared
            .answers
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::default();
        let workers = std::mem::take(&mut st.workers);
        for w in workers.values() {
            w.shared.stop.store(true, Ordering::Release);
        }
        let mut threads: Vec<JoinHandle<()>> = std::mem::take(&mut st.stopped);
        threads.extend(workers.into_values().map(|w| w.thread));
        drop(st);
        for t in threads {
            let _ = t.join();
        }
    }

    fn reconcile(&self, st: &mut PlaneState) {
        // 1. Each IP only on its on-link interface when exactly one allowed interface has
        //    it; then which (interface, family) needs a worker, with which IPs.
        let effective = narrow_to_subnets(&st.desired, &st.links);
        let wanted = plan_workers(&effective, &st.links);

        // 2. Answers first: a withdrawal takes effect before any socket is touched.
        *self
            .shared
            .answers
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(AnnounceSet::new(effective));

        // 3. Stop workers no longer wanted, whose link changed identity, or that died.
        let keys: Vec<(String, Family)> = st.workers.keys().cloned().collect();
        for key in keys {
            let link = st.links.get(&key.0);
            let worker = &st.workers[&key];
            let keep = wanted.contains_key(&key)
                && !worker.thread.is_finished()
                && link.is_some_and(|l| {
                    let cur = &worker.shared.link;
                    l.index == cur.index && l.mac == cur.mac
                });
            if !keep && let Some(w) = st.workers.remove(&key) {
                w.shared.stop.store(true, Ordering::Release);
                info!(iface = %key.0, proto = key.1.as_str(), "responder stopping");
                st.stopped.push(w.thread);
            }
        }
        st.stopped.retain(|t| !t.is_finished());

        // 4. Start missing workers, sync the others; re-announce after a carrier flap.
        for (key, ips) in wanted {
            let link = st.links[&key.0].clone();
            if let Some(w) = st.workers.get_mut(&key) {
                let flapped = link.carrier_ups != w.link.carrier_ups;
                w.link = link;
                if flapped {
                    info!(iface = %key.0, proto = key.1.as_str(), "link came back; announcing again");
                    w.shared.reannounce(&self.shared.counters);
                }
                w.shared.sync(&ips, &self.config, &self.shared.counters);
                continue;
            }
            if let Some(w) = self.start_worker(&key, link) {
                w.shared.sync(&ips, &self.config, &self.shared.counters);
                st.workers.insert(key, w);
            }
        }
    }

    fn start_worker(&self, key: &(String, Family), link: LinkInfo) -> Option<Worker> {
        let (name, family) = key;
        let socket = match ResponderSocket::open(name, &link, *family, self.config.poll_interval) {
            Ok(s) => s,
            Err(e) => {
                bump(&self.shared.counters.open_errors);
                warn!(iface = %name, proto = family.as_str(), error = %e, "opening responder socket failed");
                return None;
            }
        };
        let mac = link.mac;
        let w = Arc::new(WorkerShared {
            name: name.clone(),
            family: *family,
            link: link.clone(),
            stop: AtomicBool::new(false),
            socket,
            state: Mutex::new(WorkerState {
                ips: BTreeSet::new(),
                timer: AnnounceTimer::new(self.config.schedule.clone()),
                groups: BTreeMap::new(),
            }),
        });
        let (thread_w, shared) = (Arc::clone(&w), Arc::clone(&self.shared));
        let thread = std::thread::Builder::new()
            .name(format!("flb-{}-{}", family.as_str(), name))
            .spawn(move || run_worker(thread_w, shared));
        match thread {
            Ok(thread) => {
                info!(iface = %name, proto = family.as_str(), %mac, "responder started");
                Some(Worker {
                    shared: w,
                    thread,
                    link,
                })
            }
            Err(e) => {
                bump(&self.shared.counters.open_errors);
                warn!(iface = %name, error = %e, "spawning responder thread failed");
                None
            }
        }
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlane")
            .field("config", &self.config)
            .field("active", &self.active())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, up: bool) -> LinkInfo {
        LinkInfo {
            index,
            mac: crate::wire::MacAddr::new(2, 0, 0, 0, 0, index as u8),
            up,
            carrier_ups: 1,
            subnets: BTreeSet::new(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ifaces(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plan_opens_one_worker_per_interface_and_family_in_use() {
        let links = Links::from([
            ("eth0".to_string(), link(2, true)),
            ("eth1".to_string(), link(3, true)),
            ("eth2".to_string(), link(4, false)),
        ]);
        let desired = Announcements::from([
            (ip("203.0.113.10"), ifaces(&["eth0", "eth1"])),
            (ip("203.0.113.11"), ifaces(&["eth0"])),
            (ip("2001:db8:200::10"), ifaces(&["eth1", "eth2", "eth9"])),
            (ip("203.0.113.12"), ifaces(&[])),
        ]);
        let plan = plan_workers(&desired, &links);
        let want = BTreeMap::from([
            (
                ("eth0".to_string(), Family::V4),
                BTreeSet::from([ip("203.0.113.10"), ip("203.0.113.11")]),
            ),
            (
                ("eth1".to_string(), Family::V4),
                BTreeSet::from([ip("203.0.113.10")]),
            ),
            (
                ("eth1".to_string(), Family::V6),
                BTreeSet::from([ip("2001:db8:200::10")]),
            ),
        ]);
        assert_eq!(plan, want);
        assert!(plan_workers(&Announcements::new(), &links).is_empty());
        assert!(plan_workers(&desired, &Links::new()).is_empty());
    }

    #[test]
    fn without_links_nothing_opens_and_shutdown_is_immediate() {
        let plane = DataPlane::new(DataPlaneConfig::default());
        plane.set_announcements(Announcements::from([(
            ip("203.0.113.10"),
            ifaces(&["eth0"]),
        )]));
        assert!(plane.active().is_empty());
        assert_eq!(plane.counters().open_errors, 0);
        let t = Instant::now();
        plane.shutdown();
        plane.shutdown();
        assert!(t.elapsed() < Duration::from_millis(200));
        plane.set_announcements(Announcements::new());
        assert!(plane.active().is_empty());
    }

    #[test]
    fn snapshot_lists_every_drop_label() {
        let c = Counters::default();
        bump(&c.proto(Family::V6).drops[DropReason::BadHopLimit.index()]);
        let s = c.snapshot();
        assert_eq!(s.arp.drops.len(), DropReason::LABELS.len());
        assert_eq!(s.ndp.drops["bad_hop_limit"], 1);
        assert_eq!(s.arp.drops["bad_hop_limit"], 0);
    }
}
