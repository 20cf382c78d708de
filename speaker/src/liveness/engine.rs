//! The heartbeat engine: everything the heartbeat thread does between its socket and its
//! channels, without the I/O (time is passed in), so the simulation bench runs exactly
//! what the thread runs.
//!
//! ```text
//!   datagram ─▶ source is a member's address?  (else `unknown_source`: one lookup)
//!            ─▶ HMAC (current key, then the other accepted one) and parse
//!            ─▶ rate limits: its source's bucket, the global budget  (else `rate_limited`)
//!            ─▶ Ed25519 signature with the key its sender's Lease publishes
//!            ─▶ Detector::observe                                 (gap histogram)
//!   after a batch ─▶ Detector::tick ─▶ view / why not serving, only when they may change
//!   every slot ─▶ Detector::outgoing ─▶ one signed heartbeat for the slot's peers
//!                (v3 to peers whose Lease has a key, v2 to the others)
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::{debug, info, trace, warn};

use super::codec::{self, DecodeError, Heard, Heartbeat, Key, SigningKey, VerifyingKey};
use super::detector::{AliveView, Config, Detector, Member, NotServing, Observed};
use super::limits::{self, Admission, Limits, RateLimiter};

/// Upper bounds (seconds) of the heartbeat gap histogram's buckets: a peer's heartbeats
/// come every 100 ms by default; a gap past the timeout (350 ms) made it look dead.
pub const GAP_BUCKETS: [f64; 10] = [0.11, 0.125, 0.15, 0.2, 0.25, 0.3, 0.35, 0.5, 1.0, 2.5];

/// Live counters, updated by the heartbeat thread without locks.
#[derive(Debug, Default)]
pub struct Counters {
    sent: AtomicU64,
    send_errors: AtomicU64,
    received: AtomicU64,
    recv_errors: AtomicU64,
    accepted: AtomicU64,
    rejected_bad_tag: AtomicU64,
    rejected_bad_signature: AtomicU64,
    rejected_stale: AtomicU64,
    rejected_malformed: AtomicU64,
    rejected_version: AtomicU64,
    rejected_unknown_node: AtomicU64,
    rejected_unknown_source: AtomicU64,
    rejected_rate_limited: AtomicU64,
    peer_deaths: AtomicU64,
    isolations: AtomicU64,
    /// Per bucket of [`GAP_BUCKETS`] (and one past the last), not cumulative.
    gaps: [AtomicU64; GAP_BUCKETS.len() + 1],
    gap_sum_us: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    /// One datagram handed to the OS (or refused by it).
    pub fn sent(&self, ok: bool) {
        inc(if ok { &self.sent } else { &self.send_errors });
    }

    /// A socket read error.
    pub fn recv_error(&self) {
        inc(&self.recv_errors);
    }

