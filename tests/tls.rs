//! TLS and HTTP/2 at the edge, with certificates made at test time by a test CA and real
//! TLS clients (rustls, and reqwest over it).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here fails a test or a bench run

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{Key, free_addr, start, start_region, tasks_dir};
use poplar::demo::Origin;
use rcgen::{CertificateParams, CertifiedIssuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;

/// A test CA and the certificates it issued, as PEM files in a folder of their own.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertificateDer<'static>,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let issuer = common::test_ca();
        Pki {
            dir: tempfile::tempdir().unwrap(),
            ca: issuer.der().clone(),
            issuer,
        }
    }

    /// Issues a certificate for `names`; writes `<file>.pem` and `<file>.key`.
    fn issue(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let (cert_file, key_file) = (
            self.path(&format!("{file}.pem")),
            self.path(&format!("{file}.key")),
        );
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A rustls client config trusting this CA, offering `alpn`.
    fn client_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

/// The certificates' listing in a listener's YAML.
fn certificates(pairs: &[&(PathBuf, PathBuf)]) -> String {
    let shown = |p: &Path| format!("\"{}\"", p.display());
    let items: Vec<String> = pairs
        .iter()
        .map(|(cert, key)| format!("{{ cert: {}, key: {} }}", shown(cert), shown(key)))
        .collect();
    format!("[{}]", items.join(", "))
}

/// The DNS names of the certificate a server presented.
fn names_of(cert: &CertificateDer<'_>) -> Vec<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).unwrap();
    let alt = parsed.subject_alternative_name().unwrap().unwrap();
    alt.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

/// Accepts any certificate: to see which one a server chose for a name it has none for.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What a handshake with `addr`, naming `name` (an IP address sends no SNI), settled on:
/// the certificate's names, the TLS version and the ALPN protocol.
async fn handshake(
    config: rustls::ClientConfig,
    addr: SocketAddr,
    name: &str,
) -> std::io::Result<(Vec<String>, rustls::ProtocolVersion, Option<Vec<u8>>)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_string()).unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    let (_, conn) = tls.get_ref();
    let cert = &conn.peer_certificates().unwrap()[0];
    Ok((
        names_of(cert),
        conn.protocol_version().unwrap(),
        conn.alpn_protocol().map(<[u8]>::to_vec),
    ))
}

fn any_certificate(alpn: &[&[u8]]) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

