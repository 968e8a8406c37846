//! Names shared by every Kubernetes-facing command: labels, annotations, the
//! shadow naming rule and the field manager. One place, so the webhook, the
//! controller and the chart cannot disagree.

/// Label on a Secret, a Pod or a Namespace that opts it in.
pub const ENABLED_LABEL: &str = "getkloak.io/enabled";
/// Label on every shadow Secret kloak writes.
pub const MANAGED_LABEL: &str = "getkloak.io/managed";
/// Label on a shadow naming its source Secret.
pub const OWNER_LABEL: &str = "getkloak.io/owner";
/// Annotation on a source Secret: comma-separated allowed hosts.
pub const HOSTS_ANNOTATION: &str = "getkloak.io/hosts";
/// Annotation on a source Secret: the one allowed port.
pub const PORT_ANNOTATION: &str = "getkloak.io/port";
/// Field manager for server-side apply and patches.
pub const FIELD_MANAGER: &str = "kloak";
/// The only value of [`ENABLED_LABEL`] and [`MANAGED_LABEL`] that opts in.
pub const TRUE: &str = "true";

/// What a shadow Secret's name adds to its source's.
pub const SHADOW_SUFFIX: &str = "-kloak";

/// The shadow Secret's name for a source Secret.
pub fn shadow_name(source: &str) -> String {
    format!("{source}{SHADOW_SUFFIX}")
}

/// Whether a label map opts its object in (exactly `"true"`).
pub fn is_enabled(labels: Option<&std::collections::BTreeMap<String, String>>) -> bool {
    labels
        .and_then(|labels| labels.get(ENABLED_LABEL))
        .is_some_and(|value| value == TRUE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn shadow_names_append_the_suffix() {
        assert_eq!(shadow_name("openai"), "openai-kloak");
    }

    #[test]
    fn only_the_exact_value_true_enables() {
        let with = |value: &str| BTreeMap::from([(ENABLED_LABEL.to_string(), value.to_string())]);
        assert!(is_enabled(Some(&with("true"))));
        assert!(!is_enabled(Some(&with("True"))));
        assert!(!is_enabled(Some(&with("yes"))));
        assert!(!is_enabled(Some(&BTreeMap::new())));
        assert!(!is_enabled(None));
    }
}
