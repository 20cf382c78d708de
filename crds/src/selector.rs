//! Pure Kubernetes label-selector matching, shared by the controller (pool
//! `serviceAllocation`) and the speaker (L2Advertisement node/service selectors).
//!
//! ```text
//!   metav1.LabelSelector ──TryFrom──▶ Selector ──matches(labels)──▶ bool
//!        (wire form)          (validated once)       (no I/O, no allocation)
//! ```
//!
//! Semantics follow `k8s.io/apimachinery/pkg/labels`: all `matchLabels` and all
//! `matchExpressions` must hold; an empty selector matches everything.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// A validated label selector.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

/// One requirement of a selector; `matchLabels` entries become `In` with one value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Requirement {
    /// The label is present with one of the values.
    In(String, BTreeSet<String>),
    /// The label is absent, or present with none of the values.
    NotIn(String, BTreeSet<String>),
    /// The label is present, whatever its value.
    Exists(String),
    /// The label is absent.
    DoesNotExist(String),
}

/// Why a `LabelSelector` could not be used; reported on the object that carries it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The operator is not one of In, NotIn, Exists, DoesNotExist.
    #[error(
        "matchExpressions[{index}]: unknown operator {operator:?} (want In, NotIn, Exists or DoesNotExist)"
    )]
    UnknownOperator { index: usize, operator: String },
    /// In/NotIn need at least one value.
    #[error("matchExpressions[{index}] ({key} {operator}): needs at least one value")]
    MissingValues {
        index: usize,
        key: String,
        operator: String,
    },
    /// Exists/DoesNotExist take no values.
    #[error("matchExpressions[{index}] ({key} {operator}): takes no values")]
    UnexpectedValues {
        index: usize,
        key: String,
        operator: String,
    },
    /// A key must be non-empty.
    #[error("empty label key")]
    EmptyKey,
    /// A key no label can have: `[prefix/]name`, name ≤ 63 alphanumerics with `-_.` inside,
    /// prefix a DNS subdomain ≤ 253. Such a selector could never match anything.
    #[error(
        "label key {key:?} is not a valid label name ([prefix/]name, name at most 63 of [A-Za-z0-9-_.], alphanumeric at both ends)"
    )]
    InvalidKey { key: String },
    /// A value no label can have: at most 63 of `[A-Za-z0-9-_.]`, alphanumeric at both ends.
    #[error(
        "label value {value:?} for key {key:?} is not a valid label value (at most 63 of [A-Za-z0-9-_.], alphanumeric at both ends)"
    )]
    InvalidValue { key: String, value: String },
}

