//! The detector as it was before its per-datagram work was made incremental (every query
//! scans every peer and every relay): kept, for tests only, as the reference the
//! incremental [`super::Detector`] must agree with (`equivalence.rs`).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::{AliveView, Config, Live, Member, NotServing, Observed, Outgoing, Tick};
use crate::liveness::codec::{Heard, Heartbeat, node_id};

const MAX_RETIRED: usize = 1024;

/// News of a node relayed by a peer: when that peer last heard it, and what it said.
#[derive(Debug, Clone, Copy)]
struct Relayed {
    at: Instant,
    serving: bool,
    settled: bool,
}

#[derive(Debug, Clone)]
struct Peer {
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
    relays: HashMap<u32, Relayed>,
}

/// The failure detector of one speaker; see the module docs for the rules.
#[derive(Debug, Clone)]
pub struct Reference {
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
    ids: HashMap<u32, Option<String>>,
    peers: BTreeMap<String, Peer>,
    /// Replay floors of peers that stopped being members, restored if they come back.
    retired: BTreeMap<String, Peer>,
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

impl Reference {
    /// A detector for `self_node` that knows no member yet and is not ready.
    pub fn new(
        self_node: impl Into<String>,
        self_interfaces: BTreeSet<String>,
        config: Config,
    ) -> Reference {
        let self_node = self_node.into();
        Reference {
            self_id: node_id(&self_node),
            self_node,
            self_interfaces,
            config,
            members: BTreeMap::new(),
            retained: BTreeMap::new(),
            ids: HashMap::new(),
            peers: BTreeMap::new(),
            retired: BTreeMap::new(),
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
        self.self_interfaces = interfaces;
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

    fn member(&self, name: &str) -> Option<&Member> {
        self.members.get(name).or_else(|| self.retained.get(name))
    }

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
        let mut ids: HashMap<u32, Option<String>> = HashMap::new();
        for name in names.into_iter().chain([self.self_node.clone()]) {
            ids.entry(node_id(&name))
                .and_modify(|e| *e = None)
                .or_insert(Some(name));
        }
        self.ids = ids;
    }

    /// Feeds one authenticated heartbeat received at `now`.
    pub fn observe(&mut self, hb: &Heartbeat, now: Instant) -> Observed {
        if hb.node() == self.self_node {
            return Observed::Own;
        }
        let Some(member) = self.member(hb.node()) else {
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
        let id_of = |h: &Heard| h.id;
        let peer = self
            .peers
            .entry(hb.node().to_owned())
            .or_insert_with(|| Peer {
                incarnation: hb.incarnation(),
                seq: 0,
                last: None,
                left_at: None,
                serving: false,
                settled: false,
                established: false,
                idle_since: None,
                interfaces: BTreeSet::new(),
                relays: HashMap::new(),
            });
        if peer.incarnation != hb.incarnation() {
            peer.relays.clear();
            peer.left_at = None;
        }
        peer.incarnation = hb.incarnation();
        peer.seq = hb.seq();
        if hb.is_leaving() {
            peer.left_at = Some(now);
            peer.last = None;
            peer.serving = false;
            peer.relays.clear();
            return Observed::Left;
        }
        peer.last = Some(now);
        peer.idle_since = match (hb.is_serving(), peer.idle_since) {
            (true, _) => None,
            (false, Some(since)) if !revived => Some(since),
            (false, _) => Some(now),
        };
        peer.serving = hb.is_serving();
        peer.settled = hb.is_settled();
        peer.established = hb.is_established();
        peer.interfaces = hb.interfaces().clone();
        for h in hb.heard() {
            let at = now
                .checked_sub(Duration::from_millis(u64::from(h.age_ms)))
                .unwrap_or(now);
            let entry = peer.relays.entry(id_of(h)).or_insert(Relayed {
                at,
                serving: h.serving,
                settled: h.settled,
            });
            if at >= entry.at {
                *entry = Relayed {
                    at,
                    serving: h.serving,
                    settled: h.settled,
                };
            }
        }
        // Relays older than the timeout can never matter again.
        peer.relays.retain(|_, r| fresh(r.at, timeout, now));
        Observed::Accepted { revived }
    }

    /// Updates our own serving state at `now` and forgets retained members that died.
    pub fn tick(&mut self, now: Instant) -> Tick {
        let mut out = Tick::default();
        let timeout = self.config.timeout;
        for (name, p) in &mut self.peers {
            // A peer heard directly that went silent: reported once, then its news lapses.
            if p.last.is_some_and(|t| !fresh(t, timeout, now)) {
                out.silent.push(name.clone());
                p.last = None;
            }
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
        let serving = self.not_serving(now).is_none();
        if serving != self.serving {
            out.serving = Some(serving);
            self.serving = serving;
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
            } else {
                self.settling_until = None;
                self.serving_since = None;
            }
        }
        out
    }

    /// Why we do not serve at `now`, or `None` when we do.
    pub fn not_serving(&self, now: Instant) -> Option<NotServing> {
        let timeout = self.config.timeout;
        if !self.ready {
            return Some(NotServing::NotReady);
        }
        // Members that count: a fresh Lease (or one deleted while they beat), not LEAVING.
        let counted: Vec<&str> = self
            .members
            .iter()
            .filter(|(_, m)| m.fresh)
            .map(|(n, _)| n.as_str())
            .chain(self.retained.keys().map(String::as_str))
            .filter(|n| self.peers.get(*n).is_none_or(|p| p.left_at.is_none()))
            .collect();
        if counted.is_empty() {
            return None;
        }
        let heard = |p: &Peer| p.last.is_some_and(|t| fresh(t, timeout, now));
        let heard_peers: Vec<&Peer> = self
            .peers
            .iter()
            .filter(|(name, p)| self.member(name).is_some() && heard(p))
            .map(|(_, p)| p)
            .collect();
        if heard_peers.is_empty() {
            return Some(NotServing::HearNobody);
        }
        let hears_us = heard_peers.iter().any(|p| {
            p.relays
                .get(&self.self_id)
                .is_some_and(|r| fresh(r.at, timeout, now))
        });
        // Nobody hears us, but we hear every member that counts and none has served for a
        // timeout: they hear nobody (else they would hear each other, or us, and serve), so
        // we alone can. Two nodes with one direction lost end here.
        let only_us = counted.iter().all(|n| {
            self.peers.get(*n).is_some_and(|p| {
                heard(p)
                    && p.idle_since
                        .is_some_and(|s| s.checked_add(timeout).is_some_and(|d| d <= now))
            })
        });
        if hears_us || only_us {
            None
        } else {
            Some(NotServing::NobodyHearsUs)
        }
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
        let id = node_id(name);
        let unique = self
            .ids
            .get(&id)
            .is_some_and(|n| n.as_deref() == Some(name));
        let peer = self.peers.get(name);
        let mut best: Option<News<'_>> = peer.and_then(|p| {
            p.last.map(|at| News {
                at,
                serving: p.serving,
                settled: p.settled,
                interfaces: Some(&p.interfaces),
                fresh: false,
            })
        });
        if unique {
            for (via, p) in &self.peers {
                if via == name
                    || !p.serving
                    || !p.last.is_some_and(|t| fresh(t, timeout, now))
                    || self.member(via).is_none()
                {
                    continue;
                }
                let Some(r) = p.relays.get(&id) else { continue };
                // Our own fresh news of the node stands over any relay.
                let direct_fresh = peer
                    .and_then(|x| x.last)
                    .is_some_and(|t| fresh(t, timeout, now));
                if !direct_fresh && best.as_ref().is_none_or(|b| r.at > b.at) {
                    let known = peer
                        .filter(|x| !x.interfaces.is_empty())
                        .map(|x| &x.interfaces);
                    best = Some(News {
                        at: r.at,
                        serving: r.serving,
                        settled: r.settled,
                        interfaces: known.or(Some(&p.interfaces)),
                        fresh: false,
                    });
                }
            }
        }
        let left_at = peer.and_then(|p| p.left_at);
        best.map(|mut b| {
            b.fresh = fresh(b.at, timeout, now) && left_at.is_none_or(|l| b.at > l);
            b
        })
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
            .iter()
            .filter(|(name, _)| self.member(name).is_some())
            .filter_map(|(name, p)| {
                let at = p.last.filter(|t| fresh(*t, self.config.timeout, now))?;
                let age = now.saturating_duration_since(at).as_millis();
                Some(Heard {
                    id: node_id(name),
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

    /// The next instant after `now` at which `Reference::tick` or `Reference::alive` may
    /// change without a heartbeat; `None` = only a heartbeat or a membership change can.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let timeout = self.config.timeout;
        let direct = self
            .peers
            .values()
            .filter_map(|p| p.last)
            .filter_map(|t| t.checked_add(timeout));
        let relayed = self
            .peers
            .values()
            .filter(|p| p.last.is_some())
            .flat_map(|p| p.relays.values())
            .filter_map(|r| r.at.checked_add(timeout));
        let settle = self
            .settling_until
            .filter(|_| self.serving)
            .into_iter()
            .flat_map(|t| [Some(t), t.checked_add(self.config.grace)])
            .flatten();
        let establish = self.serving_since.into_iter().flat_map(|s| {
            [
                s.checked_add(self.config.hold_down),
                s.checked_add(self.config.grace),
            ]
            .into_iter()
            .flatten()
        });
        let idle = self
            .peers
            .values()
            .filter(|p| p.last.is_some())
            .filter_map(|p| p.idle_since)
            .filter_map(|t| t.checked_add(timeout));
        direct
            .chain(relayed)
            .chain(settle)
            .chain(establish)
            .chain(idle)
            .filter(|t| *t > now)
            .min()
    }
}

/// The freshest news of a member.
struct News<'a> {
    at: Instant,
    serving: bool,
    settled: bool,
    interfaces: Option<&'a BTreeSet<String>>,
    /// Younger than the timeout, and not older than a LEAVING of its incarnation.
    fresh: bool,
}

/// `t` is younger than `timeout` at `now`.
fn fresh(t: Instant, timeout: Duration, now: Instant) -> bool {
    t.checked_add(timeout).is_none_or(|d| now < d)
}
