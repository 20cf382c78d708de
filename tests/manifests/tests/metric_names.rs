//! Every metric name an alert rule (deploy/prometheus/prometheusrule.yaml) or a Grafana
//! panel (deploy/prometheus/grafana-dashboard.json) queries is one the binaries expose. The
//! exposed names are not a hand-kept list: they come from encoding the registries the
//! controller's and the speaker's `metrics` modules build (with the speaker's data plane and
//! heartbeat task attached, so their scrape-time collectors report too, and one sample fed
//! to every family, which prometheus-client leaves out of a scrape until it has a member).
//!
//! ```text
//!   Metrics::register ──text encoder──▶ "# TYPE name kind" ──▶ exposed sample names
//!   PromQL expressions ──lexer──▶ selector names ──────────────▶ ⊆ exposed ?
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ferrolb_manifests_test::{load_docs, read};
use prometheus_client::registry::Registry;
use serde_json::Value;

/// Sample names a `# TYPE` line stands for, as a scrape shows them.
fn sample_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
        match kind {
            "counter" => {
                out.insert(format!("{name}_total"));
            }
            "histogram" => {
                for s in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{name}{s}"));
                }
            }
            "gauge" => {
                out.insert(name.to_owned());
            }
            other => panic!("{name}: metric type {other} not handled here; extend the test"),
        }
    }
    out
}

fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("encode");
    out
}

/// Every sample name the controller and the speaker expose.
fn exposed() -> BTreeSet<String> {
    let mut registry = Registry::default();
    let index = Arc::new(Mutex::new(ferrolb_controller::index::Index::new(
        "ferrolb.io/test",
    )));
    let m = ferrolb_controller::metrics::Metrics::register(&mut registry, index);
    // A family shows up in a scrape only once it has a member: give each one.
    m.allocation(true, "Allocated");
    m.api_error("transient");
    m.set_leader(true);
    let mut names = sample_names(&encode(&registry));

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let speaker = rt.block_on(async {
        let mut registry = Registry::default();
        let m = ferrolb_speaker::metrics::Metrics::register(&mut registry);
        m.api_error("transient");
        m.set_table(&Default::default(), "node1");
        m.takeover(1, std::time::Duration::from_millis(5));
        m.attach_dataplane(Arc::new(ferrolb_speaker::dataplane::DataPlane::new(
            Default::default(),
        )));
        let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let cfg = ferrolb_speaker::liveness::LivenessConfig::new("node1", bind, vec![7; 32]);
        let (_peers_tx, peers) = tokio::sync::watch::channel(BTreeMap::new());
        let (_ifs_tx, ifs) = tokio::sync::watch::channel(BTreeSet::new());
        let (_ready_tx, ready) = tokio::sync::watch::channel(false);
        let (live, _view) =
            ferrolb_speaker::liveness::Liveness::spawn(cfg, peers, ifs, ready).expect("liveness");
        m.attach_liveness(Arc::new(live));
        encode(&registry)
    });
    names.extend(sample_names(&speaker));
    names
}

const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "avg",
    "avg_over_time",
    "bottomk",
    "ceil",
    "changes",
    "clamp_max",
    "clamp_min",
    "count",
    "count_over_time",
    "count_values",
    "delta",
    "deriv",
    "floor",
    "group",
    "histogram_quantile",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "max",
    "max_over_time",
    "min",
    "min_over_time",
    "quantile",
    "quantile_over_time",
    "rate",
    "resets",
    "round",
    "scalar",
    "sort",
    "sort_desc",
    "stddev",
    "sum",
    "sum_over_time",
    "time",
    "timestamp",
    "topk",
    "vector",
];
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset"];
/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression selects. A small lexer, not a full parser: it
/// skips strings, label matchers `{..}`, ranges `[..]`, numbers and durations, and label
/// lists after `by`/`on`/…; an identifier followed by `(` must be a known function. What is
/// left are metric names. Errors on anything it does not understand.
fn metric_names(expr: &str) -> Result<Vec<String>, String> {
    let c: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    let skip_until = |i: &mut usize, close: char| -> Result<(), String> {
        while *i < c.len() && c[*i] != close {
            if c[*i] == '"' {
                *i += 1;
                while *i < c.len() && c[*i] != '"' {
                    *i += if c[*i] == '\\' { 2 } else { 1 };
                }
            }
            *i += 1;
        }
        if *i >= c.len() {
            return Err(format!("unclosed {close:?} in {expr:?}"));
        }
        *i += 1;
        Ok(())
    };
    let next_non_space = |mut j: usize| {
        while j < c.len() && c[j].is_whitespace() {
            j += 1;
        }
        j
    };
    while i < c.len() {
        let ch = c[i];
        if ch == '{' {
            i += 1;
            skip_until(&mut i, '}')?;
        } else if ch == '[' {
            i += 1;
            skip_until(&mut i, ']')?;
        } else if ch == '"' {
            i += 1;
            skip_until(&mut i, '"')?;
        } else if ch.is_ascii_digit()
            || (ch == '.' && c.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                i += 1;
            }
        } else if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' {
            let start = i;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_' || c[i] == ':') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let j = next_non_space(i);
            let mut call = c.get(j) == Some(&'(');
            // `sum by (x) (..)`: an aggregation with its grouping before the argument.
            if !call && FUNCTIONS.contains(&word.as_str()) {
                let k = next_non_space(j);
                let rest: String = c[j..].iter().take(8).collect();
                call = (rest.starts_with("by") || rest.starts_with("without")) && k == j;
            }
            if LABEL_LISTS.contains(&word.as_str()) {
                if call {
                    i = j + 1;
                    skip_until(&mut i, ')')?;
                }
            } else if KEYWORDS.contains(&word.as_str()) {
            } else if call {
                if !FUNCTIONS.contains(&word.as_str()) {
                    return Err(format!("unknown function {word} in {expr:?}"));
                }
            } else {
                out.push(word);
            }
        } else if "()+-*/%^<>=!, \n\t".contains(ch) {
            i += 1;
        } else {
            return Err(format!("unexpected {ch:?} in {expr:?}"));
        }
    }
    Ok(out)
}

