//! What `kubectl apply -k deploy/` installs, checked without a cluster: every document
//! parses into its typed API struct without losing a key, references resolve (service
//! accounts, roles, CRDs, the Secret, the image's binaries), the security posture is the
//! documented one, and the generated CRDs are current. The CRDs are a kustomization of their
//! own (deploy/crds), never part of deploy/, so deleting deploy/ never deletes a pool.

use std::collections::{BTreeMap, BTreeSet};

use ferrolb_crds::{IPAddressPool, L2Advertisement};
use ferrolb_manifests_test::{
    Doc, kustomization_docs, kustomization_files, load_docs, lost_keys, read, typed_roundtrip,
};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Container, Namespace, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

const NAMESPACE: &str = "ferrolb-system";
const IMAGE_REPO: &str = "ghcr.io/ferrolb/ferrolb";
const LIVENESS_SECRET: &str = "ferrolb-liveness";

fn image() -> String {
    format!("{IMAGE_REPO}:{}", env!("CARGO_PKG_VERSION"))
}

fn installed() -> Vec<Doc> {
    kustomization_docs("deploy").unwrap_or_else(|e| panic!("{e}"))
}

fn examples() -> Vec<Doc> {
    let dir = ferrolb_manifests_test::repo_root().join("deploy/examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "deploy/examples has no YAML");
    files
        .iter()
        .flat_map(|p| {
            load_docs(p.strip_prefix(ferrolb_manifests_test::repo_root()).unwrap())
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect()
}

fn one<'a>(docs: &'a [Doc], kind: &str, name: &str) -> &'a Doc {
    let found: Vec<_> = docs
        .iter()
        .filter(|d| d.kind() == kind && d.name() == name)
        .collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind}/{name}");
    found[0]
}

fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(d: &Doc) -> T {
    let (t, back) = typed_roundtrip::<T>(&d.value).unwrap_or_else(|e| panic!("{d}: {e}"));
    let lost = lost_keys(&d.value, &back);
    assert!(
        lost.is_empty(),
        "{d}: fields the API type does not know (typos?): {lost:#?}"
    );
    t
}

/// The kinds of `deploy/crds`: (group, kind, plural, served versions).
fn crd_kinds() -> Vec<(String, String, String, Vec<String>)> {
    let mut out = Vec::new();
    for (file, _) in ferrolb_crds::crds() {
        for d in load_docs(format!("deploy/crds/{file}")).unwrap() {
            let crd: CustomResourceDefinition = typed(&d);
            let versions = crd
                .spec
                .versions
                .iter()
                .filter(|v| v.served)
                .map(|v| v.name.clone())
                .collect();
            out.push((
                crd.spec.group,
                crd.spec.names.kind,
                crd.spec.names.plural,
                versions,
            ));
        }
    }
    out
}

/// Built-in kinds the manifests and examples may use: (apiVersion, kind, namespaced).
const BUILTIN: &[(&str, &str, bool)] = &[
    ("v1", "Namespace", false),
    ("v1", "ServiceAccount", true),
    ("v1", "Service", true),
    ("apps/v1", "Deployment", true),
    ("apps/v1", "DaemonSet", true),
    ("policy/v1", "PodDisruptionBudget", true),
    ("rbac.authorization.k8s.io/v1", "ClusterRole", false),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", false),
    ("rbac.authorization.k8s.io/v1", "Role", true),
    ("rbac.authorization.k8s.io/v1", "RoleBinding", true),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition", false),
    (
        "admissionregistration.k8s.io/v1",
        "ValidatingAdmissionPolicy",
        false,
    ),
    (
        "admissionregistration.k8s.io/v1",
        "ValidatingAdmissionPolicyBinding",
        false,
    ),
];

/// Parses `d` with the type of its kind; panics on an unknown kind or a dropped key.
fn check_typed(d: &Doc) {
    match d.kind() {
        "Namespace" => drop(typed::<Namespace>(d)),
        "ServiceAccount" => drop(typed::<ServiceAccount>(d)),
        "Service" => drop(typed::<Service>(d)),
        "Deployment" => drop(typed::<Deployment>(d)),
        "DaemonSet" => drop(typed::<DaemonSet>(d)),
        "PodDisruptionBudget" => drop(typed::<PodDisruptionBudget>(d)),
        "ClusterRole" => drop(typed::<ClusterRole>(d)),
        "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(d)),
        "Role" => drop(typed::<Role>(d)),
        "RoleBinding" => drop(typed::<RoleBinding>(d)),
        "CustomResourceDefinition" => drop(typed::<CustomResourceDefinition>(d)),
        "ValidatingAdmissionPolicy" => drop(typed::<ValidatingAdmissionPolicy>(d)),
        "ValidatingAdmissionPolicyBinding" => {
            drop(typed::<ValidatingAdmissionPolicyBinding>(d));
        }
        "IPAddressPool" => drop(typed::<IPAddressPool>(d)),
        "L2Advertisement" => drop(typed::<L2Advertisement>(d)),
        other => panic!("{d}: kind {other} has no typed check; add it"),
    }
}

