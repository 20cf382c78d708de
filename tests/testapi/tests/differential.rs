//! Differential test: the REST conversation FerroLB holds with kube-apiserver, plus the
//! requests where ferrolb-testapi once answered differently, replayed step by step against
//! the test API server and — with `FERROLB_REAL_KUBECONFIG` — against a real kube-apiserver.
//!
//! ```text
//!   conversation(names) ── run(client) ──► [Outcome] ─┬─ vs the table ──► conversation_on_test_api_server
//!     one Step per request:                           └─ real vs fake ──► differential_against_real_server
//!     method, path, content type, body,
//!     what kube-apiserver v1.33.3 answered
//! ```
//!
//! Each step records what the real server answered (HTTP code, `reason` and
//! `details.causes` of a Status, and selected fields of an object reply — never
//! resourceVersions, uids or timestamps, except "did the resourceVersion move").
//! `conversation_on_test_api_server` holds the test API server to that table;
//! `differential_against_real_server` runs the conversation on both servers and reports
//! every step where they differ (and where the real one left the table). It fails without
//! `FERROLB_REAL_KUBECONFIG`:
//!
//! ```sh
//! KUBECONFIG=$(../shared/k8s/start) FERROLB_REAL_KUBECONFIG=$KUBECONFIG \
//!   cargo nextest run -p ferrolb-testapi -E 'test(differential_against_real_server)'
//! ```
//!
//! On the real server the run creates a namespace and cluster-scoped pools named with a
//! unique prefix, installs the CRDs of `deploy/crds` if missing, and deletes what it
//! created (a namespace stays `Terminating` when no controller manager runs).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferrolb_testapi::TestApi;
use hyper::{Method, Request, header};
use kube::Client;
use kube::client::Body;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};

const MERGE: &str = "application/merge-patch+json";
const APPLY: &str = "application/apply-patch+yaml";
const JSON: &str = "application/json";
const POOLS: &str = "/apis/ferrolb.io/v1alpha1/ipaddresspools";
const ADVS: &str = "/apis/ferrolb.io/v1alpha1/l2advertisements";
const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
/// Replaced in a step's body by the resourceVersion of the last object reply.
const RV: &str = "$RV";
/// A resourceVersion no server has reached.
const FUTURE_RV: &str = "9000000000000000000";

// ───────────────────────────── the conversation ─────────────────────────────

/// What a step checks in an object reply, besides code and Status fields.
#[derive(Debug, Clone)]
enum Check {
    /// The value at a JSON pointer (`null` when absent).
    At(&'static str, Value),
    /// The sorted names of a list's items.
    Names(Vec<String>),
    /// Whether the reply's resourceVersion equals the previous object reply's.
    SameRv(bool),
}

/// One request and what kube-apiserver v1.33.3 answered to it.
#[derive(Debug, Clone)]
struct Step {
    what: &'static str,
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Option<String>,
    code: u16,
    reason: Option<&'static str>,
    /// `(field, reason)` of `details.causes`, in any order.
    causes: Vec<(&'static str, &'static str)>,
    checks: Vec<Check>,
}

impl Step {
    fn new(what: &'static str, method: Method, path: impl Into<String>) -> Self {
        Self {
            what,
            method,
            path: path.into(),
            content_type: None,
            body: None,
            code: 200,
            reason: None,
            causes: Vec::new(),
            checks: Vec::new(),
        }
    }

    fn get(what: &'static str, path: impl Into<String>) -> Self {
        Self::new(what, Method::GET, path)
    }

    fn post(what: &'static str, path: impl Into<String>, body: Value) -> Self {
        Self::new(what, Method::POST, path)
            .body(JSON, &body)
            .code(201)
    }

    fn merge(what: &'static str, path: impl Into<String>, body: Value) -> Self {
        Self::new(what, Method::PATCH, path).body(MERGE, &body)
    }

    fn delete(what: &'static str, path: impl Into<String>) -> Self {
        Self::new(what, Method::DELETE, path)
    }

    fn body(mut self, content_type: &'static str, body: &Value) -> Self {
        self.content_type = Some(content_type);
        self.body = Some(body.to_string());
        self
    }

    fn code(mut self, code: u16) -> Self {
        self.code = code;
        self
    }

