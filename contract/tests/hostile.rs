//! Hostile input against the event decoder (`paicha_contract::event`).
//!
//! What this file proves about `Decoder::decode` (and `decode_with`, and
//! the producers' `route` and `pseudonymize`, which share its first pass):
//!
//! * **A corpus of hostile and malformed events** ([`corpus`]), each derived
//!   from a valid base event of one of the five sources, is refused with the
//!   exact machine-readable reason (and the field, where the decoder names
//!   one) that `shared/contract/events.md` implies: truncated JSON, empty and
//!   whitespace input, bare scalars and arrays (arrays of an event's values
//!   in field order included), over-long strings in every identifier field,
//!   lines over `MAX_LINE_BYTES`, 10,000-deep nesting, NaN / Infinity /
//!   1e999, numbers as strings, bad quantities, invalid and overlong UTF-8,
//!   lone surrogate escapes in every string field, byte-order marks,
//!   duplicate keys, malformed and future timestamps (a non-ASCII offset
//!   sign included), unknown enum values, hostile `symptoms` arrays, unknown
//!   districts, hospitals and sources, bad `event_id`s, nulls in required
//!   fields, control characters, trailing garbage, two objects on a line,
//!   and raw ids where pseudonyms were promised. Every reason the decoder
//!   can give is covered (a reason added later fails the test until it is).
//! * **No case panics** (each runs under `catch_unwind`, so a panic names its
//!   case), **every case finishes quickly**, and **memory stays bounded**: a
//!   counting global allocator measures the peak live heap of each decode
//!   call against a bound linear in the line length (see [`mem_bound`]).
//! * **Hostile but valid input** ([`accepted_hostile`]) — 100,000-deep
//!   nesting in an unknown field, 60,000 unknown keys, a line of exactly
//!   `MAX_LINE_BYTES`, the RFC 3339 space separator — decodes, under the same
//!   time and memory bounds.
//! * **Producers agree**: `route` and `pseudonymize` give the decoder's
//!   reason for every corpus line refused as a whole (not JSON, not UTF-8,
//!   too large, not an object), and `pseudonymize` refuses a `person_id`,
//!   `household_id` or `vehicle_id` that is present but not a string,
//!   whatever the source.
//! * **Property tests** (proptest): arbitrary bytes and JSON-token soup never
//!   panic; mutations of valid events never panic, whatever still decodes
//!   satisfies the contract's invariants (checked against an independent
//!   parse of the line), and it survives the producers' `pseudonymize`
//!   unchanged; randomly generated valid events of every source always
//!   decode and round-trip every field exactly, from raw ids and from
//!   pseudonymized ones. Case counts are bounded by [`config`];
//!   `PROPTEST_CASES` overrides them.
// Helpers of tests, outside #[test] functions: a panic is the test failing.
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use paicha_contract::event::{
    pseudonymize, route, BedAction, Body, CaseStatus, Decoder, Disposition, DrugClass, Event, Ids,
    Observation, Outcome, Reject, RejectReason, Source, Symptoms, VisitKind, MAX_FUTURE_MICROS,
    MAX_LINE_BYTES, MAX_STRING_BYTES, SYMPTOM_NAMES,
};
use paicha_contract::pseudonym::Pseudonymizer;
use paicha_contract::registry::Registry;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::value::RawValue;
use serde_json::Value;

// ---------------------------------------------------------------------------
// Counting allocator
// ---------------------------------------------------------------------------

/// Wraps the system allocator and, on threads that have switched metering
/// on, tracks live and peak heap bytes.
///
/// The counters are per thread (const-initialised `thread_local!` cells,
/// which need no allocation and no destructor, so they are safe to touch
/// from inside the allocator). Tests in this binary run on parallel threads;
/// per-thread counters mean the proptest threads cannot inflate the peak
/// measured for a corpus case, without serialising the tests. A block freed
/// on the metered thread but allocated before metering began makes `live`
/// go below zero, which is why it is signed: the peak is measured relative
/// to the baseline at the start of the call.
struct CountingAlloc;

struct Meter {
    on: Cell<bool>,
    live: Cell<isize>,
    peak: Cell<isize>,
}

thread_local! {
    static METER: Meter = const {
        Meter {
            on: Cell::new(false),
            live: Cell::new(0),
            peak: Cell::new(0),
        }
    };
}

