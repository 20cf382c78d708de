//! Address conflicts (docs/troubleshooting.md#address-conflicts): how the speakers'
//! `AddressConflict` entries show in the condition, and the Warning note of each new one.

use super::*;

/// The message a speaker gives for an IP it withholds because `mac` (not a FerroLB node)
/// uses it.
fn conflict_msg(ip: &str, mac: &str, node: &str) -> String {
    format!(
        "{ip} is in use by another host: {mac} claims it (seen by {node} on eth0; not a \
         FerroLB node); not announced until it is free"
    )
}

const ROGUE: &str = "02:00:5e:00:53:01";

/// `node`'s entry for an IP it won but withholds: another host uses it.
fn in_conflict(ip: &str, node: &str) -> IpReport {
    IpReport {
        ip: ip.into(),
        reason: Some(ADDRESS_CONFLICT.into()),
        message: Some(conflict_msg(ip, ROGUE, node)),
        ..Default::default()
    }
}

/// Only the node that found the conflict reports the Service (the others name it as the
/// announcer): the condition is False with the speaker's message, and names it as a
/// conflict (what the Warning Event is made of).
#[test]
fn a_single_ip_in_conflict_is_not_announced_and_names_the_host() {
    let r = reports(vec![
        ("n1", report("1", true, vec![])),
        (
            "n2",
            report("2", true, vec![web(vec![in_conflict(IP4, "n2")])]),
        ),
    ]);
    let f = Fold::new(&r, &fresh(&[("n1", "1"), ("n2", "2")]));
    let m = conflict_msg(IP4, ROGUE, "n2");
    assert_eq!(
        f.verdict("ns/web"),
        Verdict::Set {
            status: false,
            reason: ADDRESS_CONFLICT.into(),
            message: m.clone(),
            holder: None,
            conflicts: vec![m],
        }
    );
}

/// Dual-stack, one family announced and the other in conflict: PartiallyAnnounced, naming
/// the conflict once, whether the announcer found it itself or the other family's elected
/// node did (then only that node's report knows; the announcer names it as the holder).
#[test]
fn one_family_in_conflict_is_partial_and_names_the_host() {
    let same = reports(vec![(
        "n1",
        report(
            "1",
            true,
            vec![web(vec![ip(IP4, Some("n1")), in_conflict(IP6, "n1")])],
        ),
    )]);
    let other = reports(vec![
        (
            "n1",
            report(
                "1",
                true,
                vec![web(vec![ip(IP4, Some("n1")), ip(IP6, Some("n2"))])],
            ),
        ),
        (
            "n2",
            report(
                "2",
                true,
                vec![web(vec![ip(IP4, Some("n1")), in_conflict(IP6, "n2")])],
            ),
        ),
    ]);
    for (r, finder) in [(same, "n1"), (other, "n2")] {
        let f = Fold::new(&r, &fresh(&[("n1", "1"), ("n2", "2")]));
        let m = conflict_msg(IP6, ROGUE, finder);
        assert_eq!(
            f.verdict("ns/web"),
            Verdict::Set {
                status: true,
                reason: "PartiallyAnnounced".into(),
                message: format!("node n1 announces 203.0.113.5 on eth0; {m}"),
                holder: Some("n1".into()),
                conflicts: vec![m],
            },
            "conflict found by {finder}"
        );
    }
}

/// Every IP in conflict: AddressConflict, naming each in the Service's IP order, whichever
/// nodes found them. A conflict beside another reason keeps that reason and still names it.
#[test]
fn every_ip_in_conflict_is_named_and_a_mixed_case_keeps_the_other_reason() {
    let one_node = reports(vec![(
        "n1",
        report(
            "1",
            true,
            vec![web(vec![in_conflict(IP4, "n1"), in_conflict(IP6, "n1")])],
        ),
    )]);
    let two_nodes = reports(vec![
        (
            "n1",
            report(
                "1",
                true,
                vec![web(vec![in_conflict(IP4, "n1"), ip(IP6, Some("n2"))])],
            ),
        ),
        (
            "n2",
            report(
                "2",
                true,
                vec![web(vec![ip(IP4, Some("n1")), in_conflict(IP6, "n2")])],
            ),
        ),
    ]);
    for (r, v6_finder) in [(one_node, "n1"), (two_nodes, "n2")] {
        let f = Fold::new(&r, &fresh(&[("n1", "1"), ("n2", "2")]));
        let (m4, m6) = (
            conflict_msg(IP4, ROGUE, "n1"),
            conflict_msg(IP6, ROGUE, v6_finder),
        );
        assert_eq!(
            f.verdict("ns/web"),
            Verdict::Set {
                status: false,
                reason: ADDRESS_CONFLICT.into(),
                message: format!("{m4}; {m6}"),
                holder: None,
                conflicts: vec![m4, m6],
            },
            "IPv6 conflict found by {v6_finder}"
        );
    }
    let mixed = reports(vec![(
        "n1",
        report(
            "1",
            true,
            vec![web(vec![in_conflict(IP4, "n1"), ip(IP6, None)])],
        ),
    )]);
    let f = Fold::new(&mixed, &fresh(&[("n1", "1")]));
    let m4 = conflict_msg(IP4, ROGUE, "n1");
    assert_eq!(
        f.verdict("ns/web"),
        Verdict::Set {
            status: false,
            reason: "NoServingEndpoints".into(),
            message: format!("not announced: no serving endpoints; {m4}"),
            holder: None,
            conflicts: vec![m4],
        }
    );
}

