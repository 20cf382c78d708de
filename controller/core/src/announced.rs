//! The `ferrolb.io/Announced` condition of every Service, folded from the speakers'
//! reports. Speakers never write Services: each writes its own `NodeAnnouncement` (what it
//! announces, whom it counts out), and the controller is the one writer of the condition.
//!
//! ```text
//!   NodeAnnouncement per node ─┐
//!                              ├─▶ Fold::new (which reports count) ─▶ verdict(Service) ─▶ condition
//!   speaker Lease per node ────┘     fresh Lease, same incarnation,
//!                                    not counted out by a serving peer
//! ```
//!
//! Which reports count: a node's report counts while its Lease is fresh and carries the
//! report's incarnation (a report of an earlier start is stale), unless a serving peer's
//! report counts that very incarnation out (the peer took its IPs over after a crash), and
//! the node does not count that peer out in turn. When both count each other out, neither
//! judgement wins: both reports count, and an IP both claim shows as `SplitAnnouncement`.
//!
//! An IP its elected node withholds because another host already uses it (RFC 5227) is
//! reported by that node alone, as `AddressConflict`; the other speakers name that node as
//! the announcer. So an unannounced IP is explained by a conflict report of any counted
//! node first, and each new conflict the condition names is noted once for a Warning Event.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use ferrolb_crds::{IpReport, NodeAnnouncementSpec, ServiceReport};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::allocator::ServiceKey;
use crate::service;

use ferrolb_crds::conditions::ANNOUNCED;

/// What the controller knows of one speaker from its Lease.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpeakerLease {
    /// The incarnation the Lease publishes (`None`: a speaker that publishes none).
    pub incarnation: Option<String>,
    /// Renewed within its duration, on the controller's clock.
    pub fresh: bool,
}

/// Reason of a condition naming two nodes that announce one IP at once.
pub const SPLIT: &str = "SplitAnnouncement";
/// Reason when no serving speaker reports at all.
pub const NO_SPEAKER: &str = "NoLiveSpeaker";
/// Reason when speakers serve but none reports a Service that was announced: every node
/// that may announce it is down or cut off, and the speakers that serve do not heartbeat
/// them, so they cannot judge it (docs/failover.md#who-heartbeats-whom).
pub const NOT_REPORTED: &str = "NotReported";
/// Reason a speaker gives for an IP it won but withholds: another host (a MAC that is not a
/// FerroLB node) already uses it (docs/troubleshooting.md#address-conflicts).
pub use ferrolb_crds::conditions::ADDRESS_CONFLICT;

/// What the condition of one Service should say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// This status, reason and message; `holder` is the (first) announcing node.
    Set {
        /// True when at least one IP is announced by exactly one node.
        status: bool,
        /// CamelCase reason.
        reason: String,
        /// For people.
        message: String,
        /// The node named first as announcer.
        holder: Option<String>,
        /// The speakers' `AddressConflict` messages the message includes, one per IP.
        conflicts: Vec<String>,
    },
    /// Nothing counted mentions this Service yet: leave its condition as it is.
    Unknown,
}

/// The counted reports, indexed by Service.
#[derive(Debug)]
pub struct Fold<'a> {
    counted: BTreeMap<&'a str, &'a NodeAnnouncementSpec>,
    by_service: HashMap<&'a str, Vec<(&'a str, &'a ServiceReport)>>,
    /// Some speaker Lease exists, fresh or not.
    speakers_known: bool,
}

fn counts_out(r: &NodeAnnouncementSpec, node: &str, incarnation: &str) -> bool {
    r.serving
        && r.down
            .iter()
            .any(|d| d.node == node && d.incarnation == incarnation)
}

