//! The command line (`shared/contract/cli.md`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Streaming analytics for epidemic mass screening: checkpoint, pharmacy,
/// door-visit, case and bed events through Kafka into exact event-time
/// counts in Parquet, queried with SQL.
#[derive(Debug, Parser)]
#[command(name = "paicha", version, about, max_term_width = 100)]
pub struct Cli {
    /// A TOML file of settings (`data = "…"`, `brokers = "…"`,
    /// `window = "1h"`, …: each key is a flag name with `_` for `-`);
    /// environment variables and flags win over it.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the pipeline: consume, process, write Parquet, serve SQL and metrics.
    Run(Box<RunArgs>),
    /// Write a deterministic simulated scenario as JSON lines.
    Simulate(SimulateArgs),
    /// Serve SQL and metrics over an existing data directory.
    Serve(ServeArgs),
    /// Run only the embedded Kafka cluster, with paicha's topics, until
    /// Ctrl-C: for trying several `paicha run --brokers` instances on one
    /// machine. It keeps only the newest 5 MiB of each partition.
    Broker(BrokerArgs),
    /// Run one SQL query against a data directory or a running server.
    Sql(SqlArgs),
}

/// Options that shape how events are counted.
#[derive(Debug, Args, Clone)]
pub struct ProcessingArgs {
    /// Window size (e.g. 1h, 30m).
    #[arg(long, default_value = "1h", value_parser = parse_duration, env = "PAICHA_WINDOW")]
    pub window: Duration,
    /// Allowed out-of-orderness of event times.
    #[arg(long, default_value = "1h", value_parser = parse_duration, env = "PAICHA_LATENESS")]
    pub lateness: Duration,
    /// How late an event may arrive and still count: older than the
    /// pipeline clock minus this, it goes to dead letters as `too_late`.
    #[arg(long, default_value = "30d", value_parser = parse_duration, env = "PAICHA_RETENTION")]
    pub retention: Duration,
    /// A partition that delivers nothing for this long stops holding the
    /// watermark back, so the clock (and overdue follow-ups) move on.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "PAICHA_IDLE_AFTER")]
    pub idle_after: Duration,
    /// Share of a designated hospital's beds above which a `bed_utilization`
    /// alert is raised.
    #[arg(long, default_value_t = 0.85, env = "PAICHA_BED_ALERT_AT")]
    pub bed_alert_at: f64,
    /// Reporting time zone for calendar days.
    #[arg(long, default_value = "Asia/Shanghai", env = "PAICHA_TIME_ZONE")]
    pub time_zone: String,
    /// The earliest event time accepted (RFC 3339); earlier events go to
    /// dead letters as `early_timestamp`.
    #[arg(long, default_value = "2000-01-01T00:00:00Z", value_parser = parse_instant, env = "PAICHA_EARLIEST")]
    pub earliest: i64,
    /// District registry CSV (default: the shipped Chongqing registry).
    #[arg(long, env = "PAICHA_DISTRICTS")]
    pub districts: Option<PathBuf>,
    /// Hospital registry CSV (default: the shipped Chongqing registry).
    #[arg(long, env = "PAICHA_HOSPITALS")]
    pub hospitals: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Kafka bootstrap servers; without it an embedded cluster is started.
    #[arg(long, env = "PAICHA_BROKERS")]
    pub brokers: Option<String>,
    /// Produce the events of this JSON-lines file, process them all, and exit.
    #[arg(long, value_name = "FILE")]
    pub replay: Option<PathBuf>,
    /// Feed the built-in simulator into the topics (default without --brokers).
    #[arg(long)]
    pub simulate: bool,
    /// Data directory.
    #[arg(long, default_value = "data", env = "PAICHA_DATA")]
    pub data: PathBuf,
    /// HTTP address for SQL and metrics (HOST:PORT; port 0 picks one).
    /// Default 127.0.0.1:8080; a replay serves HTTP only when this is given.
    #[arg(long, env = "PAICHA_HTTP")]
    pub http: Option<String>,
    /// PostgreSQL wire address (HOST:PORT; port 0 picks one). Default
    /// 127.0.0.1:5432; a replay serves it only when this is given.
    #[arg(long, env = "PAICHA_PG")]
    pub pg: Option<String>,
    #[command(flatten)]
    pub access: AccessArgs,
    #[command(flatten)]
    pub ingest: IngestArgs,
    /// Consumer group.
    #[arg(long, default_value = "paicha", env = "PAICHA_GROUP")]
    pub group: String,
    /// Shared storage the partition tasks commit to, instead of the data
    /// directory: s3://BUCKET/PREFIX (credentials and endpoint from the
    /// AWS_* variables) or file:///PATH. --data is then this instance's
    /// working copy of the partitions it runs.
    #[arg(long, env = "PAICHA_STORAGE", value_name = "URL")]
    pub storage: Option<String>,
    /// This instance's stable name in the consumer group (Kafka static
    /// membership, e.g. a StatefulSet pod's name): restarted under the same
    /// name, it gets its partitions back at once instead of after a
    /// rebalance.
    #[arg(long, env = "PAICHA_INSTANCE", value_name = "NAME")]
    pub instance: Option<String>,
    /// How long the consumer group waits for a silent instance (crashed,
    /// or cut off) before it gives that instance's partitions to the others
    /// (Kafka brokers accept 6s to 30m by default).
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "PAICHA_SESSION_TIMEOUT")]
    pub session_timeout: Duration,
    /// Partitions per topic of the embedded cluster.
    #[arg(long, default_value_t = 4, env = "PAICHA_PARTITIONS", value_parser = clap::value_parser!(i32).range(1..=256))]
    pub partitions: i32,
    /// Events per second the live simulator produces.
    #[arg(long, default_value_t = 2000.0, env = "PAICHA_RATE")]
    pub rate: f64,
    /// Simulator seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Simulator volume multiplier.
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// How often to commit a checkpoint.
    #[arg(long, default_value = "2s", value_parser = parse_duration, env = "PAICHA_CHECKPOINT_INTERVAL")]
    pub checkpoint_interval: Duration,
    /// Test knob: sleep this long after each consumed message, to stand
    /// for a slow sink.
    #[arg(long, hide = true, default_value_t = 0)]
    pub slow_sink_ms: u64,
    /// Test and benchmark knob: the replay sends this share (0–1) of its
    /// batches to another partition than murmur2 gives their district, as
    /// a producer with another partitioner would.
    #[arg(long, hide = true, default_value_t = 0.0)]
    pub misroute: f64,
    /// Test knob: panic on the message holding this event id, or with
    /// `checkpoint:ID` at the checkpoint after it (the poison quarantine's
    /// tests).
    #[arg(long, hide = true)]
    pub crash_on: Option<String>,
    /// File holding the HMAC key for pseudonyms (else PAICHA_HMAC_KEY).
    #[arg(long, env = "PAICHA_HMAC_KEY_FILE")]
    pub hmac_key_file: Option<PathBuf>,
    #[command(flatten)]
    pub processing: ProcessingArgs,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Output file (JSON lines).
    #[arg(long, required_unless_present = "brokers", conflicts_with = "brokers")]
    pub out: Option<PathBuf>,
    /// Produce the scenario live into the topics of these Kafka bootstrap
    /// servers instead of writing a file (a source for a deployment; needs
    /// the deployment's pseudonymization key).
    #[arg(long, value_name = "HOST:PORT[,…]")]
    pub brokers: Option<String>,
    /// Events per second produced with --brokers.
    #[arg(long, default_value_t = 2000.0, env = "PAICHA_RATE")]
    pub rate: f64,
    /// File holding the HMAC key for pseudonyms (else PAICHA_HMAC_KEY).
    #[arg(long, env = "PAICHA_HMAC_KEY_FILE")]
    pub hmac_key_file: Option<PathBuf>,
    /// Days to simulate from 2020-01-20.
    #[arg(long, default_value_t = 22, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub days: u32,
    /// Seed: the same seed writes the same bytes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Volume multiplier.
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// No duplicated, late or malformed events.
    #[arg(long)]
    pub clean: bool,
}

