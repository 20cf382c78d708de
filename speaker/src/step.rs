//! The speaker's decision loop, pure: given what the watches and the heartbeats say now,
//! what the shell must do (announce, announce again, report, wake up later). Time is an
//! input; nothing here reads a clock, a socket or the API.
//!
//! ```text
//!   Inputs { synced, can_answer, world (speakers = alive view), alive, not_serving, peers,
//!            scope, alive_changed, rejoined_after_isolation }  + now
//!        │
//!        ▼  Decider::step
//!   Actions { ready, announce (new IP → interfaces), fresh, takeover, announce_again,
//!             table, report (NodeAnnouncement), wake_at }
//! ```
//!
//! The rules, in order:
//! - **ready** (what the heartbeats say about us) = caches synced and a responder can open.
//! - **warm-up**: nothing is decided until one heartbeat timeout plus an interval after
//!   the caches first synced, so a starting speaker has heard every live peer before it
//!   elects (acting on a partial view would elect itself for a peer's IPs).
//! - **scope** ([`Scope`]): we hear only our group (docs/failover.md#who-heartbeats-whom),
//!   so the alive view, and the table, are right only for IPs whose candidates are all in
//!   it; we only ever win IPs we are a candidate for, and those are. A peer that enters the
//!   scope is waited for as at start: for a warm-up we gain no IP and do not count it out.
//! - **election**: [`core::desired`] on the world, whose speakers are the alive view; the
//!   liveness detector already applies the cut-off rules (a speaker that hears no member,
//!   or that no serving member hears, is not in its own view), the hold-down (a node that
//!   came back is `settling` and wins only what no settled node can take) and relays.
//! - **announce** when this node's share of the table changed; a **takeover** is a gain
//!   caused by a change of the alive view (a peer died or left). Gained IPs that no node
//!   announced in the previous table are **fresh**: the data plane probes for another
//!   host using them before it announces them (a takeover, a failback or a speaker's first
//!   decision is announced at once and probed alongside: dataplane::conflict).
//! - **announce again** (gratuitous ARP / unsolicited NA for everything we hold) when a
//!   peer came back or we rejoined after isolation: while apart, clients may have learned
//!   another MAC for IPs we keep.
//! - **report** this node's NodeAnnouncement when it changed ([`status::report`]): peers
//!   of our scope we do not count as serving (never one outside it), and, from the
//!   lowest-named serving speaker of our view, the Services nobody announces that we judge.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ferrolb_crds::NodeAnnouncementSpec;

use crate::core::{self, Interfaces, Table, World};
use crate::liveness::{AliveView, NotServing, PeerAddr};
use crate::scope::Scope;
use crate::status;

/// What the loop knows at one moment.
#[derive(Debug)]
pub struct Inputs<'a> {
    /// Every watched kind has been listed.
    pub synced: bool,
    /// A responder can open on an allowed interface.
    pub can_answer: bool,
    /// The core's world, its speakers being `alive` (`None` while not synced).
    pub world: Option<&'a World>,
    /// The speakers that may announce, us included while we serve.
    pub alive: &'a AliveView,
    /// Why we do not serve, if we do not.
    pub not_serving: Option<NotServing>,
    /// Known peers (every speaker Lease but ours): incarnation and freshness.
    pub peers: &'a BTreeMap<String, PeerAddr>,
    /// Whom we heartbeat, and which IPs our table judges ([`Scope::of`] the world).
    pub scope: &'a Scope,
    /// The alive view changed since the last step.
    pub alive_changed: bool,
    /// The detector saw us rejoin after being cut off.
    pub rejoined_after_isolation: bool,
}

