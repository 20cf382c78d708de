//! `kubectl ferrolb` against a real kube-apiserver, with MetalLB-shaped objects.
//!
//! Needs `FERROLB_REAL_KUBECONFIG` (a disposable cluster, e.g. the kit `../shared/k8s`);
//! without it the test prints a notice and passes. Nothing of FerroLB runs: the test writes
//! the statuses the controller and the speakers would write, then runs the binary.
//!
//! Addresses: 203.0.113.224/27 and 2001:db8:fe11::/120 only (docs/design/lab-addresses.md); every object it
//! creates carries a per-run prefix and is deleted at the end, also on failure.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::{Value, json};

const MANAGER: &str = "kubectl-ferrolb-test";

fn kubeconfig() -> Option<String> {
    std::env::var("FERROLB_REAL_KUBECONFIG")
        .ok()
        .filter(|s| !s.is_empty())
}

async fn client(path: &str) -> Client {
    let kc = Kubeconfig::read_from(path).expect("kubeconfig");
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(cfg).expect("client")
}

/// Runs the plugin binary with this run's speaker namespace; (exit code, stdout, stderr).
fn plugin(kc: &str, speakers: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-ferrolb"))
        .args(args)
        .args(["--kubeconfig", kc, "--speaker-namespace", speakers])
        .output()
        .expect("run kubectl-ferrolb");
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    println!(
        "$ kubectl ferrolb {}\n{so}{}",
        args.join(" "),
        if se.is_empty() {
            String::new()
        } else {
            format!("[stderr]\n{se}")
        }
    );
    (out.status.code().unwrap_or(-1), so, se)
}

fn yaml_docs(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .expect("yaml")
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

async fn apply_crds(c: &Client, text: &str) -> Vec<String> {
    let api: Api<CustomResourceDefinition> = Api::all(c.clone());
    let mut names = Vec::new();
    for doc in yaml_docs(text) {
        let crd: CustomResourceDefinition = serde_json::from_value(doc).expect("a CRD");
        let name = crd.metadata.name.clone().unwrap();
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("apply CRD");
        names.push(name);
    }
    for name in &names {
        wait_for(&format!("CRD {name} established"), || async {
            let crd = api.get(name).await.ok()?;
            crd.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        })
        .await;
    }
    names
}

async fn wait_for<F, Fut, T>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..300 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

fn dynamic(
    c: &Client,
    group: &str,
    version: &str,
    kind: &str,
    ns: Option<&str>,
) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    match ns {
        Some(ns) => Api::namespaced_with(c.clone(), ns, &ar),
        None => Api::all_with(c.clone(), &ar),
    }
}

async fn create_value(api: &Api<DynamicObject>, v: Value) {
    let obj: DynamicObject = serde_json::from_value(v).expect("object");
    api.create(&PostParams::default(), &obj)
        .await
        .expect("create");
}

/// Deletes what the test created, also when it panics.
struct Cleanup {
    client: Client,
    namespaces: Vec<String>,
    nodes: Vec<String>,
    leases: Vec<(String, String)>,
    ferrolb: Vec<(&'static str, String)>,
    crds: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let c = self.client.clone();
        let namespaces = std::mem::take(&mut self.namespaces);
        let nodes = std::mem::take(&mut self.nodes);
        let leases = std::mem::take(&mut self.leases);
        let ferrolb = std::mem::take(&mut self.ferrolb);
        let crds = std::mem::take(&mut self.crds);
        let work = async move {
            let dp = DeleteParams::default();
            for (kind, name) in ferrolb {
                let _ = dynamic(&c, "ferrolb.io", "v1alpha1", kind, None)
                    .delete(&name, &dp)
                    .await;
            }
            for (ns, name) in leases {
                let _ = Api::<Lease>::namespaced(c.clone(), &ns)
                    .delete(&name, &dp)
                    .await;
            }
            for n in nodes {
                let _ = Api::<Node>::all(c.clone()).delete(&n, &dp).await;
            }
            for ns in namespaces {
                empty_namespace(&c, &ns).await;
            }
            for crd in crds {
                let _ = Api::<CustomResourceDefinition>::all(c.clone())
                    .delete(&crd, &dp)
                    .await;
            }
        };
        // Drop may run inside the test's runtime: clean up on a runtime of our own.
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(work)
        })
        .join()
        .ok();
    }
}

