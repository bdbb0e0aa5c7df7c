//! Certificate authorities and certificates for the security tests, written as PEM files
//! into a directory of the test's (made with rcgen, signed with real keys).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest as _, Sha256};

/// A certificate authority.
pub struct Authority {
    certificate: Certificate,
    key: KeyPair,
    /// Its certificate, as PEM.
    pub ca: PathBuf,
    dir: PathBuf,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").field("ca", &self.ca).finish()
    }
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

impl Issued {
    /// The `tls = { ... }` of a node's `[security]`, trusting `ca`.
    pub fn tls_toml(&self, ca: &Path) -> String {
        format!(
            "tls = {{ cert = {:?}, key = {:?}, ca = {:?}, reload_interval = \"200ms\" }}\n",
            self.cert.display().to_string(),
            self.key.display().to_string(),
            ca.display().to_string()
        )
    }
}

impl Authority {
    /// A new authority named `name`, its files in `dir`.
    pub fn new(dir: &Path, name: &str) -> anyhow::Result<Authority> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let certificate = params.self_signed(&key)?;
        let ca = dir.join(format!("{name}.ca.pem"));
        std::fs::write(&ca, certificate.pem())?;
        Ok(Authority {
            certificate,
            key,
            ca,
            dir: dir.to_path_buf(),
        })
    }

    /// A certificate for `names` (DNS names; the first is also the common name) and
    /// 127.0.0.1, usable by servers and clients, written as `<file>.pem` and
    /// `<file>.key.pem`.
    pub fn issue(&self, file: &str, names: &[&str]) -> anyhow::Result<Issued> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let certificate = params.signed_by(&key, &self.certificate, &self.key)?;
        let issued = Issued {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key.pem")),
        };
        std::fs::write(&issued.cert, certificate.pem())?;
        std::fs::write(&issued.key, key.serialize_pem())?;
        Ok(issued)
    }
}

/// The `token_sha256` of `token`, as the nodes keep it.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A `[[security.principals]]` entry authenticated by `token`.
pub fn principal(name: &str, role: &str, token: &str, caches: Option<&[&str]>) -> String {
    let caches = caches.map_or(String::new(), |caches| {
        let names: Vec<String> = caches.iter().map(|c| format!("{c:?}")).collect();
        format!("caches = [{}]\n", names.join(", "))
    });
    format!(
        "[[security.principals]]\nname = {name:?}\nrole = {role:?}\ntoken_sha256 = {:?}\n{caches}",
        token_sha256(token)
    )
}