/// The label name rule of Kubernetes: at most 63 characters of `[A-Za-z0-9-_.]`,
/// beginning and ending with an alphanumeric; empty only where `allow_empty`.
fn is_label_name(s: &str, allow_empty: bool) -> bool {
    if s.is_empty() {
        return allow_empty;
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    s.len() <= 63
        && alnum(s.chars().next())
        && alnum(s.chars().last())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// A qualified label key: `name` or `prefix/name`, the prefix a lowercase DNS subdomain.
fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let dns_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let prefix_ok = prefix.is_none_or(|p| p.len() <= 253 && p.split('.').all(dns_label));
    prefix_ok && is_label_name(name, false)
}

fn check_key(key: &str) -> Result<(), SelectorError> {
    match key {
        "" => Err(SelectorError::EmptyKey),
        k if !is_label_key(k) => Err(SelectorError::InvalidKey { key: k.to_owned() }),
        _ => Ok(()),
    }
}

fn check_value(key: &str, value: &str) -> Result<(), SelectorError> {
    if is_label_name(value, true) {
        Ok(())
    } else {
        Err(SelectorError::InvalidValue {
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }
}

impl Selector {
    /// A selector that matches everything.
    pub fn everything() -> Self {
        Self::default()
    }

    /// A selector built from `key=value` pairs, as `matchLabels` would be.
    pub fn from_labels<'a>(labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let requirements = labels
            .into_iter()
            .map(|(k, v)| Requirement::In(k.to_owned(), BTreeSet::from([v.to_owned()])))
            .collect();
        Self::from_requirements(requirements)
    }

    /// A selector from explicit requirements (sorted, so equal selectors compare equal).
    pub fn from_requirements(mut requirements: Vec<Requirement>) -> Self {
        requirements.sort();
        requirements.dedup();
        Self { requirements }
    }

    /// True when the selector places no requirement at all.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether a set of labels satisfies every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

impl TryFrom<&LabelSelector> for Selector {
    type Error = SelectorError;

    fn try_from(sel: &LabelSelector) -> Result<Self, Self::Error> {
        let mut reqs = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            check_key(k)?;
            check_value(k, v)?;
            reqs.push(Requirement::In(k.clone(), BTreeSet::from([v.clone()])));
        }
        for (index, e) in sel.match_expressions.iter().flatten().enumerate() {
            check_key(&e.key)?;
            for v in e.values.iter().flatten() {
                check_value(&e.key, v)?;
            }
            let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
            let missing = || SelectorError::MissingValues {
                index,
                key: e.key.clone(),
                operator: e.operator.clone(),
            };
            let unexpected = || SelectorError::UnexpectedValues {
                index,
                key: e.key.clone(),
                operator: e.operator.clone(),
            };
            let req = match e.operator.as_str() {
                "In" if values.is_empty() => return Err(missing()),
                "NotIn" if values.is_empty() => return Err(missing()),
                "In" => Requirement::In(e.key.clone(), values),
                "NotIn" => Requirement::NotIn(e.key.clone(), values),
                "Exists" if !values.is_empty() => return Err(unexpected()),
                "DoesNotExist" if !values.is_empty() => return Err(unexpected()),
                "Exists" => Requirement::Exists(e.key.clone()),
                "DoesNotExist" => Requirement::DoesNotExist(e.key.clone()),
                other => {
                    return Err(SelectorError::UnknownOperator {
                        index,
                        operator: other.to_owned(),
                    });
                }
            };
            reqs.push(req);
        }
        Ok(Self::from_requirements(reqs))
    }
}

/// Validates a list of selectors, naming the failing entry as `field[i]`.
pub fn parse_all(field: &str, sels: &[LabelSelector]) -> Result<Vec<Selector>, String> {
    sels.iter()
        .enumerate()
        .map(|(i, s)| Selector::try_from(s).map_err(|e| format!("{field}[{i}]: {e}")))
        .collect()
}

impl fmt::Display for Selector {
    /// The `kubectl -l` spelling, for logs and conditions.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |vs: &BTreeSet<String>| vs.iter().cloned().collect::<Vec<_>>().join(",");
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| match r {
                Requirement::In(k, vs) if vs.len() == 1 => format!("{k}={}", join(vs)),
                Requirement::In(k, vs) => format!("{k} in ({})", join(vs)),
                Requirement::NotIn(k, vs) => format!("{k} notin ({})", join(vs)),
                Requirement::Exists(k) => k.clone(),
                Requirement::DoesNotExist(k) => format!("!{k}"),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn sel(match_labels: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>) -> Selector {
        Selector::try_from(&LabelSelector {
            match_labels: (!match_labels.is_empty()).then(|| labels(match_labels)),
            match_expressions: (!exprs.is_empty()).then_some(exprs),
        })
        .unwrap()
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(sel(&[], vec![]).matches(&labels(&[])));
        assert!(sel(&[], vec![]).matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn operators_follow_apimachinery() {
        type Row<'a> = (Selector, &'a [(&'a str, &'a str)], bool);
        let table: Vec<Row> = vec![
            (sel(&[("team", "a")], vec![]), &[("team", "a")], true),
            (sel(&[("team", "a")], vec![]), &[("team", "b")], false),
            (sel(&[("team", "a")], vec![]), &[], false),
            (
                sel(&[], vec![expr("t", "In", &["x", "y"])]),
                &[("t", "y")],
                true,
            ),
            (
                sel(&[], vec![expr("t", "In", &["x", "y"])]),
                &[("t", "z")],
                false,
            ),
            (sel(&[], vec![expr("t", "NotIn", &["x"])]), &[], true),
            (
                sel(&[], vec![expr("t", "NotIn", &["x"])]),
                &[("t", "x")],
                false,
            ),
            (sel(&[], vec![expr("t", "Exists", &[])]), &[("t", "")], true),
            (sel(&[], vec![expr("t", "Exists", &[])]), &[], false),
            (sel(&[], vec![expr("t", "DoesNotExist", &[])]), &[], true),
            (
                sel(&[], vec![expr("t", "DoesNotExist", &[])]),
                &[("t", "1")],
                false,
            ),
            (
                sel(&[("a", "1")], vec![expr("b", "Exists", &[])]),
                &[("a", "1")],
                false,
            ),
        ];
        for (i, (s, l, want)) in table.into_iter().enumerate() {
            assert_eq!(s.matches(&labels(l)), want, "row {i}: {s} vs {l:?}");
        }
    }

    #[test]
    fn invalid_selectors_name_the_problem() {
        let bad = |e| {
            Selector::try_from(&LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![e]),
            })
            .unwrap_err()
            .to_string()
        };
        assert!(bad(expr("t", "Equals", &["x"])).contains("unknown operator \"Equals\""));
        assert!(bad(expr("t", "In", &[])).contains("needs at least one value"));
        assert!(bad(expr("t", "Exists", &["x"])).contains("takes no values"));
        let err = parse_all(
            "nodeSelectors",
            &[LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![expr("t", "Nope", &[])]),
            }],
        )
        .unwrap_err();
        assert!(err.starts_with("nodeSelectors[0]: "), "{err}");
    }

    #[test]
    fn equal_selectors_compare_equal_whatever_the_order() {
        let a = sel(&[("a", "1"), ("b", "2")], vec![]);
        let b = Selector::from_labels([("b", "2"), ("a", "1")]);
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "a=1,b=2");
    }

    #[test]
    fn keys_and_values_follow_the_label_rules() {
        let ok = |k: &str, v: &str| {
            Selector::try_from(&LabelSelector {
                match_labels: Some(labels(&[(k, v)])),
                match_expressions: None,
            })
        };
        for (k, v) in [
            ("app", "web"),
            ("app.kubernetes.io/name", "web-1"),
            ("node-role.kubernetes.io/control-plane", ""),
            ("a", "A_b.c-9"),
        ] {
            assert!(ok(k, v).is_ok(), "{k}={v}");
        }
        for k in [
            "bad key!",
            "-a",
            "a-",
            "Example.com/x",
            "a/b/c",
            "/x",
            &"k".repeat(64),
        ] {
            assert!(
                matches!(ok(k, "v"), Err(SelectorError::InvalidKey { .. })),
                "{k:?} must be refused"
            );
        }
        for v in ["a b", "-v", "v-", &"v".repeat(64)] {
            assert!(
                matches!(ok("k", v), Err(SelectorError::InvalidValue { .. })),
                "{v:?} must be refused"
            );
        }
        let sel = LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![expr("tier", "In", &["gold", "no way"])]),
        };
        let e = Selector::try_from(&sel).unwrap_err().to_string();
        assert!(e.contains("\"no way\""), "{e}");
    }
}
