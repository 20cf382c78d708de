//! Failure detector: which speakers may announce, from authenticated heartbeats and the time.
//!
//! ```text
//!   every heartbeat carries: SERVING, SETTLED, and "whom I heard, how long ago, and what
//!   they said of themselves" (the heard list)
//!
//!   peer X is a candidate  ⇔  the freshest news of X is younger than the timeout and says
//!                              SERVING, where news comes from X itself (direct) or from the
//!                              heard list of a peer we hear directly that serves (relayed),
//!                              and X has not said LEAVING since
//!   we serve               ⇔  ready (caches synced, responders open)
//!                              AND (no other member counts (a fresh Lease, not LEAVING)
//!                                   OR one we hear directly hears us
//!                                   OR we hear every member that counts, and none of
//!                                      them has served for a whole timeout)
//!   we are established     ⇔  serving without a break for the hold-down
//!   we are settled         ⇔  established, or no established peer was heard when we
//!                              started serving (a cold start, a whole LAN coming back)
//! ```
//!
//! Why this holds "at most one announcer per IP" where heartbeats fail one-sidedly:
//! - a node that hears nobody (its heartbeat port firewalled inbound) does not serve, and
//!   says so in the heartbeats its peers still receive: nobody counts it;
//! - a node nobody hears (outbound blocked) finds itself in no heard list: it does not serve,
//!   and nobody hears it, so nobody counts it either;
//! - A cannot hear B but C hears both: C's heard list keeps B alive in A's view, so A and B
//!   rank from the same set (the same holds when A and B cannot hear each other at all);
//! - of two nodes where only one direction works, the one that hears the other (which hears
//!   nobody and so does not serve) serves alone; with three or more, it must hear all;
//! - a node that comes back (a flapping link) is a candidate of last resort until it is
//!   settled, so it takes no IP back for the hold-down.
//!
//! The price: a node whose every peer crashed cannot tell that from being cut off. It
//! announces nothing until their Leases go stale (3 × the Lease renewal, 90 s by default),
//! then serves alone. In a cluster of two, a crash therefore leaves the survivor dark for
//! that long; lower `--lease-renew` there. A clean split into two halves that each hear themselves still elects twice: no rule
//! without a quorum avoids that, and a quorum would silence a healthy half.
//!
//! Pure: no socket, no clock. The glue calls [`Detector::observe`] for each decoded
//! heartbeat and [`Detector::tick`] after every event (and at [`Detector::next_deadline`]),
//! builds its own heartbeats from [`Detector::outgoing`], and publishes
//! [`Detector::alive`]. Replay protection: a member's heartbeats must carry the incarnation
//! its Lease publishes (random per start, so no clock is involved) and a strictly larger
//! sequence; a LEAVING incarnation never comes back.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::codec::{Heard, Heartbeat, node_id};

/// Retired peers whose replay floor is kept after they stop being members.
const MAX_RETIRED: usize = 1024;

/// A speaker that may announce, as this one sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Live {
    /// Its usable interfaces (as it last told us, or as a peer relaying it has them when
    /// it never reached us directly).
    pub interfaces: BTreeSet<String>,
    /// It came back less than a hold-down ago: it wins only IPs no settled node can take.
    pub settling: bool,
}

/// The speakers that may announce: node → what election needs; us only while we serve.
pub type AliveView = BTreeMap<String, Live>;

/// Speakers that left the alive view → their last sign of life ([`Detector::last_news`]).
pub type Departures = BTreeMap<String, Instant>;

/// Detector tunables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// News of a peer older than this means it is dead (default 350 ms = 3.5 heartbeats).
    pub timeout: Duration,
    /// How long a node that comes back serves before it takes IPs back (default 3 s).
    pub hold_down: Duration,
    /// How long after our heartbeats start saying SERVING or SETTLED we act on it, so
    /// peers have heard first (default 300 ms: three heartbeats).
    pub grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            timeout: Duration::from_millis(350),
            hold_down: Duration::from_secs(3),
            grace: Duration::from_millis(300),
        }
    }
}

/// What a heartbeat did to the detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Fresh heartbeat; `revived` when the peer was not heard directly until now.
    Accepted {
        /// First direct heartbeat, or the first after a silence longer than the timeout.
        revived: bool,
    },
    /// Fresh LEAVING heartbeat: the peer is gone at once.
    Left,
    /// Not newer than what was seen: a replay, a duplicate, reordering, or an incarnation
    /// other than the one its Lease publishes.
    Stale,
    /// From a node that is not a member (no speaker Lease known for it): ignored.
    UnknownNode,
    /// Carries our own node name (a peer list that includes us, or a reflected packet).
    Own,
}

/// What changed at a [`Detector::tick`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tick {
    /// Peers we heard directly that went silent past the timeout (sorted).
    pub silent: Vec<String>,
    /// Our serving state changed to this.
    pub serving: Option<bool>,
    /// We serve again after having stopped in this incarnation (peers may have taken our
    /// IPs meanwhile: announce ours again).
    pub rejoined: bool,
}

