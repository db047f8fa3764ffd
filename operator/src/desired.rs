//! PURE: a job -> the children that run it (ConfigMap, headless Service, StatefulSet, PDB).
//!
//! Everything here is a function of the job and the operator's defaults, so the same job always
//! yields the same objects and server-side apply sees no change when nothing changed.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::StreamingJob;
use crate::scaling;
use crate::{Error, Result};

pub const JOB_FILE_KEY: &str = "job.yaml";
pub const JOB_DIR: &str = "/etc/weir";
/// Where the worker finds the files of the job's credentials Secret.
pub const CREDENTIALS_DIR: &str = "/var/run/weir/kafka-credentials";
pub const HTTP_PORT: i32 = 8080;
/// Pod-template annotation that changes with the job spec, so a spec change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "weir.dev/config-hash";
/// The distroless "nonroot" user; any non-zero id works, this one matches the image.
const RUN_AS_USER: i64 = 65532;

/// Operator-wide settings that a job may leave out.
#[derive(Clone, Debug)]
pub struct Defaults {
    pub image: String,
    /// `WEIR_LOG_FORMAT` of the workers: `text` or `json`.
    pub log_format: LogFormat,
}

/// How workers write their logs (never with colour codes: they are not on a terminal).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            image: format!("ghcr.io/weir-dev/weir-worker:{}", env!("CARGO_PKG_VERSION")),
            log_format: LogFormat::default(),
        }
    }
}

/// Everything the controller applies for one job.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    pub config_map: ConfigMap,
    pub service: Service,
    pub stateful_set: StatefulSet,
    pub pdb: PodDisruptionBudget,
    /// Desired workers and why (also the StatefulSet's replicas).
    pub workers: (u32, String),
}

/// Labels every child carries; [`selector_labels`] is the subset that selects the pods.
pub fn labels(job: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(job);
    l.insert("app.kubernetes.io/instance".into(), job.into());
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        "weir-operator".into(),
    );
    l
}

pub fn selector_labels(job: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "weir-worker".to_string(),
        ),
        ("weir.dev/job".to_string(), job.to_string()),
    ])
}