    /// A failure: code and Status reason.
    fn fails(mut self, code: u16, reason: &'static str) -> Self {
        self.code = code;
        self.reason = Some(reason);
        self
    }

    /// The `(field, reason)` causes of the failure.
    fn causes(mut self, causes: &[(&'static str, &'static str)]) -> Self {
        self.causes = causes.to_vec();
        self
    }

    /// A 422 Invalid with these `(field, reason)` causes.
    fn invalid(self, causes: &[(&'static str, &'static str)]) -> Self {
        self.fails(422, "Invalid").causes(causes)
    }

    fn at(mut self, pointer: &'static str, want: Value) -> Self {
        self.checks.push(Check::At(pointer, want));
        self
    }

    fn names(mut self, names: &[&str]) -> Self {
        self.checks
            .push(Check::Names(names.iter().map(|n| n.to_string()).collect()));
        self
    }

    fn same_rv(mut self, same: bool) -> Self {
        self.checks.push(Check::SameRv(same));
        self
    }
}

/// The names one run uses, all under a unique prefix.
#[derive(Debug, Clone)]
struct Names {
    ns: String,
    pool: String,
    adv: String,
}

impl Names {
    fn new(prefix: &str) -> Self {
        Self {
            ns: prefix.to_string(),
            pool: format!("{prefix}-pool"),
            adv: format!("{prefix}-adv"),
        }
    }

    fn svcs(&self) -> String {
        format!("/api/v1/namespaces/{}/services", self.ns)
    }

