//! SQL semantics as `sqllogictest` files (`tests/slt/*.slt`) over a small
//! fixed data directory: `tests/slt/events.jsonl`, replayed by the binary
//! as a user would. The expected results in the `.slt` files were worked out
//! by hand from the events (see the comments there), not by running paicha.
// Helpers of tests, outside #[test] functions: a panic is the test failing.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use crate::common::*;
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};

#[derive(Debug)]
struct SqlError(String);

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SqlError {}

struct Paicha {
    ctx: paicha_query::SessionContext,
}

#[async_trait::async_trait]
impl AsyncDB for Paicha {
    type Error = SqlError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SqlError> {
        let (schema, batches) = paicha_query::query(&self.ctx, sql)
            .await
            .map_err(|e| SqlError(e.to_string()))?;
        let types = schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Int8
                | DataType::Int16
                | DataType::Int32
                | DataType::Int64
                | DataType::UInt8
                | DataType::UInt16
                | DataType::UInt32
                | DataType::UInt64 => DefaultColumnType::Integer,
                DataType::Float32 | DataType::Float64 => DefaultColumnType::FloatingPoint,
                _ => DefaultColumnType::Text,
            })
            .collect();
        let options = FormatOptions::default().with_null("NULL");
        let mut rows = Vec::new();
        for b in &batches {
            let formatters = b
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SqlError(e.to_string()))?;
            for r in 0..b.num_rows() {
                rows.push(formatters.iter().map(|f| f.value(r).to_string()).collect());
            }
        }
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}
}

#[test]
fn sql_semantics_over_a_fixed_data_directory() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    ok(&[
        "run",
        "--replay",
        fixture.join("events.jsonl").to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut files: Vec<_> = std::fs::read_dir(&fixture)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "slt"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "the .slt files are missing");
    let mut failures = Vec::new();
    for file in &files {
        let data = data.clone();
        let mut runner = sqllogictest::Runner::new(move || {
            let data = data.clone();
            async move {
                let ctx = paicha_query::open(&data)
                    .await
                    .map_err(|e| SqlError(e.to_string()))?;
                Ok(Paicha { ctx })
            }
        });
        if let Err(e) = rt.block_on(runner.run_file_async(file)) {
            failures.push(format!("{}: {e}", file.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
