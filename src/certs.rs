//! A development certificate authority for a cluster: `certs init`.
//!
//! Owns: generating the cluster CA (`ca.pem`, `ca.key`) and one certificate
//! and key per member (`<member>.pem`, `<member>.key`) whose name (CN and DNS
//! SAN) is the member id, the name the transport checks on every connection.
//! Must never: overwrite an existing file unless asked to, leave a private key
//! readable by others (keys are created 0600 before any byte is written), or
//! print key material.

use crate::config::check_member_id;
use crate::model::MemberId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How long generated certificates stay valid: a development CA is meant to
/// be replaced by the operator's own PKI long before this matters.
pub const VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Backdating of `not_before`, so members whose clocks lag a little accept a
/// certificate generated moments ago.
const BACKDATE: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("no members given")]
    NoMembers,
    #[error("member {member:?}: {reason}")]
    InvalidMember { member: String, reason: String },
    #[error("member {0} is listed twice")]
    DuplicateMember(MemberId),
    #[error("refusing to overwrite existing files: {} (use --force to replace them)", list(.0))]
    Exists(Vec<PathBuf>),
    #[error(
        "{present} exists but {missing} does not: the CA needs both to issue certificates \
         (restore {missing}, or use --force to create a new CA)"
    )]
    CaIncomplete { present: PathBuf, missing: PathBuf },
    #[error("cannot use the existing CA in {path}: {reason}")]
    CaUnreadable { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `init_certs` made a new CA or issued from the one it found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaOutcome {
    Created,
    /// `ca.pem` and `ca.key` were already there (members added later).
    Reused,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCert {
    pub member: MemberId,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What `init_certs` wrote, for the CLI to print.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertsReport {
    pub dir: PathBuf,
    pub ca: CaOutcome,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub members: Vec<IssuedCert>,
}

/// The file names `init_certs` uses inside its folder.
pub fn ca_cert_path(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}
pub fn ca_key_path(dir: &Path) -> PathBuf {
    dir.join("ca.key")
}
pub fn member_cert_path(dir: &Path, m: &MemberId) -> PathBuf {
    dir.join(format!("{m}.pem"))
}
pub fn member_key_path(dir: &Path, m: &MemberId) -> PathBuf {
    dir.join(format!("{m}.key"))
}

/// Create (or, with an existing `ca.pem` + `ca.key`, extend) a cluster CA in
/// `out` and issue one certificate per member.
///
/// Without `force`, nothing is overwritten: if any member file exists the
/// call fails before writing anything, and an existing CA is reused so
/// members can be added later. With `force`, a new CA and new member files
/// replace the old ones (each file is replaced atomically by a rename).
pub fn init_certs(
    out: &Path,
    members: &[MemberId],
    force: bool,
) -> Result<CertsReport, CertsError> {
    check_members(members)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CertsError::Io { path, source }
    };
    if !out.exists() {
        std::fs::create_dir_all(out).map_err(io(out))?;
        // The folder holds private keys; only the owner needs to list it.
        set_mode(out, 0o700)?;
    }

    let (ca_cert, ca_key) = (ca_cert_path(out), ca_key_path(out));
    if !force {
        let existing: Vec<PathBuf> = members
            .iter()
            .flat_map(|m| [member_cert_path(out, m), member_key_path(out, m)])
            .filter(|p| p.exists())
            .collect();
        if !existing.is_empty() {
            return Err(CertsError::Exists(existing));
        }
    }
    let reuse = !force && (ca_cert.exists() || ca_key.exists());
    let (issuer, outcome) = if reuse {
        (load_ca(&ca_cert, &ca_key)?, CaOutcome::Reused)
    } else {
        let key = KeyPair::generate()?;
        let params = ca_params();
        let cert = params.self_signed(&key)?;
        write_file(&ca_key, key.serialize_pem().as_bytes(), 0o600, force)?;
        write_file(&ca_cert, cert.pem().as_bytes(), 0o644, force)?;
        (Issuer::new(params, key), CaOutcome::Created)
    };

    let mut issued = Vec::with_capacity(members.len());
    for m in members {
        let key = KeyPair::generate()?;
        let cert = member_params(m)?.signed_by(&key, &issuer)?;
        let (cert_path, key_path) = (member_cert_path(out, m), member_key_path(out, m));
        // Key first: a watcher that sees the certificate change finds the
        // matching key already in place.
        write_file(&key_path, key.serialize_pem().as_bytes(), 0o600, force)?;
        write_file(&cert_path, cert.pem().as_bytes(), 0o644, force)?;
        issued.push(IssuedCert {
            member: m.clone(),
            cert: cert_path,
            key: key_path,
        });
    }
    // Make the renames durable.
    if let Ok(d) = std::fs::File::open(out) {
        let _ = d.sync_all();
    }
    Ok(CertsReport {
        dir: out.to_path_buf(),
        ca: outcome,
        ca_cert,
        ca_key,
        members: issued,
    })
}

fn check_members(members: &[MemberId]) -> Result<(), CertsError> {
    if members.is_empty() {
        return Err(CertsError::NoMembers);
    }
    let mut seen = BTreeSet::new();
    for m in members {
        let invalid = |reason: String| CertsError::InvalidMember {
            member: m.0.clone(),
            reason,
        };
        check_member_id(m.as_str()).map_err(invalid)?;
        // The id is the certificate's DNS name: it must be one TLS accepts
        // as a server name (e.g. no trailing '-').
        rustls_pki_types::DnsName::try_from(m.as_str())
            .map_err(|_| invalid("is not a valid DNS name (it is a certificate name)".into()))?;
        if m.as_str() == "ca" {
            return Err(invalid("\"ca\" is the CA's own file name".into()));
        }
        if !seen.insert(m) {
            return Err(CertsError::DuplicateMember(m.clone()));
        }
    }
    Ok(())
}

fn validity(p: &mut CertificateParams) {
    let now = SystemTime::now();
    p.not_before = (now - BACKDATE).into();
    p.not_after = (now + VALIDITY).into();
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "understudy cluster CA");
    p.distinguished_name = dn;
    // Path length 0: the CA signs member certificates only, never another CA.
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut p);
    p
}

