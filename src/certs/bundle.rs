//! The pure core of certgen: which names the serving certificate covers, how a
//! CA and a serving certificate are minted, and whether a stored pair can be
//! kept. No I/O and no clock: callers pass `now`.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;
use x509_parser::time::ASN1Time;
use zeroize::Zeroizing;

/// File (and Secret key) names of the standard `kubernetes.io/tls` layout.
pub const CA_FILE: &str = "ca.crt";
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// The CA signs exactly one serving certificate and its key is then dropped,
/// so a long life costs nothing: nobody can issue anything else under it.
pub const CA_VALIDITY: Duration = Duration::from_secs(3650 * 24 * 60 * 60);
pub const SERVING_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Certificates start this long before `now`, so an API server or a webhook
/// replica whose clock lags a little still accepts a fresh certificate.
const BACKDATE: Duration = Duration::from_secs(60 * 60);

const CERTIFICATE_LABEL: &str = "CERTIFICATE";
const PEM_BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const PEM_END: &str = "-----END CERTIFICATE-----";

/// The webhook Service the serving certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookIdentity {
    pub service: String,
    pub namespace: String,
}

impl WebhookIdentity {
    pub fn new(service: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            namespace: namespace.into(),
        }
    }

    /// Every name a client inside the cluster may use for the Service; the API
    /// server itself uses `<svc>.<ns>.svc`.
    pub fn dns_names(&self) -> Vec<String> {
        let Self { service, namespace } = self;
        vec![
            service.clone(),
            format!("{service}.{namespace}"),
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
        ]
    }
}

/// A serving certificate, its key and the CA bundle clients trust, all PEM.
///
/// `ca_pem` holds the CA that issued `cert_pem` first and, during a rotation,
/// the previous CA after it (at most two). The CA's private key is never part
/// of a bundle: see [`generate`].
#[derive(Clone, PartialEq, Eq)]
pub struct CertBundle {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
}

impl fmt::Debug for CertBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertBundle")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl CertBundle {
    /// When the serving certificate expires; `None` when it does not parse.
    pub fn not_after(&self) -> Option<SystemTime> {
        let pem = parse_pem(&self.cert_pem)?;
        let cert = pem.parse_x509().ok()?;
        Some(from_unix_seconds(cert.validity().not_after.timestamp()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{0:?} cannot be written as a certificate validity date")]
    Time(SystemTime),
    #[error("cannot generate the {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
}

/// Whether a stored bundle can stay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Reuse,
    Replace(ReplaceReason),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplaceReason {
    /// No bundle, or one of its three parts is absent.
    Missing,
    /// This part (named by its file) is not a PEM certificate or key.
    Unparseable(&'static str),
    /// The key is not the serving certificate's key.
    KeyMismatch,
    /// The serving certificate was not issued by the first CA of the bundle.
    NotIssuedByCa,
    /// The serving certificate may not authenticate TLS servers.
    NotServerAuth,
    /// The serving certificate lacks these names of the Service.
    MissingNames(Vec<String>),
    /// The CA or the serving certificate starts in the future.
    NotYetValid(&'static str),
    /// The CA or the serving certificate expires within the minimum validity.
    Expiring {
        which: &'static str,
        not_after: SystemTime,
    },
}

impl fmt::Display for ReplaceReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("no complete bundle stored"),
            Self::Unparseable(part) => write!(f, "{part} does not parse"),
            Self::KeyMismatch => write!(f, "{KEY_FILE} does not match {CERT_FILE}"),
            Self::NotIssuedByCa => write!(f, "{CERT_FILE} is not signed by the CA in {CA_FILE}"),
            Self::NotServerAuth => write!(f, "{CERT_FILE} lacks the serverAuth usage"),
            Self::MissingNames(names) => {
                write!(f, "{CERT_FILE} does not cover {}", names.join(", "))
            }
            Self::NotYetValid(which) => write!(f, "the {which} is not valid yet"),
            Self::Expiring { which, not_after } => {
                write!(f, "the {which} expires at {}", format_time(*not_after))
            }
        }
    }
}

/// Mints a fresh CA and a serving certificate for `identity`, valid from
/// shortly before `now`.
///
/// The CA's private key is dropped on return. Storing it would let anyone
/// who can read the Secret mint more certificates the API server trusts for
/// this webhook; without it, a renewal is simply a new CA plus a new
/// certificate, and [`renew`] keeps the previous CA trusted while the
/// certificate it issued may still be served.
pub fn generate(identity: &WebhookIdentity, now: SystemTime) -> Result<CertBundle, CertError> {
    let not_before = now.checked_sub(BACKDATE).ok_or(CertError::Time(now))?;
    let generate_error = |what| move |source| CertError::Generate { what, source };

    let ca_key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate_error("CA key"))?;
    let mut ca_params = CertificateParams::default();
    // A distinct name per CA lets operators tell the two CAs of a rotation apart.
    ca_params.distinguished_name =
        distinguished_name(format!("kloak-webhook-ca@{}", unix_seconds(now)));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = asn1_time(not_before)?.to_datetime();
    ca_params.not_after = asn1_time(after(not_before, CA_VALIDITY)?)?.to_datetime();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(generate_error("CA"))?;

    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate_error("serving key"))?;
    let mut params =
        CertificateParams::new(identity.dns_names()).map_err(generate_error("serving names"))?;
    params.distinguished_name =
        distinguished_name(format!("{}.{}.svc", identity.service, identity.namespace));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = asn1_time(not_before)?.to_datetime();
    params.not_after = asn1_time(after(not_before, SERVING_VALIDITY)?)?.to_datetime();
    let cert = params
        .signed_by(&key, &ca)
        .map_err(generate_error("serving certificate"))?;

    Ok(CertBundle {
        ca_pem: with_newline(ca.pem()),
        cert_pem: with_newline(cert.pem()),
        key_pem: Zeroizing::new(key.serialize_pem()),
    })
}