    fn gap(&self, gap: Duration) {
        let s = gap.as_secs_f64();
        let i = GAP_BUCKETS
            .iter()
            .position(|le| s <= *le)
            .unwrap_or(GAP_BUCKETS.len());
        inc(&self.gaps[i]);
        let us = u64::try_from(gap.as_micros()).unwrap_or(u64::MAX);
        self.gap_sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// A point-in-time copy.
    pub fn snapshot(&self) -> CountersSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut gaps = [0; GAP_BUCKETS.len() + 1];
        for (i, c) in self.gaps.iter().enumerate() {
            gaps[i] = g(c);
        }
        CountersSnapshot {
            sent: g(&self.sent),
            send_errors: g(&self.send_errors),
            received: g(&self.received),
            recv_errors: g(&self.recv_errors),
            accepted: g(&self.accepted),
            rejected_bad_tag: g(&self.rejected_bad_tag),
            rejected_bad_signature: g(&self.rejected_bad_signature),
            rejected_stale: g(&self.rejected_stale),
            rejected_malformed: g(&self.rejected_malformed),
            rejected_version: g(&self.rejected_version),
            rejected_unknown_node: g(&self.rejected_unknown_node),
            rejected_unknown_source: g(&self.rejected_unknown_source),
            rejected_rate_limited: g(&self.rejected_rate_limited),
            peer_deaths: g(&self.peer_deaths),
            isolations: g(&self.isolations),
            gaps,
            gap_sum_us: g(&self.gap_sum_us),
        }
    }
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
    /// Rejected: valid HMAC, but claiming a node whose Lease publishes a public key without
    /// that key's signature (unsigned, or signed by another key): a node forging another's
    /// heartbeat, or a restarted peer whose new Lease we have not seen yet.
    pub rejected_bad_signature: u64,
    /// Rejected: replayed, duplicated, reordered or from an old incarnation.
    pub rejected_stale: u64,
    /// Rejected: too short, too long, not ours (magic) or malformed body.
    pub rejected_malformed: u64,
    /// Rejected: another wire version (mixed versions during an upgrade).
    pub rejected_version: u64,
    /// Rejected: from a node that is not a member, or carrying our own name.
    pub rejected_unknown_node: u64,
    /// Dropped before any hashing: the source address is no member's heartbeat address
    /// (LAN noise or a flood that got past the kernel filter; costs one lookup).
    pub rejected_unknown_source: u64,
    /// Dropped before the signature check: its source address, or all sources together,
    /// sent more than their rate (a member's flood; see `limits`).
    pub rejected_rate_limited: u64,
    /// Peers declared dead (timeout or LEAVING).
    pub peer_deaths: u64,
    /// Times this speaker stopped serving because it was cut off from its peers.
    pub isolations: u64,
    /// Gaps between two heartbeats accepted from one peer (same incarnation), by bucket of
    /// [`GAP_BUCKETS`] (the last one: longer), not cumulative.
    pub gaps: [u64; GAP_BUCKETS.len() + 1],
    /// Sum of those gaps, in microseconds.
    pub gap_sum_us: u64,
}

impl CountersSnapshot {
    /// The gap histogram as prometheus-client's encoder takes it: sum (seconds), count,
    /// and the count per upper bound (`+Inf` last), not cumulative (the encoder adds up).
    pub fn gap_histogram(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = self
            .gaps
            .iter()
            .enumerate()
            .map(|(i, n)| (GAP_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY), *n))
            .collect();
        let count = self.gaps.iter().sum();
        (self.gap_sum_us as f64 / 1e6, count, buckets)
    }

    /// The largest gap bucket that counted anything: (its upper bound in seconds, how
    /// many), or `None` when no gap was seen.
    pub fn gap_max_bucket(&self) -> Option<(f64, u64)> {
        let i = self.gaps.iter().rposition(|n| *n > 0)?;
        Some((
            GAP_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY),
            self.gaps[i],
        ))
    }
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
    /// The public key its heartbeats must be signed with; `None` (a previous-version
    /// speaker) accepts HMAC-only heartbeats for it, and gets version 2 from us.
    pub pubkey: Option<VerifyingKey>,
}

/// Where we send a peer's heartbeats, and the key its own must be signed with.
#[derive(Debug, Clone, Copy)]
struct Target {
    addr: SocketAddr,
    pubkey: Option<VerifyingKey>,
}

/// `ip`, with an IPv4-mapped IPv6 address (what a dual-stack socket reports for IPv4
/// peers) as plain IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// `addr` with its IP [`canonical`].
pub fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical(addr.ip()), addr.port())
}

/// The part of `heard` that fits one heartbeat: all of it when it fits, else a window of
/// `capacity` entries that moves on with every round, so each peer is listed at least
/// every ⌈len / capacity⌉ rounds (receivers keep the freshest news they got). The window
/// starts at an offset of the sender's own (`salt`: its node id): speakers that started
/// together do not list the same peers in the same rounds, so every peer is listed by
/// someone in every round, not by everyone once every few rounds (longer apart than the
/// timeout at a few hundred peers).
pub fn heard_window(heard: Vec<Heard>, capacity: usize, round: u64, salt: u32) -> Vec<Heard> {
    if heard.len() <= capacity {
        return heard;
    }
    let len = heard.len() as u64;
    let start = round
        .wrapping_mul(capacity as u64)
        .wrapping_add(u64::from(salt))
        % len;
    let start = usize::try_from(start).unwrap_or(0);
    let mut window: Vec<Heard> = (0..capacity)
        .map(|k| heard[(start + k) % heard.len()])
        .collect();
    window.sort_by_key(|h| h.id);
    window
}