fn member_params(m: &MemberId) -> Result<CertificateParams, CertsError> {
    let mut p = CertificateParams::new(vec![m.0.clone()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, m.as_str());
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Every member both accepts connections and dials them.
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    validity(&mut p);
    Ok(p)
}

fn load_ca(cert: &Path, key: &Path) -> Result<Issuer<'static, KeyPair>, CertsError> {
    match (cert.exists(), key.exists()) {
        (true, false) => {
            return Err(CertsError::CaIncomplete {
                present: cert.to_path_buf(),
                missing: key.to_path_buf(),
            });
        }
        (false, true) => {
            return Err(CertsError::CaIncomplete {
                present: key.to_path_buf(),
                missing: cert.to_path_buf(),
            });
        }
        _ => {}
    }
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| CertsError::Io {
            path: p.to_path_buf(),
            source,
        })
    };
    let unreadable = |p: &Path, reason: String| CertsError::CaUnreadable {
        path: p.to_path_buf(),
        reason,
    };
    let key_pair = KeyPair::from_pem(&read(key)?).map_err(|e| unreadable(key, e.to_string()))?;
    Issuer::from_ca_cert_pem(&read(cert)?, key_pair).map_err(|e| unreadable(cert, e.to_string()))
}

/// Write `bytes` to `path` through a temporary file in the same folder and a
/// rename, so readers (and the certificate watcher) never see half a file.
/// The temporary file is created 0600, so a key is never readable by others
/// even for an instant.
fn write_file(path: &Path, bytes: &[u8], mode: u32, overwrite: bool) -> Result<(), CertsError> {
    let io = |source| CertsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    set_mode(tmp.path(), mode)?;
    if overwrite {
        tmp.persist(path).map_err(|e| io(e.error))?;
    } else {
        // A file that appeared since the check is still not overwritten.
        tmp.persist_noclobber(path).map_err(|e| io(e.error))?;
    }
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<(), CertsError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        CertsError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> Result<(), CertsError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    fn ids(names: &[&str]) -> Vec<MemberId> {
        names.iter().map(|n| MemberId::new(*n)).collect()
    }

    fn parse_pem(path: &Path) -> Vec<u8> {
        let text = std::fs::read(path).unwrap();
        let (_, pem) = parse_x509_pem(&text).unwrap();
        pem.contents
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn writes_ca_and_member_certificates_with_the_member_name() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("certs");
        let r = init_certs(&out, &ids(&["a", "b", "node_1"]), false).unwrap();
        assert_eq!(r.ca, CaOutcome::Created);
        assert_eq!(r.members.len(), 3);
        #[cfg(unix)]
        {
            assert_eq!(mode(&r.ca_key), 0o600);
            assert_eq!(mode(&out), 0o700);
            for m in &r.members {
                assert_eq!(mode(&m.key), 0o600, "{}", m.key.display());
            }
        }
        let ca_der = parse_pem(&r.ca_cert);
        let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
        assert!(ca.is_ca());

        let der = parse_pem(&r.members[2].cert);
        let (_, c) = X509Certificate::from_der(&der).unwrap();
        let cn: Vec<_> = c.subject().iter_common_name().collect();
        assert_eq!(cn[0].as_str().unwrap(), "node_1");
        let san = c.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            vec![GeneralName::DNSName("node_1")]
        );
        let eku = c.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(!c.is_ca());
        assert_eq!(c.issuer(), ca.subject());
        let years = (c.validity().not_after.timestamp() - c.validity().not_before.timestamp())
            / (365 * 24 * 3600);
        assert!((9..=11).contains(&years), "{years}");
        // Signed by the CA.
        c.verify_signature(Some(ca.public_key())).unwrap();
    }

    #[test]
    fn refuses_to_overwrite_and_reuses_the_ca_for_new_members() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        init_certs(out, &ids(&["a", "b"]), false).unwrap();
        let ca_before = std::fs::read(ca_cert_path(out)).unwrap();
        let a_before = std::fs::read(member_cert_path(out, &MemberId::new("a"))).unwrap();

        let err = init_certs(out, &ids(&["c", "a"]), false).unwrap_err();
        assert!(
            matches!(err, CertsError::Exists(ref p) if p.len() == 2),
            "{err}"
        );
        assert!(err.to_string().contains("a.pem"), "{err}");
        // Nothing was written, not even the members that did not exist.
        assert!(!member_cert_path(out, &MemberId::new("c")).exists());

        let r = init_certs(out, &ids(&["c"]), false).unwrap();
        assert_eq!(r.ca, CaOutcome::Reused);
        assert_eq!(std::fs::read(ca_cert_path(out)).unwrap(), ca_before);
        let ca_der = parse_pem(&ca_cert_path(out));
        let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
        let c_der = parse_pem(&member_cert_path(out, &MemberId::new("c")));
        let (_, c) = X509Certificate::from_der(&c_der).unwrap();
        c.verify_signature(Some(ca.public_key())).unwrap();

        let r = init_certs(out, &ids(&["a"]), true).unwrap();
        assert_eq!(r.ca, CaOutcome::Created);
        assert_ne!(std::fs::read(ca_cert_path(out)).unwrap(), ca_before);
        assert_ne!(
            std::fs::read(member_cert_path(out, &MemberId::new("a"))).unwrap(),
            a_before
        );
    }

    #[test]
    fn refuses_bad_member_lists_and_a_half_ca() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        for bad in [
            vec![],
            ids(&["a", "a"]),
            ids(&["a b"]),
            ids(&["ca"]),
            ids(&["x-"]),
        ] {
            let err = init_certs(out, &bad, false).unwrap_err();
            assert!(
                matches!(
                    err,
                    CertsError::NoMembers
                        | CertsError::DuplicateMember(_)
                        | CertsError::InvalidMember { .. }
                ),
                "{bad:?}: {err}"
            );
        }
        assert_eq!(std::fs::read_dir(out).unwrap().count(), 0);

        init_certs(out, &ids(&["a"]), false).unwrap();
        std::fs::remove_file(ca_key_path(out)).unwrap();
        let err = init_certs(out, &ids(&["b"]), false).unwrap_err();
        assert!(matches!(err, CertsError::CaIncomplete { .. }), "{err}");
    }
}