/// Whether (apiVersion, kind) exists: built in, or served by a CRD of deploy/crds.
/// `Some(namespaced)` when it does.
fn kind_scope(api_version: &str, kind: &str) -> Option<bool> {
    if let Some((_, _, ns)) = BUILTIN
        .iter()
        .find(|(v, k, _)| *v == api_version && *k == kind)
    {
        return Some(*ns);
    }
    let (group, version) = api_version.split_once('/')?;
    // Every FerroLB kind is cluster-scoped (docs/design/allocation.md#pools-and-advertisements); the CRD test checks the scope.
    crd_kinds()
        .iter()
        .any(|(g, k, _, vs)| g == group && k == kind && vs.iter().any(|v| v == version))
        .then_some(false)
}

#[test]
fn every_document_is_well_formed_typed_and_unique() {
    let docs = installed();
    assert!(
        docs.len() >= 10,
        "suspiciously few documents: {}",
        docs.len()
    );
    let mut seen = BTreeSet::new();
    for d in &docs {
        assert!(!d.api_version().is_empty(), "{d}: no apiVersion");
        assert!(!d.kind().is_empty(), "{d}: no kind");
        assert!(!d.name().is_empty(), "{d}: no metadata.name");
        let namespaced =
            kind_scope(d.api_version(), d.kind()).unwrap_or_else(|| panic!("{d}: unknown kind"));
        if namespaced {
            assert_eq!(
                d.namespace(),
                Some(NAMESPACE),
                "{d}: namespaced objects go to {NAMESPACE}"
            );
        } else {
            assert_eq!(
                d.namespace(),
                None,
                "{d}: cluster-scoped objects have no namespace"
            );
        }
        check_typed(d);
        let key = (
            d.group().to_owned(),
            d.kind().to_owned(),
            d.namespace().map(str::to_owned),
            d.name().to_owned(),
        );
        assert!(seen.insert(key), "{d}: defined twice");
    }
    let ns = one(&docs, "Namespace", NAMESPACE);
    assert_eq!(
        ns.value["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged",
        "the speaker (hostNetwork, NET_RAW, UID 0) needs the privileged Pod Security level"
    );
}

#[test]
fn the_namespace_comes_first_and_crds_are_installed_apart() {
    let files: Vec<String> = kustomization_files("deploy")
        .unwrap()
        .iter()
        .map(|p| p.to_string_lossy().replace('\\', "/"))
        .collect();
    assert_eq!(
        files.first().map(String::as_str),
        Some("deploy/namespace.yaml"),
        "{files:?}"
    );
    // `kubectl delete -k deploy/` must never delete a CRD: that deletes every pool.
    assert!(
        !files.iter().any(|f| f.starts_with("deploy/crds/")),
        "deploy/kustomization.yaml must not list the CRDs: {files:?}"
    );
    assert!(
        installed()
            .iter()
            .all(|d| d.kind() != "CustomResourceDefinition"),
        "deploy/ installs a CRD"
    );
    // deploy/crds has its own kustomization, listing exactly what crdgen writes.
    let crd_files: BTreeSet<String> = kustomization_files("deploy/crds")
        .unwrap()
        .iter()
        .map(|p| p.to_string_lossy().replace('\\', "/"))
        .collect();
    let generated: BTreeSet<String> = ferrolb_crds::crds()
        .into_iter()
        .map(|(file, _)| format!("deploy/crds/{file}"))
        .collect();
    assert_eq!(crd_files, generated, "deploy/crds/kustomization.yaml");
    for d in kustomization_docs("deploy/crds").unwrap() {
        assert_eq!(d.kind(), "CustomResourceDefinition", "{d}");
    }
    let mut on_disk: Vec<String> =
        std::fs::read_dir(ferrolb_manifests_test::repo_root().join("deploy/crds"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "kustomization.yaml")
            .collect();
    on_disk.sort();
    assert_eq!(
        on_disk.len(),
        ferrolb_crds::crds().len(),
        "deploy/crds holds a file crdgen does not write: {on_disk:?}"
    );
}

/// deploy/prometheus: metrics Services that reach both workloads' `metrics` ports, a
/// ServiceMonitor that selects them, and a PrometheusRule whose alerts all have a severity,
/// a summary and a description.
#[test]
fn prometheus_objects_fit_the_workloads() {
    let docs = kustomization_docs("deploy/prometheus").unwrap_or_else(|e| panic!("{e}"));
    let deployed = installed();
    let services: Vec<&Doc> = docs.iter().filter(|d| d.kind() == "Service").collect();
    assert_eq!(services.len(), 2, "a metrics Service per workload");
    for d in &services {
        assert_eq!(d.namespace(), Some(NAMESPACE), "{d}");
        let svc: Service = typed(d);
        let spec = svc.spec.unwrap();
        let selector = spec.selector.unwrap_or_default();
        let matched: Vec<(PodSpec, &Doc)> = workloads(&deployed)
            .into_iter()
            .filter(|(_, w)| {
                let labels = &w.value["spec"]["template"]["metadata"]["labels"];
                selector.iter().all(|(k, v)| labels[k] == v.as_str())
            })
            .collect();
        assert_eq!(matched.len(), 1, "{d} selects exactly one workload");
        let (pod, _) = &matched[0];
        let port = &spec.ports.unwrap()[0];
        let target = match &port.target_port {
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s)) => s.clone(),
            other => panic!("{d}: targetPort must name the container port, not {other:?}"),
        };
        let container_port = pod.containers[0]
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(target.as_str()))
            .unwrap_or_else(|| panic!("{d}: no container port {target}"));
        assert_eq!(port.port, container_port.container_port, "{d}");
    }
    let monitor = one(&docs, "ServiceMonitor", "ferrolb");
    let want = &monitor.value["spec"]["selector"]["matchLabels"];
    for d in &services {
        let labels = &d.value["metadata"]["labels"];
        for (k, v) in want.as_object().unwrap() {
            assert_eq!(&labels[k], v, "{d} is not selected by the ServiceMonitor");
        }
        let port = &d.value["spec"]["ports"][0]["name"];
        assert_eq!(port, &monitor.value["spec"]["endpoints"][0]["port"], "{d}");
    }
    let rule = one(&docs, "PrometheusRule", "ferrolb");
    let mut alerts = 0;
    for g in rule.value["spec"]["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            alerts += 1;
            let name = r["alert"].as_str().expect("every rule is an alert");
            assert!(r["labels"]["severity"].is_string(), "{name}: no severity");
            for a in ["summary", "description"] {
                assert!(r["annotations"][a].is_string(), "{name}: no {a}");
            }
        }
    }
    assert!(alerts >= 8, "{alerts} alerts");
    // The PrometheusRule is the last document-level key `spec:`, so `make test-alerts` can
    // cut its body out with awk.
    let text = read("deploy/prometheus/prometheusrule.yaml").unwrap();
    let after_spec = text.split_once("\nspec:\n").expect("a top-level spec:").1;
    assert!(
        after_spec
            .lines()
            .all(|l| l.is_empty() || l.starts_with("  ")),
        "nothing may follow spec: at the top level"
    );
}

