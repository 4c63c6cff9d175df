//! `paicha run`, `paicha simulate` and `paicha serve`.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use paicha_contract::event::{Decoder, Source};
use paicha_contract::pseudonym::Pseudonymizer;
use paicha_contract::registry::Registry;
use paicha_ingest::gateway::{Gateway, GatewayConfig, SourceTokens};
use paicha_ingest::internal_events::state::FollowUpsCounted;
use paicha_ingest::kafka::{self, BatchProducer, Batching, EmbeddedCluster, FlowControl};
use paicha_ingest::metrics::Metrics;
use paicha_processors::remote::Remote;
use paicha_processors::tasks::Tasks;
use paicha_processors::time::Calendar;
use paicha_processors::Config;
use paicha_simulator::{self as simulate, SimConfig, Simulator};
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::cli::{
    AccessArgs, BrokerArgs, IngestArgs, ProcessingArgs, RunArgs, ServeArgs, SimulateArgs,
};
use crate::port::{self, Port};
use paicha_pipeline::{self as pipeline, ConsumerConfig, ReplayEnd};

/// Prints a status line. A reader that went away (`paicha run | head -1`, a
/// supervisor that read the address and closed the pipe) is no reason to
/// stop the pipeline, so a failed write is ignored.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// Bytes the producer may run ahead of the consumer per partition of the
/// embedded cluster: well under the 5 MiB librdkafka's mock cluster keeps.
const EMBEDDED_IN_FLIGHT_BYTES: i64 = 2 << 20;

/// The runtime SQL queries run on: one thread fewer than the machine has
/// (at least one), so however many queries run, a core is left to the
/// consumer, the processors and the ingest gateway. One per process, for
/// its life.
fn query_runtime(threads: usize) -> Result<&'static tokio::runtime::Runtime> {
    static QUERIES: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if let Some(rt) = QUERIES.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        // Every file a query opens is read on a blocking thread. Tokio
        // allows 512 and keeps each for 10 s: sixteen clients of cross
        // joins held 166 of them, each with its stack and its allocator
        // cache, a few hundred MiB outside the query pool. Reads of local
        // files wait briefly for one of these instead.
        .max_blocking_threads(QUERY_BLOCKING_THREADS_PER_WORKER * threads.max(1))
        .on_thread_start(yield_to_ingestion)
        .thread_name("paicha-sql")
        .enable_all()
        .build()
        .context("cannot start the query runtime")?;
    Ok(QUERIES.get_or_init(|| rt))
}

/// Blocking threads (file reads, spills) the query runtime may have per
/// worker thread.
const QUERY_BLOCKING_THREADS_PER_WORKER: usize = 4;

/// Lowers the calling query thread's priority: its workers and its
/// blocking threads (file reads, sort spills) alike. Queries use every
/// core the pipeline leaves idle, but when both want one, the consumer,
/// the processors and the writer come first, so no load of queries slows
/// ingestion.
fn yield_to_ingestion() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority has no memory effects; on Linux, PRIO_PROCESS
        // with id 0 names the calling thread alone.
        let done = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, QUERY_NICE) };
        if done != 0 {
            tracing::debug!("cannot lower a query thread's priority");
        }
    }
}

/// The nice value of query threads: a tenth of a pipeline thread's share
/// of a busy core.
#[cfg(target_os = "linux")]
const QUERY_NICE: libc::c_int = 10;

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn processing(args: &ProcessingArgs, data: &Path) -> Result<(Arc<Registry>, Config)> {
    let registry = Arc::new(Registry::load(
        args.districts.as_deref(),
        args.hospitals.as_deref(),
    )?);
    let mut cfg = Config::new(data.to_path_buf());
    cfg.window_micros = i64::try_from(args.window.as_micros()).unwrap_or(i64::MAX);
    if cfg.window_micros < 1_000_000 {
        bail!("--window must be at least 1s");
    }
    cfg.lateness_micros = i64::try_from(args.lateness.as_micros()).unwrap_or(i64::MAX);
    cfg.retention_micros = i64::try_from(args.retention.as_micros()).unwrap_or(i64::MAX);
    if !(args.bed_alert_at > 0.0 && args.bed_alert_at <= 1.0) {
        bail!("--bed-alert-at must be a share of the beds, above 0 and at most 1");
    }
    cfg.bed_alert_share = args.bed_alert_at;
    cfg.idle_after = args.idle_after;
    cfg.calendar = Calendar::new(&args.time_zone).map_err(|e| anyhow!("--time-zone: {e}"))?;
    // The consumer goes on while a checkpoint's Parquet is encoded.
    cfg.background_writes = true;
    Ok((registry, cfg))
}