/// Deletes a namespace's Services and EndpointSlices, then the namespace (without a
/// controller manager the namespace itself may stay Terminating; its Services must not).
async fn empty_namespace(c: &Client, ns: &str) {
    let dp = DeleteParams::default();
    let lp = kube::api::ListParams::default();
    let _ = Api::<Service>::namespaced(c.clone(), ns)
        .delete_collection(&dp, &lp)
        .await;
    let _ = Api::<EndpointSlice>::namespaced(c.clone(), ns)
        .delete_collection(&dp, &lp)
        .await;
    let _ = Api::<Namespace>::all(c.clone()).delete(ns, &dp).await;
}

/// Removes what an earlier, crashed run of this test left (everything named `kflb*`).
async fn sweep(c: &Client) {
    let lp = kube::api::ListParams::default();
    let dp = DeleteParams::default();
    let ours = |n: &Option<String>| n.as_deref().is_some_and(|n| n.starts_with("kflb"));
    for ns in Api::<Namespace>::all(c.clone()).list(&lp).await.unwrap() {
        if ours(&ns.metadata.name) {
            empty_namespace(c, ns.metadata.name.as_deref().unwrap()).await;
        }
    }
    for n in Api::<Node>::all(c.clone()).list(&lp).await.unwrap() {
        if ours(&n.metadata.name) {
            let _ = Api::<Node>::all(c.clone())
                .delete(n.metadata.name.as_deref().unwrap(), &dp)
                .await;
        }
    }
    for kind in ["IPAddressPool", "L2Advertisement"] {
        let api = dynamic(c, "ferrolb.io", "v1alpha1", kind, None);
        for o in api.list(&lp).await.unwrap() {
            if ours(&o.metadata.name) {
                let _ = api.delete(o.metadata.name.as_deref().unwrap(), &dp).await;
            }
        }
    }
}

/// A Service of the test: name, annotations, IPs in its status.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);

fn lb_service(name: &str, annotations: &[(&str, &str)]) -> Service {
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "annotations": annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        },
        "spec": {"type": "LoadBalancer", "selector": {"app": name}, "ports": [{"port": 80}]},
    }))
    .unwrap()
}

fn condition(type_: &str, status: bool, reason: &str, message: &str, at: &str) -> Value {
    json!({
        "type": type_, "status": if status { "True" } else { "False" }, "reason": reason,
        "message": message, "lastTransitionTime": at,
    })
}

