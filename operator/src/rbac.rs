//! The Kubernetes API access the operator needs, declared once. The chart's roles grant
//! exactly this (a test renders them and compares), the scripted API server in the tests
//! answers any other request with 403 Forbidden as RBAC would, and a test drives the
//! controller through its paths and checks every verb here is one it uses.

/// Where a rule applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The namespaces whose jobs the operator watches: a ClusterRole, or (namespaced install)
    /// a Role in each.
    Jobs,
    /// The operator's own namespace, for its leader-election Lease.
    LeaderElection,
}

/// Verbs on one resource of one API group.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    pub scope: Scope,
}

/// A verb the API server checks although no request names it; the tests cannot see these
/// used, so each says why it is needed.
#[derive(Clone, Copy, Debug)]
pub struct Implied {
    pub group: &'static str,
    pub resource: &'static str,
    pub verb: &'static str,
    pub why: &'static str,
}

const CHILD_VERBS: &[&str] = &["list", "watch", "patch", "create"];

pub const RULES: &[Rule] = &[
    Rule {
        group: "weir.dev",
        resource: "streamingjobs",
        // patch: the weir.dev/drain finalizer is added and removed with JSON patches.
        verbs: &["list", "watch", "patch"],
        scope: Scope::Jobs,
    },
    Rule {
        group: "weir.dev",
        resource: "streamingjobs/status",
        verbs: &["patch"],
        scope: Scope::Jobs,
    },
    Rule {
        group: "weir.dev",
        resource: "streamingjobs/finalizers",
        verbs: &["update"],
        scope: Scope::Jobs,
    },
    Rule {
        group: "",
        resource: "configmaps",
        verbs: CHILD_VERBS,
        scope: Scope::Jobs,
    },
    Rule {
        group: "",
        resource: "services",
        verbs: CHILD_VERBS,
        scope: Scope::Jobs,
    },
    Rule {
        group: "apps",
        resource: "statefulsets",
        verbs: &["list", "watch", "patch", "create"],
        scope: Scope::Jobs,
    },
    Rule {
        group: "policy",
        resource: "poddisruptionbudgets",
        verbs: CHILD_VERBS,
        scope: Scope::Jobs,
    },
    Rule {
        group: "",
        resource: "pods",
        // watch: the operator reads its workers' pods from a watch-fed store; delete: a
        // stalled worker is restarted by deleting its pod.
        verbs: &["list", "watch", "delete"],
        scope: Scope::Jobs,
    },
    Rule {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        scope: Scope::Jobs,
    },
    Rule {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "update"],
        scope: Scope::LeaderElection,
    },
];

/// Granted only with the chart's `rbac.readCredentialsSecrets` (and the operator's
/// `--read-credentials-secrets`): reading every Secret a job names is a wide grant, worth it
/// only where the operator must observe a Kafka that needs credentials.
pub const READ_CREDENTIALS: Rule = Rule {
    group: "",
    resource: "secrets",
    verbs: &["get"],
    scope: Scope::Jobs,
};

pub const IMPLIED: &[Implied] = &[
    Implied {
        group: "weir.dev",
        resource: "streamingjobs/finalizers",
        verb: "update",
        why: "children carry an ownerReference with blockOwnerDeletion, which clusters with \
              the OwnerReferencesPermissionEnforcement admission plugin allow only to a client \
              that may update the owner's finalizers",
    },
    Implied {
        group: "",
        resource: "configmaps",
        verb: "create",
        why: "a server-side apply (PATCH) that creates the object is authorized as create",
    },
    Implied {
        group: "",
        resource: "services",
        verb: "create",
        why: "a server-side apply (PATCH) that creates the object is authorized as create",
    },
    Implied {
        group: "apps",
        resource: "statefulsets",
        verb: "create",
        why: "a server-side apply (PATCH) that creates the object is authorized as create",
    },
    Implied {
        group: "policy",
        resource: "poddisruptionbudgets",
        verb: "create",
        why: "a server-side apply (PATCH) that creates the object is authorized as create",
    },
    Implied {
        group: "events.k8s.io",
        resource: "events",
        verb: "patch",
        why: "the event recorder patches an Event's series when the same event repeats",
    },
];

/// Whether the declared rules allow `verb` on `resource` (with its subresource, e.g.
/// `streamingjobs/status`) of `group`.
pub fn allows(group: &str, resource: &str, verb: &str) -> bool {
    RULES
        .iter()
        .chain([&READ_CREDENTIALS])
        .any(|r| r.group == group && r.resource == resource && r.verbs.contains(&verb))
}