/// The shared storage `--storage` names, if any.
fn storage(url: Option<&str>) -> Result<Option<Arc<Remote>>> {
    url.map(Remote::open).transpose()
}

/// The pseudonymization key: PAICHA_HMAC_KEY, the key file, or (embedded
/// demo only) a random key kept in the data directory so that restarts give
/// the same pseudonyms.
fn hmac_key(args: &RunArgs, embedded: bool) -> Result<Vec<u8>> {
    if let Some(k) = given_hmac_key(args.hmac_key_file.as_deref())? {
        return Ok(k);
    }
    if !embedded {
        bail!("no pseudonymization key: set PAICHA_HMAC_KEY or --hmac-key-file (required with --brokers)");
    }
    let path = args.data.join("_paicha").join("hmac.key");
    if let Ok(k) = std::fs::read(&path) {
        return Ok(k);
    }
    let mut key = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))
        .context("cannot read /dev/urandom for a demo key")?;
    let hex_key = key.iter().map(|b| format!("{b:02x}")).collect::<String>();
    write_private(&path, hex_key.as_bytes())?;
    eprintln!(
        "paicha: no PAICHA_HMAC_KEY given; generated a demo key in {} (set PAICHA_HMAC_KEY in production)",
        path.display()
    );
    Ok(hex_key.into_bytes())
}

/// The key PAICHA_HMAC_KEY or the key file gives, if any.
fn given_hmac_key(file: Option<&Path>) -> Result<Option<Vec<u8>>> {
    if let Ok(k) = std::env::var("PAICHA_HMAC_KEY") {
        if k.is_empty() {
            bail!("PAICHA_HMAC_KEY is empty");
        }
        return Ok(Some(k.into_bytes()));
    }
    if let Some(p) = file {
        let k = std::fs::read(p)
            .with_context(|| format!("cannot read HMAC key file {}", p.display()))?;
        if k.is_empty() {
            bail!("HMAC key file {} is empty", p.display());
        }
        return Ok(Some(k));
    }
    Ok(None)
}

/// Produces the simulator's scenario into the topics at `rate` events/s
/// until it ends or `shutdown` is set.
fn produce_scenario(
    brokers: &str,
    sim: SimConfig,
    registry: &Registry,
    pseudonymizer: Pseudonymizer,
    rate: f64,
    flow: Option<Arc<FlowControl>>,
    shutdown: Arc<AtomicBool>,
) -> Result<kafka::ProduceSummary> {
    let mut p = BatchProducer::new(brokers, Batching::default(), flow)?
        .pseudonymizing(pseudonymizer)
        .paced(rate, shutdown.clone());
    let mut sim = Simulator::new(sim, registry);
    let mut n = 0u64;
    'days: while let Some(lines) = sim.next_day() {
        for l in lines {
            if shutdown.load(Ordering::Acquire) {
                break 'days;
            }
            n += 1;
            p.line(l.as_bytes(), "simulator", n)?;
        }
    }
    let summary = p.finish()?;
    if !shutdown.load(Ordering::Acquire) {
        eprintln!("paicha: the simulator finished its scenario");
    }
    Ok(summary)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Where SQL is served, and to whom.
struct Serving<'a> {
    http: Option<&'a str>,
    pg: Option<&'a str>,
    access: &'a AccessArgs,
    /// The ingest gateway, served on the HTTP port.
    gateway: Option<Arc<Gateway>>,
    /// What `GET /readyz` answers.
    ready: Arc<AtomicBool>,
}

