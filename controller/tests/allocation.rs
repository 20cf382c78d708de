//! The real controller against an API server (the test API server, or `KUBECONFIG`),
//! asserting through a kube client what an operator would see.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::api::{DeleteParams, Patch, PatchParams};
use support::*;

#[tokio::test]
async fn basic_allocation_writes_ingress_condition_and_one_event() {
    let env = Env::new().await;
    let _c = env.controller("c1");
    let ns = env.namespace("basic", &[]).await;
    let pool = env.pool("basic", &["203.0.113.0/30"], |_| {}).await;
    env.service(&ns, "web", &[], env.lb_spec(80)).await;
    assert_eq!(env.ips(&ns, "web").await, [ip("203.0.113.0")]);
    let c = env.condition(&ns, "web", "Allocated").await;
    assert_eq!(c.status, "True");
    assert!(c.message.contains(&pool), "{}", c.message);
    let s = env.services(&ns).get("web").await.unwrap();
    let ingress = &s.status.unwrap().load_balancer.unwrap().ingress.unwrap()[0];
    assert_eq!(ingress.ip_mode.as_deref(), Some("VIP"));
    // Pool status counts.
    let api = env.pools();
    env.eventually("pool counts", 10, || async {
        let st = api.get(&pool).await.ok()?.status?;
        (st.assigned_ipv4 == 1 && st.available_ipv4 == 3).then_some(())
    })
    .await;
    // Resyncs and unrelated updates never repeat the event.
    let patch = serde_json::json!({"metadata": {"labels": {"touched": "yes"}}});
    env.services(&ns)
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(env.event_reasons(&ns, "web").await, ["IPAllocated"]);
    env.cleanup().await;
}

#[tokio::test]
async fn requested_ips_by_annotation_and_spec_field() {
    let env = Env::new().await;
    let _c = env.controller("c1");
    let ns = env.namespace("req", &[]).await;
    env.pool("req", &["203.0.113.0/28"], |_| {}).await;
    env.service(
        &ns,
        "anno",
        &[("ferrolb.io/loadBalancerIPs", "203.0.113.7")],
        env.lb_spec(80),
    )
    .await;
    let mut spec = env.lb_spec(80);
    spec.load_balancer_ip = Some("203.0.113.9".into());
    env.service(&ns, "field", &[], spec).await;
    assert_eq!(env.ips(&ns, "anno").await, [ip("203.0.113.7")]);
    assert_eq!(env.ips(&ns, "field").await, [ip("203.0.113.9")]);
    // Outside every pool, and already taken.
    env.service(
        &ns,
        "outside",
        &[("ferrolb.io/loadBalancerIPs", "203.0.113.200")],
        env.lb_spec(80),
    )
    .await;
    env.condition(&ns, "outside", "RequestedIPNotInPool").await;
    env.service(
        &ns,
        "taken",
        &[("ferrolb.io/loadBalancerIPs", "203.0.113.7")],
        env.lb_spec(81),
    )
    .await;
    env.condition(&ns, "taken", "RequestedIPInUse").await;
    env.cleanup().await;
}

#[tokio::test]
async fn pool_by_name_and_auto_assign_false() {
    let env = Env::new().await;
    let _c = env.controller("c1");
    let ns = env.namespace("byname", &[]).await;
    env.pool("auto", &["203.0.113.0/30"], |_| {}).await;
    let manual = env
        .pool("manual", &["203.0.113.16/30"], |s| s.auto_assign = false)
        .await;
    env.service(
        &ns,
        "named",
        &[("ferrolb.io/address-pool", &manual)],
        env.lb_spec(80),
    )
    .await;
    env.service(&ns, "plain", &[], env.lb_spec(80)).await;
    assert_eq!(env.ips(&ns, "named").await, [ip("203.0.113.16")]);
    assert_eq!(
        env.ips(&ns, "plain").await,
        [ip("203.0.113.0")],
        "autoAssign=false pool skipped"
    );
    // A MetalLB spelling works too, with an Event noting the alias.
    env.service(
        &ns,
        "alias",
        &[("metallb.universe.tf/address-pool", &manual)],
        env.lb_spec(80),
    )
    .await;
    assert_eq!(env.ips(&ns, "alias").await, [ip("203.0.113.17")]);
    let reasons = env
        .eventually("alias event", 10, || async {
            let r = env.event_reasons(&ns, "alias").await;
            r.contains(&"AnnotationAlias".to_string()).then_some(r)
        })
        .await;
    assert!(reasons.contains(&"IPAllocated".to_string()), "{reasons:?}");
    env.service(
        &ns,
        "ghost",
        &[("ferrolb.io/address-pool", "no-such-pool")],
        env.lb_spec(80),
    )
    .await;
    env.condition(&ns, "ghost", "NoMatchingPool").await;
    env.cleanup().await;
}