    fn svc(&self, name: &str) -> String {
        format!("{}/{name}", self.svcs())
    }
}

fn unique_prefix() -> String {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!(
        "ferrolb-diff-{}-{}-{}",
        std::process::id(),
        t % 1_000_000,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// The condition FerroLB's controller writes on a Service it gave an IP.
fn allocated() -> Value {
    json!({"type": "ferrolb.io/IPAllocated", "status": "True", "reason": "Allocated",
           "message": "assigned 203.0.113.10 from pool lan",
           "lastTransitionTime": "2025-01-01T00:00:00Z"})
}

/// The condition FerroLB's speaker writes next to it.
fn announced() -> Value {
    json!({"type": "ferrolb.io/Announced", "status": "True", "reason": "Announcing",
           "message": "node n1 announces 203.0.113.10",
           "lastTransitionTime": "2025-01-01T00:00:00Z"})
}

fn ingress(entries: Value) -> Value {
    json!({"status": {"loadBalancer": {"ingress": entries}}})
}

/// The conversation: FerroLB's ordinary calls, then each measured difference. Expected
/// values are those kube-apiserver v1.33.3 gave (see the module doc).
fn conversation(n: &Names) -> Vec<Step> {
    let lb_status = format!("{}/status", n.svc("lb"));
    let ip0 = "status.loadBalancer.ingress[0].ip";
    let mode0 = "status.loadBalancer.ingress[0].ipMode";
    let host0 = "status.loadBalancer.ingress[0].hostname";
    let ing = "/status/loadBalancer/ingress";
    let ferrolb_ingress = json!([{"ip": "203.0.113.10", "ipMode": "VIP"}]);
    let lb_service = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
               "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}})
    };
    let pool = |spec: Value| {
        json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "IPAddressPool",
               "metadata": {"name": n.pool}, "spec": spec})
    };
    let pool_path = format!("{POOLS}/{}", n.pool);
    let pool_status = format!("{pool_path}/status");
    let blocked = ("<nil>", "FieldValueInvalid");
    vec![
        // ── FerroLB's ordinary calls ──
        Step::post(
            "create namespace",
            "/api/v1/namespaces",
            json!({"metadata": {"name": n.ns}}),
        )
        .at("/status/phase", json!("Active")),
        Step::post("create LoadBalancer Service", n.svcs(), lb_service("lb"))
            .at("/spec/type", json!("LoadBalancer"))
            .at("/metadata/generation", Value::Null)
            .at(ing, Value::Null),
        Step::post(
            "create ClusterIP Service",
            n.svcs(),
            json!({"metadata": {"name": "cip"}, "spec": {"ports": [{"port": 80}]}}),
        ),
        Step::post(
            "loadBalancerClass on a ClusterIP Service",
            n.svcs(),
            json!({"metadata": {"name": "cip-class"},
                   "spec": {"ports": [{"port": 80}], "loadBalancerClass": "ferrolb.io/ferrolb"}}),
        )
        .invalid(&[("spec.loadBalancerClass", "FieldValueForbidden")]),
        Step::post(
            "Event with a note over 1 KB",
            format!("/apis/events.k8s.io/v1/namespaces/{}/events", n.ns),
            json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
                   "metadata": {"name": "long-note"},
                   "eventTime": "2026-12-05T12:00:00.000000Z",
                   "reportingController": "ferrolb.io/test", "reportingInstance": "test",
                   "action": "Allocate", "reason": "Test", "type": "Normal",
                   "note": "x".repeat(1100),
                   "regarding": {"kind": "Service", "namespace": n.ns, "name": "lb", "apiVersion": "v1"}}),
        )
        .invalid(&[("message", "FieldValueInvalid")]),
        Step::get("get the Service", n.svc("lb")).at("/spec/type", json!("LoadBalancer")),
        Step::merge(
            "controller: ingress + condition, resourceVersion precondition",
            &lb_status,
            json!({"metadata": {"resourceVersion": RV},
                   "status": {"loadBalancer": {"ingress": ferrolb_ingress}, "conditions": [allocated()]}}),
        )
        .at(ing, ferrolb_ingress.clone())
        .at("/status/conditions", json!([allocated()]))
        .at("/metadata/generation", Value::Null)
        .same_rv(false),
        Step::merge(
            "the same status again is a no-op",
            &lb_status,
            ingress(ferrolb_ingress.clone()),
        )
        .same_rv(true),
        Step::merge(
            "stale resourceVersion",
            &lb_status,
            json!({"metadata": {"resourceVersion": "1"}, "status": {"conditions": []}}),
        )
        .fails(409, "Conflict"),
        Step::merge(
            "speaker: its condition next to the controller's",
            &lb_status,
            json!({"metadata": {"resourceVersion": RV},
                   "status": {"conditions": [allocated(), announced()]}}),
        )
        .at("/status/conditions/1", announced())
        .at(ing, ferrolb_ingress.clone()),
        // ── ingress IPs ──
        Step::merge("ip not an IP", &lb_status, ingress(json!([{"ip": "not-an-ip"}])))
            .invalid(&[(ip0, "FieldValueInvalid")]),
        Step::merge(
            "hostname in ip",
            &lb_status,
            ingress(json!([{"ip": "lb.example.com"}])),
        )
        .invalid(&[(ip0, "FieldValueInvalid")]),
        Step::merge("CIDR in ip", &lb_status, ingress(json!([{"ip": "203.0.113.10/32"}])))
            .invalid(&[(ip0, "FieldValueInvalid")]),
        Step::merge(
            "IPv4-mapped IPv6 is stored as sent",
            &lb_status,
            ingress(json!([{"ip": "::ffff:203.0.113.10"}])),
        )
        .at("/status/loadBalancer/ingress/0/ip", json!("::ffff:203.0.113.10")),
        Step::merge(
            "non-canonical IPv6 is stored as sent",
            &lb_status,
            ingress(json!([{"ip": "2001:DB8:0:0::A"}])),
        )
        .at("/status/loadBalancer/ingress/0/ip", json!("2001:DB8:0:0::A")),
        Step::merge(
            "IPv4 with leading zeros is accepted",
            &lb_status,
            ingress(json!([{"ip": "203.000.113.010"}])),
        )
        .at("/status/loadBalancer/ingress/0/ip", json!("203.000.113.010")),
        Step::merge("empty ip is dropped", &lb_status, ingress(json!([{"ip": ""}])))
            .at(ing, json!([{}])),
        Step::merge(
            "duplicate ingress entries are accepted",
            &lb_status,
            ingress(json!([{"ip": "203.0.113.10"}, {"ip": "203.0.113.10"}])),
        )
        .at(
            ing,
            json!([{"ip": "203.0.113.10", "ipMode": "VIP"}, {"ip": "203.0.113.10", "ipMode": "VIP"}]),
        ),
        Step::merge(
            "ipMode defaults to VIP",
            &lb_status,
            ingress(json!([{"ip": "203.0.113.10"}])),
        )
        .at(ing, ferrolb_ingress.clone()),
        Step::merge(
            "ipMode Proxy",
            &lb_status,
            ingress(json!([{"ip": "203.0.113.10", "ipMode": "Proxy"}])),
        )
        .at("/status/loadBalancer/ingress/0/ipMode", json!("Proxy")),
        Step::merge(
            "ipMode Bogus",
            &lb_status,
            ingress(json!([{"ip": "203.0.113.10", "ipMode": "Bogus"}])),
        )
        .invalid(&[(mode0, "FieldValueNotSupported")]),
        Step::merge(
            "ipMode without ip",
            &lb_status,
            ingress(json!([{"hostname": "lb.example.com", "ipMode": "VIP"}])),
        )
        .invalid(&[(mode0, "FieldValueForbidden")]),
        Step::merge(
            "hostname that is an IP",
            &lb_status,
            ingress(json!([{"hostname": "203.0.113.10"}])),
        )
        .invalid(&[(host0, "FieldValueInvalid")]),
        Step::merge(
            "hostname that is not a DNS name",
            &lb_status,
            ingress(json!([{"hostname": "Bad_Host"}])),
        )
        .invalid(&[(host0, "FieldValueInvalid")]),
        Step::merge(
            "ingress on a ClusterIP Service",
            format!("{}/status", n.svc("cip")),
            ingress(json!([{"ip": "203.0.113.11"}])),
        )
        .invalid(&[("status.loadBalancer.ingress", "FieldValueForbidden")]),
        // ── Service conditions: stored as typed, not validated ──
        Step::merge(
            "condition without lastTransitionTime and reason",
            &lb_status,
            json!({"status": {"conditions": [{"type": "x/Other", "status": "True"}]}}),
        )
        .at(
            "/status/conditions",
            json!([{"type": "x/Other", "status": "True", "lastTransitionTime": null,
                    "reason": "", "message": ""}]),
        ),
        Step::merge(
            "condition with odd status, reason and observedGeneration",
            &lb_status,
            json!({"status": {"conditions": [{"type": "x/Other", "status": "Maybe",
                "reason": "1 bad reason", "observedGeneration": -1,
                "lastTransitionTime": "2025-01-01T00:00:00Z"}]}}),
        )
        .at("/status/conditions/0/status", json!("Maybe"))
        .at("/status/conditions/0/observedGeneration", json!(-1)),
        Step::merge(
            "lastTransitionTime not RFC 3339",
            &lb_status,
            json!({"status": {"conditions": [{"type": "x/Other", "status": "True",
                "reason": "R", "lastTransitionTime": "yesterday"}]}}),
        )
        .invalid(&[("patch", "FieldValueInvalid")]),
        // ── subresources, generation, resourceVersions ──
        Step::merge(
            "restore FerroLB's status",
            &lb_status,
            json!({"status": {"loadBalancer": {"ingress": ferrolb_ingress},
                              "conditions": [allocated()]}}),
        )
        .at(ing, ferrolb_ingress.clone()),
        Step::merge(
            "status patch ignores spec",
            &lb_status,
            json!({"spec": {"type": "ClusterIP"}}),
        )
        .at("/spec/type", json!("LoadBalancer"))
        .same_rv(true),
        Step::merge(
            "main patch ignores status",
            n.svc("lb"),
            json!({"metadata": {"labels": {"app": "web"}},
                   "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}}}),
        )
        .at(ing, ferrolb_ingress.clone())
        .at("/metadata/labels/app", json!("web"))
        .same_rv(false),
        Step::merge(
            "spec change: still no generation on a Service",
            n.svc("lb"),
            json!({"spec": {"sessionAffinity": "ClientIP"}}),
        )
        .at("/metadata/generation", Value::Null)
        .same_rv(false),
        // ── server-side apply ──
        Step::new("apply without fieldManager", Method::PATCH, n.svc("ssa"))
            .body(APPLY, &lb_service("ssa"))
            .invalid(&[("fieldManager", "FieldValueRequired")]),
        Step::new(
            "apply creates",
            Method::PATCH,
            format!("{}?fieldManager=diff", n.svc("ssa")),
        )
        .body(APPLY, &lb_service("ssa"))
        .code(201)
        .at("/spec/type", json!("LoadBalancer")),
        Step::new(
            "the same apply again is a no-op",
            Method::PATCH,
            format!("{}?fieldManager=diff", n.svc("ssa")),
        )
        .body(APPLY, &lb_service("ssa"))
        .same_rv(true),
        // ── reads ──
        Step::get("list Services", n.svcs()).names(&["cip", "lb", "ssa"]),
        Step::get(
            "list at a future resourceVersion",
            format!("{}?resourceVersion={FUTURE_RV}", n.svcs()),
        )
        .fails(504, "Timeout")
        .causes(&[("", "ResourceVersionTooLarge")]),
        Step::get(
            "get at a future resourceVersion",
            format!("{}?resourceVersion={FUTURE_RV}", n.svc("lb")),
        )
        .fails(504, "Timeout")
        .causes(&[("", "ResourceVersionTooLarge")]),
        Step::get("get a missing Service", n.svc("missing")).fails(404, "NotFound"),
        Step::merge(
            "leaving type LoadBalancer clears the ingress",
            n.svc("lb"),
            json!({"spec": {"type": "ClusterIP"}}),
        )
        .at(ing, Value::Null)
        .at("/status/conditions/0/type", json!("ferrolb.io/IPAllocated")),
        // ── CRD schemas ──
        Step::post(
            "pool: defaults applied, unknown fields pruned",
            POOLS,
            pool(json!({"addresses": ["203.0.113.0/28"], "bogus": 1})),
        )
        .at("/spec/autoAssign", json!(true))
        .at("/spec/avoidBuggyIPs", json!(false))
        .at("/spec/bogus", Value::Null)
        .at("/status", Value::Null)
        .at("/metadata/generation", json!(1)),
        Step::merge(
            "pool status: defaults of the status schema",
            &pool_status,
            json!({"status": {"observedGeneration": 1, "bogus": 2}}),
        )
        .at(
            "/status",
            json!({"assignedIPv4": 0, "assignedIPv6": 0, "availableIPv4": 0,
                   "availableIPv6": 0, "observedGeneration": 1}),
        )
        .at("/metadata/generation", json!(1)),
        Step::merge(
            "pool status: condition missing required fields",
            &pool_status,
            json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
        )
        .invalid(&[
            ("status.conditions[0].lastTransitionTime", "FieldValueRequired"),
            ("status.conditions[0].message", "FieldValueRequired"),
            ("status.conditions[0].reason", "FieldValueRequired"),
            blocked,
        ]),
        Step::merge(
            "pool status: FerroLB's status",
            &pool_status,
            json!({"status": {"assignedIPv4": 1, "assignedIPv6": 0, "availableIPv4": 15,
                "availableIPv6": 0, "observedGeneration": 1, "conditions": [
                    {"type": "Ready", "status": "True", "reason": "Ready", "message": "",
                     "lastTransitionTime": "2025-01-01T00:00:00Z"}]}}),
        )
        .at("/status/conditions/0/type", json!("Ready"))
        .at("/metadata/generation", json!(1)),
        Step::merge(
            "pool: wrong type",
            &pool_path,
            json!({"spec": {"autoAssign": "yes"}}),
        )
        .invalid(&[("spec.autoAssign", "FieldValueTypeInvalid"), blocked]),
        Step::merge("pool: too few addresses", &pool_path, json!({"spec": {"addresses": []}}))
            .invalid(&[("spec.addresses", "FieldValueInvalid")]),
        Step::merge(
            "pool: unknown operator",
            &pool_path,
            json!({"spec": {"serviceAllocation": {"serviceSelectors": [
                {"matchExpressions": [{"key": "a", "operator": "Bad"}]}]}}}),
        )
        .invalid(&[(
            "spec.serviceAllocation.serviceSelectors[0].matchExpressions[0].operator",
            "FieldValueNotSupported",
        ),
            blocked,
        ]),
        Step::merge(
            "pool: spec change bumps generation",
            &pool_path,
            json!({"spec": {"autoAssign": false}}),
        )
        .at("/spec/autoAssign", json!(false))
        .at("/metadata/generation", json!(2)),
        Step::merge(
            "pool: removing a defaulted field defaults it again",
            &pool_path,
            json!({"spec": {"autoAssign": null}}),
        )
        .at("/spec/autoAssign", json!(true))
        .at("/metadata/generation", json!(3)),
        Step::merge(
            "pool: a label change leaves generation",
            &pool_path,
            json!({"metadata": {"labels": {"a": "b"}}}),
        )
        .at("/metadata/generation", json!(3))
        .same_rv(false),
        Step::post(
            "pool without spec",
            POOLS,
            json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "IPAddressPool",
                   "metadata": {"name": format!("{}-nospec", n.pool)}}),
        )
        .invalid(&[("spec", "FieldValueRequired"), blocked]),
        Step::post(
            "advertisement with an empty spec",
            ADVS,
            json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "L2Advertisement",
                   "metadata": {"name": n.adv}, "spec": {}}),
        )
        .at("/spec", json!({})),
        // ── clean up ──
        Step::delete("delete the advertisement", format!("{ADVS}/{}", n.adv)),
        Step::delete("delete the pool", &pool_path),
        Step::delete("delete a Service", n.svc("lb")),
        Step::get("get the deleted Service", n.svc("lb")).fails(404, "NotFound"),
        Step::delete("delete the namespace", format!("/api/v1/namespaces/{}", n.ns)),
    ]
}

