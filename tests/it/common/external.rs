//! Programs the tests need that paicha does not build: a test checks for
//! them first with [`needs`].
//!
//! Two tiers. On a machine with only Rust, `cargo test --workspace` runs
//! every test it can and reports the rest as skipped, one line each on the
//! terminal (the test passes: libtest has no "skipped"). `.ci/run` installs
//! every tool and sets `PAICHA_TIER=full`, where a missing tool fails its
//! test instead of skipping it, so CI never passes by skipping.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// A program a test needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// tansu 0.6, a Kafka-protocol broker (`cargo install tansu`).
    Tansu,
    /// psql, Debian's postgresql-client.
    Psql,
    /// Python's psycopg.
    Psycopg,
    /// Python's duckdb.
    DuckDb,
    /// kafka-python 2.2.15, a Kafka client not built on librdkafka.
    KafkaPython,
    /// Prometheus and Alertmanager, Debian's packages.
    Prometheus,
}

impl Tool {
    fn install(self) -> &'static str {
        match self {
            Tool::Tansu => {
                "cargo install tansu --version 0.6.0 --locked --features libsql \
                 (or set PAICHA_TANSU)"
            }
            Tool::Psql => "apt-get install postgresql-client",
            Tool::Psycopg => "python3 -m pip install 'psycopg[binary]'",
            Tool::DuckDb => "python3 -m pip install duckdb",
            Tool::KafkaPython => "python3 -m pip install 'kafka-python==2.2.15'",
            Tool::Prometheus => "deploy/check.sh (installs prometheus and prometheus-alertmanager)",
        }
    }

    fn present(self) -> bool {
        match self {
            Tool::Tansu => super::tansu::tansu_binary().is_some(),
            Tool::Psql => runs(Command::new("psql").arg("--version")),
            Tool::Psycopg => python("import psycopg"),
            Tool::DuckDb => python("import duckdb"),
            Tool::KafkaPython => {
                python("import kafka, sys; sys.exit(kafka.__version__ != '2.2.15')")
            }
            Tool::Prometheus => [PROMETHEUS, ALERTMANAGER]
                .iter()
                .all(|p| Path::new(p).is_file()),
        }
    }
}

/// Where Debian's packages put Prometheus and Alertmanager.
pub const PROMETHEUS: &str = "/usr/bin/prometheus";
pub const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";

fn runs(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn python(code: &str) -> bool {
    runs(Command::new("python3").args(["-c", code]))
}

/// Whether this run is the full tier, where nothing may be skipped.
fn full_tier() -> bool {
    std::env::var("PAICHA_TIER").is_ok_and(|t| t == "full")
}

/// Whether `test` can run: every one of `tools` is here. If one is not, a
/// `SKIPPED` line names it and how to install it, and the test should
/// return; in the full tier the test fails instead.
pub fn needs(test: &str, tools: &[Tool]) -> bool {
    static FOUND: OnceLock<std::sync::Mutex<Vec<(Tool, bool)>>> = OnceLock::new();
    let found = FOUND.get_or_init(Default::default);
    for &tool in tools {
        let here = {
            let mut known = found.lock().unwrap_or_else(|e| e.into_inner());
            match known.iter().find(|(t, _)| *t == tool) {
                Some((_, here)) => *here,
                None => {
                    let here = tool.present();
                    known.push((tool, here));
                    here
                }
            }
        };
        if here {
            continue;
        }
        let line = format!("SKIPPED {test}: needs {tool:?}: {}", tool.install());
        assert!(!full_tier(), "{line} (PAICHA_TIER=full)");
        // Past libtest's capture, so the skip shows on the terminal.
        let _ = writeln!(std::io::stderr(), "{line}");
        return false;
    }
    true
}
