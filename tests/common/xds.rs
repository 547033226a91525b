//! An in-process ADS client for tests: both variants, with the checks every response must
//! pass (fresh non-empty nonce, unique resource names). Streams open as the bench's
//! simulated Envoys open theirs (`redis_xds::app::bench::envoys`).
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use redis_xds::app::bench::envoys::{open_delta, open_sotw};
use tokio::sync::mpsc;
use tonic::Streaming;

pub const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Bound on waiting for a response that must come; never reached when the server works.
pub const PATIENCE: Duration = Duration::from_secs(10);

async fn channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Opens a Delta stream, as the bench's simulated Envoys do.
pub async fn delta(addr: SocketAddr) -> Delta {
    delta_as(addr, None).await.unwrap()
}

/// Opens a Delta stream that sends `token` as `authorization: Bearer`, if any; `Err` is
/// the server's refusal in the response headers.
pub async fn delta_as(addr: SocketAddr, token: Option<&str>) -> Result<Delta, tonic::Status> {
    let (tx, rx) = mpsc::channel(16);
    let stream = open_delta(channel(addr).await, rx, token).await?;
    Ok(Delta {
        tx,
        rx: stream,
        nonces: BTreeSet::new(),
    })
}

/// Opens a SotW stream, as the bench's simulated Envoys do.
pub async fn sotw(addr: SocketAddr) -> Sotw {
    let (tx, rx) = mpsc::channel(16);
    let stream = open_sotw(channel(addr).await, rx, None).await.unwrap();
    Sotw {
        tx,
        rx: stream,
        nonces: BTreeSet::new(),
    }
}

pub fn node(id: &str, namespace: Option<&str>) -> Option<Node> {
    let mut fields = std::collections::HashMap::new();
    if let Some(ns) = namespace {
        fields.insert(
            "namespace".to_string(),
            Value {
                kind: Some(Kind::StringValue(ns.into())),
            },
        );
    }
    Some(Node {
        id: id.into(),
        metadata: Some(Struct { fields }),
        ..Default::default()
    })
}

pub fn nack(message: &str) -> Option<RpcStatus> {
    Some(RpcStatus {
        code: 3,
        message: message.into(),
        details: vec![],
    })
}

pub struct Delta {
    pub tx: mpsc::Sender<DeltaDiscoveryRequest>,
    pub rx: Streaming<DeltaDiscoveryResponse>,
    pub nonces: BTreeSet<String>,
}

impl Delta {
    pub async fn send(&self, req: DeltaDiscoveryRequest) {
        self.tx.send(req).await.unwrap();
    }

    pub async fn subscribe(&self, node: Option<Node>, type_url: &str, names: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            node,
            type_url: type_url.into(),
            resource_names_subscribe: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await;
    }

    pub async fn ack(&self, resp: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    /// The next response; checks the rules every response must keep.
    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        let resp = tokio::time::timeout(PATIENCE, self.rx.message())
            .await
            .expect("a response within the patience bound")
            .expect("stream ok")
            .expect("stream open");
        assert!(!resp.nonce.is_empty(), "nonces are never empty");
        assert!(
            self.nonces.insert(resp.nonce.clone()),
            "nonce {} reused on one stream",
            resp.nonce
        );
        let names: Vec<&str> = resp.resources.iter().map(|r| r.name.as_str()).collect();
        let unique: BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(
            unique.len(),
            names.len(),
            "two resources of one name in {names:?}"
        );
        for r in &resp.resources {
            assert!(!r.version.is_empty());
            assert_eq!(r.resource.as_ref().unwrap().type_url, resp.type_url);
        }
        resp
    }

    /// Receives and ACKs the next response.
    pub async fn recv_ack(&mut self) -> DeltaDiscoveryResponse {
        let resp = self.recv().await;
        self.ack(&resp).await;
        resp
    }
}

pub fn delta_names(resp: &DeltaDiscoveryResponse) -> Vec<&str> {
    resp.resources.iter().map(|r| r.name.as_str()).collect()
}

pub struct Sotw {
    pub tx: mpsc::Sender<DiscoveryRequest>,
    pub rx: Streaming<DiscoveryResponse>,
    pub nonces: BTreeSet<String>,
}

impl Sotw {
    pub async fn send(
        &self,
        node: Option<Node>,
        type_url: &str,
        names: &[&str],
        version: &str,
        nonce: &str,
        error: Option<RpcStatus>,
    ) {
        self.tx
            .send(DiscoveryRequest {
                node,
                type_url: type_url.into(),
                resource_names: names.iter().map(|s| s.to_string()).collect(),
                version_info: version.into(),
                response_nonce: nonce.into(),
                error_detail: error,
                ..Default::default()
            })
            .await
            .unwrap();
    }

    pub async fn recv(&mut self) -> DiscoveryResponse {
        let resp = tokio::time::timeout(PATIENCE, self.rx.message())
            .await
            .expect("a response within the patience bound")
            .expect("stream ok")
            .expect("stream open");
        assert!(!resp.nonce.is_empty(), "nonces are never empty");
        assert!(self.nonces.insert(resp.nonce.clone()), "nonce reused");
        assert!(!resp.version_info.is_empty());
        resp
    }

    pub async fn ack(&self, resp: &DiscoveryResponse, names: &[&str]) {
        self.send(
            None,
            &resp.type_url,
            names,
            &resp.version_info,
            &resp.nonce,
            None,
        )
        .await;
    }
}

pub fn sotw_names(resp: &DiscoveryResponse) -> Vec<String> {
    use prost::Message;
    resp.resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, resp.type_url);
            match resp.type_url.as_str() {
                CDS => {
                    envoy_types::pb::envoy::config::cluster::v3::Cluster::decode(&*any.value)
                        .unwrap()
                        .name
                }
                LDS => {
                    envoy_types::pb::envoy::config::listener::v3::Listener::decode(&*any.value)
                        .unwrap()
                        .name
                }
                _ => {
                    envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(
                        &*any.value,
                    )
                    .unwrap()
                    .cluster_name
                }
            }
        })
        .collect()
}