// ───────────────────────────── running and comparing ─────────────────────────────

/// What one server answered to one step, reduced to what is compared.
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    code: u16,
    reason: Option<String>,
    /// `(field, reason)` of `details.causes`, sorted.
    causes: Vec<(String, String)>,
    /// One value per [`Check`] of the step.
    checked: Vec<Value>,
}

impl Outcome {
    /// What the step's table says the real server answers.
    fn expected(step: &Step) -> Self {
        let mut causes: Vec<(String, String)> = step
            .causes
            .iter()
            .map(|(f, r)| (f.to_string(), r.to_string()))
            .collect();
        causes.sort();
        let checked = step
            .checks
            .iter()
            .map(|c| match c {
                Check::At(_, v) => v.clone(),
                Check::Names(n) => json!(n),
                Check::SameRv(b) => json!(b),
            })
            .collect();
        Self {
            code: step.code,
            reason: step.reason.map(str::to_string),
            causes,
            checked,
        }
    }

    /// Reduces a reply; `prev_rv` is the resourceVersion of the previous object reply.
    fn observe(step: &Step, code: u16, body: &Value, prev_rv: Option<&str>) -> Self {
        let is_status = body.get("kind").and_then(Value::as_str) == Some("Status");
        let reason = is_status
            .then(|| {
                body.get("reason")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .flatten();
        let mut causes: Vec<(String, String)> = if is_status {
            body.pointer("/details/causes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| {
                    let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                    (s("field"), s("reason"))
                })
                .collect()
        } else {
            Vec::new()
        };
        causes.sort();
        let checked = step
            .checks
            .iter()
            .map(|c| match c {
                Check::At(p, _) => body.pointer(p).cloned().unwrap_or(Value::Null),
                Check::Names(_) => {
                    let mut names: Vec<&str> = body
                        .get("items")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|i| i.pointer("/metadata/name").and_then(Value::as_str))
                        .collect();
                    names.sort_unstable();
                    json!(names)
                }
                Check::SameRv(_) => {
                    json!(resource_version(body).is_some() && resource_version(body) == prev_rv)
                }
            })
            .collect();
        Self {
            code,
            reason,
            causes,
            checked,
        }
    }
}