impl<'a> Fold<'a> {
    /// Which of `reports` (node → report) count, given the speakers' Leases.
    pub fn new(
        reports: &'a BTreeMap<String, NodeAnnouncementSpec>,
        leases: &BTreeMap<String, SpeakerLease>,
    ) -> Self {
        let current: BTreeMap<&str, &NodeAnnouncementSpec> = reports
            .iter()
            .filter(|(node, r)| {
                leases.get(*node).is_some_and(|l| {
                    l.fresh && l.incarnation.as_ref().is_none_or(|i| *i == r.incarnation)
                })
            })
            .map(|(n, r)| (n.as_str(), r))
            .collect();
        let counted: BTreeMap<&str, &NodeAnnouncementSpec> = current
            .iter()
            .filter(|(x, rx)| {
                !current.iter().any(|(y, ry)| {
                    y != *x
                        && counts_out(ry, x, &rx.incarnation)
                        && !counts_out(rx, y, &ry.incarnation)
                })
            })
            .map(|(n, r)| (*n, *r))
            .collect();
        let mut by_service: HashMap<&str, Vec<(&str, &ServiceReport)>> = HashMap::new();
        for (node, r) in &counted {
            for s in &r.services {
                by_service
                    .entry(s.service.as_str())
                    .or_default()
                    .push((node, s));
            }
        }
        Fold {
            counted,
            by_service,
            speakers_known: !leases.is_empty(),
        }
    }

    /// The nodes whose reports count.
    pub fn counted(&self) -> impl Iterator<Item = &str> {
        self.counted.keys().copied()
    }

    /// Whether any counted speaker serves.
    pub fn any_serving(&self) -> bool {
        self.counted.values().any(|r| r.serving)
    }

    /// What the condition of the Service `key` (`namespace/name`, with IPs) should say.
    pub fn verdict(&self, key: &str) -> Verdict {
        let entries = self.by_service.get(key).map(Vec::as_slice).unwrap_or(&[]);
        if entries.is_empty() {
            // Not reported yet; or no speaker was ever installed (a controller-only test
            // cluster): then there is nothing to say, and no write per Service to make.
            if self.any_serving() || !self.speakers_known {
                return Verdict::Unknown;
            }
            // Say why each reporting speaker does not serve (cut off, not ready, leaving).
            let why: Vec<String> = self
                .counted
                .iter()
                .map(|(n, r)| format!("{n}: {}", r.reason.as_deref().unwrap_or("not serving")))
                .collect();
            let message = if why.is_empty() {
                "no speaker is serving: none reports, or every report is stale \
                 (are the speakers running?)"
                    .to_string()
            } else {
                format!("no speaker is serving ({})", why.join(", "))
            };
            return Verdict::Set {
                status: false,
                reason: NO_SPEAKER.into(),
                message,
                holder: None,
                conflicts: Vec::new(),
            };
        }
        // Who claims which IP: a node's entry naming itself as the IP's announcer.
        let mut claims: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (node, s) in entries {
            for ip in &s.ips {
                if ip.node.as_deref() == Some(*node) {
                    claims.entry(ip.ip.as_str()).or_default().insert(node);
                }
            }
        }
        let split: Vec<String> = claims
            .iter()
            .filter(|(_, nodes)| nodes.len() > 1)
            .map(|(ip, nodes)| {
                let nodes: Vec<&str> = nodes.iter().copied().collect();
                format!("{ip} is announced by {} at once", nodes.join(" and "))
            })
            .collect();
        if !split.is_empty() {
            return Verdict::Set {
                status: false,
                reason: SPLIT.into(),
                message: format!(
                    "{}: these nodes do not count each other as serving",
                    split.join("; ")
                ),
                holder: None,
                conflicts: Vec::new(),
            };
        }
        if claims.is_empty() {
            // Nobody announces it: the explanation of the lowest-named serving reporter.
            // Every IP in conflict: AddressConflict, naming each; otherwise the first other
            // IP's reason, with any conflicts named after its message.
            let (_, s) = entries
                .iter()
                .find(|(n, _)| self.counted[n].serving)
                .unwrap_or(&entries[0]);
            let why: Vec<&IpReport> = s.ips.iter().map(|i| explained(entries, i)).collect();
            let conflicts: Vec<String> = why.iter().filter_map(|i| conflict(i)).collect();
            let (reason, mut message) = match why.iter().find(|i| conflict(i).is_none()) {
                None if !conflicts.is_empty() => (ADDRESS_CONFLICT.to_string(), Vec::new()),
                first => (
                    first
                        .and_then(|i| i.reason.clone())
                        .unwrap_or_else(|| "NotAnnounced".into()),
                    vec![
                        first
                            .and_then(|i| i.message.clone())
                            .unwrap_or_else(|| "not announced".into()),
                    ],
                ),
            };
            message.extend(conflicts.iter().cloned());
            return Verdict::Set {
                status: false,
                reason,
                message: message.join("; "),
                holder: None,
                conflicts,
            };
        }
        // The first claimer's view lists every IP; each claimed one by its claimer.
        let first_claimer = claims.values().flat_map(|n| n.iter()).min().copied();
        let (_, view) = entries
            .iter()
            .find(|(n, _)| Some(*n) == first_claimer)
            .expect("a claimer has an entry");
        let mut announced: Vec<(String, String)> = Vec::new();
        let mut missing = Vec::new();
        let mut conflicts = Vec::new();
        for ip in &view.ips {
            match claims.get(ip.ip.as_str()).and_then(|n| n.first()) {
                Some(node) => {
                    let entry = entries
                        .iter()
                        .find(|(n, _)| n == node)
                        .and_then(|(_, s)| s.ips.iter().find(|i| i.ip == ip.ip))
                        .unwrap_or(ip);
                    announced.push((
                        node.to_string(),
                        format!("{} on {}", ip.ip, entry.interfaces.join(",")),
                    ));
                }
                None => {
                    let why = explained(entries, ip);
                    if let Some(m) = conflict(why) {
                        missing.push(m.clone());
                        conflicts.push(m);
                    } else {
                        missing.push(format!(
                            "{} {}",
                            ip.ip,
                            why.message.as_deref().unwrap_or("not announced")
                        ));
                    }
                }
            }
        }
        let holder = announced.first().map(|(n, _)| n.clone());
        let mut parts: Vec<String> = Vec::new();
        for (node, what) in &announced {
            match parts.last_mut() {
                Some(last) if last.starts_with(&format!("node {node} announces ")) => {
                    last.push_str(", ");
                    last.push_str(what);
                }
                _ => parts.push(format!("node {node} announces {what}")),
            }
        }
        let reason = if missing.is_empty() {
            "Announced"
        } else {
            "PartiallyAnnounced"
        };
        parts.extend(missing);
        Verdict::Set {
            status: true,
            reason: reason.into(),
            message: parts.join("; "),
            holder,
            conflicts,
        }
    }
}

