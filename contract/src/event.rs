//! Event contract v1 (`shared/contract/events.md`) as Rust types, and the
//! decoder that turns one JSON line into a validated, pseudonymized [`Event`]
//! or a machine-readable [`Reject`].
//!
//! Decoding is two-step: one pass of `serde_json` splits the object into
//! borrowed raw field values (checking syntax, UTF-8 and duplicate keys), then
//! only the fields of the event's own source are typed and range-checked. So a
//! field that belongs to another source is an ignored unknown field, as the
//! contract's forward-compatibility rule asks, and every failure names its
//! field.

use std::fmt;

use chrono::DateTime;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::pseudonym::{is_pseudonym, Pseudonymizer};
use crate::registry::Registry;

/// The five event sources, each with its own topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Source {
    /// Temperature and symptom checks at road, rail and air checkpoints.
    Checkpoint = 0,
    /// Purchases of fever, cough and related drugs.
    Pharmacy = 1,
    /// Door-to-door screening and follow-up visits.
    DoorVisit = 2,
    /// Case status changes from the health commission.
    Case = 3,
    /// Admissions, discharges and capacity changes at hospitals.
    Bed = 4,
}

impl Source {
    /// Every source, in the order of their discriminants.
    pub const ALL: [Source; 5] = [
        Source::Checkpoint,
        Source::Pharmacy,
        Source::DoorVisit,
        Source::Case,
        Source::Bed,
    ];

    /// The contract's name, as in the `source` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Checkpoint => "checkpoint",
            Source::Pharmacy => "pharmacy",
            Source::DoorVisit => "door_visit",
            Source::Case => "case",
            Source::Bed => "bed",
        }
    }

    /// The Kafka topic that carries this source.
    pub fn topic(self) -> &'static str {
        match self {
            Source::Checkpoint => "screening.checkpoint",
            Source::Pharmacy => "screening.pharmacy",
            Source::DoorVisit => "screening.door_visit",
            Source::Case => "screening.case",
            Source::Bed => "screening.bed",
        }
    }

    /// Parses the contract's name.
    pub fn parse(s: &str) -> Option<Source> {
        Source::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// The source a topic carries, if it is one of the five source topics.
    pub fn from_topic(topic: &str) -> Option<Source> {
        Source::ALL.into_iter().find(|x| x.topic() == topic)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The topic paicha writes every rejected message to.
pub const DEAD_LETTER_TOPIC: &str = "screening.dead_letter";
/// paicha's internal topic: events that arrived on another partition than
/// their district's, forwarded to it (pseudonymized), as Kafka Streams does
/// with repartition topics. Same partition count as the source topics.
pub const REPARTITION_TOPIC: &str = "screening.repartition";
/// The topic paicha publishes alerts to.
pub const ALERTS_TOPIC: &str = "screening.alerts";

/// Symptom names of the contract, in bit order of [`Symptoms`].
pub const SYMPTOM_NAMES: [&str; 6] = [
    "fever",
    "cough",
    "sore_throat",
    "shortness_of_breath",
    "fatigue",
    "diarrhea",
];

/// A set of symptoms as a bitset over [`SYMPTOM_NAMES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Symptoms(pub u8);

impl Symptoms {
    /// Whether symptom `i` (an index into [`SYMPTOM_NAMES`]) is present.
    pub fn has(self, i: usize) -> bool {
        self.0 & (1 << i) != 0
    }

    /// No symptom named.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether `fever` is named.
    pub fn fever(self) -> bool {
        self.has(0)
    }

    /// The names present, in contract order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        SYMPTOM_NAMES
            .iter()
            .enumerate()
            .filter(move |(i, _)| self.has(*i))
            .map(|(_, n)| *n)
    }
}

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $variant),+ }

        impl $name {
            /// Every value, in contract order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The contract's spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }

            /// Parses the contract's spelling.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some($name::$variant),)+ _ => None }
            }
        }
    };
}

string_enum!(
    /// What a checkpoint did with the traveller.
    Disposition {
        /// Let through.
        Pass = "pass",
        /// Handed to the health commission.
        Referred = "referred",
        /// Sent back.
        TurnedBack = "turned_back",
        /// Put under observation.
        Isolated = "isolated",
    }
);

string_enum!(
    /// The class of drug bought.
    DrugClass {
        /// Fever reducers.
        Antipyretic = "antipyretic",
        /// Cough medicine.
        Cough = "cough",
        /// Antivirals.
        Antiviral = "antiviral",
        /// Antibiotics.
        Antibiotic = "antibiotic",
        /// Anything else.
        Other = "other",
    }
);

string_enum!(
    /// Why a grid worker visited.
    VisitKind {
        /// Door-to-door screening round.
        Screening = "screening",
        /// Daily follow-up of a person under observation.
        FollowUp = "follow_up",
    }
);

string_enum!(
    /// What came of a door visit.
    Outcome {
        /// The person was seen (and may have been measured).
        Seen = "seen",
        /// Nobody answered.
        NotHome = "not_home",
        /// The person refused.
        Refused = "refused",
    }
);

string_enum!(
    /// A person's observation status after a visit.
    Observation {
        /// Not under observation.
        None = "none",
        /// Isolated at home.
        HomeIsolation = "home_isolation",
        /// In a quarantine site.
        CentralizedObservation = "centralized_observation",
        /// Under medical observation.
        MedicalObservation = "medical_observation",
        /// Released from observation.
        Released = "released",
    }
);

string_enum!(
    /// Case status reported by the health commission.
    CaseStatus {
        /// Suspected case.
        Suspected = "suspected",
        /// Confirmed case.
        Confirmed = "confirmed",
        /// Suspicion excluded.
        Excluded = "excluded",
        /// Recovered.
        Recovered = "recovered",
        /// Died.
        Died = "died",
    }
);

string_enum!(
    /// What a bed event records.
    BedAction {
        /// A person takes a bed.
        Admit = "admit",
        /// A person leaves a bed.
        Discharge = "discharge",
        /// The hospital's bed count changes.
        Capacity = "capacity",
    }
);

/// A validated event. Identifiers of persons, households and vehicles are
/// already pseudonymized: the raw values never leave the decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The producer's id, unique per real-world event.
    pub event_id: String,
    /// When it happened, microseconds since the Unix epoch (UTC).
    pub event_time: i64,
    /// Index of the district in the [`Registry`].
    pub district: u16,
    /// The per-source fields.
    pub body: Body,
}

