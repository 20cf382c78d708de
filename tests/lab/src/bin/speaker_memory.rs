//! `speaker_memory`: the speakers' memory (VmRSS and VmHWM) as the cluster grows, measured on
//! the lab (needs root and the workspace binaries: `cargo build --release --workspace --bins`,
//! then run this as root: `cargo run --release -p ferrolb-lab --bin speaker_memory`).
//!
//! Three real speakers (node1–3), the controller assigning IPs, and phases:
//!
//! 1. idle: one pool and one L2Advertisement whose node selector picks node1 alone;
//! 2. 1,000 IPs: 1,000 LoadBalancer Services (250 IPv4 + 750 IPv6) with EndpointSlices on the
//!    three nodes; the controller assigns the IPs and node1 announces all 1,000, node2 and
//!    node3 none (they watch the same Services);
//! 3. Nodes: Node objects up to `MEM_NODES` (API objects only, as kubelets register them:
//!    labels, annotations, conditions, capacity, node info, an image list);
//! 4. Services: ClusterIP and NodePort Services up to `MEM_SERVICES` in all, each with an
//!    EndpointSlice of three Pod endpoints on those Nodes, as kube-controller-manager writes;
//! 5. node2's speaker restarted in that cluster (it lists everything at start);
//! 6. node1 stopped: the only node the advertisement selects is gone; node2 and node3 find no
//!    eligible node for 1,000 IPs.
//!
//! After each phase it waits `MEM_SETTLE` seconds (default 15) and prints every speaker's
//! VmRSS and VmHWM from `/proc/<pid>/status`. Runs on the test API server, or on the real
//! one with `FERROLB_LAB_APISERVER` (see `../shared/k8s/README.md`). `FERROLB_BIN_DIR` picks
//! the binaries, e.g. a copy of an older build to measure before and after a change.
//!
//! Environment: `MEM_NODES` (default 1000), `MEM_SERVICES` (default 5000, including the
//! 1,000 LoadBalancers), `MEM_SETTLE` (seconds, default 15), `MEM_HOLD` (seconds to keep
//! the lab up at the end, to inspect the speakers; default 0), `MEM_STOP=kill` (leave the
//! speakers to the lab's SIGKILL at the end; by default they get a SIGTERM first, so a heap
//! profiler around them sees them end normally).
//!
//! Regression guard (no timing involved: it compares sizes): `MEM_BUDGET_MIB` fails the run
//! (exit status 1, after the table) when any speaker's VmRSS exceeds it at any phase, and
//! `MEM_FLAT_MIB` when node1's VmRSS grows by more than that while the Services it does
//! not announce are added (phase 3 to 4). E.g. `MEM_BUDGET_MIB=20 MEM_FLAT_MIB=1.5`
//! (docs/architecture.md#memory has the current figures and the goal, 20). The speakers inherit this
//! program's environment: run it with the `GLIBC_TUNABLES` that deploy/speaker.yaml gives
//! the speaker (`grep -A1 GLIBC_TUNABLES deploy/speaker.yaml`; the budgets are refused
//! without it).
//!
//! Heap profile (heaptrack, Debian package `heaptrack`): point `FERROLB_BIN_DIR` at a
//! directory holding `ferrolb-controller` and `ferrolb-testapi` (symlinks) and a
//! `ferrolb-speaker` script that runs the real binary with heaptrack's preload library
//! writing a raw trace per node (docs/architecture.md#memory shows the script); then
//! `heaptrack_interpret < raw | zstd > trace.zst` and `heaptrack_print trace.zst`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferrolb_crds::L2AdvertisementSpec;
use ferrolb_lab::objects::{self, Family, Svc};
use ferrolb_lab::{Lab, LabConfig, Signal};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// The lab's real nodes (each runs a speaker).
const SPEAKERS: [&str; 3] = ["node1", "node2", "node3"];
/// LoadBalancer Services (one IP each): 250 IPv4 from TEST-NET-3, 750 IPv6.
const LB_V4: usize = 250;
const LB_V6: usize = 750;
/// Namespaces the ClusterIP Services spread over.
const NAMESPACES: usize = 50;
/// Concurrent API writes while filling the cluster.
const PARALLEL: usize = 16;