/// Why `ip` (one IP of a view) is not announced: a counted node's `AddressConflict` report
/// of it, when there is one (only the node that found the conflict knows of it; the others
/// name that node as the announcer), else the view's own entry.
fn explained<'r>(entries: &[(&str, &'r ServiceReport)], ip: &'r IpReport) -> &'r IpReport {
    entries
        .iter()
        .flat_map(|(_, s)| &s.ips)
        .find(|i| i.ip == ip.ip && i.node.is_none() && conflict(i).is_some())
        .unwrap_or(ip)
}

/// The message of an `AddressConflict` entry (it names the IP itself).
fn conflict(ip: &IpReport) -> Option<String> {
    (ip.reason.as_deref() == Some(ADDRESS_CONFLICT)).then(|| {
        ip.message
            .clone()
            .unwrap_or_else(|| format!("{} is in use by another host", ip.ip))
    })
}

/// How long two nodes must claim one IP before the condition says so: a planned handover
/// (a node joins, a label changes) shows both reports for a moment, as each speaker writes.
pub const SPLIT_GRACE: Duration = Duration::from_secs(3);

/// One condition write: the Service's whole condition list with ours replaced, on the
/// resourceVersion it was computed from.
#[derive(Clone, Debug, PartialEq)]
pub struct Write {
    /// Which Service.
    pub key: ServiceKey,
    /// The resourceVersion the write was computed from (optimistic concurrency).
    pub resource_version: Option<String>,
    /// For the Event's reference.
    pub uid: Option<String>,
    /// The whole list to write.
    pub conditions: Vec<Condition>,
    /// The note of a Normal `Announcing` Event (a node took the Service over).
    pub takeover: Option<String>,
    /// The note of a Warning `AddressConflict` Event: the conflicts the new condition names
    /// that the Service's current one does not.
    pub conflict: Option<String>,
}

type Content = Option<(String, String, String)>;

/// Decides the condition writes, remembering what it wrote (so nothing is written twice
/// while the watch catches up) and since when IPs have been claimed twice.
#[derive(Debug, Default)]
pub struct Planner {
    written: HashMap<ServiceKey, (Option<String>, Content)>,
    split_since: HashMap<ServiceKey, Instant>,
    /// Since when an announced Service has been mentioned by no counted report.
    unreported_since: HashMap<ServiceKey, Instant>,
}

