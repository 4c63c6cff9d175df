//! Follow-up state for many persons under observation: memory per person
//! and the cost of advancing the clock.
//!
//! ```text
//! cargo run --release -p paicha-processors --example follow_up_state -- [PERSONS]
//! ```
//!
//! Opens PERSONS episodes (default 1,000,000) spread over one day, then
//! simulates 14 days hour by hour: each hour, everyone due that hour is
//! visited (`seen`) except every 30th person, who is missed once; the clock
//! advances one hour. Prints the resident memory the state adds per person,
//! the event rate, and the time per hourly clock advance.

use std::time::Instant;

use paicha_contract::event::{Body, Event, Observation, Outcome, Symptoms, VisitKind};
use paicha_contract::registry::Registry;
use paicha_processors::alerts::AlertBook;
use paicha_processors::follow_ups::{FollowUps, Status};
use paicha_processors::time::HOUR_MICROS;

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn visit(person: u64, t: i64, observation: Observation) -> Event {
    Event {
        event_id: String::new(),
        event_time: t,
        district: (person % 38) as u16,
        body: Body::DoorVisit {
            grid_id: String::new(),
            household_key: String::new(),
            person_key: format!("{:032x}", person.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            visit_kind: VisitKind::FollowUp,
            outcome: Outcome::Seen,
            temperature_c: Some(36.6),
            symptoms: Symptoms(0),
            observation,
        },
    }
}

fn main() -> anyhow::Result<()> {
    let persons: u64 = std::env::args()
        .nth(1)
        .map_or(Ok(1_000_000), |a| a.parse())?;
    let registry = Registry::builtin()?;
    let mut f = FollowUps::new();
    let mut alerts = AlertBook::default();
    let t0 = 1_580_000_000_000_000i64;
    f.advance(t0, &registry, &mut alerts);
    let before = rss_bytes();
    let started = Instant::now();
    // Person i opens at t0 + i * 24h / persons: everyone within one day.
    let open_at = |i: u64| t0 + (i as i64) * 24 * HOUR_MICROS / persons as i64;
    for i in 0..persons {
        f.add(
            &visit(i, open_at(i), Observation::HomeIsolation),
            &registry,
            &mut alerts,
        );
    }
    f.advance(t0 + 24 * HOUR_MICROS, &registry, &mut alerts);
    let opened = started.elapsed();
    let per_person = (rss_bytes().saturating_sub(before)) as f64 / persons as f64;

    let mut events = 0u64;
    let mut advance_total = std::time::Duration::ZERO;
    let mut advance_max = std::time::Duration::ZERO;
    let hours = 14 * 24;
    let sim = Instant::now();
    for h in 1..hours {
        let from = t0 + h * HOUR_MICROS;
        let to = from + HOUR_MICROS;
        // Everyone whose opening time-of-day falls in this hour is visited
        // today, but every 30th person skips every third day.
        let lo = ((h % 24) as u64) * persons / 24;
        let hi = ((h % 24 + 1) as u64) * persons / 24;
        let day = h / 24;
        for i in lo..hi {
            if i % 30 == 0 && day % 3 == 1 {
                continue;
            }
            let t = open_at(i) + day * 24 * HOUR_MICROS;
            if t >= from && t < to {
                f.add(
                    &visit(i, t, Observation::HomeIsolation),
                    &registry,
                    &mut alerts,
                );
                events += 1;
            }
        }
        let a = Instant::now();
        f.advance(to, &registry, &mut alerts);
        let took = a.elapsed();
        advance_total += took;
        advance_max = advance_max.max(took);
    }
    let simulated = sim.elapsed();
    let overdue: i64 = f
        .by_status()
        .iter()
        .filter(|((_, s), _)| *s == Status::Overdue)
        .map(|(_, n)| *n)
        .sum();
    println!(
        "{persons} persons: {per_person:.0} bytes/person resident after opening \
         ({:.2} s to open); {events} visits over 14 days in {:.2} s ({:.0} events/s incl. advancing); \
         clock advance per simulated hour: mean {:?}, max {:?}; {} alerts; {overdue} overdue at the end; \
         peak RSS {} MiB",
        opened.as_secs_f64(),
        simulated.as_secs_f64(),
        events as f64 / simulated.as_secs_f64(),
        advance_total / (hours as u32 - 1),
        advance_max,
        alerts.alerts().len(),
        rss_bytes() >> 20
    );
    Ok(())
}
