//! Kubernetes conditions as every FerroLB writer builds them: `lastTransitionTime` moves
//! only when the status flips, and each writer replaces only its own condition type in the
//! list. Pure (no client), so the controller's core uses it too.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// A condition, keeping the previous `lastTransitionTime` when the status did not flip.
pub fn condition(
    old: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    observed_generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_owned();
    let last_transition_time = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation,
        last_transition_time,
    }
}

/// `conds` with the condition of `type_` replaced by `new` (or removed when `None`),
/// every other writer's condition kept in place.
pub fn replace(conds: &[Condition], type_: &str, new: Option<Condition>) -> Vec<Condition> {
    let mut out: Vec<Condition> = conds.iter().filter(|c| c.type_ != type_).cloned().collect();
    out.extend(new);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_on_flip() {
        let t0 = Timestamp::from_second(10).unwrap();
        let t1 = Timestamp::from_second(20).unwrap();
        let c0 = condition(&[], "Ready", true, "A", "m", None, t0);
        assert_eq!(c0.last_transition_time.0, t0);
        let c1 = condition(
            std::slice::from_ref(&c0),
            "Ready",
            true,
            "B",
            "other",
            None,
            t1,
        );
        assert_eq!(c1.last_transition_time.0, t0, "same status keeps the time");
        let c2 = condition(&[c1], "Ready", false, "C", "m", None, t1);
        assert_eq!(c2.last_transition_time.0, t1);
    }

    #[test]
    fn replace_keeps_foreign_conditions() {
        let t = Timestamp::UNIX_EPOCH;
        let conds = vec![
            condition(&[], "x/Other", true, "R", "", None, t),
            condition(&[], "mine", true, "R", "", None, t),
        ];
        let out = replace(&conds, "mine", None);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].type_, "x/Other");
        let out = replace(
            &conds,
            "mine",
            Some(condition(&[], "mine", false, "S", "", None, t)),
        );
        assert_eq!(
            out.iter().map(|c| c.status.as_str()).collect::<Vec<_>>(),
            ["True", "False"]
        );
    }
}