#[test]
fn generated_crds_are_current() {
    for (file, want) in ferrolb_crds::crds() {
        let rel = format!("deploy/crds/{file}");
        let docs = load_docs(&rel).unwrap();
        assert_eq!(docs.len(), 1, "{rel}: one CRD per file");
        let got: CustomResourceDefinition = typed(&docs[0]);
        assert_eq!(got, want, "{rel} is stale: run `make crds`");
        assert_eq!(
            read(&rel).unwrap(),
            ferrolb_crds::crd_yaml(&want),
            "{rel} is stale: run `make crds`"
        );
        assert_eq!(got.spec.scope, "Cluster", "{rel}");
    }
}

fn pod_spec<'a>(docs: &'a [Doc], kind: &str, name: &str) -> (PodSpec, &'a Doc) {
    let d = one(docs, kind, name);
    let spec = match kind {
        "Deployment" => typed::<Deployment>(d).spec.and_then(|s| s.template.spec),
        "DaemonSet" => typed::<DaemonSet>(d).spec.and_then(|s| s.template.spec),
        _ => unreachable!(),
    };
    (spec.unwrap_or_else(|| panic!("{d}: no pod spec")), d)
}

fn workloads(docs: &[Doc]) -> Vec<(PodSpec, &Doc)> {
    docs.iter()
        .filter(|d| matches!(d.kind(), "Deployment" | "DaemonSet"))
        .map(|d| pod_spec(docs, d.kind(), d.name()))
        .collect()
}

fn env_field(c: &Container, name: &str) -> Option<String> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)?
        .value_from
        .as_ref()?
        .field_ref
        .as_ref()
        .map(|f| f.field_path.clone())
}

/// Resolves a probe's port (number or named container port) to a number.
fn probe_port(c: &Container, probe: Option<&k8s_openapi::api::core::v1::Probe>) -> (String, i32) {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let get = probe
        .and_then(|p| p.http_get.as_ref())
        .unwrap_or_else(|| panic!("{}: probe is not httpGet", c.name));
    let port = match &get.port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
            .unwrap_or_else(|| panic!("{}: no port named {name}", c.name)),
    };
    (get.path.clone().unwrap_or_default(), port)
}

