//! Certificates for TLS listeners: read and checked when a config is prepared (so `poplar
//! check` finds a missing file, a key that is not the certificate's or a file that is not
//! PEM), and chosen per handshake by the name the client asks for (SNI).
//!
//! Choice, as nginx and Caddy make it: a certificate whose DNS names include the asked name
//! exactly; else one with a wildcard for its parent (`*.example.com` covers `a.example.com`,
//! not `example.com` nor `a.b.example.com`); else the listener's first certificate, also for
//! clients that send no name. Among certificates naming the same name the earlier wins.
//!
//! A listener's [`Resolver`] holds its certificates behind a swap, so a reload can replace
//! them (a renewed certificate) without closing the socket.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The crypto Pingora's rustls back end installs (ring): keys are loaded with the same.
fn provider() -> Arc<CryptoProvider> {
    pingora_core::tls::install_default_crypto_provider();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// One certificate chain with its key, and the names it is for.
struct Loaded {
    key: Arc<CertifiedKey>,
    names: Vec<String>,
}

/// A listener's certificates, indexed by name.
pub struct Certificates {
    first: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the parent a wildcard covers: `example.com` for `*.example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// Every DNS name the certificates are for, in file order (for `Debug`).
    names: Vec<String>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("names", &self.names)
            .finish()
    }
}

impl Certificates {
    /// Reads each `(cert, key)` pair of PEM files. `Err` holds, per failing pair, its index
    /// in `pairs`, whether the key file (rather than the cert) is at fault, and what is wrong.
    pub fn load(pairs: &[(&Path, &Path)]) -> Result<Certificates, Vec<(usize, bool, String)>> {
        let provider = provider();
        let mut loaded = Vec::new();
        let mut errors = Vec::new();
        for (i, (cert, key)) in pairs.iter().enumerate() {
            match load_pair(cert, key, &provider) {
                Ok(pair) => loaded.push(pair),
                Err((is_key, message)) => errors.push((i, is_key, message)),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Certificates::index(loaded).ok_or_else(|| vec![(0, false, "no certificates".into())])
    }

    /// A self-signed certificate for `names`, made now (the demo's).
    pub fn self_signed(names: &[&str]) -> anyhow::Result<Certificates> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let made = rcgen::generate_simple_self_signed(names)?;
        let (cert, key) = (made.cert.pem(), made.signing_key.serialize_pem());
        let what = ["the certificate".to_string(), "the key".to_string()];
        let loaded = from_pem(cert.as_bytes(), key.as_bytes(), &what, &provider())
            .map_err(|(_, message)| anyhow::anyhow!(message))?;
        Certificates::index(vec![loaded]).ok_or_else(|| anyhow::anyhow!("no certificate"))
    }

    fn index(loaded: Vec<Loaded>) -> Option<Certificates> {
        let first = loaded.first()?.key.clone();
        let (mut exact, mut wildcard, mut names) = (HashMap::new(), HashMap::new(), Vec::new());
        for pair in loaded {
            for name in pair.names {
                let table = match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()),
                    None => exact.entry(name.clone()),
                };
                table.or_insert_with(|| pair.key.clone());
                names.push(name);
            }
        }
        Some(Certificates {
            first,
            exact,
            wildcard,
            names,
        })
    }

    /// The certificate for a client asking for `name` (none: the first).
    pub fn choose(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name.map(|n| n.trim_end_matches('.').to_ascii_lowercase()) else {
            return self.first.clone();
        };
        if let Some(key) = self.exact.get(&name) {
            return key.clone();
        }
        let parent = name.split_once('.').map(|(_, parent)| parent);
        parent
            .and_then(|p| self.wildcard.get(p))
            .unwrap_or(&self.first)
            .clone()
    }
}

fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<Loaded, (bool, String)> {
    let shown = |p: &Path| format!("{:?}", p.display().to_string());
    let read = |path: &Path, is_key| {
        std::fs::read(path).map_err(|e| (is_key, format!("cannot read {}: {e}", shown(path))))
    };
    let (cert_pem, key_pem) = (read(cert, false)?, read(key, true)?);
    let names = [shown(cert), shown(key)];
    from_pem(&cert_pem, &key_pem, &names, provider)
}

/// A certificate chain and its key from PEM text; `names` are how errors call the two.
fn from_pem(
    cert: &[u8],
    key: &[u8],
    [cert_name, key_name]: &[String; 2],
    provider: &CryptoProvider,
) -> Result<Loaded, (bool, String)> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| (false, format!("{cert_name} is not PEM: {e}")))?;
    if chain.is_empty() {
        return Err((false, format!("no certificate in {cert_name}")));
    }
    let secret = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| (true, format!("no private key in {key_name}: {e}")))?;
    let names = dns_names(&chain[0]).map_err(|e| (false, format!("{cert_name}: {e}")))?;
    let key = CertifiedKey::from_der(chain, secret, provider).map_err(|e| {
        (
            true,
            format!("{key_name} is not the key of {cert_name}: {e}"),
        )
    })?;
    Ok(Loaded {
        key: Arc::new(key),
        names,
    })
}

/// The DNS names of a certificate's subject alternative names, lowercased; a certificate
/// past its end date is logged (it still serves: the operator decides).
fn dns_names(cert: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    if !parsed.validity().is_valid() {
        log::warn!(
            "certificate for {} is outside its validity ({} to {})",
            parsed.subject(),
            parsed.validity().not_before,
            parsed.validity().not_after
        );
    }
    let Ok(Some(alt)) = parsed.subject_alternative_name() else {
        return Ok(Vec::new());
    };
    let names = alt
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
            _ => None,
        });
    Ok(names.collect())
}

/// A listener's certificate choice, for rustls; [`Resolver::replace`] swaps in new ones.
pub struct Resolver(ArcSwap<Certificates>);

impl Resolver {
    pub fn new(certificates: Arc<Certificates>) -> Resolver {
        Resolver(ArcSwap::new(certificates))
    }

    pub fn replace(&self, certificates: Arc<Certificates>) {
        self.0.store(certificates);
    }
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.load().fmt(f)
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().choose(hello.server_name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(names: &[&str]) -> Loaded {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let made = rcgen::generate_simple_self_signed(names.clone()).expect("a test certificate");
        let chain = vec![made.cert.der().clone()];
        let key = PrivateKeyDer::try_from(made.signing_key.serialize_der()).expect("a key");
        let key = CertifiedKey::from_der(chain, key, &provider()).expect("a matching key");
        Loaded {
            key: Arc::new(key),
            names,
        }
    }

    #[test]
    fn the_exact_name_wins_then_the_wildcard_then_the_first() {
        let certificates = Certificates::index(vec![
            pair(&["default.test"]),
            pair(&["*.example.test"]),
            pair(&["a.example.test", "other.test"]),
        ])
        .expect("three certificates");
        let chosen = |name: Option<&str>| {
            let key = certificates.choose(name);
            let cert = key.end_entity_cert().expect("a chain");
            dns_names(cert).expect("names")[0].clone()
        };
        assert_eq!(chosen(Some("a.example.test")), "a.example.test");
        assert_eq!(chosen(Some("A.Example.Test.")), "a.example.test");
        assert_eq!(chosen(Some("b.example.test")), "*.example.test");
        assert_eq!(chosen(Some("example.test")), "default.test");
        assert_eq!(chosen(Some("x.b.example.test")), "default.test");
        assert_eq!(chosen(Some("other.test")), "a.example.test");
        assert_eq!(chosen(None), "default.test");
    }
}
