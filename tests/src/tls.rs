//! A test certificate authority, for the servers a test runs over TLS (Postgres, the providers'
//! simulators).

use std::{path::PathBuf, process::Command, sync::Arc};

use crate::postgres::run;

/// A test certificate authority (openssl) and a server certificate it signed for `127.0.0.1`
/// and `localhost`, in a directory the `postgres` user can read (the key: only it).
pub struct TestCa {
    pub dir: PathBuf,
}

impl TestCa {
    pub fn new() -> TestCa {
        let dir = std::env::temp_dir().join(format!("orderflow-ca-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let at = |name: &str| dir.join(name).to_str().unwrap().to_string();
        let openssl = || {
            let mut c = Command::new("openssl");
            c.current_dir(&dir);
            c
        };
        run(openssl().args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]).args([
            "-days",
            "2",
            "-subj",
            "/CN=orderflow test CA",
            "-keyout",
            &at("ca.key"),
            "-out",
            &at("ca.crt"),
        ]));
        run(openssl().args(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]).args([
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &at("server.key"),
            "-out",
            &at("server.csr"),
        ]));
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
        run(openssl().args(["x509", "-req", "-days", "2", "-in", &at("server.csr"), "-CA", &at("ca.crt")]).args([
            "-CAkey",
            &at("ca.key"),
            "-CAcreateserial",
            "-extfile",
            &at("san.ext"),
            "-out",
            &at("server.crt"),
        ]));
        let dir_path = dir.to_str().unwrap().to_string();
        run(Command::new("chmod").args(["755", &dir_path]));
        run(Command::new("chown").args(["postgres:postgres", &at("server.key"), &at("server.crt")]));
        run(Command::new("chmod").args(["600", &at("server.key")]));
        TestCa { dir }
    }

    /// The CA certificate clients verify the server with.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.crt")
    }

    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    /// The server certificate as an HTTPS server's TLS settings.
    pub fn server_config(&self) -> Arc<orderflow_http::ServerConfig> {
        orderflow_http::server_config(&self.server_cert(), &self.server_key()).unwrap()
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
