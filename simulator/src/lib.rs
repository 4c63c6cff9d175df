//! The deterministic scenario simulator: a Chongqing-like screening operation
//! (January–February 2020) as JSON lines of the event contract, with the
//! anomalies field systems produce (duplicates, late deliveries, broken lines).
//!
//! The volumes are calibrated on `shared/reference/chongqing-2020.md` at
//! `scale` 1.0: ~10,000 checkpoint checks, ~3,000 pharmacy purchases and
//! ~20,000 door screenings a day, plus daily follow-ups of everyone under
//! observation and the case and bed events of an epidemic curve peaking on
//! Jan 27 at ~35 new confirmations.
//!
//! A scenario is generated one day at a time: the state carried between days
//! is the persons still followed (under observation or in hospital) and the
//! events already planned for them, never the scenario's past. All randomness
//! comes from ChaCha8 seeded by [`SimConfig::seed`], so the same configuration
//! gives the same bytes. The anomalies draw from a second stream of the same
//! seed, so a scenario with anomalies carries exactly the valid events of its
//! [`SimConfig::clean`] twin.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;

use chrono::{Days, NaiveDate};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Serialize, Serializer};

use paicha_contract::event::SYMPTOM_NAMES;
use paicha_contract::registry::{HospitalRole, Registry};

const MINUTE: i64 = 60;
const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;

/// Persons checked at all checkpoints per day.
const CHECKS_PER_DAY: f64 = 10_000.0;
/// Registered purchases of fever, cough and related drugs per day.
const PURCHASES_PER_DAY: f64 = 3_000.0;
/// Door-to-door screening visits per day.
const SCREENINGS_PER_DAY: f64 = 20_000.0;
/// New confirmations on the peak day of the curve.
const PEAK_CONFIRMATIONS: f64 = 35.0;
/// Days from 2020-01-20 to the peak of the curve (Jan 27).
const PEAK_DAY: f64 = 7.0;
/// Width of the curve in days.
const CURVE_SD: f64 = 6.0;
/// Suspected persons later excluded, per confirmed person.
const EXCLUDED_PER_CONFIRMED: f64 = 2.0;
/// Stations per border district: 7 × 26 = 182, the reported count.
const CHECKPOINTS_PER_BORDER_DISTRICT: u32 = 7;
/// Yuzhong: 960 grids for 660,000 residents.
const RESIDENTS_PER_GRID: u64 = 700;
const RESIDENTS_PER_PHARMACY: u64 = 4_000;
const HOUSEHOLDS_PER_GRID: u64 = 250;
const MEMBERS_PER_HOUSEHOLD: u64 = 4;
/// Length of an observation episode (events.md).
const OBSERVATION_DAYS: i64 = 14;
/// How many recently referred suspicious persons are remembered as the pool
/// the health commission's suspected (and mostly excluded) cases come from.
const REFERRED_POOL: usize = 2_000;

/// Wuhan's districts, for the ID numbers of travellers from the epicentre.
const WUHAN_REGIONS: [&str; 8] = [
    "420102", "420103", "420104", "420105", "420106", "420107", "420111", "420115",
];
/// Other places travellers come from: free text or region codes, as field
/// systems wrote them.
const OTHER_ORIGINS: [&str; 14] = [
    "Chengdu",
    "510100",
    "Guiyang",
    "520100",
    "Xi'an",
    "610100",
    "Changsha",
    "430100",
    "Beijing",
    "110100",
    "Guangzhou",
    "440100",
    "Shanghai",
    "Enshi",
];
/// Regions of the ID numbers of travellers not born in the city.
const OTHER_REGIONS: [&str; 8] = [
    "510104", "510107", "520102", "610103", "430102", "110105", "440106", "422801",
];
/// Province prefixes of plates seen on the roads into Chongqing, weighted by
/// repetition (渝 is Chongqing, 鄂 is Hubei).
const PLATE_PROVINCES: [&str; 10] = ["渝", "渝", "渝", "渝", "渝", "渝", "川", "鄂", "贵", "湘"];
const PLATE_LETTERS: &[u8] = b"ABCDEFGHJK";

/// Which designated hospital serves each region of Chongqing in 2020; the
/// districts not listed (the central city) go to [`CENTRAL_HOSPITAL`]. The
/// first entry is the north-east, facing Hubei.
const CATCHMENT: [(&str, &[&str]); 3] = [
    (
        "cq-sanxia",
        &[
            "500101", "500154", "500155", "500229", "500230", "500231", "500233", "500235",
            "500236", "500237", "500238",
        ],
    ),
    (
        "cq-qianjiang",
        &["500114", "500156", "500240", "500241", "500242", "500243"],
    ),
    (
        "cq-yongchuan",
        &[
            "500118", "500111", "500151", "500152", "500153", "500116", "500120",
        ],
    ),
];
const CENTRAL_HOSPITAL: &str = "cq-phmc";
/// The north-east had more travellers from Wuhan and more cases per resident
/// (Wanzhou led the city's count; Three Gorges hospital held the most
/// patients on Jan 29).
const NORTH_EAST_CASE_FACTOR: f64 = 2.5;
const NORTH_EAST_WUHAN_FACTOR: f64 = 1.8;
const ELSEWHERE_WUHAN_FACTOR: f64 = 0.5;

/// Knobs of a scenario.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed of all randomness; the same config gives the same bytes.
    pub seed: u64,
    /// Number of days, default 22 (2020-01-20 ..= 2020-02-10).
    pub days: u32,
    /// Multiplies every volume; 1.0 default.
    pub scale: f64,
    /// First day, default 2020-01-20. The epidemic curve is fixed to the
    /// calendar (peak on 2020-01-27), so another start sees another part of it.
    pub start: NaiveDate,
    /// Share of events emitted twice, default 0.002.
    pub duplicate_rate: f64,
    /// Share of events emitted 2 hours to 3 days after their event time, in a
    /// later day's lines, default 0.001.
    pub late_rate: f64,
    /// Extra broken lines per valid event, default 0.0005.
    pub malformed_rate: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 2020,
            days: 22,
            scale: 1.0,
            start: curve_origin(),
            duplicate_rate: 0.002,
            late_rate: 0.001,
            malformed_rate: 0.0005,
        }
    }
}

impl SimConfig {
    /// The same scenario without duplicates, late deliveries or broken lines.
    pub fn clean(mut self) -> Self {
        self.duplicate_rate = 0.0;
        self.late_rate = 0.0;
        self.malformed_rate = 0.0;
        self
    }
}

/// Counts of what a scenario contains, for the command's summary line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimSummary {
    /// Lines emitted, of every kind.
    pub lines: u64,
    /// Distinct valid events (distinct `event_id`s of valid lines).
    pub events: u64,
    /// Extra copies of already emitted events (flagged `"sim":"duplicate"`).
    pub duplicates: u64,
    /// Events emitted on a later day than their event time (`"sim":"late"`).
    pub late: u64,
    /// Broken lines, which the contract rejects.
    pub malformed: u64,
    /// Distinct valid events by source: checkpoint, pharmacy, door_visit,
    /// case, bed.
    pub by_source: [u64; 5],
}

/// The day the epidemic curve counts from.
fn curve_origin() -> NaiveDate {
    // A valid literal date: the fallback is never taken.
    NaiveDate::from_ymd_opt(2020, 1, 20).unwrap_or_default()
}

/// Relative height of the epidemic curve (1.0 at the peak) `d` days after
/// 2020-01-20.
fn curve(d: i64) -> f64 {
    let x = d as f64 - PEAK_DAY;
    (-(x * x) / (2.0 * CURVE_SD * CURVE_SD)).exp()
}

// ---------------------------------------------------------------------------
// Events as the simulator holds them until they are serialized.

/// The per-source fields, serialized in contract order after the common ones.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
enum Body {
    Checkpoint {
        checkpoint_id: String,
        person_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        vehicle_id: Option<String>,
        temperature_c: f64,
        mask: bool,
        #[serde(serialize_with = "symptom_names")]
        symptoms: u8,
        #[serde(skip_serializing_if = "Option::is_none")]
        came_from: Option<&'static str>,
        disposition: &'static str,
    },
    Pharmacy {
        pharmacy_id: String,
        person_id: String,
        drug_class: &'static str,
        quantity: u32,
        temperature_c: Option<f64>,
    },
    DoorVisit {
        grid_id: String,
        household_id: String,
        person_id: String,
        visit_kind: &'static str,
        outcome: &'static str,
        temperature_c: Option<f64>,
        #[serde(serialize_with = "symptom_names")]
        symptoms: u8,
        observation: &'static str,
    },
    Case {
        person_id: String,
        status: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        hospital_id: Option<String>,
    },
    Bed {
        hospital_id: String,
        action: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        person_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        beds_total: Option<u64>,
    },
}