#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// Partitions per topic.
    #[arg(long, default_value_t = 4, env = "PAICHA_PARTITIONS", value_parser = clap::value_parser!(i32).range(1..=256))]
    pub partitions: i32,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Data directory.
    #[arg(long, default_value = "data", env = "PAICHA_DATA")]
    pub data: PathBuf,
    /// Serve shared storage (s3://BUCKET/PREFIX or file:///PATH) instead of
    /// a data directory.
    #[arg(long, env = "PAICHA_STORAGE", value_name = "URL")]
    pub storage: Option<String>,
    /// HTTP address (HOST:PORT; port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:8080", env = "PAICHA_HTTP")]
    pub http: String,
    /// PostgreSQL wire address (HOST:PORT; port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:5432", env = "PAICHA_PG")]
    pub pg: String,
    #[command(flatten)]
    pub access: AccessArgs,
}

/// Who may query, and how much one query may take.
#[derive(Debug, Args, Clone)]
pub struct AccessArgs {
    /// A PostgreSQL user, NAME:PASSWORD (repeat the flag for more; in
    /// PAICHA_PG_USERS or the config file, a comma-separated list). With
    /// users, the wire asks for a password by SCRAM-SHA-256; without, it
    /// only listens on a loopback address.
    #[arg(
        long = "pg-user",
        value_name = "NAME:PASSWORD",
        env = "PAICHA_PG_USERS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub pg_users: Vec<String>,
    /// A bearer token `POST /sql` accepts (repeat for more; in
    /// PAICHA_HTTP_TOKENS, comma-separated). Without tokens, HTTP only
    /// listens on a loopback address.
    #[arg(
        long = "http-token",
        value_name = "TOKEN",
        env = "PAICHA_HTTP_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub http_tokens: Vec<String>,
    /// Longest a query may run, first byte to last row, on either port (a
    /// PostgreSQL client's shorter `statement_timeout` applies to its own).
    #[arg(long, default_value = "30s", value_parser = parse_duration, env = "PAICHA_QUERY_TIMEOUT")]
    pub query_timeout: Duration,
    /// Memory every query running at once may hold together, e.g. `4GiB`
    /// (default: a quarter of the machine's memory). A query that needs
    /// more spills to disk where it can, or fails with an error.
    #[arg(long, value_parser = parse_bytes, env = "PAICHA_QUERY_MEMORY")]
    pub query_memory: Option<u64>,
    /// Connections open at once, per port (HTTP and PostgreSQL); more are
    /// refused.
    #[arg(long, default_value_t = 256, env = "PAICHA_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_connections: u32,
    /// Most rows one result may have; a larger one is cut off with an error.
    #[arg(long, default_value_t = 1_000_000, env = "PAICHA_MAX_ROWS")]
    pub max_rows: usize,
    /// HTTP queries running at once; more are refused with 503.
    #[arg(long, default_value_t = 16, env = "PAICHA_MAX_CONCURRENT_QUERIES", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_concurrent_queries: u32,
}

