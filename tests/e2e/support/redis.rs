//! Real `redis-server` processes for tests: one server, or a 3-master Redis Cluster, each
//! on free loopback ports with no persistence, killed when dropped. Never a system
//! service. `scripts/setup-redis.sh` installs Debian's redis-server and redis-cli.
//!
//! The host's own unit tests include this file too (`#[path]`), so it uses only std.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to start answering.
const START_WAIT: Duration = Duration::from_secs(20);

/// One `redis-server` on 127.0.0.1, killed on drop.
pub struct RedisServer {
    /// Its port.
    pub port: u16,
    child: Child,
    dir: PathBuf,
    extra: Vec<String>,
}

impl RedisServer {
    /// A server on a free port, answering `PING` before this returns.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// A server started with extra `redis-server` arguments (`--requirepass x`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        // A port found free may be taken before the server binds it: try a few.
        for _ in 0..5 {
            let mut server = RedisServer::launch(free_port(false), extra.clone());
            if server.wait_ready() {
                return server;
            }
        }
        panic!("redis-server did not start; is it installed (scripts/setup-redis.sh)?");
    }

    /// A server speaking only TLS on its port, with this certificate and key (PEM
    /// files), answering connections before this returns. [`Self::cmd`] does not work on
    /// it.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> RedisServer {
        let port = free_port(false);
        let extra: Vec<String> = vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            cert.display().to_string(),
            "--tls-key-file".into(),
            key.display().to_string(),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        let mut server = RedisServer::launch(port, extra);
        let deadline = Instant::now() + START_WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                !matches!(server.child.try_wait(), Ok(Some(_))),
                "redis-server with TLS exited at start"
            );
            assert!(
                Instant::now() < deadline,
                "redis-server with TLS did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// Spawns `redis-server` on `port` with `extra` arguments, in a directory of its own.
    fn launch(port: u16, extra: Vec<String>) -> RedisServer {
        let dir = temp_dir(port);
        let child = spawn(port, &dir, &extra);
        RedisServer {
            port,
            child,
            dir,
            extra,
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would: no shutdown, no save).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Freezes the server (SIGSTOP): its port still takes connections and bytes, and
    /// nothing answers, as a hung or partitioned server would. [`Self::resume`] thaws it.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Thaws a server frozen by [`Self::pause`] (SIGCONT); it answers what it was sent.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name} redis-server failed");
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_WAIT;
        loop {
            self.child = spawn(self.port, &self.dir, &self.extra);
            if self.wait_ready() {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not restart");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends one command (plain words) and returns the raw reply's first line.
    pub fn cmd(&self, args: &[&str]) -> String {
        Self::cmd_on(self.port, args)
    }

    /// [`Self::cmd`] on the server at `port`, from any thread.
    pub fn cmd_on(port: u16, args: &[&str]) -> String {
        command(port, args).unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + START_WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if command(self.port, &["PING"]).is_ok_and(|r| r == "+PONG") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A 3-master Redis Cluster on 127.0.0.1, no replicas, killed on drop.
pub struct RedisCluster {
    /// Its nodes.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers, joins them with `redis-cli --cluster
    /// create`, and waits until every node reports `cluster_state:ok`.
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                // The cluster bus listens on port + 10000: both must be free.
                let extra = vec!["--cluster-enabled".to_owned(), "yes".to_owned()];
                let mut s = RedisServer::launch(free_port(true), extra);
                assert!(s.wait_ready(), "a cluster node did not start");
                s
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs (scripts/setup-redis.sh installs it)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + START_WAIT;
        while !nodes.iter().all(|n| {
            info(n.port, "CLUSTER", "INFO").is_some_and(|i| i.contains("cluster_state:ok"))
        }) {
            assert!(Instant::now() < deadline, "the cluster never became ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        RedisCluster { nodes }
    }

    /// The nodes' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

fn spawn(port: u16, dir: &PathBuf, extra: &[String]) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server runs (scripts/setup-redis.sh installs it)")
}

fn temp_dir(port: u16) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weir-redis-{}-{port}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A free loopback port (and, with `bus`, port + 10000 free as well).
fn free_port(bus: bool) -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        if !bus {
            return port;
        }
        if port < 55535 && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

/// Sends `args` as a RESP command and returns the reply's first line.
fn command(port: u16, args: &[&str]) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes())?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}

/// The bulk-string reply of a two-word command (`CLUSTER INFO`).
fn info(port: u16, a: &str, b: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let req = format!("*2\r\n${}\r\n{a}\r\n${}\r\n{b}\r\n", a.len(), b.len());
    s.write_all(req.as_bytes()).ok()?;
    let mut r = BufReader::new(s);
    let mut head = String::new();
    r.read_line(&mut head).ok()?;
    let len: usize = head.trim_end().strip_prefix('$')?.parse().ok()?;
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    String::from_utf8(body).ok()
}