#[tokio::test]
async fn namespace_and_service_selectors_with_priority() {
    let env = Env::new().await;
    let _c = env.controller("c1");
    let team_a = env.namespace("team-a", &[("team", "a")]).await;
    let other = env.namespace("other", &[]).await;
    env.pool("general", &["203.0.113.64/30"], |_| {}).await;
    env.pool("team-a", &["203.0.113.16/30"], |s| {
        s.service_allocation = allocation(|a| {
            a.priority = Some(10);
            a.namespace_selectors = vec![selector(&[("team", "a")])];
        })
    })
    .await;
    env.pool("gold", &["203.0.113.32/30"], |s| {
        s.service_allocation = allocation(|a| {
            a.priority = Some(1);
            a.service_selectors = vec![selector(&[("tier", "gold")])];
        })
    })
    .await;
    // Watches of different kinds are not ordered against each other on a real API server:
    // a Service can arrive before a pool created earlier. Priority only orders the pools
    // the controller has seen, so wait until it has seen all three.
    for p in ["general", "team-a", "gold"] {
        env.pool_condition(&env.name(p), "Ready", "True").await;
    }
    env.service(&team_a, "a", &[], env.lb_spec(80)).await;
    env.service_labeled(&team_a, "gold", &[], &[("tier", "gold")], env.lb_spec(80))
        .await;
    env.service(&other, "o", &[], env.lb_spec(80)).await;
    assert_eq!(env.ips(&team_a, "a").await, [ip("203.0.113.16")]);
    assert_eq!(
        env.ips(&team_a, "gold").await,
        [ip("203.0.113.32")],
        "priority 1 beats 10"
    );
    assert_eq!(env.ips(&other, "o").await, [ip("203.0.113.64")]);
    env.cleanup().await;
}

#[tokio::test]
async fn sharing_rules() {
    let env = Env::new().await;
    let _c = env.controller("c1");
    let ns = env.namespace("share", &[]).await;
    env.pool("share", &["203.0.113.0/30"], |_| {}).await;
    let key = [("ferrolb.io/allow-shared-ip", "k1")];
    env.service(&ns, "http", &key, env.lb_spec(80)).await;
    env.service(&ns, "https", &key, env.lb_spec(443)).await;
    let shared = env.ips(&ns, "http").await;
    assert_eq!(
        env.ips(&ns, "https").await,
        shared,
        "compatible services share"
    );
    // Same key, same port: cannot share, gets the next address.
    env.service(&ns, "clash", &key, env.lb_spec(80)).await;
    assert_ne!(env.ips(&ns, "clash").await, shared);
    // Asking for the shared IP explicitly with a clashing port is a sharing conflict.
    env.service(
        &ns,
        "clash2",
        &[
            ("ferrolb.io/allow-shared-ip", "k1"),
            ("ferrolb.io/loadBalancerIPs", &shared[0].to_string()),
        ],
        env.lb_spec(443),
    )
    .await;
    env.condition(&ns, "clash2", "SharingConflict").await;
    // Local policy with different selectors cannot share.
    let mut l1 = env.lb_spec(8080);
    l1.external_traffic_policy = Some("Local".into());
    l1.selector = Some(to_map(&[("app", "one")]));
    let mut l2 = env.lb_spec(8081);
    l2.external_traffic_policy = Some("Local".into());
    l2.selector = Some(to_map(&[("app", "two")]));
    let lk = [("ferrolb.io/allow-shared-ip", "local")];
    env.service(&ns, "local1", &lk, l1).await;
    let a = env.ips(&ns, "local1").await;
    env.service(&ns, "local2", &lk, l2).await;
    assert_ne!(env.ips(&ns, "local2").await, a);
    env.cleanup().await;
}