/// The pod selector as a string, for `status.selector` (the `/scale` subresource).
pub fn selector_string(job: &str) -> String {
    selector_labels(job)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The children with the StatefulSet at `replicas` instead of the desired count, for a step
/// of a coordinated rescale; the pods' environment keeps the count they will start with.
pub fn with_replicas(mut c: Children, replicas: u32) -> Children {
    if let Some(spec) = c.stateful_set.spec.as_mut() {
        spec.replicas = Some(i32::try_from(replicas).unwrap_or(i32::MAX));
    }
    c
}

/// Child names: the job's own name, so `kubectl get sts,cm,svc,pdb <job>` finds them all.
fn meta(job: &StreamingJob, owner: &OwnerReference) -> ObjectMeta {
    ObjectMeta {
        name: Some(job.name_any()),
        namespace: job.namespace(),
        labels: Some(labels(&job.name_any())),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// Builds the children of a valid job; `partitions` (when observed) sets the worker count.
///
/// # Errors
/// When the job has no uid or namespace (it was not read from the API server), or its spec
/// cannot be serialized.
pub fn children(
    job: &StreamingJob,
    defaults: &Defaults,
    partitions: Option<scaling::PartitionCounts>,
) -> Result<Children> {
    let workers = scaling::desired_workers(partitions, &job.spec.workers, job.spec.suspend);
    children_for(job, defaults, workers)
}

/// As [`children`], with the worker count and its reason decided by the caller (the
/// autoscaler), so the pods' environment carries that count.
///
/// # Errors
/// As [`children`].
pub fn children_for(
    job: &StreamingJob,
    defaults: &Defaults,
    workers: (u32, String),
) -> Result<Children> {
    let owner = job
        .controller_owner_ref(&())
        .ok_or(Error::MissingField("metadata.uid"))?;
    if job.namespace().is_none() {
        return Err(Error::MissingField("metadata.namespace"));
    }
    let job_yaml = serde_yaml::to_string(&job.spec.job).map_err(Error::SerializeSpec)?;
    let config_map = ConfigMap {
        metadata: meta(job, &owner),
        data: Some(BTreeMap::from([(
            JOB_FILE_KEY.to_string(),
            job_yaml.clone(),
        )])),
        ..ConfigMap::default()
    };
    Ok(Children {
        service: service(job, &owner),
        stateful_set: stateful_set(job, &owner, defaults, workers.0, &fnv1a_hex(&job_yaml)),
        pdb: pdb(job, &owner),
        config_map,
        workers,
    })
}

fn service(job: &StreamingJob, owner: &OwnerReference) -> Service {
    Service {
        metadata: meta(job, owner),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector_labels(&job.name_any())),
            // Workers answer /progress while catching up; DNS must not wait for readiness.
            publish_not_ready_addresses: Some(true),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: HTTP_PORT,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn pdb(job: &StreamingJob, owner: &OwnerReference) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(job, owner),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&job.name_any())),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// The grace period: time to finish the batch in flight and commit, with room for a slow one.
pub fn termination_grace_seconds(job: &StreamingJob) -> i64 {
    let interval =
        i64::try_from(job.spec.job.batch_interval.as_std().as_secs()).unwrap_or(i64::MAX);
    interval
        .saturating_mul(3)
        .saturating_add(15)
        .clamp(30, 3600)
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("100m".into())),
            ("memory".to_string(), Quantity("256Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity("512Mi".into()),
        )])),
        ..ResourceRequirements::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn stateful_set(
    job: &StreamingJob,
    owner: &OwnerReference,
    defaults: &Defaults,
    replicas: u32,
    config_hash: &str,
) -> StatefulSet {
    let name = job.name_any();
    let overrides = job.spec.pod_template.clone().unwrap_or_default();

    let mut pod_labels = overrides.labels.clone();
    pod_labels.extend(labels(&name));
    let mut pod_annotations = overrides.annotations.clone();
    pod_annotations.insert(CONFIG_HASH_ANNOTATION.into(), config_hash.into());

    let probe = |path: &str, failure_threshold| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(10),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    };

    let container = Container {
        name: "worker".into(),
        image: Some(
            job.spec
                .image
                .clone()
                .unwrap_or_else(|| defaults.image.clone()),
        ),
        image_pull_policy: job.spec.image_pull_policy.map(|p| p.as_str().to_string()),
        args: Some(vec!["run".into(), format!("{JOB_DIR}/{JOB_FILE_KEY}")]),
        env: Some(vec![
            env("WEIR_JOB_NAME", name.clone()),
            env("WEIR_NAMESPACE", job.namespace().unwrap_or_default()),
            env("WEIR_WORKERS", replicas.to_string()),
            EnvVar {
                name: "WEIR_WORKER_ORDINAL".into(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.labels['apps.kubernetes.io/pod-index']".into(),
                        ..ObjectFieldSelector::default()
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            },
            env("WEIR_HTTP_ADDR", format!("0.0.0.0:{HTTP_PORT}")),
            env("WEIR_LOG_FORMAT", defaults.log_format.as_str().to_string()),
            // The worker's own deadline after SIGTERM, inside the pod's grace period.
            env(
                "WEIR_SHUTDOWN_TIMEOUT",
                format!("{}s", termination_grace_seconds(job) - 5),
            ),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: HTTP_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        // Ready: batches run and the brokers answer. Live: the batch loop goes on, even while
        // the brokers are away (a restart would not bring them back, and spends the restart
        // budget); more patient too, so a long batch does not get a worker killed.
        readiness_probe: Some(probe("/healthz", 3)),
        liveness_probe: Some(probe("/livez", 6)),
        resources: Some(job.spec.resources.clone().unwrap_or_else(default_resources)),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS_USER),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "job".into(),
                mount_path: JOB_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            // The root filesystem is read-only; local state snapshots go here.
            VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };

    let mut pod = PodSpec {
        containers: vec![container],
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(termination_grace_seconds(job)),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            // The group that may read the credentials Secret's files (mode 0440).
            fs_group: Some(RUN_AS_USER),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        volumes: Some(vec![
            Volume {
                name: "job".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: name.clone(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: "tmp".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            },
        ]),
        node_selector: (!overrides.node_selector.is_empty()).then_some(overrides.node_selector),
        tolerations: (!overrides.tolerations.is_empty()).then_some(overrides.tolerations),
        affinity: overrides.affinity,
        service_account_name: overrides.service_account_name,
        priority_class_name: overrides.priority_class_name,
        image_pull_secrets: (!overrides.image_pull_secrets.is_empty())
            .then_some(overrides.image_pull_secrets),
        ..PodSpec::default()
    };

    if let Some(secret) = &job.spec.job.source.kafka.credentials_secret {
        mount_credentials(&mut pod, secret);
    }
    mount_tables(&mut pod, &job.spec.job);
    // Local state snapshots go to the pod's emptyDir: it outlives a crashed container (the
    // restart in the same pod replays little), not the pod. The snapshot is only a cache, and
    // a volume claim template, immutable on a StatefulSet, would pin the choice for good.
    let snapshots = job
        .spec
        .job
        .checkpoint
        .as_ref()
        .is_some_and(|c| c.snapshot_interval.is_some());
    if snapshots {
        for c in &mut pod.containers {
            c.env
                .get_or_insert_with(Vec::new)
                .push(env(weir_contract::env::STATE_DIR_ENV, STATE_DIR));
        }
    }

    StatefulSet {
        metadata: meta(job, owner),
        spec: Some(StatefulSetSpec {
            replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            service_name: Some(name.clone()),
            // Workers are independent (partitions are assigned by ordinal), so start them together.
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

/// Where workers keep local state snapshots: under the pod's `/tmp` emptyDir.
pub const STATE_DIR: &str = "/tmp/weir-state";

/// Mounts the job's credentials Secret read-only for the worker, which reads the files at
/// start (`WEIR_KAFKA_CREDENTIALS`). The values never pass through the operator: the kubelet
/// copies them from the Secret into the pod.
fn mount_credentials(pod: &mut PodSpec, secret: &str) {
    pod.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: "kafka-credentials".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_string()),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    });
    for c in &mut pod.containers {
        c.env
            .get_or_insert_with(Vec::new)
            .push(env("WEIR_KAFKA_CREDENTIALS", CREDENTIALS_DIR));
        c.volume_mounts
            .get_or_insert_with(Vec::new)
            .push(VolumeMount {
                name: "kafka-credentials".into(),
                mount_path: CREDENTIALS_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
    }
}

/// Mounts each ConfigMap the job reads (join tables, Avro schemas), read-only, at `<TABLES_DIR>/<name>`, where the
/// worker reads its key. The kubelet swaps in a changed ConfigMap's files; the worker rereads
/// a changed file before its next batch. (A `subPath` mount would never see a change.)
fn mount_tables(pod: &mut PodSpec, spec: &weir_contract::spec::JobSpec) {
    let mut names: Vec<&str> = spec
        .config_maps()
        .into_iter()
        .map(|c| c.name.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        // A volume name is a DNS label: a ConfigMap name may be longer, or hold dots.
        let volume = format!("table-{}", &fnv1a_hex(name)[..12]);
        pod.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: volume.clone(),
            // Optional: a missing ConfigMap (or key) then stops the worker with the path and
            // the reason, in its termination message, rather than holding the pod in
            // ContainerCreating where nothing reports it.
            config_map: Some(ConfigMapVolumeSource {
                name: name.to_string(),
                optional: Some(true),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
        for c in &mut pod.containers {
            c.volume_mounts
                .get_or_insert_with(Vec::new)
                .push(VolumeMount {
                    name: volume.clone(),
                    mount_path: format!("{}/{name}", weir_contract::env::TABLES_DIR),
                    read_only: Some(true),
                    ..VolumeMount::default()
                });
        }
    }
}

/// FNV-1a: stable across Rust releases (unlike `DefaultHasher`), so a restarted operator does
/// not roll every job's pods. It detects change; it is not a security boundary.
pub fn fnv1a_hex(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}