/// What the shell must do after a step.
#[derive(Debug, Default, PartialEq)]
pub struct Actions {
    /// Whether we are ready to serve (published in our heartbeats).
    pub ready: bool,
    /// The new set of IPs to answer for, when it changed.
    pub announce: Option<BTreeMap<IpAddr, Interfaces>>,
    /// Gained IPs that no node announced in the previous table (a new Service, an IP
    /// that had no eligible node): probed for before they are announced.
    pub fresh: BTreeSet<IpAddr>,
    /// IPs gained and lost by `announce`.
    pub gained: usize,
    /// IPs lost by `announce`.
    pub lost: usize,
    /// The gain follows a change of the alive view (a failover).
    pub takeover: bool,
    /// On a takeover, the speakers that left the alive view this step: whose IPs we took.
    pub departed: BTreeSet<String>,
    /// Send gratuitous ARP / unsolicited NA again for everything we hold.
    pub announce_again: bool,
    /// The table elected this step (for metrics), when one was.
    pub table: Option<Table>,
    /// This node's report, when it changed.
    pub report: Option<NodeAnnouncementSpec>,
    /// Step again at this time even if nothing else happens (warm-up end).
    pub wake_at: Option<Instant>,
}

/// The loop's memory between steps.
#[derive(Debug)]
pub struct Decider {
    me: String,
    incarnation: u64,
    warmup: Duration,
    warm_at: Option<Instant>,
    announced: BTreeMap<IpAddr, Interfaces>,
    last_alive: BTreeSet<String>,
    reported: Option<NodeAnnouncementSpec>,
    /// The known peers outside our scope at the last decision.
    outside: BTreeSet<String>,
    /// Known peers that entered our scope since, until when they are new to us.
    joined: BTreeMap<String, Instant>,
    /// The IPs some node announced in the last table (`None` before the first one).
    had_announcer: Option<BTreeSet<IpAddr>>,
}

impl Decider {
    /// A speaker for node `me` with this start's `incarnation`, waiting `warmup` after its
    /// caches synced before it decides.
    pub fn new(me: impl Into<String>, incarnation: u64, warmup: Duration) -> Self {
        Decider {
            me: me.into(),
            incarnation,
            warmup,
            warm_at: None,
            announced: BTreeMap::new(),
            last_alive: BTreeSet::new(),
            reported: None,
            outside: BTreeSet::new(),
            joined: BTreeMap::new(),
            had_announcer: None,
        }
    }

    /// This node's report as last decided (before the shell narrows it to the interfaces
    /// that answer); `None` before the first decision.
    pub fn reported(&self) -> Option<&NodeAnnouncementSpec> {
        self.reported.as_ref()
    }

    /// What this node answers for now.
    pub fn announced(&self) -> &BTreeMap<IpAddr, Interfaces> {
        &self.announced
    }

    /// The report a speaker that stopped deciding (shutting down) leaves behind.
    pub fn leaving(&mut self) -> NodeAnnouncementSpec {
        self.announced.clear();
        let r = status::leaving(self.incarnation);
        self.reported = Some(r.clone());
        r
    }