#[test]
fn workloads_use_the_one_image_and_defined_service_accounts() {
    let docs = installed();
    let accounts: BTreeSet<&str> = docs
        .iter()
        .filter(|d| d.kind() == "ServiceAccount")
        .map(Doc::name)
        .collect();
    let ws = workloads(&docs);
    assert_eq!(
        ws.len(),
        2,
        "a controller Deployment and a speaker DaemonSet"
    );
    for (spec, d) in &ws {
        let sa = spec
            .service_account_name
            .as_deref()
            .unwrap_or_else(|| panic!("{d}: no serviceAccountName"));
        assert!(
            accounts.contains(sa),
            "{d}: ServiceAccount {sa} is not defined"
        );
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            assert_eq!(
                c.image.as_deref(),
                Some(image().as_str()),
                "{d}: container {}",
                c.name
            );
            assert_eq!(
                c.image_pull_policy.as_deref(),
                Some("IfNotPresent"),
                "{d}: kind-loaded images must not be pulled"
            );
        }
    }
}

#[test]
fn the_dockerfile_builds_the_binaries_the_manifests_run() {
    let docs = installed();
    let dockerfile = read("Dockerfile").unwrap();
    let lines: Vec<&str> = dockerfile.lines().map(str::trim).collect();
    for (kind, name, binary) in [
        ("Deployment", "ferrolb-controller", "ferrolb-controller"),
        ("DaemonSet", "ferrolb-speaker", "ferrolb-speaker"),
    ] {
        let (spec, d) = pod_spec(&docs, kind, name);
        let path = format!("/{binary}");
        assert_eq!(spec.containers.len(), 1, "{d}");
        assert_eq!(
            spec.containers[0].command.as_deref(),
            Some(&[path.clone()][..]),
            "{d}: command"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("COPY --from=") && l.ends_with(&format!(" {path}"))),
            "Dockerfile: no COPY of {path} into the final image"
        );
        assert!(
            dockerfile.contains(&format!("-p {binary}")),
            "Dockerfile does not build package {binary}"
        );
    }
    assert!(
        dockerfile.contains("--locked"),
        "Dockerfile: build with --locked"
    );
    let last_from = lines.iter().rev().find(|l| l.starts_with("FROM ")).unwrap();
    assert!(last_from.contains("distroless"), "final stage: {last_from}");
    let ignore = read(".dockerignore").unwrap();
    assert!(
        ignore.lines().any(|l| l.trim() == "target/"),
        ".dockerignore must exclude target/"
    );
}

fn rules(d: &Doc) -> Vec<PolicyRule> {
    match d.kind() {
        "ClusterRole" => typed::<ClusterRole>(d).rules.unwrap_or_default(),
        "Role" => typed::<Role>(d).rules.unwrap_or_default(),
        _ => unreachable!(),
    }
}

/// (group, resource, resourceNames) → verbs.
type Grants = BTreeMap<(String, String, Option<Vec<String>>), BTreeSet<String>>;

/// (group, resource) → verbs granted to a ServiceAccount, over every binding. Also checks
/// that bindings point at defined roles and accounts.
fn grants(docs: &[Doc], account: &str) -> Grants {
    let mut out: BTreeMap<_, BTreeSet<String>> = BTreeMap::new();
    for b in docs
        .iter()
        .filter(|d| matches!(d.kind(), "ClusterRoleBinding" | "RoleBinding"))
    {
        let (role_ref, subjects) = match b.kind() {
            "ClusterRoleBinding" => {
                let t = typed::<ClusterRoleBinding>(b);
                (t.role_ref, t.subjects.unwrap_or_default())
            }
            _ => {
                let t = typed::<RoleBinding>(b);
                (t.role_ref, t.subjects.unwrap_or_default())
            }
        };
        let role = one(docs, &role_ref.kind, &role_ref.name);
        assert_eq!(role_ref.api_group, "rbac.authorization.k8s.io", "{b}");
        for s in &subjects {
            assert_eq!(s.kind, "ServiceAccount", "{b}");
            assert_eq!(s.namespace.as_deref(), Some(NAMESPACE), "{b}");
            one(docs, "ServiceAccount", &s.name);
        }
        if !subjects.iter().any(|s| s.name == account) {
            continue;
        }
        for r in rules(role) {
            for g in r.api_groups.iter().flatten() {
                for res in r.resources.iter().flatten() {
                    out.entry((g.clone(), res.clone(), r.resource_names.clone()))
                        .or_default()
                        .extend(r.verbs.iter().cloned());
                }
            }
        }
    }
    out
}