/// Why we do not serve, for logs, metrics and the Announced condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotServing {
    /// Caches not synced or responders not open yet.
    NotReady,
    /// Other speakers exist but we hear none of them.
    HearNobody,
    /// We hear serving peers but none of them hears us.
    NobodyHearsUs,
}

impl std::fmt::Display for NotServing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NotServing::NotReady => "not ready (caches or responders)",
            NotServing::HearNobody => "cut off: hears no other speaker's heartbeats",
            NotServing::NobodyHearsUs => "cut off: no other speaker hears its heartbeats",
        })
    }
}

/// A member, from its speaker Lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// The incarnation its Lease publishes; `None` accepts any larger (incarnation, seq).
    pub incarnation: Option<u64>,
    /// Its Lease was renewed within its duration (as this speaker observed, on its own
    /// clock): only such members make us "cut off" when we cannot hear them.
    pub fresh: bool,
}

/// Maps keyed by node id: ids are already uniform (bytes of SHA-256), so a multiply by a
/// per-process random seed is hash enough (SipHash costs more than the rest of a relay's
/// handling), and a peer that picks ids cannot aim them at one bucket without the seed.
type IdMap<V> = HashMap<u32, V, IdHash>;

/// The [`IdMap`] hasher's builder: the process's seed.
#[derive(Debug, Clone, Copy)]
struct IdHash(u64);

impl Default for IdHash {
    fn default() -> Self {
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        IdHash(*SEED.get_or_init(|| {
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64) | 1
        }))
    }
}

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(self.0)
    }
}

/// See [`IdMap`].
#[derive(Debug, Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u32(&mut self, id: u32) {
        self.write_u64(u64::from(id));
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A peer's relays are pruned of stale entries every this many of its heartbeats: a stale
/// relay never counts, so pruning only bounds memory, and need not cost a pass per datagram.
const PRUNE_EVERY: u32 = 8;

/// News of a node relayed by a peer: when that peer last heard it, and what it said.
#[derive(Debug, Clone, Copy)]
struct Relayed {
    at: Instant,
    serving: bool,
    settled: bool,
}

#[derive(Debug, Clone)]
struct Peer {
    /// Its node name, shared with the relay index.
    name: Arc<str>,
    /// [`node_id`] of the name, computed once.
    id: u32,
    incarnation: u64,
    seq: u64,
    /// Last accepted non-LEAVING heartbeat.
    last: Option<Instant>,
    /// When its current incarnation said LEAVING.
    left_at: Option<Instant>,
    serving: bool,
    settled: bool,
    established: bool,
    /// Since when its heartbeats have said it does not serve.
    idle_since: Option<Instant>,
    interfaces: BTreeSet<String>,
    /// What it hears, by node id (merged over its heartbeats, freshest kept).
    relays: IdMap<Relayed>,
    /// Heartbeats since `relays` was last pruned.
    unpruned: u32,
}

/// The freshest news of a node relayed by a serving peer.
#[derive(Debug, Clone)]
struct Best {
    at: Instant,
    serving: bool,
    settled: bool,
    via: Arc<str>,
}

/// A copy of a member's direct news (kept in step with its [`Peer`]).
#[derive(Debug, Clone, Copy, Default)]
struct Direct {
    at: Option<Instant>,
    serving: bool,
    settled: bool,
    has_interfaces: bool,
    left_at: Option<Instant>,
}

/// What the view of one member depends on, by its node id: its freshest relayed news and a
/// copy of its direct news, so that a relay is judged in O(1). Only ids that exactly one
/// member (or retained member) has, other than us, have a slot: relays of others never count.
#[derive(Debug, Clone)]
struct Slot {
    name: Arc<str>,
    relay: Option<Best>,
    direct: Direct,
}

/// A member's entry in the view, as far as a change of it matters: absent, or present with
/// SETTLED and where its interfaces come from (itself, or the peer relaying it).
type ViewKey = Option<(bool, Option<usize>)>;