/// The per-source fields of an [`Event`].
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A checkpoint check.
    Checkpoint {
        /// Station id.
        checkpoint_id: String,
        /// Pseudonym of the person.
        person_key: String,
        /// Pseudonym of the vehicle, if any.
        vehicle_key: Option<String>,
        /// Measured temperature.
        temperature_c: f64,
        /// Wearing a mask.
        mask: bool,
        /// Symptoms named.
        symptoms: Symptoms,
        /// Where the traveller came from.
        came_from: Option<String>,
        /// What the checkpoint did.
        disposition: Disposition,
    },
    /// A pharmacy purchase.
    Pharmacy {
        /// Pharmacy id.
        pharmacy_id: String,
        /// Pseudonym of the buyer.
        person_key: String,
        /// Drug class.
        drug_class: DrugClass,
        /// Units bought (≥ 1).
        quantity: i64,
        /// Temperature if measured.
        temperature_c: Option<f64>,
    },
    /// A door visit.
    DoorVisit {
        /// Grid id.
        grid_id: String,
        /// Pseudonym of the household.
        household_key: String,
        /// Pseudonym of the person.
        person_key: String,
        /// Screening or follow-up.
        visit_kind: VisitKind,
        /// Seen, not home, refused.
        outcome: Outcome,
        /// Temperature, only when seen.
        temperature_c: Option<f64>,
        /// Symptoms named.
        symptoms: Symptoms,
        /// Observation status after the visit.
        observation: Observation,
    },
    /// A case status change.
    Case {
        /// Pseudonym of the person.
        person_key: String,
        /// New status.
        status: CaseStatus,
        /// Hospital index in the registry, if given.
        hospital: Option<u16>,
    },
    /// A bed event.
    Bed {
        /// Hospital index in the registry.
        hospital: u16,
        /// Admit, discharge or capacity.
        action: BedAction,
        /// Pseudonym of the patient (admit and discharge).
        person_key: Option<String>,
        /// New bed count (capacity).
        beds_total: Option<i64>,
    },
}

/// Threshold of fever in °C (events.md: ≥ 37.3).
pub const FEVER_C: f64 = 37.3;

impl Event {
    /// The event's source.
    pub fn source(&self) -> Source {
        match self.body {
            Body::Checkpoint { .. } => Source::Checkpoint,
            Body::Pharmacy { .. } => Source::Pharmacy,
            Body::DoorVisit { .. } => Source::DoorVisit,
            Body::Case { .. } => Source::Case,
            Body::Bed { .. } => Source::Bed,
        }
    }

    /// Symptoms named (empty for sources without symptoms, and for door
    /// visits that did not see the person).
    pub fn symptoms(&self) -> Symptoms {
        match self.body {
            Body::Checkpoint { symptoms, .. } => symptoms,
            Body::DoorVisit {
                symptoms,
                outcome: Outcome::Seen,
                ..
            } => symptoms,
            _ => Symptoms::default(),
        }
    }

    fn temperature(&self) -> Option<f64> {
        match self.body {
            Body::Checkpoint { temperature_c, .. } => Some(temperature_c),
            Body::Pharmacy { temperature_c, .. } => temperature_c,
            Body::DoorVisit {
                temperature_c,
                outcome: Outcome::Seen,
                ..
            } => temperature_c,
            _ => None,
        }
    }

    /// Suspicious as events.md defines it.
    pub fn suspicious(&self) -> bool {
        let hot = self.temperature().is_some_and(|t| t >= FEVER_C);
        match self.body {
            Body::Checkpoint { symptoms, .. } => hot || !symptoms.is_empty(),
            Body::DoorVisit {
                outcome, symptoms, ..
            } => outcome == Outcome::Seen && (hot || !symptoms.is_empty()),
            Body::Pharmacy { drug_class, .. } => {
                hot || matches!(drug_class, DrugClass::Antipyretic | DrugClass::Cough)
            }
            _ => false,
        }
    }

    /// Fever as events.md defines it: ≥ 37.3 °C or `fever` named.
    pub fn fever(&self) -> bool {
        self.temperature().is_some_and(|t| t >= FEVER_C) || self.symptoms().fever()
    }
}

/// Why a message was refused. The `as_str` spelling is the machine-readable
/// reason carried to the dead-letter topic, the `dead_letters` table and the
/// `paicha_events_rejected_total{reason}` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// Not valid JSON (syntax error, truncated, NaN, nesting too deep).
    NotJson,
    /// Bytes that are not UTF-8.
    NotUtf8,
    /// Valid JSON but not an object.
    NotObject,
    /// The same key twice in one object.
    DuplicateField,
    /// A required field is absent (or null where null is not allowed).
    MissingField,
    /// A field has the wrong JSON type.
    WrongType,
    /// A number outside its range.
    OutOfRange,
    /// A string too long for its field.
    TooLong,
    /// A value outside the field's set of allowed values.
    UnknownValue,
    /// A symptom named twice.
    RepeatedSymptom,
    /// `event_id` not 1–64 chars of `[A-Za-z0-9._:-]`.
    BadEventId,
    /// `event_time` not RFC 3339 with an offset.
    BadTimestamp,
    /// `event_time` more than 5 minutes ahead of the receiving clock.
    FutureTimestamp,
    /// `event_time` before the earliest bound (2000-01-01T00:00:00Z unless
    /// configured).
    EarlyTimestamp,
    /// `district` not in the registry.
    UnknownDistrict,
    /// `hospital_id` not in the registry.
    UnknownHospital,
    /// `source` is not one of the five.
    UnknownSource,
    /// `source` disagrees with the topic the message came on.
    SourceMismatch,
    /// A door visit whose person was not `seen` carries a temperature or
    /// symptoms (contract 1.1: only `seen` carries a measurement).
    UnseenMeasurement,
    /// A bed event's `district` is not its hospital's district in the
    /// registry (contract 1.1).
    DistrictMismatch,
    /// A line or message over the size limit.
    TooLarge,
    /// Older than the retention the processors keep windows for.
    TooLate,
    /// Identifiers marked as pseudonymized under another key (or not in
    /// pseudonym form): they can never join this deployment's pseudonyms.
    PseudonymKey,
    /// A message that crashed processing twice at the same offset: set
    /// aside so the pipeline recovers without a person (docs/semantics.md, Poison).
    Poison,
}