/// The HTTP ingest gateway (`POST /ingest/{source}` on the HTTP port of
/// `paicha run`).
#[derive(Debug, Args, Clone)]
pub struct IngestArgs {
    /// A bearer token the gateway accepts for one source, SOURCE:TOKEN, or
    /// for every source, *:TOKEN (repeat for more; in PAICHA_INGEST_TOKENS,
    /// comma-separated). Without a token for every source, HTTP only
    /// listens on a loopback address.
    #[arg(
        long = "ingest-token",
        value_name = "SOURCE:TOKEN",
        env = "PAICHA_INGEST_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub ingest_tokens: Vec<String>,
    /// Largest request body the gateway reads, bytes.
    #[arg(long, default_value_t = 8 << 20, env = "PAICHA_INGEST_MAX_BODY", value_parser = clap::value_parser!(u64).range(1024..=1 << 30))]
    pub ingest_max_body: u64,
    /// Most events in one gateway request.
    #[arg(long, default_value_t = 10_000, env = "PAICHA_INGEST_MAX_EVENTS", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub ingest_max_events: u64,
    /// How long Kafka has to acknowledge a gateway request's events before
    /// the gateway answers 503 and the client retries.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "PAICHA_INGEST_TIMEOUT")]
    pub ingest_timeout: Duration,
    /// Gateway requests waiting on Kafka at once; more are answered 429.
    #[arg(long, default_value_t = 64, env = "PAICHA_INGEST_MAX_CONCURRENT", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub ingest_max_concurrent: u32,
}

#[derive(Debug, Args)]
pub struct SqlArgs {
    /// Data directory to query directly.
    #[arg(long, conflicts_with = "url")]
    pub data: Option<PathBuf>,
    /// Shared storage to query directly (s3://BUCKET/PREFIX or
    /// file:///PATH): what every instance of a group has committed.
    #[arg(long, conflicts_with_all = ["url", "data"], value_name = "URL")]
    pub storage: Option<String>,
    /// A running paicha's HTTP address, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub url: Option<String>,
    /// Bearer token for a server that requires one.
    #[arg(long, env = "PAICHA_TOKEN", hide_env_values = true, requires = "url")]
    pub token: Option<String>,
    /// Output format: table, csv or json (one object per line).
    #[arg(long, default_value = "table")]
    pub format: paicha_query::Format,
    /// The query.
    pub query: String,
}

