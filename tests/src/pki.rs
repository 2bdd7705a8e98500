//! Certificates for the TLS tests: a CA and certificates it signs, written as PEM files the
//! way an operator would hand them to etcd or Lodestone.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A certificate and its key on disk, with the CA that signed it.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate authority that writes what it signs under `dir`.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    ca_file: PathBuf,
}

impl Ca {
    /// A new CA named `name`; its certificate is written to `<dir>/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("{name} CA"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA certificate");
        std::fs::create_dir_all(dir).expect("PKI directory");
        let ca_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_file, issuer.pem()).expect("write CA certificate");
        Ca {
            issuer,
            dir: dir.to_path_buf(),
            ca_file,
        }
    }

    /// The CA certificate file (what `--trusted-ca-file` and `--cacert` take).
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// Signs a certificate for `common_name`, valid for server and client use on 127.0.0.1
    /// and localhost, and writes it to `<dir>/<file>.pem` and `<dir>/<file>-key.pem`.
    pub fn issue(&self, file: &str, common_name: &str) -> TlsFiles {
        self.issue_for(file, common_name, &["127.0.0.1".to_string(), "localhost".to_string()])
    }

    /// Like [`Ca::issue`], for the given host names and IP addresses.
    pub fn issue_for(&self, file: &str, common_name: &str, hosts: &[String]) -> TlsFiles {
        let mut params = CertificateParams::new(hosts.to_vec()).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let files = TlsFiles {
            ca: self.ca_file.clone(),
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}-key.pem")),
        };
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        std::fs::write(&files.cert, cert.pem()).expect("write certificate");
        files
    }
}