/// Source names and event-id prefixes, in [`SimSummary::by_source`] order.
const SOURCES: [&str; 5] = ["checkpoint", "pharmacy", "door_visit", "case", "bed"];
const ID_PREFIXES: [&str; 5] = ["cp", "ph", "dv", "cs", "bd"];

impl Body {
    fn source(&self) -> usize {
        match self {
            Body::Checkpoint { .. } => 0,
            Body::Pharmacy { .. } => 1,
            Body::DoorVisit { .. } => 2,
            Body::Case { .. } => 3,
            Body::Bed { .. } => 4,
        }
    }
}

fn symptom_names<S: Serializer>(bits: &u8, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(
        SYMPTOM_NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| bits & (1 << i) != 0)
            .map(|(_, name)| name),
    )
}

const FEVER: u8 = 1;
const COUGH: u8 = 1 << 1;
const SORE_THROAT: u8 = 1 << 2;
const SHORTNESS_OF_BREATH: u8 = 1 << 3;
const FATIGUE: u8 = 1 << 4;

/// One event: seconds since the scenario's first midnight (+08:00), the
/// district index, and the fields.
#[derive(Debug, Clone)]
struct Ev {
    t: i64,
    district: u16,
    body: Body,
}

/// The wire form of an event: common fields first, then the source's own.
#[derive(Serialize)]
struct Wire<'a> {
    event_id: &'a str,
    event_time: &'a str,
    source: &'static str,
    district: &'a str,
    #[serde(flatten)]
    body: &'a Body,
}

/// A line withheld for a later day.
struct Delayed {
    arrival: i64,
    source: usize,
    line: String,
}

// ---------------------------------------------------------------------------
// The registry as the simulator uses it.

struct DistrictInfo {
    code: String,
    grids: u64,
    pharmacies: u64,
    /// Designated hospital (index) patients of this district are sent to.
    designated: Option<usize>,
    /// The district's own hospital, where some patients are admitted first.
    district_hospital: Option<usize>,
    north_east: bool,
}

struct HospitalInfo {
    id: String,
    district: u16,
}

/// A person under observation, followed up daily in `district`.
struct Observed {
    person_id: String,
    district: u16,
    grid_id: String,
    household_id: String,
    /// `home_isolation`, `centralized_observation` or `medical_observation`.
    kind: &'static str,
    start_day: i64,
    /// When the next visit is due to happen.
    next_t: i64,
    /// The person is among the day's confirmations to come: the next visit
    /// finds fever, and the case pipeline takes over.
    confirm_day: Option<i64>,
}

/// A person the health commission will report as suspected on `suspect_day`.
struct Plan {
    person_id: String,
    district: u16,
    suspect_day: i64,
    /// Day of confirmation, or `None` when the person will be excluded.
    confirm_day: Option<i64>,
}

/// Cumulative weights for drawing an index in proportion to a weight.
struct Weighted(Vec<f64>);

impl Weighted {
    fn new(weights: impl IntoIterator<Item = f64>) -> Self {
        let mut total = 0.0;
        Weighted(
            weights
                .into_iter()
                .map(|w| {
                    total += w.max(0.0);
                    total
                })
                .collect(),
        )
    }

    fn sample(&self, rng: &mut ChaCha8Rng) -> usize {
        let total = self.0.last().copied().unwrap_or(0.0);
        let x = rng.random::<f64>() * total;
        self.0
            .partition_point(|&c| c <= x)
            .min(self.0.len().saturating_sub(1))
    }
}

// ---------------------------------------------------------------------------
// Random helpers. `chance` instead of `random_bool` because rates come from
// the configuration and must not panic when out of [0, 1].

fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    rng.random::<f64>() < p
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box–Muller; 1 - u keeps the logarithm finite.
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn poisson(rng: &mut ChaCha8Rng, lambda: f64) -> u64 {
    if lambda.is_nan() || lambda <= 0.0 {
        0
    } else if lambda < 30.0 {
        // Knuth: exact, and cheap for small means.
        let limit = (-lambda).exp();
        let mut k = 0;
        let mut p = rng.random::<f64>();
        while p > limit {
            k += 1;
            p *= rng.random::<f64>();
        }
        k
    } else {
        // Normal approximation: the volumes are in the thousands.
        (lambda + lambda.sqrt() * normal(rng)).round().max(0.0) as u64
    }
}