/// The failure detector of one speaker; see the module docs for the rules.
///
/// The work per heartbeat is O(its heard list) plus O(log N): relays are merged into an
/// index of the freshest serving news per node id, and every time-driven change (a peer's
/// silence, a relay's expiry, the hold-down) happens at or after a horizon kept as a lower
/// bound, so [`Detector::tick`] scans the peers only when that horizon has passed (about
/// four times a second in a steady cluster) or after a rare event (a peer leaving,
/// restarting or stopping to serve, a membership change).
#[derive(Debug, Clone)]
pub struct Detector {
    self_node: String,
    self_id: u32,
    self_interfaces: BTreeSet<String>,
    config: Config,
    /// Members from the Leases (us excluded).
    members: BTreeMap<String, Member>,
    /// Members whose Lease went away while they were alive: kept until they go silent, so
    /// deleted Leases (a cleanup, a prune, a restore) do not make every speaker alone.
    retained: BTreeMap<String, Member>,
    /// Node id → member name; `None` when two members share an id (their relays are ignored).
    ids: IdMap<Option<String>>,
    /// Member (and retained) name → node id.
    id_of: HashMap<String, u32>,
    peers: BTreeMap<String, Peer>,
    /// Replay floors of peers that stopped being members, restored if they come back.
    retired: BTreeMap<String, Peer>,
    /// The relay index: one slot per member id that is unique.
    slots: IdMap<Slot>,
    /// The freshest relay of us by any peer (someone hears us).
    heard_us_at: Option<Instant>,
    /// Peers whose `last` is set (all heard within the timeout until `horizon`).
    heard: usize,
    /// Members that count: a fresh Lease (or retained), not LEAVING.
    counted: usize,
    /// No time-driven change happens before this instant (`None`: none pending). Valid
    /// while `scan_due` is false.
    horizon: Option<Instant>,
    /// The next tick must rescan (after a rare event).
    scan_due: bool,
    /// The view may have changed since [`Detector::take_view_changed`] was last called.
    view_changed: bool,
    ready: bool,
    /// Whether we serve, as of the last tick.
    serving: bool,
    /// Until when we are settling (serving, but a candidate of last resort).
    settling_until: Option<Instant>,
    /// Since when we serve without a break.
    serving_since: Option<Instant>,
    /// We served at some point in this incarnation.
    served_before: bool,
}

impl Detector {
    /// A detector for `self_node` that knows no member yet and is not ready.
    pub fn new(
        self_node: impl Into<String>,
        self_interfaces: BTreeSet<String>,
        config: Config,
    ) -> Detector {
        let self_node = self_node.into();
        Detector {
            self_id: node_id(&self_node),
            self_node,
            self_interfaces,
            config,
            members: BTreeMap::new(),
            retained: BTreeMap::new(),
            ids: IdMap::default(),
            id_of: HashMap::new(),
            peers: BTreeMap::new(),
            retired: BTreeMap::new(),
            slots: IdMap::default(),
            heard_us_at: None,
            heard: 0,
            counted: 0,
            horizon: None,
            scan_due: true,
            view_changed: true,
            ready: false,
            serving: false,
            settling_until: None,
            serving_since: None,
            served_before: false,
        }
    }

    /// The tunables in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Replaces our own usable interfaces (they are in the view and in our heartbeats).
    pub fn set_self_interfaces(&mut self, interfaces: BTreeSet<String>) {
        if self.self_interfaces != interfaces {
            self.self_interfaces = interfaces;
            self.view_changed = true;
        }
    }

    /// Whether this speaker can answer at all: caches synced, responders open.
    pub fn set_ready(&mut self, ready: bool) {
        self.ready = ready;
    }

    /// Sets the members (node → what its Lease publishes) from the API at `now`.
    /// A member whose Lease went away while fresh stays while it is alive; others (a
    /// stale one: the glue marks a peer that left its heartbeat scope stale before it drops
    /// it) are forgotten, keeping their replay floor so old heartbeats cannot revive them.
    pub fn set_members(&mut self, known: BTreeMap<String, Member>, now: Instant) {
        let next: BTreeMap<String, Member> = known
            .into_iter()
            .filter(|(n, _)| *n != self.self_node)
            .collect();
        // Judged on the current membership, so news relayed by peers counts too.
        let retained: BTreeMap<String, Member> = self
            .members
            .iter()
            .chain(&self.retained)
            .filter(|(name, m)| m.fresh && !next.contains_key(*name))
            .filter(|(name, _)| self.news(name, now).is_some_and(|n| n.fresh))
            .map(|(name, m)| (name.clone(), *m))
            .collect();
        // A Lease published with another incarnation is a restart: heartbeats of that
        // incarnation are accepted from now on, the old one's are stale.
        self.members = next;
        self.retained = retained;
        self.reindex();
    }

    /// Members kept alive after their Lease went away (until they go silent).
    pub fn retained(&self) -> impl Iterator<Item = &String> {
        self.retained.keys()
    }

    /// Whether the view ([`Detector::alive`]) may have changed since the last call: false
    /// means it certainly did not, so it need not be rebuilt and compared.
    pub fn take_view_changed(&mut self) -> bool {
        std::mem::take(&mut self.view_changed)
    }

    fn member(&self, name: &str) -> Option<&Member> {
        self.members.get(name).or_else(|| self.retained.get(name))
    }

