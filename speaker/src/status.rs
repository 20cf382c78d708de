//! The `ferrolb.io/Announced` condition: which node and interfaces announce a Service's
//! IPs and since when, or why none does. Pure decision of who writes what; a thin writer.
//!
//! ```text
//!   Table ──▶ for each Service:  announced by me?            ──▶ I write True  (+ Event on takeover)
//!                                not announced, I'm the lowest live speaker ──▶ I write False
//!                                announced by a peer          ──▶ the peer writes
//! ```
//!
//! Exactly one speaker writes each Service's condition, so writes grow with changes,
//! never with the number of speakers. `lastTransitionTime` tells since when the current
//! announcer holds the IPs.

use std::collections::BTreeMap;

use ferrolb_crds::conditions::ANNOUNCED;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Resource};
use serde_json::json;

use crate::core::{Decision, Table};

/// One condition this speaker should write.
#[derive(Clone, Debug, PartialEq)]
pub struct Write {
    /// `namespace/name`.
    pub key: String,
    /// The condition; `None` removes ours (the Service no longer has IPs to announce).
    pub condition: Option<Condition>,
    /// A Normal Event to record when this speaker takes the Service over.
    pub takeover: Option<String>,
}

/// What a write says, without timestamps: two writes with equal content are the same write.
pub type Content = Option<(String, String, String)>;

impl Write {
    /// The condition's status, reason and message (`None` = remove it).
    pub fn content(&self) -> Content {
        self.condition
            .as_ref()
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    }
}

/// The observed `ferrolb.io/Announced` condition of a Service.
pub fn observed(svc: &Service) -> Option<&Condition> {
    svc.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ANNOUNCED)
}

fn summarize(
    decisions: &BTreeMap<std::net::IpAddr, Decision>,
) -> (bool, &'static str, String, Option<String>) {
    let mut announced = Vec::new();
    let mut missing = Vec::new();
    for (ip, d) in decisions {
        match d {
            Decision::Announce { interfaces, .. } => {
                let on = interfaces.iter().cloned().collect::<Vec<_>>().join(",");
                announced.push(format!("{ip} on {on}"));
            }
            Decision::NotAnnounced { .. } => missing.push(format!("{ip} {d}")),
        }
    }
    let node = decisions
        .values()
        .find_map(|d| d.announcer().map(str::to_owned));
    match &node {
        Some(n) if missing.is_empty() => (
            true,
            "Announced",
            format!("node {n} announces {}", announced.join(", ")),
            node,
        ),
        // A dual-stack Service with one family announced: say so, and why not the other.
        Some(n) => (
            true,
            "PartiallyAnnounced",
            format!(
                "node {n} announces {}; {}",
                announced.join(", "),
                missing.join("; ")
            ),
            node,
        ),
        None => {
            let d = decisions
                .values()
                .next()
                .expect("a Service in the table has IPs");
            (false, d.reason(), d.to_string(), None)
        }
    }
}

/// The condition writes this speaker (`me`) is responsible for. `services` are the
/// handled Services as observed (with their current conditions); `housekeeper` is true
/// for the lowest-named live speaker, which reports Services nobody announces.
pub fn writes<'a>(
    table: &Table,
    services: impl IntoIterator<Item = (&'a String, &'a Service)>,
    me: &str,
    housekeeper: bool,
    now: Timestamp,
) -> Vec<Write> {
    let mut out = Vec::new();
    for (key, svc) in services {
        let old = observed(svc);
        let Some(decisions) = table.service(key) else {
            // Nothing to announce (no IPs, or no longer ours): drop a stale condition.
            if housekeeper && old.is_some() {
                out.push(Write {
                    key: key.clone(),
                    condition: None,
                    takeover: None,
                });
            }
            continue;
        };
        let (status, reason, message, node) = summarize(decisions);
        let mine = node.as_deref() == Some(me) || (node.is_none() && housekeeper);
        if !mine {
            continue;
        }
        let status_s = if status { "True" } else { "False" };
        if old.is_some_and(|c| c.status == status_s && c.reason == reason && c.message == message) {
            continue;
        }
        // "Since when": the time moves when the status flips or the announcer changes.
        let same_holder = old.is_some_and(|c| {
            c.status == status_s && (!status || holder(&c.message) == node.as_deref())
        });
        let last_transition_time = match old {
            Some(c) if same_holder => c.last_transition_time.clone(),
            _ => Time(now),
        };
        let takeover = (status && !same_holder).then(|| format!("{message} (took over)"));
        out.push(Write {
            key: key.clone(),
            condition: Some(Condition {
                type_: ANNOUNCED.into(),
                status: status_s.into(),
                reason: reason.into(),
                message,
                observed_generation: svc.metadata.generation,
                last_transition_time,
            }),
            takeover,
        });
    }
    out
}