#[test]
fn rbac_is_least_privilege_and_names_real_resources() {
    let docs = installed();
    let crds = crd_kinds();
    const VERBS: &[&str] = &[
        "get",
        "list",
        "watch",
        "create",
        "update",
        "patch",
        "delete",
        "deletecollection",
    ];
    for d in docs
        .iter()
        .filter(|d| matches!(d.kind(), "ClusterRole" | "Role"))
    {
        for r in rules(d) {
            assert!(r.non_resource_urls.is_none(), "{d}: no non-resource URLs");
            for v in &r.verbs {
                assert!(
                    VERBS.contains(&v.as_str()),
                    "{d}: verb {v:?} (wildcards are not least privilege)"
                );
            }
            for g in r.api_groups.iter().flatten() {
                for res in r.resources.iter().flatten() {
                    assert!(
                        !g.contains('*') && !res.contains('*'),
                        "{d}: wildcard in {g}/{res}"
                    );
                    if g == "ferrolb.io" {
                        let base = res.split('/').next().unwrap();
                        assert!(
                            crds.iter()
                                .any(|(cg, _, plural, _)| cg == g && plural == base),
                            "{d}: no CRD serves {g}/{res}"
                        );
                    }
                }
            }
            if r.resource_names.is_some() {
                assert!(
                    !r.verbs
                        .iter()
                        .any(|v| v == "create" || v == "list" || v == "watch"),
                    "{d}: resourceNames cannot restrict create/list/watch"
                );
            }
        }
    }

    let has = |g: &Grants, group: &str, res: &str, verb: &str| {
        g.iter()
            .any(|((gg, rr, _), vs)| gg == group && rr == res && vs.contains(verb))
    };
    let c = grants(&docs, "ferrolb-controller");
    for (group, res, verb) in [
        ("", "services", "watch"),
        ("", "services/status", "patch"),
        ("", "namespaces", "watch"),
        ("ferrolb.io", "ipaddresspools", "watch"),
        ("ferrolb.io", "l2advertisements", "watch"),
        ("ferrolb.io", "ipaddresspools/status", "patch"),
        ("ferrolb.io", "l2advertisements/status", "patch"),
        ("coordination.k8s.io", "leases", "create"),
        ("coordination.k8s.io", "leases", "update"),
        ("coordination.k8s.io", "leases", "watch"),
        ("ferrolb.io", "nodeannouncements", "watch"),
        ("", "secrets", "create"),
        ("events.k8s.io", "events", "create"),
    ] {
        assert!(
            has(&c, group, res, verb),
            "controller lacks {verb} on {group}/{res}"
        );
    }
    for ((g, r, names), verbs) in &c {
        if g.is_empty() && r == "secrets" {
            let read = verbs.iter().any(|v| v != "create");
            assert!(
                !read || names.as_deref() == Some(&[LIVENESS_SECRET.to_owned()][..]),
                "controller may read only Secret {LIVENESS_SECRET}: {names:?} {verbs:?}"
            );
        }
        if g.is_empty() && r == "services" {
            assert!(
                verbs
                    .iter()
                    .all(|v| ["get", "list", "watch"].contains(&v.as_str())),
                "the controller never edits Service specs: {verbs:?}"
            );
        }
    }

    let s = grants(&docs, "ferrolb-speaker");
    for (group, res, verb) in [
        ("", "nodes", "watch"),
        ("", "services", "watch"),
        ("discovery.k8s.io", "endpointslices", "watch"),
        ("ferrolb.io", "ipaddresspools", "watch"),
        ("ferrolb.io", "l2advertisements", "watch"),
        ("coordination.k8s.io", "leases", "watch"),
        ("coordination.k8s.io", "leases", "create"),
        ("coordination.k8s.io", "leases", "update"),
        ("ferrolb.io", "nodeannouncements", "create"),
        ("ferrolb.io", "nodeannouncements", "patch"),
    ] {
        assert!(
            has(&s, group, res, verb),
            "speaker lacks {verb} on {group}/{res}"
        );
    }
    for ((g, r, _), verbs) in &s {
        assert!(
            r != "secrets",
            "the speaker reads its key from a volume; no RBAC on Secrets"
        );
        let write = verbs
            .iter()
            .any(|v| !["get", "list", "watch"].contains(&v.as_str()));
        // No Service (spec or status) and no Event: a compromised node cannot rewrite
        // another Service's status or conditions (docs/security.md).
        let may_write = [
            ("coordination.k8s.io", "leases"),
            ("ferrolb.io", "nodeannouncements"),
        ];
        assert!(
            !write || may_write.contains(&(g.as_str(), r.as_str())),
            "speaker writes {g}/{r}: {verbs:?}"
        );
    }
}

