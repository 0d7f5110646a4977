//! SPIFFE identities: who a workload is, as a certificate says it (`spiffe://TD/svc/NAME`)
//! and as a policy names it (`NAME`, `gateway:NAME`, `system:NAME`).
//!
//! Only the three shapes ieum issues are ids here: one kind segment (`svc`, `gateway`,
//! `system`) and one DNS-1123 name. Anything else (more segments, a query, a port,
//! percent-encoding, upper case) is refused, so an id has exactly one spelling and two ids
//! compare equal exactly when their strings do.

use std::fmt;
use std::str::FromStr;

use ieum_model::Name;

/// The trust domain used when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "ieum.local";

/// The longest trust domain: a DNS name.
const MAX_TRUST_DOMAIN_LEN: usize = 253;

/// A malformed trust domain, SPIFFE id or principal; the message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The trust domain is not a lowercase DNS name.
    #[error("trust domain `{value}`: {reason}")]
    TrustDomain {
        /// What was given.
        value: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// The URI is not one of the SPIFFE ids ieum issues.
    #[error("SPIFFE id `{value}`: {reason}")]
    SpiffeId {
        /// What was given.
        value: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// The principal is not `NAME`, `gateway:NAME` or `system:NAME`.
    #[error("principal `{value}`: {reason}")]
    Principal {
        /// What was given.
        value: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
}

/// The trust domain: the name of one mesh, the authority part of every SPIFFE id it issues
/// (`ieum.local` unless configured). Peers of another trust domain are not of this mesh,
/// even when their certificates chain to a trusted root.
///
/// A lowercase DNS name: labels of `a-z`, `0-9` and `-` separated by dots.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Checks `s` as a trust domain; the error says what to change.
    pub fn parse(s: &str) -> Result<TrustDomain, IdError> {
        let fail = |reason: String| IdError::TrustDomain {
            value: s.to_owned(),
            reason,
        };
        if s.is_empty() {
            return Err(fail("must not be empty".into()));
        }
        if s.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(fail(format!(
                "must be at most {MAX_TRUST_DOMAIN_LEN} characters (is {})",
                s.len()
            )));
        }
        for label in s.split('.') {
            Name::parse(label).map_err(|why| {
                fail(format!(
                    "label `{label}` {}: write a lowercase DNS name such as `{DEFAULT_TRUST_DOMAIN}`",
                    if label.is_empty() {
                        "is empty".to_owned()
                    } else {
                        format!("is not a DNS label ({why})")
                    }
                ))
            })?;
        }
        Ok(TrustDomain(s.to_owned()))
    }

    /// The trust domain as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TrustDomain {
    /// `ieum.local`.
    fn default() -> TrustDomain {
        TrustDomain(DEFAULT_TRUST_DOMAIN.to_owned())
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = IdError;
    fn from_str(s: &str) -> Result<TrustDomain, IdError> {
        TrustDomain::parse(s)
    }
}

/// What a workload is within its trust domain. Its [`Display`](fmt::Display) is the
/// principal that policies name: `orders`, `gateway:edge`, `system:coordinator`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Workload {
    /// A service's sidecar: `spiffe://TD/svc/NAME`, principal `NAME`.
    Service(Name),
    /// A gateway: `spiffe://TD/gateway/NAME`, principal `gateway:NAME`.
    Gateway(Name),
    /// A part of ieum itself (the saga coordinator's outgoing calls are
    /// `spiffe://TD/system/coordinator`), principal `system:NAME`.
    System(Name),
}

impl Workload {
    /// The saga and flow coordinator inside `ieum server`: `system:coordinator`.
    pub fn coordinator() -> Workload {
        Workload::System(Name::parse("coordinator").expect("`coordinator` is a DNS-1123 label"))
    }

    /// Parses a principal: `NAME`, `gateway:NAME` or `system:NAME`.
    pub fn parse_principal(s: &str) -> Result<Workload, IdError> {
        let fail = |reason: String| IdError::Principal {
            value: s.to_owned(),
            reason,
        };
        let (kind, name) = match s.split_once(':') {
            None => ("", s),
            Some((kind, name)) => (kind, name),
        };
        let make: fn(Name) -> Workload = match kind {
            "" => Workload::Service,
            "gateway" => Workload::Gateway,
            "system" => Workload::System,
            other => {
                return Err(fail(format!(
                    "unknown kind `{other}`: write a service name (`orders`), `gateway:NAME` or `system:NAME`"
                )));
            }
        };
        let name = Name::parse(name).map_err(|why| fail(format!("the name {why}")))?;
        Ok(make(name))
    }