/// Datagrams to send: each destination with the index of its payload.
#[derive(Debug, Default)]
pub struct Batch {
    /// The encoded heartbeats (at most two: signed, and version 2).
    pub payloads: Vec<Vec<u8>>,
    /// Destination, payload index.
    pub sends: Vec<(SocketAddr, usize)>,
}

/// What a tick found: what to log and publish.
#[derive(Debug, Default)]
pub struct Update {
    /// The view, when it may have changed (compare before publishing).
    pub view: Option<AliveView>,
    /// Why we do not serve (`None` while we do).
    pub not_serving: Option<NotServing>,
    /// We serve again after having stopped: announce ours again.
    pub rejoined: bool,
}

/// The heartbeat engine of one speaker.
#[derive(Debug)]
pub struct Engine {
    keys: Vec<Key>,
    signer: SigningKey,
    node: String,
    incarnation: u64,
    seq: u64,
    /// Heartbeat rounds sent (the heard window moves on with each).
    round: u64,
    /// Our node id: where our heard window starts.
    salt: u32,
    /// Next slot of the round.
    slot: usize,
    detector: Detector,
    /// Peer node → heartbeat address and public key (ourselves excluded), by name.
    targets: BTreeMap<String, Target>,
    /// The same, in name order, for the slots.
    order: Vec<Target>,
    /// The heartbeat addresses of `targets` (IPv4-mapped ones as IPv4): the accepted
    /// sources (a speaker sends from the port it listens on).
    sources: HashSet<SocketAddr>,
    limiter: RateLimiter,
    /// Our usable interfaces, as sent (invalid names dropped).
    interfaces: BTreeSet<String>,
    /// Per peer: the incarnation and time of its last accepted heartbeat (for the gaps).
    arrivals: HashMap<String, (u64, Instant)>,
    left: bool,
    counters: Arc<Counters>,
}