impl Planner {
    /// The writes that make every handled Service's condition say what `fold` says.
    /// Services with IPs (LoadBalancer IPs, or accepted externalIPs) get a verdict; others
    /// lose a condition they still carry.
    pub fn plan<'s>(
        &mut self,
        fold: &Fold<'_>,
        services: impl IntoIterator<Item = &'s Service>,
        lb_class: &str,
        now: Timestamp,
        clock: Instant,
    ) -> Vec<Write> {
        let mut out = Vec::new();
        let mut split_seen = HashSet::new();
        let mut unreported_seen = HashSet::new();
        for svc in services {
            let key = service::key_of(svc);
            let old = svc
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == ANNOUNCED));
            // Announced IPs: its LoadBalancer IPs, or externalIPs we accepted.
            let has_ips = (service::is_handled(svc, lb_class)
                && !service::status_ips(svc).is_empty())
                || crate::external::observed(svc)
                    .is_some_and(|c| matches!(c.reason.as_str(), "Accepted" | "PartiallyAccepted"));
            let new = if has_ips {
                let mut verdict = fold.verdict(&key.to_string());
                // Announced, and now no counted report mentions it while speakers serve:
                // its announcer's report stopped counting (a stale Lease) and no serving
                // speaker judges it. After the grace (a handover shows the same for a
                // moment, between the two speakers' writes), say so.
                if verdict == Verdict::Unknown
                    && fold.any_serving()
                    && old.is_some_and(|c| c.status == "True")
                {
                    unreported_seen.insert(key.clone());
                    let since = *self.unreported_since.entry(key.clone()).or_insert(clock);
                    if clock.saturating_duration_since(since) >= SPLIT_GRACE {
                        verdict = not_reported();
                    }
                }
                if matches!(&verdict, Verdict::Set { reason, .. } if reason == SPLIT) {
                    split_seen.insert(key.clone());
                    let since = *self.split_since.entry(key.clone()).or_insert(clock);
                    if clock.saturating_duration_since(since) < SPLIT_GRACE {
                        continue;
                    }
                }
                condition(&verdict, old, svc.metadata.generation, now)
                    .map(|(c, takeover)| (Some(c), takeover, conflict_note(&verdict, old)))
            } else {
                old.map(|_| (None, None, None))
            };
            let Some((cond, takeover, conflict)) = new else {
                continue;
            };
            let content: Content = cond
                .as_ref()
                .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()));
            let stamp = (svc.metadata.resource_version.clone(), content);
            if self.written.get(&key) == Some(&stamp) {
                continue; // written on this very version: the watch has not caught up yet
            }
            let all = svc
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default();
            let mut conditions: Vec<Condition> =
                all.into_iter().filter(|c| c.type_ != ANNOUNCED).collect();
            conditions.extend(cond);
            self.written.insert(key.clone(), stamp);
            out.push(Write {
                key,
                resource_version: svc.metadata.resource_version.clone(),
                uid: svc.metadata.uid.clone(),
                conditions,
                takeover,
                conflict,
            });
        }
        self.split_since.retain(|k, _| split_seen.contains(k));
        self.unreported_since
            .retain(|k, _| unreported_seen.contains(k));
        out
    }

    /// The write for `key` did not land: decide it again next time.
    pub fn failed(&mut self, key: &ServiceKey) {
        self.written.remove(key);
    }
}

/// The verdict on an announced Service no serving speaker reports any more.
fn not_reported() -> Verdict {
    Verdict::Set {
        status: false,
        reason: NOT_REPORTED.into(),
        message: "no serving speaker reports it: every node that may announce it is down \
                  or cut off (the speakers that serve do not hear those nodes)"
            .into(),
        holder: None,
        conflicts: Vec::new(),
    }
}

/// One speaker Lease, as the controller reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The node (the Lease name without its prefix).
    pub node: String,
    /// `spec.renewTime`.
    pub renew: Option<Timestamp>,
    /// `spec.leaseDurationSeconds`.
    pub duration: Duration,
    /// The published incarnation.
    pub incarnation: Option<String>,
}

