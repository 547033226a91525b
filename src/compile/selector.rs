//! Kubernetes label selectors: validation and matching, with the API server's semantics.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use crate::api::Labels;

/// Checks a selector the way the API server would, returning `(field suffix, message)`.
pub fn validate(selector: &LabelSelector) -> Result<(), (String, String)> {
    for (i, req) in selector.match_expressions.iter().flatten().enumerate() {
        let field = format!("matchExpressions[{i}]");
        let values = req.values.as_deref().unwrap_or_default();
        match req.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err((
                    format!("{field}.values"),
                    format!("operator {} needs at least one value", req.operator),
                ));
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err((
                    format!("{field}.values"),
                    format!("operator {} takes no values; remove them", req.operator),
                ));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                return Err((
                    format!("{field}.operator"),
                    format!("unknown operator {other:?}: use In, NotIn, Exists or DoesNotExist"),
                ));
            }
        }
        if req.key.is_empty() {
            return Err((format!("{field}.key"), "key must not be empty".into()));
        }
    }
    Ok(())
}

/// True when `labels` satisfy every term of `selector`. An empty selector matches everything.
/// Call only on selectors that passed [`validate`]; an unknown operator matches nothing.
pub fn matches(selector: &LabelSelector, labels: &Labels) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    labels_ok
        && selector
            .match_expressions
            .iter()
            .flatten()
            .all(|req| requirement_matches(req, labels))
}

fn requirement_matches(req: &LabelSelectorRequirement, labels: &Labels) -> bool {
    let value = labels.get(&req.key);
    let values = req.values.as_deref().unwrap_or_default();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

/// False only when no label set can satisfy both selectors because they require different
/// values for one key. Used for listener conflicts: two listeners whose client selectors are
/// provably disjoint can share an address and port. The answer errs towards "may overlap".
pub fn may_overlap(a: &LabelSelector, b: &LabelSelector) -> bool {
    let (Some(la), Some(lb)) = (&a.match_labels, &b.match_labels) else {
        return true;
    };
    la.iter()
        .all(|(k, v)| lb.get(k).is_none_or(|other| other == v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(match_labels: &[(&str, &str)], exprs: &[(&str, &str, &[&str])]) -> LabelSelector {
        LabelSelector {
            match_labels: (!match_labels.is_empty()).then(|| labels(match_labels)),
            match_expressions: (!exprs.is_empty()).then(|| {
                exprs
                    .iter()
                    .map(|(k, op, vals)| LabelSelectorRequirement {
                        key: k.to_string(),
                        operator: op.to_string(),
                        values: (!vals.is_empty())
                            .then(|| vals.iter().map(|v| v.to_string()).collect()),
                    })
                    .collect()
            }),
        }
    }

    #[test]
    fn should_match_everything_with_an_empty_selector() {
        assert!(matches(&LabelSelector::default(), &labels(&[])));
        assert!(matches(&LabelSelector::default(), &labels(&[("a", "b")])));
    }

    #[test]
    fn should_apply_match_labels_and_every_operator() {
        let s = sel(
            &[("app", "redis")],
            &[
                ("tier", "In", &["cache", "db"]),
                ("env", "NotIn", &["dev"]),
                ("shard", "Exists", &[]),
                ("canary", "DoesNotExist", &[]),
            ],
        );
        let good = labels(&[("app", "redis"), ("tier", "db"), ("shard", "1")]);
        assert!(matches(&s, &good));
        let mut l = good.clone();
        l.insert("env".into(), "dev".into());
        assert!(!matches(&s, &l));
        let mut l = good.clone();
        l.insert("canary".into(), "yes".into());
        assert!(!matches(&s, &l));
        let mut l = good.clone();
        l.remove("shard");
        assert!(!matches(&s, &l));
        let mut l = good.clone();
        l.insert("tier".into(), "web".into());
        assert!(!matches(&s, &l));
        let mut l = good;
        l.insert("app".into(), "other".into());
        assert!(!matches(&s, &l));
    }

    #[test]
    fn should_reject_operators_and_values_the_api_server_rejects() {
        assert!(validate(&sel(&[], &[("a", "In", &[])])).is_err());
        assert!(validate(&sel(&[], &[("a", "Exists", &["x"])])).is_err());
        let (field, msg) = validate(&sel(&[], &[("a", "Equals", &["x"])])).unwrap_err();
        assert_eq!(field, "matchExpressions[0].operator");
        assert!(msg.contains("Equals"));
        assert!(validate(&sel(&[("a", "b")], &[("a", "NotIn", &["c"])])).is_ok());
    }

    #[test]
    fn should_see_selectors_with_different_values_for_a_key_as_disjoint() {
        assert!(!may_overlap(
            &sel(&[("app", "a")], &[]),
            &sel(&[("app", "b")], &[])
        ));
        assert!(may_overlap(
            &sel(&[("app", "a")], &[]),
            &sel(&[("tier", "b")], &[])
        ));
        assert!(may_overlap(&sel(&[], &[]), &sel(&[("app", "b")], &[])));
    }
}