    /// One decision at `now`.
    pub fn step(&mut self, i: &Inputs<'_>, now: Instant) -> Actions {
        let mut out = Actions {
            ready: i.synced && i.can_answer,
            ..Default::default()
        };
        let Some(world) = i.world.filter(|_| i.synced) else {
            return out;
        };
        let warm = *self.warm_at.get_or_insert(now + self.warmup);
        if now < warm {
            out.wake_at = Some(warm);
            return out;
        }
        // A known peer that enters our scope (a label or an advertisement changed) is new
        // to us as every peer is at start: for a warm-up we take no IP (it may rank first
        // for one and be heard a moment later) and do not count it out. (A new speaker is
        // warming up itself; with an advertisement of every node, nobody is ever outside.)
        let (inside, outside): (Vec<&String>, Vec<&String>) =
            i.peers.keys().partition(|n| i.scope.contains(n));
        for n in inside.iter().filter(|n| self.outside.contains(**n)) {
            self.joined.insert((*n).clone(), now + self.warmup);
        }
        self.joined
            .retain(|n, until| *until > now && i.scope.contains(n));
        self.outside = outside.into_iter().cloned().collect();
        out.wake_at = self.joined.values().min().copied();

        let alive: BTreeSet<String> = i.alive.keys().cloned().collect();
        let came_back = alive
            .iter()
            .any(|n| !self.last_alive.contains(n) && !self.joined.contains_key(n));
        let rejoined = i.rejoined_after_isolation || (came_back && !self.last_alive.is_empty());
        let departed: BTreeSet<String> = self.last_alive.difference(&alive).cloned().collect();
        self.last_alive = alive;

        let table = core::desired(world);
        let mut local = core::local_announcements(&table, &self.me);
        // IPs the table gives us that we hold back while a peer joins: not claimed in the
        // report either (status::held_back).
        let mut held = BTreeSet::new();
        if !self.joined.is_empty() {
            local.retain(|ip, _| {
                let keep = self.announced.contains_key(ip);
                if !keep {
                    held.insert(*ip);
                }
                keep
            });
        }
        if local != self.announced {
            out.gained = local
                .keys()
                .filter(|ip| !self.announced.contains_key(ip))
                .count();
            out.lost = self
                .announced
                .keys()
                .filter(|ip| !local.contains_key(ip))
                .count();
            out.takeover = i.alive_changed && out.gained > 0;
            if let Some(had) = &self.had_announcer {
                out.fresh = local
                    .keys()
                    .filter(|ip| !self.announced.contains_key(ip) && !had.contains(ip))
                    .copied()
                    .collect();
            }
            if out.takeover {
                out.departed = departed;
            }
            self.announced = local.clone();
            out.announce = Some(local);
        }
        out.announce_again = rejoined && !self.announced.is_empty();
        // Announced somewhere: by a peer, as the table says, or by us, as we really do (the
        // table may name us for an IP we hold back while a peer joins our scope).
        self.had_announcer = Some(
            table
                .ips()
                .iter()
                .filter(|(ip, d)| {
                    d.announcer().is_some_and(|n| n != self.me) || self.announced.contains_key(*ip)
                })
                .map(|(ip, _)| *ip)
                .collect(),
        );

        // The lowest-named serving speaker of our view also reports the Services nobody
        // announces, those whose IPs it judges. A speaker no advertisement selects hears
        // nobody: it keeps house only when nobody at all is selected (then the lowest-named
        // speaker with a fresh Lease does, so that someone says why nothing is announced).
        let housekeeper = if i.scope.is_empty() {
            i.alive.contains_key(&self.me)
                && i.scope.nobody_selected()
                && i.peers.iter().all(|(n, p)| !p.fresh || *n > self.me)
        } else {
            i.alive.keys().next() == Some(&self.me)
        };
        let judge = |ip: IpAddr, d: &core::Decision| i.scope.judges_decision(world, ip, d);
        // Known speakers (fresh Leases) in our scope that we do not count as serving: the
        // controller reads this to discount a crashed node's stale report of what it
        // announced. One outside our scope we do not hear, and must never count out.
        let down: BTreeMap<String, u64> = i
            .peers
            .iter()
            .filter(|(node, p)| {
                p.fresh
                    && i.scope.contains(node)
                    && !self.joined.contains_key(*node)
                    && !i.alive.contains_key(*node)
            })
            .filter_map(|(node, p)| Some((node.clone(), p.incarnation?)))
            .collect();
        let report = status::report(
            &table,
            &self.me,
            housekeeper.then_some(&judge as status::Judge<'_>),
            self.incarnation,
            i.not_serving,
            &down,
        );
        let report = status::held_back(report, &self.me, &held);
        if self.reported.as_ref() != Some(&report) {
            self.reported = Some(report.clone());
            out.report = Some(report);
        }
        out.table = Some(table);
        out
    }
}

#[cfg(test)]
mod tests;