/// One Warning note per new conflict: none on a re-plan of the same version, none once the
/// condition shows it (nor after a controller restart), one again when it comes back after
/// it cleared, and one when another host (or node) is named.
#[test]
fn the_planner_notes_each_new_conflict_once() {
    let t = Timestamp::from_second(100).unwrap();
    let c0 = Instant::now();
    let leases = fresh(&[("n1", "1")]);
    let conflicted = |mac: &str| {
        let mut e = in_conflict(IP4, "n1");
        e.message = Some(conflict_msg(IP4, mac, "n1"));
        reports(vec![("n1", report("1", true, vec![web(vec![e])]))])
    };
    let claimed = reports(vec![(
        "n1",
        report("1", true, vec![web(vec![ip(IP4, Some("n1"))])]),
    )]);
    let m = conflict_msg(IP4, ROGUE, "n1");
    let mut p = Planner::default();
    let mut web_svc = svc("web", &[IP4], "5");
    // Writes it, the Service shows it at the next version.
    let step = |p: &mut Planner, web_svc: &mut Service, r: &BTreeMap<_, _>| {
        let ws = p.plan(&Fold::new(r, &leases), [&*web_svc], "x", t, c0);
        if let Some(w) = ws.first() {
            let status = web_svc.status.as_mut().unwrap();
            status.conditions = Some(w.conditions.clone());
            let rv: u64 = web_svc
                .metadata
                .resource_version
                .as_ref()
                .unwrap()
                .parse()
                .unwrap();
            web_svc.metadata.resource_version = Some((rv + 1).to_string());
        }
        ws
    };

    let ws = p.plan(
        &Fold::new(&conflicted(ROGUE), &leases),
        [&web_svc],
        "x",
        t,
        c0,
    );
    assert_eq!(ws.len(), 1);
    let c = &ws[0].conditions[0];
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", ADDRESS_CONFLICT)
    );
    assert_eq!(ws[0].conflict.as_deref(), Some(m.as_str()));
    assert_eq!(ws[0].takeover, None);
    assert!(
        p.plan(
            &Fold::new(&conflicted(ROGUE), &leases),
            [&web_svc],
            "x",
            t,
            c0
        )
        .is_empty(),
        "the same version again: the watch has not shown the write yet"
    );
    web_svc.status.as_mut().unwrap().conditions = Some(ws[0].conditions.clone());
    web_svc.metadata.resource_version = Some("6".into());
    assert!(step(&mut p, &mut web_svc, &conflicted(ROGUE)).is_empty());
    assert!(
        step(&mut Planner::default(), &mut web_svc, &conflicted(ROGUE)).is_empty(),
        "a restarted controller finds the conflict in the condition"
    );

    // The host leaves: announced again, no warning.
    let ws = step(&mut p, &mut web_svc, &claimed);
    assert_eq!(ws[0].conditions[0].reason, "Announced");
    assert_eq!(ws[0].conflict, None);
    // It comes back: warned again, once.
    let ws = step(&mut p, &mut web_svc, &conflicted(ROGUE));
    assert_eq!(ws[0].conflict.as_deref(), Some(m.as_str()));
    assert!(step(&mut p, &mut web_svc, &conflicted(ROGUE)).is_empty());
    // Another host takes its place: a new conflict, a new warning.
    let other = "02:00:5e:00:53:02";
    let ws = step(&mut p, &mut web_svc, &conflicted(other));
    assert_eq!(
        ws[0].conflict.as_deref(),
        Some(conflict_msg(IP4, other, "n1").as_str())
    );
}

/// A dual-stack Service whose other family goes into conflict while one stays announced by
/// the same node: a warning, and no takeover (the announcer did not change).
#[test]
fn a_conflict_beside_an_announced_family_warns_without_a_takeover() {
    let t = Timestamp::from_second(100).unwrap();
    let leases = fresh(&[("n1", "1")]);
    let both = reports(vec![(
        "n1",
        report(
            "1",
            true,
            vec![web(vec![ip(IP4, Some("n1")), ip(IP6, Some("n1"))])],
        ),
    )]);
    let partial = reports(vec![(
        "n1",
        report(
            "1",
            true,
            vec![web(vec![ip(IP4, Some("n1")), in_conflict(IP6, "n1")])],
        ),
    )]);
    let mut p = Planner::default();
    let mut web_svc = svc("web", &[IP4, IP6], "5");
    let ws = p.plan(
        &Fold::new(&both, &leases),
        [&web_svc],
        "x",
        t,
        Instant::now(),
    );
    assert!(ws[0].takeover.is_some() && ws[0].conflict.is_none());
    web_svc.status.as_mut().unwrap().conditions = Some(ws[0].conditions.clone());
    web_svc.metadata.resource_version = Some("6".into());
    let ws = p.plan(
        &Fold::new(&partial, &leases),
        [&web_svc],
        "x",
        t,
        Instant::now(),
    );
    assert_eq!(ws[0].conditions[0].reason, "PartiallyAnnounced");
    assert_eq!(ws[0].takeover, None);
    assert_eq!(
        ws[0].conflict.as_deref(),
        Some(conflict_msg(IP6, ROGUE, "n1").as_str())
    );
    // The IPv4 address moves to another interface while the conflict lasts: a new
    // condition, with no new warning.
    web_svc.status.as_mut().unwrap().conditions = Some(ws[0].conditions.clone());
    web_svc.metadata.resource_version = Some("7".into());
    let mut moved = partial.clone();
    moved.get_mut("n1").unwrap().services[0].ips[0].interfaces = vec!["eth1".into()];
    let ws = p.plan(
        &Fold::new(&moved, &leases),
        [&web_svc],
        "x",
        t,
        Instant::now(),
    );
    assert!(ws[0].conditions[0].message.contains("on eth1"));
    assert_eq!(
        (ws[0].takeover.as_deref(), ws[0].conflict.as_deref()),
        (None, None)
    );
}
