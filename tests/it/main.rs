//! paicha's integration tests, one binary: each module runs the `paicha`
//! binary (or its libraries) as a user, a producer or a client would.
//!
//! Tests that need a program paicha does not build (tansu, psql, Python's
//! psycopg, DuckDB and kafka-python, Prometheus) check for it first
//! ([`common::external`]): without it they are reported as skipped, unless
//! `PAICHA_TIER=full` (set by `.ci/run`), where a missing tool fails them.
// Helpers of tests, outside #[test] functions: a panic is the test failing.
#![allow(clippy::unwrap_used)]

mod common;

mod alerting;
mod broker_faults;
mod brokers;
mod cli;
mod crash;
mod follow_ups;
mod gateway;
mod grafana;
mod harness;
mod live;
mod live_crash;
mod live_order;
mod pipeline_library;
mod replay;
mod scale_out;
mod slt;
mod sql_access;