/// (where, expression) for every alert rule of the PrometheusRule.
fn rule_exprs() -> Vec<(String, String)> {
    let docs = load_docs("deploy/prometheus/prometheusrule.yaml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].kind(), "PrometheusRule");
    let mut out = Vec::new();
    for g in docs[0].value["spec"]["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            let name = r["alert"]
                .as_str()
                .or(r["record"].as_str())
                .expect("alert or record");
            out.push((
                name.to_owned(),
                r["expr"].as_str().expect("expr").to_owned(),
            ));
        }
    }
    out
}

/// (where, expression) for every query of the Grafana dashboard, nested rows included.
fn dashboard_exprs() -> Vec<(String, String)> {
    let d: Value = serde_json::from_str(&read("deploy/prometheus/grafana-dashboard.json").unwrap())
        .expect("dashboard JSON");
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = d["panels"].as_array().expect("panels").iter().collect();
    while let Some(p) = stack.pop() {
        stack.extend(p["panels"].as_array().into_iter().flatten());
        for t in p["targets"].as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or_default();
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title}: no expr"));
            out.push((format!("panel {title:?}"), expr.to_owned()));
        }
    }
    out
}

fn check(exprs: Vec<(String, String)>, what: &str) {
    let exposed = exposed();
    assert!(!exprs.is_empty(), "{what}: no expression found");
    let mut unknown = Vec::new();
    for (at, expr) in &exprs {
        let names = metric_names(expr).unwrap_or_else(|e| panic!("{what} {at}: {e}"));
        assert!(!names.is_empty(), "{what} {at}: queries no metric: {expr}");
        for n in names {
            if !exposed.contains(&n) {
                unknown.push(format!("{at}: {n}"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "{what} queries metrics the binaries do not expose:\n{}\nexposed: {exposed:#?}",
        unknown.join("\n")
    );
}

#[test]
fn alert_rules_query_only_exposed_metrics() {
    check(rule_exprs(), "prometheusrule.yaml");
}

#[test]
fn dashboard_queries_only_exposed_metrics() {
    check(dashboard_exprs(), "grafana-dashboard.json");
}

#[test]
fn every_exposed_metric_is_documented() {
    let doc = read("docs/configuration.md").unwrap();
    let missing: Vec<String> = exposed()
        .into_iter()
        .map(|n| {
            let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| {
                n.strip_suffix(s)
                    .filter(|f| doc.contains(&format!("`{f}`")))
            });
            family.map_or(n.clone(), str::to_owned)
        })
        .filter(|n| !doc.contains(&format!("`{n}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not mention {missing:?}"
    );
}

#[test]
fn the_lexer_finds_metrics_and_nothing_else() {
    assert_eq!(
        metric_names(
            r#"sum by (pool, family) (rate(a_total{x="y}", z!~"b|c"}[5m] offset 1h)) / ignoring (state) b > 0.9 and on (ip) c_d:e unless vector(0)"#
        )
        .unwrap(),
        ["a_total", "b", "c_d:e"]
    );
    assert_eq!(
        metric_names("histogram_quantile(0.99, sum by (le) (rate(h_bucket[$__rate_interval])))")
            .unwrap(),
        ["h_bucket"]
    );
    assert!(
        metric_names("sum(ratte(x[5m]))")
            .unwrap_err()
            .contains("unknown function ratte")
    );
    assert!(metric_names("x{a=\"b\"").is_err());
}

#[test]
fn exposed_names_come_from_the_registries() {
    let names = exposed();
    for n in [
        "ferrolb_pool_addresses",
        "ferrolb_api_errors_total",
        "ferrolb_speaker_heartbeats_rejected_total",
        "ferrolb_speaker_takeover_seconds_bucket",
        "ferrolb_speaker_drops_total",
        "ferrolb_speaker_announced",
        "ferrolb_service_ip",
        "ferrolb_service_pending",
    ] {
        assert!(names.contains(n), "{n} missing from {names:#?}");
    }
}