/// [`generate`], and keep the previous bundle's CA in the new CA bundle while
/// the certificate it issued is still valid: webhook replicas that have not
/// picked up the new certificate yet keep being trusted during the rollout.
/// Only the previous bundle's first (issuing) CA is carried over, so a bundle
/// never holds more than two CAs.
pub fn renew(
    identity: &WebhookIdentity,
    previous: Option<&CertBundle>,
    now: SystemTime,
) -> Result<CertBundle, CertError> {
    let mut bundle = generate(identity, now)?;
    if let Some(old_ca) = previous.and_then(|previous| still_needed_ca(previous, now)) {
        bundle.ca_pem.push_str(old_ca);
        bundle.ca_pem.push('\n');
    }
    Ok(bundle)
}

/// Decides whether `existing` can stay for `identity` at `now`: it must parse,
/// its key must match, the serving certificate must be issued by the bundle's
/// first CA for serverAuth and cover every name of the Service, and both
/// certificates must stay valid for at least `min_validity`.
pub fn assess(
    existing: Option<&CertBundle>,
    identity: &WebhookIdentity,
    now: SystemTime,
    min_validity: Duration,
) -> Verdict {
    match existing.map(|bundle| check(bundle, identity, now, min_validity)) {
        None => Verdict::Replace(ReplaceReason::Missing),
        Some(Ok(())) => Verdict::Reuse,
        Some(Err(reason)) => Verdict::Replace(reason),
    }
}

fn check(
    bundle: &CertBundle,
    identity: &WebhookIdentity,
    now: SystemTime,
    min_validity: Duration,
) -> Result<(), ReplaceReason> {
    let ca_pem = certificate_blocks(&bundle.ca_pem)
        .next()
        .and_then(parse_pem)
        .ok_or(ReplaceReason::Unparseable(CA_FILE))?;
    let ca = ca_pem
        .parse_x509()
        .map_err(|_| ReplaceReason::Unparseable(CA_FILE))?;
    let leaf_pem = parse_pem(&bundle.cert_pem).ok_or(ReplaceReason::Unparseable(CERT_FILE))?;
    let leaf = leaf_pem
        .parse_x509()
        .map_err(|_| ReplaceReason::Unparseable(CERT_FILE))?;
    let key =
        KeyPair::from_pem(&bundle.key_pem).map_err(|_| ReplaceReason::Unparseable(KEY_FILE))?;

    if key.public_key_raw() != leaf.public_key().subject_public_key.data.as_ref() {
        return Err(ReplaceReason::KeyMismatch);
    }
    if !issued_by(&leaf, &ca) {
        return Err(ReplaceReason::NotIssuedByCa);
    }
    let server_auth = matches!(leaf.extended_key_usage(), Ok(Some(eku)) if eku.value.server_auth);
    if !server_auth {
        return Err(ReplaceReason::NotServerAuth);
    }
    let covered = dns_names(&leaf);
    let missing: Vec<String> = identity
        .dns_names()
        .into_iter()
        .filter(|name| {
            !covered
                .iter()
                .any(|covered| covered.eq_ignore_ascii_case(name))
        })
        .collect();
    if !missing.is_empty() {
        return Err(ReplaceReason::MissingNames(missing));
    }

    let now_s = unix_seconds(now);
    let horizon = now_s.saturating_add(i64::try_from(min_validity.as_secs()).unwrap_or(i64::MAX));
    for (which, cert) in [("CA", &ca), ("serving certificate", &leaf)] {
        let validity = cert.validity();
        if validity.not_before.timestamp() > now_s {
            return Err(ReplaceReason::NotYetValid(which));
        }
        if validity.not_after.timestamp() < horizon {
            return Err(ReplaceReason::Expiring {
                which,
                not_after: from_unix_seconds(validity.not_after.timestamp()),
            });
        }
    }
    Ok(())
}