/// The speaker DaemonSet, whose allocator settings (`GLIBC_TUNABLES`) the measured
/// speakers must run with.
const DAEMONSET: &str = include_str!("../../../../deploy/speaker.yaml");

/// The `GLIBC_TUNABLES` value deploy/speaker.yaml sets (`None`: it sets none).
fn deployed_tunables() -> Option<&'static str> {
    let mut lines = DAEMONSET.lines();
    lines.find(|l| l.trim() == "- name: GLIBC_TUNABLES")?;
    let v = lines.next()?.trim().strip_prefix("value:")?.trim();
    Some(v.trim_matches('"'))
}

/// A budget in MiB from the environment (unset: not checked).
fn env_mib(name: &str) -> Result<Option<f64>> {
    match std::env::var(name) {
        Ok(v) => {
            Ok(Some(v.trim().parse().with_context(|| {
                format!("{name}={v}: not a number of MiB")
            })?))
        }
        Err(_) => Ok(None),
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One measurement of one process.
#[derive(Clone, Copy, Default)]
struct Mem {
    rss_kib: u64,
    hwm_kib: u64,
    /// Of the RSS, the anonymous part (heap, stacks), the rest being the binary's pages.
    anon_kib: u64,
}

fn mem_of(pid: i32) -> Option<Mem> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some(Mem {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
        anon_kib: field("RssAnon:")?,
    })
}

struct Row {
    phase: String,
    /// Per speaker (`None`: stopped): memory and IPs announced.
    cells: Vec<Option<(Mem, u64)>>,
}

fn measure(lab: &Lab, phase: &str, settle: Duration) -> Result<Row> {
    std::thread::sleep(settle);
    let mut cells = Vec::new();
    for n in SPEAKERS {
        let Some(pid) = lab.speaker_pid(n) else {
            cells.push(None);
            continue;
        };
        let mem = mem_of(pid.as_raw()).with_context(|| format!("speaker on {n} is gone"))?;
        let won = lab
            .speaker_metric(n, "ferrolb_speaker_elections{result=\"won\"}")?
            .unwrap_or(0.0) as u64;
        cells.push(Some((mem, won)));
    }
    let row = Row {
        phase: phase.into(),
        cells,
    };
    print_row(&row);
    Ok(row)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn print_header() {
    print!("  {:<34}", "phase");
    for n in SPEAKERS {
        print!(" | {:<30}", format!("{n}: RSS / HWM (anon) MiB, IPs"));
    }
    println!();
}

fn print_row(r: &Row) {
    print!("  {:<34}", r.phase);
    for c in &r.cells {
        let text = match c {
            Some((m, won)) => format!(
                "{} / {} ({}), {won}",
                mib(m.rss_kib),
                mib(m.hwm_kib),
                mib(m.anon_kib)
            ),
            None => "stopped".into(),
        };
        print!(" | {text:<30}");
    }
    println!();
}

fn main() -> Result<()> {
    let budget = env_mib("MEM_BUDGET_MIB")?;
    let flat = env_mib("MEM_FLAT_MIB")?;
    let tunables = std::env::var("GLIBC_TUNABLES").ok();
    let deployed = deployed_tunables();
    if (budget.is_some() || flat.is_some()) && tunables.as_deref() != deployed {
        bail!(
            "the budgets hold for the speaker as deployed: run with GLIBC_TUNABLES={} \
             (deploy/speaker.yaml), not {}",
            deployed.unwrap_or("<unset>"),
            tunables.as_deref().unwrap_or("<unset>")
        );
    }
    let total_nodes = env_num("MEM_NODES", 1000) as usize;
    let total_services = env_num("MEM_SERVICES", 5000) as usize;
    let settle = Duration::from_secs(env_num("MEM_SETTLE", 15));
    let lb = LB_V4 + LB_V6;
    if total_services < lb || total_nodes < SPEAKERS.len() {
        bail!(
            "MEM_SERVICES must be at least {lb} and MEM_NODES at least {}",
            SPEAKERS.len()
        );
    }
    println!(
        "FerroLB speaker memory — {} speakers, {lb} LoadBalancer IPs announced by node1, \
         {total_nodes} Nodes, {total_services} Services ({} build, binaries from {}, {} API server)\n",
        SPEAKERS.len(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        ferrolb_lab::proc::bin_dir().display(),
        if LabConfig::default().real_api() {
            "real"
        } else {
            "test"
        },
    );
    println!(
        "GLIBC_TUNABLES={} (deploy/speaker.yaml: {})\n",
        tunables.as_deref().unwrap_or("<unset>"),
        deployed.unwrap_or("<unset>")
    );

    let mut lab = Lab::start(LabConfig {
        nodes: SPEAKERS.len(),
        ..LabConfig::default()
    })?;
    lab.create_pool("bulk", &["203.0.113.0/24", "2001:db8:200::/118"])?;
    lab.apply_l2adv(
        "bulk",
        L2AdvertisementSpec {
            ip_address_pools: vec!["bulk".into()],
            node_selectors: vec![LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "kubernetes.io/hostname".to_string(),
                    "node1".to_string(),
                )])),
                ..Default::default()
            }],
            ..Default::default()
        },
    )?;
    print_header();
    let mut rows = vec![measure(&lab, "idle", settle)?];

    // 2. 1,000 LoadBalancer Services, endpoints on the three real nodes.
    let t = Instant::now();
    let hosts: Vec<_> = lab
        .nodes()
        .iter()
        .map(|h| (h.name.clone(), h.ipv4, h.ipv6))
        .collect();
    let mut lbs: Vec<Value> = Vec::new();
    let mut lb_slices: Vec<Value> = Vec::new();
    for (i, fam) in (0..LB_V4)
        .map(|i| (i, Family::V4))
        .chain((0..LB_V6).map(|i| (i, Family::V6)))
    {
        let tag = if fam == Family::V4 { "v4" } else { "v6" };
        let svc = Svc::new(&format!("lb-{tag}-{i}"), 80)
            .family(fam)
            .label("app.kubernetes.io/name", &format!("lb-{tag}-{i}"))
            .label("app.kubernetes.io/part-of", "memory");
        lbs.push(serde_json::to_value(objects::service(&svc))?);
        for s in objects::endpoint_slices(&svc, &hosts) {
            lb_slices.push(serde_json::to_value(s)?);
        }
    }
    create_all::<Service>(&lab, lbs, false)?;
    create_all::<EndpointSlice>(&lab, lb_slices, false)?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let won = lab
            .speaker_metric("node1", "ferrolb_speaker_elections{result=\"won\"}")?
            .unwrap_or(0.0);
        if won >= lb as f64 {
            break;
        }
        if Instant::now() > deadline {
            bail!("node1 announces {won} IPs, not {lb}, after 300 s");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "  ({lb} Services created and announced in {:.1} s)",
        t.elapsed().as_secs_f64()
    );
    rows.push(measure(
        &lab,
        &format!("{lb} IPs ({lb} Services, 3 Nodes)"),
        settle,
    )?);

    // 3. Nodes, as kubelets register them (no speakers on them).
    let t = Instant::now();
    let fake: Vec<String> = (SPEAKERS.len() + 1..=total_nodes)
        .map(|i| format!("worker-{i:04}"))
        .collect();
    let nodes: Vec<Value> = fake
        .iter()
        .enumerate()
        .map(|(i, n)| fake_node(n, i))
        .collect();
    create_all::<Node>(&lab, nodes, true)?;
    eprintln!(
        "  ({} Nodes created in {:.1} s)",
        fake.len(),
        t.elapsed().as_secs_f64()
    );
    rows.push(measure(
        &lab,
        &format!("{lb} IPs, {total_nodes} Nodes"),
        settle,
    )?);

    // 4. ClusterIP / NodePort Services with their EndpointSlices.
    let t = Instant::now();
    let namespaces: Vec<Value> = (0..NAMESPACES)
        .map(|i| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("team-{i:02}")}}))
        .collect();
    create_all::<Namespace>(&lab, namespaces, false)?;
    let others = total_services - lb;
    let mut svcs = Vec::with_capacity(others);
    let mut slices = Vec::with_capacity(others);
    for i in 0..others {
        let (s, sl) = cluster_service(i, &fake);
        svcs.push(s);
        slices.push(sl);
    }
    create_all::<Service>(&lab, svcs, false)?;
    create_all::<EndpointSlice>(&lab, slices, false)?;
    eprintln!(
        "  ({others} Services and EndpointSlices created in {:.1} s)",
        t.elapsed().as_secs_f64()
    );
    rows.push(measure(
        &lab,
        &format!("{lb} IPs, {total_nodes} Nodes, {total_services} Svcs"),
        settle,
    )?);
    let services_growth = node1_rss(&rows[3]) - node1_rss(&rows[2]);

    let announced = rows
        .last()
        .and_then(|r| r.cells[0])
        .map_or(0, |(_, won)| won);
    if announced != lb as u64 {
        bail!("node1 ended announcing {announced} IPs, not {lb}");
    }

    // 5. A speaker (re)starting in that cluster: the initial lists.
    lab.stop_speakers(&["node2"], Signal::SIGTERM);
    lab.start_speakers(&["node2"])?;
    rows.push(measure(&lab, "node2 restarted in that cluster", settle)?);

    // 6. The only node the advertisement selects goes away: node2 and node3 now find no
    //    eligible node for any of the IPs, and say why for each.
    lab.stop_speakers(&["node1"], Signal::SIGTERM);
    rows.push(measure(&lab, "node1 stopped: no eligible node", settle)?);

    println!(
        "\n  (MiB = 1024 KiB; VmHWM is the peak RSS since the speaker started; anon = RssAnon,"
    );
    println!("   the heap and stacks, the rest of the RSS being the binary's and libc's pages)");
    println!(
        "  node1 VmRSS change per phase (MiB): {}",
        rows.windows(2)
            .filter(|w| w[1].cells[0].is_some())
            .map(|w| format!("{:+.1}", node1_rss(&w[1]) - node1_rss(&w[0])))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let failed = check_budgets(&rows, budget, flat, services_growth);
    let hold = env_num("MEM_HOLD", 0);
    if hold > 0 {
        eprintln!(
            "  (holding {hold} s: speaker pids {:?})",
            SPEAKERS.map(|n| lab.speaker_pid(n))
        );
        std::thread::sleep(Duration::from_secs(hold));
    }
    if std::env::var("MEM_STOP").as_deref() != Ok("kill") {
        // Let each speaker end normally (a heap profiler around it writes its last data).
        lab.stop_speakers(&SPEAKERS, Signal::SIGTERM);
    }
    if failed > 0 {
        bail!("{failed} memory budget(s) exceeded");
    }
    Ok(())
}