/// Judges the speakers' Leases on the controller's own clock: a renewal counts from when the
/// controller saw `renewTime` change, so a node whose clock is off cannot make its Lease
/// look fresh or stale. Only the first sight uses the wall clock: it is back-dated by the
/// age its `renewTime` shows, so a long-dead speaker is not fresh just because the
/// controller (re)started.
#[derive(Debug, Default)]
pub struct LeaseClock {
    /// Node → its Lease and when its current renewal was seen (`None`: already stale at
    /// first sight, until a renewal is seen).
    seen: HashMap<String, (LeaseInfo, Option<Instant>)>,
}

impl LeaseClock {
    /// Notes the current set of Leases at `clock` (`now` on the wall), forgetting the gone.
    pub fn observe(
        &mut self,
        leases: impl IntoIterator<Item = LeaseInfo>,
        clock: Instant,
        now: Timestamp,
    ) {
        let mut next = HashMap::new();
        for l in leases {
            let at = match self.seen.remove(&l.node) {
                Some((old, at)) if old.renew == l.renew => at,
                Some(_) => Some(clock),
                None => {
                    // A renewTime in the future (clock skew) counts as just now.
                    let age = l.renew.map_or(Duration::MAX, |r| {
                        Duration::try_from(now.duration_since(r)).unwrap_or_default()
                    });
                    (age < l.duration).then(|| clock.checked_sub(age).unwrap_or(clock))
                }
            };
            next.insert(l.node.clone(), (l, at));
        }
        self.seen = next;
    }

    /// Every known speaker, fresh or not at `clock`.
    pub fn speakers(&self, clock: Instant) -> BTreeMap<String, SpeakerLease> {
        self.seen
            .iter()
            .map(|(node, (l, at))| {
                (
                    node.clone(),
                    SpeakerLease {
                        incarnation: l.incarnation.clone(),
                        fresh: at
                            .is_some_and(|at| clock.saturating_duration_since(at) < l.duration),
                    },
                )
            })
            .collect()
    }

    /// When the next fresh Lease goes stale unless renewed (to look again then).
    pub fn next_expiry(&self, clock: Instant) -> Option<Instant> {
        self.seen
            .values()
            .filter_map(|(l, at)| at.as_ref()?.checked_add(l.duration))
            .filter(|t| *t > clock)
            .min()
    }
}

/// The node named in an `Announced` message (`node X announces …`).
pub fn holder(message: &str) -> Option<&str> {
    message.strip_prefix("node ")?.split(' ').next()
}

/// The condition to write for `verdict`, given the current one (`old`), or `None` when the
/// current one already says it. The second value is the note of a Normal `Announcing`
/// Event, when a node took the Service over. `lastTransitionTime` moves when the status
/// flips or the announcer changes: it tells since when the current announcer holds the IPs.
pub fn condition(
    verdict: &Verdict,
    old: Option<&Condition>,
    generation: Option<i64>,
    now: Timestamp,
) -> Option<(Condition, Option<String>)> {
    let Verdict::Set {
        status,
        reason,
        message,
        holder: node,
        ..
    } = verdict
    else {
        return None;
    };
    let status_s = if *status { "True" } else { "False" };
    if old.is_some_and(|c| c.status == status_s && c.reason == *reason && c.message == *message) {
        return None;
    }
    let same_holder = old.is_some_and(|c| {
        c.status == status_s && (!status || holder(&c.message) == node.as_deref())
    });
    let last_transition_time = match old {
        Some(c) if same_holder => c.last_transition_time.clone(),
        _ => Time(now),
    };
    let takeover = (*status && !same_holder).then(|| format!("{message} (took over)"));
    Some((
        Condition {
            type_: ANNOUNCED.into(),
            status: status_s.into(),
            reason: reason.clone(),
            message: message.clone(),
            observed_generation: generation,
            last_transition_time,
        },
        takeover,
    ))
}

/// The note of a Warning `AddressConflict` Event for `verdict`: the conflicts it names that
/// the current condition (`old`) does not, so each conflict warns once (a re-plan, or a
/// restart of the controller, finds it in the condition already), and again only after it
/// cleared or changed (another MAC, another node).
pub fn conflict_note(verdict: &Verdict, old: Option<&Condition>) -> Option<String> {
    let Verdict::Set { conflicts, .. } = verdict else {
        return None;
    };
    let new: Vec<&str> = conflicts
        .iter()
        .map(String::as_str)
        .filter(|m| !old.is_some_and(|c| c.message.contains(m)))
        .collect();
    (!new.is_empty()).then(|| new.join("; "))
}

#[cfg(test)]
mod tests;
