//! `paicha sql`: one query against a data directory or a running server.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use arrow::record_batch::RecordBatch;

use crate::cli::SqlArgs;

/// Arrow IPC stream, the format results travel in from a server.
const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// `paicha sql`.
pub fn sql(args: SqlArgs) -> Result<()> {
    let (schema, batches) = match &args.url {
        Some(url) => remote(url, args.token.as_deref(), &args.query)?,
        None => {
            let data = args
                .data
                .clone()
                .or_else(|| std::env::var_os("PAICHA_DATA").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from("data"));
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let remote = args
                .storage
                .as_deref()
                .map(paicha_processors::remote::Remote::open)
                .transpose()?;
            rt.block_on(async {
                let ctx = paicha_query::open_shared(&data, None, remote).await?;
                paicha_query::query(&ctx, &args.query).await
            })?
        }
    };
    let out = paicha_query::render(args.format, &schema, &batches)?;
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth a message.
    let _ = stdout.write_all(&out);
    let _ = stdout.flush();
    Ok(())
}

fn remote(
    url: &str,
    token: Option<&str>,
    query: &str,
) -> Result<(arrow::datatypes::SchemaRef, Vec<RecordBatch>)> {
    let endpoint = format!("{}/sql", url.trim_end_matches('/'));
    let mut request = ureq::post(&endpoint);
    if let Some(t) = token {
        request = request.set("Authorization", &format!("Bearer {t}"));
    }
    let resp = match request
        .set("Accept", ARROW_STREAM)
        .set("Content-Type", "application/sql")
        .send_string(query)
    {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => {
            let body = r.into_string().unwrap_or_default();
            let msg = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or(body);
            anyhow::bail!("{msg}");
        }
        Err(e) => return Err(anyhow::anyhow!("cannot reach {endpoint}: {e}")),
    };
    let reader = arrow::ipc::reader::StreamReader::try_new(resp.into_reader(), None)
        .context("the server's answer is not an Arrow stream")?;
    let schema = reader.schema();
    let batches = reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .context("the server's answer was cut short")?;
    Ok((schema, batches))
}