/// node1's VmRSS in MiB in a row (0 when it is stopped).
fn node1_rss(r: &Row) -> f64 {
    r.cells[0].map_or(0.0, |(m, _)| m.rss_kib as f64 / 1024.0)
}

/// Prints a verdict for each budget set (`MEM_BUDGET_MIB`: every speaker's VmRSS at every
/// phase; `MEM_FLAT_MIB`: node1's growth while the Services it does not announce were
/// added); returns how many were exceeded.
fn check_budgets(rows: &[Row], budget: Option<f64>, flat: Option<f64>, growth: f64) -> usize {
    let mut failed = 0;
    if let Some(max) = budget {
        for r in rows {
            for (n, c) in SPEAKERS.iter().zip(&r.cells) {
                let Some((m, _)) = c else { continue };
                let rss = m.rss_kib as f64 / 1024.0;
                if rss > max {
                    println!(
                        "  OVER BUDGET: {n} at \"{}\": VmRSS {rss:.1} MiB > MEM_BUDGET_MIB={max}",
                        r.phase
                    );
                    failed += 1;
                }
            }
        }
        if failed == 0 {
            println!("  budget: every speaker at every phase within MEM_BUDGET_MIB={max}");
        }
    }
    if let Some(max) = flat {
        if growth > max {
            println!(
                "  NOT FLAT: node1 grew {growth:.1} MiB with the Services it does not announce > MEM_FLAT_MIB={max}"
            );
            failed += 1;
        } else {
            println!(
                "  flat: node1 grew {growth:.1} MiB with the Services it does not announce (MEM_FLAT_MIB={max})"
            );
        }
    }
    failed
}

