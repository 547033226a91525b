//! Every Kubernetes API call redis-xds makes, in one place. `deploy/` RBAC is checked
//! against this list, so a new call without a matching rule fails a test.

/// One kind of call: an API group, a resource, and the verbs used on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiCall {
    /// API group; empty for the core group.
    pub group: &'static str,
    /// Resource (plural, with `/subresource` where one is used).
    pub resource: &'static str,
    /// Verbs.
    pub verbs: &'static [&'static str],
    /// Why.
    pub why: &'static str,
}

/// The calls.
pub const API_CALLS: &[ApiCall] = &[
    ApiCall {
        group: "redis-xds.dev",
        resource: "redisclusters",
        verbs: &["list", "watch"],
        why: "the desired configuration",
    },
    ApiCall {
        group: "redis-xds.dev",
        resource: "redisclusters/status",
        verbs: &["patch"],
        why: "conditions, endpoints and proxy counts (lease holder only)",
    },
    ApiCall {
        group: "",
        resource: "pods",
        verbs: &["list", "watch"],
        why: "Ready pods behind spec.endpoints.selector",
    },
    ApiCall {
        group: "discovery.k8s.io",
        resource: "endpointslices",
        verbs: &["list", "watch"],
        why: "endpoints behind spec.endpoints.service",
    },
    ApiCall {
        group: "",
        resource: "secrets",
        verbs: &["get", "list", "watch"],
        why: "passwords, keys and certificates named by any secretRef (auth, listener.downstreamAuth, endpointAuth, tls); only referenced Secrets' data is kept, and one that becomes referenced is read with a get",
    },
    ApiCall {
        group: "authentication.k8s.io",
        resource: "tokenreviews",
        verbs: &["create"],
        why: "verifying the ServiceAccount tokens of proxies (--xds-auth token)",
    },
    ApiCall {
        group: "authorization.k8s.io",
        resource: "subjectaccessreviews",
        verbs: &["create"],
        why: "whether the caller of /debug/* may get redisclusters/debug (--debug-auth kubernetes)",
    },
    ApiCall {
        group: "",
        resource: "secrets",
        verbs: &["create"],
        why: "creating the self-signed CA Secret of --ca-secret when it is missing (redis-xds's namespace only)",
    },
    ApiCall {
        group: "admissionregistration.k8s.io",
        resource: "mutatingwebhookconfigurations",
        verbs: &["get", "patch"],
        why: "keeping the caBundle of the injector's webhook configuration (--ca-secret with --webhook-addr; that one object only)",
    },
    ApiCall {
        group: "",
        resource: "services",
        verbs: &["list", "watch"],
        why: "ClusterIPs and ports, which name istio-proxy's outbound listeners (--istio only)",
    },
    ApiCall {
        group: "networking.istio.io",
        resource: "envoyfilters",
        verbs: &["list", "create", "patch", "delete"],
        why: "the EnvoyFilters of Istio mode: server-side apply of the wanted ones, deletion of those no longer wanted (--istio write, lease holder only)",
    },
    ApiCall {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "update"],
        why: "electing the one replica that writes status",
    },
    ApiCall {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["list", "patch", "delete"],
        why: "each replica's proxy counts: server-side apply of its own counts Lease, deletion when it stops, and the list the status writer sums",
    },
];

/// The calls of Istio mode that deploy/istio grants beyond deploy/base (a Role in the
/// mesh's root namespace, which exists only where Istio does).
pub const ISTIO_API_CALLS: &[ApiCall] = &[ApiCall {
    group: "",
    resource: "serviceaccounts/token",
    verbs: &["create"],
    why: "tokens of istio-system/redis-xds-istiod-debug for istiod's debug endpoints (IstioProgrammed; --istiod-debug-service-account, that one ServiceAccount only)",
}];

/// One non-resource URL redis-xds reads (RBAC's `nonResourceURLs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathCall {
    /// The path.
    pub path: &'static str,
    /// Verbs (`get` for a read).
    pub verbs: &'static [&'static str],
    /// Why.
    pub why: &'static str,
}

/// The non-resource URLs: the ServiceAccount issuer's OIDC discovery, which Kubernetes'
/// own `system:service-account-issuer-discovery` ClusterRole grants.
pub const PATH_CALLS: &[PathCall] = &[
    PathCall {
        path: "/.well-known/openid-configuration",
        verbs: &["get"],
        why: "the issuer of ServiceAccount tokens, verified before their TokenReview (--xds-auth token)",
    },
    PathCall {
        path: "/openid/v1/jwks",
        verbs: &["get"],
        why: "the keys ServiceAccount tokens are signed with, verified before their TokenReview (--xds-auth token)",
    },
];