    /// The principal: `orders`, `gateway:edge`, `system:coordinator`.
    pub fn principal(&self) -> String {
        self.to_string()
    }

    /// The name, without its kind.
    pub fn name(&self) -> &Name {
        match self {
            Workload::Service(name) | Workload::Gateway(name) | Workload::System(name) => name,
        }
    }

    /// The path segment of the kind in a SPIFFE id.
    fn segment(&self) -> &'static str {
        match self {
            Workload::Service(_) => "svc",
            Workload::Gateway(_) => "gateway",
            Workload::System(_) => "system",
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Service(name) => write!(f, "{name}"),
            Workload::Gateway(name) => write!(f, "gateway:{name}"),
            Workload::System(name) => write!(f, "system:{name}"),
        }
    }
}

impl FromStr for Workload {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Workload, IdError> {
        Workload::parse_principal(s)
    }
}

/// A workload's SPIFFE id, the one URI SAN of its certificate:
/// `spiffe://ieum.local/svc/orders`. Its [`Display`](fmt::Display) is the URI.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    /// The mesh the workload belongs to.
    trust_domain: TrustDomain,
    /// What the workload is in that mesh.
    workload: Workload,
}

impl SpiffeId {
    /// The id of `workload` in `trust_domain`.
    pub fn new(trust_domain: TrustDomain, workload: Workload) -> SpiffeId {
        SpiffeId {
            trust_domain,
            workload,
        }
    }

    /// The id of service `name`: `spiffe://TD/svc/NAME`.
    pub fn service(trust_domain: TrustDomain, name: Name) -> SpiffeId {
        SpiffeId::new(trust_domain, Workload::Service(name))
    }

