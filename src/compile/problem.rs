//! Problems: why an object was left out, in words a person can act on.

use std::fmt;

use crate::model::ObjectKey;

/// The kind of problem; becomes the `reason` of the `Accepted=False` condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// A field has a value Envoy cannot use.
    Invalid,
    /// A route, read cluster or mirror names a RedisCluster that does not exist.
    RefNotFound,
    /// A route, read cluster or mirror names a RedisCluster that is itself not accepted.
    RefNotAccepted,
    /// A referenced Secret is missing or lacks a required key.
    SecretNotFound,
    /// Another, older listener wants the same address and port on the same proxies.
    PortConflict,
    /// A route, read cluster or mirror names a RedisCluster that this listener's settings
    /// cannot serve (a mode Cluster target without redirection), or a RedisCluster's
    /// settings need what no listener routing to it does (a redirect refresh without a
    /// listener that follows redirections).
    RefIncompatible,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 6] = [
        Reason::Invalid,
        Reason::RefNotFound,
        Reason::RefNotAccepted,
        Reason::SecretNotFound,
        Reason::PortConflict,
        Reason::RefIncompatible,
    ];

    /// The CamelCase reason used in status conditions.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Invalid => "Invalid",
            Reason::RefNotFound => "RefNotFound",
            Reason::RefNotAccepted => "RefNotAccepted",
            Reason::SecretNotFound => "SecretNotFound",
            Reason::PortConflict => "PortConflict",
            Reason::RefIncompatible => "RefIncompatible",
        }
    }
}

/// One reason an object is not served.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Problem {
    /// The RedisCluster at fault.
    pub object: ObjectKey,
    /// Path of the offending field, e.g. `spec.listener.routes[0].cluster`.
    pub field: String,
    /// Category, for conditions and metrics.
    pub reason: Reason,
    /// What is wrong and, where it is not obvious, what to do.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.field, self.message)
    }
}