impl Engine {
    /// An engine for `node` (already checked to fit a heartbeat), sending every `interval`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node: String,
        incarnation: u64,
        interval: Duration,
        config: Config,
        keys: Vec<Key>,
        signer: SigningKey,
        counters: Arc<Counters>,
        now: Instant,
    ) -> Engine {
        Engine {
            salt: codec::node_id(&node),
            keys,
            signer,
            detector: Detector::new(node.clone(), BTreeSet::new(), config),
            node,
            incarnation,
            seq: 0,
            round: 0,
            slot: 0,
            targets: BTreeMap::new(),
            order: Vec::new(),
            sources: HashSet::new(),
            limiter: RateLimiter::new(Limits::for_interval(interval), now),
            interfaces: BTreeSet::new(),
            arrivals: HashMap::new(),
            left: false,
            counters,
        }
    }

    /// The detector inside.
    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    /// The counters this engine updates.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// The source addresses accepted (members' heartbeat addresses).
    pub fn sources(&self) -> &HashSet<SocketAddr> {
        &self.sources
    }

    /// How many peers we send to.
    pub fn peers(&self) -> usize {
        self.order.len()
    }

    /// Whether we said LEAVING (and send nothing more).
    pub fn left(&self) -> bool {
        self.left
    }

    /// Sets the members (node → heartbeat address, incarnation, key) at `now`.
    pub fn set_peers(&mut self, peers: &BTreeMap<String, PeerAddr>, now: Instant) {
        let old = std::mem::take(&mut self.targets);
        self.targets = peers
            .iter()
            .filter(|(node, _)| **node != self.node)
            .map(|(node, p)| {
                let target = Target {
                    addr: p.addr,
                    pubkey: p.pubkey,
                };
                (node.clone(), target)
            })
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
        self.detector.set_members(members, now);
        // Members whose Lease went away while they beat are kept (a cleanup, a prune):
        // keep sending to them too, or they would stop hearing us (and keep their key).
        for node in self.detector.retained() {
            if let Some(target) = old.get(node) {
                self.targets.insert(node.clone(), *target);
            }
        }
        self.order = self.targets.values().copied().collect();
        self.sources = self
            .targets
            .values()
            .map(|t| canonical_addr(t.addr))
            .collect();
        self.limiter
            .set_sources(self.order.iter().map(|t| canonical(t.addr.ip())), now);
        self.arrivals.retain(|n, _| self.targets.contains_key(n));
        let slots = self.slots();
        if self.slot >= slots {
            self.slot = 0;
        }
        debug!(peers = self.targets.len(), slots, "heartbeat peers updated");
    }

    /// Sets our usable interfaces (invalid names and those past the limit left out).
    pub fn set_interfaces(&mut self, wanted: &BTreeSet<String>) {
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

    /// Whether we can answer at all (caches synced, responders open).
    pub fn set_ready(&mut self, ready: bool) {
        self.detector.set_ready(ready);
    }

    /// In how many slots a round is sent ([`limits::slots`]).
    pub fn slots(&self) -> usize {
        limits::slots(self.order.len(), limits::MAX_BURST)
    }

    /// The heartbeat of the round's next slot, for that slot's peers.
    pub fn next_slot(&mut self, now: Instant) -> Batch {
        let slots = self.slots();
        let range = limits::slot_targets(self.order.len(), slots, self.slot);
        let batch = self.batch(range, false, now);
        self.slot += 1;
        if self.slot >= slots {
            self.slot = 0;
            self.round += 1;
        }
        batch
    }

    /// A heartbeat to every peer at once (our interfaces changed).
    pub fn all(&mut self, now: Instant) -> Batch {
        self.batch(0..self.order.len(), false, now)
    }

    /// A LEAVING heartbeat to every peer; from now on nothing else is sent.
    pub fn leaving(&mut self, now: Instant) -> Batch {
        self.left = true;
        self.batch(0..self.order.len(), true, now)
    }

    fn batch(&mut self, range: Range<usize>, leaving: bool, now: Instant) -> Batch {
        let mut out = Batch::default();
        if range.is_empty() {
            return out;
        }
        self.seq += 1;
        let state = self.detector.outgoing(now);
        let hb = Heartbeat::new(
            self.node.clone(),
            self.incarnation,
            self.seq,
            self.interfaces.clone(),
        )
        .map(|hb| {
            hb.with_leaving(leaving)
                .with_state(state.serving && !leaving, state.settled)
                .with_established(state.established && !leaving)
        });
        let hb = hb.and_then(|hb| {
            let window = heard_window(state.heard, hb.heard_capacity(), self.round, self.salt);
            hb.with_heard(window)
        });
        let hb = match hb {
            Ok(hb) => hb,
            Err(error) => {
                // Unreachable: the node and interfaces were checked before, the window fits.
                warn!(%error, "cannot build heartbeat");
                return out;
            }
        };
        // Signed once for every peer that publishes a key; version 2 for the others
        // (previous-version speakers during a rolling upgrade), which cannot read version 3.
        let (mut signed, mut unsigned) = (None, None);
        for t in &self.order[range] {
            let slot = if t.pubkey.is_some() {
                &mut signed
            } else {
                &mut unsigned
            };
            let i = *slot.get_or_insert_with(|| {
                out.payloads.push(if t.pubkey.is_some() {
                    codec::encode(&hb, &self.keys[0], &self.signer)
                } else {
                    codec::encode_v2(&hb, &self.keys[0])
                });
                out.payloads.len() - 1
            });
            out.sends.push((t.addr, i));
        }
        out
    }

    /// Handles one datagram received at `now`; true when the detector accepted it.
    pub fn receive(&mut self, bytes: &[u8], from: SocketAddr, now: Instant) -> bool {
        let c = &*self.counters;
        inc(&c.received);
        // Only members' addresses are worth an HMAC: anything else on the port is dropped
        // with one lookup (the kernel filter drops it before, when it is on).
        let from = canonical_addr(from);
        let source = from.ip();
        if !self.sources.contains(&from) {
            inc(&c.rejected_unknown_source);
            trace!(%from, "datagram from an address no member uses");
            return false;
        }
        // HMAC first (a LAN host without the cluster key costs one hash), then the rate
        // limits, then at most one signature check, with the key the claimed sender's
        // own Lease publishes.
        let unverified = match codec::decode_any(bytes, &self.keys) {
            Ok(u) => u,
            Err(error) => {
                self.rejected(&error, from);
                return false;
            }
        };
        match self.limiter.admit(source, now) {
            Admission::Admitted => {}
            why => {
                inc(&c.rejected_rate_limited);
                trace!(%from, ?why, "heartbeat over the rate limit");
                return false;
            }
        }
        let pubkey = self
            .targets
            .get(unverified.node())
            .and_then(|t| t.pubkey.as_ref());
        let hb = match unverified.verify(pubkey) {
            Ok(hb) => hb,
            Err(error) => {
                self.rejected(&error, from);
                return false;
            }
        };
        let c = &*self.counters;
        match self.detector.observe(&hb, now) {
            Observed::Accepted { revived } => {
                inc(&c.accepted);
                if revived {
                    info!(peer = %hb.node(), %from, interfaces = ?hb.interfaces(),
                        serving = hb.is_serving(), "peer heard");
                }
                match self.arrivals.get_mut(hb.node()) {
                    Some((inc, at)) => {
                        if *inc == hb.incarnation() {
                            c.gap(now.saturating_duration_since(*at));
                        }
                        *inc = hb.incarnation();
                        *at = now;
                    }
                    None => {
                        self.arrivals
                            .insert(hb.node().to_owned(), (hb.incarnation(), now));
                    }
                }
                true
            }
            Observed::Left => {
                inc(&c.accepted);
                inc(&c.peer_deaths);
                self.arrivals.remove(hb.node());
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

    fn rejected(&self, error: &DecodeError, from: SocketAddr) {
        let c = &*self.counters;
        inc(match error {
            DecodeError::BadTag => &c.rejected_bad_tag,
            DecodeError::BadSignature | DecodeError::Unsigned => {
                debug!(%from, %error, "heartbeat not signed by its node's key");
                &c.rejected_bad_signature
            }
            DecodeError::UnsupportedVersion { .. } => &c.rejected_version,
            DecodeError::TooShort { .. }
            | DecodeError::TooLong { .. }
            | DecodeError::BadMagic
            | DecodeError::Malformed { .. } => &c.rejected_malformed,
        });
        trace!(%from, %error, "heartbeat rejected");
    }

    /// Applies the time at `now` (peers gone silent, our serving state) and says what to
    /// publish. Cheap unless a deadline passed or something changed.
    pub fn tick(&mut self, now: Instant) -> Update {
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
            Some(true) => info!(rejoined = t.rejoined, "serving"),
            None => {}
        }
        let not_serving = self
            .detector
            .not_serving(now)
            .filter(|_| !self.detector.serving());
        let view = self
            .detector
            .take_view_changed()
            .then(|| self.detector.alive(now));
        Update {
            view,
            not_serving,
            rejoined: t.rejoined,
        }
    }

    /// When the next tick is due without any datagram ([`Detector::next_deadline`]).
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        self.detector.next_deadline(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::liveness::codec::encode;

    const KEY: &[u8] = b"ferrolb-test-shared-secret";

    fn key() -> Key {
        Key::new(KEY).unwrap()
    }

    fn signer(i: u8) -> SigningKey {
        SigningKey::from_bytes(&[i; 32])
    }

    fn ifaces() -> BTreeSet<String> {
        BTreeSet::from(["eth0".to_string()])
    }

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([198, 51, 100, i], 7473))
    }

    /// Engine "n0" at 198.51.100.10 with peers n1..=n{peers} at 198.51.100.{10+i}.
    fn engine(peers: u8, now: Instant) -> Engine {
        let mut e = Engine::new(
            "n0".into(),
            1,
            Duration::from_millis(100),
            Config::default(),
            vec![key()],
            signer(10),
            Arc::default(),
            now,
        );
        let mut m = BTreeMap::new();
        for i in 1..=peers {
            let p = PeerAddr {
                addr: addr(10 + i),
                incarnation: Some(u64::from(i)),
                fresh: true,
                pubkey: Some(signer(10 + i).verifying_key()),
            };
            m.insert(format!("n{i}"), p);
        }
        e.set_peers(&m, now);
        e.set_interfaces(&ifaces());
        e.set_ready(true);
        e
    }

    fn beat(i: u8, seq: u64) -> Vec<u8> {
        let hb = Heartbeat::new(format!("n{i}"), u64::from(i), seq, ifaces())
            .unwrap()
            .with_state(true, true)
            .with_heard(vec![Heard {
                id: codec::node_id("n0"),
                age_ms: 0,
                serving: true,
                settled: true,
            }])
            .unwrap();
        encode(&hb, &key(), &signer(10 + i))
    }

    #[test]
    fn a_members_flood_of_valid_hmacs_is_rate_limited_before_the_signature() {
        // A compromised node (it holds the cluster key) floods with heartbeats it signs
        // with a key of its own: 5,000 in one second, from its own address.
        let t0 = Instant::now();
        let mut e = engine(2, t0);
        let own = SigningKey::from_bytes(&[99; 32]);
        let forged = |seq| {
            let hb = Heartbeat::new("n1", 1, seq, ifaces()).unwrap();
            encode(&hb, &key(), &own)
        };
        for k in 0..5000u64 {
            let now = t0 + Duration::from_micros(200 * k);
            e.receive(&forged(k + 1), addr(11), now);
            // n2 beats normally meanwhile.
            if k % 500 == 0 {
                assert!(e.receive(&beat(2, k / 500 + 1), addr(12), now));
            }
        }
        let c = e.counters().snapshot();
        // Its own bucket (burst 20 + 40/s) bounds the signature checks; n2 loses nothing.
        assert!(
            c.rejected_bad_signature <= 61,
            "signature checks spent on the flood: {c:?}"
        );
        assert!(c.rejected_rate_limited >= 4900, "{c:?}");
        assert_eq!(c.accepted, 10, "{c:?}");
    }

    #[test]
    fn a_keyless_flood_from_a_members_address_does_not_silence_it() {
        // A LAN host spoofs n1's address without the key: its datagrams fail the HMAC
        // and take no token, so n1's genuine heartbeats all get through.
        let t0 = Instant::now();
        let mut e = engine(2, t0);
        let mut junk = beat(1, 1);
        let n = junk.len();
        junk[n - 1] ^= 0xff;
        let mut accepted = 0;
        for k in 0..10_000u64 {
            let now = t0 + Duration::from_micros(100 * k);
            e.receive(&junk, addr(11), now);
            if k % 1000 == 0 && e.receive(&beat(1, k / 1000 + 1), addr(11), now) {
                accepted += 1;
            }
        }
        assert_eq!(accepted, 10);
        let c = e.counters().snapshot();
        assert_eq!(c.rejected_bad_tag, 10_000);
        assert_eq!(c.rejected_rate_limited, 0);
        assert_eq!(c.rejected_bad_signature, 0);
    }

    #[test]
    fn strangers_cost_one_lookup() {
        let t0 = Instant::now();
        let mut e = engine(2, t0);
        for _ in 0..100 {
            assert!(!e.receive(&beat(1, 1), addr(99), t0));
            // A member's host, but not its heartbeat socket.
            let other_port = SocketAddr::new(addr(11).ip(), 40_000);
            assert!(!e.receive(&beat(1, 1), other_port, t0));
        }
        let c = e.counters().snapshot();
        assert_eq!(c.rejected_unknown_source, 200);
        assert_eq!(c.rejected_bad_tag + c.accepted + c.rejected_rate_limited, 0);
    }

    #[test]
    fn rounds_to_many_peers_are_paced_in_slots_of_32() {
        let t0 = Instant::now();
        let mut e = engine(100, t0);
        assert_eq!(e.slots(), 4);
        let mut to = Vec::new();
        let seq0 = e.seq;
        for _ in 0..4 {
            let b = e.next_slot(t0);
            assert_eq!(b.sends.len(), 25);
            assert_eq!(b.payloads.len(), 1, "signed once per slot");
            to.extend(b.sends.iter().map(|(a, _)| *a));
        }
        to.sort();
        to.dedup();
        assert_eq!(to.len(), 100, "every peer once per round");
        assert_eq!(e.seq, seq0 + 4);
        assert_eq!(e.round, 1);
        // A small cluster: one burst per round.
        let mut small = engine(3, t0);
        assert_eq!(small.slots(), 1);
        assert_eq!(small.next_slot(t0).sends.len(), 3);
        assert_eq!(small.round, 1);
    }

    #[test]
    fn gaps_between_heartbeats_are_counted_per_peer() {
        let t0 = Instant::now();
        let mut e = engine(2, t0);
        let ms = |n| t0 + Duration::from_millis(n);
        assert!(e.receive(&beat(1, 1), addr(11), ms(0)));
        assert!(e.receive(&beat(2, 1), addr(12), ms(50)));
        assert!(e.receive(&beat(1, 2), addr(11), ms(100)));
        assert!(e.receive(&beat(2, 2), addr(12), ms(450)));
        let c = e.counters().snapshot();
        let (sum, count, buckets) = c.gap_histogram();
        assert_eq!(count, 2);
        assert!((sum - 0.5).abs() < 1e-6, "{sum}");
        assert_eq!(buckets[0], (0.11, 1));
        assert_eq!(c.gap_max_bucket(), Some((0.5, 1)));
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), 2);
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 0)));
    }

    #[test]
    fn the_heard_window_lists_everyone_within_a_few_rounds() {
        let heard: Vec<Heard> = (0..10u32)
            .map(|id| Heard {
                id,
                age_ms: 0,
                serving: true,
                settled: true,
            })
            .collect();
        assert_eq!(heard_window(heard.clone(), 10, 7, 3), heard);
        let mut seen = BTreeSet::new();
        for round in 1..=3 {
            let w = heard_window(heard.clone(), 4, round, 0);
            assert_eq!(w.len(), 4);
            assert!(w.windows(2).all(|p| p[0].id < p[1].id));
            seen.extend(w.iter().map(|h| h.id));
        }
        assert_eq!(seen.len(), 10, "⌈10 / 4⌉ = 3 rounds list all");
    }

    #[test]
    fn speakers_that_started_together_list_each_peer_in_every_round() {
        // 600 speakers, all at the same round (a cold start): each lists a window of the
        // 599 others. In every round, some speakers list any given peer, so news of it
        // never waits longer than an interval (the timeout is 3.5 intervals).
        let ids: Vec<u32> = (0..600)
            .map(|i| codec::node_id(&format!("node-{i}")))
            .collect();
        let lists: Vec<Vec<Heard>> = (0..ids.len())
            .map(|i| {
                let mut h: Vec<Heard> = ids
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| *k != i)
                    .map(|(_, id)| Heard {
                        id: *id,
                        age_ms: 0,
                        serving: true,
                        settled: true,
                    })
                    .collect();
                h.sort_by_key(|h| h.id);
                h
            })
            .collect();
        let capacity = 180;
        for round in 0..8u64 {
            let mut listed = vec![0usize; ids.len()];
            for (i, list) in lists.iter().enumerate() {
                for h in heard_window(list.clone(), capacity, round, ids[i]) {
                    listed[ids.iter().position(|id| *id == h.id).unwrap()] += 1;
                }
            }
            let least = listed.iter().min().copied().unwrap_or(0);
            assert!(
                least >= 60,
                "round {round}: a peer listed by only {least} of 599"
            );
        }
    }
}
