//! A private PostgreSQL cluster for tests that hold transactions open, prepare them or
//! restart the server: `initdb` into a temp directory (as the `postgres` user when run
//! as root), a port of its own, stopped and removed on drop. The shared server's other
//! tests never see it.

use std::path::PathBuf;
use std::process::Command;

pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
}

fn bin_dir() -> Option<PathBuf> {
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    if dir.join("initdb").exists() {
        return Some(dir);
    }
    // Debian's pg_config may belong to a client package: look for the server's own.
    let mut versions: Vec<_> = std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten().map(|e| e.path()).collect();
    versions.sort();
    versions.into_iter().rev().map(|v| v.join("bin")).find(|b| b.join("initdb").exists())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

impl Cluster {
    /// Starts a fresh cluster, or `None` (outside CI) where no PostgreSQL server
    /// binaries are installed; under CI (`CI` set) that is a failure.
    pub fn start() -> Option<Cluster> {
        let Some(bin) = bin_dir() else {
            assert!(std::env::var_os("CI").is_none(), "PostgreSQL server binaries (initdb) are required under CI");
            eprintln!("skipping: no initdb found");
            return None;
        };
        let dir = std::env::temp_dir().join(format!("herald_cluster_{}_{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let cluster = Cluster { dir, bin, port: free_port() };
        cluster.chown();
        cluster.run("initdb", &["-D", &cluster.data(), "-A", "trust", "-U", "postgres", "--no-sync"]);
        cluster.pg_ctl_start();
        let status = Command::new(cluster.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &cluster.port.to_string(), "-U", "postgres", "test"])
            .status()
            .expect("createdb");
        assert!(status.success(), "createdb failed");
        Some(cluster)
    }

    /// `postgres://…/<db>` on this cluster.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn as_root() -> bool {
        Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
    }

    fn chown(&self) {
        if Self::as_root() {
            let status = Command::new("chown").args(["-R", "postgres", &self.dir.display().to_string()]).status();
            assert!(status.is_ok_and(|s| s.success()), "chown the cluster dir to postgres");
        }
    }

    /// Runs a server binary, as `postgres` when we are root (the server refuses root).
    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = if Self::as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd.args(args).output().unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(out.status.success(), "{tool} failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_prepared_transactions=10 -c fsync=off -c shared_preload_libraries=pg_stat_statements",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log").display().to_string();
        self.run("pg_ctl", &["-D", &self.data(), "-o", &options, "-l", &log, "-w", "start"]);
    }

    /// Stops the server cleanly.
    pub fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    /// Starts the stopped server again on its port.
    pub fn start_again(&self) {
        self.pg_ctl_start();
    }

    /// Runs `pg_resetwal` with `args` on the (stopped) cluster's data directory.
    pub fn resetwal(&self, args: &[&str]) {
        let mut all: Vec<&str> = args.to_vec();
        let data = self.data();
        all.push(&data);
        self.run("pg_resetwal", &all);
    }

    /// `pg_dump -Fc` of database `db` into a file in the cluster's directory.
    pub fn dump(&self, db: &str) -> PathBuf {
        let file = self.dir.join(format!("{db}.dump"));
        let status = Command::new(self.bin.join("pg_dump"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-Fc", "-f"])
            .arg(&file)
            .arg(db)
            .status()
            .expect("pg_dump");
        assert!(status.success(), "pg_dump failed");
        file
    }

    /// `pg_restore` of a dump into database `db` of this cluster.
    pub fn restore(&self, file: &std::path::Path, db: &str) {
        let status = Command::new(self.bin.join("pg_restore"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .arg(file)
            .status()
            .expect("pg_restore");
        assert!(status.success(), "pg_restore failed");
    }

    /// Stops the server at once (like a crash) and starts it again on the same port.
    pub fn restart(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
        self.pg_ctl_start();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let exe = self.bin.join("pg_ctl");
        let data = self.data();
        let args = ["-D", data.as_str(), "-m", "immediate", "-w", "stop"];
        let _ = if Self::as_root() {
            Command::new("runuser").args(["-u", "postgres", "--"]).arg(&exe).args(args).output()
        } else {
            Command::new(&exe).args(args).output()
        };
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
