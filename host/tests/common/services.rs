//! Throwaway database and object-store servers for the source tests: a
//! PostgreSQL cluster, a MariaDB server and an S3-compatible server (moto),
//! each in a temporary directory on a free loopback port, stopped on drop.
//!
//! A service that is not installed skips its test with a plain message on
//! a developer's machine; under CI (`CI` set) it fails the test instead,
//! so CI always runs them all.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Says why a test cannot run here: a panic under CI, a skip message
/// otherwise (the caller returns).
pub fn missing(what: &str, install: &str) {
    let message = format!("{what} is not installed here ({install}); the test that needs it is skipped");
    if std::env::var_os("CI").is_some() {
        panic!("{message}, but CI must run it");
    }
    eprintln!("skipped: {message}");
}

/// A port on 127.0.0.1 nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program args…`, as `user` when this process is root (database servers
/// refuse to run as root).
fn command_as(user: &str, program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", user, "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut command: Command, what: &str) -> Output {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn chown(dir: &Path, user: &str) {
    if is_root() {
        let mut c = Command::new("chown");
        c.arg("-R").arg(format!("{user}:")).arg(dir);
        run(c, "chown");
    }
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `cleanup` (shell) once this test process has ended, however it
/// ends: what a test binary shares between its tests lives no longer.
fn when_this_process_ends(cleanup: &str) {
    let pid = std::process::id();
    let watch = format!("while kill -0 {pid} 2>/dev/null; do sleep 1; done; {cleanup}");
    let spawned = Command::new("sh")
        .args(["-c", &watch])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Err(e) = spawned {
        panic!("starting the clean-up of shared test services: {e}");
    }
}

/// The password of the role `weir` in [`shared_postgres`].
pub const SHARED_PASSWORD: &str = "weir-shared-test";

/// One PostgreSQL cluster for every test of this binary (each takes a
/// database of its own, [`shared_database`]), stopped when the binary
/// ends; `None` when PostgreSQL is not installed.
pub fn shared_postgres() -> Option<&'static Postgres> {
    static SHARED: std::sync::OnceLock<Option<Postgres>> = std::sync::OnceLock::new();
    SHARED
        .get_or_init(|| {
            let pg = Postgres::start(SHARED_PASSWORD)?;
            let pg_ctl = pg.bin.join("pg_ctl");
            let data = pg.dir.path().join("data");
            let stop = if is_root() {
                format!(
                    "runuser -u postgres -- {} -D {} -m immediate stop",
                    pg_ctl.display(),
                    data.display()
                )
            } else {
                format!("{} -D {} -m immediate stop", pg_ctl.display(), data.display())
            };
            when_this_process_ends(&format!("{stop}; rm -rf {}", pg.dir.path().display()));
            Some(pg)
        })
        .as_ref()
}

/// A new database of [`shared_postgres`], and its URL.
pub fn shared_database() -> Option<String> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let pg = shared_postgres()?;
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    Some(pg.database(&format!("test_{n}"), SHARED_PASSWORD))
}

/// One S3-compatible server for every test of this binary (each takes a
/// bucket of its own, [`shared_bucket`]), stopped when the binary ends.
pub fn shared_s3() -> Option<&'static S3> {
    static SHARED: std::sync::OnceLock<Option<S3>> = std::sync::OnceLock::new();
    SHARED
        .get_or_init(|| {
            let s3 = S3::start()?;
            when_this_process_ends(&format!("kill {}", s3.child.id()));
            Some(s3)
        })
        .as_ref()
}