impl RejectReason {
    /// Every reason, for metrics that must show zeros.
    pub const ALL: [RejectReason; 24] = [
        RejectReason::NotJson,
        RejectReason::NotUtf8,
        RejectReason::NotObject,
        RejectReason::DuplicateField,
        RejectReason::MissingField,
        RejectReason::WrongType,
        RejectReason::OutOfRange,
        RejectReason::TooLong,
        RejectReason::UnknownValue,
        RejectReason::RepeatedSymptom,
        RejectReason::BadEventId,
        RejectReason::BadTimestamp,
        RejectReason::FutureTimestamp,
        RejectReason::EarlyTimestamp,
        RejectReason::UnknownDistrict,
        RejectReason::UnknownHospital,
        RejectReason::UnknownSource,
        RejectReason::SourceMismatch,
        RejectReason::UnseenMeasurement,
        RejectReason::DistrictMismatch,
        RejectReason::TooLarge,
        RejectReason::TooLate,
        RejectReason::PseudonymKey,
        RejectReason::Poison,
    ];

    /// The machine-readable spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::NotJson => "not_json",
            RejectReason::NotUtf8 => "not_utf8",
            RejectReason::NotObject => "not_object",
            RejectReason::DuplicateField => "duplicate_field",
            RejectReason::MissingField => "missing_field",
            RejectReason::WrongType => "wrong_type",
            RejectReason::OutOfRange => "out_of_range",
            RejectReason::TooLong => "too_long",
            RejectReason::UnknownValue => "unknown_value",
            RejectReason::RepeatedSymptom => "repeated_symptom",
            RejectReason::BadEventId => "bad_event_id",
            RejectReason::BadTimestamp => "bad_timestamp",
            RejectReason::FutureTimestamp => "future_timestamp",
            RejectReason::EarlyTimestamp => "early_timestamp",
            RejectReason::UnknownDistrict => "unknown_district",
            RejectReason::UnknownHospital => "unknown_hospital",
            RejectReason::UnknownSource => "unknown_source",
            RejectReason::SourceMismatch => "source_mismatch",
            RejectReason::UnseenMeasurement => "unseen_measurement",
            RejectReason::DistrictMismatch => "district_mismatch",
            RejectReason::TooLarge => "too_large",
            RejectReason::TooLate => "too_late",
            RejectReason::PseudonymKey => "pseudonym_key",
            RejectReason::Poison => "poison",
        }
    }

    /// Parses the machine-readable spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// A refused message: the reason, and the field it concerns when there is one.
///
/// The detail never contains a string value from the message, since that
/// might be a raw personal identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    /// Machine-readable reason.
    pub reason: RejectReason,
    /// The field concerned, if any.
    pub field: Option<&'static str>,
}

impl Reject {
    fn new(reason: RejectReason, field: &'static str) -> Self {
        Reject {
            reason,
            field: Some(field),
        }
    }

    fn whole(reason: RejectReason) -> Self {
        Reject {
            reason,
            field: None,
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field {
            Some(field) => write!(f, "{} ({})", self.reason.as_str(), field),
            None => f.write_str(self.reason.as_str()),
        }
    }
}

/// Longest line the decoder looks at (the contract's 1 MiB message limit).
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Longest string accepted for an identifier or free-text field.
pub const MAX_STRING_BYTES: usize = 256;

/// Every top-level field the contract knows, each kept as raw JSON until the
/// source is known.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    event_id: Option<&'a RawValue>,
    #[serde(borrow)]
    event_time: Option<&'a RawValue>,
    #[serde(borrow)]
    source: Option<&'a RawValue>,
    #[serde(borrow)]
    district: Option<&'a RawValue>,
    #[serde(borrow)]
    checkpoint_id: Option<&'a RawValue>,
    #[serde(borrow)]
    person_id: Option<&'a RawValue>,
    #[serde(borrow)]
    vehicle_id: Option<&'a RawValue>,
    #[serde(borrow)]
    temperature_c: Option<&'a RawValue>,
    #[serde(borrow)]
    mask: Option<&'a RawValue>,
    #[serde(borrow)]
    symptoms: Option<&'a RawValue>,
    #[serde(borrow)]
    came_from: Option<&'a RawValue>,
    #[serde(borrow)]
    disposition: Option<&'a RawValue>,
    #[serde(borrow)]
    pharmacy_id: Option<&'a RawValue>,
    #[serde(borrow)]
    drug_class: Option<&'a RawValue>,
    #[serde(borrow)]
    quantity: Option<&'a RawValue>,
    #[serde(borrow)]
    grid_id: Option<&'a RawValue>,
    #[serde(borrow)]
    household_id: Option<&'a RawValue>,
    #[serde(borrow)]
    visit_kind: Option<&'a RawValue>,
    #[serde(borrow)]
    outcome: Option<&'a RawValue>,
    #[serde(borrow)]
    observation: Option<&'a RawValue>,
    #[serde(borrow)]
    status: Option<&'a RawValue>,
    #[serde(borrow)]
    hospital_id: Option<&'a RawValue>,
    #[serde(borrow)]
    action: Option<&'a RawValue>,
    #[serde(borrow)]
    beds_total: Option<&'a RawValue>,
}

/// The routing fields of an event: enough to pick its topic and key without
/// validating the rest. Used by producers (replay, simulator, gateway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The event's source.
    pub source: Source,
    /// The district code as given (validated later by the consumer).
    pub district: String,
    /// The event time, µs, if it reads as one (validated later by the
    /// consumer): producers bound how far they reorder by it.
    pub event_time: Option<i64>,
}

#[derive(Deserialize)]
struct RouteWire<'a> {
    #[serde(borrow)]
    source: Option<&'a RawValue>,
    #[serde(borrow)]
    district: Option<&'a RawValue>,
    #[serde(borrow)]
    event_time: Option<&'a RawValue>,
}

/// Reads only `source` and `district` of a line, for routing it to a topic.
/// A line that cannot be routed is refused here with the reason the consumer
/// would give.
pub fn route(line: &[u8]) -> Result<Route, Reject> {
    let text = as_text(line)?;
    let wire: RouteWire = serde_json::from_str(text).map_err(classify)?;
    route_of(wire.source, wire.district, wire.event_time)
}

fn route_of(
    source: Field<'_>,
    district: Field<'_>,
    event_time: Field<'_>,
) -> Result<Route, Reject> {
    let source = string_field(source, "source")?;
    let source =
        Source::parse(&source).ok_or(Reject::new(RejectReason::UnknownSource, "source"))?;
    let district = string_field(district, "district")?.into_owned();
    // No wall clock here: only the consumer refuses a future time.
    let event_time = self::event_time(event_time, i64::MAX, i64::MIN).ok();
    Ok(Route {
        source,
        district,
        event_time,
    })
}

