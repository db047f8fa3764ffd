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