/// Every per-node object the speaker may write (its Lease, its NodeAnnouncement) is guarded
/// by an admission policy (deploy/speaker-policy.yaml) that is bound with Deny, fails
/// closed, evaluates the speaker's ServiceAccount only and compares the object's name with
/// the node name bound into its token. tests/k8s/speaker-identity proves it on a real server.
#[test]
fn the_speakers_per_node_objects_are_guarded_by_an_admission_policy() {
    const NODE_NAME: &str = "request.userInfo.extra['authentication.kubernetes.io/node-name']";
    let docs = installed();
    let speaker = format!("system:serviceaccount:{NAMESPACE}:ferrolb-speaker");
    let bindings: Vec<ValidatingAdmissionPolicyBinding> = docs
        .iter()
        .filter(|d| d.kind() == "ValidatingAdmissionPolicyBinding")
        .map(typed)
        .collect();
    let s = grants(&docs, "ferrolb-speaker");
    for (group, resource) in [
        ("coordination.k8s.io", "leases"),
        ("ferrolb.io", "nodeannouncements"),
    ] {
        let writes = s.iter().any(|((g, r, _), verbs)| {
            g == group
                && r == resource
                && verbs
                    .iter()
                    .any(|v| !["get", "list", "watch"].contains(&v.as_str()))
        });
        assert!(writes, "the speaker no longer writes {group}/{resource}?");
        let guards: Vec<(&Doc, ValidatingAdmissionPolicy)> = docs
            .iter()
            .filter(|d| d.kind() == "ValidatingAdmissionPolicy")
            .map(|d| (d, typed::<ValidatingAdmissionPolicy>(d)))
            .filter(|(_, p)| {
                let rules = p.spec.as_ref().and_then(|s| s.match_constraints.as_ref());
                rules
                    .and_then(|m| m.resource_rules.as_ref())
                    .into_iter()
                    .flatten()
                    .any(|r| {
                        r.api_groups.iter().flatten().any(|g| g == group)
                            && r.resources.iter().flatten().any(|x| x == resource)
                            && ["CREATE", "UPDATE"]
                                .iter()
                                .all(|op| r.operations.iter().flatten().any(|o| o == op))
                    })
            })
            .collect();
        assert_eq!(guards.len(), 1, "one policy guards {group}/{resource}");
        let (d, policy) = &guards[0];
        let spec = policy.spec.as_ref().unwrap();
        assert_eq!(
            spec.failure_policy.as_deref(),
            Some("Fail"),
            "{d}: fail closed"
        );
        let conditions = spec.match_conditions.as_deref().unwrap_or_default();
        assert!(
            conditions
                .iter()
                .any(|c| c.expression == format!("request.userInfo.username == '{speaker}'")),
            "{d}: must evaluate exactly the speaker's ServiceAccount ({speaker})"
        );
        let cel = serde_json::to_string(&d.value["spec"]).unwrap();
        assert!(
            cel.contains(NODE_NAME),
            "{d}: must compare with the node name bound into the token"
        );
        let name = d.name();
        assert!(
            bindings.iter().any(|b| {
                let bs = b.spec.as_ref().unwrap();
                bs.policy_name.as_deref() == Some(name)
                    && bs.validation_actions.as_deref() == Some(&["Deny".to_owned()][..])
                    && bs.match_resources.is_none()
                    && bs.param_ref.is_none()
            }),
            "{d}: needs a binding with validationActions [Deny] and no narrowing"
        );
    }
}

#[test]
fn the_controller_runs_non_root_read_only_with_leader_election() {
    let docs = installed();
    let (spec, d) = pod_spec(&docs, "Deployment", "ferrolb-controller");
    let dep: Deployment = typed(d);
    assert_eq!(
        dep.spec.as_ref().unwrap().replicas,
        Some(2),
        "{d}: two replicas, one leader"
    );
    let pod_sc = spec.security_context.clone().unwrap_or_default();
    assert_eq!(
        pod_sc.seccomp_profile.map(|p| p.type_).as_deref(),
        Some("RuntimeDefault"),
        "{d}"
    );
    let c = &spec.containers[0];
    let sc = c
        .security_context
        .clone()
        .unwrap_or_else(|| panic!("{d}: no securityContext"));
    assert_eq!(
        sc.run_as_non_root.or(pod_sc.run_as_non_root),
        Some(true),
        "{d}"
    );
    assert_ne!(sc.run_as_user.or(pod_sc.run_as_user), Some(0), "{d}");
    assert_eq!(sc.read_only_root_filesystem, Some(true), "{d}");
    assert_eq!(sc.allow_privilege_escalation, Some(false), "{d}");
    let caps = sc.capabilities.unwrap_or_default();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]), "{d}");
    assert!(
        caps.add.unwrap_or_default().is_empty(),
        "{d}: the controller needs no capability"
    );
    assert_eq!(
        env_field(c, "POD_NAME").as_deref(),
        Some("metadata.name"),
        "{d}: lease identity"
    );
    assert_eq!(
        env_field(c, "POD_NAMESPACE").as_deref(),
        Some("metadata.namespace"),
        "{d}: lease namespace"
    );
    assert_eq!(
        probe_port(c, c.liveness_probe.as_ref()),
        ("/healthz".into(), 7472)
    );
    assert_eq!(
        probe_port(c, c.readiness_probe.as_ref()),
        ("/readyz".into(), 7472)
    );
    let res = c.resources.clone().unwrap_or_default();
    assert!(
        res.requests
            .is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory")),
        "{d}: requests"
    );
    assert!(
        res.limits.is_some_and(|l| l.contains_key("memory")),
        "{d}: a memory limit"
    );
    assert!(!spec.host_network.unwrap_or(false), "{d}");
}