    /// Rebuilds everything derived from the membership (O(peers + relays)).
    fn reindex(&mut self) {
        let gone: Vec<String> = self
            .peers
            .keys()
            .filter(|n| self.member(n).is_none())
            .cloned()
            .collect();
        for name in gone {
            if let Some(mut peer) = self.peers.remove(&name) {
                peer.interfaces.clear();
                peer.relays.clear();
                self.retired.insert(name, peer);
            }
        }
        while self.retired.len() > MAX_RETIRED {
            self.retired.pop_first();
        }
        let names: Vec<String> = self
            .members
            .keys()
            .chain(self.retained.keys())
            .cloned()
            .collect();
        for name in &names {
            if let Some(peer) = self.retired.remove(name) {
                self.peers.insert(name.clone(), peer);
            }
        }
        let mut ids: IdMap<Option<String>> = IdMap::default();
        let mut id_of = HashMap::new();
        for name in names.into_iter().chain([self.self_node.clone()]) {
            let id = self
                .peers
                .get(&name)
                .map_or_else(|| node_id(&name), |p| p.id);
            id_of.insert(name.clone(), id);
            ids.entry(id)
                .and_modify(|e| *e = None)
                .or_insert(Some(name));
        }
        id_of.remove(&self.self_node);
        self.slots = ids
            .iter()
            .filter_map(|(id, name)| {
                let name = name.as_ref().filter(|n| **n != self.self_node)?;
                let shared = self.peers.get(name).map(|p| p.name.clone());
                Some((
                    *id,
                    Slot {
                        name: shared.unwrap_or_else(|| Arc::from(name.as_str())),
                        relay: None,
                        direct: Direct::default(),
                    },
                ))
            })
            .collect();
        self.ids = ids;
        self.id_of = id_of;
        let names: Vec<Arc<str>> = self.peers.values().map(|p| p.name.clone()).collect();
        for name in &names {
            self.mirror(name);
            self.add_via(name);
        }
        self.heard_us_at = self.max_heard_us();
        self.recount();
        self.rare();
    }

    /// After an event that may move deadlines earlier or change the view in ways not
    /// tracked one by one: the next tick rescans.
    fn rare(&mut self) {
        self.scan_due = true;
        self.view_changed = true;
    }

    /// Recounts the heard peers and the members that count (O(members)).
    fn recount(&mut self) {
        self.heard = self.peers.values().filter(|p| p.last.is_some()).count();
        self.counted = self
            .members
            .iter()
            .filter(|(_, m)| m.fresh)
            .map(|(n, _)| n)
            .chain(self.retained.keys())
            .filter(|n| self.peers.get(*n).is_none_or(|p| p.left_at.is_none()))
            .count();
    }

    /// Copies peer `name`'s direct news into its slot (if its id has one).
    fn mirror(&mut self, name: &str) {
        let Some(p) = self.peers.get(name) else {
            return;
        };
        if let Some(slot) = self.slots.get_mut(&p.id)
            && *slot.name == *name
        {
            slot.direct = Direct {
                at: p.last,
                serving: p.serving,
                settled: p.settled,
                has_interfaces: !p.interfaces.is_empty(),
                left_at: p.left_at,
            };
        }
    }

    /// The freshest relay of us among the peers (O(peers)).
    fn max_heard_us(&self) -> Option<Instant> {
        self.peers
            .values()
            .filter_map(|p| p.relays.get(&self.self_id).map(|r| r.at))
            .max()
    }

    /// Merges every relay of peer `via` into the index, if it serves (O(its relays)).
    fn add_via(&mut self, via: &str) {
        let Some(p) = self.peers.get(via) else {
            return;
        };
        if !p.serving {
            return;
        }
        let name = p.name.clone();
        let own = p.id;
        for (id, r) in &p.relays {
            if *id != own {
                merge(&mut self.slots, *id, *r, &name, self.config.timeout, None);
            }
        }
    }

