//! Scale on a real API server: how long the real `ferrolb-controller` takes to assign N
//! LoadBalancer Services (default 10,000), its peak RSS, and its status writes, next to a
//! plain client that only patches the same number of Service statuses (the floor any
//! controller has to pay), measured in one run against one server.
//!
//! ```text
//!   create pool (IPv6 /112) + 2×N Services (no NodePorts) ──┬─ baseline: N status patches, 8 at a time
//!                                                           └─ ferrolb-controller starts ─▶ all N assigned
//!   figures: wall time, Services/s, controller VmHWM, PATCH services/status per Service
//! ```
//!
//! Needs `KUBECONFIG` (a disposable cluster with FerroLB's CRDs and a dual-stack Service
//! range, e.g. the kit: `SVC_CIDR=10.96.0.0/16,2001:db8:96::/112 ../shared/k8s/start`);
//! without it, it says so and exits. `FERROLB_SCALE_N` sets N. Addresses: 2001:db8::/32
//! only (lab rules). Run: `cargo bench -p ferrolb-controller --bench scale_real`.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferrolb_crds::{IPAddressPool, IPAddressPoolSpec};
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Service, ServicePort, ServiceSpec};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// Concurrent calls of the baseline: the controller's writer runs 8 at a time too.
const CONCURRENCY: usize = 8;

