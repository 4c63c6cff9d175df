//! A real Kafka-protocol broker for the integration tests: tansu
//! (<https://github.com/tansu-io/tansu>, built with
//! `cargo install tansu --locked --features libsql`) run as a child process
//! on a loopback port, storing everything in one SQLite file.
//!
//! Unlike librdkafka's mock cluster it lives in another process, so a test
//! can crash it ([`Tansu::stop`] sends SIGKILL) and bring it back on the same
//! port and the same file ([`Tansu::restart`]): every message a producer saw
//! acknowledged is still there (each produce is a committed SQLite
//! transaction in WAL mode), an idempotent producer keeps its producer id and
//! sequences across the restart (no duplicates), and librdkafka clients
//! reconnect by themselves, within `reconnect.backoff.max.ms` (10 s by
//! default) of the broker's return.
//!
//! How tansu 0.6.0 is run here, and why:
//! - `--storage-engine sqlite://tansu.db` with the child's working directory
//!   set to the test's directory: tansu resolves the file against its working
//!   directory, even `sqlite:///abs/path` (it becomes `./abs/path`). The
//!   memory engine is never used: it loses every message when the process
//!   dies.
//! - `--listener-url` and `--advertised-listener-url` both
//!   `tcp://127.0.0.1:PORT`: the advertised address is what clients connect
//!   to after the bootstrap metadata (default `localhost:9092`). Tansu opens
//!   no other port (no metrics listener); cluster id and node id (111) have
//!   working defaults.
//! - The port is below the kernel's ephemeral range, so no client's outgoing
//!   connection can take it while the broker is down between a stop and a
//!   restart.
//! - tansu 0.6.0's SQLite schema has no index on record headers, and its
//!   fetch runs one header query per record returned: every record fetched
//!   scans the whole `header` table. A replay of ~340k events (25k messages)
//!   takes 70 s with request time-outs instead of 7 s. The helper adds the
//!   index with the `sqlite3` command (or Python's `sqlite3` module); without
//!   either it warns and carries on, slowly.
//! - Its stdout and stderr go to `tansu.log` in the directory (appended
//!   across restarts), not to the test's output. Tansu logs at `error` level
//!   (`PAICHA_TANSU_LOG` sets its `RUST_LOG`); the helper notes its own
//!   steps there (`=== test helper …`).

#![allow(dead_code)]

use std::fs::OpenOptions;
use std::future::Future;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant, SystemTime};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::ClientConfig;

/// paicha's topics and their partition counts on the test broker.
pub const TOPICS: [(&str, i32); 7] = [
    ("screening.checkpoint", 2),
    ("screening.pharmacy", 2),
    ("screening.door_visit", 2),
    ("screening.case", 2),
    ("screening.bed", 2),
    ("screening.dead_letter", 2),
    ("screening.alerts", 1),
];

/// How long a start or restart may take before the test fails (tansu is
/// normally ready in well under a second).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The tansu binary: `$PAICHA_TANSU` if set (and nothing else then, so a
/// wrong path is not silently replaced), else `tansu` on `PATH`, else
/// `~/.cargo/bin/tansu` (or `$CARGO_HOME/bin/tansu`), else
/// `/tmp/tansu-root/bin/tansu`. `None` if there is none: tests needing a
/// broker skip.
pub fn tansu_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PAICHA_TANSU") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("tansu"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(cargo_home) = std::env::var_os("CARGO_HOME") {
        candidates.push(PathBuf::from(cargo_home).join("bin/tansu"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/tansu"));
    }
    candidates.push(PathBuf::from("/tmp/tansu-root/bin/tansu"));
    candidates.into_iter().find(|p| p.is_file())
}

/// A tansu broker on `127.0.0.1:PORT` with its SQLite file in a directory;
/// killed when dropped.
pub struct Tansu {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Tansu {
    /// Starts a broker storing into `DIR/tansu.db` (kept if it exists),
    /// waits until it answers a metadata request and creates [`TOPICS`].
    /// Panics if there is no tansu binary (check [`tansu_binary`] first to
    /// skip) or the broker does not come up.
    pub fn start(dir: &Path) -> Tansu {
        let bin = tansu_binary().expect("no tansu binary (set PAICHA_TANSU)");
        std::fs::create_dir_all(dir).expect("create the broker's directory");
        let mut t = Tansu {
            bin: bin.canonicalize().unwrap_or(bin),
            dir: dir.canonicalize().expect("the broker's directory"),
            port: free_port(),
            child: None,
        };
        t.launch();
        t
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers` or `paicha run --brokers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The file tansu's output goes to.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("tansu.log")
    }

    /// The SQLite file holding the topics.
    pub fn db_path(&self) -> PathBuf {
        self.dir.join("tansu.db")
    }

