//! TLS to vCenter: verify the chain against a CA bundle (or the system's), or pin the
//! server certificate by SHA-1 or SHA-256 thumbprint; `insecure` accepts anything (and
//! the caller warns). Every mode records the SHA-1 thumbprint of the certificate the
//! server presented, which nbdkit's vddk plugin needs.
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha1::Digest;

/// How the server's certificate is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// PEM bundle of CAs.
    CaFile(std::path::PathBuf),
    /// The system's CA bundle.
    System,
    /// The certificate's fingerprint (SHA-1: 20 bytes, SHA-256: 32 bytes).
    Thumbprint(Vec<u8>),
    /// No verification at all.
    Insecure,
}

/// Parse `AA:BB:…` (or without colons, any case) into bytes; 20 or 32 of them.
pub fn parse_thumbprint(s: &str) -> Result<Vec<u8>, String> {
    let hex: String = s.chars().filter(|c| *c != ':' && !c.is_whitespace()).collect();
    if !hex.len().is_multiple_of(2) || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "'{s}' is not a thumbprint: expected hex pairs like AB:CD:…, as `openssl x509 -noout -fingerprint -sha256` prints"
        ));
    }
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect();
    match bytes.len() {
        20 | 32 => Ok(bytes),
        n => Err(format!(
            "thumbprint '{s}' has {n} bytes; a SHA-1 thumbprint has 20 and a SHA-256 one 32"
        )),
    }
}

/// `AA:BB:…` upper-case, as openssl and vddk write it.
pub fn format_thumbprint(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect::<Vec<_>>().join(":")
}

pub fn sha1_thumbprint(der: &[u8]) -> String {
    format_thumbprint(&sha1::Sha1::digest(der))
}

pub fn sha256_thumbprint(der: &[u8]) -> String {
    format_thumbprint(&sha2::Sha256::digest(der))
}

/// What the last handshake saw: the SHA-1 thumbprint of the server's certificate.
#[derive(Debug, Default, Clone)]
pub struct Seen(Arc<Mutex<Option<String>>>);

impl Seen {
    pub fn sha1(&self) -> Option<String> {
        self.0.lock().ok().and_then(|g| g.clone())
    }
}

#[derive(Debug)]
struct Verifier {
    mode: Mode,
    algs: WebPkiSupportedAlgorithms,
    seen: Seen,
}

#[derive(Debug)]
enum Mode {
    Chain(Arc<WebPkiServerVerifier>),
    Pin(Vec<u8>),
    Insecure,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let der = end_entity.as_ref();
        match &self.mode {
            Mode::Chain(v) => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
            }
            Mode::Pin(want) => {
                let got: Vec<u8> = if want.len() == 20 {
                    sha1::Sha1::digest(der).to_vec()
                } else {
                    sha2::Sha256::digest(der).to_vec()
                };
                if &got != want {
                    return Err(rustls::Error::General(format!(
                        "the server's certificate has thumbprint {} but {} was configured; if the certificate was renewed, check the new one out of band and update vsphere.thumbprint",
                        format_thumbprint(&got),
                        format_thumbprint(want)
                    )));
                }
            }
            Mode::Insecure => {}
        }
        if let Ok(mut g) = self.seen.0.lock() {
            *g = Some(sha1_thumbprint(der));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

const SYSTEM_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

fn load_roots(path: &std::path::Path) -> Result<RootCertStore, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read CA bundle {}: {e}", path.display()))?;
    let mut roots = RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut data.as_slice()) {
        let c = c.map_err(|e| format!("CA bundle {}: {e}", path.display()))?;
        roots.add(c).map_err(|e| format!("CA bundle {}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("CA bundle {} holds no PEM certificate", path.display()));
    }
    Ok(roots)
}

/// The rustls client configuration for `trust`, and the handle that reports what it saw.
pub fn client_config(trust: &Trust) -> Result<(rustls::ClientConfig, Seen), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mode = match trust {
        Trust::CaFile(p) => Mode::Chain(chain(load_roots(p)?, &provider)?),
        Trust::System => {
            let p = SYSTEM_BUNDLES
                .iter()
                .map(std::path::Path::new)
                .find(|p| p.exists())
                .ok_or("no system CA bundle found; set vsphere.ca_file or vsphere.thumbprint")?;
            Mode::Chain(chain(load_roots(p)?, &provider)?)
        }
        Trust::Thumbprint(t) => Mode::Pin(t.clone()),
        Trust::Insecure => Mode::Insecure,
    };
    let seen = Seen::default();
    let verifier = Arc::new(Verifier {
        mode,
        algs: provider.signature_verification_algorithms,
        seen: seen.clone(),
    });
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok((cfg, seen))
}

fn chain(roots: RootCertStore, provider: &Arc<CryptoProvider>) -> Result<Arc<WebPkiServerVerifier>, String> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprints_parse_in_openssl_form_and_refuse_other_lengths() {
        let t = "69:1A:3C:A0:B2:AD:5E:0E:76:53:B4:36:02:5E:F0:B9:04:97:3B:EA";
        let b = parse_thumbprint(t).unwrap();
        assert_eq!(b.len(), 20);
        assert_eq!(format_thumbprint(&b), t);
        assert_eq!(parse_thumbprint(&t.to_lowercase().replace(':', "")).unwrap(), b);
        assert!(parse_thumbprint("AB:CD").unwrap_err().contains("2 bytes"));
        assert!(parse_thumbprint("zz").is_err());
        assert_eq!(parse_thumbprint(&"AB:".repeat(32)[..95]).unwrap().len(), 32);
    }
}