fn lb_service(name: String, class: &str) -> Service {
    Service {
        metadata: kube::api::ObjectMeta {
            name: Some(name),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            load_balancer_class: Some(class.into()),
            // 10,000 LoadBalancers would exhaust the NodePort range; FerroLB needs none.
            allocate_load_balancer_node_ports: Some(false),
            ip_families: Some(vec!["IPv6".into()]),
            ip_family_policy: Some("SingleStack".into()),
            ports: Some(vec![ServicePort {
                port: 80,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

async fn create_services(api: &Api<Service>, n: usize, class: &str) {
    let created = stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            let svc = lb_service(format!("s{i}"), class);
            async move { api.create(&PostParams::default(), &svc).await }
        })
        .buffer_unordered(32)
        .filter(|r| std::future::ready(r.is_ok()))
        .count()
        .await;
    assert_eq!(created, n, "created {created} of {n} Services");
}

/// How many Services of `api` show an ingress IP.
async fn assigned(api: &Api<Service>) -> usize {
    let mut n = 0;
    let mut lp = ListParams::default().limit(2000);
    loop {
        let page = api.list(&lp).await.expect("list Services");
        n += page
            .items
            .iter()
            .filter(|s| {
                s.status
                    .as_ref()
                    .and_then(|st| st.load_balancer.as_ref())
                    .and_then(|lb| lb.ingress.as_ref())
                    .is_some_and(|i| !i.is_empty())
            })
            .count();
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => return n,
        }
    }
}

/// `apiserver_request_total` for PATCH on services/status, summed over codes.
async fn status_patches(client: &Client) -> f64 {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(req).await.unwrap_or_default();
    text.lines()
        .filter(|l| {
            l.starts_with("apiserver_request_total{")
                && l.contains("resource=\"services\"")
                && l.contains("subresource=\"status\"")
                && l.contains("verb=\"PATCH\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn controller_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("bench path");
    // target/<profile>/deps/scale_real-… → target/<profile>/ferrolb-controller
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("ferrolb-controller");
    assert!(
        bin.is_file(),
        "{} missing: `cargo build --release -p ferrolb-controller` first",
        bin.display()
    );
    bin
}

#[tokio::main]
async fn main() {
    if std::env::var_os("KUBECONFIG").is_none() {
        println!(
            "scale_real: skipped, it needs KUBECONFIG (a disposable cluster; see the file's doc)"
        );
        return;
    }
    let n: usize = std::env::var("FERROLB_SCALE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let client = Client::try_default().await.expect("KUBECONFIG cluster");
    let run = format!("scale{}", std::process::id());
    let class = format!("ferrolb.io/{run}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in ["base", "ctl"] {
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("{run}-{ns}")),
                ..Default::default()
            },
            ..Default::default()
        };
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .expect("namespace");
    }
    let pools: Api<IPAddressPool> = Api::all(client.clone());
    let mut pool = IPAddressPool::new(
        &run,
        IPAddressPoolSpec {
            addresses: vec!["2001:db8:5ca1::/112".into()],
            auto_assign: true,
            avoid_buggy_ips: false,
            service_allocation: None,
            external_ips: None,
        },
    );
    pool.metadata.labels = Some(BTreeMap::from([("ferrolb.io/bench".into(), run.clone())]));
    pools
        .create(&PostParams::default(), &pool)
        .await
        .expect("pool (are FerroLB's CRDs installed?)");
    let base: Api<Service> = Api::namespaced(client.clone(), &format!("{run}-base"));
    let ctl: Api<Service> = Api::namespaced(client.clone(), &format!("{run}-ctl"));
    let t = Instant::now();
    // Another class: the controller must not see the baseline's Services as its own.
    create_services(&base, n, &format!("{class}-baseline")).await;
    create_services(&ctl, n, &class).await;
    println!(
        "scale_real: {} Services created in {:.1} s",
        2 * n,
        t.elapsed().as_secs_f64()
    );

    // Baseline: a plain client writes N statuses, nothing else.
    let p0 = status_patches(&client).await;
    let t = Instant::now();
    let pp = PatchParams::default();
    stream::iter(0..n)
        .map(|i| {
            let (api, pp) = (base.clone(), pp.clone());
            async move {
                let patch = json!({"status": {"loadBalancer": {"ingress": [
                    {"ip": format!("2001:db8:5ca2::{i:x}"), "ipMode": "VIP"}]}}});
                api.patch_status(&format!("s{i}"), &pp, &Patch::Merge(&patch))
                    .await
                    .expect("baseline patch")
            }
        })
        .buffer_unordered(CONCURRENCY)
        .count()
        .await;
    let baseline = t.elapsed();
    let p1 = status_patches(&client).await;

    // FerroLB: the real binary, from start to every Service assigned.
    let t = Instant::now();
    let mut child = Command::new(controller_binary())
        .args([
            "--lb-class",
            &class,
            "--lease-namespace",
            &format!("{run}-ctl"),
            "--lease-name",
            &run,
            "--identity",
            &run,
            "--liveness-secret",
            "",
            "--metrics-addr",
            "127.0.0.1:0",
            "--log-level",
            "warn",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(format!("/tmp/{run}-controller.log")).expect("log file"),
        ))
        .spawn()
        .expect("start ferrolb-controller");
    let mut done = 0;
    while done < n {
        tokio::time::sleep(Duration::from_millis(500)).await;
        done = assigned(&ctl).await;
        assert!(
            t.elapsed() < Duration::from_secs(900),
            "only {done} of {n} assigned after 15 min"
        );
    }
    let ferrolb = t.elapsed();
    // Let the last writes' pool status and Events settle before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let p2 = status_patches(&client).await;
    let hwm = vm_hwm_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();

    let per_s = |d: Duration| n as f64 / d.as_secs_f64();
    println!("scale_real: N = {n} LoadBalancer Services (IPv6), one real API server");
    println!(
        "  plain client, status patches only : {:>6.1} s  {:>6.0} Services/s  {:.2} PATCH services/status per Service",
        baseline.as_secs_f64(),
        per_s(baseline),
        (p1 - p0) / n as f64
    );
    println!(
        "  ferrolb-controller, start to all  : {:>6.1} s  {:>6.0} Services/s  {:.2} PATCH services/status per Service  (×{:.2} the baseline's time)",
        ferrolb.as_secs_f64(),
        per_s(ferrolb),
        (p2 - p1) / n as f64,
        ferrolb.as_secs_f64() / baseline.as_secs_f64()
    );
    println!(
        "  ferrolb-controller peak RSS (VmHWM): {:.1} MiB; its log: /tmp/{run}-controller.log",
        hwm as f64 / 1024.0
    );

    for ns in ["base", "ctl"] {
        let _ = namespaces
            .delete(&format!("{run}-{ns}"), &DeleteParams::default())
            .await;
    }
    let _ = pools.delete(&run, &DeleteParams::default()).await;
}
