//! Throwaway certificates for a TLS test server, made with the `openssl` command.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// The files a TLS `redis-server` is started with, and the CA a client must trust.
#[derive(Debug)]
pub(crate) struct Certificates {
    pub(crate) ca_file: PathBuf,
    pub(crate) cert_file: PathBuf,
    pub(crate) key_file: PathBuf,
    pub(crate) ca_pem: Vec<u8>,
}

/// Make a CA and a server certificate for `127.0.0.1` and `localhost` in `dir`.
///
/// EC P-256 keys (fast to generate, accepted by rustls and by Redis's OpenSSL), valid for two
/// days, with the v3 extensions webpki insists on (CA:TRUE on the CA, a SAN on the server).
pub(crate) fn make_certificates(dir: &Path) -> Result<Certificates> {
    let ca_key = dir.join("ca.key");
    let ca_file = dir.join("ca.crt");
    let key_file = dir.join("server.key");
    let csr = dir.join("server.csr");
    let cert_file = dir.join("server.crt");
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(|c| {
        c.args(["req", "-x509"])
            .args(ec)
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca_file)
            .args(["-days", "2", "-subj", "/CN=palisade-testkit-ca"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    })?;
    openssl(|c| {
        c.arg("req")
            .args(ec)
            .arg("-keyout")
            .arg(&key_file)
            .arg("-out")
            .arg(&csr)
            .args(["-subj", "/CN=localhost"])
    })?;
    openssl(|c| {
        c.args(["x509", "-req", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(&ca_file)
            .arg("-CAkey")
            .arg(&ca_key)
            .args(["-CAcreateserial", "-days", "2", "-out"])
            .arg(&cert_file)
            .arg("-extfile")
            .arg(&ext)
    })?;
    let ca_pem = std::fs::read(&ca_file)?;
    Ok(Certificates {
        ca_file,
        cert_file,
        key_file,
        ca_pem,
    })
}

fn openssl(args: impl FnOnce(&mut Command) -> &mut Command) -> Result<()> {
    let mut command = Command::new("openssl");
    args(&mut command);
    let output = match command.stdin(Stdio::null()).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::OpensslNotFound),
        Err(e) => return Err(e.into()),
    };
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Certificates(
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }
}
