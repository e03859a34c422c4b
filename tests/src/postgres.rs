//! A Postgres server of a test's own, for a test that damages its server (fills its disk) or
//! needs one configured otherwise (TLS with a test CA): the suite's shared server never sees it,
//! so a failing test cannot break the others.
//! Like the scripts' cluster, it is the newest server under `/usr/lib/postgresql`, run as the
//! `postgres` user (initdb refuses root), and is stopped (immediate) and removed on drop.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
};

pub use crate::tls::TestCa;

pub struct PrivatePostgres {
    pub admin_url: String,
    bin: PathBuf,
    dir: PathBuf,
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        Self::start_with(&[])
    }

    /// A server that also speaks TLS with `tls`'s server certificate (clients may still connect
    /// without it: a test asks `pg_stat_ssl` which they did).
    pub fn start_tls(tls: &TestCa) -> PrivatePostgres {
        let (cert, key) = (tls.server_cert(), tls.server_key());
        let (cert, key) = (cert.to_str().unwrap().to_string(), key.to_str().unwrap().to_string());
        Self::start_with(&["-c ssl=on".into(), format!("-c ssl_cert_file={cert}"), format!("-c ssl_key_file={key}")])
    }

    fn start_with(settings: &[String]) -> PrivatePostgres {
        let bin = newest_server();
        let dir = std::env::temp_dir().join(format!("orderflow-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.to_str().unwrap().to_string();
        run(Command::new("chown").args(["postgres:postgres", &path]));
        run(Command::new("chmod").args(["700", &path]));
        run(as_postgres(&bin.join("initdb")).args(["-D", &path, "--auth=trust", "--username=postgres", "-E", "UTF8"]));
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let options = format!("-p {port} -k {path} -c listen_addresses=127.0.0.1 -c fsync=off {}", settings.join(" "));
        let log = format!("{path}/server.log");
        run(as_postgres(&bin.join("pg_ctl")).args(["-D", &path, "-l", &log, "-w", "-t", "60", "start", "-o", &options]));
        PrivatePostgres { admin_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"), bin, dir }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let path = self.dir.to_str().unwrap();
        let _ = as_postgres(&self.bin.join("pg_ctl")).args(["-D", path, "-m", "immediate", "-w", "stop"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn newest_server() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql (scripts/test.sh installs them)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort_by_key(|bin| bin.parent().and_then(Path::file_name).and_then(|v| v.to_str()?.parse::<u32>().ok()));
    found.pop().expect("no initdb under /usr/lib/postgresql/*/bin")
}

/// `program` as the `postgres` user when the test runs as root, from `/` (which it may enter).
fn as_postgres(program: &Path) -> Command {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let mut command = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    command.current_dir("/");
    command
}

pub(crate) fn run(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
