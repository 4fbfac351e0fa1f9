//! Which member a verified peer certificate names.
//!
//! Owns: reading the DNS names (subject alternative names) of a certificate
//! that rustls has already verified against the cluster CA, and matching
//! them against the allowed member ids.
//! Must never: verify signatures itself (rustls did), or accept a
//! certificate that names no allowed member or more than one.

use crate::model::MemberId;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The one allowed member `cert_der` names, or why there is none.
pub(crate) fn member_of(cert_der: &[u8], allowed: &[MemberId]) -> Result<MemberId, String> {
    let (_, cert) =
        X509Certificate::from_der(cert_der).map_err(|e| format!("unreadable certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("unreadable subject alternative names: {e}"))?
        .ok_or_else(|| "certificate has no DNS name (subject alternative name)".to_string())?;
    let names: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|g| match g {
            GeneralName::DNSName(n) => Some(*n),
            _ => None,
        })
        .collect();
    // DNS names compare case-insensitively, as TLS name checks do; the
    // configured spelling is the one returned.
    let matching: Vec<&MemberId> = allowed
        .iter()
        .filter(|m| names.iter().any(|n| n.eq_ignore_ascii_case(m.as_str())))
        .collect();
    match matching.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(format!(
            "certificate names {names:?}, not an allowed member ({})",
            list(allowed)
        )),
        many => Err(format!(
            "certificate names several members ({}); a member certificate must name one",
            many.iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn list(ids: &[MemberId]) -> String {
    if ids.is_empty() {
        return "none configured".into();
    }
    ids.iter()
        .map(MemberId::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}