fn resource_version(body: &Value) -> Option<&str> {
    body.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
}

/// How `b` differs from `a` (labelled `a_name`/`b_name`), one line per component.
fn differences(step: &Step, a_name: &str, a: &Outcome, b_name: &str, b: &Outcome) -> Vec<String> {
    let mut out = Vec::new();
    if a.code != b.code {
        out.push(format!("code: {a_name} {} vs {b_name} {}", a.code, b.code));
    }
    if a.reason != b.reason {
        out.push(format!(
            "reason: {a_name} {:?} vs {b_name} {:?}",
            a.reason, b.reason
        ));
    }
    if a.causes != b.causes {
        out.push(format!(
            "causes: {a_name} {:?} vs {b_name} {:?}",
            a.causes, b.causes
        ));
    }
    for (i, c) in step.checks.iter().enumerate() {
        let (x, y) = (a.checked.get(i), b.checked.get(i));
        if x != y {
            let what = match c {
                Check::At(p, _) => format!("field {p}"),
                Check::Names(_) => "item names".to_string(),
                Check::SameRv(_) => "resourceVersion unchanged".to_string(),
            };
            out.push(format!(
                "{what}: {a_name} {} vs {b_name} {}",
                x.unwrap_or(&Value::Null),
                y.unwrap_or(&Value::Null)
            ));
        }
    }
    out
}

