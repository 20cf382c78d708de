//! `explain` as text: the allocation rule with the candidate pools, then the election with
//! a verdict per node and what the plugin could not see.

use k8s_openapi::jiff::Timestamp;

use super::{ANY_INTERFACE, ExplainReport, Rule};
use crate::render::{age, table};

/// The report as text.
pub fn render(r: &ExplainReport, now: Timestamp) -> String {
    let mut out = format!("Service {}\n", r.service);
    if let Some(why) = &r.not_served {
        out.push_str(&format!("  Not served by FerroLB: {why}.\n"));
        return out;
    }
    out.push_str("\nADDRESSES\n");
    if r.ips.is_empty() {
        out.push_str("  No IP.\n");
    }
    for i in &r.ips {
        out.push_str(&format!(
            "  {} from pool {}\n",
            i.ip,
            i.pool
                .as_deref()
                .unwrap_or("(none: the IP is in no IPAddressPool)")
        ));
    }
    if let Some(c) = &r.allocated {
        out.push_str(&format!(
            "  ferrolb.io/IPAllocated={} {} since {} ({}): {}\n",
            c.status,
            c.reason,
            c.since,
            age(&c.since, now),
            c.message
        ));
    } else {
        out.push_str("  No ferrolb.io/IPAllocated condition: is ferrolb-controller running?\n");
    }
    match &r.rule {
        None => {}
        Some(Rule::RequestedIp { source, ips }) => {
            let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
            out.push_str(&format!(
                "  Rule: requested IP {} ({source}); it is taken from the pool that holds it.\n",
                ips.join(", ")
            ));
        }
        Some(Rule::RequestedPool { source, pool }) => out.push_str(&format!(
            "  Rule: requested pool {pool} ({source}); autoAssign does not matter.\n"
        )),
        Some(Rule::InvalidRequest { message }) => out.push_str(&format!(
            "  Rule: none, the request is invalid: {message}\n"
        )),
        Some(Rule::Automatic { candidates }) => {
            out.push_str(
                "  Rule: automatic: the first ready autoAssign pool that admits it, in \
                 candidate order\n  (priority, lowest first; then pools with \
                 serviceAllocation; then the others; by name):\n",
            );
            let rows: Vec<Vec<String>> = candidates
                .iter()
                .enumerate()
                .map(|(i, c)| vec![format!("  {}.", i + 1), c.pool.clone(), c.verdict.clone()])
                .collect();
            out.push_str(&table(&["  #", "POOL", "VERDICT"], &rows));
            let first = candidates.iter().find(|c| c.admits);
            let holder = candidates
                .iter()
                .find(|c| c.verdict.ends_with("holds its IP"));
            if let (Some(f), Some(h)) = (first, holder)
                && f.pool != h.pool
            {
                out.push_str(&format!(
                    "  Pool {} comes first now, but an assigned IP is kept while it stays valid \
                     (it was full, or changed, when the Service got its IP).\n",
                    f.pool
                ));
            }
        }
    }
    let Some(a) = &r.announcement else {
        return out;
    };
    out.push_str(
        "\nANNOUNCEMENT (the speaker's election code, run on the cluster's current objects)\n",
    );
    for d in &a.decisions {
        out.push_str(&format!("  {}: {}\n", d.ip, d.message));
    }
    let config_level = a.winner.is_none()
        && a.decisions.iter().all(|d| d.reason != "NoEligibleNode")
        && a.nodes.iter().all(|v| !v.eligible);
    if config_level {
        // The reason holds whatever the node: a table of identical rows says nothing more.
        out.push_str("  No node may announce it, whichever node: see the reason above.\n");
    } else {
        let rows: Vec<Vec<String>> = a
            .nodes
            .iter()
            .map(|v| vec![format!("  {}", v.node), v.why.clone()])
            .collect();
        out.push_str(&table(&["  NODE", "VERDICT"], &rows));
    }
    if !a.failover_order.is_empty() {
        out.push_str(&format!(
            "  Failover order: {}\n",
            a.failover_order.join(" -> ")
        ));
    }
    match (&a.reported, a.agrees) {
        (Some(c), Some(agrees)) => {
            out.push_str(&format!(
                "  Speakers report: {} since {} ({}): {}\n",
                c.reason,
                c.since,
                age(&c.since, now),
                c.message
            ));
            if !agrees {
                out.push_str(
                    "  The speakers' report differs from this computation: they judge liveness \
                     by heartbeats and know their interfaces, the plugin only sees Leases \
                     (below).\n",
                );
            }
        }
        _ => out.push_str("  Speakers report: no ferrolb.io/Announced condition yet.\n"),
    }
    let live: Vec<String> = a
        .speakers
        .iter()
        .map(|s| format!("{}{}", s.node, if s.fresh { "" } else { " (stale)" }))
        .collect();
    out.push_str(&format!(
        "  Liveness: speakers judge each other by heartbeats, which the plugin cannot hear; it \
         counts a speaker alive when its Lease ferrolb-speaker-<node> was renewed within its \
         leaseDurationSeconds. Speaker Leases: {}.\n",
        if live.is_empty() {
            "none".into()
        } else {
            live.join(", ")
        }
    ));
    let ifs: Vec<String> = a
        .assumed_interfaces
        .iter()
        .map(|(n, i)| format!("{n}: {}", i.join(",")))
        .collect();
    if !ifs.is_empty() {
        out.push_str(&format!(
            "  Interfaces assumed (seen in Announced conditions or named by L2Advertisements; \
             {ANY_INTERFACE} = any usable): {}\n",
            ifs.join("; ")
        ));
    }
    out
}