/// The issuing CA of `bundle`, as PEM text, when the certificate it issued
/// is still valid at `now` (and so may still be served by some replica).
fn still_needed_ca(bundle: &CertBundle, now: SystemTime) -> Option<&str> {
    let block = certificate_blocks(&bundle.ca_pem).next()?;
    let ca_pem = parse_pem(block)?;
    let ca = ca_pem.parse_x509().ok()?;
    let leaf_pem = parse_pem(&bundle.cert_pem)?;
    let leaf = leaf_pem.parse_x509().ok()?;
    let at = asn1_time(now).ok()?;
    (issued_by(&leaf, &ca) && ca.validity().is_valid_at(at) && leaf.validity().is_valid_at(at))
        .then_some(block)
}

fn issued_by(leaf: &X509Certificate<'_>, ca: &X509Certificate<'_>) -> bool {
    ca.is_ca()
        && leaf.issuer() == ca.subject()
        && leaf.verify_signature(Some(ca.public_key())).is_ok()
}

fn dns_names<'a>(cert: &'a X509Certificate<'_>) -> Vec<&'a str> {
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(name) => Some(*name),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The `CERTIFICATE` PEM blocks of `text`, markers included, in order. Kept
/// as text so a CA carried into the next bundle is byte-for-byte the one the
/// API server already trusts.
fn certificate_blocks(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        let start = rest.find(PEM_BEGIN)?;
        let end = start + rest[start..].find(PEM_END)? + PEM_END.len();
        let block = &rest[start..end];
        rest = &rest[end..];
        Some(block)
    })
}

/// The first PEM block of `text` when it is a certificate.
fn parse_pem(text: &str) -> Option<Pem> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(text.as_bytes()).ok()?;
    (pem.label == CERTIFICATE_LABEL).then_some(pem)
}

fn distinguished_name(common_name: String) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "kloak");
    name.push(DnType::CommonName, common_name);
    name
}

fn with_newline(mut pem: String) -> String {
    if !pem.ends_with('\n') {
        pem.push('\n');
    }
    pem
}

fn after(start: SystemTime, validity: Duration) -> Result<SystemTime, CertError> {
    start.checked_add(validity).ok_or(CertError::Time(start))
}

fn asn1_time(time: SystemTime) -> Result<ASN1Time, CertError> {
    ASN1Time::from_timestamp(unix_seconds(time)).map_err(|_| CertError::Time(time))
}

fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

fn from_unix_seconds(seconds: i64) -> SystemTime {
    let magnitude = Duration::from_secs(seconds.unsigned_abs());
    let shifted = if seconds >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    };
    shifted.unwrap_or(UNIX_EPOCH)
}

/// RFC 3339 in UTC, for logs and messages.
pub(crate) fn format_time(time: SystemTime) -> String {
    match asn1_time(time) {
        Ok(at) => {
            let at = at.to_datetime();
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                at.year(),
                u8::from(at.month()),
                at.day(),
                at.hour(),
                at.minute(),
                at.second()
            )
        }
        Err(_) => format!("{time:?}"),
    }
}