/// [`route`] and [`pseudonymize`] from one parse of the line, for the
/// producers' hot path.
pub fn route_and_pseudonymize(
    line: &[u8],
    pseudonymizer: &Pseudonymizer,
) -> Result<(Route, Vec<u8>), Reject> {
    #[derive(Deserialize)]
    struct RouteIds<'a> {
        #[serde(borrow)]
        source: Option<&'a RawValue>,
        #[serde(borrow)]
        district: Option<&'a RawValue>,
        #[serde(borrow)]
        event_time: Option<&'a RawValue>,
        #[serde(borrow)]
        person_id: Option<&'a RawValue>,
        #[serde(borrow)]
        household_id: Option<&'a RawValue>,
        #[serde(borrow)]
        vehicle_id: Option<&'a RawValue>,
    }
    let text = as_text(line)?;
    let w: RouteIds = serde_json::from_str(text).map_err(classify)?;
    let route = route_of(w.source, w.district, w.event_time)?;
    let hashed = splice_ids(
        text,
        [w.person_id, w.household_id, w.vehicle_id],
        pseudonymizer,
    )?;
    Ok((route, hashed))
}

fn as_text(line: &[u8]) -> Result<&str, Reject> {
    if line.len() > MAX_LINE_BYTES {
        return Err(Reject::whole(RejectReason::TooLarge));
    }
    let text = std::str::from_utf8(line).map_err(|_| Reject::whole(RejectReason::NotUtf8))?;
    // serde reads a struct from an array too, positionally: an event is an
    // object, so anything else is refused before it gets that far.
    if !text.trim_start().starts_with('{') {
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => Reject::whole(RejectReason::NotObject),
            Err(e) => classify(e),
        });
    }
    Ok(text)
}

fn classify(e: serde_json::Error) -> Reject {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => {
            let msg = e.to_string();
            if msg.starts_with("duplicate field") {
                Reject::whole(RejectReason::DuplicateField)
            } else {
                Reject::whole(RejectReason::NotObject)
            }
        }
        Category::Syntax | Category::Eof | Category::Io => Reject::whole(RejectReason::NotJson),
    }
}

type Field<'a> = Option<&'a RawValue>;

fn present<'a>(raw: Field<'a>, name: &'static str) -> Result<&'a str, Reject> {
    match raw {
        Some(r) if r.get() != "null" => Ok(r.get()),
        _ => Err(Reject::new(RejectReason::MissingField, name)),
    }
}

/// A JSON string, borrowed when it has no escapes.
fn string_field<'a>(
    raw: Field<'a>,
    name: &'static str,
) -> Result<std::borrow::Cow<'a, str>, Reject> {
    let text = present(raw, name)?;
    if !text.starts_with('"') {
        return Err(Reject::new(RejectReason::WrongType, name));
    }
    let s = if text.contains('\\') {
        // The only escapes that fail are lone surrogates: not Unicode text.
        std::borrow::Cow::Owned(
            serde_json::from_str::<String>(text)
                .map_err(|_| Reject::new(RejectReason::NotUtf8, name))?,
        )
    } else {
        // RawValue already checked the string: no escapes means the content
        // is exactly the bytes between the quotes.
        std::borrow::Cow::Borrowed(&text[1..text.len() - 1])
    };
    if s.len() > MAX_STRING_BYTES {
        return Err(Reject::new(RejectReason::TooLong, name));
    }
    Ok(s)
}

fn identifier(raw: Field<'_>, name: &'static str) -> Result<String, Reject> {
    let s = string_field(raw, name)?;
    if s.is_empty() {
        return Err(Reject::new(RejectReason::MissingField, name));
    }
    Ok(s.into_owned())
}

fn optional_string<'a>(
    raw: Field<'a>,
    name: &'static str,
) -> Result<Option<std::borrow::Cow<'a, str>>, Reject> {
    match raw {
        Some(r) if r.get() != "null" => string_field(raw, name).map(Some),
        _ => Ok(None),
    }
}

fn enum_field<T>(
    raw: Field<'_>,
    name: &'static str,
    parse: fn(&str) -> Option<T>,
) -> Result<T, Reject> {
    let s = string_field(raw, name)?;
    parse(&s).ok_or(Reject::new(RejectReason::UnknownValue, name))
}

fn temperature(raw: Field<'_>, name: &'static str) -> Result<f64, Reject> {
    let text = present(raw, name)?;
    let t: f64 = serde_json::from_str(text).map_err(|_| {
        if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
            Reject::new(RejectReason::OutOfRange, name)
        } else {
            Reject::new(RejectReason::WrongType, name)
        }
    })?;
    if !(34.0..=43.0).contains(&t) {
        return Err(Reject::new(RejectReason::OutOfRange, name));
    }
    Ok(t)
}

fn optional_temperature(raw: Field<'_>, name: &'static str) -> Result<Option<f64>, Reject> {
    match raw {
        Some(r) if r.get() != "null" => temperature(raw, name).map(Some),
        _ => Ok(None),
    }
}

fn integer(raw: Field<'_>, name: &'static str, min: i64) -> Result<i64, Reject> {
    let text = present(raw, name)?;
    let n: i64 = match serde_json::from_str(text) {
        Ok(n) => n,
        Err(_) => {
            // A number that is not an i64 (fraction, exponent, too big, or
            // too big even for an f64).
            let reason = if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
                RejectReason::OutOfRange
            } else {
                RejectReason::WrongType
            };
            return Err(Reject::new(reason, name));
        }
    };
    if n < min {
        return Err(Reject::new(RejectReason::OutOfRange, name));
    }
    Ok(n)
}

fn boolean(raw: Field<'_>, name: &'static str) -> Result<bool, Reject> {
    match present(raw, name)? {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(Reject::new(RejectReason::WrongType, name)),
    }
}