/// A new bucket of [`shared_s3`], and its name.
pub fn shared_bucket() -> Option<(&'static S3, String)> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let s3 = shared_s3()?;
    let name = format!("test-{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
    s3.bucket(&name);
    Some((s3, name))
}

/// A PostgreSQL cluster logging every statement it runs.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Postgres {
    /// A fresh cluster with role `weir` (password `password`) owning
    /// database `shop`; `None` when PostgreSQL is not installed.
    pub fn start(password: &str) -> Option<Self> {
        // The newest installed version, by number (16 after 9.6).
        let Some(bin) = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|versions| {
            versions
                .filter_map(|v| v.ok().map(|v| v.path()))
                .filter(|v| v.join("bin/initdb").exists())
                .max_by_key(|v| {
                    let name = v
                        .file_name()
                        .map(|n| n.to_string_lossy().to_string())
                        .unwrap_or_default();
                    name.split('.')
                        .map(|p| p.parse::<u32>().unwrap_or(0))
                        .collect::<Vec<_>>()
                })
                .map(|v| v.join("bin"))
        }) else {
            missing("PostgreSQL", "apt-get install postgresql");
            return None;
        };
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        chown(dir.path(), "postgres");
        let data = dir.path().join("data");
        let mut init = command_as("postgres", &bin.join("initdb"));
        init.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
        ]);
        run(init, "initdb");
        let port = free_port();
        let pg = Postgres { dir, bin, port };
        pg.resume();
        pg.psql(&format!("CREATE ROLE weir LOGIN PASSWORD '{password}'"));
        // CREATE DATABASE cannot share a transaction with anything.
        pg.psql("CREATE DATABASE shop OWNER weir");
        Some(pg)
    }

    /// The URL a source's secret holds, as `weir` with `password`.
    pub fn url(&self, password: &str) -> String {
        format!(
            "postgres://weir:{password}@127.0.0.1:{}/shop?sslmode=disable",
            self.port
        )
    }

    /// Stops the server (fast shutdown: connections are closed); the
    /// cluster and its port stay for [`Postgres::resume`].
    pub fn pause(&self) {
        let mut stop = command_as("postgres", &self.bin.join("pg_ctl"));
        stop.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null());
        run(stop, "pg_ctl stop");
    }

    /// Starts the server on the cluster, on its port.
    pub fn resume(&self) {
        let mut start = command_as("postgres", &self.bin.join("pg_ctl"));
        start
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c log_statement=all -c fsync=off",
                self.port,
                self.dir.path().display()
            ))
            .args(["-w", "start"])
            .stdout(Stdio::null());
        run(start, "pg_ctl start");
    }

    /// A new empty database `name` owned by `weir`, and its URL.
    pub fn database(&self, name: &str, password: &str) -> String {
        self.psql(&format!("CREATE DATABASE {name} OWNER weir"));
        format!(
            "postgres://weir:{password}@127.0.0.1:{}/{name}?sslmode=disable",
            self.port
        )
    }

    /// Runs `sql` in database `name` as the superuser; its rows, unaligned.
    pub fn sql_in(&self, name: &str, sql: &str) -> String {
        self.psql_in(name, sql)
    }

    /// Runs `sql` in database `shop` as the superuser; its rows, unaligned.
    pub fn sql(&self, sql: &str) -> String {
        self.psql_in("shop", sql)
    }

    fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    fn psql_in(&self, db: &str, sql: &str) -> String {
        let mut c = Command::new(self.bin.join("psql"));
        c.arg("-h").arg(self.dir.path()).args([
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-c",
            sql,
        ]);
        String::from_utf8_lossy(&run(c, "psql").stdout).into_owned()
    }

    /// What the server logged: every statement it ran.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let mut stop = command_as("postgres", &self.bin.join("pg_ctl"));
        stop.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = stop.status();
    }
}