/// Per-Service memory of writes another speaker undid. Two speakers whose views differ for a
/// moment would otherwise rewrite each other's condition in a loop (each write moves the
/// resourceVersion, so de-duplication never stops them). Writing again content we already
/// wrote means someone replaced it: the next attempt waits 1 s, then 2 s, 4 s … up to
/// 5 min; a change of our own decision starts over at once.
#[derive(Debug, Default)]
pub struct Fights {
    by_key: std::collections::HashMap<String, Fight>,
}

#[derive(Debug)]
struct Fight {
    ours: Content,
    times: u32,
    until: std::time::Instant,
}

/// Longest pause between two rewrites of a condition someone else keeps changing.
pub const MAX_FIGHT_BACKOFF: std::time::Duration = std::time::Duration::from_secs(300);

impl Fights {
    /// Whether to write `w` at `now` (and notes the attempt).
    pub fn allow(&mut self, w: &Write, now: std::time::Instant) -> bool {
        let ours = w.content();
        match self.by_key.get_mut(&w.key) {
            Some(f) if f.ours == ours => {
                if now < f.until {
                    return false;
                }
                f.times += 1;
                let pause =
                    std::time::Duration::from_secs(1u64 << f.times.min(9).saturating_sub(1));
                f.until = now + pause.min(MAX_FIGHT_BACKOFF);
                if f.times > 1 {
                    tracing::warn!(service = %w.key, times = f.times, ?pause,
                        "another speaker keeps replacing this Service's Announced condition; backing off");
                }
                true
            }
            _ => {
                self.by_key.insert(
                    w.key.clone(),
                    Fight {
                        ours,
                        times: 0,
                        until: now,
                    },
                );
                true
            }
        }
    }

    /// Forgets `key` (the write failed, or the Service is gone).
    pub fn forget(&mut self, key: &str) {
        self.by_key.remove(key);
    }
}

/// The node named in an `Announced` message (`node X announces …`).
fn holder(message: &str) -> Option<&str> {
    message.strip_prefix("node ")?.split(' ').next()
}

