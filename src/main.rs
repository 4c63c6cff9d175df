//! `paicha`: streaming analytics for the command centers of epidemic mass
//! screening. See README.md and `paicha --help`.

mod cli;
mod port;
mod run;
mod sql;

use std::process::ExitCode;

use clap::Parser;

/// jemalloc, as Vector and many Rust data systems use: under queries
/// that allocate and free gigabytes on several threads beside the
/// pipeline, glibc's per-thread arenas kept about 750 MiB more resident
/// (docs/benchmarks.md, issue #17), beyond `--query-memory` and the
/// pipeline's own.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: freed pages go back to the
/// system after a second instead of ten, which took the hostile run's
/// peak from 2,691 to 2,472 MiB (a query pool churns a gigabyte in
/// seconds), and a background thread returns them: without it an arena
/// purges only when a thread allocates from it again, and an arena of
/// query threads gone idle kept its pages. `_RJEM_MALLOC_CONF` in the
/// environment still overrides it.
#[export_name = "_rjem_malloc_conf"]
#[allow(non_upper_case_globals)]
static malloc_conf: Option<&'static libc::c_char> = Some(unsafe {
    // SAFETY: a NUL-terminated literal, alive for the whole program.
    &*c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr()
});

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Err(e) = cli::apply_config_file(&args) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let cli = match cli::Cli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // One line: clap's first line names the problem; the usage that
            // follows is what `--help` is for.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("{first} (see `paicha --help`)");
            return ExitCode::from(2);
        }
    };
    init_logging();
    // A panic is a bug, not the user's doing: one log line, no backtrace
    // (the pipeline names the message it crashed on; see quarantine.rs).
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(at = %at, "internal error: {what}");
    }));
    let result = match cli.command {
        cli::Command::Run(args) => run::run(*args),
        cli::Command::Simulate(args) => run::simulate(args),
        cli::Command::Serve(args) => run::serve(args),
        cli::Command::Broker(args) => run::broker(args),
        cli::Command::Sql(args) => sql::sql(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line. Some errors (DataFusion's) already
/// print their cause, so a cause whose text is already shown is skipped.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PAICHA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