/// A MariaDB (MySQL) server.
pub struct Mariadb {
    dir: tempfile::TempDir,
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Mariadb {
    /// A fresh server with user `weir` (password `password`) owning
    /// database `shop`; `None` when MariaDB is not installed.
    pub fn start(password: &str) -> Option<Self> {
        let server = Path::new("/usr/sbin/mariadbd");
        let install = Path::new("/usr/bin/mariadb-install-db");
        if !server.exists() || !install.exists() {
            missing("MariaDB", "apt-get install mariadb-server");
            return None;
        }
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        chown(dir.path(), "mysql");
        let data = dir.path().join("data");
        // Run as root, each drops to `mysql` itself (`--user`).
        let mut init = Command::new(install);
        init.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(if is_root() { "--user=mysql" } else { "--force" })
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"]);
        run(init, "mariadb-install-db");
        let port = free_port();
        let socket = dir.path().join("mysqld.sock");
        let child = Command::new(server)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--port={port}"))
            .arg(format!("--pid-file={}", dir.path().join("mysqld.pid").display()))
            .arg(format!("--log-error={}", dir.path().join("error.log").display()))
            .args(["--bind-address=127.0.0.1", "--skip-log-bin"])
            .args(is_root().then_some("--user=mysql"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting mariadbd: {e}"));
        // Built before the wait, so that a server that never listens is
        // still stopped.
        let db = Mariadb { dir, child, port };
        wait_for_port(port, "mariadbd");
        db.sql_in(
            "mysql",
            &format!(
                "CREATE DATABASE shop; CREATE USER 'weir'@'%' IDENTIFIED BY '{password}'; \
                 GRANT ALL ON shop.* TO 'weir'@'%';"
            ),
        );
        Some(db)
    }

    /// The URL a source's secret holds.
    pub fn url(&self, password: &str) -> String {
        format!("mysql://weir:{password}@127.0.0.1:{}/shop?sslmode=disabled", self.port)
    }

    /// Runs `sql` in database `shop` as root.
    pub fn sql(&self, sql: &str) -> String {
        self.sql_in("shop", sql)
    }

    fn sql_in(&self, db: &str, sql: &str) -> String {
        let mut c = Command::new("/usr/bin/mariadb");
        c.arg("--no-defaults")
            .arg(format!("--socket={}", self.dir.path().join("mysqld.sock").display()))
            .args(["-u", "root", "-N", "-B", db, "-e", sql]);
        String::from_utf8_lossy(&run(c, "mariadb").stdout).into_owned()
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An S3-compatible server (moto).
pub struct S3 {
    child: Child,
    /// Its endpoint URL.
    pub endpoint: String,
}

impl S3 {
    /// A fresh server; `None` when moto is not installed.
    pub fn start() -> Option<Self> {
        let port = free_port();
        let child = match Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(_) => {
                missing("moto (an S3-compatible server)", "pip install 'moto[server]'");
                return None;
            }
        };
        let s3 = S3 {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        wait_for_port(port, "moto_server");
        Some(s3)
    }

    /// Creates `bucket`.
    pub fn bucket(&self, bucket: &str) {
        let mut make = Command::new("curl");
        make.args(["-sS", "-f", "-X", "PUT", &format!("{}/{bucket}", self.endpoint)]);
        run(make, "creating the bucket");
    }

    /// The keys in `bucket` under `prefix`.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let mut list = Command::new("curl");
        list.args(["-sS", "-f", &format!("{}/{bucket}?prefix={prefix}", self.endpoint)]);
        let xml = String::from_utf8_lossy(&run(list, "listing the bucket").stdout).into_owned();
        xml.split("<Key>")
            .skip(1)
            .filter_map(|part| part.split_once("</Key>").map(|(key, _)| key.to_string()))
            .collect()
    }

    /// The environment a `weir serve` needs to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "weir-test".into()),
            ("AWS_SECRET_ACCESS_KEY", "weir-test-secret".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// Creates `bucket` and puts `bytes` at `key` in it.
    pub fn put(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let file = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(file.path(), bytes).unwrap_or_else(|e| panic!("{e}"));
        let mut make = Command::new("curl");
        make.args(["-sS", "-f", "-X", "PUT", &format!("{}/{bucket}", self.endpoint)]);
        run(make, "creating the bucket");
        let mut put = Command::new("curl");
        put.args(["-sS", "-f", "--upload-file"])
            .arg(file.path())
            .arg(format!("{}/{bucket}/{key}", self.endpoint));
        run(put, "putting the object");
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