/// Reads the `--config` file named in `args`, if any, into `PAICHA_*`
/// environment variables that are not already set, so that the file loses to
/// the environment and both lose to flags.
pub fn apply_config_file(args: &[std::ffi::OsString]) -> Result<(), String> {
    let mut path = None;
    for (i, a) in args.iter().enumerate() {
        let a = a.to_string_lossy();
        if let Some(p) = a.strip_prefix("--config=") {
            path = Some(PathBuf::from(p));
        } else if a == "--config" {
            path = args.get(i + 1).map(PathBuf::from);
        }
    }
    let Some(path) = path else { return Ok(()) };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("config file {}: {}", path.display(), e.message()))?;
    let known = config_variables();
    for (key, value) in table {
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            // Lists (`pg-users = ["analyst:…"]`) become comma-separated.
            toml::Value::Array(items) => {
                let mut parts = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        toml::Value::String(s) => parts.push(s),
                        _ => {
                            return Err(format!(
                                "config file {}: `{key}` must be a list of strings",
                                path.display()
                            ))
                        }
                    }
                }
                parts.join(",")
            }
            _ => {
                return Err(format!(
                    "config file {}: `{key}` must be a string, number, boolean or list of strings",
                    path.display()
                ))
            }
        };
        let var = format!("PAICHA_{}", key.to_uppercase().replace('-', "_"));
        if !known.contains(&var) {
            return Err(unknown_key(&path, &key, &known));
        }
        if std::env::var_os(&var).is_none() {
            std::env::set_var(var, value);
        }
    }
    Ok(())
}

/// The variables a config file's keys may set: those of every command's
/// flags, and the HMAC key, which is read from the environment alone.
fn config_variables() -> std::collections::BTreeSet<String> {
    fn walk(cmd: &clap::Command, vars: &mut std::collections::BTreeSet<String>) {
        for arg in cmd.get_arguments() {
            if let Some(env) = arg.get_env() {
                vars.insert(env.to_string_lossy().into_owned());
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, vars);
        }
    }
    let mut vars = std::collections::BTreeSet::from(["PAICHA_HMAC_KEY".to_string()]);
    walk(&<Cli as clap::CommandFactory>::command(), &mut vars);
    vars
}

/// The one line for a key no command reads: a misspelled key used to be
/// ignored, and the default it meant to change silently kept.
fn unknown_key(path: &Path, key: &str, known: &std::collections::BTreeSet<String>) -> String {
    let spelled = |var: &str| {
        var.trim_start_matches("PAICHA_")
            .to_lowercase()
            .replace('_', "-")
    };
    let nearest = known
        .iter()
        .map(|v| spelled(v))
        .map(|k| {
            (
                strsim::jaro_winkler(&k, &key.to_lowercase().replace('_', "-")),
                k,
            )
        })
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match nearest {
        Some((_, k)) => format!(
            "config file {}: unknown key `{key}`; did you mean `{k}`?",
            path.display()
        ),
        None => format!(
            "config file {}: unknown key `{key}` (keys are the long flags of paicha's \
             commands, such as `data` or `query-memory`)",
            path.display()
        ),
    }
}

/// An RFC 3339 instant as µs since the epoch.
pub fn parse_instant(s: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.timestamp_micros())
        .map_err(|_| format!("`{s}` is not an RFC 3339 time like 2000-01-01T00:00:00Z"))
}

/// Parses `90s`, `15m`, `1h`, `2d` (or plain seconds).
/// A size in bytes: a number with an optional unit (`k`, `KiB`, `MB`,
/// `MiB`, `GB`, `GiB`…; k/M/G are powers of 1024 either way).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 512MiB, 4GiB)"))?;
    let shift = match unit
        .trim()
        .to_ascii_lowercase()
        .trim_end_matches("ib")
        .trim_end_matches('b')
    {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(format!("`{s}` is not a size (e.g. 512MiB, 4GiB)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 30s, 15m, 1h or 2d"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => return Ok(Duration::from_millis(n)),
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("`{s}` is not a duration like 30s, 15m, 1h or 2d")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("1w").is_err());
    }
}