fn symptoms(raw: Field<'_>, name: &'static str) -> Result<Symptoms, Reject> {
    let text = present(raw, name)?;
    if !text.starts_with('[') {
        return Err(Reject::new(RejectReason::WrongType, name));
    }
    // Elements are checked as they are read, so the first bad one ends the
    // read: an array of a million entries costs no more than one of seven.
    struct Names<'r> {
        refused: &'r std::cell::Cell<Option<Reject>>,
        name: &'static str,
    }
    impl<'de> serde::de::Visitor<'de> for Names<'_> {
        type Value = u8;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array of symptom names")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<u8, A::Error> {
            let mut set = 0u8;
            while let Some(item) = seq.next_element::<&'de RawValue>()? {
                let checked = if item.get() == "null" {
                    Err(Reject::new(RejectReason::WrongType, self.name))
                } else {
                    string_field(Some(item), self.name).and_then(|s| {
                        let i = SYMPTOM_NAMES
                            .iter()
                            .position(|n| *n == s)
                            .ok_or(Reject::new(RejectReason::UnknownValue, self.name))?;
                        if set & (1 << i) != 0 {
                            return Err(Reject::new(RejectReason::RepeatedSymptom, self.name));
                        }
                        Ok(i)
                    })
                };
                match checked {
                    Ok(i) => set |= 1 << i,
                    Err(r) => {
                        self.refused.set(Some(r));
                        return Err(serde::de::Error::custom("refused"));
                    }
                }
            }
            Ok(set)
        }
    }
    let refused = std::cell::Cell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let set = serde::Deserializer::deserialize_seq(
        &mut de,
        Names {
            refused: &refused,
            name,
        },
    );
    match (set, refused.get()) {
        (_, Some(r)) => Err(r),
        (Ok(set), None) => Ok(Symptoms(set)),
        (Err(_), None) => Err(Reject::new(RejectReason::WrongType, name)),
    }
}

fn event_id(raw: Field<'_>) -> Result<String, Reject> {
    let s = string_field(raw, "event_id")?;
    let ok = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if !ok {
        return Err(Reject::new(RejectReason::BadEventId, "event_id"));
    }
    Ok(s.into_owned())
}

/// How far ahead of the receiving clock an event time may be (clock skew of
/// field devices, contract 1.1); beyond it the event is refused as
/// `future_timestamp`.
pub const MAX_FUTURE_MICROS: i64 = 5 * 60 * 1_000_000;

/// The earliest event time accepted by default, 2000-01-01T00:00:00Z
/// (contract 1.1): before it an event is refused as `early_timestamp`.
pub const EARLIEST_MICROS: i64 = 946_684_800_000_000;

fn event_time(raw: Field<'_>, now_micros: i64, earliest: i64) -> Result<i64, Reject> {
    let s = string_field(raw, "event_time")?;
    // chrono also takes U+2212 as an offset sign; RFC 3339 is ASCII only.
    if !s.is_ascii() {
        return Err(Reject::new(RejectReason::BadTimestamp, "event_time"));
    }
    let t = DateTime::parse_from_rfc3339(&s)
        .map_err(|_| Reject::new(RejectReason::BadTimestamp, "event_time"))?
        .timestamp_micros();
    if t > now_micros.saturating_add(MAX_FUTURE_MICROS) {
        return Err(Reject::new(RejectReason::FutureTimestamp, "event_time"));
    }
    if t < earliest {
        return Err(Reject::new(RejectReason::EarlyTimestamp, "event_time"));
    }
    Ok(t)
}

/// What the person, household and vehicle ids of a message are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ids {
    /// The source system's identifiers: the decoder hashes them.
    Raw,
    /// Already pseudonyms under this deployment's key (a paicha producer
    /// hashed them and said so in the message's header): kept as they are.
    Pseudonymized,
}

/// Replaces the person, household and vehicle ids of one event by their
/// pseudonyms, leaving every other byte as it was (unknown fields included,
/// for forward compatibility). Producers run it before an event reaches a
/// topic, so no topic but the dead-letter one holds a raw identifier.
///
/// An id that is not a non-empty string of at most [`MAX_STRING_BYTES`] is
/// refused here with the reason the consumer would give, rather than sent
/// on raw; an empty one is kept, for the consumer to refuse as missing.
pub fn pseudonymize(line: &[u8], pseudonymizer: &Pseudonymizer) -> Result<Vec<u8>, Reject> {
    #[derive(Deserialize)]
    struct IdFields<'a> {
        #[serde(borrow)]
        person_id: Option<&'a RawValue>,
        #[serde(borrow)]
        household_id: Option<&'a RawValue>,
        #[serde(borrow)]
        vehicle_id: Option<&'a RawValue>,
    }
    let text = as_text(line)?;
    let ids: IdFields = serde_json::from_str(text).map_err(classify)?;
    splice_ids(
        text,
        [ids.person_id, ids.household_id, ids.vehicle_id],
        pseudonymizer,
    )
}

