//! What this crate reads from certificates (with `x509-parser`): the SPIFFE id of a leaf
//! and its validity, and the time conversions certificates need.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};

use crate::spiffe::SpiffeId;

/// What a workload certificate says about its holder.
#[derive(Debug, Clone)]
pub(crate) struct Leaf {
    /// The one SPIFFE id among its URI SANs.
    pub(crate) id: SpiffeId,
    /// The public key it certifies (SubjectPublicKeyInfo, DER).
    pub(crate) public_key: Vec<u8>,
    /// The start of validity.
    pub(crate) not_before: SystemTime,
    /// The end of validity.
    pub(crate) not_after: SystemTime,
    /// The API token that asked for it (see [`crate::Ca::issue_enrolled`]).
    pub(crate) enrolled_by: Option<String>,
}

/// Reads a workload certificate: it must carry exactly one URI SAN, a SPIFFE id of the
/// shape ieum issues. The error says what is wrong, for [`PeerError::NoIdentity`].
///
/// [`PeerError::NoIdentity`]: crate::PeerError::NoIdentity
pub(crate) fn leaf(cert: &CertificateDer<'_>) -> Result<Leaf, String> {
    let (_, parsed) =
        X509Certificate::from_der(cert).map_err(|e| format!("it cannot be parsed ({e})"))?;
    let id = match uri_sans(&parsed)[..] {
        [] => return Err("it has no URI SAN".into()),
        [uri] => SpiffeId::parse(uri).map_err(|e| e.to_string())?,
        ref many => {
            return Err(format!(
                "it has {} URI SANs where a mesh certificate has exactly one",
                many.len()
            ));
        }
    };
    Ok(Leaf {
        id,
        public_key: parsed.public_key().raw.to_vec(),
        not_before: system_time(parsed.validity().not_before.timestamp()),
        not_after: system_time(parsed.validity().not_after.timestamp()),
        enrolled_by: parsed
            .subject()
            .iter_organizational_unit()
            .filter_map(|ou| ou.as_str().ok())
            .find_map(|ou| ou.strip_prefix(crate::ca::ENROLLED_BY))
            .map(str::to_owned),
    })
}

/// The URI SANs of a certificate.
pub(crate) fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Vec<&'a str> {
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// `t` rounded down to a whole second, as X.509 stores it.
pub(crate) fn whole_seconds(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(_) => UNIX_EPOCH,
    }
}

/// A certificate time (seconds since the epoch) as a `SystemTime`; times before 1970
/// become 1970.
pub(crate) fn system_time(unix_seconds: i64) -> SystemTime {
    match u64::try_from(unix_seconds) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => UNIX_EPOCH,
    }
}

/// `t` as RFC 3339 in UTC to the second, for messages.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    i64::try_from(secs)
        .ok()
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        })
        .unwrap_or_else(|| format!("{secs} s after 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_rfc3339_and_round_to_seconds() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            whole_seconds(UNIX_EPOCH + Duration::from_millis(1_999)),
            UNIX_EPOCH + Duration::from_secs(1)
        );
        assert_eq!(system_time(-5), UNIX_EPOCH);
        assert_eq!(system_time(7), UNIX_EPOCH + Duration::from_secs(7));
    }
}