/// The ingest gateway of a live `paicha run`.
fn gateway(
    brokers: &str,
    decoder: &Decoder,
    args: &IngestArgs,
    metrics: &Metrics,
    http: &str,
    flow: Option<Arc<FlowControl>>,
) -> Result<Arc<Gateway>> {
    let tokens = SourceTokens::parse(args.ingest_tokens.iter().map(String::as_str))
        .map_err(|e| anyhow!("--ingest-token: {e}"))?;
    // Before Kafka is contacted: an open gateway on a network is refused
    // whatever the brokers say.
    refuse_open(
        http,
        "the ingest gateway",
        tokens.required(),
        "--ingest-token *:TOKEN (or one per source)",
    )?;
    let cfg = GatewayConfig {
        tokens,
        max_body_bytes: usize::try_from(args.ingest_max_body).unwrap_or(usize::MAX),
        max_events: usize::try_from(args.ingest_max_events).unwrap_or(usize::MAX),
        timeout: args.ingest_timeout,
        max_concurrent: args.ingest_max_concurrent as usize,
    };
    Ok(Arc::new(Gateway::new(
        brokers,
        decoder.clone(),
        cfg,
        metrics,
        flow,
    )?))
}

/// Binds `addr`, refusing a non-loopback address when nobody has to
/// authenticate: an open SQL port on a network is a data leak.
fn listen(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    what: &str,
    authenticated: bool,
    how: &str,
) -> Result<tokio::net::TcpListener> {
    refuse_open(addr, what, authenticated, how)?;
    rt.block_on(tokio::net::TcpListener::bind(addr))
        .with_context(|| format!("cannot listen on {addr} for {what}"))
}

/// Refuses a non-loopback `addr` when nobody has to authenticate on it.
fn refuse_open(addr: &str, what: &str, authenticated: bool, how: &str) -> Result<()> {
    use std::net::ToSocketAddrs;
    let resolved: Vec<std::net::SocketAddr> = addr
        .to_socket_addrs()
        .with_context(|| format!("`{addr}` is not a HOST:PORT address for {what}"))?
        .collect();
    if !authenticated && resolved.iter().any(|a| !a.ip().is_loopback()) {
        bail!(
            "refusing to serve {what} on {addr} without authentication: configure {how}, \
             or listen on a loopback address such as 127.0.0.1"
        );
    }
    Ok(())
}

