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
//!             conflict::Detector ─▶ probes; claims seen ─▶ withhold / defend / announce
//! ```
//!
//! Decisions are pure ([`responder`], [`schedule`], [`conflict`], [`links`] classification
//! and subnet narrowing, [`socket::responder_filter`]); this module only owns threads and
//! sockets. An IP no FerroLB node announced before is probed for first (RFC 5227 / DAD) and
//! answered only if no other host uses it; a takeover is announced at once and probed
//! alongside ([`conflict`]). IPs not answered for either reason are listed by
//! [`DataPlane::withheld`].
//! Withdrawn IPs stop being answered as soon as `set_announcements` returns; dropping the
//! [`DataPlane`] stops every worker within one poll interval (50 ms by default).

pub mod conflict;
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

use nix::sched::CpuSet;

use serde::Serialize;
use tracing::{debug, info, trace, warn};

pub use conflict::{ConflictConfig, Fleet};
pub use links::{DEFAULT_EXCLUDE, LinkInfo, LinkWatcher, Links, narrow_to_subnets, usable};
pub use responder::{AnnounceSet, DropReason, decide_arp, decide_ndp};
pub use schedule::AnnounceSchedule;
pub use socket::Family;

use crate::core::Interfaces;
use crate::wire::MacAddr;
use crate::wire::arp::{ArpOp, ArpRepr};
use crate::wire::ndp::{NeighborAdvertRepr, NeighborSolicitRepr, solicited_node_multicast};
use conflict::Out;
use schedule::AnnounceTimer;
use socket::{Membership, ResponderSocket};

