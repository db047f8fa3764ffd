//! Leader election against the scripted API server: the requests a real one would get.

use std::time::Duration;

use http::Method;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use serde_json::json;

use crate::fixtures;
use crate::leader::{try_acquire_or_renew, LeaseConfig};

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/weir/leases";

fn cfg(identity: &str) -> LeaseConfig {
    LeaseConfig {
        name: "weir-operator".into(),
        namespace: "weir".into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(15),
        renew_every: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn first_replica_creates_the_lease_and_second_waits() {
    tokio::time::timeout(Duration::from_secs(10), async {
        let (client, server) = fixtures::start();
        let api: Api<Lease> = Api::namespaced(client, "weir");
        assert!(try_acquire_or_renew(&api, &cfg("a")).await.unwrap());
        assert!(
            !try_acquire_or_renew(&api, &cfg("b")).await.unwrap(),
            "b must not take a live lease"
        );
        assert!(
            try_acquire_or_renew(&api, &cfg("a")).await.unwrap(),
            "a renews"
        );

        let r = server.requests();
        let writes: Vec<_> = r.iter().filter(|r| r.method != Method::GET).collect();
        assert_eq!(
            writes.len(),
            2,
            "a creates, b writes nothing, a renews: {writes:#?}"
        );
        assert!(writes[0].is(&Method::POST, LEASES));
        assert_eq!(writes[0].body["spec"]["holderIdentity"], "a");
        assert_eq!(writes[0].body["spec"]["leaseDurationSeconds"], 15);
        assert!(writes[1].is(&Method::PUT, &format!("{LEASES}/weir-operator")));
        assert_eq!(writes[1].body["spec"]["holderIdentity"], "a");
        assert!(
            writes[1].body["metadata"]["resourceVersion"].is_string(),
            "a renewal is a compare-and-swap"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn an_expired_lease_is_taken_over() {
    tokio::time::timeout(Duration::from_secs(10), async {
        let (client, server) = fixtures::start();
        server.insert(
            LEASES,
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                   "metadata": {"name": "weir-operator", "namespace": "weir", "resourceVersion": "7"},
                   "spec": {"holderIdentity": "gone", "leaseDurationSeconds": 15,
                            "renewTime": "2020-01-01T00:00:00.000000Z"}}),
        );
        let api: Api<Lease> = Api::namespaced(client, "weir");
        assert!(try_acquire_or_renew(&api, &cfg("b")).await.unwrap());
        let put = server
            .requests()
            .into_iter()
            .find(|r| r.method == Method::PUT)
            .expect("b writes the lease");
        assert_eq!(put.body["spec"]["holderIdentity"], "b");
        assert_eq!(put.body["spec"]["leaseTransitions"], 1);
        assert_eq!(put.body["metadata"]["resourceVersion"], "7");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn only_the_lease_holder_runs_the_controller() {
    use std::sync::Arc;

    use k8s_openapi::jiff::Timestamp;
    use tokio_util::sync::CancellationToken;

    use crate::context::{Context, Settings};
    use crate::controller;
    use crate::leader::while_leading;
    use crate::metrics::Metrics;

    tokio::time::timeout(Duration::from_secs(20), async {
        let (client, server) = fixtures::start();
        server.insert(
            "/apis/weir.dev/v1alpha1/namespaces/default/streamingjobs",
            fixtures::job("wc", 1, fixtures::spec()),
        );
        // Another replica renewed a 1 s lease just now and then went away.
        let now = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        server.insert(
            LEASES,
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                   "metadata": {"name": "weir-operator", "namespace": "weir", "resourceVersion": "3"},
                   "spec": {"holderIdentity": "other", "leaseDurationSeconds": 1, "renewTime": now}}),
        );
        let ctx = Arc::new(Context::new(client.clone(), Settings::default(), Metrics::new().unwrap()));
        let mut me = cfg("me");
        me.renew_every = Duration::from_millis(100);
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(while_leading(
            Api::namespaced(client, "weir"),
            me,
            shutdown.clone(),
            move |stop| controller::run(ctx, stop),
        ));
        let sts = "/apis/apps/v1/namespaces/default/statefulsets/wc";
        let r = server
            .wait_for(Duration::from_secs(15), |r| r.iter().any(|x| x.is(&Method::PATCH, sts)))
            .await;
        shutdown.cancel();
        run.await.unwrap().expect("a shutdown is not a lost lease");

        let took_lease = r
            .iter()
            .position(|x| x.method == Method::PUT && x.body["spec"]["holderIdentity"] == "me")
            .expect("me takes the expired lease");
        let first_job_request = r
            .iter()
            .position(|x| x.path.contains("streamingjobs") || x.path.contains("statefulsets"))
            .unwrap();
        assert!(took_lease < first_job_request, "nothing is watched or applied before leading");
        let waited = r[took_lease].at - r[0].at;
        assert!(waited >= Duration::from_millis(500), "the live lease was respected ({waited:?})");
        // A clean shutdown hands the lease back.
        let released = server
            .requests()
            .into_iter()
            .rev()
            .find(|x| x.method == Method::PUT)
            .unwrap();
        assert!(released.body["spec"]["holderIdentity"].is_null(), "{:?}", released.body);
    })
    .await
    .expect("test timed out");
}