#[test]
fn the_speaker_has_host_network_and_only_net_raw() {
    let docs = installed();
    let (spec, d) = pod_spec(&docs, "DaemonSet", "ferrolb-speaker");
    assert_eq!(spec.host_network, Some(true), "{d}");
    assert_eq!(
        spec.dns_policy.as_deref(),
        Some("ClusterFirstWithHostNet"),
        "{d}"
    );
    assert_eq!(spec.termination_grace_period_seconds, Some(5), "{d}");
    let tolerated: BTreeSet<&str> = spec
        .tolerations
        .iter()
        .flatten()
        .filter_map(|t| t.key.as_deref())
        .collect();
    for key in [
        "node-role.kubernetes.io/control-plane",
        "node-role.kubernetes.io/master",
    ] {
        assert!(tolerated.contains(key), "{d}: tolerate {key}");
    }
    let c = &spec.containers[0];
    let sc = c
        .security_context
        .clone()
        .unwrap_or_else(|| panic!("{d}: no securityContext"));
    let caps = sc.capabilities.unwrap_or_default();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]), "{d}");
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_RAW".to_owned()][..]),
        "{d}: NET_RAW only"
    );
    assert_eq!(sc.privileged, None, "{d}");
    assert_eq!(sc.read_only_root_filesystem, Some(true), "{d}");
    assert_eq!(sc.allow_privilege_escalation, Some(false), "{d}");
    assert_eq!(
        sc.run_as_user,
        Some(0),
        "{d}: NET_RAW needs UID 0 without ambient capabilities"
    );
    assert_eq!(
        env_field(c, "NODE_NAME").as_deref(),
        Some("spec.nodeName"),
        "{d}"
    );
    assert_eq!(
        env_field(c, "POD_IP").as_deref(),
        Some("status.podIP"),
        "{d}: --advertise-addr"
    );
    assert_eq!(
        env_field(c, "POD_NAMESPACE").as_deref(),
        Some("metadata.namespace"),
        "{d}"
    );
    let ports: BTreeSet<(i32, String)> = c
        .ports
        .iter()
        .flatten()
        .map(|p| {
            (
                p.container_port,
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            )
        })
        .collect();
    assert!(
        ports.contains(&(7474, "TCP".into())) && ports.contains(&(7473, "UDP".into())),
        "{d}: {ports:?}"
    );
    assert_eq!(
        probe_port(c, c.liveness_probe.as_ref()),
        ("/healthz".into(), 7474)
    );
    assert_eq!(
        probe_port(c, c.readiness_probe.as_ref()),
        ("/readyz".into(), 7474)
    );

    // The heartbeat key: Secret volume mounted where --liveness-key-file looks by default.
    let vol = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some(LIVENESS_SECRET))
        .unwrap_or_else(|| panic!("{d}: no {LIVENESS_SECRET} volume"));
    let items = vol
        .secret
        .as_ref()
        .unwrap()
        .items
        .clone()
        .unwrap_or_default();
    assert!(
        items.is_empty() || items.iter().any(|i| i.key == "key" && i.path == "key"),
        "{d}: the Secret's data key `key` must appear as file `key`"
    );
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == vol.name)
        .unwrap_or_else(|| panic!("{d}: volume not mounted"));
    assert_eq!(mount.mount_path, "/etc/ferrolb/liveness", "{d}");
    assert_eq!(mount.read_only, Some(true), "{d}");
}