/// Whole days, for `--min-validity-days`.
pub(crate) fn days(days: u32) -> Duration {
    DAY * days
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::RootCertStore;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

    const MIN_VALIDITY: Duration = Duration::from_secs(30 * 24 * 60 * 60);

    fn identity() -> WebhookIdentity {
        WebhookIdentity::new("kloak-webhook", "kloak-system")
    }

    fn now() -> SystemTime {
        // A fixed instant keeps the tests independent of the wall clock.
        UNIX_EPOCH + Duration::from_secs(1_795_000_000)
    }

    fn fresh() -> CertBundle {
        generate(&identity(), now()).expect("generates")
    }

    fn ders(pem: &str) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("PEM certificates")
    }

    /// rustls's own WebPKI verifier, trusting only the bundle's CAs.
    fn verify(bundle: &CertBundle, name: &str, at: SystemTime) -> Result<(), rustls::Error> {
        let mut roots = RootCertStore::empty();
        for ca in ders(&bundle.ca_pem) {
            roots.add(ca)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|err| rustls::Error::General(err.to_string()))?;
        let leaf = ders(&bundle.cert_pem).remove(0);
        let server_name = ServerName::try_from(name.to_string()).expect("DNS name");
        let at = UnixTime::since_unix_epoch(at.duration_since(UNIX_EPOCH).expect("after 1970"));
        verifier
            .verify_server_cert(&leaf, &[], &server_name, &[], at)
            .map(|_| ())
    }

    #[test]
    fn the_identity_covers_every_cluster_name_of_the_service() {
        assert_eq!(
            identity().dns_names(),
            [
                "kloak-webhook",
                "kloak-webhook.kloak-system",
                "kloak-webhook.kloak-system.svc",
                "kloak-webhook.kloak-system.svc.cluster.local",
            ]
        );
    }

    #[test]
    fn generated_certificates_parse_with_the_expected_shape() {
        let bundle = fresh();
        let ca_pem = parse_pem(&bundle.ca_pem).expect("CA PEM");
        let ca = ca_pem.parse_x509().expect("CA parses");
        let leaf_pem = parse_pem(&bundle.cert_pem).expect("leaf PEM");
        let leaf = leaf_pem.parse_x509().expect("leaf parses");

        assert!(ca.is_ca());
        let ca_usage = ca.key_usage().expect("one").expect("present").value;
        assert!(ca_usage.key_cert_sign());
        assert!(ca.verify_signature(None).is_ok(), "the CA is self-signed");
        assert!(!leaf.is_ca());
        let eku = leaf
            .extended_key_usage()
            .expect("one")
            .expect("present")
            .value;
        assert!(eku.server_auth && !eku.client_auth && !eku.any);
        assert_eq!(dns_names(&leaf), identity().dns_names());
        assert!(issued_by(&leaf, &ca));

        for (cert, validity) in [(&ca, CA_VALIDITY), (&leaf, SERVING_VALIDITY)] {
            let span =
                cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
            assert_eq!(span, i64::try_from(validity.as_secs()).expect("fits"));
            assert!(cert
                .validity()
                .is_valid_at(asn1_time(now()).expect("in range")));
            // P-256: an uncompressed point is 65 bytes.
            assert_eq!(cert.public_key().subject_public_key.data.len(), 65);
        }
        let key = KeyPair::from_pem(&bundle.key_pem).expect("key parses");
        assert_eq!(key.algorithm(), &PKCS_ECDSA_P256_SHA256);
    }

    #[test]
    fn webpki_accepts_the_certificate_for_every_name_and_nothing_else() {
        let bundle = fresh();
        for name in identity().dns_names() {
            verify(&bundle, &name, now()).unwrap_or_else(|err| panic!("{name}: {err}"));
        }
        assert!(verify(&bundle, "other.kloak-system.svc", now()).is_err());
        let expired = now() + SERVING_VALIDITY;
        assert!(verify(&bundle, "kloak-webhook.kloak-system.svc", expired).is_err());

        let mut foreign = bundle.clone();
        foreign.ca_pem = fresh().ca_pem;
        assert!(verify(&foreign, "kloak-webhook.kloak-system.svc", now()).is_err());
    }

    #[test]
    fn a_fresh_bundle_is_reused() {
        assert_eq!(
            assess(Some(&fresh()), &identity(), now(), MIN_VALIDITY),
            Verdict::Reuse
        );
    }

    #[test]
    fn nothing_stored_is_replaced() {
        assert_eq!(
            assess(None, &identity(), now(), MIN_VALIDITY),
            Verdict::Replace(ReplaceReason::Missing)
        );
    }

    #[test]
    fn a_certificate_expiring_within_the_minimum_is_replaced() {
        let old = generate(&identity(), now() - 340 * DAY).expect("generates");
        let Verdict::Replace(ReplaceReason::Expiring { which, not_after }) =
            assess(Some(&old), &identity(), now(), MIN_VALIDITY)
        else {
            panic!("expected Expiring");
        };
        assert_eq!(which, "serving certificate");
        let left = not_after.duration_since(now()).expect("not expired yet");
        assert!(left < MIN_VALIDITY && left > 20 * DAY, "{left:?}");
        // The same bundle passes a shorter minimum.
        assert_eq!(
            assess(Some(&old), &identity(), now(), 7 * DAY),
            Verdict::Reuse
        );
    }

    #[test]
    fn a_certificate_from_the_future_is_replaced() {
        let early = generate(&identity(), now() + DAY).expect("generates");
        assert_eq!(
            assess(Some(&early), &identity(), now(), MIN_VALIDITY),
            Verdict::Replace(ReplaceReason::NotYetValid("CA"))
        );
    }

    #[test]
    fn a_certificate_for_another_service_is_replaced() {
        let other = generate(&WebhookIdentity::new("other", "kloak-system"), now()).expect("ok");
        assert_eq!(
            assess(Some(&other), &identity(), now(), MIN_VALIDITY),
            Verdict::Replace(ReplaceReason::MissingNames(identity().dns_names()))
        );
    }

    #[test]
    fn garbage_is_replaced_and_names_the_part() {
        let good = fresh();
        let cases = [
            (
                CA_FILE,
                CertBundle {
                    ca_pem: "garbage".into(),
                    ..good.clone()
                },
            ),
            (
                CERT_FILE,
                CertBundle {
                    cert_pem: "garbage".into(),
                    ..good.clone()
                },
            ),
            (
                KEY_FILE,
                CertBundle {
                    key_pem: Zeroizing::new("garbage".into()),
                    ..good.clone()
                },
            ),
            (
                CERT_FILE,
                CertBundle {
                    cert_pem: good.key_pem.to_string(),
                    ..good.clone()
                },
            ),
        ];
        for (part, bundle) in cases {
            assert_eq!(
                assess(Some(&bundle), &identity(), now(), MIN_VALIDITY),
                Verdict::Replace(ReplaceReason::Unparseable(part))
            );
        }
    }

    #[test]
    fn a_certificate_signed_by_another_ca_is_replaced() {
        let bundle = CertBundle {
            ca_pem: fresh().ca_pem,
            ..fresh()
        };
        assert_eq!(
            assess(Some(&bundle), &identity(), now(), MIN_VALIDITY),
            Verdict::Replace(ReplaceReason::NotIssuedByCa)
        );
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_replaced() {
        let bundle = CertBundle {
            key_pem: fresh().key_pem,
            ..fresh()
        };
        assert_eq!(
            assess(Some(&bundle), &identity(), now(), MIN_VALIDITY),
            Verdict::Replace(ReplaceReason::KeyMismatch)
        );
    }

    #[test]
    fn renewal_keeps_the_previous_ca_while_its_certificate_is_valid() {
        let old = generate(&identity(), now() - 340 * DAY).expect("generates");
        let renewed = renew(&identity(), Some(&old), now()).expect("renews");
        let cas = ders(&renewed.ca_pem);
        assert_eq!(cas.len(), 2);
        assert_eq!(cas[1], ders(&old.ca_pem)[0], "the old CA, byte for byte");
        assert_eq!(
            assess(Some(&renewed), &identity(), now(), MIN_VALIDITY),
            Verdict::Reuse
        );
        // Both the new certificate and the one old replicas still serve verify.
        verify(&renewed, "kloak-webhook.kloak-system.svc", now()).expect("new");
        let old_against_new = CertBundle {
            ca_pem: renewed.ca_pem.clone(),
            ..old.clone()
        };
        verify(&old_against_new, "kloak-webhook.kloak-system.svc", now()).expect("old");

        // Renewing again drops the oldest CA: never more than two.
        let again = renew(&identity(), Some(&renewed), now()).expect("renews");
        let cas_again = ders(&again.ca_pem);
        assert_eq!(cas_again.len(), 2);
        assert_eq!(cas_again[1], cas[0]);
    }

    #[test]
    fn renewal_drops_a_ca_whose_certificate_is_gone() {
        let expired = generate(&identity(), now() - 400 * DAY).expect("generates");
        let renewed = renew(&identity(), Some(&expired), now()).expect("renews");
        assert_eq!(ders(&renewed.ca_pem).len(), 1);

        let garbage = CertBundle {
            cert_pem: "garbage".into(),
            ..fresh()
        };
        let renewed = renew(&identity(), Some(&garbage), now()).expect("renews");
        assert_eq!(ders(&renewed.ca_pem).len(), 1);
        assert_eq!(
            ders(&renew(&identity(), None, now()).expect("ok").ca_pem).len(),
            1
        );
    }

    #[test]
    fn debug_output_hides_the_key() {
        let bundle = fresh();
        let shown = format!("{bundle:?}");
        assert!(shown.contains("<redacted>"));
        assert!(!shown.contains(bundle.key_pem.as_str()));
        assert!(!shown.contains("PRIVATE KEY"));
    }

    #[test]
    fn times_format_as_rfc3339() {
        assert_eq!(format_time(now()), "2026-11-18T11:06:40Z");
        let bundle = fresh();
        assert_eq!(
            bundle.not_after(),
            Some(now() - BACKDATE + SERVING_VALIDITY)
        );
    }
}