/// Whether this node can answer ARP/NDP at all: a responder socket opens on at least one
/// usable interface (an interface that is up and not excluded; root or CAP_NET_RAW). A
/// speaker that cannot is not ready, so peers do not elect it for IPs it would leave dark.
pub fn can_answer(links: &Links) -> Result<(), String> {
    let mut errors = Vec::new();
    for (name, link) in links.iter().filter(|(_, l)| l.up) {
        match ResponderSocket::open(
            name,
            link,
            Family::V4,
            Duration::from_millis(10),
            false,
            None,
        ) {
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
pub type Announcements = BTreeMap<IpAddr, Interfaces>;

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
    /// Address conflict detection (probes, defence, backoff).
    pub conflict: ConflictConfig,
    /// Answering threads per (interface, family). With one, a frame wakes the responder
    /// wherever the scheduler left it, often an idle CPU that must be woken first (tens of
    /// microseconds in a VM). With `n` > 1 the responder opens `n` sockets in a
    /// PACKET_FANOUT_CPU group and pins thread `i` to the CPUs numbered `i` modulo `n`: a
    /// frame goes to the socket whose thread runs on the CPU that received it, and the
    /// answer starts on that CPU (docs/architecture.md#reply-latency).
    pub answer_threads: usize,
}

impl Default for DataPlaneConfig {
    fn default() -> Self {
        DataPlaneConfig {
            schedule: AnnounceSchedule::default(),
            poll_interval: Duration::from_millis(50),
            join_solicited_node_groups: true,
            conflict: ConflictConfig::default(),
            answer_threads: 1,
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
    probes: AtomicU64,
    conflicts: AtomicU64,
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
    /// Conflict probes sent (ARP probes, DAD solicitations).
    pub probes: u64,
    /// Conflicts found: another host uses an IP this node was to announce.
    pub conflicts: u64,
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
            probes: get(&self.probes),
            conflicts: get(&self.conflicts),
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

/// An IP another host uses, as this node saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The other host's MAC.
    pub mac: MacAddr,
    /// The interface it was seen on.
    pub iface: String,
    /// Since when.
    pub since: Instant,
}

/// Every IP this node withholds because another host uses it.
pub type Conflicts = BTreeMap<IpAddr, Conflict>;

/// The IPs this node is to announce but does not answer for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Withheld {
    /// Another host uses them.
    pub conflicts: Conflicts,
    /// Probed for before their first announcement, with the interface probing.
    pub probing: BTreeMap<IpAddr, String>,
}

/// State shared by the handle and every worker.
#[derive(Debug)]
struct Shared {
    counters: Counters,
    answers: RwLock<Arc<AnnounceSet>>,
    fleet: RwLock<Arc<Fleet>>,
    withheld: tokio::sync::watch::Sender<Withheld>,
    /// Random per data plane: makes its fanout group ids its own ([`fanout_group`]).
    salt: u64,
}

impl Default for Shared {
    fn default() -> Self {
        use std::hash::BuildHasher;
        Shared {
            counters: Counters::default(),
            answers: RwLock::default(),
            fleet: RwLock::default(),
            withheld: tokio::sync::watch::Sender::new(Withheld::default()),
            salt: std::collections::hash_map::RandomState::new().hash_one(0u8),
        }
    }
}

impl Shared {
    fn answers(&self) -> Arc<AnnounceSet> {
        self.answers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn fleet(&self) -> Arc<Fleet> {
        self.fleet
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Forgets the conflicts `iface` reported for `ips` (`None`: for any IP of `family`,
    /// and its probes too: the worker stopped).
    fn clear_conflicts(&self, iface: &str, family: Family, ips: Option<&BTreeSet<IpAddr>>) {
        let of_family = |ip: &IpAddr| ip.is_ipv4() == (family == Family::V4);
        self.withheld.send_if_modified(|w| {
            let before = (w.conflicts.len(), w.probing.len());
            w.conflicts.retain(|ip, x| {
                !(x.iface == iface && of_family(ip) && ips.is_none_or(|s| s.contains(ip)))
            });
            if ips.is_none() {
                w.probing.retain(|ip, i| !(i == iface && of_family(ip)));
            }
            (w.conflicts.len(), w.probing.len()) != before
        });
    }

    /// Sets the IPs of `family` that `iface` probes for.
    fn set_probing(&self, iface: &str, family: Family, probing: BTreeSet<IpAddr>) {
        let of_family = |ip: &IpAddr| ip.is_ipv4() == (family == Family::V4);
        self.withheld.send_if_modified(|w| {
            let old: BTreeSet<IpAddr> = w
                .probing
                .iter()
                .filter(|(ip, i)| *i == iface && of_family(ip))
                .map(|(ip, _)| *ip)
                .collect();
            if old == probing {
                return false;
            }
            w.probing.retain(|ip, i| !(i == iface && of_family(ip)));
            w.probing
                .extend(probing.into_iter().map(|ip| (ip, iface.to_owned())));
            true
        });
    }
}

/// What one worker announces, and its timers, conflict detection and group memberships.
struct WorkerState {
    ips: BTreeSet<IpAddr>,
    timer: AnnounceTimer<IpAddr>,
    acd: conflict::Detector,
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
    /// IPs of this worker not answered now (probing, or in conflict): a copy of
    /// `state.acd.withheld()`, read per frame without the state lock.
    withheld: RwLock<Arc<BTreeSet<IpAddr>>>,
    /// Conflict detection is on (frames are read for claims).
    detect: bool,
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

    /// Sends one probe for `ip`: an RFC 5227 ARP probe (sender 0.0.0.0) or a DAD
    /// Neighbor Solicitation (from `::`, to the solicited-node group).
    fn probe(&self, ip: IpAddr, counters: &Counters) {
        let c = counters.proto(self.family);
        let mac = self.link.mac;
        let frame = match ip {
            IpAddr::V4(v4) => ArpRepr {
                op: ArpOp::Request,
                sender_mac: mac,
                sender_ip: std::net::Ipv4Addr::UNSPECIFIED,
                target_mac: MacAddr::zero(),
                target_ip: v4,
            }
            .to_bytes(),
            IpAddr::V6(v6) => {
                NeighborSolicitRepr::multicast(Ipv6Addr::UNSPECIFIED, mac, v6).to_bytes()
            }
        };
        if self.send(&frame, c) {
            bump(&c.probes);
        }
    }

    /// Carries out what conflict detection decided, then sends its frames (outside the
    /// state lock). Withheld IPs are updated before any frame leaves: an announcement is
    /// answered as soon as it is out. With no `outs` nothing changed, unless `sync` added
    /// or removed IPs (`changed`).
    fn act(
        &self,
        mut st: MutexGuard<'_, WorkerState>,
        outs: Vec<Out>,
        shared: &Shared,
        changed: bool,
    ) {
        if outs.is_empty() && !changed {
            return;
        }
        let now = Instant::now();
        let mut sends = Vec::new();
        for out in outs {
            match out {
                Out::Announce(ip) => {
                    st.timer.start(ip, now);
                    sends.push(out);
                    info!(iface = %self.name, %ip, "announcing");
                }
                Out::Probe(_) | Out::Defend(_) => sends.push(out),
                Out::Conflict(ip, mac) => {
                    st.timer.cancel(&ip);
                    bump(&shared.counters.proto(self.family).conflicts);
                    warn!(iface = %self.name, %ip, %mac,
                        "another host uses this address: not announcing it (probing again with backoff)");
                    let seen = Conflict {
                        mac,
                        iface: self.name.clone(),
                        since: now,
                    };
                    shared.withheld.send_if_modified(|w| {
                        w.conflicts.get(&ip).map(|x| x.mac) != Some(mac) && {
                            w.conflicts.insert(ip, seen);
                            true
                        }
                    });
                }
                Out::Cleared(ip) => {
                    info!(iface = %self.name, %ip, "the address conflict is over");
                    shared.clear_conflicts(&self.name, self.family, Some(&BTreeSet::from([ip])));
                }
            }
        }
        // Published under the state lock: another thread's act (the worker's timers or a
        // claim, against a sync from the handle) must not overwrite these with older ones.
        let withheld = st.acd.withheld();
        shared.set_probing(&self.name, self.family, st.acd.probing());
        {
            let mut w = self
                .withheld
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if **w != withheld {
                *w = Arc::new(withheld);
            }
        }
        drop(st);
        for out in sends {
            match out {
                Out::Announce(ip) => self.announce(ip, &shared.counters),
                Out::Defend(ip) => {
                    info!(iface = %self.name, %ip, "another host claims this address: defending it once");
                    self.announce(ip, &shared.counters);
                }
                Out::Probe(ip) => self.probe(ip, &shared.counters),
                Out::Conflict(..) | Out::Cleared(_) => {}
            }
        }
    }

    fn withheld(&self, ip: IpAddr) -> bool {
        self.withheld
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&ip)
    }

    /// Reads a frame for another host's claim on one of our IPs and judges it.
    fn judge_claim(&self, frame: &[u8], answers: &AnnounceSet, shared: &Shared) {
        let claim = match self.family {
            Family::V4 => conflict::arp_claim(frame, self.link.mac),
            Family::V6 => conflict::ndp_claim(frame, self.link.mac),
        };
        let Some(claim) = claim else { return };
        if answers.lookup(claim.ip(), &self.name) != responder::Announced::Here {
            return;
        }
        let fleet = shared.fleet();
        let mut st = lock(&self.state);
        let outs = st.acd.claim(claim, &fleet, Instant::now());
        self.act(st, outs, shared, false);
    }

    /// Answers or drops one received frame.
    fn handle(&self, frame: &[u8], shared: &Shared) {
        let c = shared.counters.proto(self.family);
        bump(&c.requests);
        let answers = shared.answers();
        if self.detect {
            self.judge_claim(frame, &answers, shared);
        }
        let mut buf = [0u8; 128];
        let decided = match self.family {
            Family::V4 => decide_arp(frame, self.link.mac, &self.name, &answers)
                .map(|r| (r.emit(&mut buf), IpAddr::V4(r.sender_ip))),
            Family::V6 => decide_ndp(frame, self.link.mac, &self.name, &answers)
                .map(|r| (r.emit(&mut buf), IpAddr::V6(r.target))),
        };
        let decided = match decided {
            Ok((_, ip)) if self.withheld(ip) => Err(DropReason::Withheld),
            other => other,
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

    /// Brings the worker's IP set to `want`: new IPs are announced at once and scheduled
    /// (the `fresh` ones, which no FerroLB node announced before, once a probe finds no
    /// other host using them), withdrawn ones unscheduled; IPv6 group memberships follow.
    fn sync(
        &self,
        want: &BTreeSet<IpAddr>,
        fresh: &BTreeSet<IpAddr>,
        config: &DataPlaneConfig,
        shared: &Shared,
    ) {
        let mut st = lock(&self.state);
        let now = Instant::now();
        let removed: Vec<IpAddr> = st.ips.difference(want).copied().collect();
        let added: Vec<IpAddr> = want.difference(&st.ips).copied().collect();
        let mut outs = Vec::new();
        for ip in &removed {
            st.timer.cancel(ip);
            outs.extend(st.acd.remove(*ip));
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
                self.join(&mut st, solicited_node_multicast(*v6), &shared.counters);
            }
            let probe_first = fresh.contains(ip);
            if probe_first && config.conflict.enabled {
                info!(iface = %self.name, %ip, "probing before announcing");
            }
            outs.extend(st.acd.add(*ip, probe_first, now));
        }
        st.ips = want.clone();
        let changed = !added.is_empty() || !removed.is_empty();
        self.act(st, outs, shared, changed);
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

    /// Restarts the announcement cadence of every IP answered now (the link came back up).
    fn reannounce(&self, counters: &Counters) {
        let ips: Vec<IpAddr> = {
            let mut st = lock(&self.state);
            let now = Instant::now();
            let ips: Vec<IpAddr> = st
                .ips
                .iter()
                .copied()
                .filter(|ip| st.acd.answers(*ip))
                .collect();
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

/// The MACs of `links` (all-zero ones, such as loopback's, left out): what this node
/// publishes for its peers to tell its frames from another host's.
pub fn macs(links: &Links) -> BTreeSet<MacAddr> {
    links
        .values()
        .map(|l| l.mac)
        .filter(|m| *m != MacAddr::zero())
        .collect()
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
        for iface in ifaces.iter() {
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

/// Grid of a responder's timers: announcement repeats, probes and retries are this late
/// at most (besides the wait for a frame, `poll_interval`).
const TICK: Duration = Duration::from_millis(10);

fn run_worker(w: Arc<WorkerShared>, shared: Arc<Shared>, cpus: Option<CpuSet>) {
    pin(cpus.as_ref(), &w);
    let mut buf = vec![0u8; RECV_BUFFER];
    // Timers (announcement repeats, probes, retries) run on a 10 ms grid, not per frame:
    // a storm of requests must not turn into a storm of timer scans.
    let mut next_tick = Instant::now();
    while !w.stop.load(Ordering::Acquire) {
        let now = Instant::now();
        let mut due = Vec::new();
        if now >= next_tick {
            next_tick = now + TICK;
            let mut st = lock(&w.state);
            due = st.timer.due(now);
            let outs = if st.acd.is_busy() {
                st.acd.tick(now)
            } else {
                Vec::new()
            };
            w.act(st, outs, &shared, false);
        }
        if !due.is_empty() {
            // A repeat may race a withdrawal; the answer set has the last word.
            let answers = shared.answers();
            for ip in due {
                if answers.lookup(ip, &w.name) == responder::Announced::Here && !w.withheld(ip) {
                    w.announce(ip, &shared.counters);
                }
            }
        }
        receive(&w, &shared, &w.socket, &mut buf);
    }
    debug!(iface = %w.name, proto = w.family.as_str(), "responder stopped");
}

/// Waits (at most the poll interval) for one frame on `socket` and answers it; a failed
/// read is counted and followed by a short pause, so a broken socket cannot spin.
fn receive(w: &WorkerShared, shared: &Shared, socket: &ResponderSocket, buf: &mut [u8]) {
    match socket.recv(buf) {
        Ok(Some(frame)) => w.handle(frame, shared),
        Ok(None) => {}
        Err(e) => {
            bump(&shared.counters.proto(w.family).recv_errors);
            debug!(iface = %w.name, error = %e, "receive failed");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// An extra answering thread of a worker (`answer_threads` > 1): reads its own socket of
/// the fanout group and answers like the worker's thread; the timers stay with that one.
fn run_helper(
    w: Arc<WorkerShared>,
    shared: Arc<Shared>,
    socket: ResponderSocket,
    cpus: Option<CpuSet>,
) {
    pin(cpus.as_ref(), &w);
    let mut buf = vec![0u8; RECV_BUFFER];
    while !w.stop.load(Ordering::Acquire) {
        receive(&w, &shared, &socket, &mut buf);
    }
}

/// Pins the calling thread to `cpus` (when given); a failure only costs latency.
fn pin(cpus: Option<&CpuSet>, w: &WorkerShared) {
    if let Some(cpus) = cpus
        && let Err(e) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), cpus)
    {
        debug!(iface = %w.name, error = %e, "cannot pin the responder thread");
    }
}

/// The CPUs of fanout member `i` of `n`: those this process may run on whose number is
/// `i` modulo `n` (PACKET_FANOUT_CPU hands member `i` the frames those CPUs receive).
/// `None` (no pinning) with one member, or when the process may run on none of them.
fn member_cpus(allowed: &CpuSet, i: usize, n: usize) -> Option<CpuSet> {
    if n < 2 {
        return None;
    }
    let mut set = CpuSet::new();
    let mut any = false;
    for cpu in (i..CpuSet::count()).step_by(n) {
        if allowed.is_set(cpu).unwrap_or(false) {
            set.set(cpu).ok()?;
            any = true;
        }
    }
    any.then_some(set)
}

/// The fanout group of a worker: unique to this start (`salt`, random per data plane), the
/// interface and the family. A group is per network namespace and joined by id, so a
/// restarted speaker (PID 1 again in its container) must not reuse its predecessor's.
/// (pnet cannot ask the kernel for a unique id, PACKET_FANOUT_FLAG_UNIQUEID: a join the
/// kernel refuses moves on to the next id, [`FANOUT_TRIES`] times.)
const FANOUT_TRIES: u16 = 8;

fn fanout_group(salt: u64, ifindex: u32, family: Family) -> u16 {
    let mut h = salt ^ (u64::from(ifindex) << 1) ^ u64::from(family == Family::V6);
    h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> 48) as u16
}

struct Worker {
    shared: Arc<WorkerShared>,
    thread: JoinHandle<()>,
    /// The extra answering threads (`answer_threads` > 1).
    helpers: Vec<JoinHandle<()>>,
    /// The link as last seen, to notice carrier flaps.
    link: LinkInfo,
}

#[derive(Default)]
struct PlaneState {
    links: Links,
    desired: Announcements,
    /// IPs of the last `set_announcements` that no FerroLB node announced before: probed
    /// for before they are announced (only by the reconcile of that call).
    fresh: BTreeSet<IpAddr>,
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
    /// more when this returns; new (IP, interface) pairs are announced before it returns,
    /// except those in `fresh` (no FerroLB node announced them before), which are probed
    /// for first and announced once no other host answers (with conflict detection on).
    pub fn set_announcements(&self, desired: Announcements, fresh: BTreeSet<IpAddr>) {
        let mut st = lock(&self.state);
        if st.shut_down {
            return;
        }
        st.desired = desired;
        st.fresh = fresh;
        self.reconcile(&mut st);
        st.fresh.clear();
    }

    /// Sets the MACs of every FerroLB speaker (from their Leases): claims from these are a
    /// handover between speakers, never a conflict.
    pub fn set_fleet(&self, fleet: Fleet) {
        let mut f = self
            .shared
            .fleet
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if **f != fleet {
            *f = Arc::new(fleet);
        }
    }

    /// The IPs this node is to announce but does not answer for (another host uses them,
    /// or it probes for one first), as they change.
    pub fn withheld(&self) -> tokio::sync::watch::Receiver<Withheld> {
        self.shared.withheld.subscribe()
    }

    /// How many IPs this node withholds because another host uses them.
    pub fn conflict_count(&self) -> usize {
        self.shared.withheld.borrow().conflicts.len()
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
        for w in workers.into_values() {
            threads.push(w.thread);
            threads.extend(w.helpers);
        }
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
                self.shared.clear_conflicts(&key.0, key.1, None);
                info!(iface = %key.0, proto = key.1.as_str(), "responder stopping");
                st.stopped.push(w.thread);
                st.stopped.extend(w.helpers);
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
                w.shared.sync(&ips, &st.fresh, &self.config, &self.shared);
                continue;
            }
            if let Some(w) = self.start_worker(&key, link) {
                w.shared.sync(&ips, &st.fresh, &self.config, &self.shared);
                st.workers.insert(key, w);
            }
        }
    }

    fn start_worker(&self, key: &(String, Family), link: LinkInfo) -> Option<Worker> {
        let (name, family) = key;
        let n = self.config.answer_threads.max(1);
        let open = |group: Option<u16>| {
            ResponderSocket::open(
                name,
                &link,
                *family,
                self.config.poll_interval,
                self.config.conflict.enabled,
                group,
            )
        };
        // A fanout id another group of the namespace holds (another of our workers, or
        // another program) refuses the join: try the next ids, then answer on one thread.
        let first = fanout_group(self.shared.salt, link.index, *family);
        let fanout = (n > 1)
            .then(|| {
                (0..FANOUT_TRIES).find_map(|k| {
                    let id = first.wrapping_add(k);
                    open(Some(id)).ok().map(|s| (s, id))
                })
            })
            .flatten();
        let (socket, group, n) = match fanout {
            Some((s, id)) => (Ok(s), Some(id), n),
            None => (open(None), None, 1),
        };
        let socket = match socket {
            Ok(s) => s,
            Err(e) => {
                bump(&self.shared.counters.open_errors);
                warn!(iface = %name, proto = family.as_str(), error = %e, "opening responder socket failed");
                return None;
            }
        };
        if self.config.answer_threads > 1 && group.is_none() {
            warn!(iface = %name, proto = family.as_str(), "no PACKET_FANOUT group could be joined; answering on one thread");
        }
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
                acd: conflict::Detector::new(self.config.conflict.clone()),
                groups: BTreeMap::new(),
            }),
            withheld: RwLock::default(),
            detect: self.config.conflict.enabled,
        });
        let allowed = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok();
        let cpus = |i: usize| allowed.as_ref().and_then(|a| member_cpus(a, i, n));
        // The helpers join the group after the worker's socket (member 0), in order, so
        // member i is helper i's socket; one that cannot open or start is left out (its
        // CPUs' frames then go to another member, answered a little later).
        let mut helpers = Vec::new();
        for i in 1..n {
            let started = open(group).and_then(|socket| {
                let (hw, hs, hc) = (Arc::clone(&w), Arc::clone(&self.shared), cpus(i));
                std::thread::Builder::new()
                    .name(format!("flb-{}-{}-{i}", family.as_str(), name))
                    .spawn(move || run_helper(hw, hs, socket, hc))
            });
            match started {
                Ok(h) => helpers.push(h),
                Err(e) => {
                    bump(&self.shared.counters.open_errors);
                    warn!(iface = %name, proto = family.as_str(), error = %e, "opening an extra answering socket failed");
                }
            }
        }
        let (thread_w, shared, main_cpus) = (Arc::clone(&w), Arc::clone(&self.shared), cpus(0));
        let thread = std::thread::Builder::new()
            .name(format!("flb-{}-{}", family.as_str(), name))
            .spawn(move || run_worker(thread_w, shared, main_cpus));
        match thread {
            Ok(thread) => {
                info!(iface = %name, proto = family.as_str(), %mac, threads = 1 + helpers.len(), "responder started");
                Some(Worker {
                    shared: w,
                    thread,
                    helpers,
                    link,
                })
            }
            Err(e) => {
                bump(&self.shared.counters.open_errors);
                warn!(iface = %name, error = %e, "spawning responder thread failed");
                // The helpers started already: they stop within a poll interval.
                w.stop.store(true, Ordering::Release);
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

    fn ifaces(names: &[&str]) -> Interfaces {
        Arc::new(names.iter().map(|s| s.to_string()).collect())
    }

    fn cpus(list: &[usize]) -> CpuSet {
        let mut s = CpuSet::new();
        for &c in list {
            s.set(c).unwrap();
        }
        s
    }

    fn members(set: &CpuSet) -> Vec<usize> {
        (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap())
            .collect()
    }

    /// PACKET_FANOUT_CPU hands member i the frames of the CPUs numbered i modulo n: member
    /// i's thread must run on exactly those (that it may run on).
    #[test]
    fn fanout_members_run_on_the_cpus_whose_frames_they_get() {
        let all = cpus(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let got: Vec<Vec<usize>> = (0..4)
            .map(|i| members(&member_cpus(&all, i, 4).unwrap()))
            .collect();
        assert_eq!(got, [vec![0, 4, 8], vec![1, 5, 9], vec![2, 6], vec![3, 7]]);
        // One per CPU: each thread on its own CPU.
        let two = cpus(&[0, 1]);
        assert_eq!(members(&member_cpus(&two, 1, 2).unwrap()), [1]);
        // A cpuset without a member's CPUs leaves that thread unpinned, not stuck.
        assert!(member_cpus(&cpus(&[0, 2]), 1, 2).is_none());
        assert_eq!(members(&member_cpus(&cpus(&[0, 2, 3]), 1, 2).unwrap()), [3]);
        // One thread: never pinned (the scheduler places it, as before).
        assert!(member_cpus(&all, 0, 1).is_none());
    }

    #[test]
    fn fanout_groups_differ_by_start_interface_and_family() {
        let g = fanout_group(7, 2, Family::V4);
        assert_eq!(
            g,
            fanout_group(7, 2, Family::V4),
            "the workers of one start agree"
        );
        let others = [
            fanout_group(8, 2, Family::V4),
            fanout_group(7, 3, Family::V4),
            fanout_group(7, 2, Family::V6),
        ];
        assert!(others.iter().all(|o| *o != g), "{g} vs {others:?}");
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
        plane.set_announcements(
            Announcements::from([(ip("203.0.113.10"), ifaces(&["eth0"]))]),
            BTreeSet::new(),
        );
        assert!(plane.active().is_empty());
        assert_eq!(plane.counters().open_errors, 0);
        let t = Instant::now();
        plane.shutdown();
        plane.shutdown();
        assert!(t.elapsed() < Duration::from_millis(200));
        plane.set_announcements(Announcements::new(), BTreeSet::new());
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