    /// Takes peer `via`'s relays out of the index (it stopped serving, left or restarted):
    /// each node it was the freshest source of is looked up again among the others.
    fn drop_via(&mut self, via: &str) {
        let lost: Vec<u32> = self
            .slots
            .iter()
            .filter(|(_, s)| s.relay.as_ref().is_some_and(|b| *b.via == *via))
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            if let Some(slot) = self.slots.get_mut(&id) {
                slot.relay = None;
            }
            for p in self.peers.values() {
                if p.serving
                    && p.id != id
                    && *p.name != *via
                    && let Some(r) = p.relays.get(&id)
                {
                    merge(&mut self.slots, id, *r, &p.name, self.config.timeout, None);
                }
            }
        }
        self.heard_us_at = self.max_heard_us();
    }

    /// Feeds one authenticated heartbeat received at `now`.
    pub fn observe(&mut self, hb: &Heartbeat, now: Instant) -> Observed {
        if hb.node() == self.self_node {
            return Observed::Own;
        }
        let Some(member) = self.member(hb.node()).copied() else {
            return Observed::UnknownNode;
        };
        if member
            .incarnation
            .is_some_and(|inc| inc != hb.incarnation())
        {
            return Observed::Stale;
        }
        let timeout = self.config.timeout;
        let revived = match self.peers.get(hb.node()) {
            Some(p) => {
                let same = p.incarnation == hb.incarnation();
                let published = member.incarnation.is_some();
                // Without a published incarnation, only a larger (incarnation, seq) is new.
                if (same || !published) && (hb.incarnation(), hb.seq()) <= (p.incarnation, p.seq) {
                    return Observed::Stale;
                }
                if same && p.left_at.is_some() {
                    // That incarnation said goodbye; only a restart brings the node back.
                    return Observed::Stale;
                }
                !p.last.is_some_and(|t| fresh(t, timeout, now)) || !same
            }
            None => true,
        };
        let before = self.view_key(hb.node(), now);
        if !self.peers.contains_key(hb.node()) {
            let id = self
                .id_of
                .get(hb.node())
                .copied()
                .unwrap_or_else(|| node_id(hb.node()));
            let name: Arc<str> = self
                .slots
                .get(&id)
                .map(|s| s.name.clone())
                .filter(|n| **n == *hb.node())
                .unwrap_or_else(|| Arc::from(hb.node()));
            self.peers.insert(
                hb.node().to_owned(),
                Peer {
                    name,
                    id,
                    incarnation: hb.incarnation(),
                    seq: 0,
                    last: None,
                    left_at: None,
                    serving: false,
                    settled: false,
                    established: false,
                    idle_since: None,
                    interfaces: BTreeSet::new(),
                    relays: IdMap::default(),
                    unpruned: 0,
                },
            );
        }
        let Some(peer) = self.peers.get_mut(hb.node()) else {
            return Observed::UnknownNode;
        };
        let restarted = peer.incarnation != hb.incarnation();
        let was_serving = peer.serving && !restarted;
        let had_last = peer.last.is_some();
        if restarted {
            peer.relays.clear();
            peer.left_at = None;
        }
        peer.incarnation = hb.incarnation();
        peer.seq = hb.seq();
        let via = peer.name.clone();
        let own = peer.id;
        if hb.is_leaving() {
            peer.left_at = Some(now);
            peer.last = None;
            peer.serving = false;
            peer.relays.clear();
            self.mirror(&via);
            self.drop_via(&via);
            self.recount();
            self.rare();
            return Observed::Left;
        }
        peer.last = Some(now);
        peer.idle_since = match (hb.is_serving(), peer.idle_since) {
            (true, _) => None,
            (false, Some(since)) if !revived => Some(since),
            (false, _) => Some(now),
        };
        let idle_since = peer.idle_since;
        peer.serving = hb.is_serving();
        peer.settled = hb.is_settled();
        peer.established = hb.is_established();
        if peer.interfaces != *hb.interfaces() {
            peer.interfaces = hb.interfaces().clone();
            self.view_changed = true;
        }
        let serving = peer.serving;
        let mut updated: Vec<(u32, Relayed)> = Vec::with_capacity(hb.heard().len());
        for h in hb.heard() {
            let at = now
                .checked_sub(Duration::from_millis(u64::from(h.age_ms)))
                .unwrap_or(now);
            let new = Relayed {
                at,
                serving: h.serving,
                settled: h.settled,
            };
            let entry = peer.relays.entry(h.id).or_insert(new);
            if at >= entry.at {
                *entry = new;
                updated.push((h.id, new));
            }
        }
        peer.unpruned += 1;
        if peer.unpruned >= PRUNE_EVERY {
            // Relays older than the timeout can never matter again.
            peer.relays.retain(|_, r| fresh(r.at, timeout, now));
            peer.unpruned = 0;
        }
        if !had_last {
            self.heard += 1;
        }
        if restarted {
            // Its earlier incarnation's relays are gone from the index; it may have
            // said LEAVING before (it counts again).
            self.drop_via(&via);
            self.recount();
            self.rare();
        }
        for (id, r) in &updated {
            if *id == self.self_id && self.heard_us_at.is_none_or(|t| r.at > t) {
                self.heard_us_at = Some(r.at);
                lower(&mut self.horizon, r.at.checked_add(timeout));
            }
        }
        if was_serving && !serving {
            self.drop_via(&via);
            self.rare();
        } else if serving && !was_serving {
            self.add_via(&via);
            self.rare();
        } else if serving {
            let mut changed = false;
            for (id, r) in updated {
                if id != own && id != self.self_id {
                    changed |= merge(&mut self.slots, id, r, &via, timeout, Some(now));
                    lower(&mut self.horizon, r.at.checked_add(timeout));
                }
            }
            self.view_changed |= changed;
        }
        self.mirror(&via);
        lower(&mut self.horizon, now.checked_add(timeout));
        lower(
            &mut self.horizon,
            idle_since.and_then(|t| t.checked_add(timeout)),
        );
        if revived || before != self.view_key(&via, now) {
            self.view_changed = true;
        }
        Observed::Accepted { revived }
    }

    /// Updates our own serving state at `now` and forgets retained members that died.
    pub fn tick(&mut self, now: Instant) -> Tick {
        let mut out = Tick::default();
        let timeout = self.config.timeout;
        if self.scan_due || self.horizon.is_some_and(|h| now >= h) {
            self.scan(now, &mut out.silent);
        }
        let serving = self.not_serving(now).is_none();
        if serving != self.serving {
            out.serving = Some(serving);
            self.serving = serving;
            self.view_changed = true;
            if serving {
                out.rejoined = self.served_before;
                self.served_before = true;
                // Settle only behind a peer that has served without a break: when a whole
                // LAN comes back (or everyone starts), nobody is established and nobody
                // defers, so IPs do not shuffle as each one's hold-down ends.
                let established_peer = self.peers.iter().any(|(name, p)| {
                    p.last.is_some_and(|t| fresh(t, timeout, now))
                        && p.serving
                        && p.established
                        && self.member(name).is_some()
                });
                self.settling_until = established_peer
                    .then(|| now.checked_add(self.config.hold_down))
                    .flatten();
                self.serving_since = Some(now);
                for d in self.own_deadlines() {
                    lower(&mut self.horizon, Some(d));
                }
            } else {
                self.settling_until = None;
                self.serving_since = None;
            }
        }
        out
    }

    /// Every peer and relay, at `now`: silences (sorted into `silent`), retained members
    /// that died, and the next horizon.
    fn scan(&mut self, now: Instant, silent: &mut Vec<String>) {
        let timeout = self.config.timeout;
        let mut quiet: Vec<Arc<str>> = Vec::new();
        for (name, p) in &mut self.peers {
            // A peer heard directly that went silent: reported once, then its news lapses.
            if p.last.is_some_and(|t| !fresh(t, timeout, now)) {
                silent.push(name.clone());
                quiet.push(p.name.clone());
                p.last = None;
            }
        }
        self.heard = self.heard.saturating_sub(quiet.len());
        for name in &quiet {
            self.mirror(name);
        }
        let dead_retained: Vec<String> = self
            .retained
            .keys()
            .filter(|n| !self.news(n, now).is_some_and(|n| n.fresh))
            .cloned()
            .collect();
        if !dead_retained.is_empty() {
            for n in &dead_retained {
                self.retained.remove(n);
            }
            self.reindex();
        }
        self.horizon = self.compute_horizon(now);
        self.scan_due = false;
        self.view_changed = true;
    }

    /// The earliest instant after `now` at which something may change with time alone
    /// (O(peers + relay index)).
    fn compute_horizon(&self, now: Instant) -> Option<Instant> {
        let timeout = self.config.timeout;
        let after = |t: Instant| t.checked_add(timeout);
        let direct = self.peers.values().filter_map(|p| p.last.and_then(after));
        let idle = self
            .peers
            .values()
            .filter(|p| p.last.is_some())
            .filter_map(|p| p.idle_since.and_then(after));
        let relayed = self
            .slots
            .values()
            .filter_map(|s| s.relay.as_ref().and_then(|r| after(r.at)));
        let heard_us = self.heard_us_at.and_then(after);
        direct
            .chain(idle)
            .chain(relayed)
            .chain(heard_us)
            .chain(self.own_deadlines())
            .filter(|t| *t > now)
            .min()
    }

    /// Our own deadlines: the end of settling and of the hold-down, each plus the grace.
    fn own_deadlines(&self) -> Vec<Instant> {
        let grace = self.config.grace;
        let settle = self
            .settling_until
            .filter(|_| self.serving)
            .into_iter()
            .flat_map(move |t| [Some(t), t.checked_add(grace)])
            .flatten();
        let hold_down = self.config.hold_down;
        let establish = self.serving_since.into_iter().flat_map(move |s| {
            [s.checked_add(hold_down), s.checked_add(grace)]
                .into_iter()
                .flatten()
        });
        settle.chain(establish).collect()
    }

    /// Whether the counts kept between scans hold at `now`.
    fn cached(&self, now: Instant) -> bool {
        !self.scan_due && self.horizon.is_none_or(|h| now < h)
    }

    /// Why we do not serve at `now`, or `None` when we do.
    pub fn not_serving(&self, now: Instant) -> Option<NotServing> {
        if !self.ready {
            return Some(NotServing::NotReady);
        }
        if !self.cached(now) {
            return self.not_serving_slow(now);
        }
        let timeout = self.config.timeout;
        // Members that count: a fresh Lease (or one deleted while they beat), not LEAVING.
        if self.counted == 0 {
            return None;
        }
        // Until the horizon, every peer with a `last` was heard within the timeout.
        if self.heard == 0 {
            return Some(NotServing::HearNobody);
        }
        // A relay of us is never younger than its peer's last heartbeat: fresh means that
        // peer is heard too.
        if self.heard_us_at.is_some_and(|t| fresh(t, timeout, now)) {
            return None;
        }
        if self.only_us(now) {
            None
        } else {
            Some(NotServing::NobodyHearsUs)
        }
    }

    /// [`Detector::not_serving`] from scratch (O(members)).
    fn not_serving_slow(&self, now: Instant) -> Option<NotServing> {
        let timeout = self.config.timeout;
        let counted = self
            .members
            .iter()
            .filter(|(_, m)| m.fresh)
            .map(|(n, _)| n)
            .chain(self.retained.keys())
            .any(|n| self.peers.get(n).is_none_or(|p| p.left_at.is_none()));
        if !counted {
            return None;
        }
        let heard = |p: &Peer| p.last.is_some_and(|t| fresh(t, timeout, now));
        let heard_peers: Vec<&Peer> = self.peers.values().filter(|p| heard(p)).collect();
        if heard_peers.is_empty() {
            return Some(NotServing::HearNobody);
        }
        let hears_us = heard_peers.iter().any(|p| {
            p.relays
                .get(&self.self_id)
                .is_some_and(|r| fresh(r.at, timeout, now))
        });
        if hears_us || self.only_us(now) {
            None
        } else {
            Some(NotServing::NobodyHearsUs)
        }
    }

    /// Nobody hears us, but we hear every member that counts and none has served for a
    /// timeout: they hear nobody (else they would hear each other, or us, and serve), so
    /// we alone can. Two nodes with one direction lost end here. O(members): only asked
    /// when no peer hears us.
    fn only_us(&self, now: Instant) -> bool {
        let timeout = self.config.timeout;
        self.members
            .iter()
            .filter(|(_, m)| m.fresh)
            .map(|(n, _)| n)
            .chain(self.retained.keys())
            .filter(|n| self.peers.get(*n).is_none_or(|p| p.left_at.is_none()))
            .all(|n| {
                self.peers.get(n).is_some_and(|p| {
                    p.last.is_some_and(|t| fresh(t, timeout, now))
                        && p.idle_since
                            .is_some_and(|s| s.checked_add(timeout).is_some_and(|d| d <= now))
                })
            })
    }

    /// Whether we serve (as of the last tick).
    pub fn serving(&self) -> bool {
        self.serving
    }

    /// Whether we are settled at `now` (serving, and past the hold-down if there was one).
    pub fn settled(&self, now: Instant) -> bool {
        self.serving && self.settling_until.is_none_or(|u| now >= u)
    }

    /// Whether we have served without a break for the hold-down at `now`.
    pub fn established(&self, now: Instant) -> bool {
        self.serving_since
            .and_then(|s| s.checked_add(self.config.hold_down))
            .is_some_and(|d| d <= now)
    }

    /// The freshest news of member `name`: direct or relayed by a serving peer we hear.
    fn news(&self, name: &str, now: Instant) -> Option<News<'_>> {
        let timeout = self.config.timeout;
        let peer = self.peers.get(name);
        let direct = peer.and_then(|p| {
            p.last.map(|at| News {
                at,
                serving: p.serving,
                settled: p.settled,
                interfaces: Some(&p.interfaces),
                via: None,
                fresh: false,
            })
        });
        let relay = self
            .id_of
            .get(name)
            .and_then(|id| self.slots.get(id))
            .filter(|s| *s.name == *name)
            .and_then(|s| s.relay.as_ref())
            .filter(|r| {
                direct
                    .as_ref()
                    .is_none_or(|d| relay_wins(d.at, r.at, timeout, now))
            });
        let best = match relay {
            Some(r) => {
                let known = peer
                    .filter(|x| !x.interfaces.is_empty())
                    .map(|x| &x.interfaces);
                let via = self.peers.get(&*r.via).map(|v| &v.interfaces);
                Some(News {
                    at: r.at,
                    serving: r.serving,
                    settled: r.settled,
                    interfaces: known.or(via),
                    via: known.is_none().then(|| key_of(&r.via)),
                    fresh: false,
                })
            }
            None => direct,
        };
        let left_at = peer.and_then(|p| p.left_at);
        best.map(|mut b| {
            b.fresh = fresh(b.at, timeout, now) && left_at.is_none_or(|l| b.at > l);
            b
        })
    }

    /// The last sign of life of member `name` as we know it at `now`: its LEAVING
    /// heartbeat, else its freshest news (direct, or relayed and aged by the relay). Where
    /// a takeover's delay is measured from.
    pub fn last_news(&self, name: &str, now: Instant) -> Option<Instant> {
        let left = self.peers.get(name).and_then(|p| p.left_at);
        let news = self.news(name, now).map(|n| n.at);
        left.max(news)
    }

    /// What member `name` looks like in the view at `now`, for change detection.
    fn view_key(&self, name: &str, now: Instant) -> ViewKey {
        self.news(name, now)
            .filter(|n| n.fresh && n.serving)
            .map(|n| (n.settled, n.via))
    }

    /// The speakers that may announce at `now`: us while we serve, and every member whose
    /// freshest news says it serves. Same answer for every call at the same `now` and state.
    ///
    /// We count ourselves a timeout after our heartbeats started saying so (SERVING, then
    /// SETTLED): peers learn a change of ours one heartbeat later, so a node that takes an
    /// IP acts after the one giving it up has heard, and the client sees a gap, never two
    /// answers.
    pub fn alive(&self, now: Instant) -> AliveView {
        let mut view = AliveView::new();
        let grace = self.config.grace;
        let since = |t: Option<Instant>| t.and_then(|t| t.checked_add(grace));
        if self.serving && since(self.serving_since).is_none_or(|t| t <= now) {
            let settling = since(self.settling_until).is_some_and(|t| now < t);
            view.insert(
                self.self_node.clone(),
                Live {
                    interfaces: self.self_interfaces.clone(),
                    settling,
                },
            );
        }
        for name in self.members.keys().chain(self.retained.keys()) {
            if let Some(n) = self.news(name, now)
                && n.fresh
                && n.serving
            {
                view.insert(
                    name.clone(),
                    Live {
                        interfaces: n.interfaces.cloned().unwrap_or_default(),
                        settling: !n.settled,
                    },
                );
            }
        }
        view
    }

    /// Our next heartbeat's state and heard list at `now`: every member we heard directly
    /// within the timeout, ascending by id, with the age of its last heartbeat.
    pub fn outgoing(&self, now: Instant) -> Outgoing {
        let mut heard: Vec<Heard> = self
            .peers
            .values()
            .filter_map(|p| {
                let at = p.last.filter(|t| fresh(*t, self.config.timeout, now))?;
                let age = now.saturating_duration_since(at).as_millis();
                Some(Heard {
                    id: p.id,
                    age_ms: u16::try_from(age).unwrap_or(u16::MAX),
                    serving: p.serving,
                    settled: p.settled,
                })
            })
            .collect();
        heard.sort_by_key(|h| h.id);
        heard.dedup_by_key(|h| h.id);
        Outgoing {
            serving: self.serving,
            settled: self.settled(now),
            established: self.established(now),
            heard,
        }
    }

    /// The next instant after `now` at which [`Detector::tick`] or [`Detector::alive`] may
    /// change without a heartbeat; `None` = only a heartbeat or a membership change can.
    /// May be earlier than the change (a wake-up that finds nothing to do), never later.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        if self.cached(now) {
            return self.horizon;
        }
        self.compute_horizon(now)
    }
}