/// The manifests lean on these flag defaults and environment variables; a change in the
/// binaries must come with a change in deploy/ (and in docs/configuration.md).
#[test]
fn binaries_still_have_the_defaults_the_manifests_rely_on() {
    let controller = read("controller/src/main.rs").unwrap();
    for needle in [
        r#"env = "POD_NAMESPACE""#,
        r#"env = "POD_NAME""#,
        r#"default_value = "0.0.0.0:7472""#,
        r#"default_value = "ferrolb-liveness""#,
        r#"default_value = "ferrolb-controller""#,
    ] {
        assert!(
            controller.contains(needle),
            "controller/src/main.rs no longer has {needle}"
        );
    }
    let speaker = read("speaker/src/main.rs").unwrap();
    for needle in [
        r#"env = "NODE_NAME""#,
        r#"env = "POD_IP""#,
        r#"env = "POD_NAMESPACE""#,
        // Probes and the metrics Service reach :7474 on the pod IP (= POD_IP, hostNetwork).
        "SocketAddr::new(args.advertise_addr, 7474)",
        r#"default_value = "/etc/ferrolb/liveness/key""#,
        "default_value_t = 7473",
    ] {
        assert!(
            speaker.contains(needle),
            "speaker/src/main.rs no longer has {needle}"
        );
    }
    let secret = read("controller/src/secret.rs").unwrap();
    assert!(
        secret.contains(r#"pub const KEY: &str = "key";"#),
        "the Secret's data key changed"
    );
}

#[test]
fn examples_use_existing_kinds_and_fit_together() {
    let docs = examples();
    for d in &docs {
        assert!(!d.name().is_empty(), "{d}: no metadata.name");
        let namespaced = kind_scope(d.api_version(), d.kind())
            .unwrap_or_else(|| panic!("{d}: kind is neither built in nor in deploy/crds"));
        assert_eq!(
            d.namespace().is_some(),
            namespaced,
            "{d}: namespace set iff the kind is namespaced"
        );
        check_typed(d);
    }
    let pools: BTreeSet<&str> = docs
        .iter()
        .filter(|d| d.kind() == "IPAddressPool")
        .map(Doc::name)
        .collect();
    assert!(!pools.is_empty(), "an example IPAddressPool");
    for d in docs.iter().filter(|d| d.kind() == "IPAddressPool") {
        let p: IPAddressPool = typed(d);
        ferrolb_crds::addresses::PoolAddresses::parse(&p.spec.addresses)
            .unwrap_or_else(|e| panic!("{d}: {e}"));
    }
    let advs: Vec<L2Advertisement> = docs
        .iter()
        .filter(|d| d.kind() == "L2Advertisement")
        .map(typed)
        .collect();
    assert!(!advs.is_empty(), "an example L2Advertisement");
    for a in &advs {
        for p in &a.spec.ip_address_pools {
            assert!(
                pools.contains(p.as_str()),
                "L2Advertisement names unknown pool {p}"
            );
        }
    }
    let services: Vec<Service> = docs
        .iter()
        .filter(|d| d.kind() == "Service")
        .map(typed)
        .collect();
    assert!(!services.is_empty(), "an example Service");
    for s in &services {
        let spec = s.spec.clone().unwrap_or_default();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        let selector = spec.selector.unwrap_or_default();
        let selected = docs.iter().filter(|d| d.kind() == "Deployment").any(|d| {
            let labels = typed::<Deployment>(d)
                .spec
                .and_then(|s| s.template.metadata)
                .and_then(|m| m.labels)
                .unwrap_or_default();
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        });
        assert!(
            !selector.is_empty() && selected,
            "Service {:?} selects no example Deployment",
            s.metadata.name
        );
    }
}

#[test]
fn install_manifests_never_contain_example_objects() {
    for d in installed() {
        assert!(
            !matches!(d.kind(), "IPAddressPool" | "L2Advertisement" | "Service"),
            "{d}: examples belong in deploy/examples"
        );
        let v: &Value = &d.value;
        assert!(v.get("status").is_none(), "{d}: manifests carry no status");
    }
}

/// The objects docs/containerlab/check.sh applies must be valid too.
#[test]
fn containerlab_objects_are_valid() {
    let docs = load_docs("docs/containerlab/lab-objects.yaml").unwrap_or_else(|e| panic!("{e}"));
    for d in &docs {
        assert_eq!(
            kind_scope(d.api_version(), d.kind()),
            Some(false),
            "{d}: a FerroLB kind"
        );
        check_typed(d);
    }
    let pool: IPAddressPool = typed(one(&docs, "IPAddressPool", "lab"));
    ferrolb_crds::addresses::PoolAddresses::parse(&pool.spec.addresses)
        .unwrap_or_else(|e| panic!("{e}"));
    let adv: L2Advertisement = typed(one(&docs, "L2Advertisement", "lab"));
    assert_eq!(adv.spec.ip_address_pools, ["lab"]);
    assert_eq!(
        adv.spec.interfaces,
        ["eth1"],
        "check.sh and ferrolb.clab.yml wire the LAN to eth1"
    );
}

/// Every ```yaml block in docs/ that holds Kubernetes objects parses into its typed API,
/// so the reference docs cannot drift from the CRDs unnoticed.
#[test]
fn yaml_blocks_in_docs_are_valid_objects() {
    let root = ferrolb_manifests_test::repo_root();
    let mut dirs = vec![root.join("docs")];
    let mut checked = 0;
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|x| x != "md") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let mut lines = text.lines();
            while lines.by_ref().any(|l| l.trim() == "```yaml") {
                let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
                let values: Vec<Value> = serde_saphyr::from_multiple(&block.join("\n"))
                    .unwrap_or_else(|e| panic!("{}: YAML block: {e}", path.display()));
                for (index, value) in values.into_iter().enumerate() {
                    let d = Doc {
                        file: path.strip_prefix(&root).unwrap().to_path_buf(),
                        index,
                        value,
                    };
                    if d.kind().is_empty() {
                        continue;
                    }
                    kind_scope(d.api_version(), d.kind())
                        .unwrap_or_else(|| panic!("{d}: unknown kind"));
                    check_typed(&d);
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 0, "no YAML object found in docs/");
}
