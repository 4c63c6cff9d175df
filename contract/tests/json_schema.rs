//! Keeps `schema/events.schema.json` (the schema shipped for producers) in
//! step with the Rust types and validation rules of the event contract.
// Helpers of tests, outside #[test] functions: a panic is the test failing.
#![allow(clippy::unwrap_used)]

use paicha_contract::event::*;
use serde_json::Value;

const SCHEMA: &str = include_str!("../../schema/events.schema.json");

fn schema() -> Value {
    serde_json::from_str(SCHEMA).expect("schema is JSON")
}

fn branch(source: Source) -> Value {
    schema()["oneOf"]
        .as_array()
        .expect("oneOf")
        .iter()
        .find(|b| b["properties"]["source"]["const"] == source.as_str())
        .unwrap_or_else(|| panic!("no branch for {source}"))
        .clone()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_str().expect("string").to_string())
        .collect()
}

fn names<T: Copy>(all: &[T], f: fn(T) -> &'static str) -> Vec<String> {
    all.iter().map(|x| f(*x).to_string()).collect()
}

#[test]
fn sources_match() {
    let s = schema();
    assert_eq!(
        strings(&s["properties"]["source"]["enum"]),
        names(&Source::ALL, Source::as_str)
    );
    assert_eq!(s["oneOf"].as_array().unwrap().len(), Source::ALL.len());
}

#[test]
fn enums_match() {
    let cases: Vec<(Source, &str, Vec<String>)> = vec![
        (
            Source::Checkpoint,
            "disposition",
            names(Disposition::ALL, Disposition::as_str),
        ),
        (
            Source::Pharmacy,
            "drug_class",
            names(DrugClass::ALL, DrugClass::as_str),
        ),
        (
            Source::DoorVisit,
            "visit_kind",
            names(VisitKind::ALL, VisitKind::as_str),
        ),
        (
            Source::DoorVisit,
            "outcome",
            names(Outcome::ALL, Outcome::as_str),
        ),
        (
            Source::DoorVisit,
            "observation",
            names(Observation::ALL, Observation::as_str),
        ),
        (
            Source::Case,
            "status",
            names(CaseStatus::ALL, CaseStatus::as_str),
        ),
        (
            Source::Bed,
            "action",
            names(BedAction::ALL, BedAction::as_str),
        ),
    ];
    for (source, field, want) in cases {
        let b = branch(source);
        assert_eq!(
            strings(&b["properties"][field]["enum"]),
            want,
            "{source}.{field}"
        );
    }
    for source in [Source::Checkpoint, Source::DoorVisit] {
        let b = branch(source);
        let want: Vec<String> = SYMPTOM_NAMES.iter().map(|s| s.to_string()).collect();
        assert_eq!(strings(&b["properties"]["symptoms"]["items"]["enum"]), want);
    }
}

#[test]
fn temperature_range_and_string_limits_match() {
    for source in [Source::Checkpoint, Source::Pharmacy, Source::DoorVisit] {
        let t = &branch(source)["properties"]["temperature_c"];
        assert_eq!(t["minimum"], 34.0);
        assert_eq!(t["maximum"], 43.0);
    }
    let id = &branch(Source::Checkpoint)["properties"]["person_id"];
    assert_eq!(id["maxLength"], MAX_STRING_BYTES as u64);
}

/// Every field the schema requires is one whose absence the decoder refuses
/// as `missing_field`, and every field it lists but does not require may be
/// left out of an otherwise valid event.
#[test]
fn required_fields_match_the_decoder() {
    let registry = std::sync::Arc::new(paicha_contract::registry::Registry::builtin().unwrap());
    let decoder = Decoder::new(
        registry,
        paicha_contract::pseudonym::Pseudonymizer::new(b"k"),
    );
    let samples = [
        (
            Source::Checkpoint,
            r#"{"event_id":"a","event_time":"2020-01-27T09:15:00+08:00","source":"checkpoint","district":"500101","checkpoint_id":"c","person_id":"p","vehicle_id":"v","temperature_c":36.6,"mask":true,"symptoms":[],"came_from":"x","disposition":"pass"}"#,
        ),
        (
            Source::Pharmacy,
            r#"{"event_id":"a","event_time":"2020-01-27T09:15:00+08:00","source":"pharmacy","district":"500101","pharmacy_id":"f","person_id":"p","drug_class":"cough","quantity":2,"temperature_c":36.6}"#,
        ),
        (
            Source::DoorVisit,
            r#"{"event_id":"a","event_time":"2020-01-27T09:15:00+08:00","source":"door_visit","district":"500101","grid_id":"g","household_id":"h","person_id":"p","visit_kind":"screening","outcome":"seen","temperature_c":36.6,"symptoms":[],"observation":"none"}"#,
        ),
        (
            Source::Case,
            r#"{"event_id":"a","event_time":"2020-01-27T09:15:00+08:00","source":"case","district":"500101","person_id":"p","status":"confirmed","hospital_id":"cq-phmc"}"#,
        ),
        (
            Source::Bed,
            r#"{"event_id":"a","event_time":"2020-01-27T09:15:00+08:00","source":"bed","district":"500106","hospital_id":"cq-phmc","action":"capacity","beds_total":300}"#,
        ),
    ];
    let now = 1_800_000_000_000_000;
    for (source, line) in samples {
        let b = branch(source);
        let full: serde_json::Map<String, Value> = serde_json::from_str(line).unwrap();
        let mut required = strings(&b["required"]);
        // Conditional requirements (bed: person_id for admit/discharge,
        // beds_total for capacity) that apply to this sample.
        for cond in b["allOf"].as_array().into_iter().flatten() {
            let action = &cond["if"]["properties"]["action"];
            let applies = action["const"] == full["action"]
                || action["enum"]
                    .as_array()
                    .is_some_and(|e| e.contains(&full["action"]));
            if applies {
                required.extend(strings(&cond["then"]["required"]));
            }
        }
        assert!(decoder.decode(line.as_bytes(), None, now).is_ok(), "{line}");
        for field in b["properties"].as_object().unwrap().keys() {
            if field == "source" || !full.contains_key(field) {
                continue;
            }
            let mut m = full.clone();
            m.remove(field);
            let text = Value::Object(m).to_string();
            let result = decoder.decode(text.as_bytes(), None, now);
            if required.contains(field) {
                let r = result.expect_err(field);
                assert_eq!(r.reason, RejectReason::MissingField, "{source}.{field}");
            } else {
                assert!(result.is_ok(), "{source}.{field} should be optional");
            }
        }
    }
}
