//! `dead_letters`: one row per rejected message, read back from the
//! `screening.dead_letter` topic so that rejects from every producer and
//! every instance land in one table. The original bytes stay in the topic;
//! the table holds only where the message came from and why it was refused.

use std::sync::Arc;

use crate::operators::{by_day, AlertBook, Cx, Final, Operator, ReadFile, StateFiles};
use crate::store::Manifest;
use crate::tables::{Kind, Table, View};
use anyhow::Result;
use arrow::array::{
    ArrayRef, Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use paicha_contract::event::Event;

/// Where a rejected message came from and why it was refused: the headers of
/// a dead-letter message, and one row of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// When the dead letter was written, µs since the epoch.
    pub received_at: i64,
    /// Topic of the original message, or `file:NAME` for a replayed line that
    /// could not be routed to a topic.
    pub topic: String,
    /// Partition of the original message (none for a file line).
    pub partition: Option<i32>,
    /// Offset of the original message, or the line number in the file.
    pub offset: i64,
    /// Line within a batched message (0 for the first or only event).
    pub line: i32,
    /// Machine-readable reason.
    pub reason: String,
    /// The field concerned, if any.
    pub field: Option<String>,
}

impl DeadLetter {
    /// The identity of the rejected message: the same message rejected again
    /// (after a restart) is one row.
    pub fn id(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.topic,
            self.partition.unwrap_or(-1),
            self.offset,
            self.line
        )
    }
}

/// The Arrow schema of `dead_letters`.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "received_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, true),
        Field::new("offset", DataType::Int64, false),
        Field::new("line", DataType::Int32, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("field", DataType::Utf8, true),
    ]))
}

/// Builds `dead_letters` rows.
pub fn batch(rows: &[DeadLetter]) -> arrow::error::Result<RecordBatch> {
    let n = rows.len();
    let mut at = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut topic = StringBuilder::new();
    let mut partition = Int32Builder::with_capacity(n);
    let mut offset = Int64Builder::with_capacity(n);
    let mut line = Int32Builder::with_capacity(n);
    let mut reason = StringBuilder::new();
    let mut field = StringBuilder::new();
    for r in rows {
        at.append_value(r.received_at);
        topic.append_value(&r.topic);
        partition.append_option(r.partition);
        offset.append_value(r.offset);
        line.append_value(r.line);
        reason.append_value(&r.reason);
        field.append_option(r.field.as_deref());
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(at.finish()),
        Arc::new(topic.finish()),
        Arc::new(partition.finish()),
        Arc::new(offset.finish()),
        Arc::new(line.finish()),
        Arc::new(reason.finish()),
        Arc::new(field.finish()),
    ];
    RecordBatch::try_new(schema(), cols)
}

/// The `dead_letters` operator: rows come from the dead-letter topic
/// ([`DeadLetters::push`]), not from events.
#[derive(Debug, Default)]
pub struct DeadLetters {
    rows: Vec<DeadLetter>,
}

impl DeadLetters {
    /// Records a dead letter (the processor drops repeats first).
    pub fn push(&mut self, dl: DeadLetter) {
        self.rows.push(dl);
    }
}

const TABLE: &str = "dead_letters";

impl Operator for DeadLetters {
    fn tables(&self) -> Vec<Table> {
        vec![Table {
            name: TABLE,
            schema: schema(),
            kind: Kind::Appended,
            view: View::AsStored,
        }]
    }

    fn add(&mut self, _e: &Event, _cx: &Cx, _alerts: &mut AlertBook) {}

    fn take_final(&mut self, _cut: i64, cx: &Cx) -> Result<Vec<Final>> {
        let rows = std::mem::take(&mut self.rows);
        by_day(TABLE, cx.calendar, rows, |r| r.received_at, batch)
    }

    fn live(&mut self, _cx: &Cx) -> Result<Vec<(&'static str, RecordBatch)>> {
        Ok(vec![(TABLE, batch(&self.rows)?)])
    }

    fn save(&mut self, _m: &mut Manifest, _state: &mut StateFiles, _cx: &Cx) -> Result<()> {
        Ok(())
    }

    fn restore(&mut self, _m: &Manifest, _read: &ReadFile, _cx: &Cx) -> Result<()> {
        Ok(())
    }
}