/// Starts the HTTP and PostgreSQL servers over one session, and returns it
/// (`None` when neither is asked for).
fn serve_sql(
    rt: &tokio::runtime::Runtime,
    serving: &Serving,
    data: &Path,
    metrics: &Metrics,
    live: Option<paicha_query::Live>,
    remote: Option<Arc<Remote>>,
) -> Result<Option<Arc<paicha_query::SessionContext>>> {
    let access = serving.access;
    let tokens = paicha_query::http::Tokens::parse(access.http_tokens.iter().map(String::as_str))
        .map_err(|e| anyhow!("--http-token: {e}"))?;
    let users = paicha_query::pg::PgUsers::parse(access.pg_users.iter().map(String::as_str))
        .map_err(|e| anyhow!("--pg-user: {e}"))?;
    let (authenticated, how) = match &serving.gateway {
        Some(g) => (
            tokens.required() && g.authenticated(),
            "--http-token and --ingest-token *:TOKEN",
        ),
        None => (tokens.required(), "--http-token"),
    };
    let http = serving
        .http
        .map(|a| listen(rt, a, "HTTP", authenticated, how))
        .transpose()?;
    let pg = serving
        .pg
        .map(|a| {
            listen(
                rt,
                a,
                "PostgreSQL",
                users.required(),
                "--pg-user NAME:PASSWORD",
            )
        })
        .transpose()?;
    if http.is_none() && pg.is_none() {
        return Ok(None);
    }
    let limits = limits(access);
    let queries = query_runtime(limits.threads)?;
    let ctx = Arc::new(rt.block_on(paicha_query::open_bounded(
        data,
        live.as_ref(),
        remote,
        &limits,
    ))?);
    if let Some(listener) = http {
        let local = listener.local_addr()?;
        let router = Port {
            sql: paicha_query::http::routes(paicha_query::http::HttpState {
                ctx: ctx.clone(),
                tokens,
                limits,
                queries: Some(queries.handle().clone()),
            }),
            metrics: metrics.registry.clone(),
            gateway: serving.gateway.clone().map(Gateway::router),
            ready: serving.ready.clone(),
        }
        .router();
        rt.spawn(async move {
            if let Err(e) = port::serve(listener, router, limits.max_connections).await {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        });
        say!("paicha: SQL at http://{local}/sql, metrics at http://{local}/metrics");
        if serving.gateway.is_some() {
            say!("paicha: ingest gateway at http://{local}/ingest/{{source}}");
        }
    }
    if let Some(listener) = pg {
        serve_pg(listener, queries, ctx.clone(), users, limits)?;
    }
    Ok(Some(ctx))
}

/// The bounds every query keeps, from the command line.
fn limits(access: &AccessArgs) -> paicha_query::bounds::Limits {
    paicha_query::bounds::Limits {
        timeout: access.query_timeout,
        max_rows: access.max_rows,
        max_concurrent: access.max_concurrent_queries as usize,
        memory: access
            .query_memory
            .map_or_else(paicha_query::bounds::default_query_memory, |m| {
                usize::try_from(m).unwrap_or(usize::MAX)
            }),
        max_connections: access.max_connections as usize,
        threads: paicha_query::bounds::query_threads(),
    }
}

/// Serves the PostgreSQL wire on `listener`: all of it on the queries'
/// runtime, as it serves only SQL.
fn serve_pg(
    listener: tokio::net::TcpListener,
    queries: &tokio::runtime::Runtime,
    ctx: Arc<paicha_query::SessionContext>,
    users: paicha_query::pg::PgUsers,
    limits: paicha_query::bounds::Limits,
) -> Result<()> {
    let local = listener.local_addr()?;
    let auth = if users.required() {
        "password required"
    } else {
        "no password"
    };
    // The wire serves only SQL: all of it on the queries' runtime.
    let listener = listener.into_std()?;
    queries.spawn(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "PostgreSQL server stopped");
                return;
            }
        };
        if let Err(e) = paicha_query::pg::serve(listener, ctx, users, limits).await {
            tracing::error!(error = %e, "PostgreSQL server stopped");
        }
    });
    say!("paicha: PostgreSQL wire at {local} ({auth})");
    Ok(())
}

fn on_signal(rt: &tokio::runtime::Runtime, shutdown: Arc<AtomicBool>) {
    rt.spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            if let Ok(mut term) = signal(SignalKind::terminate()) {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            } else {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("paicha: shutting down (flushing and committing)");
        shutdown.store(true, Ordering::Release);
    });
}