#[tokio::test]
async fn dual_stack_policies() {
    let env = Env::new().await;
    let _c = env.controller("c1");
    let ns = env.namespace("dual", &[]).await;
    env.pool("dual", &["203.0.113.0/30", "2001:db8:5::/126"], |_| {})
        .await;
    let mk = |policy: &str, families: &[&str]| {
        let mut s = env.lb_spec(80);
        s.ip_family_policy = Some(policy.into());
        s.ip_families = Some(families.iter().map(|f| f.to_string()).collect());
        s
    };
    env.service(&ns, "single", &[], mk("SingleStack", &["IPv6"]))
        .await;
    env.service(&ns, "prefer", &[], mk("PreferDualStack", &["IPv4", "IPv6"]))
        .await;
    env.service(
        &ns,
        "require",
        &[],
        mk("RequireDualStack", &["IPv6", "IPv4"]),
    )
    .await;
    // Which of the three is served first depends on when the controller sees the
    // namespace and the pool (watches of different kinds are not ordered on a real server;
    // Services created in one second tie): check the policies, not the order.
    let single = env.ips(&ns, "single").await;
    assert!(
        single.len() == 1 && single[0] >= ip("2001:db8:5::") && single[0] <= ip("2001:db8:5::3"),
        "SingleStack IPv6 from the pool: {single:?}"
    );
    let prefer = env.ips(&ns, "prefer").await;
    assert_eq!(prefer.len(), 2);
    assert!(
        prefer[0].is_ipv4() && prefer[1].is_ipv6(),
        "primary family first: {prefer:?}"
    );
    let require = env.ips(&ns, "require").await;
    assert!(require[0].is_ipv6() && require[1].is_ipv4(), "{require:?}");
    // RequireDualStack with only an IPv4 pool fails clearly.
    let v4only = env
        .pool("v4only", &["203.0.113.100/30"], |s| s.auto_assign = false)
        .await;
    env.service(
        &ns,
        "require4",
        &[("ferrolb.io/address-pool", &v4only)],
        mk("RequireDualStack", &["IPv4", "IPv6"]),
    )
    .await;
    env.condition(&ns, "require4", "FamilyUnavailable").await;
    env.service(
        &ns,
        "prefer4",
        &[("ferrolb.io/address-pool", &v4only)],
        mk("PreferDualStack", &["IPv4", "IPv6"]),
    )
    .await;
    assert_eq!(env.ips(&ns, "prefer4").await, [ip("203.0.113.100")]);
    env.cleanup().await;
}