/// Creates every object (JSON of kind `K`) with [`PARALLEL`] requests in flight; with
/// `status`, writes each one's status afterwards (a real API server drops it on create).
fn create_all<K>(lab: &Lab, objs: Vec<Value>, status: bool) -> Result<()>
where
    K: kube::Resource<DynamicType = ()>,
{
    let ar = ApiResource::erase::<K>(&());
    let client = lab.client();
    lab.run_in("api", async move {
        stream::iter(objs)
            .map(|v| {
                let (client, ar) = (client.clone(), ar.clone());
                async move {
                    let st = v.get("status").cloned();
                    let o: DynamicObject = serde_json::from_value(v)?;
                    let name = o.metadata.name.clone().unwrap_or_default();
                    let api: Api<DynamicObject> = match o.metadata.namespace.as_deref() {
                        Some(ns) => Api::namespaced_with(client, ns, &ar),
                        None => Api::all_with(client, &ar),
                    };
                    match api.create(&PostParams::default(), &o).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.code == 409 => {}
                        Err(e) => return Err(anyhow::Error::from(e).context(name)),
                    }
                    if let (true, Some(st)) = (status, st) {
                        api.patch_status(
                            &name,
                            &PatchParams::default(),
                            &Patch::Merge(json!({ "status": st })),
                        )
                        .await
                        .with_context(|| format!("status of {name}"))?;
                    }
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<()>>()
            .await
            .map(drop)
    })
}

/// A Node as a kubelet registers it on a cloud VM: the usual labels and annotations, five
/// conditions, capacity, node info and a list of the images it holds. Addresses are from
/// the IPv6 documentation prefix (API objects only: never configured anywhere).
fn fake_node(name: &str, i: usize) -> Value {
    let zone = format!("zone-{}", i % 3);
    let cond = |t: &str, s: &str, reason: &str, msg: &str| {
        json!({"type": t, "status": s, "reason": reason, "message": msg,
               "lastHeartbeatTime": "2025-01-01T00:00:00Z",
               "lastTransitionTime": "2025-01-01T00:00:00Z"})
    };
    let images: Vec<Value> = (0..30)
        .map(|k| {
            json!({
                "names": [
                    format!("registry.example/team-{}/image-{k}@sha256:{:064x}", k % 7, k * 7919 + 1),
                    format!("registry.example/team-{}/image-{k}:v1.{k}.0", k % 7),
                ],
                "sizeBytes": 10_000_000 + k * 1_234_567,
            })
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "beta.kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/instance-type": "m5.xlarge",
                "beta.kubernetes.io/os": "linux",
                "failure-domain.beta.kubernetes.io/region": "region-1",
                "failure-domain.beta.kubernetes.io/zone": zone,
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "node.kubernetes.io/instance-type": "m5.xlarge",
                "topology.kubernetes.io/region": "region-1",
                "topology.kubernetes.io/zone": zone,
                "node-role.kubernetes.io/worker": "",
            },
            "annotations": {
                "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///run/containerd/containerd.sock",
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                "csi.volume.kubernetes.io/nodeid": format!("{{\"ebs.csi.aws.com\":\"i-{i:017x}\"}}"),
            },
        },
        "spec": {
            "podCIDR": format!("2001:db8:4{:03x}::/64", i),
            "podCIDRs": [format!("2001:db8:4{:03x}::/64", i)],
            "providerID": format!("aws:///{zone}/i-{i:017x}"),
        },
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": format!("2001:db8:300::{:x}", i + 0x100)},
                {"type": "Hostname", "address": name},
            ],
            "capacity": {"cpu": "4", "ephemeral-storage": "101430960Ki", "hugepages-1Gi": "0",
                         "hugepages-2Mi": "0", "memory": "16078716Ki", "pods": "110"},
            "allocatable": {"cpu": "3920m", "ephemeral-storage": "93478772582", "hugepages-1Gi": "0",
                            "hugepages-2Mi": "0", "memory": "15272828Ki", "pods": "110"},
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
                cond("NetworkUnavailable", "False", "RouteCreated", "RouteController created a route"),
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": format!("{:08x}-0000-4000-8000-{:012x}", i, i * 31),
                "containerRuntimeVersion": "containerd://1.7.22",
                "kernelVersion": "6.1.0-26-cloud-amd64",
                "kubeProxyVersion": "v1.33.3",
                "kubeletVersion": "v1.33.3",
                "machineID": format!("{:032x}", i * 7 + 3),
                "operatingSystem": "linux",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "systemUUID": format!("ec2{:05x}-0000-4000-8000-{:012x}", i, i),
            },
            "images": images,
        },
    })
}