/// Writes one condition with optimistic concurrency (re-reading on 409), then the Event.
pub async fn apply(api: &Api<Service>, recorder: &Recorder, w: &Write) -> Result<(), kube::Error> {
    let name = w.key.split_once('/').map_or(w.key.as_str(), |(_, n)| n);
    for attempt in 0..4 {
        let current = ferrolb_ops::retry::with_backoff(3, || api.get(name)).await?;
        let old = current
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let conds = ferrolb_ops::conditions::replace(&old, ANNOUNCED, w.condition.clone());
        let patch = Patch::Merge(json!({
            "metadata": {"resourceVersion": current.metadata.resource_version},
            "status": {"conditions": conds},
        }));
        match api
            .patch_status(name, &PatchParams::default(), &patch)
            .await
        {
            Ok(svc) => {
                if let Some(note) = &w.takeover {
                    let ev = Event {
                        type_: EventType::Normal,
                        reason: "Announcing".into(),
                        note: Some(ferrolb_ops::conditions::event_note(note)),
                        action: "Announce".into(),
                        secondary: None,
                    };
                    if let Err(e) = recorder.publish(&ev, &svc.object_ref(&())).await {
                        tracing::debug!(error = %e, "cannot record event");
                    }
                }
                return Ok(());
            }
            Err(e)
                if ferrolb_ops::retry::classify(&e) == ferrolb_ops::retry::Class::Conflict
                    && attempt < 3 => {}
            Err(e) => return Err(e),
        }
    }
    unreachable!("the loop returns")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap as Map, BTreeSet};

    #[test]
    fn a_condition_another_speaker_keeps_replacing_is_rewritten_less_and_less_often() {
        let w = |msg: &str| Write {
            key: "ns/web".into(),
            condition: Some(Condition {
                type_: ANNOUNCED.into(),
                status: "True".into(),
                reason: "Announced".into(),
                message: msg.into(),
                observed_generation: None,
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
            }),
            takeover: None,
        };
        let t0 = std::time::Instant::now();
        let s = std::time::Duration::from_secs;
        let mut f = Fights::default();
        assert!(f.allow(&w("node a"), t0), "first write");
        // Replaced by another speaker: we want to write the same again.
        assert!(f.allow(&w("node a"), t0), "first rewrite at once");
        assert!(!f.allow(&w("node a"), t0 + s(0)), "then 1 s apart");
        assert!(f.allow(&w("node a"), t0 + s(1)));
        assert!(!f.allow(&w("node a"), t0 + s(2)), "then 2 s");
        assert!(f.allow(&w("node a"), t0 + s(3)));
        assert!(!f.allow(&w("node a"), t0 + s(6)), "then 4 s");
        assert!(f.allow(&w("node a"), t0 + s(7)));
        // Our decision changed: written at once, the count starts over.
        assert!(f.allow(&w("node b"), t0 + s(7)));
        assert!(f.allow(&w("node b"), t0 + s(7)));
        // Bounded: after many fights, at most every 5 minutes.
        let mut t = t0 + s(10);
        let mut last = t;
        for _ in 0..40 {
            while !f.allow(&w("node b"), t) {
                t += s(1);
            }
            assert!(t - last <= MAX_FIGHT_BACKOFF + s(1));
            last = t;
        }
        assert!(
            t - t0 > s(3600),
            "40 rewrites took over an hour, not 40 loops"
        );
        f.forget("ns/web");
        assert!(f.allow(&w("node b"), t));
    }

    use crate::core::{self, World};
    use ferrolb_crds::addresses::PoolAddresses;

    fn world(nodes: &[&str], svc_ips: &[&str], endpoints: bool) -> World {
        let mut w = World::default();
        for n in nodes {
            w.apply_node(core::Node {
                name: n.to_string(),
                ..Default::default()
            });
            w.apply_speaker(core::Speaker {
                node: n.to_string(),
                interfaces: BTreeSet::from(["eth0".to_string()]),
                settling: false,
            });
        }
        w.apply_pool(core::Pool {
            name: "p".into(),
            labels: Map::new(),
            addresses: PoolAddresses::parse(&["203.0.113.0/24".to_string()]).unwrap(),
        });
        w.apply_advertisement(core::Advertisement {
            name: "all".into(),
            ..Default::default()
        });
        w.apply_service(core::Service {
            key: "ns/web".into(),
            ips: svc_ips.iter().map(|s| s.parse().unwrap()).collect(),
            has_serving_endpoints: endpoints,
            ..Default::default()
        });
        w
    }

    fn svc_with(cond: Option<Condition>) -> Service {
        Service {
            status: Some(k8s_openapi::api::core::v1::ServiceStatus {
                conditions: cond.map(|c| vec![c]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_the_announcer_writes_and_only_on_change() {
        let w = world(&["n1", "n2", "n3"], &["203.0.113.5"], true);
        let table = core::desired(&w);
        let winner = table
            .announcer("203.0.113.5".parse().unwrap())
            .unwrap()
            .to_owned();
        let key = "ns/web".to_string();
        let svc = svc_with(None);
        let t0 = Timestamp::from_second(100).unwrap();
        let mut writers = 0;
        for n in ["n1", "n2", "n3"] {
            let ws = writes(&table, [(&key, &svc)], n, n == "n1", t0);
            if n == winner {
                assert_eq!(ws.len(), 1);
                let c = ws[0].condition.as_ref().unwrap();
                assert_eq!(
                    (c.status.as_str(), c.reason.as_str()),
                    ("True", "Announced")
                );
                assert!(
                    c.message
                        .starts_with(&format!("node {winner} announces 203.0.113.5 on eth0")),
                    "{}",
                    c.message
                );
                assert!(ws[0].takeover.is_some());
                writers += ws.len();
                // Written: the same table later writes nothing.
                let done = svc_with(ws[0].condition.clone());
                assert!(
                    writes(
                        &table,
                        [(&key, &done)],
                        n,
                        false,
                        Timestamp::from_second(200).unwrap()
                    )
                    .is_empty()
                );
            } else {
                assert!(ws.is_empty(), "{n} must not write");
            }
        }
        assert_eq!(writers, 1);
    }

    #[test]
    fn a_new_announcer_moves_the_transition_time_and_notes_the_takeover() {
        let w = world(&["n1", "n2"], &["203.0.113.5"], true);
        let table = core::desired(&w);
        let winner = table
            .announcer("203.0.113.5".parse().unwrap())
            .unwrap()
            .to_owned();
        let loser = if winner == "n1" { "n2" } else { "n1" };
        let old = Condition {
            type_: ANNOUNCED.into(),
            status: "True".into(),
            reason: "Announced".into(),
            message: format!("node {loser} announces 203.0.113.5 on eth0"),
            observed_generation: None,
            last_transition_time: Time(Timestamp::from_second(1).unwrap()),
        };
        let key = "ns/web".to_string();
        let t = Timestamp::from_second(500).unwrap();
        let ws = writes(&table, [(&key, &svc_with(Some(old)))], &winner, false, t);
        assert_eq!(ws[0].condition.as_ref().unwrap().last_transition_time.0, t);
        assert!(ws[0].takeover.as_deref().unwrap().contains("took over"));
    }

    #[test]
    fn one_family_announced_is_partial_and_says_why() {
        let w = world(&["n1"], &["203.0.113.5", "2001:db8::5"], true);
        let table = core::desired(&w);
        let key = "ns/web".to_string();
        let ws = writes(
            &table,
            [(&key, &svc_with(None))],
            "n1",
            true,
            Timestamp::UNIX_EPOCH,
        );
        let c = ws[0].condition.as_ref().unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "PartiallyAnnounced")
        );
        assert!(
            c.message.contains("2001:db8::5 not announced"),
            "{}",
            c.message
        );
    }

    #[test]
    fn the_housekeeper_reports_why_nothing_is_announced() {
        let w = world(&["n1", "n2"], &["203.0.113.5"], false);
        let table = core::desired(&w);
        let key = "ns/web".to_string();
        let t = Timestamp::from_second(5).unwrap();
        assert!(writes(&table, [(&key, &svc_with(None))], "n2", false, t).is_empty());
        let ws = writes(&table, [(&key, &svc_with(None))], "n1", true, t);
        let c = ws[0].condition.as_ref().unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "NoServingEndpoints")
        );
        // A Service that lost its IPs loses the stale condition.
        let other = "ns/gone".to_string();
        let ws = writes(
            &table,
            [(&other, &svc_with(Some(c.clone())))],
            "n1",
            true,
            t,
        );
        assert_eq!(
            ws,
            [Write {
                key: other,
                condition: None,
                takeover: None
            }]
        );
    }
}