fn metered(delta: isize, transient: isize) {
    let _ = METER.try_with(|m| {
        if m.on.get() {
            let live = m.live.get();
            // `transient`: bytes live only during the call (a moving realloc
            // holds the old and the new block at once).
            m.peak.set(m.peak.get().max(live + transient));
            let now = live + delta;
            m.live.set(now);
            m.peak.set(m.peak.get().max(now));
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments; the
// bookkeeping only touches thread-local `Cell`s and never allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            metered(layout.size() as isize, 0);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            metered(layout.size() as isize, 0);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        metered(-(layout.size() as isize), 0);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            let (old, new) = (layout.size() as isize, new_size as isize);
            // Grown in place: only the difference. Moved: old and new were
            // both live for a moment.
            let transient = if p == ptr { new - old } else { new };
            metered(new - old, transient.max(0));
        }
        p
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Runs `f` with metering on and returns its result and the peak live heap
/// bytes above the level at the start of the call.
fn measure<R>(f: impl FnOnce() -> R) -> (R, usize) {
    METER.with(|m| {
        m.live.set(0);
        m.peak.set(0);
        m.on.set(true);
    });
    let r = f();
    let peak = METER.with(|m| {
        m.on.set(false);
        m.peak.get()
    });
    (r, peak.max(0) as usize)
}

/// The heap a decode call may use for a line of `len` bytes.
///
/// Where decoding allocates, per the design of `event.rs`: the first pass
/// borrows every field as a `&RawValue` (no copies), but `serde_json` keeps a
/// scratch buffer for escaped keys and one byte per nesting level while
/// skipping ignored values (≤ `len`); a string field with escapes is
/// unescaped into an owned `String` through that scratch (≤ 2 × `len`);
/// errors and pseudonyms are small and fixed. So 4 × the line covers every
/// copy with room to spare, and 64 KiB covers the fixed part (error boxes,
/// the event, hashing state). Measured peaks of the corpus are far below
/// it, `symptoms` arrays of tiny elements included: the decoder stops at
/// the first bad element (see [`symptom_arrays_stay_within_the_memory_bound`]).
fn mem_bound(len: usize) -> usize {
    4 * len + 64 * 1024
}

/// How long one decode may take. Generous on purpose: it must hold in a debug
/// build on a busy 2-core machine; what it catches is super-linear work,
/// which on the 1 MiB lines of the corpus would take seconds to minutes.
const TIME_BOUND: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------
// Decoder, clock and base events
// ---------------------------------------------------------------------------

/// The wall clock passed to `decode`: 2030-01-01T00:00:00Z.
const NOW_SECS: i64 = 1_893_456_000;
const NOW: i64 = NOW_SECS * 1_000_000;
/// 2000-01-01T00:00:00Z, the earliest time the generators produce.
const Y2000_SECS: i64 = 946_684_800;

fn decoder() -> &'static Decoder {
    static D: OnceLock<Decoder> = OnceLock::new();
    D.get_or_init(|| {
        Decoder::new(
            Arc::new(Registry::builtin().expect("builtin registry")),
            Pseudonymizer::new(b"key"),
        )
    })
}

fn pseudonym(raw: &str) -> String {
    static P: OnceLock<Pseudonymizer> = OnceLock::new();
    P.get_or_init(|| Pseudonymizer::new(b"key")).key(raw)
}

/// A JSON string literal for `s`.
fn js(s: &str) -> String {
    serde_json::to_string(s).expect("string serializes")
}

/// An event as an ordered list of (raw JSON key, raw JSON value) pairs, so
/// that tests can put anything — invalid tokens included — in a value.
#[derive(Debug, Clone)]
struct Ev(Vec<(String, String)>);

impl Ev {
    fn of(fields: &[(&str, &str)]) -> Ev {
        Ev(fields.iter().map(|(k, v)| (js(k), v.to_string())).collect())
    }

    /// Replaces the value of `key` (appends the field if absent).
    fn set(mut self, key: &str, raw: impl Into<String>) -> Ev {
        let k = js(key);
        let raw = raw.into();
        match self.0.iter_mut().find(|(x, _)| *x == k) {
            Some(f) => f.1 = raw,
            None => self.0.push((k, raw)),
        }
        self
    }

    /// Sets `key` to the JSON string `s`.
    fn set_str(self, key: &str, s: &str) -> Ev {
        self.set(key, js(s))
    }

    fn without(mut self, key: &str) -> Ev {
        let k = js(key);
        self.0.retain(|(x, _)| *x != k);
        self
    }

    /// Appends a field even if the key is already there (raw key text).
    fn push_raw(mut self, raw_key: &str, raw: &str) -> Ev {
        self.0.push((raw_key.to_string(), raw.to_string()));
        self
    }

    fn text(&self) -> String {
        let body: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        format!("{{{}}}", body.join(","))
    }

    fn bytes(&self) -> Vec<u8> {
        self.text().into_bytes()
    }
}

const CHECKPOINT: &[(&str, &str)] = &[
    ("event_id", r#""cp-1""#),
    ("event_time", r#""2020-01-27T09:15:00+08:00""#),
    ("source", r#""checkpoint""#),
    ("district", r#""500101""#),
    ("checkpoint_id", r#""cp-500101-01""#),
    ("person_id", r#""500101199001011234""#),
    ("vehicle_id", r#""渝A12345""#),
    ("temperature_c", "36.6"),
    ("mask", "true"),
    ("symptoms", r#"["cough"]"#),
    ("came_from", r#""420100""#),
    ("disposition", r#""pass""#),
];

const PHARMACY: &[(&str, &str)] = &[
    ("event_id", r#""ph-1""#),
    ("event_time", r#""2020-01-27T10:00:00+08:00""#),
    ("source", r#""pharmacy""#),
    ("district", r#""500103""#),
    ("pharmacy_id", r#""ph-500103-07""#),
    ("person_id", r#""500103198502020011""#),
    ("drug_class", r#""antipyretic""#),
    ("quantity", "2"),
    ("temperature_c", "37.5"),
];

const DOOR_VISIT: &[(&str, &str)] = &[
    ("event_id", r#""dv-1""#),
    ("event_time", r#""2020-01-28T08:30:00+08:00""#),
    ("source", r#""door_visit""#),
    ("district", r#""500105""#),
    ("grid_id", r#""g-500105-12""#),
    ("household_id", r#""h-88""#),
    ("person_id", r#""500105197703030022""#),
    ("visit_kind", r#""follow_up""#),
    ("outcome", r#""seen""#),
    ("temperature_c", "36.9"),
    ("symptoms", "[]"),
    ("observation", r#""home_isolation""#),
];

const CASE: &[(&str, &str)] = &[
    ("event_id", r#""case-1""#),
    ("event_time", r#""2020-01-29T12:00:00Z""#),
    ("source", r#""case""#),
    ("district", r#""500106""#),
    ("person_id", r#""500106196004040033""#),
    ("status", r#""confirmed""#),
    ("hospital_id", r#""cq-phmc""#),
];

const BED_ADMIT: &[(&str, &str)] = &[
    ("event_id", r#""bed-1""#),
    ("event_time", r#""2020-01-29T13:00:00+08:00""#),
    ("source", r#""bed""#),
    ("district", r#""500106""#),
    ("hospital_id", r#""cq-phmc""#),
    ("action", r#""admit""#),
    ("person_id", r#""500106196004040033""#),
];

const BED_CAPACITY: &[(&str, &str)] = &[
    ("event_id", r#""bed-2""#),
    ("event_time", r#""2020-01-29T13:05:00+08:00""#),
    ("source", r#""bed""#),
    ("district", r#""500106""#),
    ("hospital_id", r#""cq-phmc""#),
    ("action", r#""capacity""#),
    ("beds_total", "300"),
];

/// A function building a base event.
type Base = fn() -> Ev;

fn cp() -> Ev {
    Ev::of(CHECKPOINT)
}
fn ph() -> Ev {
    Ev::of(PHARMACY)
}
fn dv() -> Ev {
    Ev::of(DOOR_VISIT)
}
fn case_ev() -> Ev {
    Ev::of(CASE)
}
fn admit() -> Ev {
    Ev::of(BED_ADMIT)
}
fn capacity() -> Ev {
    Ev::of(BED_CAPACITY)
}

/// Every base event with its source's name.
fn bases() -> Vec<(&'static str, Ev)> {
    vec![
        ("checkpoint", cp()),
        ("pharmacy", ph()),
        ("door_visit", dv()),
        ("case", case_ev()),
        ("bed admit", admit()),
        ("bed capacity", capacity()),
    ]
}

/// The RFC 3339 text of a UTC instant given in seconds since the epoch.
fn utc_text(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .expect("in range")
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn nested_arrays(depth: usize, inner: &str) -> String {
    format!("{}{inner}{}", "[".repeat(depth), "]".repeat(depth))
}

fn nested_objects(depth: usize) -> String {
    format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))
}

fn utf16(s: &str, big_endian: bool, bom: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut units: Vec<u16> = s.encode_utf16().collect();
    if bom {
        units.insert(0, 0xFEFF);
    }
    for u in units {
        out.extend_from_slice(&if big_endian {
            u.to_be_bytes()
        } else {
            u.to_le_bytes()
        });
    }
    out
}

/// Replaces the first occurrence of `what` in `line` by `with` (bytes).
fn splice(line: &[u8], what: &str, with: &[u8]) -> Vec<u8> {
    let at = line
        .windows(what.len())
        .position(|w| w == what.as_bytes())
        .unwrap_or_else(|| panic!("`{what}` not in line"));
    let mut out = line[..at].to_vec();
    out.extend_from_slice(with);
    out.extend_from_slice(&line[at + what.len()..]);
    out
}

/// The largest char boundary of `s` at or below `at`.
fn floor_boundary(s: &str, mut at: usize) -> usize {
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// A JSON array holding, in order, the values of every field the decoder
/// knows (`serde` lets a struct be read from a sequence).
fn positional_array() -> Vec<u8> {
    let values = [
        r#""cp-1""#,
        r#""2020-01-27T09:15:00+08:00""#,
        r#""checkpoint""#,
        r#""500101""#,
        r#""cp-500101-01""#,
        r#""500101199001011234""#,
        "null",
        "36.6",
        "true",
        "[]",
        "null",
        r#""pass""#,
    ];
    let mut all: Vec<&str> = values.to_vec();
    all.resize(24, "null");
    format!("[{}]", all.join(",")).into_bytes()
}

// ---------------------------------------------------------------------------
// Corpus
// ---------------------------------------------------------------------------

struct Case {
    name: String,
    line: Vec<u8>,
    topic: Option<Source>,
    /// Raw ids (`decode`), or ids promised as pseudonyms (`decode_with`).
    ids: Ids,
    want: Reject,
}

#[derive(Default)]
struct Corpus(Vec<Case>);

impl Corpus {
    fn add(
        &mut self,
        name: impl Into<String>,
        line: impl Into<Vec<u8>>,
        reason: RejectReason,
        field: Option<&'static str>,
    ) {
        self.add_on(name, line, None, reason, field);
    }

    fn add_on(
        &mut self,
        name: impl Into<String>,
        line: impl Into<Vec<u8>>,
        topic: Option<Source>,
        reason: RejectReason,
        field: Option<&'static str>,
    ) {
        self.0.push(Case {
            name: name.into(),
            line: line.into(),
            topic,
            ids: Ids::Raw,
            want: Reject { reason, field },
        });
    }

    /// A case for `decode_with(.., Ids::Pseudonymized)`.
    fn add_pseudonymized(
        &mut self,
        name: impl Into<String>,
        line: impl Into<Vec<u8>>,
        reason: RejectReason,
        field: &'static str,
    ) {
        self.0.push(Case {
            name: format!("pseudonymized ids: {}", name.into()),
            line: line.into(),
            topic: None,
            ids: Ids::Pseudonymized,
            want: Reject {
                reason,
                field: Some(field),
            },
        });
    }
}

/// The hostile corpus: every line here must be refused with exactly `want`.
fn corpus() -> Vec<Case> {
    use RejectReason::*;
    let mut c = Corpus::default();
    let long = "x".repeat(MAX_STRING_BYTES + 1);
    let huge = "x".repeat(100_000);

    // --- Not JSON, or JSON that is not an object --------------------------
    c.add("empty input", "", NotJson, None);
    c.add("whitespace only", " \t\r\n  ", NotJson, None);
    c.add("bare string", r#""checkpoint""#, NotObject, None);
    c.add("bare number", "42", NotObject, None);
    c.add("bare negative float", "-1.5e3", NotObject, None);
    c.add("bare null", "null", NotObject, None);
    c.add("bare true", "true", NotObject, None);
    c.add("bare empty array", "[]", NotObject, None);
    c.add("bare short array", "[1,2]", NotObject, None);
    c.add(
        "bare array of the base event",
        format!("[{}]", cp().text()),
        NotObject,
        None,
    );
    // serde reads a struct from a sequence too, positionally: an array of
    // the right values in the right order must not pass for an event.
    c.add(
        "a JSON array of the 24 known fields' values, in order",
        positional_array(),
        NotObject,
        None,
    );
    c.add(
        "a 2-element array [source, district] (route's fields, in order)",
        r#"["checkpoint","500101"]"#,
        NotObject,
        None,
    );
    c.add("single quotes", "{'event_id':'cp-1'}", NotJson, None);
    c.add("unquoted keys", "{event_id:\"cp-1\"}", NotJson, None);
    c.add("key without value", r#"{"event_id"}"#, NotJson, None);
    c.add(
        "trailing comma in object",
        format!("{},}}", &cp().text()[..cp().text().len() - 1]),
        NotJson,
        None,
    );
    c.add(
        "comment inside object",
        cp().text().replacen('{', "{/* c */", 1),
        NotJson,
        None,
    );
    c.add("lone closing brace", "}", NotJson, None);
    for (name, base) in bases() {
        let text = base.text();
        let n = text.len();
        for cut in [1, n / 4, n / 2, 3 * n / 4, n - 1] {
            let cut = floor_boundary(&text, cut);
            c.add(
                format!("{name} truncated at byte {cut}"),
                &text[..cut],
                NotJson,
                None,
            );
        }
    }
    let text = cp().text();
    for (label, after) in [
        ("inside a key", r#"{"event_"#),
        ("after a colon", r#"{"event_id":"#),
        ("inside a string value", r#"{"event_id":"cp"#),
        ("inside an escape", r#"{"event_id":"cp\u00"#),
    ] {
        c.add(
            format!("checkpoint truncated {label}"),
            after,
            NotJson,
            None,
        );
    }
    let at = text.find("36.6").expect("temperature") + 3;
    c.add(
        "checkpoint truncated inside a number",
        &text[..at],
        NotJson,
        None,
    );
    let at = text.find("true").expect("mask") + 2;
    c.add(
        "checkpoint truncated inside `true`",
        &text[..at],
        NotJson,
        None,
    );

    // --- Size limits --------------------------------------------------------
    let two_mib = cp().set_str("padding", &"x".repeat(2 << 20)).bytes();
    c.add("2 MiB line", two_mib, TooLarge, None);
    let mut over = cp().bytes();
    over.resize(MAX_LINE_BYTES + 1, b' ');
    c.add("MAX_LINE_BYTES + 1 (trailing spaces)", over, TooLarge, None);
    c.add("2 MiB of whitespace", vec![b' '; 2 << 20], TooLarge, None);
    c.add(
        "2 MiB of invalid UTF-8",
        vec![0xff; 2 << 20],
        TooLarge,
        None,
    );
    let id_fields: [(&str, Base, &'static str); 13] = [
        ("checkpoint", cp, "event_id"),
        ("checkpoint", cp, "event_time"),
        ("checkpoint", cp, "source"),
        ("checkpoint", cp, "district"),
        ("checkpoint", cp, "checkpoint_id"),
        ("checkpoint", cp, "person_id"),
        ("checkpoint", cp, "vehicle_id"),
        ("checkpoint", cp, "came_from"),
        ("pharmacy", ph, "pharmacy_id"),
        ("door_visit", dv, "grid_id"),
        ("door_visit", dv, "household_id"),
        ("case", case_ev, "hospital_id"),
        ("bed", admit, "hospital_id"),
    ];
    for (src, base, field) in id_fields {
        c.add(
            format!("{src}: {field} of {} bytes", long.len()),
            base().set_str(field, &long).bytes(),
            TooLong,
            Some(field),
        );
        c.add(
            format!("{src}: {field} of 100,000 bytes"),
            base().set_str(field, &huge).bytes(),
            TooLong,
            Some(field),
        );
    }
    for (src, base) in [
        ("pharmacy", ph as Base),
        ("door_visit", dv),
        ("case", case_ev),
        ("bed", admit),
    ] {
        c.add(
            format!("{src}: person_id of 100,000 bytes"),
            base().set_str("person_id", &huge).bytes(),
            TooLong,
            Some("person_id"),
        );
    }
    c.add(
        "person_id of 300 escaped chars (\\u0041)",
        cp().set("person_id", format!("\"{}\"", r"\u0041".repeat(300)))
            .bytes(),
        TooLong,
        Some("person_id"),
    );
    c.add(
        "person_id of 129 two-byte chars (258 bytes)",
        cp().set_str("person_id", &"é".repeat(129)).bytes(),
        TooLong,
        Some("person_id"),
    );
    c.add(
        "disposition of 100,000 bytes",
        cp().set_str("disposition", &huge).bytes(),
        TooLong,
        Some("disposition"),
    );
    c.add(
        "symptom name of 100,000 bytes",
        cp().set("symptoms", format!("[{}]", js(&huge))).bytes(),
        TooLong,
        Some("symptoms"),
    );

    // --- Deep nesting -------------------------------------------------------
    let deep = nested_arrays(10_000, "");
    c.add(
        "10,000 nested arrays in symptoms",
        cp().set("symptoms", deep.clone()).bytes(),
        WrongType,
        Some("symptoms"),
    );
    c.add(
        "10,000 nested arrays in temperature_c",
        cp().set("temperature_c", deep.clone()).bytes(),
        WrongType,
        Some("temperature_c"),
    );
    c.add(
        "10,000 nested arrays in event_id",
        cp().set("event_id", deep.clone()).bytes(),
        WrongType,
        Some("event_id"),
    );
    c.add(
        "10,000 nested objects in quantity",
        ph().set("quantity", nested_objects(10_000)).bytes(),
        WrongType,
        Some("quantity"),
    );
    c.add(
        "10,000 unclosed arrays in an unknown field",
        cp().set("deep", "[".repeat(10_000)).bytes(),
        NotJson,
        None,
    );
    c.add(
        "10,000 arrays closed by braces",
        cp().set(
            "deep",
            format!("{}{}", "[".repeat(10_000), "}".repeat(10_000)),
        )
        .bytes(),
        NotJson,
        None,
    );
    c.add(
        "10,000 nested arrays at top level",
        nested_arrays(10_000, ""),
        NotObject,
        None,
    );
    c.add(
        "100,000 unclosed braces",
        "{".repeat(100_000),
        NotJson,
        None,
    );

    // --- Numbers --------------------------------------------------------------
    for (label, raw) in [
        ("NaN", "NaN"),
        ("Infinity", "Infinity"),
        ("-Infinity", "-Infinity"),
        ("nan", "nan"),
        ("hex", "0x24"),
        ("leading plus", "+36.6"),
        ("leading zero", "036.6"),
        ("bare fraction", ".5"),
        ("trailing dot", "36."),
    ] {
        c.add(
            format!("checkpoint temperature_c {label}"),
            cp().set("temperature_c", raw).bytes(),
            NotJson,
            None,
        );
    }
    for (label, raw) in [
        ("NaN", "NaN"),
        ("Infinity", "Infinity"),
        ("-Infinity", "-Infinity"),
    ] {
        c.add(
            format!("pharmacy quantity {label}"),
            ph().set("quantity", raw).bytes(),
            NotJson,
            None,
        );
        c.add(
            format!("pharmacy temperature_c {label}"),
            ph().set("temperature_c", raw).bytes(),
            NotJson,
            None,
        );
    }
    for (label, raw) in [
        ("1e999", "1e999"),
        ("-1e999", "-1e999"),
        ("1e-999 (underflows to 0)", "1e-999"),
        ("a 400-digit integer", &format!("1{}", "0".repeat(400))),
        ("33.99", "33.99"),
        ("43.01", "43.01"),
        ("-0", "-0"),
        ("-273.15", "-273.15"),
        ("1.7976931348623157e308", "1.7976931348623157e308"),
    ] {
        c.add(
            format!("checkpoint temperature_c {label}"),
            cp().set("temperature_c", raw).bytes(),
            OutOfRange,
            Some("temperature_c"),
        );
    }
    c.add(
        "pharmacy temperature_c 1e999",
        ph().set("temperature_c", "1e999").bytes(),
        OutOfRange,
        Some("temperature_c"),
    );
    c.add(
        "door_visit temperature_c 43.5",
        dv().set("temperature_c", "43.5").bytes(),
        OutOfRange,
        Some("temperature_c"),
    );
    c.add(
        "checkpoint temperature_c as string",
        cp().set("temperature_c", r#""36.6""#).bytes(),
        WrongType,
        Some("temperature_c"),
    );
    c.add(
        "checkpoint temperature_c true",
        cp().set("temperature_c", "true").bytes(),
        WrongType,
        Some("temperature_c"),
    );
    c.add(
        "checkpoint temperature_c object",
        cp().set("temperature_c", r#"{"v":36.6}"#).bytes(),
        WrongType,
        Some("temperature_c"),
    );
    c.add(
        "pharmacy quantity as string",
        ph().set("quantity", r#""2""#).bytes(),
        WrongType,
        Some("quantity"),
    );
    c.add(
        "pharmacy quantity -1",
        ph().set("quantity", "-1").bytes(),
        OutOfRange,
        Some("quantity"),
    );
    c.add(
        "pharmacy quantity 0",
        ph().set("quantity", "0").bytes(),
        OutOfRange,
        Some("quantity"),
    );
    c.add(
        "pharmacy quantity -0",
        ph().set("quantity", "-0").bytes(),
        OutOfRange,
        Some("quantity"),
    );
    c.add(
        "pharmacy quantity 1.5 (fraction)",
        ph().set("quantity", "1.5").bytes(),
        OutOfRange,
        Some("quantity"),
    );
    c.add(
        "pharmacy quantity 2^63 (over i64)",
        ph().set("quantity", "9223372036854775808").bytes(),
        OutOfRange,
        Some("quantity"),
    );
    c.add(
        "pharmacy quantity 1e999",
        ph().set("quantity", "1e999").bytes(),
        OutOfRange,
        Some("quantity"),
    );
    c.add(
        "pharmacy quantity: 1 followed by 400 zeros",
        ph().set("quantity", format!("1{}", "0".repeat(400)))
            .bytes(),
        OutOfRange,
        Some("quantity"),
    );
    c.add(
        "pharmacy quantity -2^63",
        ph().set("quantity", "-9223372036854775808").bytes(),
        OutOfRange,
        Some("quantity"),
    );
    c.add(
        "pharmacy quantity true",
        ph().set("quantity", "true").bytes(),
        WrongType,
        Some("quantity"),
    );
    c.add(
        "pharmacy quantity array",
        ph().set("quantity", "[2]").bytes(),
        WrongType,
        Some("quantity"),
    );
    c.add(
        "bed beds_total -1",
        capacity().set("beds_total", "-1").bytes(),
        OutOfRange,
        Some("beds_total"),
    );
    c.add(
        "bed beds_total 1.5",
        capacity().set("beds_total", "1.5").bytes(),
        OutOfRange,
        Some("beds_total"),
    );
    c.add(
        "bed beds_total 1e999",
        capacity().set("beds_total", "1e999").bytes(),
        OutOfRange,
        Some("beds_total"),
    );
    c.add(
        "bed beds_total as string",
        capacity().set("beds_total", r#""300""#).bytes(),
        WrongType,
        Some("beds_total"),
    );
    c.add(
        "checkpoint mask as string",
        cp().set("mask", r#""true""#).bytes(),
        WrongType,
        Some("mask"),
    );
    c.add(
        "checkpoint mask 1",
        cp().set("mask", "1").bytes(),
        WrongType,
        Some("mask"),
    );

    // --- Encodings ---------------------------------------------------------------
    let line = cp().bytes();
    c.add(
        "invalid UTF-8 (0xff) inside person_id",
        splice(&line, "5001011990", b"5001\xff011990"),
        NotUtf8,
        None,
    );
    c.add(
        "invalid UTF-8 (0xff) between tokens",
        splice(&line, r#","mask""#, b",\xff\"mask\""),
        NotUtf8,
        None,
    );
    c.add(
        "lone continuation byte in an unknown field",
        cp().set("note", "\"a\u{1}\"")
            .bytes()
            .iter()
            .map(|&b| if b == 1 { 0x80 } else { b })
            .collect::<Vec<u8>>(),
        NotUtf8,
        None,
    );
    let text = cp().text();
    let at = text.find('渝').expect("vehicle") + 1;
    c.add(
        "line cut inside a multi-byte char",
        &text.as_bytes()[..at],
        NotUtf8,
        None,
    );
    for (label, bytes) in [
        ("overlong '/' (C0 AF)", &b"\xc0\xaf"[..]),
        ("overlong NUL (C0 80)", b"\xc0\x80"),
        ("overlong 3-byte '/' (E0 80 AF)", b"\xe0\x80\xaf"),
        ("overlong 4-byte '/' (F0 80 80 AF)", b"\xf0\x80\x80\xaf"),
        ("UTF-8-encoded surrogate (ED A0 80)", b"\xed\xa0\x80"),
        (
            "code point over U+10FFFF (F4 90 80 80)",
            b"\xf4\x90\x80\x80",
        ),
    ] {
        c.add(
            format!("event_id with {label}"),
            splice(&line, "cp-1", &[b"cp", bytes].concat()),
            NotUtf8,
            None,
        );
    }
    c.add(
        "UTF-8 BOM before the object",
        [&b"\xef\xbb\xbf"[..], &ph().bytes()].concat(),
        NotJson,
        None,
    );
    c.add(
        "UTF-16LE with BOM",
        utf16(&ph().text(), false, true),
        NotUtf8,
        None,
    );
    c.add(
        "UTF-16BE with BOM",
        utf16(&ph().text(), true, true),
        NotUtf8,
        None,
    );
    c.add(
        "UTF-16LE without BOM",
        utf16(&ph().text(), false, false),
        NotJson,
        None,
    );
    c.add(
        "UTF-32LE with BOM",
        [&b"\xff\xfe\x00\x00"[..], b"{\0\0\0}\0\0\0"].concat(),
        NotUtf8,
        None,
    );
    // A lone surrogate escape is valid JSON syntax but not Unicode text: a
    // known field holding one is refused as not_utf8, naming the field,
    // whatever the field (an unknown field is ignored, see
    // `accepted_hostile`).
    let string_fields: [(&str, Base, &'static str); 19] = [
        ("checkpoint", cp, "event_id"),
        ("checkpoint", cp, "event_time"),
        ("checkpoint", cp, "source"),
        ("checkpoint", cp, "district"),
        ("checkpoint", cp, "checkpoint_id"),
        ("checkpoint", cp, "person_id"),
        ("checkpoint", cp, "vehicle_id"),
        ("checkpoint", cp, "came_from"),
        ("checkpoint", cp, "disposition"),
        ("pharmacy", ph, "pharmacy_id"),
        ("pharmacy", ph, "drug_class"),
        ("door_visit", dv, "grid_id"),
        ("door_visit", dv, "household_id"),
        ("door_visit", dv, "visit_kind"),
        ("door_visit", dv, "outcome"),
        ("door_visit", dv, "observation"),
        ("case", case_ev, "status"),
        ("case", case_ev, "hospital_id"),
        ("bed", admit, "action"),
    ];
    for (src, base, field) in string_fields {
        c.add(
            format!("{src}: lone surrogate escape in {field}"),
            base().set(field, r#""\ud800""#).bytes(),
            NotUtf8,
            Some(field),
        );
    }
    for (label, field, raw) in [
        ("event_id after valid chars", "event_id", r#""cp\ud800""#),
        ("lone low surrogate in district", "district", r#""\udc00""#),
        (
            "high surrogate then a non-surrogate escape in person_id",
            "person_id",
            r#""\ud800\u0041""#,
        ),
        (
            "surrogate pair in reverse order in person_id",
            "person_id",
            r#""\ude00\ud83d""#,
        ),
    ] {
        c.add(
            format!("lone surrogate escape: {label}"),
            cp().set(field, raw).bytes(),
            NotUtf8,
            Some(field),
        );
    }
    c.add(
        "lone surrogate escape in a symptom name",
        cp().set("symptoms", r#"["fever","\ud800"]"#).bytes(),
        NotUtf8,
        Some("symptoms"),
    );

    // --- Control characters --------------------------------------------------
    c.add(
        "raw 0x01 inside person_id",
        splice(&line, "5001011990", b"5001\x01011990"),
        NotJson,
        None,
    );
    c.add(
        "raw newline inside event_id",
        splice(&line, "cp-1", b"cp\n1"),
        NotJson,
        None,
    );
    c.add(
        "raw tab inside district",
        splice(&line, "500101\"", b"500\t101\""),
        NotJson,
        None,
    );
    c.add(
        "raw NUL between tokens",
        splice(&line, r#","mask""#, b",\0\"mask\""),
        NotJson,
        None,
    );
    c.add(
        "raw NUL at the end",
        [&line[..], b"\0"].concat(),
        NotJson,
        None,
    );
    c.add(
        "escaped \\u0007 in event_id",
        cp().set("event_id", r#""cp\u0007""#).bytes(),
        BadEventId,
        Some("event_id"),
    );
    c.add(
        "raw DEL (0x7f) in event_id",
        splice(&line, "cp-1", b"cp\x7f1"),
        BadEventId,
        Some("event_id"),
    );
    c.add(
        "escaped \\u0000 in district",
        cp().set("district", r#""500101\u0000""#).bytes(),
        UnknownDistrict,
        Some("district"),
    );
    c.add(
        "invalid escape \\x41 in person_id",
        cp().set("person_id", r#""\x41""#).bytes(),
        NotJson,
        None,
    );
    c.add(
        "truncated escape \\u12 in person_id",
        cp().set("person_id", r#""\u12""#).bytes(),
        NotJson,
        None,
    );

    // --- Duplicate keys -----------------------------------------------------
    c.add(
        "mask twice, same value",
        cp().push_raw(r#""mask""#, "true").bytes(),
        DuplicateField,
        None,
    );
    c.add(
        "event_id twice, different values",
        cp().push_raw(r#""event_id""#, r#""cp-2""#).bytes(),
        DuplicateField,
        None,
    );
    c.add(
        "source twice, different sources",
        cp().push_raw(r#""source""#, r#""pharmacy""#).bytes(),
        DuplicateField,
        None,
    );
    c.add(
        "person_id twice, second null",
        cp().push_raw(r#""person_id""#, "null").bytes(),
        DuplicateField,
        None,
    );
    c.add(
        "mask twice, once spelled with an escape",
        cp().push_raw(r#""m\u0061sk""#, "false").bytes(),
        DuplicateField,
        None,
    );
    c.add(
        "beds_total (another source's field) twice in a checkpoint",
        cp().push_raw(r#""beds_total""#, "1")
            .push_raw(r#""beds_total""#, "2")
            .bytes(),
        DuplicateField,
        None,
    );
    c.add(
        "quantity twice in pharmacy",
        ph().push_raw(r#""quantity""#, "3").bytes(),
        DuplicateField,
        None,
    );

    // --- Timestamps -----------------------------------------------------------
    for (label, t, reason) in [
        ("without offset", "2020-01-27T09:15:00", BadTimestamp),
        ("date only", "2020-01-27", BadTimestamp),
        ("time only", "09:15:00+08:00", BadTimestamp),
        ("empty", "", BadTimestamp),
        (
            "offset without colon",
            "2020-01-27T09:15:00+0800",
            BadTimestamp,
        ),
        ("offset hours only", "2020-01-27T09:15:00+08", BadTimestamp),
        ("offset +24:00", "2020-01-27T09:15:00+24:00", BadTimestamp),
        ("month 13", "2020-13-01T09:15:00+08:00", BadTimestamp),
        ("February 30", "2020-02-30T09:15:00+08:00", BadTimestamp),
        ("hour 24", "2020-01-27T24:00:00+08:00", BadTimestamp),
        ("two-digit year", "20-01-27T09:15:00+08:00", BadTimestamp),
        (
            "five-digit year",
            "+12020-01-27T09:15:00+08:00",
            BadTimestamp,
        ),
        ("leading space", " 2020-01-27T09:15:00+08:00", BadTimestamp),
        ("trailing space", "2020-01-27T09:15:00+08:00 ", BadTimestamp),
        ("RFC 2822", "Mon, 27 Jan 2020 09:15:00 +0800", BadTimestamp),
        ("slashes", "2020/01/27T09:15:00+08:00", BadTimestamp),
        // RFC 3339 allows only ASCII '+' and '-' as the offset sign.
        (
            "offset with U+2212 MINUS SIGN",
            "2020-01-27T09:15:00\u{2212}08:00",
            BadTimestamp,
        ),
        ("epoch seconds as a string", "1580087700", BadTimestamp),
        (
            "3 years ahead of now",
            "2033-01-01T00:00:00Z",
            FutureTimestamp,
        ),
        ("year 9999", "9999-12-31T23:59:59Z", FutureTimestamp),
        // Contract 1.1: nothing before 2000-01-01T00:00:00Z.
        (
            "the last second of 1969",
            "1969-12-31T23:59:59Z",
            EarlyTimestamp,
        ),
        ("year 0001", "0001-01-01T00:00:00Z", EarlyTimestamp),
        (
            "1 s before 2000 in another offset",
            "2000-01-01T07:59:59+08:00",
            EarlyTimestamp,
        ),
    ] {
        c.add(
            format!("event_time {label}"),
            cp().set_str("event_time", t).bytes(),
            reason,
            Some("event_time"),
        );
    }
    let just_over = utc_text(NOW_SECS + MAX_FUTURE_MICROS / 1_000_000 + 1);
    c.add(
        "event_time 1 s past the allowed clock skew",
        cp().set_str("event_time", &just_over).bytes(),
        FutureTimestamp,
        Some("event_time"),
    );
    c.add(
        "event_time as a number",
        cp().set("event_time", "1580087700").bytes(),
        WrongType,
        Some("event_time"),
    );

    // --- Enumerations -----------------------------------------------------------
    for (src, base, field, bad) in [
        ("checkpoint", cp as Base, "disposition", "fly"),
        ("checkpoint", cp, "disposition", "PASS"),
        ("pharmacy", ph, "drug_class", "aspirin"),
        ("door_visit", dv, "visit_kind", "inspection"),
        ("door_visit", dv, "outcome", "absent"),
        ("door_visit", dv, "observation", "hospital"),
        ("door_visit", dv, "observation", ""),
        ("case", case_ev, "status", "cured"),
        ("bed", admit, "action", "transfer"),
        ("bed", admit, "action", "admit "),
    ] {
        c.add(
            format!("{src} {field} `{bad}`"),
            base().set_str(field, bad).bytes(),
            UnknownValue,
            Some(field),
        );
    }
    c.add(
        "checkpoint disposition as number",
        cp().set("disposition", "1").bytes(),
        WrongType,
        Some("disposition"),
    );
    c.add(
        "bed action as array",
        admit().set("action", r#"["admit"]"#).bytes(),
        WrongType,
        Some("action"),
    );

    // --- Symptoms -------------------------------------------------------------
    let names: Vec<String> = (0..10_000).map(|i| js(SYMPTOM_NAMES[i % 6])).collect();
    c.add(
        "symptoms: 10,000 entries (repeats)",
        cp().set("symptoms", format!("[{}]", names.join(",")))
            .bytes(),
        RepeatedSymptom,
        Some("symptoms"),
    );
    c.add(
        "door_visit symptoms: 10,000 entries (repeats)",
        dv().set("symptoms", format!("[{}]", names.join(",")))
            .bytes(),
        RepeatedSymptom,
        Some("symptoms"),
    );
    c.add(
        "symptoms: 100,000 names (800 KB line)",
        cp().set(
            "symptoms",
            format!("[{}]", vec![r#""fever""#; 100_000].join(",")),
        )
        .bytes(),
        RepeatedSymptom,
        Some("symptoms"),
    );
    c.add(
        "symptoms: cough twice",
        cp().set("symptoms", r#"["cough","cough"]"#).bytes(),
        RepeatedSymptom,
        Some("symptoms"),
    );
    c.add(
        "symptoms: all six then fever again",
        cp().set(
            "symptoms",
            format!("[{},\"fever\"]", SYMPTOM_NAMES.map(js).join(",")),
        )
        .bytes(),
        RepeatedSymptom,
        Some("symptoms"),
    );
    c.add(
        "symptoms: a number among names",
        cp().set("symptoms", r#"["fever",1]"#).bytes(),
        WrongType,
        Some("symptoms"),
    );
    c.add(
        "symptoms: a null among names",
        cp().set("symptoms", r#"["fever",null]"#).bytes(),
        WrongType,
        Some("symptoms"),
    );
    // Tiny elements: the decoder stops at the first bad one, so the heap
    // stays within `mem_bound` however long the array.
    for (label, n) in [
        ("10,000 zeros (20 KB line)", 10_000),
        ("500,000 zeros (1 MB line)", 500_000),
    ] {
        c.add(
            format!("symptoms: {label}"),
            cp().set("symptoms", format!("[{}]", vec!["0"; n].join(",")))
                .bytes(),
            WrongType,
            Some("symptoms"),
        );
    }
    c.add(
        "symptoms: a nested array",
        cp().set("symptoms", r#"[["fever"]]"#).bytes(),
        WrongType,
        Some("symptoms"),
    );
    c.add(
        "symptoms: unknown name",
        cp().set("symptoms", r#"["sneezing"]"#).bytes(),
        UnknownValue,
        Some("symptoms"),
    );
    c.add(
        "symptoms: wrong case",
        cp().set("symptoms", r#"["Fever"]"#).bytes(),
        UnknownValue,
        Some("symptoms"),
    );
    c.add(
        "symptoms: 10,000 distinct unknown names",
        cp().set(
            "symptoms",
            format!(
                "[{}]",
                (0..10_000)
                    .map(|i| format!("\"s{i}\""))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        )
        .bytes(),
        UnknownValue,
        Some("symptoms"),
    );
    c.add(
        "symptoms: a string, not an array",
        cp().set("symptoms", r#""fever""#).bytes(),
        WrongType,
        Some("symptoms"),
    );
    c.add(
        "symptoms: an object",
        cp().set("symptoms", r#"{"fever":true}"#).bytes(),
        WrongType,
        Some("symptoms"),
    );
    c.add(
        "symptoms: a number",
        cp().set("symptoms", "0").bytes(),
        WrongType,
        Some("symptoms"),
    );
    c.add(
        "symptoms: unclosed array",
        cp().set("symptoms", r#"["fever""#).bytes(),
        NotJson,
        None,
    );

    // --- Registries and sources ------------------------------------------------
    for d in [
        "999999",
        "500100",
        "",
        "50010",
        "5001010",
        " 500101",
        "５００１０１",
    ] {
        c.add(
            format!("district `{d}`"),
            cp().set_str("district", d).bytes(),
            UnknownDistrict,
            Some("district"),
        );
    }
    c.add(
        "district as a number",
        cp().set("district", "500101").bytes(),
        WrongType,
        Some("district"),
    );
    c.add(
        "case hospital_id unknown",
        case_ev().set_str("hospital_id", "cq-nowhere").bytes(),
        UnknownHospital,
        Some("hospital_id"),
    );
    c.add(
        "case hospital_id empty",
        case_ev().set_str("hospital_id", "").bytes(),
        UnknownHospital,
        Some("hospital_id"),
    );
    c.add(
        "case hospital_id as number",
        case_ev().set("hospital_id", "7").bytes(),
        WrongType,
        Some("hospital_id"),
    );
    c.add(
        "bed hospital_id unknown",
        admit().set_str("hospital_id", "cq-nowhere").bytes(),
        UnknownHospital,
        Some("hospital_id"),
    );
    c.add(
        "bed hospital_id in upper case",
        capacity().set_str("hospital_id", "CQ-PHMC").bytes(),
        UnknownHospital,
        Some("hospital_id"),
    );
    for (topic, base) in [
        (Source::Pharmacy, cp as Base),
        (Source::Checkpoint, ph),
        (Source::Case, dv),
        (Source::Bed, case_ev),
        (Source::DoorVisit, admit),
    ] {
        c.add_on(
            format!("source disagrees with topic {}", topic.topic()),
            base().bytes(),
            Some(topic),
            SourceMismatch,
            Some("source"),
        );
    }
    for s in [
        "xray",
        "",
        "CHECKPOINT",
        "checkpoint ",
        "dead_letter",
        "screening.checkpoint",
    ] {
        c.add(
            format!("source `{s}`"),
            cp().set_str("source", s).bytes(),
            UnknownSource,
            Some("source"),
        );
    }
    c.add_on(
        "unknown source on a topic",
        cp().set_str("source", "xray").bytes(),
        Some(Source::Checkpoint),
        UnknownSource,
        Some("source"),
    );
    c.add(
        "source as a number",
        cp().set("source", "0").bytes(),
        WrongType,
        Some("source"),
    );
    c.add(
        "source missing",
        cp().without("source").bytes(),
        MissingField,
        Some("source"),
    );
    c.add(
        "source null",
        cp().set("source", "null").bytes(),
        MissingField,
        Some("source"),
    );

    // --- event_id -------------------------------------------------------------
    for (label, id) in [
        ("empty", String::new()),
        ("65 chars", "a".repeat(65)),
        ("with a space", "cp 1".into()),
        ("with a slash", "cp/1".into()),
        ("with a backslash", "cp\\1".into()),
        ("with unicode", "事件-1".into()),
        ("with a plus", "cp+1".into()),
        ("with an escaped newline", "cp\n1".into()),
    ] {
        c.add(
            format!("event_id {label}"),
            cp().set_str("event_id", &id).bytes(),
            BadEventId,
            Some("event_id"),
        );
    }
    c.add(
        "event_id as a number",
        cp().set("event_id", "7").bytes(),
        WrongType,
        Some("event_id"),
    );

    // --- Missing and null required fields ------------------------------------
    let required: [(&str, Base, &[&'static str]); 6] = [
        (
            "checkpoint",
            cp,
            &[
                "event_id",
                "event_time",
                "district",
                "checkpoint_id",
                "person_id",
                "temperature_c",
                "mask",
                "symptoms",
                "disposition",
            ],
        ),
        (
            "pharmacy",
            ph,
            &["pharmacy_id", "person_id", "drug_class", "quantity"],
        ),
        (
            "door_visit",
            dv,
            &[
                "grid_id",
                "household_id",
                "person_id",
                "visit_kind",
                "outcome",
                "symptoms",
                "observation",
            ],
        ),
        ("case", case_ev, &["person_id", "status"]),
        ("bed admit", admit, &["hospital_id", "action", "person_id"]),
        ("bed capacity", capacity, &["beds_total"]),
    ];
    for (src, base, fields) in required {
        for &field in fields {
            c.add(
                format!("{src}: {field} null"),
                base().set(field, "null").bytes(),
                MissingField,
                Some(field),
            );
            c.add(
                format!("{src}: {field} missing"),
                base().without(field).bytes(),
                MissingField,
                Some(field),
            );
        }
    }
    c.add(
        "checkpoint person_id empty",
        cp().set_str("person_id", "").bytes(),
        MissingField,
        Some("person_id"),
    );
    c.add(
        "bed discharge without person_id",
        admit()
            .set_str("action", "discharge")
            .without("person_id")
            .bytes(),
        MissingField,
        Some("person_id"),
    );
    c.add(
        "bed admit with a null person_id but beds_total",
        admit()
            .set("person_id", "null")
            .set("beds_total", "5")
            .bytes(),
        MissingField,
        Some("person_id"),
    );
    c.add("empty object", "{}", MissingField, Some("source"));

    // --- Cross-field rules ------------------------------------------------------
    c.add(
        "door_visit not_home with a temperature",
        dv().set_str("outcome", "not_home").bytes(),
        UnseenMeasurement,
        Some("temperature_c"),
    );
    c.add(
        "door_visit refused with a temperature",
        dv().set_str("outcome", "refused").bytes(),
        UnseenMeasurement,
        Some("temperature_c"),
    );
    c.add(
        "door_visit not_home with symptoms",
        dv().set_str("outcome", "not_home")
            .set("temperature_c", "null")
            .set("symptoms", r#"["cough"]"#)
            .bytes(),
        UnseenMeasurement,
        Some("symptoms"),
    );
    c.add(
        "door_visit not_home with an out-of-range temperature",
        dv().set_str("outcome", "not_home")
            .set("temperature_c", "99")
            .bytes(),
        OutOfRange,
        Some("temperature_c"),
    );

    c.add(
        "bed admit in another district than its hospital's",
        admit().set_str("district", "500103").bytes(),
        DistrictMismatch,
        Some("district"),
    );

    // --- Wrong types for strings ------------------------------------------------
    c.add(
        "person_id as a number",
        cp().set("person_id", "500101199001011234").bytes(),
        WrongType,
        Some("person_id"),
    );
    c.add(
        "vehicle_id as a number",
        cp().set("vehicle_id", "12345").bytes(),
        WrongType,
        Some("vehicle_id"),
    );
    c.add(
        "came_from as an object",
        cp().set("came_from", r#"{"city":"Wuhan"}"#).bytes(),
        WrongType,
        Some("came_from"),
    );
    c.add(
        "household_id as an array",
        dv().set("household_id", r#"["h-88"]"#).bytes(),
        WrongType,
        Some("household_id"),
    );

    // --- Identifiers promised as pseudonyms (`Ids::Pseudonymized`) -----------
    let key = pseudonym("500101199001011234");
    let hashed = || {
        cp().set_str("person_id", &key)
            .set_str("vehicle_id", &pseudonym("v"))
    };
    c.add_pseudonymized(
        "raw person_id",
        hashed().set_str("person_id", "500101199001011234").bytes(),
        PseudonymKey,
        "person_id",
    );
    c.add_pseudonymized(
        "upper-case hex person_id",
        hashed().set_str("person_id", &key.to_uppercase()).bytes(),
        PseudonymKey,
        "person_id",
    );
    c.add_pseudonymized(
        "31 hex digits",
        hashed().set_str("person_id", &key[1..]).bytes(),
        PseudonymKey,
        "person_id",
    );
    c.add_pseudonymized(
        "33 hex digits",
        hashed().set_str("person_id", &format!("{key}0")).bytes(),
        PseudonymKey,
        "person_id",
    );
    c.add_pseudonymized(
        "32 chars, not hex",
        hashed().set_str("person_id", &"g".repeat(32)).bytes(),
        PseudonymKey,
        "person_id",
    );
    c.add_pseudonymized(
        "raw vehicle_id",
        hashed().set_str("vehicle_id", "渝A12345").bytes(),
        PseudonymKey,
        "vehicle_id",
    );
    c.add_pseudonymized(
        "raw household_id",
        dv().set_str("person_id", &key).bytes(),
        PseudonymKey,
        "household_id",
    );
    c.add_pseudonymized(
        "person_id of 100,000 bytes",
        hashed().set_str("person_id", &huge).bytes(),
        TooLong,
        "person_id",
    );
    c.add_pseudonymized(
        "person_id empty",
        hashed().set_str("person_id", "").bytes(),
        MissingField,
        "person_id",
    );
    c.add_pseudonymized(
        "lone surrogate escape in person_id",
        hashed().set("person_id", r#""\ud800""#).bytes(),
        NotUtf8,
        "person_id",
    );
    c.add_pseudonymized(
        "person_id as a number",
        hashed().set("person_id", "12345").bytes(),
        WrongType,
        "person_id",
    );

    // --- Trailing data --------------------------------------------------------
    let text = cp().text();
    c.add(
        "object followed by garbage",
        format!("{text}garbage"),
        NotJson,
        None,
    );
    c.add(
        "object followed by a comma",
        format!("{text},"),
        NotJson,
        None,
    );
    c.add(
        "object followed by an extra brace",
        format!("{text}}}"),
        NotJson,
        None,
    );
    c.add(
        "object followed by NaN",
        format!("{text} NaN"),
        NotJson,
        None,
    );
    c.add(
        "garbage before the object",
        format!("x{text}"),
        NotJson,
        None,
    );
    c.add(
        "two objects on one line",
        format!("{text}{text}"),
        NotJson,
        None,
    );
    c.add(
        "two objects separated by a space",
        format!("{text} {}", ph().text()),
        NotJson,
        None,
    );
    c.add(
        "two objects separated by a newline",
        format!("{text}\n{text}"),
        NotJson,
        None,
    );

    c.0
}

// ---------------------------------------------------------------------------
// Hostile but valid input
// ---------------------------------------------------------------------------

/// Lines that look hostile but are valid per the contract: they must decode,
/// within the same time and memory bounds as the corpus.
fn accepted_hostile() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, line: Vec<u8>| v.push((name.to_string(), line));
    for (name, base) in bases() {
        add(&format!("base {name}"), base.bytes());
    }
    // Unknown fields are ignored (forward compatibility), whatever they hold;
    // serde_json skips them without recursion, so depth costs no stack.
    add(
        "10,000 nested arrays in an unknown field",
        cp().set("deep", nested_arrays(10_000, "")).bytes(),
    );
    add(
        "100,000 nested arrays in an unknown field",
        cp().set("deep", nested_arrays(100_000, "1")).bytes(),
    );
    add(
        "10,000 nested objects in an unknown field",
        cp().set("deep", nested_objects(10_000)).bytes(),
    );
    add(
        "another source's field (beds_total) with a wrong type",
        cp().set_str("beds_total", "many").bytes(),
    );
    let mut many = cp();
    for i in 0..60_000 {
        many = many.push_raw(&format!("\"k{i}\""), "0");
    }
    add("60,000 unknown keys", many.bytes());
    add(
        "an unknown key twice",
        cp().push_raw(r#""note""#, "1")
            .push_raw(r#""note""#, "2")
            .bytes(),
    );
    add(
        "unknown field with a lone surrogate escape",
        cp().set("note", r#""\ud800""#).bytes(),
    );
    let mut exact = cp().bytes();
    exact.resize(MAX_LINE_BYTES, b' ');
    add("exactly MAX_LINE_BYTES (trailing spaces)", exact);
    add(
        "64-char event_id",
        cp().set_str("event_id", &"a".repeat(64)).bytes(),
    );
    add(
        "event_id with every allowed punctuation",
        cp().set_str("event_id", "A.b_c:d-9").bytes(),
    );
    add(
        "person_id of exactly MAX_STRING_BYTES",
        cp().set_str("person_id", &"x".repeat(MAX_STRING_BYTES))
            .bytes(),
    );
    add(
        "person_id with escaped control characters",
        cp().set("person_id", r#""\u0000\n\t""#).bytes(),
    );
    add(
        "person_id with an escaped surrogate pair",
        cp().set("person_id", r#""\ud83d\ude00""#).bytes(),
    );
    add(
        "keys spelled with escapes",
        cp().without("mask")
            .push_raw(r#""m\u0061sk""#, "false")
            .bytes(),
    );
    add(
        "temperature with a 100,000-digit mantissa",
        cp().set("temperature_c", format!("36.{}", "6".repeat(100_000)))
            .bytes(),
    );
    add(
        "temperature as an exponent",
        cp().set("temperature_c", "3.66e1").bytes(),
    );
    add(
        "temperature at the bounds",
        cp().set("temperature_c", "34").bytes(),
    );
    add(
        "temperature 43.0",
        cp().set("temperature_c", "43.0").bytes(),
    );
    add(
        "vehicle_id and came_from null",
        cp().set("vehicle_id", "null")
            .set("came_from", "null")
            .bytes(),
    );
    add(
        "vehicle_id and came_from absent",
        cp().without("vehicle_id").without("came_from").bytes(),
    );
    add(
        "door_visit not_home with temperature null",
        dv().set_str("outcome", "not_home")
            .set("temperature_c", "null")
            .bytes(),
    );
    add(
        "pharmacy temperature absent",
        ph().without("temperature_c").bytes(),
    );
    add(
        "case without hospital",
        case_ev().without("hospital_id").bytes(),
    );
    add("bed capacity 0", capacity().set("beds_total", "0").bytes());
    // RFC 3339 §5.6 permits a space between date and time, lower-case t and z,
    // any number of fraction digits and a leap second; all are unambiguous.
    add(
        "event_time with a space instead of T",
        cp().set_str("event_time", "2020-01-27 09:15:00+08:00")
            .bytes(),
    );
    add(
        "event_time in lower case",
        cp().set_str("event_time", "2020-01-27t01:15:00z").bytes(),
    );
    add(
        "event_time with 30 fraction digits",
        cp().set_str(
            "event_time",
            &format!("2020-01-27T09:15:00.{}+08:00", "1".repeat(30)),
        )
        .bytes(),
    );
    add(
        "event_time at a leap second",
        cp().set_str("event_time", "2016-12-31T23:59:60Z").bytes(),
    );
    let edge = utc_text(NOW_SECS + MAX_FUTURE_MICROS / 1_000_000);
    add(
        "event_time exactly at the allowed clock skew",
        cp().set_str("event_time", &edge).bytes(),
    );
    add(
        "pretty-printed with CRLF",
        cp().text().replace(',', ",\r\n  ").into_bytes(),
    );
    v
}

// ---------------------------------------------------------------------------
// Running cases
// ---------------------------------------------------------------------------

struct Run {
    result: std::thread::Result<Result<Event, Reject>>,
    peak: usize,
    elapsed: Duration,
}

fn run(line: &[u8], topic: Option<Source>, ids: Ids) -> Run {
    let d = decoder();
    let start = Instant::now();
    let (result, peak) =
        measure(|| catch_unwind(AssertUnwindSafe(|| d.decode_with(line, topic, NOW, ids))));
    Run {
        result,
        peak,
        elapsed: start.elapsed(),
    }
}

fn describe(r: &Result<Event, Reject>) -> String {
    match r {
        Ok(e) => format!("Ok({:?} event {})", e.source(), e.event_id),
        Err(r) => format!("Err({r})"),
    }
}

#[test]
fn base_events_are_valid() {
    for (name, base) in bases() {
        let r = decoder().decode(&base.bytes(), None, NOW);
        assert!(r.is_ok(), "base {name}: {r:?}");
    }
}

#[test]
fn hostile_corpus_is_refused_with_the_contract_reason() {
    let corpus = corpus();
    assert!(corpus.len() >= 45, "corpus has {} cases", corpus.len());
    // Every reason the decoder can give is exercised (`too_late` and
    // `poison` are the pipeline's to give: the decoder has no retention
    // horizon and does not crash). A reason
    // added to `RejectReason` fails this until the corpus covers it.
    let covered: std::collections::BTreeSet<RejectReason> =
        corpus.iter().map(|c| c.want.reason).collect();
    let missing: Vec<&str> = RejectReason::ALL
        .into_iter()
        .filter(|r| ![RejectReason::TooLate, RejectReason::Poison].contains(r))
        .filter(|r| !covered.contains(r))
        .map(RejectReason::as_str)
        .collect();
    assert!(missing.is_empty(), "no corpus case for {missing:?}");
    eprintln!(
        "{} corpus cases covering {:?}",
        corpus.len(),
        covered.iter().map(|r| r.as_str()).collect::<Vec<_>>()
    );
    let mut failures = Vec::new();
    for case in &corpus {
        let o = run(&case.line, case.topic, case.ids);
        let label = format!("[{}] ({} bytes)", case.name, case.line.len());
        match &o.result {
            Err(_) => failures.push(format!("{label}: PANICKED")),
            Ok(r) if *r != Err(case.want) => failures.push(format!(
                "{label}: want Err({}), got {}",
                case.want,
                describe(r)
            )),
            Ok(_) => {}
        }
        if o.elapsed > TIME_BOUND {
            failures.push(format!("{label}: took {:?}", o.elapsed));
        }
        if o.peak > mem_bound(case.line.len()) {
            failures.push(format!(
                "{label}: peak heap {} B over bound {} B",
                o.peak,
                mem_bound(case.line.len())
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus cases failed:\n{}",
        failures.len(),
        corpus.len(),
        failures.join("\n")
    );
}

#[test]
fn hostile_but_valid_lines_decode_within_bounds() {
    let mut failures = Vec::new();
    for (name, line) in accepted_hostile() {
        let o = run(&line, None, Ids::Raw);
        let label = format!("[{name}] ({} bytes)", line.len());
        match &o.result {
            Err(_) => failures.push(format!("{label}: PANICKED")),
            Ok(Err(r)) => failures.push(format!("{label}: refused: {r}")),
            Ok(Ok(e)) => {
                if let Err(why) = check_contract(&line, e, Ids::Raw) {
                    failures.push(format!("{label}: {why}"));
                }
            }
        }
        if o.elapsed > TIME_BOUND {
            failures.push(format!("{label}: took {:?}", o.elapsed));
        }
        if o.peak > mem_bound(line.len()) {
            failures.push(format!(
                "{label}: peak heap {} B over bound {} B",
                o.peak,
                mem_bound(line.len())
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A `symptoms` array of tiny elements (`0,`, 2 line bytes each) stays
/// within [`mem_bound`] at every length: the decoder stops at the first bad
/// element rather than collecting them all before checking any.
#[test]
fn symptom_arrays_stay_within_the_memory_bound() {
    for n in [1_000, 10_000, 100_000, 500_000] {
        let line = cp()
            .set("symptoms", format!("[{}]", vec!["0"; n].join(",")))
            .bytes();
        let o = run(&line, None, Ids::Raw);
        let r = o.result.expect("no panic");
        assert_eq!(
            r.err(),
            Some(Reject {
                reason: RejectReason::WrongType,
                field: Some("symptoms"),
            })
        );
        let bound = mem_bound(line.len());
        assert!(
            o.peak <= bound,
            "{n} elements: peak {} B over {bound} B",
            o.peak
        );
        assert!(o.elapsed <= TIME_BOUND, "{n} elements took {:?}", o.elapsed);
    }
}

/// `pseudonymize` refuses a top-level `person_id`, `household_id` or
/// `vehicle_id` that is present, not null and not a string — `wrong_type`,
/// naming the field — whatever the event's source, even one that has no
/// such field (where `decode` ignores it as unknown). A field with an
/// identifier's name may hold a raw identifier, so a producer refuses it
/// rather than forward it to a topic unhashed. Null or absent is fine.
#[test]
fn pseudonymize_refuses_a_non_string_id_field_whatever_the_source() {
    let p = decoder().pseudonymizer();
    for (src, base) in bases() {
        for field in ["person_id", "household_id", "vehicle_id"] {
            for raw in [
                "5",
                "500101199001011234",
                "true",
                "[\"h-88\"]",
                r#"{"id":"h-88"}"#,
            ] {
                let line = base.clone().set(field, raw).bytes();
                let r = catch_unwind(AssertUnwindSafe(|| pseudonymize(&line, p)))
                    .unwrap_or_else(|_| panic!("pseudonymize panicked: {src} {field} {raw}"));
                assert_eq!(
                    r.err(),
                    Some(Reject {
                        reason: RejectReason::WrongType,
                        field: Some(field),
                    }),
                    "{src} event with {field} = {raw}"
                );
            }
            for line in [
                base.clone().set(field, "null").bytes(),
                base.clone().without(field).bytes(),
            ] {
                assert!(
                    pseudonymize(&line, p).is_ok(),
                    "{src} event with {field} null or absent"
                );
            }
        }
    }
}

#[test]
fn route_and_pseudonymize_agree_on_whole_line_reasons() {
    use RejectReason::*;
    let d = decoder();
    for case in corpus() {
        let r = catch_unwind(AssertUnwindSafe(|| route(&case.line)))
            .unwrap_or_else(|_| panic!("route panicked on [{}]", case.name));
        let p = catch_unwind(AssertUnwindSafe(|| {
            pseudonymize(&case.line, d.pseudonymizer())
        }))
        .unwrap_or_else(|_| panic!("pseudonymize panicked on [{}]", case.name));
        // The other id mode must not panic either (its reason may differ).
        let other = match case.ids {
            Ids::Raw => Ids::Pseudonymized,
            Ids::Pseudonymized => Ids::Raw,
        };
        let _ = catch_unwind(AssertUnwindSafe(|| {
            d.decode_with(&case.line, case.topic, NOW, other)
        }))
        .unwrap_or_else(|_| panic!("decode_with({other:?}) panicked on [{}]", case.name));
        // A reason for the whole line (no field named) comes from the first
        // pass the three share; a field's reason may come from a field that
        // `route` or `pseudonymize` does not read.
        let whole_line = case.want.field.is_none()
            && matches!(case.want.reason, NotJson | NotUtf8 | TooLarge | NotObject);
        if whole_line {
            assert_eq!(r.err(), Some(case.want), "route on [{}]", case.name);
            assert_eq!(p.err(), Some(case.want), "pseudonymize on [{}]", case.name);
        }
    }
}

// ---------------------------------------------------------------------------
// Contract invariants of a decoded event
// ---------------------------------------------------------------------------

fn is_pseudonym(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks what the contract promises about any event the decoder accepts,
/// against an independent parse of the line with `serde_json::Value`.
fn check_contract(line: &[u8], e: &Event, ids: Ids) -> Result<(), String> {
    let id = &e.event_id;
    if !(1..=64).contains(&id.len())
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".:_-".contains(&b))
    {
        return Err(format!("bad event_id {id:?} accepted"));
    }
    let in_range = |t: f64| (34.0..=43.0).contains(&t);
    let mut keys: Vec<(&str, &str)> = Vec::new();
    match &e.body {
        Body::Checkpoint {
            person_key,
            vehicle_key,
            temperature_c,
            ..
        } => {
            if !in_range(*temperature_c) {
                return Err(format!("temperature {temperature_c} accepted"));
            }
            keys.push(("person_id", person_key));
            if let Some(v) = vehicle_key {
                keys.push(("vehicle_id", v));
            }
        }
        Body::Pharmacy {
            person_key,
            quantity,
            temperature_c,
            ..
        } => {
            if *quantity < 1 {
                return Err(format!("quantity {quantity} accepted"));
            }
            if temperature_c.is_some_and(|t| !in_range(t)) {
                return Err(format!("temperature {temperature_c:?} accepted"));
            }
            keys.push(("person_id", person_key));
        }
        Body::DoorVisit {
            household_key,
            person_key,
            outcome,
            temperature_c,
            ..
        } => {
            if temperature_c.is_some_and(|t| !in_range(t)) {
                return Err(format!("temperature {temperature_c:?} accepted"));
            }
            if temperature_c.is_some() && *outcome != Outcome::Seen {
                return Err(format!("temperature with outcome {outcome:?} accepted"));
            }
            keys.push(("household_id", household_key));
            keys.push(("person_id", person_key));
        }
        Body::Case { person_key, .. } => keys.push(("person_id", person_key)),
        Body::Bed {
            action,
            person_key,
            beds_total,
            ..
        } => match (action, person_key, beds_total) {
            (BedAction::Capacity, None, Some(n)) if *n >= 0 => {}
            (BedAction::Admit | BedAction::Discharge, Some(p), None) => keys.push(("person_id", p)),
            _ => return Err(format!("inconsistent bed body {:?}", e.body)),
        },
    }
    // Independent oracle: the accepted line is one JSON object whose fields
    // agree with the event.
    let text = std::str::from_utf8(line).map_err(|_| "accepted non-UTF-8".to_string())?;
    // A map of raw values, not `serde_json::Value`: Value stops at 128
    // levels of nesting and refuses lone surrogate escapes, which the
    // contract lets an ignored unknown field hold.
    let obj: HashMap<String, &RawValue> = serde_json::from_str(text)
        .map_err(|err| format!("accepted a line that is not one JSON object: {err}"))?;
    let field = |k: &str| {
        obj.get(k)
            .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
    };
    if field("event_id").as_deref() != Some(id.as_str()) {
        return Err(format!("event_id {id:?} is not the line's"));
    }
    if field("source").as_deref() != Some(e.source().as_str()) {
        return Err(format!("source {:?} is not the line's", e.source()));
    }
    let code = &decoder().registry().district(e.district).district;
    if field("district").as_deref() != Some(code.as_str()) {
        return Err(format!("district {code} is not the line's"));
    }
    for (name, key) in keys {
        if !is_pseudonym(key) {
            return Err(format!("{name} key {key:?} is not 32 lowercase hex digits"));
        }
        let raw = field(name).ok_or(format!("{name} keyed but not a string in the line"))?;
        match ids {
            Ids::Raw if key == raw => return Err(format!("{name} passed through raw")),
            Ids::Raw if key != pseudonym(&raw) => {
                return Err(format!(
                    "{name} key is not the pseudonym of the line's value"
                ))
            }
            Ids::Pseudonymized if key != raw => {
                return Err(format!("{name}: a pseudonym given was not kept as it is"))
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_decoded(line: &[u8], r: &Result<Event, Reject>, ids: Ids) -> Result<(), TestCaseError> {
    if let Ok(e) = r {
        check_contract(line, e, ids).map_err(TestCaseError::fail)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

/// The proptest configuration for a test that should run `cases` cases.
///
/// `ProptestConfig::default()` already holds the environment's overrides
/// (proptest reads `PROPTEST_CASES` and friends once, into its default), so
/// a literal `cases: N` would silently discard `PROPTEST_CASES`. Here the
/// literal applies only when the variable is unset. Failure persistence is
/// off so that a failing run leaves no `proptest-regressions/` file behind;
/// the failing input is printed instead.
fn config(cases: u32) -> ProptestConfig {
    let base = ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_some() {
        base
    } else {
        ProptestConfig { cases, ..base }
    }
}

/// A field that may be absent, null or a value.
#[derive(Debug, Clone)]
enum Opt<T> {
    Absent,
    Null,
    Some(T),
}

impl<T: Clone> Opt<T> {
    fn value(&self) -> Option<T> {
        match self {
            Opt::Some(v) => Some(v.clone()),
            _ => None,
        }
    }
}

fn opt<T: Clone + std::fmt::Debug + 'static>(
    s: impl Strategy<Value = T> + 'static,
) -> impl Strategy<Value = Opt<T>> {
    prop_oneof![Just(Opt::Absent), Just(Opt::Null), s.prop_map(Opt::Some)]
}

/// Fields of an event under construction, as (key, raw JSON value).
type Fields = Vec<(String, String)>;

fn put(fields: &mut Fields, key: &str, raw: String) {
    fields.push((key.to_string(), raw));
}

fn put_opt<T>(fields: &mut Fields, key: &str, o: &Opt<T>, raw: impl Fn(&T) -> String) {
    match o {
        Opt::Absent => {}
        Opt::Null => put(fields, key, "null".into()),
        Opt::Some(v) => put(fields, key, raw(v)),
    }
}

#[derive(Debug, Clone)]
struct Time {
    text: String,
    micros: i64,
}

fn arb_time() -> impl Strategy<Value = Time> {
    (
        Y2000_SECS..=NOW_SECS,
        0u32..1_000_000_000,
        0usize..=9,
        prop_oneof![
            Just(None),
            (-(23 * 60 + 59)..=23i32 * 60 + 59).prop_map(Some)
        ],
    )
        .prop_map(|(secs, nanos, digits, offset)| {
            let off = offset.unwrap_or(0);
            let local = chrono::DateTime::from_timestamp(secs + i64::from(off) * 60, 0)
                .expect("in range")
                .naive_utc();
            let mut text = local.format("%Y-%m-%dT%H:%M:%S").to_string();
            let scale = 10u32.pow(9 - digits as u32);
            let kept = nanos / scale * scale;
            if digits > 0 {
                text.push('.');
                text.push_str(&format!("{kept:09}")[..digits]);
            }
            match offset {
                None => text.push('Z'),
                Some(m) => {
                    let sign = if m < 0 { '-' } else { '+' };
                    text.push_str(&format!("{sign}{:02}:{:02}", m.abs() / 60, m.abs() % 60));
                }
            }
            Time {
                text,
                micros: secs * 1_000_000 + i64::from(kept / 1000),
            }
        })
}

#[derive(Debug, Clone)]
struct Temp {
    text: String,
    value: f64,
}

/// Temperatures as field devices send them (up to two decimals) in several
/// JSON spellings. Exactness: `n / 100` is one correctly rounded division of
/// exact integers, the same double a correct parser gives for the decimal.
fn arb_temperature() -> impl Strategy<Value = Temp> {
    (3400u32..=4300, 0..4u8).prop_map(|(n, style)| {
        let text = match style {
            0 => format!("{}.{:02}", n / 100, n % 100),
            1 => format!("{n}e-2"),
            2 => format!("{}.{:02}0", n / 100, n % 100),
            _ if n % 100 == 0 => format!("{}", n / 100),
            _ => format!("0.{n}E2"),
        };
        let value = f64::from(n) / 100.0;
        Temp { text, value }
    })
}

/// Identifiers: any non-empty string (control characters and non-BMP
/// characters included) within `MAX_STRING_BYTES`.
fn arb_ident() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{18}",
        "[A-Za-z0-9-]{1,24}",
        proptest::string::string_regex("(?s:.{1,60})").expect("regex"),
    ]
}

fn arb_symptoms() -> impl Strategy<Value = (String, Symptoms)> {
    (
        Just((0..6usize).collect::<Vec<_>>()).prop_shuffle(),
        0..=6usize,
    )
        .prop_map(|(order, k)| {
            let chosen = &order[..k];
            let text = format!(
                "[{}]",
                chosen
                    .iter()
                    .map(|&i| js(SYMPTOM_NAMES[i]))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            (text, Symptoms(chosen.iter().map(|&i| 1u8 << i).sum()))
        })
}

/// Any valid JSON value, as text: nested arrays and objects of scalars.
fn arb_json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "(?s:.{0,12})".prop_map(Value::from),
        prop::sample::select(&SYMPTOM_NAMES[..]).prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
    .prop_map(|v| v.to_string())
}

/// A valid JSON value or one of the tokens hostile producers send (some of
/// them not JSON at all).
fn arb_json() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => arb_json_value(),
        1 => prop::sample::select(vec![
            "NaN", "Infinity", "-Infinity", "1e999", "-1e999", "-0", "0", "1.5", "-1", "34",
            "43", "33.999", "43.0001", "37.3", "9223372036854775808", "\"\"", r#""\ud800""#,
            r#""\ud83d\ude00""#, "[]", "{}", "[[[[]]]]", r#"["fever","fever"]"#, r#""36.6""#,
            "true", r#""500101""#, r#""cq-phmc""#, r#""seen""#, r#""not_home""#,
            r#""capacity""#, r#""2033-01-01T00:00:00Z""#, r#""2020-01-27T09:15:00""#,
        ])
        .prop_map(str::to_string),
    ]
}

/// A valid event of some source, as fields, with the event it must decode to.
#[derive(Debug, Clone)]
struct Generated {
    fields: Fields,
    expected: Event,
}

#[derive(Debug, Clone)]
struct Common {
    id: String,
    time: Time,
    district: String,
}

fn arb_common() -> impl Strategy<Value = Common> {
    let codes: Vec<String> = decoder()
        .registry()
        .districts()
        .iter()
        .map(|d| d.district.clone())
        .collect();
    (
        "[A-Za-z0-9._:-]{1,64}",
        arb_time(),
        prop::sample::select(codes),
    )
        .prop_map(|(id, time, district)| Common { id, time, district })
}

fn arb_hospital() -> impl Strategy<Value = String> {
    let ids: Vec<String> = decoder()
        .registry()
        .hospitals()
        .iter()
        .map(|h| h.hospital_id.clone())
        .collect();
    prop::sample::select(ids)
}

fn start(c: &Common, source: Source) -> Fields {
    let mut f = Fields::new();
    put(&mut f, "event_id", js(&c.id));
    put(&mut f, "event_time", js(&c.time.text));
    put(&mut f, "source", js(source.as_str()));
    put(&mut f, "district", js(&c.district));
    f
}

fn event(c: &Common, body: Body) -> Event {
    Event {
        event_id: c.id.clone(),
        event_time: c.time.micros,
        district: decoder()
            .registry()
            .district_id(&c.district)
            .expect("district"),
        body,
    }
}

fn arb_checkpoint() -> impl Strategy<Value = Generated> {
    (
        arb_common(),
        (arb_ident(), arb_ident(), opt(arb_ident())),
        (arb_temperature(), any::<bool>(), arb_symptoms()),
        (
            opt(proptest::string::string_regex("(?s:.{0,60})").expect("regex")),
            prop::sample::select(Disposition::ALL),
        ),
    )
        .prop_map(
            |(c, (checkpoint_id, person, vehicle), (t, mask, (sym_text, sym)), (came, disp))| {
                let mut f = start(&c, Source::Checkpoint);
                put(&mut f, "checkpoint_id", js(&checkpoint_id));
                put(&mut f, "person_id", js(&person));
                put_opt(&mut f, "vehicle_id", &vehicle, |v| js(v));
                put(&mut f, "temperature_c", t.text.clone());
                put(&mut f, "mask", mask.to_string());
                put(&mut f, "symptoms", sym_text);
                put_opt(&mut f, "came_from", &came, |v| js(v));
                put(&mut f, "disposition", js(disp.as_str()));
                let body = Body::Checkpoint {
                    checkpoint_id,
                    person_key: pseudonym(&person),
                    vehicle_key: vehicle.value().map(|v| pseudonym(&v)),
                    temperature_c: t.value,
                    mask,
                    symptoms: sym,
                    came_from: came.value(),
                    disposition: disp,
                };
                Generated {
                    expected: event(&c, body),
                    fields: f,
                }
            },
        )
}

fn arb_quantity() -> impl Strategy<Value = i64> {
    prop_oneof![1i64..=20, 1i64..=i64::MAX]
}

fn arb_pharmacy() -> impl Strategy<Value = Generated> {
    (
        arb_common(),
        (arb_ident(), arb_ident()),
        (
            prop::sample::select(DrugClass::ALL),
            arb_quantity(),
            opt(arb_temperature()),
        ),
    )
        .prop_map(|(c, (pharmacy_id, person), (drug, quantity, t))| {
            let mut f = start(&c, Source::Pharmacy);
            put(&mut f, "pharmacy_id", js(&pharmacy_id));
            put(&mut f, "person_id", js(&person));
            put(&mut f, "drug_class", js(drug.as_str()));
            put(&mut f, "quantity", quantity.to_string());
            put_opt(&mut f, "temperature_c", &t, |t| t.text.clone());
            let body = Body::Pharmacy {
                pharmacy_id,
                person_key: pseudonym(&person),
                drug_class: drug,
                quantity,
                temperature_c: t.value().map(|t| t.value),
            };
            Generated {
                expected: event(&c, body),
                fields: f,
            }
        })
}

fn arb_door_visit() -> impl Strategy<Value = Generated> {
    (
        arb_common(),
        (arb_ident(), arb_ident(), arb_ident()),
        (
            prop::sample::select(VisitKind::ALL),
            prop::sample::select(Outcome::ALL),
            opt(arb_temperature()),
        ),
        (arb_symptoms(), prop::sample::select(Observation::ALL)),
    )
        .prop_map(
            |(c, (grid, household, person), (kind, outcome, t), ((sym_text, sym), obs))| {
                // Only `seen` carries a measurement.
                let t = match (outcome, t) {
                    (Outcome::Seen, t) => t,
                    (_, Opt::Some(_)) => Opt::Null,
                    (_, t) => t,
                };
                let (sym_text, sym) = if outcome == Outcome::Seen {
                    (sym_text, sym)
                } else {
                    ("[]".to_string(), Symptoms(0))
                };
                let mut f = start(&c, Source::DoorVisit);
                put(&mut f, "grid_id", js(&grid));
                put(&mut f, "household_id", js(&household));
                put(&mut f, "person_id", js(&person));
                put(&mut f, "visit_kind", js(kind.as_str()));
                put(&mut f, "outcome", js(outcome.as_str()));
                put_opt(&mut f, "temperature_c", &t, |t| t.text.clone());
                put(&mut f, "symptoms", sym_text);
                put(&mut f, "observation", js(obs.as_str()));
                let body = Body::DoorVisit {
                    grid_id: grid,
                    household_key: pseudonym(&household),
                    person_key: pseudonym(&person),
                    visit_kind: kind,
                    outcome,
                    temperature_c: t.value().map(|t| t.value),
                    symptoms: sym,
                    observation: obs,
                };
                Generated {
                    expected: event(&c, body),
                    fields: f,
                }
            },
        )
}

fn arb_case() -> impl Strategy<Value = Generated> {
    (
        arb_common(),
        arb_ident(),
        prop::sample::select(CaseStatus::ALL),
        opt(arb_hospital()),
    )
        .prop_map(|(c, person, status, hospital)| {
            let mut f = start(&c, Source::Case);
            put(&mut f, "person_id", js(&person));
            put(&mut f, "status", js(status.as_str()));
            put_opt(&mut f, "hospital_id", &hospital, |h| js(h));
            let body = Body::Case {
                person_key: pseudonym(&person),
                status,
                hospital: hospital
                    .value()
                    .map(|h| decoder().registry().hospital_id(&h).expect("hospital")),
            };
            Generated {
                expected: event(&c, body),
                fields: f,
            }
        })
}

fn arb_bed() -> impl Strategy<Value = Generated> {
    (
        arb_common(),
        arb_hospital(),
        prop::sample::select(BedAction::ALL),
        arb_ident(),
        prop_oneof![0i64..=2000, 0i64..=i64::MAX],
    )
        .prop_map(|(mut c, hospital, action, person, beds)| {
            // A bed event is its hospital's district's.
            let registry = decoder().registry().clone();
            let h = registry.hospital_id(&hospital).expect("hospital");
            c.district = registry.hospital(h).district.clone();
            let mut f = start(&c, Source::Bed);
            put(&mut f, "hospital_id", js(&hospital));
            put(&mut f, "action", js(action.as_str()));
            let (person_key, beds_total) = if action == BedAction::Capacity {
                put(&mut f, "beds_total", beds.to_string());
                (None, Some(beds))
            } else {
                put(&mut f, "person_id", js(&person));
                (Some(pseudonym(&person)), None)
            };
            let body = Body::Bed {
                hospital: decoder()
                    .registry()
                    .hospital_id(&hospital)
                    .expect("hospital"),
                action,
                person_key,
                beds_total,
            };
            Generated {
                expected: event(&c, body),
                fields: f,
            }
        })
}

/// A valid event of any source, with 0–2 unknown extra fields, its fields in
/// random order.
fn arb_valid() -> impl Strategy<Value = Generated> {
    (
        prop_oneof![
            arb_checkpoint(),
            arb_pharmacy(),
            arb_door_visit(),
            arb_case(),
            arb_bed()
        ],
        prop::collection::vec(arb_json_value(), 0..3),
    )
        .prop_flat_map(|(mut g, extras)| {
            for (i, raw) in extras.into_iter().enumerate() {
                g.fields.push((format!("x_{i}"), raw));
            }
            let n = g.fields.len();
            (Just(g), Just((0..n).collect::<Vec<_>>()).prop_shuffle())
        })
        .prop_map(|(mut g, order)| {
            let fields = std::mem::take(&mut g.fields);
            g.fields = order.into_iter().map(|i| fields[i].clone()).collect();
            g
        })
}

fn render(fields: &Fields, pretty: bool) -> String {
    let sep = if pretty { ",\n  " } else { "," };
    let colon = if pretty { ": " } else { ":" };
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}{colon}{v}", js(k)))
        .collect();
    if pretty {
        format!("{{\n  {}\n}}", body.join(sep))
    } else {
        format!("{{{}}}", body.join(sep))
    }
}

#[derive(Debug, Clone)]
enum FieldMutation {
    /// Replace a field's value by another JSON value (or hostile token).
    Swap(prop::sample::Index, String),
    /// Replace a field's value by a string.
    SetString(prop::sample::Index, String),
    /// Drop a field.
    Drop(prop::sample::Index),
    /// Repeat a field with another value.
    Duplicate(prop::sample::Index, String),
}

#[derive(Debug, Clone)]
enum ByteMutation {
    /// Delete up to 16 bytes.
    Delete(prop::sample::Index, usize),
    /// Insert 1–8 bytes.
    Insert(prop::sample::Index, Vec<u8>),
}

fn arb_field_mutation() -> impl Strategy<Value = FieldMutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), arb_json()).prop_map(|(i, v)| FieldMutation::Swap(i, v)),
        (any::<prop::sample::Index>(), "(?s:.{0,20})")
            .prop_map(|(i, s)| FieldMutation::SetString(i, s)),
        any::<prop::sample::Index>().prop_map(FieldMutation::Drop),
        (any::<prop::sample::Index>(), arb_json())
            .prop_map(|(i, v)| FieldMutation::Duplicate(i, v)),
    ]
}

fn arb_byte_mutation() -> impl Strategy<Value = ByteMutation> {
    let json_byte =
        prop::sample::select(b"{}[]\":,\\ 0123456789.eE+-nulltrfa\x00\x7f\xff\xc3".to_vec());
    prop_oneof![
        (any::<prop::sample::Index>(), 1usize..16).prop_map(|(i, n)| ByteMutation::Delete(i, n)),
        (
            any::<prop::sample::Index>(),
            prop_oneof![
                prop::collection::vec(json_byte, 1..8),
                prop::collection::vec(any::<u8>(), 1..8)
            ]
        )
            .prop_map(|(i, b)| ByteMutation::Insert(i, b)),
    ]
}

fn mutate(g: &Generated, fm: &[FieldMutation], bm: &[ByteMutation]) -> Vec<u8> {
    let mut fields = g.fields.clone();
    for m in fm {
        if fields.is_empty() {
            break;
        }
        match m {
            FieldMutation::Swap(i, v) => {
                let i = i.index(fields.len());
                fields[i].1 = v.clone();
            }
            FieldMutation::SetString(i, s) => {
                let i = i.index(fields.len());
                fields[i].1 = js(s);
            }
            FieldMutation::Drop(i) => {
                fields.remove(i.index(fields.len()));
            }
            FieldMutation::Duplicate(i, v) => {
                let k = fields[i.index(fields.len())].0.clone();
                fields.push((k, v.clone()));
            }
        }
    }
    let mut line = render(&fields, false).into_bytes();
    for m in bm {
        match m {
            ByteMutation::Delete(i, n) => {
                let at = i.index(line.len() + 1);
                let end = (at + n).min(line.len());
                line.drain(at..end);
            }
            ByteMutation::Insert(i, bytes) => {
                let at = i.index(line.len() + 1);
                line.splice(at..at, bytes.iter().copied());
            }
        }
    }
    line
}

/// Bytes that look like JSON: tokens, fragments of events and stray bytes.
fn arb_token_soup() -> impl Strategy<Value = Vec<u8>> {
    let token = prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        "\"",
        " ",
        "\n",
        "\\",
        "\\u",
        "d800",
        "null",
        "true",
        "false",
        "0",
        "-",
        "1e999",
        "36.6",
        "NaN",
        "\"event_id\"",
        "\"cp-1\"",
        "\"source\"",
        "\"checkpoint\"",
        "\"pharmacy\"",
        "\"district\"",
        "\"500101\"",
        "\"event_time\"",
        "\"2020-01-27T09:15:00+08:00\"",
        "\"person_id\"",
        "\"temperature_c\"",
        "\"symptoms\"",
        "\"fever\"",
        "\"quantity\"",
        "\"mask\"",
        "\u{feff}",
        "\u{0}",
        "\u{7f}",
        "é",
        "渝",
    ]);
    prop::collection::vec(token, 0..256).prop_map(|t| t.concat().into_bytes())
}

proptest! {
    #![proptest_config(config(2048))]

    /// (a) Arbitrary bytes never panic: the decoder answers Ok or a Reject,
    /// and anything it accepts meets the contract.
    #[test]
    fn arbitrary_bytes_never_panic(
        line in prop_oneof![prop::collection::vec(any::<u8>(), 0..4096), arb_token_soup()],
        topic in prop::option::of(prop::sample::select(&Source::ALL[..])),
    ) {
        let d = decoder();
        let r = d.decode(&line, topic, NOW);
        check_decoded(&line, &r, Ids::Raw)?;
        let r = d.decode_with(&line, topic, NOW, Ids::Pseudonymized);
        check_decoded(&line, &r, Ids::Pseudonymized)?;
        let _ = route(&line);
        let _ = pseudonymize(&line, d.pseudonymizer());
    }

}

proptest! {
    #![proptest_config(config(2048))]

    /// (b) Mutated valid events never panic, and whatever still decodes meets
    /// the contract.
    #[test]
    fn mutated_events_never_panic_and_accepted_ones_meet_the_contract(
        g in arb_valid(),
        fm in prop::collection::vec(arb_field_mutation(), 0..3),
        bm in prop::collection::vec(arb_byte_mutation(), 0..3),
        with_topic in any::<bool>(),
    ) {
        let line = mutate(&g, &fm, &bm);
        let topic = with_topic.then(|| g.expected.source());
        let d = decoder();
        let r = d.decode(&line, topic, NOW);
        if fm.is_empty() && bm.is_empty() {
            prop_assert_eq!(r.as_ref(), Ok(&g.expected));
        }
        check_decoded(&line, &r, Ids::Raw)?;
        let _ = route(&line);
        // What producers do before a topic: an event the consumer accepts
        // pseudonymizes, and decodes to the same event from its pseudonyms.
        let hashed = pseudonymize(&line, d.pseudonymizer());
        if let Ok(e) = &r {
            let hashed = hashed.map_err(|r| {
                TestCaseError::fail(format!("pseudonymize refused an accepted event: {r}"))
            })?;
            let again = d.decode_with(&hashed, topic, NOW, Ids::Pseudonymized);
            prop_assert_eq!(again.as_ref(), Ok(e));
        }
    }

}

proptest! {
    #![proptest_config(config(1024))]

    /// (c) Valid events of every source decode, and every field round-trips
    /// exactly (times to the microsecond, temperatures to the bit,
    /// identifiers through their pseudonyms).
    #[test]
    fn valid_events_round_trip(g in arb_valid(), pretty in any::<bool>(), with_topic in any::<bool>()) {
        let line = render(&g.fields, pretty);
        let topic = with_topic.then(|| g.expected.source());
        let e = decoder().decode(line.as_bytes(), topic, NOW);
        prop_assert_eq!(e.as_ref(), Ok(&g.expected), "line: {}", line);
        let e = e.expect("checked");
        check_contract(line.as_bytes(), &e, Ids::Raw).map_err(TestCaseError::fail)?;
        let r = route(line.as_bytes()).expect("routes");
        prop_assert_eq!(r.source, g.expected.source());
        let d = decoder();
        let hashed = pseudonymize(line.as_bytes(), d.pseudonymizer()).expect("pseudonymizes");
        let again = d.decode_with(&hashed, topic, NOW, Ids::Pseudonymized);
        prop_assert_eq!(again.as_ref(), Ok(&g.expected));
        check_contract(&hashed, &e, Ids::Pseudonymized).map_err(TestCaseError::fail)?;
    }
}
