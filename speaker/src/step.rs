//! The speaker's decision loop, pure: given what the watches and the heartbeats say now,
//! what the shell must do (announce, announce again, report, wake up later). Time is an
//! input; nothing here reads a clock, a socket or the API.
//!
//! ```text
//!   Inputs { synced, can_answer, world (speakers = alive view), alive, not_serving, peers,
//!            alive_changed, rejoined_after_isolation }  + now
//!        │
//!        ▼  Decider::step
//!   Actions { ready, announce (new IP → interfaces), takeover, announce_again,
//!             table, report (NodeAnnouncement), wake_at }
//! ```
//!
//! The rules, in order:
//! - **ready** (what the heartbeats say about us) = caches synced and a responder can open.
//! - **warm-up**: nothing is decided until one heartbeat timeout plus an interval after
//!   the caches first synced, so a starting speaker has heard every live peer before it
//!   elects (acting on a partial view would elect itself for a peer's IPs).
//! - **election**: [`core::desired`] on the world, whose speakers are the alive view; the
//!   liveness detector already applies the cut-off rules (a speaker that hears no member,
//!   or that no serving member hears, is not in its own view), the hold-down (a node that
//!   came back is `settling` and wins only what no settled node can take) and relays.
//! - **announce** when this node's share of the table changed; a **takeover** is a gain
//!   caused by a change of the alive view (a peer died or left).
//! - **announce again** (gratuitous ARP / unsolicited NA for everything we hold) when a
//!   peer came back or we rejoined after isolation: while apart, clients may have learned
//!   another MAC for IPs we keep.
//! - **report** this node's NodeAnnouncement when it changed ([`status::report`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ferrolb_crds::NodeAnnouncementSpec;

use crate::core::{self, Table, World};
use crate::liveness::{AliveView, NotServing, PeerAddr};
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
    /// Known peers (from their Leases): incarnation and freshness.
    pub peers: &'a BTreeMap<String, PeerAddr>,
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
    pub announce: Option<BTreeMap<IpAddr, BTreeSet<String>>>,
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
    announced: BTreeMap<IpAddr, BTreeSet<String>>,
    last_alive: BTreeSet<String>,
    reported: Option<NodeAnnouncementSpec>,
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
        }
    }

    /// What this node answers for now.
    pub fn announced(&self) -> &BTreeMap<IpAddr, BTreeSet<String>> {
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
        let alive: BTreeSet<String> = i.alive.keys().cloned().collect();
        let came_back = alive.iter().any(|n| !self.last_alive.contains(n));
        let rejoined = i.rejoined_after_isolation || (came_back && !self.last_alive.is_empty());
        let departed: BTreeSet<String> = self.last_alive.difference(&alive).cloned().collect();
        self.last_alive = alive;

        let table = core::desired(world);
        let local = core::local_announcements(&table, &self.me);
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
            if out.takeover {
                out.departed = departed;
            }
            self.announced = local.clone();
            out.announce = Some(local);
        }
        out.announce_again = rejoined && !self.announced.is_empty();

        // The lowest-named serving speaker also reports the Services nobody announces.
        let housekeeper = i.alive.keys().next() == Some(&self.me);
        // Known speakers (fresh Leases) we do not count as serving: the controller reads
        // this to discount a crashed node's stale report of what it announced.
        let down: BTreeMap<String, u64> = i
            .peers
            .iter()
            .filter(|(node, p)| p.fresh && !i.alive.contains_key(*node))
            .filter_map(|(node, p)| Some((node.clone(), p.incarnation?)))
            .collect();
        let report = status::report(
            &table,
            &self.me,
            housekeeper,
            self.incarnation,
            i.not_serving,
            &down,
        );
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