/// `paicha run`.
pub fn run(args: RunArgs) -> Result<()> {
    let (registry, mut cfg) = processing(&args.processing, &args.data)?;
    cfg.remote = storage(args.storage.as_deref())?;
    let remote = cfg.remote.clone();
    let replay = args
        .replay
        .as_ref()
        .map(|p| File::open(p).with_context(|| format!("cannot open replay file {}", p.display())))
        .transpose()?;
    let metrics = Metrics::new().context("cannot register metrics")?;
    let tasks = Arc::new(std::sync::Mutex::new(Tasks::open(cfg, registry.clone())?));

    let (cluster, brokers) = kafka_cluster(&args)?;
    let embedded = cluster.is_some();
    let key = hmac_key(&args, embedded)?;
    let decoder = Decoder::new(registry.clone(), Pseudonymizer::new(&key))
        .with_earliest(args.processing.earliest);

    let rt = runtime()?;
    let (http, pg) = endpoints(&args);
    let flow =
        embedded.then(|| FlowControl::new(args.partitions as usize, EMBEDDED_IN_FLIGHT_BYTES));
    let gateway = live_gateway(&args, http, &brokers, &decoder, &metrics, &flow)?;
    let ready = Arc::new(AtomicBool::new(false));
    let serving = Serving {
        http,
        pg,
        access: &args.access,
        gateway: gateway.clone(),
        ready: ready.clone(),
    };
    let live = serve_live(&rt, &serving, &args.data, &metrics, remote.clone())?;
    let shutdown = Arc::new(AtomicBool::new(false));
    on_signal(&rt, shutdown.clone());

    let end = args.replay.as_ref().map(|_| Arc::new(ReplayEnd::default()));
    let simulate = replay.is_none() && (args.simulate || embedded);

    let producer = start_producer(Feed {
        brokers: brokers.clone(),
        replay: replay.map(|file| (file, replay_origin(&args))),
        scenario: simulate.then(|| (scenario(&args), args.rate)),
        batching: batching(&args),
        flow: flow.clone(),
        end: end.clone(),
        shutdown: shutdown.clone(),
        registry: registry.clone(),
        pseudonymizer: decoder.pseudonymizer().clone(),
    })?;
    if simulate {
        say!(
            "paicha: simulator producing {} events/s (seed {})",
            args.rate,
            args.seed
        );
    }

    let started = Instant::now();
    let consumed = pipeline::Pipeline {
        config: consumer_config(&args, &brokers, embedded, ready, live),
        decoder: decoder.clone(),
        tasks: tasks.clone(),
        metrics: metrics.clone(),
        flow: flow.clone(),
        end: end.clone(),
        shutdown: shutdown.clone(),
    }
    .run();
    if let Some(f) = &flow {
        f.close();
    }
    if let Some(g) = &gateway {
        // Requests still waiting get their answers before the process ends.
        g.flush(std::time::Duration::from_secs(5));
    }
    let summary = consumed?;
    if args.replay.is_none() {
        shutdown.store(true, Ordering::Release);
    }
    let produced = producer
        .join()
        .map_err(|_| anyhow!("the producer thread panicked"))??;
    pipeline::log_summary(&summary);
    if let (Some(path), Some(p)) = (&args.replay, produced) {
        say_replayed(
            path,
            &p,
            &summary,
            started.elapsed().as_secs_f64(),
            &args.data,
        );
    }
    // The servers and the gateway's producer stop before the cluster they
    // talk to, so stopping logs no broker as down.
    drop(serving);
    drop(gateway);
    drop(rt);
    drop(cluster);
    Ok(())
}

/// Where `paicha run` serves HTTP and PostgreSQL: by default both live,
/// and neither for a replay unless asked.
fn endpoints(args: &RunArgs) -> (Option<&str>, Option<&str>) {
    match &args.replay {
        None => (
            Some(args.http.as_deref().unwrap_or("127.0.0.1:8080")),
            Some(args.pg.as_deref().unwrap_or("127.0.0.1:5432")),
        ),
        Some(_) => (args.http.as_deref(), args.pg.as_deref()),
    }
}

/// The ingest gateway of a live `paicha run` serving HTTP at `http`; a
/// replay's input is its file.
fn live_gateway(
    args: &RunArgs,
    http: Option<&str>,
    brokers: &str,
    decoder: &Decoder,
    metrics: &Metrics,
    flow: &Option<Arc<FlowControl>>,
) -> Result<Option<Arc<Gateway>>> {
    match (&args.replay, http) {
        (None, Some(addr)) => Ok(Some(gateway(
            brokers,
            decoder,
            &args.ingest,
            metrics,
            addr,
            flow.clone(),
        )?)),
        _ => Ok(None),
    }
}

/// The simulator's scenario for `paicha run`.
fn scenario(args: &RunArgs) -> SimConfig {
    SimConfig {
        seed: args.seed,
        scale: args.scale,
        ..SimConfig::default()
    }
}

/// The origin dead letters of a replay name: `file:NAME`.
fn replay_origin(args: &RunArgs) -> String {
    args.replay
        .as_ref()
        .and_then(|p| p.file_name())
        .map(|n| format!("file:{}", n.to_string_lossy()))
        .unwrap_or_else(|| "simulator".into())
}

/// How the replay producer batches: replayed batches reorder an input in
/// time order by less than the allowed lateness, so it never yields
/// `too_late`.
fn batching(args: &RunArgs) -> Batching {
    Batching {
        max_span_micros: i64::try_from(args.processing.lateness.as_micros()).unwrap_or(i64::MAX),
        misroute: args.misroute.clamp(0.0, 1.0),
        ..Batching::default()
    }
}