    /// Parses `spiffe://TD/svc/NAME`, `spiffe://TD/gateway/NAME` or
    /// `spiffe://TD/system/NAME`.
    pub fn parse(s: &str) -> Result<SpiffeId, IdError> {
        let fail = |reason: String| IdError::SpiffeId {
            value: s.to_owned(),
            reason,
        };
        const SHAPE: &str = "write spiffe://TRUST_DOMAIN/svc/NAME, …/gateway/NAME or …/system/NAME";
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| fail(format!("must start with `spiffe://`: {SHAPE}")))?;
        if let Some(c) = rest.chars().find(|c| matches!(c, '?' | '#' | '%' | '@')) {
            return Err(fail(format!(
                "contains `{c}`: a SPIFFE id has no query, fragment, user or percent-encoding"
            )));
        }
        let (domain, path) = rest
            .split_once('/')
            .ok_or_else(|| fail(format!("has no path: {SHAPE}")))?;
        let trust_domain = TrustDomain::parse(domain).map_err(|e| fail(e.to_string()))?;
        let (kind, name) = path.split_once('/').ok_or_else(|| {
            fail(format!(
                "the path `/{path}` needs a kind and a name: {SHAPE}"
            ))
        })?;
        let make: fn(Name) -> Workload = match kind {
            "svc" => Workload::Service,
            "gateway" => Workload::Gateway,
            "system" => Workload::System,
            other => return Err(fail(format!("unknown kind `{other}`: {SHAPE}"))),
        };
        let name = Name::parse(name).map_err(|why| fail(format!("the name {why}")))?;
        Ok(SpiffeId::new(trust_domain, make(name)))
    }

    /// The id of the workload a policy calls `principal` (`orders`, `gateway:edge`,
    /// `system:coordinator`) in `trust_domain`.
    pub fn from_principal(trust_domain: TrustDomain, principal: &str) -> Result<SpiffeId, IdError> {
        Ok(SpiffeId::new(
            trust_domain,
            Workload::parse_principal(principal)?,
        ))
    }

    /// The mesh the workload belongs to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// What the workload is.
    pub fn workload(&self) -> &Workload {
        &self.workload
    }

    /// The principal policies name it by: `orders`, `gateway:edge`, `system:coordinator`.
    /// The trust domain is not part of it: a policy only ever sees peers of its own mesh.
    pub fn principal(&self) -> String {
        self.workload.principal()
    }

    /// The URI, as in the certificate: `spiffe://ieum.local/svc/orders`.
    pub fn uri(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/{}/{}",
            self.trust_domain,
            self.workload.segment(),
            self.workload.name()
        )
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<SpiffeId, IdError> {
        SpiffeId::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    #[test]
    fn trust_domains_are_lowercase_dns_names() {
        assert_eq!(TrustDomain::default().as_str(), "ieum.local");
        for ok in ["ieum.local", "prod", "a-b.example.com", "x1.y2"] {
            assert_eq!(TrustDomain::parse(ok).unwrap().as_str(), ok);
        }
        for (bad, why) in [
            ("", "empty"),
            ("Ieum.local", "contains `I`"),
            ("ieum..local", "is empty"),
            (".ieum", "is empty"),
            ("ieum.local:8443", "contains `:`"),
            ("ieum_local", "contains `_`"),
            ("-ieum.local", "start and end"),
        ] {
            let err = TrustDomain::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let long = format!("{}.local", "a".repeat(250));
        assert!(
            TrustDomain::parse(&long)
                .unwrap_err()
                .to_string()
                .contains("at most 253")
        );
    }

    #[test]
    fn ids_format_and_parse_for_every_kind() {
        let td = TrustDomain::default();
        let cases = [
            (
                Workload::Service(name("orders")),
                "spiffe://ieum.local/svc/orders",
                "orders",
            ),
            (
                Workload::Gateway(name("edge")),
                "spiffe://ieum.local/gateway/edge",
                "gateway:edge",
            ),
            (
                Workload::coordinator(),
                "spiffe://ieum.local/system/coordinator",
                "system:coordinator",
            ),
        ];
        for (workload, uri, principal) in cases {
            let id = SpiffeId::new(td.clone(), workload.clone());
            assert_eq!(id.uri(), uri);
            assert_eq!(id.principal(), principal);
            assert_eq!(SpiffeId::parse(uri).unwrap(), id);
            assert_eq!(uri.parse::<SpiffeId>().unwrap(), id);
            assert_eq!(SpiffeId::from_principal(td.clone(), principal).unwrap(), id);
            assert_eq!(principal.parse::<Workload>().unwrap(), workload);
        }
        let other = SpiffeId::parse("spiffe://prod.example/svc/orders").unwrap();
        assert_eq!(other.trust_domain().as_str(), "prod.example");
        assert_eq!(other.workload(), &Workload::Service(name("orders")));
        assert_eq!(
            SpiffeId::service(td, name("stock")).uri(),
            "spiffe://ieum.local/svc/stock"
        );
    }

    #[test]
    fn ids_other_than_the_three_shapes_are_refused_with_a_reason() {
        for (bad, why) in [
            (
                "https://ieum.local/svc/orders",
                "must start with `spiffe://`",
            ),
            (
                "SPIFFE://ieum.local/svc/orders",
                "must start with `spiffe://`",
            ),
            ("spiffe://ieum.local", "has no path"),
            ("spiffe://ieum.local/", "needs a kind and a name"),
            ("spiffe://ieum.local/svc", "needs a kind and a name"),
            ("spiffe://ieum.local/svc/", "must not be empty"),
            ("spiffe://ieum.local/svc/orders/", "contains `/`"),
            ("spiffe://ieum.local/svc/orders/v2", "contains `/`"),
            (
                "spiffe://ieum.local/ns/default/sa/orders",
                "unknown kind `ns`",
            ),
            ("spiffe://ieum.local/pod/orders", "unknown kind `pod`"),
            ("spiffe://ieum.local/svc/Orders", "contains `O`"),
            ("spiffe://IEUM.local/svc/orders", "contains `I`"),
            ("spiffe://ieum.local:443/svc/orders", "contains `:`"),
            ("spiffe://ieum.local/svc/orders?x=1", "contains `?`"),
            ("spiffe://ieum.local/svc/orders#x", "contains `#`"),
            ("spiffe://ieum.local/svc/ord%65rs", "contains `%`"),
            ("spiffe://u@ieum.local/svc/orders", "contains `@`"),
            ("spiffe:///svc/orders", "must not be empty"),
        ] {
            let err = SpiffeId::parse(bad).unwrap_err();
            assert!(matches!(err, IdError::SpiffeId { .. }), "{bad}: {err:?}");
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn principals_other_than_the_three_shapes_are_refused_with_a_reason() {
        for (bad, why) in [
            ("", "must not be empty"),
            ("svc:orders", "unknown kind `svc`"),
            ("gateway:", "must not be empty"),
            ("Orders", "contains `O`"),
            ("system:coordinator:x", "contains `:`"),
            ("spiffe://ieum.local/svc/orders", "unknown kind `spiffe`"),
        ] {
            let err = Workload::parse_principal(bad).unwrap_err();
            assert!(matches!(err, IdError::Principal { .. }), "{bad}: {err:?}");
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
    }
}