#[tokio::test]
async fn exhaustion_then_release_serves_the_waiting_service() {
    let env = Env::new().await;
    let _c = env.controller("c1");
    let ns = env.namespace("exh", &[]).await;
    env.pool("exh", &["203.0.113.10-203.0.113.11"], |_| {})
        .await;
    env.service(&ns, "a", &[], env.lb_spec(80)).await;
    env.ips(&ns, "a").await;
    env.service(&ns, "b", &[], env.lb_spec(80)).await;
    env.ips(&ns, "b").await;
    env.service(&ns, "c", &[], env.lb_spec(80)).await;
    let cond = env.condition(&ns, "c", "PoolExhausted").await;
    assert_eq!(cond.status, "False");
    let freed = env.ips(&ns, "a").await;
    env.services(&ns)
        .delete("a", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(env.ips(&ns, "c").await, freed);
    // Type change releases too.
    let freed = env.ips(&ns, "b").await;
    let patch = serde_json::json!({"spec": {"type": "ClusterIP"}});
    env.services(&ns)
        .patch("b", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    env.service(&ns, "d", &[], env.lb_spec(80)).await;
    assert_eq!(env.ips(&ns, "d").await, freed);
    let api = env.services(&ns);
    env.eventually("b's ingress cleared", 10, || async {
        let s = api.get("b").await.ok()?;
        ips_of(&s).is_empty().then_some(())
    })
    .await;
    env.cleanup().await;
}

#[tokio::test]
async fn pool_shrink_and_deletion_move_only_affected_services() {
    let env = Env::new().await;
    let _c = env.controller("c1");
    let ns = env.namespace("shrink", &[]).await;
    let p1 = env.pool("p1", &["203.0.113.0/30"], |_| {}).await;
    env.service(
        &ns,
        "a",
        &[("ferrolb.io/loadBalancerIPs", "203.0.113.0")],
        env.lb_spec(80),
    )
    .await;
    env.service(
        &ns,
        "b",
        &[("ferrolb.io/loadBalancerIPs", "203.0.113.3")],
        env.lb_spec(80),
    )
    .await;
    env.service(
        &ns,
        "c",
        &[("ferrolb.io/address-pool", &p1)],
        env.lb_spec(80),
    )
    .await;
    assert_eq!(env.ips(&ns, "a").await, [ip("203.0.113.0")]);
    assert_eq!(env.ips(&ns, "b").await, [ip("203.0.113.3")]);
    let c_ip = env.ips(&ns, "c").await;
    // Shrink to .0-.2: only b loses its IP.
    env.set_pool_addresses(&p1, &["203.0.113.0-203.0.113.2"])
        .await;
    env.condition(&ns, "b", "RequestedIPNotInPool").await;
    assert_eq!(env.ips(&ns, "a").await, [ip("203.0.113.0")]);
    assert_eq!(env.ips(&ns, "c").await, c_ip);
    let reasons = env.event_reasons(&ns, "b").await;
    assert!(reasons.contains(&"IPReleased".to_string()), "{reasons:?}");
    // Delete the pool while another can take c: c moves there, with an Event.
    env.pool("p2", &["203.0.113.64/30"], |_| {}).await;
    let patch = serde_json::json!({"metadata": {"annotations": {"ferrolb.io/address-pool": null}}});
    env.services(&ns)
        .patch("c", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        env.ips(&ns, "c").await,
        c_ip,
        "dropping the pool annotation moves nothing"
    );
    env.delete_pool(&p1).await;
    let api = env.services(&ns);
    env.eventually("c re-allocated from p2", 10, || async {
        let s = api.get("c").await.ok()?;
        (ips_of(&s) == [ip("203.0.113.64")]).then_some(())
    })
    .await;
    env.condition(&ns, "a", "RequestedIPNotInPool").await;
    env.cleanup().await;
}

#[tokio::test]
async fn bad_pool_and_overlapping_pools_report_conditions() {
    let env = Env::new().await;
    let _c = env.controller("c1");
    let ns = env.namespace("badpool", &[]).await;
    let good = env
        .pool("good", &["203.0.113.0/30"], |s| s.auto_assign = false)
        .await;
    // A reversed range passes admission (CEL cannot order IPs); the controller marks it.
    let bad = env.pool("bad", &["203.0.113.9-203.0.113.1"], |_| {}).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let newer = env.pool("newer", &["203.0.113.2/31"], |_| {}).await;
    let c = env.pool_condition(&bad, "Invalid", "True").await;
    assert!(
        c.message.contains("203.0.113.9-203.0.113.1"),
        "{}",
        c.message
    );
    env.pool_condition(&good, "Ready", "True").await;
    let c = env.pool_condition(&newer, "Conflict", "True").await;
    assert!(c.message.contains(&good), "{}", c.message);
    // Cluster-scoped objects' Events land in `default`.
    let reasons = env
        .eventually("PoolConflict event", 10, || async {
            let r = env.event_reasons("default", &newer).await;
            r.contains(&"PoolConflict".to_string()).then_some(r)
        })
        .await;
    assert_eq!(reasons, ["PoolConflict"], "one Event per change");
    // The good pool still serves; the conflicting one serves nothing new.
    env.service(
        &ns,
        "g",
        &[("ferrolb.io/address-pool", &good)],
        env.lb_spec(80),
    )
    .await;
    assert_eq!(env.ips(&ns, "g").await, [ip("203.0.113.0")]);
    env.service(
        &ns,
        "n",
        &[("ferrolb.io/address-pool", &newer)],
        env.lb_spec(80),
    )
    .await;
    env.condition(&ns, "n", "NoMatchingPool").await;
    // Fixing the overlap clears the conflict.
    env.set_pool_addresses(&newer, &["203.0.113.200/31"]).await;
    env.pool_condition(&newer, "Ready", "True").await;
    assert_eq!(env.ips(&ns, "n").await, [ip("203.0.113.200")]);
    let reasons = env.event_reasons("default", &newer).await;
    assert_eq!(reasons, ["PoolConflict", "PoolReady"]);
    env.cleanup().await;
}

#[tokio::test]
async fn bad_annotations_are_invalid_requests() {
    let env = Env::new().await;
    let _c = env.controller("c1");
    let ns = env.namespace("badanno", &[]).await;
    env.pool("p", &["203.0.113.0/30"], |_| {}).await;
    env.service(
        &ns,
        "bad",
        &[("ferrolb.io/loadBalancerIPs", "300.1.1.1")],
        env.lb_spec(80),
    )
    .await;
    let c = env.condition(&ns, "bad", "InvalidRequest").await;
    assert!(c.message.contains("300.1.1.1"), "{}", c.message);
    env.service(
        &ns,
        "two",
        &[("ferrolb.io/loadBalancerIPs", "203.0.113.1,203.0.113.2")],
        env.lb_spec(80),
    )
    .await;
    env.condition(&ns, "two", "InvalidRequest").await;
    // Others are unaffected.
    env.service(&ns, "ok", &[], env.lb_spec(80)).await;
    assert_eq!(env.ips(&ns, "ok").await, [ip("203.0.113.0")]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = env.event_reasons(&ns, "bad").await;
    assert_eq!(r, ["AllocationFailed"], "one Warning, not one per resync");
    env.cleanup().await;
}

#[tokio::test]
async fn lb_class_filtering() {
    let env = Env::new().await;
    let _c = env.controller("c1");
    let ns = env.namespace("class", &[]).await;
    env.pool("p", &["203.0.113.0/30"], |_| {}).await;
    let mut other = env.lb_spec(80);
    other.load_balancer_class = Some("example.com/someone-else".into());
    env.service(&ns, "theirs", &[], other).await;
    let mut ours = env.lb_spec(80);
    ours.load_balancer_class = Some(env.lb_class.clone());
    env.service(&ns, "ours", &[], ours).await;
    let mut cip = env.lb_spec(80);
    cip.type_ = Some("ClusterIP".into());
    cip.load_balancer_class = None; // a real API server allows a class only on LoadBalancers
    env.service(&ns, "clusterip", &[], cip).await;
    assert_eq!(env.ips(&ns, "ours").await, [ip("203.0.113.0")]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    for name in ["theirs", "clusterip"] {
        let s = env.services(&ns).get(name).await.unwrap();
        assert!(
            ips_of(&s).is_empty() && allocated_condition(&s).is_none(),
            "{name} must be ignored"
        );
    }
    env.cleanup().await;
}

#[tokio::test]
async fn api_errors_are_retried() {
    let env = Env::new().await;
    let Some(api) = env.testapi() else {
        eprintln!("api_errors_are_retried needs the test API server's fault injection: not run");
        return;
    };
    let _c = env.controller("c1");
    let ns = env.namespace("retry", &[]).await;
    env.pool("p", &["203.0.113.0/30"], |_| {}).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Failures right after the create hit the controller's reads and status writes.
    // kube-rs retries 429, 503 and 504 itself; a 500 reaches our own backoff.
    env.service(&ns, "s", &[], env.lb_spec(80)).await;
    api.fail_next(3, 500);
    assert_eq!(env.ips(&ns, "s").await, [ip("203.0.113.0")]);
    env.service(&ns, "t", &[], env.lb_spec(80)).await;
    api.fail_next(2, 429);
    assert_eq!(env.ips(&ns, "t").await, [ip("203.0.113.1")]);
}

#[tokio::test]
async fn restart_with_200_services_moves_and_duplicates_nothing() {
    let env = Env::new().await;
    let ns = env.namespace("restart", &[]).await;
    env.pool("big", &["203.0.113.0/24"], |s| s.avoid_buggy_ips = true)
        .await;
    let c1 = env.controller("c1");
    for i in 0..200 {
        env.service(&ns, &format!("s{i}"), &[], env.lb_spec(80))
            .await;
    }
    let api = env.services(&ns);
    let before = env
        .eventually("200 services allocated", 60, || async {
            let l = api.list(&Default::default()).await.ok()?;
            let m: Vec<(String, Vec<std::net::IpAddr>)> = l
                .items
                .iter()
                .map(|s: &Service| (s.metadata.name.clone().unwrap(), ips_of(s)))
                .collect();
            m.iter().all(|(_, ips)| ips.len() == 1).then_some(m)
        })
        .await;
    c1.kill();
    // Pending work arrives while no controller runs: a new Service, and one deleted.
    api.delete("s0", &DeleteParams::default()).await.unwrap();
    env.service(&ns, "late", &[], env.lb_spec(80)).await;
    let _c2 = env.controller("c2");
    let late = env.ips(&ns, "late").await;
    let after: Vec<(String, Vec<std::net::IpAddr>)> = api
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|s| (s.metadata.name.clone().unwrap(), ips_of(s)))
        .collect();
    for (name, ips) in &before {
        if name == "s0" {
            continue;
        }
        let now = &after.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!(now, ips, "{name} moved across the restart");
    }
    let all: Vec<_> = after.iter().flat_map(|(_, ips)| ips.clone()).collect();
    let unique: BTreeSet<_> = all.iter().collect();
    assert_eq!(all.len(), unique.len(), "an IP is duplicated");
    let s0_ip = &before.iter().find(|(n, _)| n == "s0").unwrap().1;
    assert_eq!(
        &late, s0_ip,
        "the freed lowest address goes to the new Service"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn leader_handover_between_two_controllers() {
    let env = Env::new().await;
    let ns = env.namespace("ha", &[]).await;
    env.pool("ha", &["203.0.113.0/28"], |_| {}).await;
    let a = env.controller("replica-a");
    env.service(&ns, "first", &[], env.lb_spec(80)).await;
    env.ips(&ns, "first").await;
    let b = env.controller("replica-b");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        a.index.lock().unwrap().leading() && !b.index.lock().unwrap().leading(),
        "exactly one leader"
    );
    // Crash the leader: the standby takes over after the 3 s lease expires.
    let t = tokio::time::Instant::now();
    a.kill();
    env.service(&ns, "second", &[], env.lb_spec(80)).await;
    assert_eq!(env.ips(&ns, "second").await, [ip("203.0.113.1")]);
    let took = t.elapsed();
    assert!(b.index.lock().unwrap().leading());
    println!("crash takeover: {took:?} (lease 3 s)");
    // Graceful stop releases the lease: a fresh replica leads at its next poll.
    let c = env.controller("replica-c");
    b.stop().await;
    env.service(&ns, "third", &[], env.lb_spec(80)).await;
    assert_eq!(env.ips(&ns, "third").await, [ip("203.0.113.2")]);
    assert!(c.index.lock().unwrap().leading());
    assert_eq!(
        env.ips(&ns, "first").await,
        [ip("203.0.113.0")],
        "nothing moved"
    );
    env.cleanup().await;
}