/// The `i`-th ClusterIP (every tenth a NodePort) Service of a Helm-installed app, and its
/// EndpointSlice with three ready Pods on three of `nodes`.
fn cluster_service(i: usize, nodes: &[String]) -> (Value, Value) {
    let ns = format!("team-{:02}", i % NAMESPACES);
    let name = format!("app-{i:05}");
    let labels = json!({
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/instance": format!("{name}-release"),
        "app.kubernetes.io/managed-by": "Helm",
        "app.kubernetes.io/part-of": ns,
        "helm.sh/chart": "app-1.2.3",
    });
    let svc = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": labels,
            "annotations": {
                "meta.helm.sh/release-name": format!("{name}-release"),
                "meta.helm.sh/release-namespace": ns,
            },
        },
        "spec": {
            "type": if i.is_multiple_of(10) { "NodePort" } else { "ClusterIP" },
            "selector": {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": format!("{name}-release")},
            "ports": [
                {"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http"},
                {"name": "metrics", "protocol": "TCP", "port": 9090, "targetPort": 9090},
            ],
            "sessionAffinity": "None",
            "ipFamilies": ["IPv6"],
            "ipFamilyPolicy": "SingleStack",
        },
    });
    let endpoints: Vec<Value> = (0..3)
        .map(|k| {
            let node = &nodes[(i * 3 + k * 7) % nodes.len()];
            json!({
                "addresses": [format!("2001:db8:5{:03x}::{:x}", i % 4096, k + 1)],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": node,
                "targetRef": {"kind": "Pod", "namespace": ns, "name": format!("{name}-7d9c8b6f5-{k}x{i:05}"),
                              "uid": format!("{:08x}-1111-4222-8333-{:012x}", i, k)},
                "zone": format!("zone-{}", (i + k) % 3),
            })
        })
        .collect();
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{name}-x{i:04x}"),
            "namespace": ns,
            "generateName": format!("{name}-"),
            "labels": {
                "kubernetes.io/service-name": name,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                "app.kubernetes.io/name": name,
                "app.kubernetes.io/managed-by": "Helm",
            },
        },
        "addressType": "IPv6",
        "endpoints": endpoints,
        "ports": [
            {"name": "http", "protocol": "TCP", "port": 8080},
            {"name": "metrics", "protocol": "TCP", "port": 9090},
        ],
    });
    (svc, slice)
}
