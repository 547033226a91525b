//! Envoy resource names. They are part of the operator interface (they show up in Envoy's
//! admin pages, stats and `/debug/config_dump`), so they are readable and stable: derived
//! only from the object's namespace and name, plus the listening address for listeners.
//!
//! | resource | name | example |
//! |---|---|---|
//! | cluster | `redis/<namespace>/<name>` | `redis/shop/orders` |
//! | listener | `redis/<namespace>/<name>@<address>:<port>` | `redis/shop/orders@127.0.0.1:6379` |
//! | stat prefix | `<namespace>.<name>` | stats `redis.shop.orders.command.get.total` |
//!
//! The listener name carries the address because Envoy cannot change the address of an
//! existing listener in place; a new name makes an address change a clean add and remove.

use std::net::{IpAddr, SocketAddr};

use crate::model::ObjectKey;

/// Name of the Envoy cluster of a RedisCluster.
pub fn cluster_name(key: &ObjectKey) -> String {
    format!("redis/{}/{}", key.namespace, key.name)
}

/// Name of the Envoy listener of a RedisCluster.
pub fn listener_name(key: &ObjectKey, address: IpAddr, port: u16) -> String {
    format!(
        "redis/{}/{}@{}",
        key.namespace,
        key.name,
        SocketAddr::new(address, port)
    )
}

/// `stat_prefix` of the redis_proxy filter.
pub fn stat_prefix(key: &ObjectKey) -> String {
    format!("{}/{}", key.namespace, key.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_derive_names_from_namespace_and_name_only() {
        let key = ObjectKey::new("shop", "orders");
        assert_eq!(cluster_name(&key), "redis/shop/orders");
        assert_eq!(
            listener_name(&key, "127.0.0.1".parse().unwrap(), 6379),
            "redis/shop/orders@127.0.0.1:6379"
        );
        assert_eq!(
            listener_name(&key, "::1".parse().unwrap(), 6380),
            "redis/shop/orders@[::1]:6380"
        );
        // No dot: Envoy's tag extractor takes a redis_proxy prefix up to its first dot as
        // `envoy_redis_prefix`, so the whole object lands in that label.
        assert_eq!(stat_prefix(&key), "shop/orders");
    }
}