async fn set_service_status(api: &Api<Service>, name: &str, ips: &[&str], conditions: Vec<Value>) {
    let ingress: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"ip": ip, "ipMode": "VIP"}))
        .collect();
    let body = if ips.is_empty() {
        json!({"status": {"conditions": conditions}})
    } else {
        json!({"status": {"loadBalancer": {"ingress": ingress}, "conditions": conditions}})
    };
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .unwrap_or_else(|e| panic!("status of {name}: {e}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn status_explain_and_migrate_on_a_real_api_server() {
    let Some(kc) = kubeconfig() else {
        println!(
            "SKIPPED: set FERROLB_REAL_KUBECONFIG to a disposable cluster's kubeconfig \
             (e.g. the kit ../shared/k8s) to run kubectl-ferrolb against a real API server"
        );
        return;
    };
    let c = client(&kc).await;
    let run = format!("kflb{}", std::process::id());
    let mlb_ns = format!("{run}-metallb");
    let apps = format!("{run}-apps");
    // The speakers' namespace of this run (`--speaker-namespace`), so the test never touches
    // a real installation's ferrolb-system.
    let speakers_ns = format!("{run}-ferrolb");
    let speakers = speakers_ns.as_str();
    let mut guard = Cleanup {
        client: c.clone(),
        namespaces: vec![mlb_ns.clone(), apps.clone(), speakers_ns.clone()],
        nodes: Vec::new(),
        leases: Vec::new(),
        ferrolb: Vec::new(),
        crds: Vec::new(),
    };

    // FerroLB's CRDs as deployed.
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    for (f, _) in ferrolb_crds::crds() {
        let text = std::fs::read_to_string(format!("{root}/deploy/crds/{f}")).expect("CRD file");
        apply_crds(&c, &text).await;
    }

    sweep(&c).await;

    // Without MetalLB's CRDs, --from-cluster says so.
    let crd_api: Api<CustomResourceDefinition> = Api::all(c.clone());
    for name in ["ipaddresspools.metallb.io", "l2advertisements.metallb.io"] {
        if crd_api.get_opt(name).await.unwrap().is_some() {
            crd_api
                .delete(name, &DeleteParams::default())
                .await
                .unwrap();
            wait_for("old MetalLB CRD gone", || async {
                crd_api.get_opt(name).await.unwrap().is_none().then_some(())
            })
            .await;
        }
    }
    let (code, _, err) = plugin(&kc, speakers, &["migrate", "--from-cluster"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not installed in this cluster"), "{err}");

    guard.crds = apply_crds(&c, include_str!("metallb-crds.yaml")).await;
    for ns in [&mlb_ns, &apps, &speakers_ns] {
        Api::<Namespace>::all(c.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(
                    json!({"metadata": {"name": ns, "labels": {"team": "web"}}}),
                )
                .unwrap(),
            )
            .await
            .unwrap();
    }
    // MetalLB's configuration: a host-bit CIDR, a priority-0 pool, a field FerroLB lacks.
    let lan = format!("{run}-lan");
    let gold = format!("{run}-gold");
    let pools = dynamic(&c, "metallb.io", "v1beta1", "IPAddressPool", Some(&mlb_ns));
    create_value(
        &pools,
        json!({
            "apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
            "metadata": {"name": lan, "labels": {"announce": "l2"}},
            "spec": {"addresses": ["203.0.113.226/29", "2001:db8:fe11::/125"], "avoidBuggyIPs": true},
        }),
    )
    .await;
    create_value(
        &pools,
        json!({
            "apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
            "metadata": {"name": gold},
            "spec": {
                "addresses": ["203.0.113.232/29"], "autoAssign": false,
                "serviceAllocation": {"priority": 0, "namespaces": [apps]},
                "allocateToFuture": true,
            },
        }),
    )
    .await;
    let l2 = dynamic(
        &c,
        "metallb.io",
        "v1beta1",
        "L2Advertisement",
        Some(&mlb_ns),
    );
    create_value(
        &l2,
        json!({
            "apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement",
            "metadata": {"name": format!("{run}-l2")},
            "spec": {
                "ipAddressPools": [lan, gold],
                "nodeSelectors": [{"matchLabels": {format!("{run}/edge"): "true"}}],
                "interfaces": ["eth0"],
            },
        }),
    )
    .await;

    // Services as MetalLB left them: IPs in status, MetalLB annotations.
    let svcs: Api<Service> = Api::namespaced(c.clone(), &apps);
    let gold_anno = [("metallb.universe.tf/address-pool", gold.as_str())];
    let wrong_anno = [("metallb.io/address-pool", gold.as_str())];
    let cases: [Case<'_>; 5] = [
        ("web", &[], &["203.0.113.225"]),
        ("gold-svc", &gold_anno, &["203.0.113.233"]),
        ("outside", &[], &["203.0.113.241"]),
        ("wrong-pool", &wrong_anno, &["203.0.113.226"]),
        ("waiting", &[], &[]),
    ];
    for (name, annos, ips) in cases {
        svcs.create(&PostParams::default(), &lb_service(name, annos))
            .await
            .unwrap();
        if !ips.is_empty() {
            set_service_status(&svcs, name, ips, vec![]).await;
        }
    }

    // migrate: YAML out, changes and warnings on stderr.
    let (code, yaml, err) = plugin(&kc, speakers, &["migrate", "--from-cluster"]);
    assert_eq!(code, 0, "{err}");
    assert!(yaml.contains("203.0.113.224/29"), "{yaml}");
    assert!(!yaml.contains("203.0.113.226/29"), "{yaml}");
    assert!(
        err.contains("203.0.113.226/29 -> 203.0.113.224/29: MetalLB masks host bits"),
        "{err}"
    );
    assert!(err.contains("priority 0 dropped"), "{err}");
    assert!(err.contains("spec.allocateToFuture"), "{err}");

    // migrate --check: web and gold-svc stay; outside and wrong-pool would move.
    let (code, out, err) = plugin(&kc, speakers, &["migrate", "--from-cluster", "--check"]);
    assert_eq!(code, 1, "an IP moves: {out}{err}");
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{apps}/{name} ")))
            .unwrap_or_else(|| panic!("{name} in {out}"))
            .to_owned()
    };
    assert!(line("web").ends_with("stays"), "{out}");
    assert!(line("gold-svc").ends_with("stays"), "{out}");
    assert!(
        line("outside").contains("MOVES: 203.0.113.241 is in no converted pool"),
        "{out}"
    );
    assert!(line("wrong-pool").contains("MOVES"), "{out}");
    assert!(!out.contains("/waiting"), "no IP, nothing to keep: {out}");

    // The converted objects are what FerroLB's CRDs accept; the unmasked CIDR is not.
    let converted = kubectl_ferrolb::migrate::parse_yaml(&yaml).unwrap();
    for obj in converted {
        let kind = obj["kind"].as_str().unwrap().to_owned();
        let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
        let api = dynamic(&c, "ferrolb.io", "v1alpha1", &kind, None);
        let o: DynamicObject = serde_json::from_value(obj).unwrap();
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&o),
        )
        .await
        .unwrap_or_else(|e| panic!("FerroLB accepts {kind} {name}: {e}"));
        guard.ferrolb.push((
            if kind == "IPAddressPool" {
                "IPAddressPool"
            } else {
                "L2Advertisement"
            },
            name,
        ));
    }
    let ferrolb_pools = dynamic(&c, "ferrolb.io", "v1alpha1", "IPAddressPool", None);
    let rejected = ferrolb_pools
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "ferrolb.io/v1alpha1", "kind": "IPAddressPool",
                "metadata": {"name": format!("{run}-unmasked")},
                "spec": {"addresses": ["203.0.113.226/29"]},
            }))
            .unwrap(),
        )
        .await;
    assert!(rejected.is_err(), "FerroLB's CRD rejects host bits");

    // What the controller would write: pool status, IPAllocated conditions.
    let now = Timestamp::now();
    let at = Timestamp::from_second(now.as_second() - 600)
        .unwrap()
        .to_string();
    for (pool, assigned, available) in [(&lan, 1, 5), (&gold, 1, 7)] {
        ferrolb_pools
            .patch_status(
                pool,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "assignedIPv4": assigned, "availableIPv4": available,
                    "assignedIPv6": 0, "availableIPv6": if pool == &lan { 8 } else { 0 },
                    "conditions": [condition("Ready", true, "Ready", "the pool allocates addresses", &at)],
                }})),
            )
            .await
            .unwrap();
    }
    set_service_status(
        &svcs,
        "waiting",
        &[],
        vec![condition(
            "ferrolb.io/IPAllocated",
            false,
            "PoolExhausted",
            &format!("no free address for {apps}/waiting: pool \"{lan}\" has no free IPv4 address"),
            &at,
        )],
    )
    .await;

    // Nodes and speaker Leases: a and b selected and alive, c alive but not selected, d stale.
    let nodes: Api<Node> = Api::all(c.clone());
    let leases: Api<Lease> = Api::namespaced(c.clone(), speakers);
    for (n, edge, fresh) in [
        ("a", true, true),
        ("b", true, true),
        ("c", false, true),
        ("d", true, false),
    ] {
        let name = format!("{run}-node-{n}");
        let mut labels = BTreeMap::new();
        if edge {
            labels.insert(format!("{run}/edge"), "true".to_string());
        }
        nodes
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
                    .unwrap(),
            )
            .await
            .unwrap();
        guard.nodes.push(name.clone());
        let renewed = if fresh {
            now
        } else {
            Timestamp::from_second(now.as_second() - 3600).unwrap()
        };
        let lease_name = format!("ferrolb-speaker-{name}");
        leases
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": lease_name, "annotations": {"ferrolb.io/heartbeat-addr": "198.51.100.11:7473"}},
                    "spec": {"holderIdentity": name, "leaseDurationSeconds": 90,
                             "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()},
                }))
                .unwrap(),
            )
            .await
            .unwrap();
        guard.leases.push((speakers.into(), lease_name));
    }
    // web's endpoints run on node a and b.
    let slices: Api<EndpointSlice> = Api::namespaced(c.clone(), &apps);
    slices
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "endpoints": [
                    {"addresses": ["198.51.100.50"], "nodeName": format!("{run}-node-a"), "conditions": {"ready": true}},
                    {"addresses": ["198.51.100.51"], "nodeName": format!("{run}-node-b"), "conditions": {"ready": true}},
                ],
                "ports": [{"port": 80}],
            }))
            .unwrap(),
        )
        .await
        .unwrap();

    // explain before any speaker reported: the plugin's own election.
    let target = "svc/web";
    let (code, out, err) = plugin(
        &kc,
        speakers,
        &["explain", target, "-n", &apps, "-o", "json"],
    );
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["ips"][0]["pool"], lan.as_str());
    assert_eq!(report["rule"]["kind"], "automatic");
    let ann = &report["announcement"];
    let winner = ann["winner"].as_str().expect("a winner").to_owned();
    assert!(
        winner.ends_with("node-a") || winner.ends_with("node-b"),
        "{ann}"
    );
    let why: BTreeMap<String, String> = ann["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["node"].as_str().unwrap().to_owned(),
                v["why"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        why[&format!("{run}-node-c")],
        "not selected by nodeSelectors"
    );
    assert_eq!(
        why[&format!("{run}-node-d")],
        "no live speaker",
        "a stale Lease is dead"
    );
    assert_eq!(ann["failoverOrder"].as_array().unwrap().len(), 2, "{ann}");

    // The speakers' and controller's conditions, as they would write them.
    let allocated = |ip: &str| {
        condition(
            "ferrolb.io/IPAllocated",
            true,
            "Allocated",
            &format!("{ip} from pool {lan}"),
            &at,
        )
    };
    set_service_status(
        &svcs,
        "web",
        &["203.0.113.225"],
        vec![
            allocated("203.0.113.225"),
            condition(
                "ferrolb.io/Announced",
                true,
                "Announced",
                &format!("node {winner} announces 203.0.113.225 on eth0"),
                &at,
            ),
        ],
    )
    .await;
    set_service_status(
        &svcs,
        "gold-svc",
        &["203.0.113.233"],
        vec![condition(
            "ferrolb.io/Announced",
            false,
            "NoServingEndpoints",
            "not announced: the Service has no serving endpoint",
            &at,
        )],
    )
    .await;

    let (code, out, err) = plugin(&kc, speakers, &["status"]);
    assert_eq!(code, 0, "{err}");
    let lan_row = out
        .lines()
        .find(|l| l.starts_with(&format!("{lan} ")))
        .expect("lan row");
    assert!(lan_row.contains("203.0.113.224/29"), "{out}");
    assert!(lan_row.contains("1 used, 5 free"), "{out}");
    let web_row = out
        .lines()
        .find(|l| l.starts_with("203.0.113.225 "))
        .expect("web row");
    assert!(
        web_row.contains(&format!("{apps}/web")) && web_row.contains(&winner),
        "{out}"
    );
    assert!(web_row.contains("eth0"), "{out}");
    assert!(out.contains("NoServingEndpoints: not announced"), "{out}");
    assert!(
        out.contains(&format!("{apps}/waiting")) && out.contains("PoolExhausted"),
        "{out}"
    );
    let (code, out, _) = plugin(&kc, speakers, &["status", "-o", "yaml"]);
    assert_eq!(code, 0);
    assert!(out.contains("pending:"), "{out}");

    let (code, out, err) = plugin(&kc, speakers, &["explain", target, "-n", &apps]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("203.0.113.225 from pool {lan}")),
        "{out}"
    );
    assert!(out.contains("elected"), "{out}");
    assert!(out.contains("Speakers report: Announced"), "{out}");
    assert!(!out.contains("differs from this computation"), "{out}");
    let (code, out, _) = plugin(&kc, speakers, &["explain", "gold-svc", "-n", &apps]);
    assert_eq!(code, 0);
    assert!(out.contains("metallb.universe.tf/address-pool"), "{out}");
    let (code, _, err) = plugin(&kc, speakers, &["explain", "svc/nope", "-n", &apps]);
    assert_eq!(code, 2);
    assert!(err.contains("not found"), "{err}");
    drop(guard);
}