/// Formats every step with differences as a report ("" when none).
fn report(steps: &[Step], per_step: &[Vec<String>]) -> String {
    let mut out = String::new();
    for (i, (step, diffs)) in steps.iter().zip(per_step).enumerate() {
        if diffs.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "step {i} \"{}\" ({} {}):\n",
            step.what, step.method, step.path
        ));
        for d in diffs {
            out.push_str(&format!("    {d}\n"));
        }
    }
    out
}

/// Sends one request through kube's client (TLS and auth from the kubeconfig) and
/// returns the status code and the JSON body (`null` when it is not JSON).
async fn send(
    client: &Client,
    method: &Method,
    path: &str,
    content_type: Option<&str>,
    body: Option<String>,
) -> (u16, Value) {
    let mut req = Request::builder().method(method.clone()).uri(path);
    if let Some(ct) = content_type {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    let req = req
        .body(Body::from(body.unwrap_or_default().into_bytes()))
        .expect("a valid request");
    let resp = client
        .send(req)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: transport error: {e}"));
    let code = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect_bytes()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: reading the body: {e}"));
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Runs the conversation in order and reduces every reply.
async fn run(client: &Client, steps: &[Step]) -> Vec<Outcome> {
    let mut last_rv: Option<String> = None;
    let mut out = Vec::new();
    for step in steps {
        let body = step
            .body
            .as_ref()
            .map(|b| b.replace(RV, last_rv.as_deref().unwrap_or("")));
        let (code, reply) = send(client, &step.method, &step.path, step.content_type, body).await;
        out.push(Outcome::observe(step, code, &reply, last_rv.as_deref()));
        let is_object = reply
            .get("kind")
            .and_then(Value::as_str)
            .is_some_and(|k| k != "Status" && !k.ends_with("List"));
        if is_object && let Some(rv) = resource_version(&reply) {
            last_rv = Some(rv.to_string());
        }
    }
    out
}

// ───────────────────────────── servers ─────────────────────────────

async fn client_from_kubeconfig(path: &Path) -> Client {
    let kc = Kubeconfig::read_from(path)
        .unwrap_or_else(|e| panic!("reading kubeconfig {}: {e}", path.display()));
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", path.display()));
    // Each step must see the server's own answer: no transparent retries of 429/503/504.
    cfg.default_retry = false;
    Client::try_from(cfg).expect("a client from the kubeconfig")
}

/// A test API server and a client built from the kubeconfig it writes.
async fn test_api() -> (TestApi, Client) {
    let api = TestApi::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("{}-kubeconfig", unique_prefix()));
    let path = dir.join("kubeconfig");
    api.write_kubeconfig(&path).unwrap();
    let client = client_from_kubeconfig(&path).await;
    let _ = std::fs::remove_dir_all(dir);
    (api, client)
}

fn crds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crds")
}