/// A uniform time in `[from, to)` seconds.
fn between(rng: &mut ChaCha8Rng, from: i64, to: i64) -> i64 {
    if to <= from {
        from
    } else {
        rng.random_range(from..to)
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// A normal reading: N(36.5, 0.3) within 35.0..37.3, so that only the
/// persons chosen to be suspicious cross the fever threshold (the unbounded
/// normal would put 0.4% above it, far more than the reported 1 in 10,000).
fn normal_temperature(rng: &mut ChaCha8Rng) -> f64 {
    loop {
        let t = round1(36.5 + 0.3 * normal(rng));
        if (35.0..37.3).contains(&t) {
            return t;
        }
    }
}

fn fever_temperature(rng: &mut ChaCha8Rng) -> f64 {
    round1((37.9 + 0.4 * normal(rng)).clamp(37.3, 40.5))
}

/// Temperature and symptoms of a suspicious person: mostly fever, otherwise
/// respiratory symptoms at a normal temperature.
fn suspicious_reading(rng: &mut ChaCha8Rng) -> (f64, u8) {
    if chance(rng, 0.7) {
        let mut s = 0;
        if chance(rng, 0.8) {
            s |= FEVER;
        }
        if chance(rng, 0.5) {
            s |= COUGH;
        }
        if chance(rng, 0.3) {
            s |= FATIGUE;
        }
        if chance(rng, 0.05) {
            s |= SHORTNESS_OF_BREATH;
        }
        (fever_temperature(rng), s)
    } else {
        let s = match rng.random_range(0..10) {
            0..=5 => COUGH,
            6 | 7 => SORE_THROAT | COUGH,
            8 => FATIGUE,
            _ => SORE_THROAT,
        };
        (normal_temperature(rng), s)
    }
}

/// SplitMix64: derives stable identities (household members) from numbers.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `p-` and an 18-character national-ID-like number: 6-digit region, birth
/// date, sequence and the ISO 7064 MOD 11-2 check character, all derived
/// from `h`. Fake, but shaped like what field systems send.
fn person_id(region: &str, h: u64) -> String {
    let year = 1935 + h % 81;
    let month = 1 + (h >> 8) % 12;
    let day = 1 + (h >> 16) % 28;
    let seq = (h >> 24) % 1000;
    let body = format!("{region:0>6.6}{year:04}{month:02}{day:02}{seq:03}");
    format!("p-{body}{}", check_char(&body))
}

/// The ISO 7064 MOD 11-2 check character of the first 17 digits of a
/// national ID number.
fn check_char(digits: &str) -> char {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = digits
        .bytes()
        .zip(WEIGHTS)
        .map(|(b, w)| u32::from(b.wrapping_sub(b'0') % 10) * w)
        .sum();
    char::from(b"10X98765432"[(sum % 11) as usize])
}

fn plate(rng: &mut ChaCha8Rng, from_wuhan: bool) -> String {
    let letter = PLATE_LETTERS[rng.random_range(0..PLATE_LETTERS.len())] as char;
    let mut tail = String::with_capacity(5);
    for _ in 0..5 {
        tail.push(char::from(b'0' + rng.random_range(0..10u8)));
    }
    if from_wuhan && chance(rng, 0.5) {
        // 鄂A is Wuhan.
        return format!("鄂A{tail}");
    }
    if chance(rng, 0.1) {
        // Some systems cannot type Chinese and write an ASCII form.
        return format!("CQ-{letter}{tail}");
    }
    let province = PLATE_PROVINCES[rng.random_range(0..PLATE_PROVINCES.len())];
    format!("{province}{letter}{tail}")
}

fn to_json<T: Serialize>(value: &T) -> String {
    // The simulator's types have no fallible Serialize impls and no maps
    // with non-string keys, so serializing to a string cannot fail.
    serde_json::to_string(value)
        .unwrap_or_else(|e| unreachable!("simulated events always serialize: {e}"))
}

/// The original line plus a `sim` field (the original has no `sim`).
fn flagged(line: &str, flag: &str) -> String {
    let body = line.strip_suffix('}').unwrap_or(line);
    format!("{body},\"sim\":\"{flag}\"}}")
}

// ---------------------------------------------------------------------------

/// A scenario generated one day at a time (bounded memory), as JSON lines.
pub struct Simulator {
    cfg: SimConfig,
    /// The events.
    rng: ChaCha8Rng,
    /// The anomalies: a separate stream, so that anomalies do not change
    /// which valid events a scenario has.
    noise: ChaCha8Rng,
    districts: Vec<DistrictInfo>,
    hospitals: Vec<HospitalInfo>,
    /// Checkpoint id and district index.
    checkpoints: Vec<(String, u16)>,
    by_population: Weighted,
    by_case_risk: Weighted,
    /// Days since 2020-01-20 of the scenario's first day.
    curve_offset: i64,
    /// Index of the next day to generate.
    day: i64,
    next_id: [u64; 5],
    next_bad: u64,
    /// Events planned for the current and later days, by day.
    agenda: BTreeMap<i64, Vec<Ev>>,
    /// Suspected persons not yet reported.
    pending: Vec<Plan>,
    observed: Vec<Observed>,
    /// Recently referred suspicious persons and their districts.
    referred: VecDeque<(String, u16)>,
    /// Late lines by the day they are emitted with.
    late: BTreeMap<i64, Vec<Delayed>>,
    summary: SimSummary,
}

/// Each district's grids, pharmacies and hospitals, and the road
/// checkpoints of the border districts.
fn district_infos(
    registry: &Registry,
    designated: &[usize],
) -> (Vec<DistrictInfo>, Vec<(String, u16)>) {
    let hospital_index = |id: &str| registry.hospital_id(id).map(usize::from);
    let mut districts = Vec::with_capacity(registry.districts().len());
    let mut checkpoints = Vec::new();
    for (i, d) in registry.districts().iter().enumerate() {
        let code = d.district.as_str();
        let region = CATCHMENT.iter().position(|(_, ds)| ds.contains(&code));
        // Same-district designated hospital first, then the 2020
        // catchment, then round-robin for registries of other cities.
        let designated_here = designated
            .iter()
            .copied()
            .find(|&h| registry.hospitals()[h].district == code)
            .or_else(|| {
                let id = region.map_or(CENTRAL_HOSPITAL, |r| CATCHMENT[r].0);
                hospital_index(id).filter(|&h| registry.hospitals()[h].designated())
            })
            .or_else(|| (!designated.is_empty()).then(|| designated[i % designated.len()]));
        let district_hospital = registry
            .hospitals()
            .iter()
            .position(|h| h.role == HospitalRole::District && h.district == code);
        if d.border {
            for n in 1..=CHECKPOINTS_PER_BORDER_DISTRICT {
                checkpoints.push((format!("cp-{code}-{n:02}"), i as u16));
            }
        }
        districts.push(DistrictInfo {
            code: code.to_string(),
            grids: (d.population / RESIDENTS_PER_GRID).clamp(1, 9_999),
            pharmacies: (d.population / RESIDENTS_PER_PHARMACY).clamp(1, 9_999),
            designated: designated_here,
            district_hospital,
            north_east: region == Some(0),
        });
    }
    (districts, checkpoints)
}

/// When each hospital states its beds: (instant, hospital, beds).
fn capacities(
    registry: &Registry,
    designated: &[usize],
    rng: &mut ChaCha8Rng,
) -> Vec<(i64, usize, u64)> {
    // Every hospital states its capacity at the start of the first day,
    // and once or twice around the peak a designated hospital opens a
    // ward.
    let mut capacity: Vec<(i64, usize, u64)> = registry
        .hospitals()
        .iter()
        .enumerate()
        .map(|(h, info)| (0, h, info.beds_total))
        .collect();
    if !designated.is_empty() {
        let raises = (1 + rng.random_range(0..2usize)).min(designated.len());
        let first = rng.random_range(0..designated.len());
        for k in 0..raises {
            let h = designated[(first + k) % designated.len()];
            let day = rng.random_range(5..=12i64);
            let t = day * DAY + between(rng, 10 * HOUR, 16 * HOUR);
            capacity.push((t, h, registry.hospitals()[h].beds_total + 100));
        }
    }
    capacity
}

impl Simulator {
    /// A simulator of `cfg` over the districts and hospitals of `registry`.
    pub fn new(cfg: SimConfig, registry: &Registry) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let mut noise = ChaCha8Rng::seed_from_u64(cfg.seed);
        noise.set_stream(1);

        // `Registry::from_csv` refuses empty lists and hospitals in unknown
        // districts, so every weighted draw below has something to draw.
        let hospitals: Vec<HospitalInfo> = registry
            .hospitals()
            .iter()
            .map(|h| HospitalInfo {
                id: h.hospital_id.clone(),
                district: registry.district_id(&h.district).unwrap_or(0),
            })
            .collect();
        let designated: Vec<usize> = registry
            .hospitals()
            .iter()
            .enumerate()
            .filter(|(_, h)| h.designated())
            .map(|(i, _)| i)
            .collect();
        let (districts, checkpoints) = district_infos(registry, &designated);
        let by_population = Weighted::new(registry.districts().iter().map(|d| d.population as f64));
        let by_case_risk = Weighted::new(registry.districts().iter().zip(&districts).map(
            |(d, info)| {
                let factor = if info.north_east {
                    NORTH_EAST_CASE_FACTOR
                } else {
                    1.0
                };
                d.population as f64 * factor
            },
        ));

        let capacity = capacities(registry, &designated, &mut rng);

        let mut sim = Simulator {
            curve_offset: (cfg.start - curve_origin()).num_days(),
            cfg,
            rng,
            noise,
            districts,
            hospitals,
            checkpoints,
            by_population,
            by_case_risk,
            day: 0,
            next_id: [0; 5],
            next_bad: 0,
            agenda: BTreeMap::new(),
            pending: Vec::new(),
            observed: Vec::new(),
            referred: VecDeque::new(),
            late: BTreeMap::new(),
            summary: SimSummary::default(),
        };
        for (t, h, beds) in capacity {
            sim.schedule(Ev {
                t,
                district: sim.hospitals[h].district,
                body: Body::Bed {
                    hospital_id: sim.hospitals[h].id.clone(),
                    action: "capacity",
                    person_id: None,
                    beds_total: Some(beds),
                },
            });
        }
        sim
    }

    /// What the scenario has emitted so far (all of it once [`Self::next_day`]
    /// has returned `None`).
    pub fn summary(&self) -> &SimSummary {
        &self.summary
    }

    /// The lines (no trailing '\n') of the next simulated day, in emission
    /// order; None after the last day. Late copies scheduled past the last
    /// day are emitted with the last day.
    pub fn next_day(&mut self) -> Option<Vec<String>> {
        let d = self.day;
        if d >= i64::from(self.cfg.days) {
            return None;
        }
        let date = self
            .cfg
            .start
            .checked_add_days(Days::new(d as u64))?
            .format("%Y-%m-%d")
            .to_string();

        // Order matters only for determinism; the cases come first so that
        // persons already under observation can be chosen before today's
        // follow-ups.
        self.plan_cases(d);
        self.report_suspected(d);
        self.checkpoints(d);
        self.pharmacies(d);
        self.door_screening(d);
        self.follow_ups(d);

        let mut events = self.agenda.remove(&d).unwrap_or_default();
        // Stable: events at the same second keep the order they were made in.
        events.sort_by_key(|e| e.t);
        let lines = self.emit(d, &date, &events);
        self.day += 1;
        Some(lines)
    }

    fn last_day(&self) -> i64 {
        i64::from(self.cfg.days) - 1
    }

    /// Files an event under its day; events after the scenario are dropped.
    fn schedule(&mut self, ev: Ev) {
        let day = ev.t.div_euclid(DAY);
        if day >= self.day && day <= self.last_day() {
            self.agenda.entry(day).or_default().push(ev);
        }
    }

    fn scale(&self) -> f64 {
        self.cfg.scale.max(0.0)
    }

    /// Serializes the day's events and mixes in the anomalies.
    fn emit(&mut self, d: i64, date: &str, events: &[Ev]) -> Vec<String> {
        let mut out: Vec<(i64, String)> = Vec::with_capacity(events.len() + 16);
        for ev in events {
            let src = ev.body.source();
            self.next_id[src] += 1;
            let id = format!("{}-{}", ID_PREFIXES[src], self.next_id[src]);
            let line = self.serialize(ev, &id, date);
            let u = self.noise.random::<f64>();
            if u < self.cfg.duplicate_rate {
                let again = ev.t + between(&mut self.noise, 5, 10 * MINUTE);
                out.push((again, flagged(&line, "duplicate")));
                self.summary.duplicates += 1;
            } else if u < self.cfg.duplicate_rate + self.cfg.late_rate {
                let arrival = ev.t + between(&mut self.noise, 2 * HOUR, 3 * DAY + 1);
                let day = arrival.div_euclid(DAY).max(d + 1).min(self.last_day());
                let delayed = Delayed {
                    arrival: arrival.max(day * DAY),
                    source: src,
                    line: flagged(&line, "late"),
                };
                self.late.entry(day).or_default().push(delayed);
                continue;
            }
            self.count_valid(src);
            out.push((ev.t, line));
        }

        let broken = poisson(
            &mut self.noise,
            self.cfg.malformed_rate * events.len() as f64,
        );
        for _ in 0..broken {
            if events.is_empty() {
                break;
            }
            let ev = &events[self.noise.random_range(0..events.len())];
            self.next_bad += 1;
            let line = self.malformed(ev, date);
            out.push((ev.t, line));
            self.summary.malformed += 1;
        }

        // Late lines due today; on the last day also any left (none are
        // filed later than it, but the queue must end empty).
        let due: Vec<i64> = if d >= self.last_day() {
            self.late.keys().copied().collect()
        } else {
            self.late.range(..=d).map(|(k, _)| *k).collect()
        };
        for k in due {
            for late in self.late.remove(&k).unwrap_or_default() {
                self.count_valid(late.source);
                self.summary.late += 1;
                out.push((late.arrival, late.line));
            }
        }

        out.sort_by_key(|(t, _)| *t);
        self.summary.lines += out.len() as u64;
        out.into_iter().map(|(_, line)| line).collect()
    }

    fn count_valid(&mut self, src: usize) {
        self.summary.events += 1;
        self.summary.by_source[src] += 1;
    }

    fn serialize(&self, ev: &Ev, id: &str, date: &str) -> String {
        let tod = ev.t.rem_euclid(DAY);
        let time = format!(
            "{date}T{:02}:{:02}:{:02}+08:00",
            tod / HOUR,
            tod % HOUR / MINUTE,
            tod % MINUTE
        );
        to_json(&Wire {
            event_id: id,
            event_time: &time,
            source: SOURCES[ev.body.source()],
            district: &self.districts[usize::from(ev.district)].code,
            body: &ev.body,
        })
    }

    /// A broken line made from a valid event, under an id no valid event has.
    fn malformed(&mut self, ev: &Ev, date: &str) -> String {
        let id = format!("bad-{}", self.next_bad);
        let line = self.serialize(ev, &id, date);
        let kind = self.noise.random_range(0..8u8);
        if kind == 0 {
            // Cut off mid-line (a connection dropped), never after the '}'.
            let mut cut = if line.len() > 2 {
                self.noise.random_range(1..line.len() - 1)
            } else {
                0
            };
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            return line[..cut].to_string();
        }
        if kind == 1 {
            return match self.noise.random_range(0..4u8) {
                0 => format!(
                    "{{event_id:\"{id}\",source:\"{}\"}}",
                    SOURCES[ev.body.source()]
                ),
                1 => "<html><head><title>502 Bad Gateway</title></head></html>".to_string(),
                2 => format!("event_id={id}&temperature_c=37.5&district=500101"),
                _ => format!("[\"{id}\",\"{}\",36.6]", SOURCES[ev.body.source()]),
            };
        }
        let Ok(serde_json::Value::Object(mut m)) = serde_json::from_str(&line) else {
            return line[..line.len() / 2].to_string();
        };
        self.corrupt(&mut m, ev, kind);
        m.insert("sim".into(), serde_json::json!("malformed"));
        to_json(&m)
    }

    /// Makes the event `m` invalid the `kind`th way (2 to 7): a wrong type,
    /// an unknown district, a timestamp without offset, a value out of
    /// range or outside its set, a required field missing.
    fn corrupt(&mut self, m: &mut serde_json::Map<String, serde_json::Value>, ev: &Ev, kind: u8) {
        use serde_json::json;
        let src = ev.body.source();
        let capacity = matches!(
            ev.body,
            Body::Bed {
                action: "capacity",
                ..
            }
        );
        match kind {
            2 => {
                // Wrong type.
                let (field, value) = match src {
                    0..=2 => ("temperature_c", json!("high")),
                    3 => ("status", json!(3)),
                    _ if capacity => ("beds_total", json!("many")),
                    _ => ("person_id", json!(500101)),
                };
                m.insert(field.into(), value);
            }
            3 => {
                m.insert("district".into(), json!("999999"));
            }
            4 => {
                // A timestamp without offset, or in a local notation.
                let stamp = m
                    .get("event_time")
                    .and_then(|v| v.as_str())
                    .unwrap_or("2020-01-27T09:15:00+08:00");
                let naive = stamp.get(..19).unwrap_or(stamp).to_string();
                let bad = if self.noise.random_bool(0.5) {
                    naive
                } else {
                    naive.replace('T', " ").replace('-', "/")
                };
                m.insert("event_time".into(), json!(bad));
            }
            5 => {
                // Out of range.
                let (field, value) = match src {
                    0 | 2 => ("temperature_c", json!(45.5)),
                    1 if self.noise.random_bool(0.5) => ("quantity", json!(0)),
                    1 => ("temperature_c", json!(45.5)),
                    4 if capacity => ("beds_total", json!(-5)),
                    // No number to push out of range: an unknown hospital.
                    _ => ("hospital_id", json!("cq-nowhere")),
                };
                m.insert(field.into(), value);
            }
            6 => {
                // A value outside the field's set.
                let (field, value) = match src {
                    0 if self.noise.random_bool(0.5) => ("symptoms", json!(["headache"])),
                    0 => ("disposition", json!("fly")),
                    1 => ("drug_class", json!("herbal")),
                    2 => ("outcome", json!("gone")),
                    3 => ("status", json!("cured")),
                    _ => ("action", json!("transfer")),
                };
                m.insert(field.into(), value);
            }
            _ => {
                // A required field missing.
                let field = if self.noise.random_bool(0.3) {
                    "event_time"
                } else if capacity {
                    "hospital_id"
                } else {
                    "person_id"
                };
                m.remove(field);
            }
        }
    }

    // -----------------------------------------------------------------------
    // Cases and beds.

    /// Draws the persons to be confirmed two days ahead (so that they can be
    /// reported suspected a day or two before), and today's suspected persons
    /// who will be excluded.
    fn plan_cases(&mut self, d: i64) {
        let targets: Vec<i64> = if d == 0 { vec![0, 1, 2] } else { vec![d + 2] };
        for c in targets {
            let lambda = PEAK_CONFIRMATIONS * self.scale() * curve(self.curve_offset + c);
            for _ in 0..poisson(&mut self.rng, lambda) {
                let gap = if chance(&mut self.rng, 0.6) { 1 } else { 2 };
                let from_observation = chance(&mut self.rng, 0.2);
                // Someone in home isolation falls ill: their next follow-up
                // finds the fever, and their episode ends `confirmed`.
                let candidates: Vec<usize> = if from_observation {
                    self.observed
                        .iter()
                        .enumerate()
                        .filter(|(_, o)| {
                            o.confirm_day.is_none()
                                && o.next_t.div_euclid(DAY) <= c
                                && o.next_t.div_euclid(DAY) - o.start_day < OBSERVATION_DAYS
                        })
                        .map(|(i, _)| i)
                        .collect()
                } else {
                    Vec::new()
                };
                if !candidates.is_empty() {
                    let i = candidates[self.rng.random_range(0..candidates.len())];
                    self.observed[i].confirm_day = Some(c);
                    continue;
                }
                let (person_id, district) = self.fresh_patient();
                self.pending.push(Plan {
                    person_id,
                    district,
                    suspect_day: (c - gap).max(d),
                    confirm_day: Some(c),
                });
            }
        }
        let lambda = EXCLUDED_PER_CONFIRMED
            * PEAK_CONFIRMATIONS
            * self.scale()
            * curve(self.curve_offset + d + 1);
        for _ in 0..poisson(&mut self.rng, lambda) {
            // Half of them were referred by a checkpoint or a door visit.
            let (person_id, district) = if chance(&mut self.rng, 0.5) && !self.referred.is_empty() {
                let i = self.rng.random_range(0..self.referred.len());
                self.referred
                    .remove(i)
                    .unwrap_or_else(|| unreachable!("index is in range"))
            } else {
                self.fresh_patient()
            };
            self.pending.push(Plan {
                person_id,
                district,
                suspect_day: d,
                confirm_day: None,
            });
        }
    }

    fn fresh_patient(&mut self) -> (String, u16) {
        let district = self.by_case_risk.sample(&mut self.rng) as u16;
        let h = self.rng.random::<u64>();
        let id = person_id(&self.districts[usize::from(district)].code, h);
        (id, district)
    }

    fn report_suspected(&mut self, d: i64) {
        let (today, later): (Vec<Plan>, Vec<Plan>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.suspect_day <= d);
        self.pending = later;
        for plan in today {
            let t = d * DAY + between(&mut self.rng, 8 * HOUR, 20 * HOUR);
            self.start_patient(plan.person_id, plan.district, t, plan.confirm_day);
        }
    }

    fn case(
        &mut self,
        t: i64,
        district: u16,
        person: &str,
        status: &'static str,
        hospital: Option<usize>,
    ) {
        let hospital_id = hospital.map(|h| self.hospitals[h].id.clone());
        self.schedule(Ev {
            t,
            district,
            body: Body::Case {
                person_id: person.to_string(),
                status,
                hospital_id,
            },
        });
    }

    fn bed(&mut self, t: i64, hospital: usize, person: &str, action: &'static str) {
        self.schedule(Ev {
            t,
            district: self.hospitals[hospital].district,
            body: Body::Bed {
                hospital_id: self.hospitals[hospital].id.clone(),
                action,
                person_id: Some(person.to_string()),
                beds_total: None,
            },
        });
    }

    /// Plans everything the health commission and the hospitals will report
    /// about a person suspected at `t_s`: confirmation, admission, transfer
    /// and outcome, or exclusion.
    fn start_patient(&mut self, person: String, district: u16, t_s: i64, confirm_day: Option<i64>) {
        let info = &self.districts[usize::from(district)];
        let (designated, local) = (info.designated, info.district_hospital);
        let s_day = t_s.div_euclid(DAY);
        let Some(c) = confirm_day else {
            // Suspected, then excluded after 1–3 days of tests.
            let at = if chance(&mut self.rng, 0.6) {
                local.or(designated)
            } else {
                designated.or(local)
            };
            let named = at.filter(|_| chance(&mut self.rng, 0.5));
            self.case(t_s, district, &person, "suspected", named);
            let days = self.rng.random_range(1..=3i64);
            let t_x = (s_day + days) * DAY + between(&mut self.rng, 9 * HOUR, 20 * HOUR);
            self.case(t_x, district, &person, "excluded", named);
            return;
        };

        // A quarter are admitted first at their district hospital and
        // transferred to a designated one after 1–2 days.
        let first = if local.is_some() && chance(&mut self.rng, 0.25) {
            local
        } else {
            designated.or(local)
        };
        let named = first.filter(|_| chance(&mut self.rng, 0.5));
        self.case(t_s, district, &person, "suspected", named);
        let Some(first) = first else {
            // No hospital in the registry: the case events alone.
            let t_c = c.max(s_day) * DAY + between(&mut self.rng, 9 * HOUR, 21 * HOUR);
            self.case(
                t_c.max(t_s + 30 * MINUTE),
                district,
                &person,
                "confirmed",
                None,
            );
            return;
        };
        let t_admit = t_s + between(&mut self.rng, HOUR, 4 * HOUR);
        self.bed(t_admit, first, &person, "admit");
        let mut transfer = None;
        if let Some(to) = designated.filter(|&h| h != first) {
            let t_out = t_admit + between(&mut self.rng, DAY, 2 * DAY);
            let t_in = t_out + between(&mut self.rng, HOUR, 3 * HOUR);
            self.bed(t_out, first, &person, "discharge");
            self.bed(t_in, to, &person, "admit");
            transfer = Some((t_out, to));
        }
        let t_c = if c <= s_day {
            t_admit + between(&mut self.rng, 30 * MINUTE, 5 * HOUR)
        } else {
            c * DAY + between(&mut self.rng, 9 * HOUR, 21 * HOUR)
        };
        let at = |t: i64| match transfer {
            Some((t_out, to)) if t >= t_out => to,
            _ => first,
        };
        self.case(t_c, district, &person, "confirmed", Some(at(t_c)));

        // A handful die; the others recover after 10–20 days. Both leave
        // their bed.
        let c_day = t_c.div_euclid(DAY);
        let (status, days) = if chance(&mut self.rng, 0.02) {
            ("died", self.rng.random_range(5..=15i64))
        } else {
            ("recovered", self.rng.random_range(10..=20i64))
        };
        let t_end = (c_day + days) * DAY + between(&mut self.rng, 9 * HOUR, 17 * HOUR);
        let last = at(t_end);
        self.case(t_end, district, &person, status, Some(last));
        let t_leave = t_end + between(&mut self.rng, 30 * MINUTE, 3 * HOUR);
        self.bed(t_leave, last, &person, "discharge");
    }

    // -----------------------------------------------------------------------
    // Screening.

    fn checkpoints(&mut self, d: i64) {
        if self.checkpoints.is_empty() {
            return;
        }
        let day = self.curve_offset + d;
        let height = curve(day);
        // About 1 in 10,000 suspicious at baseline, 5 in 10,000 at the peak.
        let p_suspicious = 1e-4 * (1.0 + 4.0 * height);
        // Travellers from Wuhan: many before the lockdown (Jan 23), fewer after.
        let p_wuhan = 0.004 + 0.008 * (-(day.max(0) as f64) / 5.0).exp();
        // Masks went from common to universal within a week.
        let p_mask = 0.85 + 0.14 * (day.max(0) as f64 / 7.0).min(1.0);
        let lambda = CHECKS_PER_DAY * self.scale();
        let n = poisson(&mut self.rng, lambda);
        for _ in 0..n {
            let rng = &mut self.rng;
            let (checkpoint_id, district) =
                self.checkpoints[rng.random_range(0..self.checkpoints.len())].clone();
            // Most traffic by day, some through the night.
            let tod = if chance(rng, 0.85) {
                between(rng, 6 * HOUR, 22 * HOUR)
            } else {
                (22 * HOUR + between(rng, 0, 8 * HOUR)) % DAY
            };
            let t = d * DAY + tod;
            let ne = self.districts[usize::from(district)].north_east;
            let factor = if ne {
                NORTH_EAST_WUHAN_FACTOR
            } else {
                ELSEWHERE_WUHAN_FACTOR
            };
            let wuhan = chance(rng, p_wuhan * factor);
            let came_from = if wuhan {
                Some(if chance(rng, 0.5) { "Wuhan" } else { "420100" })
            } else if chance(rng, 0.6) {
                Some(OTHER_ORIGINS[rng.random_range(0..OTHER_ORIGINS.len())])
            } else {
                None
            };
            let region = if wuhan && chance(rng, 0.8) {
                WUHAN_REGIONS[rng.random_range(0..WUHAN_REGIONS.len())].to_string()
            } else if chance(rng, 0.7) {
                self.districts[rng.random_range(0..self.districts.len())]
                    .code
                    .clone()
            } else {
                OTHER_REGIONS[rng.random_range(0..OTHER_REGIONS.len())].to_string()
            };
            let person = person_id(&region, rng.random());
            let vehicle_id = chance(rng, 0.4).then(|| plate(rng, wuhan));
            let mask = chance(rng, p_mask);
            let suspicious = chance(rng, p_suspicious);
            let (temperature_c, symptoms) = if suspicious {
                suspicious_reading(rng)
            } else {
                (normal_temperature(rng), 0)
            };
            let disposition = if suspicious {
                "referred"
            } else if wuhan && chance(rng, 0.85) {
                "isolated"
            } else if chance(rng, if mask { 0.0003 } else { 0.01 }) {
                "turned_back"
            } else {
                "pass"
            };
            if suspicious {
                self.refer(person.clone(), district);
            } else if disposition == "isolated" {
                // Sent home and followed up where they were stopped.
                let kind = if chance(&mut self.rng, 0.95) {
                    "home_isolation"
                } else {
                    "centralized_observation"
                };
                let (grid_id, household_id) = self.random_household(district);
                self.observe(person.clone(), district, grid_id, household_id, kind, t);
            }
            self.schedule(Ev {
                t,
                district,
                body: Body::Checkpoint {
                    checkpoint_id,
                    person_id: person,
                    vehicle_id,
                    temperature_c,
                    mask,
                    symptoms,
                    came_from,
                    disposition,
                },
            });
        }
    }

    fn refer(&mut self, person: String, district: u16) {
        if self.referred.len() >= REFERRED_POOL {
            self.referred.pop_front();
        }
        self.referred.push_back((person, district));
    }

    fn pharmacies(&mut self, d: i64) {
        let height = curve(self.curve_offset + d);
        let lambda = PURCHASES_PER_DAY * self.scale() * (0.9 + 0.2 * height);
        let n = poisson(&mut self.rng, lambda);
        for _ in 0..n {
            let rng = &mut self.rng;
            let district = self.by_population.sample(rng) as u16;
            let info = &self.districts[usize::from(district)];
            let pharmacy_id = format!(
                "ph-{}-{:04}",
                info.code,
                1 + rng.random_range(0..info.pharmacies)
            );
            let region = if chance(rng, 0.85) {
                info.code.clone()
            } else {
                OTHER_REGIONS[rng.random_range(0..OTHER_REGIONS.len())].to_string()
            };
            let person = person_id(&region, rng.random());
            let drug_class = match rng.random_range(0..100) {
                0..=34 => "antipyretic",
                35..=64 => "cough",
                65..=74 => "antiviral",
                75..=89 => "antibiotic",
                _ => "other",
            };
            let quantity = match rng.random_range(0..10) {
                0..=6 => 1,
                7 | 8 => 2,
                _ => rng.random_range(3..=5),
            };
            // Measured 40% of the time; buyers of fever drugs run warm more often.
            let temperature_c = chance(rng, 0.4).then(|| {
                if drug_class == "antipyretic" && chance(rng, 0.1) {
                    fever_temperature(rng)
                } else {
                    normal_temperature(rng)
                }
            });
            let t = d * DAY + between(rng, 8 * HOUR, 21 * HOUR + 30 * MINUTE);
            self.schedule(Ev {
                t,
                district,
                body: Body::Pharmacy {
                    pharmacy_id,
                    person_id: person,
                    drug_class,
                    quantity,
                    temperature_c,
                },
            });
        }
    }

    fn grid_and_household(&self, district: u16, grid: u64, household: u64) -> (String, String) {
        let code = &self.districts[usize::from(district)].code;
        (
            format!("g-{code}-{grid:04}"),
            format!("hh-{code}-{grid:04}-{household:03}"),
        )
    }

    fn random_household(&mut self, district: u16) -> (String, String) {
        let grids = self.districts[usize::from(district)].grids;
        let grid = 1 + self.rng.random_range(0..grids);
        let household = 1 + self.rng.random_range(0..HOUSEHOLDS_PER_GRID);
        self.grid_and_household(district, grid, household)
    }

    /// Starts an observation episode at `t` with follow-ups from then on.
    fn observe(
        &mut self,
        person_id: String,
        district: u16,
        grid_id: String,
        household_id: String,
        kind: &'static str,
        t: i64,
    ) {
        let tod = t.rem_euclid(DAY);
        let midnight = t - tod;
        // Visits are due every 24 hours: the first one comes within a day
        // (the same morning for someone stopped overnight at a checkpoint).
        let next_t = if tod < 7 * HOUR {
            midnight + between(&mut self.rng, 8 * HOUR, 10 * HOUR)
        } else {
            let slot = midnight + DAY + between(&mut self.rng, 8 * HOUR, 17 * HOUR);
            slot.min(t + DAY - between(&mut self.rng, 0, 10 * MINUTE))
        };
        self.observed.push(Observed {
            person_id,
            district,
            grid_id,
            household_id,
            kind,
            start_day: t.div_euclid(DAY),
            next_t,
            confirm_day: None,
        });
    }

    fn door_screening(&mut self, d: i64) {
        let height = curve(self.curve_offset + d);
        // Round 2 found ~1.1 suspicious persons per 1,000 checked.
        let p_suspicious = 6e-4 + 1e-3 * height;
        let lambda = SCREENINGS_PER_DAY * self.scale();
        let n = poisson(&mut self.rng, lambda);
        for _ in 0..n {
            let rng = &mut self.rng;
            let district = self.by_population.sample(rng) as u16;
            let info = &self.districts[usize::from(district)];
            let grid = 1 + rng.random_range(0..info.grids);
            let household = 1 + rng.random_range(0..HOUSEHOLDS_PER_GRID);
            let member = rng.random_range(0..MEMBERS_PER_HOUSEHOLD);
            // The same member of the same household has the same ID in
            // every visit of the scenario.
            let key = (u64::from(district) << 48) | (grid << 24) | (household << 4) | member;
            let person = person_id(&info.code, mix(self.cfg.seed ^ mix(key)));
            let t = d * DAY + between(rng, 8 * HOUR + 30 * MINUTE, 18 * HOUR);
            let outcome = match rng.random_range(0..100) {
                0..=89 => "seen",
                90..=97 => "not_home",
                _ => "refused",
            };
            let mut temperature_c = None;
            let mut symptoms = 0;
            let mut observation = "none";
            if outcome == "seen" {
                let suspicious = chance(rng, p_suspicious);
                let (temp, s) = if suspicious {
                    suspicious_reading(rng)
                } else {
                    (normal_temperature(rng), 0)
                };
                temperature_c = Some(temp);
                symptoms = s;
                observation = if suspicious {
                    match rng.random_range(0..10) {
                        0..=4 => "home_isolation",
                        5..=7 => "medical_observation",
                        _ => "none",
                    }
                } else if chance(rng, 0.002) {
                    match rng.random_range(0..50) {
                        0..=45 => "home_isolation",
                        46..=48 => "centralized_observation",
                        _ => "medical_observation",
                    }
                } else {
                    "none"
                };
                if suspicious {
                    self.refer(person.clone(), district);
                }
            }
            let (grid_id, household_id) = self.grid_and_household(district, grid, household);
            if observation != "none" {
                self.observe(
                    person.clone(),
                    district,
                    grid_id.clone(),
                    household_id.clone(),
                    observation,
                    t,
                );
            }
            self.schedule(Ev {
                t,
                district,
                body: Body::DoorVisit {
                    grid_id,
                    household_id,
                    person_id: person,
                    visit_kind: "screening",
                    outcome,
                    temperature_c,
                    symptoms,
                    observation,
                },
            });
        }
    }

    /// The day's visits to everyone under observation.
    fn follow_ups(&mut self, d: i64) {
        let observed = std::mem::take(&mut self.observed);
        let mut kept = Vec::with_capacity(observed.len());
        for mut o in observed {
            if o.next_t.div_euclid(DAY) != d {
                kept.push(o);
                continue;
            }
            let t = o.next_t;
            let visit = |outcome, temperature_c, symptoms, observation| Ev {
                t,
                district: o.district,
                body: Body::DoorVisit {
                    grid_id: o.grid_id.clone(),
                    household_id: o.household_id.clone(),
                    person_id: o.person_id.clone(),
                    visit_kind: "follow_up",
                    outcome,
                    temperature_c,
                    symptoms,
                    observation,
                },
            };
            if let Some(c) = o.confirm_day {
                // Fever found: referred, and the case pipeline takes over.
                let temp = fever_temperature(&mut self.rng);
                let symptoms = FEVER | if chance(&mut self.rng, 0.5) { COUGH } else { 0 };
                self.schedule(visit("seen", Some(temp), symptoms, "medical_observation"));
                let t_s = t + between(&mut self.rng, HOUR, 3 * HOUR);
                self.start_patient(o.person_id, o.district, t_s, Some(c));
                continue;
            }
            if d - o.start_day >= OBSERVATION_DAYS {
                let temp = normal_temperature(&mut self.rng);
                self.schedule(visit("seen", Some(temp), 0, "released"));
                continue;
            }
            if chance(&mut self.rng, 0.03) {
                // Missed today: the follow-up goes overdue.
                o.next_t = t + DAY;
                kept.push(o);
                continue;
            }
            let ev = match self.rng.random_range(0..100) {
                0..=94 => {
                    let temp = normal_temperature(&mut self.rng);
                    let cough = if chance(&mut self.rng, 0.003) {
                        COUGH
                    } else {
                        0
                    };
                    visit("seen", Some(temp), cough, o.kind)
                }
                95..=98 => visit("not_home", None, 0, o.kind),
                _ => visit("refused", None, 0, o.kind),
            };
            self.schedule(ev);
            // A little earlier each day, so that visits stay within 24 hours
            // of each other.
            o.next_t = t + DAY - between(&mut self.rng, 0, 10 * MINUTE);
            kept.push(o);
        }
        self.observed = kept;
    }
}

/// Writes the whole scenario, one event per line ('\n' after each), returns
/// the summary.
pub fn write_scenario(
    cfg: SimConfig,
    registry: &Registry,
    out: &mut impl Write,
) -> anyhow::Result<SimSummary> {
    let mut sim = Simulator::new(cfg, registry);
    let mut w = std::io::BufWriter::with_capacity(1 << 16, out);
    while let Some(lines) = sim.next_day() {
        for line in lines {
            w.write_all(line.as_bytes())?;
            w.write_all(b"\n")?;
        }
    }
    w.flush()?;
    Ok(sim.summary().clone())
}

#[cfg(test)]
mod tests {
    use std::collections::hash_map::DefaultHasher;
    use std::collections::{BTreeMap, BTreeSet, HashMap};
    use std::hash::{Hash, Hasher};
    use std::sync::Arc;
    use std::time::Instant;

    use serde_json::Value;

    use super::*;
    use paicha_contract::event::{Decoder, RejectReason};
    use paicha_contract::pseudonym::Pseudonymizer;

    /// A wall clock far after 2020, so that no event is "in the future".
    const NOW: i64 = 1_800_000_000_000_000;

    fn registry() -> Registry {
        Registry::builtin().unwrap()
    }

    fn small() -> SimConfig {
        SimConfig {
            scale: 0.05,
            days: 10,
            ..SimConfig::default()
        }
    }

    fn noisy(scale: f64) -> SimConfig {
        SimConfig {
            scale,
            duplicate_rate: 0.02,
            late_rate: 0.02,
            malformed_rate: 0.01,
            ..SimConfig::default()
        }
    }

    fn bytes(cfg: SimConfig) -> (Vec<u8>, SimSummary) {
        let mut out = Vec::new();
        let summary = write_scenario(cfg, &registry(), &mut out).unwrap();
        (out, summary)
    }

    /// The lines of each day, as `next_day` returns them.
    fn days(cfg: SimConfig) -> (Vec<Vec<String>>, SimSummary) {
        let mut sim = Simulator::new(cfg, &registry());
        let mut all = Vec::new();
        while let Some(lines) = sim.next_day() {
            all.push(lines);
        }
        assert!(sim.next_day().is_none());
        (all, sim.summary().clone())
    }

    fn sim_flag(v: &Value) -> Option<&str> {
        v.get("sim").and_then(Value::as_str)
    }

    fn text<'a>(v: &'a Value, field: &str) -> &'a str {
        v[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} in {v}"))
    }

    const REQUIRED: [&[&str]; 5] = [
        &[
            "checkpoint_id",
            "person_id",
            "temperature_c",
            "mask",
            "symptoms",
            "disposition",
        ],
        &[
            "pharmacy_id",
            "person_id",
            "drug_class",
            "quantity",
            "temperature_c",
        ],
        &[
            "grid_id",
            "household_id",
            "person_id",
            "visit_kind",
            "outcome",
            "temperature_c",
            "symptoms",
            "observation",
        ],
        &["person_id", "status"],
        &["hospital_id", "action"],
    ];

    /// Everything a scenario's lines say, checked line by line against the
    /// contract (the real decoder) and the anomaly rules. Only the rare
    /// events are kept, so that auditing the default scenario stays small.
    #[derive(Default)]
    struct Audit {
        /// Case and bed events and follow-up visits: distinct, without `sim`.
        rare: Vec<Value>,
        /// Every distinct valid line without `sim`, if asked for.
        plain: Vec<String>,
        by_source: [u64; 5],
        duplicates: u64,
        late: u64,
        rejected: u64,
        reasons: BTreeSet<RejectReason>,
        lines: u64,
        checks: u64,
        suspicious_checks: u64,
        isolated_checks: u64,
        with_vehicle: u64,
        stations: BTreeSet<String>,
    }

    fn digest(line: &str) -> u64 {
        let mut h = DefaultHasher::new();
        line.hash(&mut h);
        h.finish()
    }

    /// Every line of a scenario, one day in memory at a time.
    fn stream(sim: &mut Simulator) -> impl Iterator<Item = String> + '_ {
        std::iter::from_fn(move || sim.next_day()).flatten()
    }

    /// Counts the bytes written, keeps none.
    struct ByteCount(u64);

    impl Write for ByteCount {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn audit<S: AsRef<str>>(lines: impl IntoIterator<Item = S>, keep_plain: bool) -> Audit {
        let decoder = Decoder::new(Arc::new(registry()), Pseudonymizer::new(b"test"));
        let mut a = Audit::default();
        // event_id -> digest of the line as first emitted (without `sim`).
        let mut seen: HashMap<String, u64> = HashMap::new();
        let mut bad_ids = BTreeSet::new();
        for line in lines {
            let line = line.as_ref();
            a.lines += 1;
            let value: Option<Value> = serde_json::from_str(line).ok();
            let decoded = decoder.decode(line.as_bytes(), None, NOW);
            let Ok(event) = decoded else {
                a.rejected += 1;
                a.reasons.insert(decoded.unwrap_err().reason);
                if let Some(v @ Value::Object(_)) = &value {
                    assert_eq!(sim_flag(v), Some("malformed"), "{line}");
                    if let Some(id) = v.get("event_id").and_then(Value::as_str) {
                        bad_ids.insert(id.to_string());
                    }
                }
                continue;
            };
            let v = value.unwrap();
            let source = event.source() as usize;
            assert_eq!(text(&v, "source"), SOURCES[source]);
            for field in REQUIRED[source] {
                assert!(v.get(*field).is_some(), "{field} missing in {line}");
            }
            let time = text(&v, "event_time");
            assert_eq!(time.len(), 25, "{time}");
            assert!(time.ends_with("+08:00"), "{time}");
            let plain = match sim_flag(&v) {
                Some(_) => line[..line.rfind(",\"sim\"").unwrap()].to_string() + "}",
                None => line.to_string(),
            };
            match sim_flag(&v) {
                Some("duplicate") => {
                    // The same bytes as the original, plus the flag last.
                    assert!(line.ends_with(",\"sim\":\"duplicate\"}"), "{line}");
                    let first = seen.get(&event.event_id);
                    assert_eq!(first, Some(&digest(&plain)), "{line}");
                    a.duplicates += 1;
                    continue;
                }
                Some("late") => a.late += 1,
                None => {}
                Some(other) => panic!("valid line flagged {other}: {line}"),
            }
            let first = seen.insert(event.event_id.clone(), digest(&plain));
            assert!(first.is_none(), "repeated id: {line}");
            a.by_source[source] += 1;

            match source {
                0 => {
                    a.checks += 1;
                    let temperature = v["temperature_c"].as_f64().unwrap();
                    let symptoms = v["symptoms"].as_array().unwrap();
                    if temperature >= 37.3 || !symptoms.is_empty() {
                        a.suspicious_checks += 1;
                    }
                    if v["disposition"] == "isolated" {
                        a.isolated_checks += 1;
                    }
                    if v.get("vehicle_id").is_some() {
                        a.with_vehicle += 1;
                    }
                    a.stations.insert(text(&v, "checkpoint_id").to_string());
                }
                2 => {
                    if v["outcome"] != "seen" {
                        assert!(v["temperature_c"].is_null(), "{line}");
                        assert_eq!(v["symptoms"], serde_json::json!([]), "{line}");
                    }
                    if v["visit_kind"] == "follow_up" {
                        a.rare.push(serde_json::from_str(&plain).unwrap());
                    }
                }
                3 | 4 => a.rare.push(serde_json::from_str(&plain).unwrap()),
                _ => {}
            }
            if keep_plain {
                a.plain.push(plain);
            }
        }
        for id in &bad_ids {
            assert!(!seen.contains_key(id), "malformed line shares id {id}");
        }
        a
    }

    fn check_summary(a: &Audit, s: &SimSummary) {
        assert_eq!(a.lines, s.lines);
        assert_eq!(a.by_source.iter().sum::<u64>(), s.events);
        assert_eq!(a.by_source, s.by_source);
        assert_eq!(a.duplicates, s.duplicates);
        assert_eq!(a.late, s.late);
        assert_eq!(a.rejected, s.malformed);
    }

    /// New confirmations per date (first `confirmed` per person).
    fn confirmations(events: &[Value]) -> BTreeMap<String, u64> {
        let mut cases: Vec<&Value> = events
            .iter()
            .filter(|v| v["source"] == "case" && v["status"] == "confirmed")
            .collect();
        cases.sort_by_key(|v| text(v, "event_time").to_string());
        let mut persons = BTreeSet::new();
        let mut per_day = BTreeMap::new();
        for v in cases {
            if persons.insert(text(v, "person_id")) {
                *per_day
                    .entry(text(v, "event_time")[..10].to_string())
                    .or_insert(0) += 1;
            }
        }
        per_day
    }

    #[test]
    fn simulate_same_seed_same_bytes_other_seed_other_bytes() {
        let (a, sa) = bytes(small());
        let (b, sb) = bytes(small());
        assert!(!a.is_empty());
        assert_eq!(a, b);
        assert_eq!(sa, sb);
        let (c, _) = bytes(SimConfig { seed: 7, ..small() });
        assert_ne!(a, c);
        // Stepping through the days gives the same lines and summary.
        let (d, sd) = days(small());
        let mut joined = Vec::new();
        for line in d.iter().flatten() {
            joined.extend_from_slice(line.as_bytes());
            joined.push(b'\n');
        }
        assert_eq!(a, joined);
        assert_eq!(sa, sd);
    }

    #[test]
    fn simulate_default_scenario_is_valid_and_calibrated() {
        let started = Instant::now();
        let mut out = ByteCount(0);
        let summary = write_scenario(SimConfig::default(), &registry(), &mut out).unwrap();
        let took = started.elapsed();
        let mut sim = Simulator::new(SimConfig::default(), &registry());
        let a = audit(stream(&mut sim), false);
        assert_eq!(sim.summary(), &summary);
        check_summary(&a, &summary);

        let per_day = confirmations(&a.rare);
        let total: u64 = per_day.values().sum();
        let peak = per_day.values().copied().max().unwrap_or(0);
        assert!((200..=800).contains(&total), "{per_day:?}");
        assert!(peak >= 15, "{per_day:?}");

        let rate = a.suspicious_checks as f64 / a.checks as f64;
        assert!((1e-5..1e-3).contains(&rate), "suspicious rate {rate}");
        let isolated = a.isolated_checks as f64 / a.checks as f64;
        assert!((0.003..0.008).contains(&isolated), "isolated {isolated}");
        let vehicles = a.with_vehicle as f64 / a.checks as f64;
        assert!((0.35..0.45).contains(&vehicles), "vehicles {vehicles}");
        assert_eq!(a.stations.len(), 182);

        // Volumes per day at scale 1 (door visits include the follow-ups).
        let per_day_of = |i: usize| summary.by_source[i] as f64 / 22.0;
        assert!((9_000.0..11_000.0).contains(&per_day_of(0)));
        assert!((2_700.0..3_300.0).contains(&per_day_of(1)));
        assert!((19_000.0..24_000.0).contains(&per_day_of(2)));

        // One capacity event per hospital at the start of day 1, and one or
        // two rises later.
        let capacity: Vec<&Value> = a
            .rare
            .iter()
            .filter(|v| v["source"] == "bed" && v["action"] == "capacity")
            .collect();
        let at_start = capacity
            .iter()
            .filter(|v| v["event_time"] == "2020-01-20T00:00:00+08:00")
            .count();
        assert_eq!(at_start, registry().hospitals().len());
        assert!((1..=2).contains(&(capacity.len() - at_start)));

        // Beds are consistent: nobody admitted twice, nobody discharged from
        // a hospital they are not in.
        let mut beds: Vec<&Value> = a
            .rare
            .iter()
            .filter(|v| v["source"] == "bed" && v["action"] != "capacity")
            .collect();
        beds.sort_by_key(|v| text(v, "event_time").to_string());
        let mut occupied = BTreeSet::new();
        for v in &beds {
            let key = (text(v, "hospital_id"), text(v, "person_id"));
            if v["action"] == "admit" {
                assert!(occupied.insert(key), "admitted twice: {v}");
            } else {
                assert!(occupied.remove(&key), "discharged but not in: {v}");
            }
        }

        // Follow-ups: daily visits, releases, and some episodes ended by
        // the confirmation of a person under observation.
        let follow_ups: Vec<&Value> = a
            .rare
            .iter()
            .filter(|v| v["source"] == "door_visit")
            .collect();
        let released = follow_ups
            .iter()
            .filter(|v| v["observation"] == "released")
            .count();
        let followed: BTreeSet<&str> = follow_ups.iter().map(|v| text(v, "person_id")).collect();
        let confirmed_followed = a
            .rare
            .iter()
            .filter(|v| v["source"] == "case" && v["status"] == "confirmed")
            .filter(|v| followed.contains(text(v, "person_id")))
            .count();
        assert!(follow_ups.len() > 10_000, "{}", follow_ups.len());
        assert!(released > 500, "{released}");
        assert!(confirmed_followed > 10, "{confirmed_followed}");

        let count = |status: &str| {
            a.rare
                .iter()
                .filter(|v| v["source"] == "case" && v["status"] == status)
                .count()
        };
        assert!(
            count("excluded") > total as usize,
            "about 2 excluded per confirmed"
        );
        assert!((1..=30).contains(&count("died")));
        eprintln!(
            "default scenario: {summary:?}\n  write_scenario took {took:?}, {} bytes\n  \
             new confirmations {total} (peak {peak}) {per_day:?}\n  suspected {} excluded {} \
             recovered {} died {}\n  checkpoint suspicious {} ({rate:.2e}), isolated {}, with \
             vehicle {}\n  follow-ups {}, released {released}, confirmed after follow-up \
             {confirmed_followed}",
            out.0,
            count("suspected"),
            count("excluded"),
            count("recovered"),
            count("died"),
            a.suspicious_checks,
            a.isolated_checks,
            a.with_vehicle,
            follow_ups.len(),
        );
    }

    #[test]
    fn simulate_clean_has_no_anomalies() {
        let mut sim = Simulator::new(SimConfig::default().clean(), &registry());
        assert!(stream(&mut sim).all(|line| !line.contains("\"sim\":")));
        let s = sim.summary();
        assert_eq!((s.duplicates, s.late, s.malformed), (0, 0, 0));
        assert_eq!(s.lines, s.events);
    }

    #[test]
    fn simulate_anomalies_are_flagged_and_leave_the_events_alone() {
        let cfg = noisy(0.2);
        let (days, summary) = days(cfg.clone());
        let a = audit(days.iter().flatten().map(String::as_str), true);
        check_summary(&a, &summary);
        assert!(summary.duplicates > 100 && summary.late > 100 && summary.malformed > 50);
        // Broken in many ways.
        assert!(a.reasons.len() >= 7, "{:?}", a.reasons);

        // Late lines come on a later day, 2 hours to 3 days after their
        // event time (or with the last day).
        let start = cfg.start;
        for (d, lines) in days.iter().enumerate() {
            for line in lines.iter().filter(|l| l.contains("\"sim\":\"late\"")) {
                let v: Value = serde_json::from_str(line).unwrap();
                let date = NaiveDate::parse_from_str(&text(&v, "event_time")[..10], "%Y-%m-%d");
                let event_day = (date.unwrap() - start).num_days() as usize;
                assert!(event_day < d || d == days.len() - 1, "{line}");
                assert!(d - event_day <= 3, "{line}");
            }
        }

        // The valid events are exactly those of the clean twin, in the same
        // bytes.
        let (clean, _) = bytes(cfg.clean());
        let mut clean: Vec<&str> = std::str::from_utf8(&clean).unwrap().lines().collect();
        let mut valid: Vec<&str> = a.plain.iter().map(String::as_str).collect();
        clean.sort_unstable();
        valid.sort_unstable();
        assert_eq!(valid, clean);
    }

    #[test]
    fn simulate_edge_configurations() {
        let (out, s) = bytes(SimConfig {
            days: 0,
            ..SimConfig::default()
        });
        assert!(out.is_empty());
        assert_eq!(s, SimSummary::default());

        // A single day: late copies are emitted with it.
        let (days, s) = days(SimConfig {
            days: 1,
            late_rate: 0.5,
            ..small()
        });
        assert_eq!(days.len(), 1);
        let a = audit(days[0].iter().map(String::as_str), false);
        check_summary(&a, &s);
        assert!(s.late > 0);

        // Scale 0: only the hospitals' capacities.
        let (_, s) = bytes(SimConfig {
            scale: 0.0,
            ..SimConfig::default()
        });
        assert_eq!(s.events, s.by_source[4]);
        assert!(s.events >= registry().hospitals().len() as u64);
    }

    #[test]
    fn simulate_person_ids_look_like_national_ids() {
        let id = person_id("500103", 12345);
        assert_eq!(id.len(), 20);
        assert!(id.starts_with("p-500103"));
        assert!(id[2..19].bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(check_char(&id[2..19]), id.chars().last().unwrap());
        // Published examples: 11010519491231002X, 440524188001010014.
        assert_eq!(check_char("11010519491231002"), 'X');
        assert_eq!(check_char("44052418800101001"), '4');
    }
}
