//! CI presets: the labels and annotations each CI system's controller sets on the job pods it
//! creates, mapped to GitHub-Actions-style claim names. Sources are cited in
//! `docs/ci-presets.md`.

use crate::crd::pods::{CiPreset, PodField, PodsSpec};

/// One claim taken from a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule<'a> {
    /// Claim name.
    pub name: &'a str,
    /// Where its value comes from.
    pub field: PodField<'a>,
    /// Whether a pod without it gets no token.
    pub required: bool,
}

const fn label(name: &'static str, key: &'static str, required: bool) -> Rule<'static> {
    Rule {
        name,
        field: PodField::Label(key),
        required,
    }
}

const fn annotation(name: &'static str, key: &'static str, required: bool) -> Rule<'static> {
    Rule {
        name,
        field: PodField::Annotation(key),
        required,
    }
}

const TEKTON: &[Rule<'static>] = &[
    label("job", "tekton.dev/taskRun", true),
    label("run_id", "tekton.dev/pipelineRun", false),
    label("pipeline", "tekton.dev/pipeline", false),
    annotation("sha", "pipelinesascode.tekton.dev/sha", false),
    annotation("ref", "pipelinesascode.tekton.dev/branch", false),
    annotation("repository", "pipelinesascode.tekton.dev/repo-url", false),
    annotation("actor", "pipelinesascode.tekton.dev/sender", false),
];

const ARGO_WORKFLOWS: &[Rule<'static>] = &[
    label("run_id", "workflows.argoproj.io/workflow", true),
    annotation("job", "workflows.argoproj.io/node-name", true),
];

const GITLAB: &[Rule<'static>] = &[
    annotation("run_id", "job.runner.gitlab.com/id", true),
    annotation("job", "job.runner.gitlab.com/name", true),
    annotation("ref", "job.runner.gitlab.com/ref", true),
    annotation("sha", "job.runner.gitlab.com/sha", true),
    annotation("repository", "project.runner.gitlab.com/id", true),
];

const BUILDKITE: &[Rule<'static>] = &[
    label("run_id", "buildkite.com/job-uuid", true),
    annotation("pipeline", "buildkite.com/pipeline-slug", false),
    annotation("job", "buildkite.com/step-key", false),
    annotation("ref", "buildkite.com/build-branch", false),
    annotation("repository", "buildkite.com/build-repo", false),
];

const JENKINS: &[Rule<'static>] = &[
    label("job", "jenkins/label", true),
    annotation("run_id", "runUrl", false),
];

/// The rules of `preset`.
pub fn preset_rules(preset: CiPreset) -> &'static [Rule<'static>] {
    match preset {
        CiPreset::Tekton => TEKTON,
        CiPreset::ArgoWorkflows => ARGO_WORKFLOWS,
        CiPreset::Gitlab => GITLAB,
        CiPreset::Buildkite => BUILDKITE,
        CiPreset::Jenkins => JENKINS,
    }
}

/// The preset's rules, then `spec.pods.claims` (a rule with a preset claim's name replaces
/// it in place).
pub fn effective_rules(pods: &PodsSpec) -> Vec<Rule<'_>> {
    let mut rules: Vec<Rule<'_>> = pods.preset.map(preset_rules).unwrap_or_default().to_vec();
    for rule in &pods.claims {
        let Some(field) = rule.field() else { continue };
        let rule = Rule {
            name: &rule.name,
            field,
            required: rule.required,
        };
        match rules.iter_mut().find(|existing| existing.name == rule.name) {
            Some(existing) => *existing = rule,
            None => rules.push(rule),
        }
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::pods::PodClaimRule;

    #[test]
    fn rules_override_preset_claims_by_name_and_add_the_rest() {
        let pods = PodsSpec {
            preset: Some(CiPreset::ArgoWorkflows),
            claims: vec![
                PodClaimRule {
                    name: "job".into(),
                    from_label: Some("example.com/job".into()),
                    from_annotation: None,
                    required: false,
                },
                PodClaimRule {
                    name: "team".into(),
                    from_label: None,
                    from_annotation: Some("example.com/team".into()),
                    required: true,
                },
            ],
            ..PodsSpec::default()
        };
        let rules = effective_rules(&pods);
        let names: Vec<&str> = rules.iter().map(|rule| rule.name).collect();
        assert_eq!(names, ["run_id", "job", "team"]);
        assert_eq!(rules[1].field, PodField::Label("example.com/job"));
        assert!(!rules[1].required);
        assert!(rules[2].required);
    }

    #[test]
    fn every_preset_has_a_required_claim_and_distinct_names() {
        for preset in [
            CiPreset::Tekton,
            CiPreset::ArgoWorkflows,
            CiPreset::Gitlab,
            CiPreset::Buildkite,
            CiPreset::Jenkins,
        ] {
            let rules = preset_rules(preset);
            assert!(
                rules.iter().any(|rule| rule.required),
                "{}",
                preset.as_str()
            );
            let mut names: Vec<&str> = rules.iter().map(|rule| rule.name).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), rules.len(), "{}", preset.as_str());
            for rule in rules {
                assert!(crate::crd::claim::is_valid_claim_name(rule.name));
                assert!(!crate::crd::claim::is_reserved_claim(rule.name));
            }
        }
    }
}
