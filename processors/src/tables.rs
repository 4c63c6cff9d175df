//! Every table the processors write, declared by the operator that fills it
//! ([`crate::operators`]): its name, its schema, how its rows are kept and
//! how SQL shows them. The table list, the live view and the SQL catalog
//! (`paicha-query`) are derived from [`all`].

use arrow::datatypes::SchemaRef;

use crate::operators::Operators;

/// How a table's rows are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Event-time windows: a window's row is written once the watermark
    /// passes it, open windows are read from memory, and a late event adds
    /// a correction row.
    Windowed,
    /// Rows written once each, by their calendar day (raw events, dead
    /// letters).
    Appended,
    /// Rows the state holds whole until the retention has passed, then
    /// archived to files (follow-ups, alerts, EARS).
    Held,
}

/// How SQL shows a table's stored and in-memory rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// As they are.
    AsStored,
    /// The rows of one key summed into one: `keys` (SQL columns) group
    /// them, `counts` are summed (a window's first row and its corrections).
    Folded {
        keys: &'static str,
        counts: &'static [&'static str],
    },
    /// As they are, plus `day`: the calendar day of `event_time` in the
    /// data's time zone.
    WithDay,
    /// Built by name in the query layer (`bed_occupancy`, whose
    /// utilization is derived from folded counts).
    Custom,
}

/// One table the processors write.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: &'static str,
    pub schema: SchemaRef,
    pub kind: Kind,
    pub view: View,
}

impl Table {
    /// A table of [`Kind::Held`] rows, shown as stored.
    pub fn held(name: &'static str, schema: SchemaRef) -> Table {
        Table {
            name,
            schema,
            kind: Kind::Held,
            view: View::AsStored,
        }
    }
}

/// Every table.
pub fn all() -> Vec<Table> {
    Operators::tables()
}

/// The names of [`all`].
pub fn names() -> Vec<&'static str> {
    all().into_iter().map(|t| t.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_schema_has_columns() {
        let all = all();
        let mut names = names();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
        assert_eq!(all.len(), 12);
        assert!(all.iter().all(|t| !t.schema.fields().is_empty()));
    }
}