/// `text` with the given raw `person_id`, `household_id` and `vehicle_id`
/// values (borrowed from it) replaced by their pseudonyms; see
/// [`pseudonymize`] for the rules.
fn splice_ids(
    text: &str,
    ids: [Field<'_>; 3],
    pseudonymizer: &Pseudonymizer,
) -> Result<Vec<u8>, Reject> {
    let line = text.as_bytes();
    let mut spans: Vec<(usize, usize, [u8; 32])> = Vec::with_capacity(3);
    for (raw, name) in ids
        .into_iter()
        .zip(["person_id", "household_id", "vehicle_id"])
    {
        let Some(r) = raw else { continue };
        if r.get() == "null" {
            continue;
        }
        let id = string_field(raw, name)?;
        if id.is_empty() {
            continue;
        }
        // RawValue borrows from `text`, so its offset is a pointer difference.
        let start = r.get().as_ptr() as usize - text.as_ptr() as usize;
        spans.push((start, start + r.get().len(), pseudonymizer.key_bytes(&id)));
    }
    spans.sort_unstable_by_key(|s| s.0);
    let mut out = Vec::with_capacity(line.len() + 64);
    let mut at = 0;
    for (start, end, key) in spans {
        out.extend_from_slice(&line[at..start]);
        out.push(b'"');
        out.extend_from_slice(&key);
        out.push(b'"');
        at = end;
    }
    out.extend_from_slice(&line[at..]);
    Ok(out)
}

/// Decodes and validates events, pseudonymizing identifiers on the way.
#[derive(Clone)]
pub struct Decoder {
    registry: std::sync::Arc<Registry>,
    pseudonymizer: Pseudonymizer,
    fingerprint: String,
    /// The earliest event time accepted, µs.
    earliest: i64,
}

impl Decoder {
    /// A decoder validating against `registry`, hashing ids with `pseudonymizer`.
    pub fn new(registry: std::sync::Arc<Registry>, pseudonymizer: Pseudonymizer) -> Self {
        Decoder {
            registry,
            fingerprint: pseudonymizer.fingerprint(),
            pseudonymizer,
            earliest: EARLIEST_MICROS,
        }
    }

    /// Refuses event times before `earliest` (µs) instead of 2000-01-01.
    pub fn with_earliest(mut self, earliest: i64) -> Self {
        self.earliest = earliest;
        self
    }

    /// The registry events are validated against.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The keyed hash identifiers are pseudonymized with.
    pub fn pseudonymizer(&self) -> &Pseudonymizer {
        &self.pseudonymizer
    }

    /// The key's fingerprint, as producers put it in the pseudonym header.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Decodes one event with raw identifiers. `topic` is the source its
    /// topic carries, if known; `now_micros` is the wall clock for the
    /// future-timestamp check.
    pub fn decode(
        &self,
        line: &[u8],
        topic: Option<Source>,
        now_micros: i64,
    ) -> Result<Event, Reject> {
        self.decode_with(line, topic, now_micros, Ids::Raw)
    }

    /// Decodes one event whose identifiers are `ids`.
    pub fn decode_with(
        &self,
        line: &[u8],
        topic: Option<Source>,
        now_micros: i64,
        ids: Ids,
    ) -> Result<Event, Reject> {
        let text = as_text(line)?;
        let w: Wire = serde_json::from_str(text).map_err(classify)?;
        self.event_of(&w, topic, now_micros, ids)
    }

    /// Decodes one event with raw identifiers and returns it with the line
    /// as a producer forwards it, ids replaced by pseudonyms (the rules of
    /// [`pseudonymize`]), from one parse of the line.
    pub fn decode_and_pseudonymize(
        &self,
        line: &[u8],
        topic: Option<Source>,
        now_micros: i64,
    ) -> Result<(Event, Vec<u8>), Reject> {
        let text = as_text(line)?;
        let w: Wire = serde_json::from_str(text).map_err(classify)?;
        let event = self.event_of(&w, topic, now_micros, Ids::Raw)?;
        let hashed = splice_ids(
            text,
            [w.person_id, w.household_id, w.vehicle_id],
            &self.pseudonymizer,
        )?;
        Ok((event, hashed))
    }

    fn event_of(
        &self,
        w: &Wire<'_>,
        topic: Option<Source>,
        now_micros: i64,
        ids: Ids,
    ) -> Result<Event, Reject> {
        let pseudonym = |raw: Field<'_>, name: &'static str| -> Result<String, Reject> {
            let id = identifier(raw, name)?;
            match ids {
                Ids::Raw => Ok(self.pseudonymizer.key(&id)),
                Ids::Pseudonymized if is_pseudonym(&id) => Ok(id),
                Ids::Pseudonymized => Err(Reject::new(RejectReason::PseudonymKey, name)),
            }
        };
        let source = string_field(w.source, "source")?;
        let source =
            Source::parse(&source).ok_or(Reject::new(RejectReason::UnknownSource, "source"))?;
        if topic.is_some_and(|t| t != source) {
            return Err(Reject::new(RejectReason::SourceMismatch, "source"));
        }
        let event_id = event_id(w.event_id)?;
        let event_time = event_time(w.event_time, now_micros, self.earliest)?;
        let district = string_field(w.district, "district")?;
        let district = self
            .registry
            .district_id(&district)
            .ok_or(Reject::new(RejectReason::UnknownDistrict, "district"))?;
        let body = self.body_of(source, district, w, &pseudonym)?;
        Ok(Event {
            event_id,
            event_time,
            district,
            body,
        })
    }

    /// The source-specific fields of `w`, validated in the contract's
    /// order, identifiers pseudonymized by `pseudonym`.
    fn body_of(
        &self,
        source: Source,
        district: u16,
        w: &Wire<'_>,
        pseudonym: &dyn Fn(Field<'_>, &'static str) -> Result<String, Reject>,
    ) -> Result<Body, Reject> {
        let person = |raw| pseudonym(raw, "person_id");
        Ok(match source {
            Source::Checkpoint => Body::Checkpoint {
                checkpoint_id: identifier(w.checkpoint_id, "checkpoint_id")?,
                person_key: person(w.person_id)?,
                vehicle_key: match optional_string(w.vehicle_id, "vehicle_id")? {
                    Some(v) if !v.is_empty() => Some(pseudonym(w.vehicle_id, "vehicle_id")?),
                    _ => None,
                },
                temperature_c: temperature(w.temperature_c, "temperature_c")?,
                mask: boolean(w.mask, "mask")?,
                symptoms: symptoms(w.symptoms, "symptoms")?,
                came_from: optional_string(w.came_from, "came_from")?.map(|s| s.into_owned()),
                disposition: enum_field(w.disposition, "disposition", Disposition::parse)?,
            },
            Source::Pharmacy => Body::Pharmacy {
                pharmacy_id: identifier(w.pharmacy_id, "pharmacy_id")?,
                person_key: person(w.person_id)?,
                drug_class: enum_field(w.drug_class, "drug_class", DrugClass::parse)?,
                quantity: integer(w.quantity, "quantity", 1)?,
                temperature_c: optional_temperature(w.temperature_c, "temperature_c")?,
            },
            Source::DoorVisit => {
                let outcome = enum_field(w.outcome, "outcome", Outcome::parse)?;
                let temperature_c = optional_temperature(w.temperature_c, "temperature_c")?;
                // events.md: only `seen` carries a measurement.
                let unseen = |field| Reject::new(RejectReason::UnseenMeasurement, field);
                if temperature_c.is_some() && outcome != Outcome::Seen {
                    return Err(unseen("temperature_c"));
                }
                let body = Body::DoorVisit {
                    grid_id: identifier(w.grid_id, "grid_id")?,
                    household_key: pseudonym(w.household_id, "household_id")?,
                    person_key: person(w.person_id)?,
                    visit_kind: enum_field(w.visit_kind, "visit_kind", VisitKind::parse)?,
                    outcome,
                    temperature_c,
                    symptoms: symptoms(w.symptoms, "symptoms")?,
                    observation: enum_field(w.observation, "observation", Observation::parse)?,
                };
                if matches!(&body, Body::DoorVisit { symptoms, .. } if symptoms.0 != 0)
                    && outcome != Outcome::Seen
                {
                    return Err(unseen("symptoms"));
                }
                body
            }
            Source::Case => Body::Case {
                person_key: person(w.person_id)?,
                status: enum_field(w.status, "status", CaseStatus::parse)?,
                hospital: match optional_string(w.hospital_id, "hospital_id")? {
                    Some(h) => Some(
                        self.registry
                            .hospital_id(&h)
                            .ok_or(Reject::new(RejectReason::UnknownHospital, "hospital_id"))?,
                    ),
                    None => None,
                },
            },
            Source::Bed => {
                let hospital = string_field(w.hospital_id, "hospital_id")?;
                let hospital = self
                    .registry
                    .hospital_id(&hospital)
                    .ok_or(Reject::new(RejectReason::UnknownHospital, "hospital_id"))?;
                // events.md 1.1: a bed event is its hospital's district's.
                let home = &self.registry.hospital(hospital).district;
                if self.registry.district_id(home) != Some(district) {
                    return Err(Reject::new(RejectReason::DistrictMismatch, "district"));
                }
                let action = enum_field(w.action, "action", BedAction::parse)?;
                let (person_key, beds_total) = match action {
                    BedAction::Capacity => (None, Some(integer(w.beds_total, "beds_total", 0)?)),
                    BedAction::Admit | BedAction::Discharge => (Some(person(w.person_id)?), None),
                };
                Body::Bed {
                    hospital,
                    action,
                    person_key,
                    beds_total,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder() -> Decoder {
        Decoder::new(
            std::sync::Arc::new(Registry::builtin().unwrap()),
            Pseudonymizer::new(b"test-key"),
        )
    }

    const NOW: i64 = 1_800_000_000_000_000;

    fn checkpoint(extra: &str) -> String {
        format!(
            r#"{{"event_id":"cp-1","event_time":"2020-01-27T09:15:00+08:00","source":"checkpoint","district":"500101","checkpoint_id":"cp-500101-01","person_id":"500101199001011234","temperature_c":36.6,"mask":true,"symptoms":[],"disposition":"pass"{extra}}}"#
        )
    }

    fn reject(line: &str) -> Reject {
        decoder()
            .decode(line.as_bytes(), Some(Source::Checkpoint), NOW)
            .unwrap_err()
    }

    /// Contract 1.1: not more than 5 minutes ahead of the receiving clock,
    /// not before 2000-01-01 unless configured otherwise.
    #[test]
    fn event_times_are_bounded_by_the_clock_and_the_earliest_bound() {
        let at = |t: &str| checkpoint("").replace("2020-01-27T09:15:00+08:00", t);
        let now = 1_580_087_700_000_000; // 2020-01-27T01:15:00Z
        let d = decoder();
        let ok = |line: String, d: &Decoder| d.decode(line.as_bytes(), None, now).is_ok();
        assert!(ok(at("2020-01-27T01:20:00Z"), &d));
        assert!(!ok(at("2020-01-27T01:20:01Z"), &d));
        assert!(ok(at("2000-01-01T00:00:00Z"), &d));
        let d = decoder().with_earliest(1_577_836_800_000_000); // 2020-01-01
        assert!(!ok(at("2019-12-31T23:59:59Z"), &d));
        assert!(ok(at("2020-01-01T00:00:00Z"), &d));
    }

    #[test]
    fn decodes_a_checkpoint_event() {
        let e = decoder()
            .decode(checkpoint("").as_bytes(), Some(Source::Checkpoint), NOW)
            .unwrap();
        assert_eq!(e.event_id, "cp-1");
        assert_eq!(e.event_time, 1_580_087_700_000_000);
        assert_eq!(e.source(), Source::Checkpoint);
        assert!(!e.suspicious());
        match &e.body {
            Body::Checkpoint { person_key, .. } => {
                assert_eq!(person_key.len(), 32);
                assert!(!person_key.contains("1990"));
            }
            _ => panic!("wrong body"),
        }
    }

    #[test]
    fn pseudonymized_lines_decode_to_the_same_keys_and_hold_no_raw_id() {
        let d = decoder();
        let line = checkpoint(r#","vehicle_id":"\u6e1dA12345","extra":{"person_id":"nested"}"#);
        let raw = d.decode(line.as_bytes(), None, NOW).unwrap();
        let hashed = pseudonymize(line.as_bytes(), d.pseudonymizer()).unwrap();
        let text = String::from_utf8(hashed.clone()).unwrap();
        assert!(!text.contains("500101199001011234"), "{text}");
        assert!(!text.contains("A12345"), "{text}");
        // Only top-level ids are identifiers; everything else is kept.
        assert!(text.contains(r#""extra":{"person_id":"nested"}"#), "{text}");
        let again = d
            .decode_with(&hashed, None, NOW, Ids::Pseudonymized)
            .unwrap();
        assert_eq!(raw, again);
        // Hashing twice would give other keys: the marker must say which.
        assert_ne!(d.decode(&hashed, None, NOW).unwrap(), raw);
        // Raw ids where pseudonyms are promised are refused, not hashed.
        assert_eq!(
            d.decode_with(line.as_bytes(), None, NOW, Ids::Pseudonymized)
                .unwrap_err(),
            Reject::new(RejectReason::PseudonymKey, "person_id")
        );
    }

    #[test]
    fn one_parse_gives_what_decode_and_pseudonymize_give() {
        let d = decoder();
        for line in [
            checkpoint(r#","vehicle_id":"\u6e1dA12345""#),
            checkpoint(r#","household_id":5"#),
            checkpoint("").replace("36.6", "45.5"),
        ] {
            let apart = d
                .decode(line.as_bytes(), None, NOW)
                .and_then(|e| Ok((e, pseudonymize(line.as_bytes(), d.pseudonymizer())?)));
            assert_eq!(d.decode_and_pseudonymize(line.as_bytes(), None, NOW), apart);
            let apart = route(line.as_bytes())
                .and_then(|r| Ok((r, pseudonymize(line.as_bytes(), d.pseudonymizer())?)));
            assert_eq!(
                route_and_pseudonymize(line.as_bytes(), d.pseudonymizer()),
                apart
            );
        }
    }

    #[test]
    fn ids_that_are_not_strings_are_refused_before_they_reach_a_topic() {
        let p = Pseudonymizer::new(b"k");
        let number = checkpoint("").replace(r#""500101199001011234""#, "500101199001011234");
        assert_eq!(
            pseudonymize(number.as_bytes(), &p).unwrap_err(),
            Reject::new(RejectReason::WrongType, "person_id")
        );
        let long = checkpoint("").replace("500101199001011234", &"9".repeat(300));
        assert_eq!(
            pseudonymize(long.as_bytes(), &p).unwrap_err(),
            Reject::new(RejectReason::TooLong, "person_id")
        );
        let twice = checkpoint(r#","person_id":"x""#);
        assert_eq!(
            pseudonymize(twice.as_bytes(), &p).unwrap_err().reason,
            RejectReason::DuplicateField
        );
        let empty = checkpoint("").replace("500101199001011234", "");
        assert_eq!(
            pseudonymize(empty.as_bytes(), &p).unwrap(),
            empty.as_bytes()
        );
    }

    #[test]
    fn unknown_fields_are_ignored_even_when_another_source_owns_them() {
        let e = decoder().decode(
            checkpoint(r#","beds_total":"many","extra":{"a":[1,2]}"#).as_bytes(),
            None,
            NOW,
        );
        assert!(e.is_ok());
    }

    #[test]
    fn rejections_name_their_reason() {
        use RejectReason::*;
        let cases: Vec<(String, RejectReason)> = vec![
            ("not json".into(), NotJson),
            (checkpoint("")[..40].to_string(), NotJson),
            ("[1,2]".into(), NotObject),
            (checkpoint(r#","mask":false"#), DuplicateField),
            (checkpoint("").replace(r#""mask":true,"#, ""), MissingField),
            (checkpoint("").replace("36.6", r#""high""#), WrongType),
            (checkpoint("").replace("36.6", "45.5"), OutOfRange),
            (checkpoint("").replace("36.6", "NaN"), NotJson),
            (
                checkpoint("").replace(r#""pass""#, r#""fly""#),
                UnknownValue,
            ),
            (
                checkpoint("").replace("[]", r#"["cough","cough"]"#),
                RepeatedSymptom,
            ),
            (
                checkpoint("").replace("[]", r#"["sneezing"]"#),
                UnknownValue,
            ),
            (checkpoint("").replace("cp-1", "cp 1"), BadEventId),
            (checkpoint("").replace("+08:00", ""), BadTimestamp),
            (
                checkpoint("").replace("2020-01-27", "2120-01-27"),
                FutureTimestamp,
            ),
            (
                checkpoint("").replace("2020-01-27T09:15:00+08:00", "1969-12-31T23:59:59Z"),
                EarlyTimestamp,
            ),
            (
                checkpoint("").replace("2020-01-27T09:15:00+08:00", "1999-12-31T23:59:59Z"),
                EarlyTimestamp,
            ),
            (
                checkpoint("").replace(r#""500101""#, r#""999999""#),
                UnknownDistrict,
            ),
            (
                checkpoint("").replace(r#""checkpoint","#, r#""xray","#),
                UnknownSource,
            ),
            (
                checkpoint("").replace(r#""source":"checkpoint""#, r#""source":"pharmacy""#),
                SourceMismatch,
            ),
        ];
        for (line, want) in cases {
            assert_eq!(reject(&line).reason, want, "{line}");
        }
        assert_eq!(
            decoder()
                .decode(&[0xff, 0xfe], None, NOW)
                .unwrap_err()
                .reason,
            NotUtf8
        );
    }

    #[test]
    fn door_visit_not_seen_carries_no_measurement() {
        let line = r#"{"event_id":"dv-1","event_time":"2020-01-27T09:15:00Z","source":"door_visit","district":"500103","grid_id":"g","household_id":"h","person_id":"p","visit_kind":"follow_up","outcome":"not_home","temperature_c":38.0,"symptoms":[],"observation":"home_isolation"}"#;
        let r = decoder().decode(line.as_bytes(), None, NOW).unwrap_err();
        assert_eq!(
            (r.reason, r.field),
            (RejectReason::UnseenMeasurement, Some("temperature_c"))
        );
        let ok = line.replace("38.0", "null");
        let e = decoder().decode(ok.as_bytes(), None, NOW).unwrap();
        assert!(!e.suspicious());
        let coughing = ok.replace(r#""symptoms":[]"#, r#""symptoms":["cough"]"#);
        let r = decoder()
            .decode(coughing.as_bytes(), None, NOW)
            .unwrap_err();
        assert_eq!(
            (r.reason, r.field),
            (RejectReason::UnseenMeasurement, Some("symptoms"))
        );
    }

    #[test]
    fn suspicious_and_fever_follow_the_contract() {
        let d = decoder();
        let hot = checkpoint("").replace("36.6", "37.3");
        let e = d.decode(hot.as_bytes(), None, NOW).unwrap();
        assert!(e.suspicious() && e.fever());
        let cough = checkpoint("").replace("[]", r#"["cough"]"#);
        let e = d.decode(cough.as_bytes(), None, NOW).unwrap();
        assert!(e.suspicious() && !e.fever());
        let pharmacy = r#"{"event_id":"ph-1","event_time":"2020-01-27T09:15:00+08:00","source":"pharmacy","district":"500103","pharmacy_id":"ph","person_id":"p","drug_class":"cough","quantity":1,"temperature_c":null}"#;
        let e = d.decode(pharmacy.as_bytes(), None, NOW).unwrap();
        assert!(e.suspicious() && !e.fever());
        let other = pharmacy.replace(r#""cough""#, r#""antibiotic""#);
        assert!(!d.decode(other.as_bytes(), None, NOW).unwrap().suspicious());
        let zero = pharmacy.replace(r#""quantity":1"#, r#""quantity":0"#);
        assert_eq!(
            d.decode(zero.as_bytes(), None, NOW).unwrap_err().reason,
            RejectReason::OutOfRange
        );
    }

    #[test]
    fn bed_events_need_a_registered_hospital() {
        let d = decoder();
        let cap = r#"{"event_id":"b-1","event_time":"2020-01-27T09:15:00+08:00","source":"bed","district":"500106","hospital_id":"cq-phmc","action":"capacity","beds_total":400}"#;
        assert!(d.decode(cap.as_bytes(), None, NOW).is_ok());
        let bad = cap.replace("cq-phmc", "cq-nowhere");
        assert_eq!(
            d.decode(bad.as_bytes(), None, NOW).unwrap_err().reason,
            RejectReason::UnknownHospital
        );
        let admit = cap.replace(r#""capacity","beds_total":400"#, r#""admit""#);
        assert_eq!(
            d.decode(admit.as_bytes(), None, NOW).unwrap_err(),
            Reject::new(RejectReason::MissingField, "person_id")
        );
        // PHMC is in 500106: a bed event of it from 500103 is refused.
        let elsewhere = cap.replace("500106", "500103");
        assert_eq!(
            d.decode(elsewhere.as_bytes(), None, NOW).unwrap_err(),
            Reject::new(RejectReason::DistrictMismatch, "district")
        );
    }

    #[test]
    fn route_reads_source_and_district() {
        let r = route(checkpoint("").as_bytes()).unwrap();
        assert_eq!(r.source, Source::Checkpoint);
        assert_eq!(r.district, "500101");
        assert_eq!(route(b"{").unwrap_err().reason, RejectReason::NotJson);
    }
}