    /// Whether the broker process is running (not stopped, not exited).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Crashes the broker: SIGKILL, and waits for the process to be gone.
    /// SIGKILL rather than SIGTERM because it is what a crash looks like (no
    /// goodbye to clients; tansu's SIGTERM handling waits up to 5 s for open
    /// connections and then exits 0), and it is immediate. Acknowledged
    /// messages survive it. Does nothing if already stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.note("tansu killed (SIGKILL)");
        }
    }

    /// Starts the broker again on the same port and the same SQLite file
    /// (stopping it first if it runs) and waits until it is ready. Clients
    /// already connected reconnect by themselves, after their back-off.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Spawns tansu, waits for it, indexes headers, creates the topics.
    fn launch(&mut self) {
        let started = Instant::now();
        self.spawn();
        let admin = self.wait_ready(started);
        self.index_headers();
        self.create_topics(&admin);
        self.note(&format!("ready for tests after {:?}", started.elapsed()));
    }

    fn spawn(&mut self) {
        self.note(&format!("starting tansu on {}", self.bootstrap()));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open tansu.log");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(&self.bin)
            .arg("broker")
            .args(["--storage-engine", "sqlite://tansu.db"])
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .current_dir(&self.dir)
            // Tansu reads these too; the test's environment must not change
            // the broker (a schema registry would validate every message).
            .env_remove("SCHEMA_REGISTRY")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("CLUSTER_ID")
            .env(
                "RUST_LOG",
                std::env::var("PAICHA_TANSU_LOG").unwrap_or_else(|_| "error".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("tansu.log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    /// Waits until the port accepts connections and a metadata request
    /// names the broker; panics with the log's tail if tansu exits or takes
    /// longer than [`READY_TIMEOUT`]. Returns the admin client that asked.
    fn wait_ready(&mut self, started: Instant) -> AdminClient<DefaultClientContext> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            self.check_alive(started);
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let admin = self.admin();
        loop {
            self.check_alive(started);
            match admin.inner().fetch_metadata(None, Duration::from_secs(2)) {
                Ok(md) if !md.brokers().is_empty() => return admin,
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn check_alive(&mut self, started: Instant) {
        let status = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if let Some(status) = status {
            self.child = None;
            panic!(
                "tansu exited ({status}) before it was ready:\n{}",
                self.log_tail()
            );
        }
        if started.elapsed() > READY_TIMEOUT {
            self.stop();
            panic!(
                "tansu was not ready within {READY_TIMEOUT:?}:\n{}",
                self.log_tail()
            );
        }
    }

    /// Adds the index tansu's schema lacks (see the module's doc). Idempotent;
    /// tansu creates its tables before it listens, so they exist by now.
    fn index_headers(&self) {
        const SQL: &str =
            "create index if not exists paicha_header_record on header (topition, offset_id);";
        let db = self.db_path();
        let sqlite3 = Command::new("sqlite3")
            .args(["-cmd", ".timeout 10000"])
            .arg(&db)
            .arg(SQL)
            .output();
        let python = || {
            Command::new("python3")
                .args([
                    "-c",
                    "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], timeout=10); \
                     c.execute(sys.argv[2]); c.commit()",
                ])
                .arg(&db)
                .arg(SQL)
                .output()
        };
        let done = match sqlite3 {
            Ok(o) if o.status.success() => true,
            _ => matches!(python(), Ok(o) if o.status.success()),
        };
        if !done {
            let msg = "could not index tansu's record headers (no sqlite3 or python3): \
                       fetching messages with headers will be slow";
            eprintln!("warning: {msg}");
            self.note(msg);
        }
    }

    /// Creates those of [`TOPICS`] that do not exist yet (on a restart, or
    /// a reused file, they all do, with the partition counts they have).
    fn create_topics(&self, admin: &AdminClient<DefaultClientContext>) {
        let md = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("tansu: cannot list topics: {e}"));
        let missing: Vec<NewTopic> = TOPICS
            .iter()
            .filter(|(name, _)| !md.topics().iter().any(|t| t.name() == *name))
            .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
            .collect();
        if missing.is_empty() {
            return;
        }
        let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
        let results = block_on(admin.create_topics(&missing, &opts))
            .unwrap_or_else(|e| panic!("tansu: cannot create topics: {e}"));
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => panic!("tansu: cannot create {topic}: {code:?}"),
            }
        }
    }

    /// An admin client for set-up (quiet: librdkafka's own log stays off
    /// the test's output).
    fn admin(&self) -> AdminClient<DefaultClientContext> {
        ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("log_level", "0")
            .create()
            .expect("create an admin client")
    }

    /// Appends a line of the helper's own to `tansu.log`.
    fn note(&self, what: &str) {
        if let Ok(mut f) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
        {
            let at = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            let _ = writeln!(f, "=== test helper at {at:.3}: {what}");
        }
    }

    /// The last lines of `tansu.log`, for a failure message.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free loopback port below the ephemeral range (so that while the broker
/// is down, no outgoing connection can be given its port), distinct for
/// every broker this process starts and spread by process id across
/// concurrently running test binaries. Falls back to one the kernel picks.
fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Linux's default ephemeral range starts at 32768.
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32768u32);
    let (low, high) = (10_000u32, ephemeral_low.max(10_001));
    let span = high - low;
    let base = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..1000 {
        let port = low + (base + NEXT.fetch_add(1, Ordering::Relaxed) * 13) % span;
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Runs a future to completion on this thread. rdkafka's admin futures are
/// completed by its own background thread, so they need no async runtime,
/// and this works inside or outside one.
fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}