/// Offers relay `r` of node `id` by serving peer `via` to the index. With `now`, returns
/// whether the node's view entry may have changed (without, the caller assumes it may).
fn merge(
    slots: &mut IdMap<Slot>,
    id: u32,
    r: Relayed,
    via: &Arc<str>,
    timeout: Duration,
    now: Option<Instant>,
) -> bool {
    let Some(slot) = slots.get_mut(&id) else {
        return false;
    };
    let replace = match &slot.relay {
        None => true,
        Some(b) => Arc::ptr_eq(&b.via, via) || r.at > b.at || (r.at == b.at && **via < *b.via),
    };
    if !replace {
        return false;
    }
    let before = now.map(|now| slot_key(slot, timeout, now));
    slot.relay = Some(Best {
        at: r.at,
        serving: r.serving,
        settled: r.settled,
        via: via.clone(),
    });
    before.is_none_or(|b| now.is_none_or(|now| b != slot_key(slot, timeout, now)))
}

/// [`Detector::view_key`] of a slot's member, from the slot alone.
fn slot_key(slot: &Slot, timeout: Duration, now: Instant) -> ViewKey {
    let d = &slot.direct;
    let (at, serving, settled, via) = match &slot.relay {
        Some(r) if d.at.is_none_or(|a| relay_wins(a, r.at, timeout, now)) => (
            r.at,
            r.serving,
            r.settled,
            (!d.has_interfaces).then(|| key_of(&r.via)),
        ),
        _ => {
            let at = d.at?;
            (at, d.serving, d.settled, None)
        }
    };
    let fresh = fresh(at, timeout, now) && d.left_at.is_none_or(|l| at > l);
    (fresh && serving).then_some((settled, via))
}