/// The consumer of `paicha run`.
fn consumer_config(
    args: &RunArgs,
    brokers: &str,
    embedded: bool,
    ready: Arc<AtomicBool>,
    live: Option<paicha_query::Live>,
) -> ConsumerConfig {
    ConsumerConfig {
        brokers: brokers.to_string(),
        group: args.group.clone(),
        embedded,
        // A replay processes its own file to the end: it takes every
        // partition rather than sharing them with a group.
        subscribe: !embedded && args.replay.is_none(),
        session_timeout: args.session_timeout,
        instance: args.instance.clone(),
        ready,
        checkpoint_interval: args.checkpoint_interval,
        slow_sink: std::time::Duration::from_millis(args.slow_sink_ms),
        live,
        data: args.data.clone(),
        crash_on: args.crash_on.clone(),
    }
}

/// The Kafka cluster `paicha run` uses: `--brokers`, or the embedded one,
/// started here (and stopped when dropped).
fn kafka_cluster(args: &RunArgs) -> Result<(Option<EmbeddedCluster>, String)> {
    if let Some(b) = &args.brokers {
        return Ok((None, b.clone()));
    }
    let c = EmbeddedCluster::start(1, args.partitions)?;
    let b = c.bootstrap_servers();
    say!(
        "paicha: embedded Kafka at {b} ({} partitions per topic)",
        args.partitions
    );
    Ok((Some(c), b))
}

/// Serves SQL over the pipeline's live view, if any port is open.
fn serve_live(
    rt: &tokio::runtime::Runtime,
    serving: &Serving,
    data: &Path,
    metrics: &Metrics,
    remote: Option<Arc<Remote>>,
) -> Result<Option<paicha_query::Live>> {
    if serving.http.is_none() && serving.pg.is_none() {
        return Ok(None);
    }
    let live: paicha_query::Live = Default::default();
    serve_sql(rt, serving, data, metrics, Some(live.clone()), remote)?;
    Ok(Some(live))
}

/// What the producer thread of `paicha run` feeds the source topics with:
/// a replay file, the simulator, or nothing (events come from outside).
struct Feed {
    brokers: String,
    /// The file and its name for dead letters (`file:NAME`).
    replay: Option<(File, String)>,
    /// The scenario and its rate, events/s.
    scenario: Option<(SimConfig, f64)>,
    batching: Batching,
    flow: Option<Arc<FlowControl>>,
    end: Option<Arc<ReplayEnd>>,
    shutdown: Arc<AtomicBool>,
    registry: Arc<Registry>,
    pseudonymizer: Pseudonymizer,
}

/// Starts the producer thread. A replay tells `end` where each source
/// partition ends once all of it is produced; a failure stops the consumer,
/// since the replay can never complete.
fn start_producer(
    feed: Feed,
) -> Result<std::thread::JoinHandle<Result<Option<kafka::ProduceSummary>>>> {
    std::thread::Builder::new()
        .name("producer".into())
        .spawn(move || {
            let shutdown = feed.shutdown.clone();
            let result = produce(feed);
            if result.is_err() {
                shutdown.store(true, Ordering::Release);
            }
            result
        })
        .context("cannot start the producer thread")
}

fn produce(feed: Feed) -> Result<Option<kafka::ProduceSummary>> {
    if let Some((file, origin)) = feed.replay {
        let mut p = BatchProducer::new(&feed.brokers, feed.batching, feed.flow)?
            .pseudonymizing(feed.pseudonymizer);
        p.produce_reader(BufReader::with_capacity(1 << 20, file), &origin)?;
        let summary = p.finish()?;
        let probe: BaseConsumer = kafka::client_config(&feed.brokers)
            .create()
            .context("cannot create Kafka client")?;
        let mut ends = std::collections::BTreeMap::new();
        for s in Source::ALL {
            let n = kafka::partitions(probe.client(), s.topic())?;
            ends.extend(pipeline::high_watermarks(&probe, s.topic(), n)?);
        }
        if let Some(end) = &feed.end {
            if let Ok(mut e) = end.source_ends.lock() {
                *e = Some(ends);
            }
        }
        return Ok(Some(summary));
    }
    let Some((sim, rate)) = feed.scenario else {
        return Ok(None);
    };
    produce_scenario(
        &feed.brokers,
        sim,
        &feed.registry,
        feed.pseudonymizer,
        rate,
        feed.flow,
        feed.shutdown,
    )
    .map(Some)
}