#[tokio::test]
async fn the_certificate_is_chosen_by_sni_wildcards_included_with_tls13_and_alpn_h2() {
    let pki = Pki::new();
    let first = pki.issue("first", &["default.test"]);
    let exact = pki.issue("exact", &["a.example.test"]);
    let wild = pki.issue("wild", &["*.example.test"]);
    let (addr, admin) = (free_addr(), free_addr());
    let yaml = format!(
        "role: edge\nlisten:\n  - address: \"{addr}\"\n    tls: {{ certificates: {} }}\nadmin: {{ listen: \"{admin}\" }}\nroutes:\n  - match: {{ path_prefix: / }}\n    origin: \"127.0.0.1:9\"\n",
        certificates(&[&first, &wild, &exact])
    );
    let config = poplar::config::parse(&yaml, &tasks_dir()).unwrap();
    let _edge = start(&config);

    // Verified against the CA for the name asked: the right certificate, or no handshake.
    let trusted = pki.client_config(&[b"h2", b"http/1.1"]);
    for (name, want) in [
        ("a.example.test", "a.example.test"),
        ("b.example.test", "*.example.test"),
        ("default.test", "default.test"),
    ] {
        let (names, version, alpn) = handshake(trusted.clone(), addr, name).await.unwrap();
        assert_eq!(names, [want], "for {name}");
        assert_eq!(version, rustls::ProtocolVersion::TLSv1_3);
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    }
    // A name no certificate has, and no name at all: the first certificate.
    let any = any_certificate(&[b"http/1.1"]);
    for name in ["x.y.example.test", "unknown.test", "127.0.0.1"] {
        let (names, _, alpn) = handshake(any.clone(), addr, name).await.unwrap();
        assert_eq!(names, ["default.test"], "for {name}");
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    }
    let failed = || async {
        let text = common::metrics_text(admin).await;
        let line = text
            .lines()
            .find(|l| l.starts_with("poplar_tls_handshake_failures_total "))
            .unwrap_or_else(|| panic!("no handshake failure counter in {text}"));
        line.rsplit(' ').next().unwrap().parse::<u64>().unwrap()
    };
    let before = failed().await;
    // A client that does not trust the certificate fails its handshake; the next one is
    // served as before.
    let stranger = Pki::new().client_config(&[b"http/1.1"]);
    assert!(handshake(stranger, addr, "a.example.test").await.is_err());
    // Plain HTTP to the TLS port: the connection is closed, and nothing else changes.
    let mut plain = TcpStream::connect(addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(
        !got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(handshake(trusted, addr, "a.example.test").await.is_ok());
    // Both failures are counted (other servers in this process may add to the count).
    assert!(failed().await >= before + 2);
}

/// An HTTPS client for `names` at `addr`, trusting the test CA: HTTP/2 by ALPN, or only
/// HTTP/1.1.
fn https_client(pki: &Pki, addr: SocketAddr, names: &[&str], h2: bool) -> reqwest::Client {
    let alpn: &[&[u8]] = if h2 {
        &[b"h2", b"http/1.1"]
    } else {
        &[b"http/1.1"]
    };
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .tls_backend_preconfigured(pki.client_config(alpn));
    for name in names {
        builder = builder.resolve(name, addr);
    }
    if !h2 {
        builder = builder.http1_only();
    }
    builder.build().unwrap()
}

#[tokio::test]
async fn every_route_kind_answers_over_https_on_http1_and_http2() {
    let pki = Pki::new();
    let cert = pki.issue("edge", &["a.example.test"]);
    let origin = Origin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let key = Key::new();
    let region = start_region(&key, &["echo"]);
    let (tls, plain) = (free_addr(), free_addr());
    let dist = tasks_dir();
    let yaml = format!(
        "role: edge
listen:
  - address: \"{tls}\"
    tls: {{ certificates: {certs} }}
  - address: \"{plain}\"
threads: 2
forwarding: {{ key_file: {key} }}
regions:
  r1: {{ address: \"{region}\" }}
tasks:
  echo: {{ wasm: {echo} }}
  hello: {{ wasm: {hello} }}
routes:
  - match: {{ path_prefix: /echo }}
    task: echo
    placement: edge
  - match: {{ path_prefix: /far }}
    task: echo
    placement: region
  - match: {{ path_prefix: /cached }}
    task: hello
    placement: edge
    cache: {{ ttl: 1h }}
  - match: {{ path_prefix: / }}
    origin: \"{origin}\"
",
        certs = certificates(&[&cert]),
        key = key.path(),
        region = region.addr,
        origin = origin.addr,
        echo = dist.join("echo.wasm").display(),
        hello = dist.join("hello.wasm").display(),
    );
    let config = poplar::config::parse(&yaml, &dist).unwrap();
    let _edge = start(&config);
    let base = format!("https://a.example.test:{}", tls.port());
    for h2 in [false, true] {
        let client = https_client(&pki, tls, &["a.example.test"], h2);
        let version = if h2 {
            reqwest::Version::HTTP_2
        } else {
            reqwest::Version::HTTP_11
        };

        // An origin route: the origin hears the Host asked for and that the client came
        // over HTTPS.
        let resp = client.get(format!("{base}/page")).send().await.unwrap();
        assert_eq!(resp.version(), version);
        assert_eq!(resp.status(), 200);
        let authority = format!("a.example.test:{}", tls.port());
        assert_eq!(resp.headers()["x-origin-host"], authority.as_str());
        assert_eq!(resp.headers()["x-origin-forwarded-proto"], "https");
        assert_eq!(resp.text().await.unwrap(), "origin GET /page\n");

        // A task inline: the guest sees scheme https and the authority, as wasi:http gives
        // them; a body goes through whole.
        let resp = client
            .post(format!("{base}/echo?x=1"))
            .body("ping")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), version);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-poplar-placement"], "edge; reason=pinned");
        let uri = format!("https://{authority}/echo?x=1");
        assert_eq!(resp.headers()["x-echo-uri"], uri.as_str());
        assert_eq!(resp.text().await.unwrap(), "ping");

        // Forwarded to a region: signed there, where the guest still sees https.
        let resp = client.get(format!("{base}/far")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{:?}", resp.headers());
        assert!(common::placement(&resp).starts_with("region; name=r1"));
        let uri = format!("https://{authority}/far");
        assert_eq!(resp.headers()["x-echo-uri"], uri.as_str());

        // A cache hit (the first h1 request filled it).
        let resp = client.get(format!("{base}/cached")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let status = resp.headers()["cache-status"].to_str().unwrap().to_string();
        assert_eq!(status.contains("hit"), h2, "{status}");
        assert!(resp.text().await.unwrap().contains("Hello"));
    }
    // The plain listener beside it: http, and the guest sees http.
    let resp = common::client()
        .get(format!("http://{plain}/echo"))
        .send()
        .await
        .unwrap();
    let uri = format!("http://{plain}/echo");
    assert_eq!(resp.headers()["x-echo-uri"], uri.as_str());
    let resp = common::client()
        .get(format!("http://{plain}/page"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-origin-forwarded-proto"], "http");
}

#[tokio::test]
async fn a_plain_listener_redirects_to_https_or_takes_h2c() {
    let pki = Pki::new();
    let cert = pki.issue("edge", &["a.example.test"]);
    let origin = Origin::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let (tls, redirect, h2c) = (free_addr(), free_addr(), free_addr());
    let yaml = format!(
        "role: edge
listen:
  - {{ address: \"{redirect}\", redirect_https: true }}
  - {{ address: \"{tls}\", tls: {{ certificates: {certs} }} }}
  - {{ address: \"{h2c}\", h2c: true }}
routes:
  - match: {{ path_prefix: / }}
    origin: \"{origin}\"
",
        certs = certificates(&[&cert]),
        origin = origin.addr,
    );
    let config = poplar::config::parse(&yaml, &tasks_dir()).unwrap();
    let _edge = start(&config);

    let no_redirects = common::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .resolve("a.example.test", redirect)
        .build()
        .unwrap();
    let url = format!("http://a.example.test:{}/p/q?x=1", redirect.port());
    let resp = no_redirects.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 308);
    let location = format!("https://a.example.test:{}/p/q?x=1", tls.port());
    assert_eq!(resp.headers()["location"], location.as_str());
    assert_eq!(origin.hits(), 0, "a redirect goes nowhere");

    // The Location answers on the TLS listener.
    let client = https_client(&pki, tls, &["a.example.test"], true);
    let resp = client.get(location).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);

    // h2c: HTTP/2 with prior knowledge on a plain listener, and HTTP/1.1 still.
    let h2 = common::client_builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2.get(format!("http://{h2c}/h2c")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.text().await.unwrap(), "origin GET /h2c\n");
    let resp = common::client()
        .get(format!("http://{h2c}/h1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.status(), 200);
}

#[test]
fn a_bad_certificate_or_key_is_a_config_error_naming_its_key() {
    let pki = Pki::new();
    let good = pki.issue("good", &["a.example.test"]);
    let other = pki.issue("other", &["b.example.test"]);
    let not_pem = pki.path("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let missing = pki.path("missing.pem");
    let pairs = [
        good.clone(),
        (good.0.clone(), other.1.clone()),
        (not_pem.clone(), good.1.clone()),
        (missing.clone(), good.1.clone()),
        (good.0.clone(), not_pem.clone()),
    ];
    let yaml = format!(
        "role: edge\nlisten:\n  - address: \"127.0.0.1:1\"\n    tls: {{ certificates: {} }}\n  - {{ address: \"127.0.0.1:2\", tls: {{ certificates: [] }} }}\n  - {{ address: \"127.0.0.1:3\", redirect_https: true, h2c: true }}\n  - {{ address: \"127.0.0.1:3\" }}\nroutes:\n  - match: {{ path_prefix: / }}\n    origin: \"127.0.0.1:9\"\n",
        certificates(&pairs.iter().collect::<Vec<_>>())
    );
    let errors = poplar::config::parse(&yaml, &tasks_dir()).unwrap_err();
    let shown: Vec<String> = errors
        .iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect();
    let has = |path: &str, text: &str| {
        assert!(
            shown
                .iter()
                .any(|e| e.starts_with(&format!("{path}: ")) && e.contains(text)),
            "no {path} error with {text:?} in {shown:#?}"
        )
    };
    has("listen[0].tls.certificates[1].key", "is not the key of");
    has("listen[0].tls.certificates[2].cert", "no certificate");
    has("listen[0].tls.certificates[3].cert", "cannot read");
    has("listen[0].tls.certificates[4].key", "no private key");
    has("listen[1].tls.certificates", "empty");
    has("listen[3].address", "listed twice");
    assert!(
        !shown
            .iter()
            .any(|e| e.starts_with("listen[0].tls.certificates[0]")),
        "{shown:#?}"
    );
    assert!(
        !shown.iter().any(|e| e.starts_with("listen[2]")),
        "{shown:#?}"
    );
}

#[tokio::test]
async fn a_reload_reads_the_certificates_again_and_keeps_the_listener() {
    let pki = Pki::new();
    let (cert, key) = pki.issue("edge", &["a.example.test"]);
    let (tls, admin) = (free_addr(), free_addr());
    let file = pki.path("edge.yaml");
    let yaml = format!(
        "role: edge\nlisten:\n  - address: \"{tls}\"\n    tls: {{ certificates: {} }}\nadmin: {{ listen: \"{admin}\" }}\nroutes:\n  - match: {{ path_prefix: / }}\n    origin: \"127.0.0.1:9\"\n",
        certificates(&[&(cert.clone(), key.clone())])
    );
    std::fs::write(&file, yaml).unwrap();
    let _edge = common::start_file(&file);
    let trusted = pki.client_config(&[b"http/1.1"]);
    let (names, ..) = handshake(trusted.clone(), tls, "a.example.test")
        .await
        .unwrap();
    assert_eq!(names, ["a.example.test"]);

    // Renewed in place, with one more name.
    let (renewed, renewed_key) = pki.issue("renewed", &["a.example.test", "b.example.test"]);
    std::fs::rename(renewed, &cert).unwrap();
    std::fs::rename(renewed_key, &key).unwrap();
    let resp = common::client()
        .post(format!("http://{admin}/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["tls_listeners"], 1, "{body}");
    let (names, ..) = handshake(trusted.clone(), tls, "b.example.test")
        .await
        .unwrap();
    assert_eq!(names, ["a.example.test", "b.example.test"]);

    // A key that is not the certificate's: the reload is refused, the served one stays.
    let (_, stranger_key) = pki.issue("stranger", &["c.example.test"]);
    std::fs::rename(stranger_key, &key).unwrap();
    let resp = common::client()
        .post(format!("http://{admin}/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let text = resp.text().await.unwrap();
    assert!(text.contains("listen[0].tls.certificates[0].key"), "{text}");
    let (names, ..) = handshake(trusted, tls, "b.example.test").await.unwrap();
    assert_eq!(names, ["a.example.test", "b.example.test"]);
}