/// Whether relayed news of a member (heard by a peer at `relayed`) stands over our own
/// (its last heartbeat to us, at `direct`): only once ours is stale. While we hear a node
/// ourselves, no peer's word about it counts, so a lying member cannot relay a live node
/// we hear as gone or not serving (docs/security.md); a relay only keeps alive a node we
/// stopped hearing.
fn relay_wins(direct: Instant, relayed: Instant, timeout: Duration, now: Instant) -> bool {
    relayed > direct && !fresh(direct, timeout, now)
}

/// Identifies a relaying peer in a [`ViewKey`] (by the address of its shared name).
fn key_of(via: &Arc<str>) -> usize {
    Arc::as_ptr(via).cast::<u8>() as usize
}

/// Moves `horizon` earlier to `t` (a new deadline).
fn lower(horizon: &mut Option<Instant>, t: Option<Instant>) {
    if let Some(t) = t
        && horizon.is_none_or(|h| t < h)
    {
        *horizon = Some(t);
    }
}

/// What our next heartbeat says of us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// SERVING.
    pub serving: bool,
    /// SETTLED.
    pub settled: bool,
    /// ESTABLISHED.
    pub established: bool,
    /// Whom we hear.
    pub heard: Vec<Heard>,
}

/// The freshest news of a member.
struct News<'a> {
    at: Instant,
    serving: bool,
    settled: bool,
    interfaces: Option<&'a BTreeSet<String>>,
    /// The relaying peer its interfaces come from ([`key_of`]), when not from itself.
    via: Option<usize>,
    /// Younger than the timeout, and not older than a LEAVING of its incarnation.
    fresh: bool,
}

/// `t` is younger than `timeout` at `now`.
fn fresh(t: Instant, timeout: Duration, now: Instant) -> bool {
    t.checked_add(timeout).is_none_or(|d| now < d)
}

#[cfg(test)]
mod equivalence;
#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;