/// The one line a finished replay prints.
fn say_replayed(
    path: &Path,
    p: &kafka::ProduceSummary,
    summary: &pipeline::RunSummary,
    secs: f64,
    data: &Path,
) {
    let rejected: u64 = summary.rejected.values().sum::<u64>() + p.unroutable;
    let mut reasons = summary.rejected.clone();
    for (r, n) in &p.unroutable_by_reason {
        if let Some(known) = paicha_contract::event::RejectReason::parse(r) {
            *reasons.entry(known.as_str()).or_default() += n;
        }
    }
    let reasons = reasons
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    say!(
        "paicha: replayed {} lines of {} in {secs:.1}s ({:.0} lines/s): {} events counted, {} duplicates, {} rejected{}{}; data in {}",
        p.lines,
        path.display(),
        p.lines as f64 / secs.max(1e-9),
        summary.accepted,
        summary.duplicates,
        rejected,
        if reasons.is_empty() { String::new() } else { format!(" ({reasons})") },
        if summary.rerouted == 0 {
            String::new()
        } else {
            format!(
                ", {} forwarded to their district's partition",
                summary.rerouted
            )
        },
        data.display()
    );
}

/// `paicha simulate`.
pub fn simulate(args: SimulateArgs) -> Result<()> {
    if !(args.scale > 0.0 && args.scale.is_finite()) {
        bail!("--scale must be a positive number");
    }
    let registry = Registry::builtin()?;
    let mut cfg = SimConfig {
        seed: args.seed,
        days: args.days,
        scale: args.scale,
        ..SimConfig::default()
    };
    if args.clean {
        cfg = cfg.clean();
    }
    let out = match (&args.out, &args.brokers) {
        (Some(out), _) => out,
        (None, Some(brokers)) => return simulate_live(&args, brokers, cfg, &registry),
        (None, None) => bail!("give --out FILE or --brokers HOST:PORT"),
    };
    let file = File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let s = simulate::write_scenario(cfg, &registry, &mut w)?;
    w.flush()
        .with_context(|| format!("cannot write {}", out.display()))?;
    say!(
        "paicha: wrote {} lines to {}: {} events ({} checkpoint, {} pharmacy, {} door_visit, {} case, {} bed), {} duplicates, {} late, {} malformed",
        s.lines,
        out.display(),
        s.events,
        s.by_source[0],
        s.by_source[1],
        s.by_source[2],
        s.by_source[3],
        s.by_source[4],
        s.duplicates,
        s.late,
        s.malformed
    );
    Ok(())
}

/// `paicha simulate --brokers`: the scenario, live, into a deployment's
/// topics, pseudonymized with its key.
fn simulate_live(
    args: &SimulateArgs,
    brokers: &str,
    cfg: SimConfig,
    registry: &Registry,
) -> Result<()> {
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        bail!("--rate must be a positive number of events per second");
    }
    let key = given_hmac_key(args.hmac_key_file.as_deref())?.context(
        "no pseudonymization key: set PAICHA_HMAC_KEY or --hmac-key-file (the processors' key)",
    )?;
    let rt = runtime()?;
    let shutdown = Arc::new(AtomicBool::new(false));
    on_signal(&rt, shutdown.clone());
    say!(
        "paicha: simulator producing {} events/s (seed {}) into {brokers}",
        args.rate,
        args.seed
    );
    let s = produce_scenario(
        brokers,
        cfg,
        registry,
        Pseudonymizer::new(&key),
        args.rate,
        None,
        shutdown,
    )?;
    say!(
        "paicha: produced {} lines in {} messages",
        s.lines,
        s.messages
    );
    Ok(())
}