/// Creates FerroLB's CRDs (existing ones are kept) and waits until both kinds are served.
async fn install_crds(client: &Client) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(crds_dir())
        .expect("deploy/crds")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        // deploy/crds is also a kustomization (`kubectl apply -k deploy/crds`).
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for crd in docs.into_iter().filter(|d| !d.is_null()) {
            let (code, body) = send(
                client,
                &Method::POST,
                CRDS,
                Some(JSON),
                Some(crd.to_string()),
            )
            .await;
            assert!(
                code == 201 || code == 409,
                "creating a CRD from {}: {code} {body}",
                f.display()
            );
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for path in [POOLS, ADVS] {
        loop {
            let (code, body) = send(client, &Method::GET, path, None, None).await;
            if code == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{path} not served 20 s after creating the CRDs: {code} {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Deletes what a run may have left behind (a failed step skips the conversation's own
/// clean-up); errors are ignored.
async fn clean_up(client: &Client, n: &Names) {
    for path in [
        format!("{ADVS}/{}", n.adv),
        format!("{POOLS}/{}", n.pool),
        format!("{POOLS}/{}-nospec", n.pool),
        format!("/api/v1/namespaces/{}", n.ns),
    ] {
        let _ = send(client, &Method::DELETE, &path, None, None).await;
    }
}

// ───────────────────────────── tests ─────────────────────────────

/// The test API server answers the conversation as kube-apiserver v1.33.3 did.
#[tokio::test]
async fn conversation_on_test_api_server() {
    let (_api, client) = test_api().await;
    install_crds(&client).await;
    let names = Names::new(&unique_prefix());
    let steps = conversation(&names);
    let got = run(&client, &steps).await;
    let diffs: Vec<Vec<String>> = steps
        .iter()
        .zip(&got)
        .map(|(s, g)| differences(s, "real (table)", &Outcome::expected(s), "testapi", g))
        .collect();
    let report = report(&steps, &diffs);
    assert!(
        report.is_empty(),
        "the test API server differs from kube-apiserver's recorded answers:\n{report}"
    );
}

/// The conversation on a real kube-apiserver (`FERROLB_REAL_KUBECONFIG`) and on the test
/// API server give the same answers, and the real one still gives the recorded ones.
#[tokio::test]
async fn differential_against_real_server() {
    let Some(path) = std::env::var_os("FERROLB_REAL_KUBECONFIG").filter(|p| !p.is_empty()) else {
        panic!(
            "differential_against_real_server needs FERROLB_REAL_KUBECONFIG=<kubeconfig of a \
             kube-apiserver 1.33+> (e.g. KUBECONFIG=$(../shared/k8s/start)); it creates a \
             namespace and FerroLB's CRDs there. The test-API-only check is \
             conversation_on_test_api_server."
        );
    };
    let real = client_from_kubeconfig(Path::new(&path)).await;
    let (_api, fake) = test_api().await;
    install_crds(&real).await;
    install_crds(&fake).await;

    let real_names = Names::new(&unique_prefix());
    let fake_names = Names::new(&unique_prefix());
    let real_steps = conversation(&real_names);
    let real_got = run(&real, &real_steps).await;
    clean_up(&real, &real_names).await;
    let fake_steps = conversation(&fake_names);
    let fake_got = run(&fake, &fake_steps).await;

    let vs_fake: Vec<Vec<String>> = real_steps
        .iter()
        .zip(real_got.iter().zip(&fake_got))
        .map(|(s, (r, f))| differences(s, "real", r, "testapi", f))
        .collect();
    let vs_table: Vec<Vec<String>> = real_steps
        .iter()
        .zip(&real_got)
        .map(|(s, r)| differences(s, "table", &Outcome::expected(s), "real", r))
        .collect();
    let (vs_fake, vs_table) = (
        report(&real_steps, &vs_fake),
        report(&real_steps, &vs_table),
    );
    assert!(
        vs_fake.is_empty() && vs_table.is_empty(),
        "real server vs test API server:\n{vs_fake}\nreal server vs the recorded table:\n{vs_table}"
    );
}

/// The comparison itself: equal outcomes give no differences, each component is named.
#[test]
fn differences_name_each_component() {
    let step = Step::get("x", "/api/v1/services")
        .fails(404, "NotFound")
        .at("/a", json!(1))
        .same_rv(true);
    let want = Outcome::expected(&step);
    assert!(differences(&step, "a", &want, "b", &want).is_empty());
    let body = json!({"kind": "Status", "reason": "Invalid", "a": 2,
        "details": {"causes": [{"field": "f", "reason": "FieldValueInvalid"}]}});
    let got = Outcome::observe(&step, 422, &body, None);
    let d = differences(&step, "a", &want, "b", &got);
    assert_eq!(d.len(), 5, "{d:#?}");
    assert!(d[0].starts_with("code: a 404 vs b 422"), "{d:#?}");
    assert!(d[3].starts_with("field /a"), "{d:#?}");
    assert!(d[4].starts_with("resourceVersion unchanged"), "{d:#?}");
}
