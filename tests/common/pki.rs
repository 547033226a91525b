//! The tests' certificate authority: one self-signed CA that issues server and client
//! certificates, written once here rather than in each suite.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};

/// A leaf certificate and its key, PEM.
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

/// A self-signed CA named `name`.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A subject alternative name of a leaf.
pub enum San<'a> {
    Dns(&'a str),
    Ip(&'a str),
    Uri(&'a str),
}

impl Ca {
    /// A new CA; its own common name keeps OpenSSL from taking a leaf that rcgen names the
    /// same way for self-signed.
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `sans`, signed by this CA.
    pub fn issue(&self, sans: &[San<'_>]) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        for san in sans {
            params.subject_alt_names.push(match san {
                San::Dns(d) => SanType::DnsName((*d).try_into().unwrap()),
                San::Ip(ip) => SanType::IpAddress(ip.parse().unwrap()),
                San::Uri(u) => SanType::URI((*u).try_into().unwrap()),
            });
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}