/// `paicha broker`.
pub fn broker(args: BrokerArgs) -> Result<()> {
    let cluster = EmbeddedCluster::start(1, args.partitions)?;
    say!(
        "paicha: embedded Kafka at {} ({} partitions per topic); Ctrl-C stops it",
        cluster.bootstrap_servers(),
        args.partitions
    );
    let rt = runtime()?;
    let shutdown = Arc::new(AtomicBool::new(false));
    on_signal(&rt, shutdown.clone());
    while !shutdown.load(Ordering::Acquire) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop(cluster);
    Ok(())
}

/// How often `paicha serve` looks for a new checkpoint to publish.
const SERVE_STATE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Sets the follow-up gauges (`paicha_follow_ups`, `paicha_follow_ups_overdue`)
/// from a snapshot's `follow_ups` rows, as `paicha run` sets them from its
/// processors.
fn publish_follow_ups(rows: &arrow::record_batch::RecordBatch, metrics: &Metrics) -> Result<()> {
    use arrow::array::{Array, Int64Array, StringArray};

    let strings = |name: &str| {
        rows.column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .with_context(|| format!("follow_ups has no string column {name}"))
    };
    let (district, status) = (strings("district")?, strings("status")?);
    let days = rows
        .column_by_name("days_overdue")
        .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
        .context("follow_ups has no integer column days_overdue")?;
    let mut by_status = std::collections::BTreeMap::<(&str, &str), i64>::new();
    let mut by_days = std::collections::BTreeMap::<(&str, String), i64>::new();
    for i in 0..rows.num_rows() {
        let (d, s) = (district.value(i), status.value(i));
        *by_status.entry((d, s)).or_default() += 1;
        if s == "overdue" {
            let n = days.value(i);
            let n = if n >= 4 {
                "4+".to_string()
            } else {
                n.to_string()
            };
            *by_days.entry((d, n)).or_default() += 1;
        }
    }
    let by_status: Vec<(&str, &str, i64)> =
        by_status.into_iter().map(|((d, s), n)| (d, s, n)).collect();
    let by_days: Vec<(&str, &str, i64)> = by_days
        .iter()
        .map(|((d, days), n)| (*d, days.as_str(), *n))
        .collect();
    metrics.emit(FollowUpsCounted {
        by_status: &by_status,
        by_days: &by_days,
    });
    Ok(())
}

/// `paicha serve`.
pub fn serve(args: ServeArgs) -> Result<()> {
    let remote = storage(args.storage.as_deref())?;
    if remote.is_none() {
        paicha_processors::store::Store::open(&args.data)?;
    }
    let metrics = Metrics::new().context("cannot register metrics")?;
    let rt = runtime()?;
    let serving = Serving {
        http: Some(&args.http),
        pg: Some(&args.pg),
        access: &args.access,
        gateway: None,
        ready: Arc::new(AtomicBool::new(true)),
    };
    let ctx = serve_sql(&rt, &serving, &args.data, &metrics, None, remote)?
        .context("paicha serve has nothing to serve")?;
    // The gauges come from the snapshot queries read, rebuilt by the
    // catalog only when a new checkpoint lands (a pipeline may still be
    // writing the directory).
    let mut published: Option<Arc<paicha_processors::LiveView>> = None;
    let mut publish = || -> Result<()> {
        let view = paicha_query::snapshot(&ctx)?;
        if !published.as_ref().is_some_and(|p| Arc::ptr_eq(p, &view)) {
            let rows = arrow::compute::concat_batches(
                &paicha_processors::follow_ups::schema(),
                &view.rows("follow_ups"),
            )?;
            publish_follow_ups(&rows, &metrics)?;
            published = Some(view);
        }
        Ok(())
    };
    publish()?;
    let shutdown = Arc::new(AtomicBool::new(false));
    on_signal(&rt, shutdown.clone());
    let mut checked = Instant::now();
    while !shutdown.load(Ordering::Acquire) {
        std::thread::sleep(std::time::Duration::from_millis(100));
        if checked.elapsed() >= SERVE_STATE_INTERVAL {
            checked = Instant::now();
            if let Err(e) = publish() {
                tracing::warn!(error = %format!("{e:#}"), "cannot publish the follow-up gauges");
            }
        }
    }
    Ok(())
}
