//! Event-time arithmetic: tumbling windows aligned to the epoch (so hourly
//! windows start on the hour in every whole-hour time zone) and calendar days
//! in the reporting time zone.
//!
//! An event's time is bounded at ingest (contract 1.1), but the bound is
//! configurable and state outlives configurations: nothing here may
//! overflow or panic for any `i64`, hence the lint.
#![deny(clippy::arithmetic_side_effects)]

use chrono::{DateTime, Days, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

/// Microseconds in one hour.
pub const HOUR_MICROS: i64 = 3_600_000_000;
/// Microseconds in one day.
pub const DAY_MICROS: i64 = 24 * HOUR_MICROS;

/// Tumbling windows of a fixed size, aligned to multiples of the size since
/// the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    size: i64,
}

impl Windows {
    /// Windows of `size_micros` (must be positive).
    pub fn new(size_micros: i64) -> Self {
        Windows {
            size: size_micros.max(1),
        }
    }

    /// The window size in microseconds.
    pub fn size(self) -> i64 {
        self.size
    }

    /// Start of the window holding `t`: windows are `[start, start + size)`,
    /// so an event exactly on a boundary opens the next window.
    pub fn start(self, t: i64) -> i64 {
        t.div_euclid(self.size)
            .checked_mul(self.size)
            .unwrap_or(i64::MIN)
    }

    /// End (exclusive) of the window starting at `start`.
    pub fn end(self, start: i64) -> i64 {
        start.saturating_add(self.size)
    }
}

/// The calendar of the reporting time zone (default `Asia/Shanghai`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calendar {
    tz: Tz,
}

impl Calendar {
    /// A calendar in the named IANA time zone.
    pub fn new(tz_name: &str) -> Result<Self, String> {
        tz_name
            .parse::<Tz>()
            .map(|tz| Calendar { tz })
            .map_err(|_| format!("unknown time zone `{tz_name}`"))
    }

    /// The calendar day holding instant `t` (microseconds, UTC).
    pub fn day(self, t: i64) -> NaiveDate {
        let utc = DateTime::<Utc>::from_timestamp_micros(t).unwrap_or_default();
        self.tz.from_utc_datetime(&utc.naive_utc()).date_naive()
    }

    /// The calendar day holding `t` and its bounds `[start, end)` in µs.
    pub fn day_bounds(self, t: i64) -> (i64, i64, NaiveDate) {
        let day = self.day(t);
        let start_of = |d: NaiveDate| {
            // A zone whose clocks skip midnight has no 00:00 that day; the
            // bound then falls back to `t` itself, which is only a smaller
            // cache range.
            d.and_hms_opt(0, 0, 0)
                .and_then(|m| self.tz.from_local_datetime(&m).earliest())
                .map(|x| x.timestamp_micros())
        };
        let start = start_of(day).filter(|s| *s <= t).unwrap_or(t);
        let end = day
            .succ_opt()
            .and_then(start_of)
            .filter(|e| *e > t)
            .unwrap_or(t.saturating_add(1));
        (start, end, day)
    }

    /// The instant `day` ends: the next local midnight, in µs (or, where
    /// clocks skip midnight, the first instant of the next day).
    pub fn day_end(self, day: NaiveDate) -> i64 {
        let next = day.succ_opt().unwrap_or(day);
        let midnight = next.and_hms_opt(0, 0, 0).unwrap_or_default();
        self.tz
            .from_local_datetime(&midnight)
            .earliest()
            .or_else(|| {
                self.tz
                    .from_local_datetime(&midnight.checked_add_signed(chrono::Duration::hours(1))?)
                    .earliest()
            })
            .map_or(i64::MAX, |x| x.timestamp_micros())
    }

    /// The time zone's name.
    pub fn name(self) -> &'static str {
        self.tz.name()
    }
}

impl Default for Calendar {
    fn default() -> Self {
        Calendar {
            tz: chrono_tz::Asia::Shanghai,
        }
    }
}

/// Days since 1970-01-01, as Arrow's `Date32` counts them.
pub fn date32(day: NaiveDate) -> i32 {
    let days = day.signed_duration_since(NaiveDate::default()).num_days();
    // Every NaiveDate is within ±262,143 years: always in range.
    i32::try_from(days).unwrap_or(if days < 0 { i32::MIN } else { i32::MAX })
}

/// The calendar day (`Date32`) of instants, cached for the day last asked
/// about: a time-zone conversion per event is measurable, and events
/// cluster.
#[derive(Debug, Clone, Copy)]
pub struct DayCache {
    calendar: Calendar,
    /// The last day looked up: [start, end) in µs and its `Date32`.
    last: (i64, i64, i32),
}

impl DayCache {
    pub fn new(calendar: Calendar) -> Self {
        DayCache {
            calendar,
            last: (0, 0, 0),
        }
    }

    /// The calendar day of `t`.
    pub fn day(&mut self, t: i64) -> i32 {
        let (start, end, day) = self.last;
        if t >= start && t < end {
            return day;
        }
        let (lo, hi, date) = self.calendar.day_bounds(t);
        let d = date32(date);
        self.last = (lo, hi, d);
        d
    }
}

/// The first calendar day not yet closed at `clock`: the day holding it.
pub fn closed_before(calendar: Calendar, clock: i64) -> i32 {
    if clock == i64::MIN {
        return i32::MIN;
    }
    date32(calendar.day(clock))
}

/// The date `days` after 1970-01-01 (before it when negative), the inverse
/// of [`date32`]; days past chrono's range (±262,143 years) give its ends.
pub fn from_date32(days: i32) -> NaiveDate {
    let epoch = NaiveDate::default();
    let moved = if days < 0 {
        epoch.checked_sub_days(Days::new(u64::from(days.unsigned_abs())))
    } else {
        epoch.checked_add_days(Days::new(u64::from(days.unsigned_abs())))
    };
    moved.unwrap_or(if days < 0 {
        NaiveDate::MIN
    } else {
        NaiveDate::MAX
    })
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_windows_hold_at_every_extreme() {
        for d in [i32::MIN, -719_163, -1, 0, 1, 18_000, i32::MAX] {
            let day = from_date32(d);
            if (-90_000_000..90_000_000).contains(&d) {
                assert_eq!(date32(day), d);
            }
        }
        assert_eq!(
            from_date32(-1),
            NaiveDate::from_ymd_opt(1969, 12, 31).unwrap()
        );
        let w = Windows::new(HOUR_MICROS);
        let c = Calendar::default();
        for t in [i64::MIN, i64::MIN + 1, -1, 0, i64::MAX - 1, i64::MAX] {
            assert!(w.start(t) <= t.max(i64::MIN + HOUR_MICROS) || w.start(t) == i64::MIN);
            let _ = (w.end(w.start(t)), c.day(t), c.day_bounds(t));
            let _ = c.day_end(c.day(t));
        }
        // The last day chrono knows has no next day: its end is the end
        // of time, not a panic.
        assert!(c.day_end(NaiveDate::MAX) > c.day_end(NaiveDate::MIN));
    }

    fn micros(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_micros()
    }

    #[test]
    fn hourly_windows_start_on_the_hour() {
        let w = Windows::new(HOUR_MICROS);
        let t = micros("2020-01-27T09:15:00+08:00");
        assert_eq!(w.start(t), micros("2020-01-27T01:00:00Z"));
        assert_eq!(w.end(w.start(t)), micros("2020-01-27T02:00:00Z"));
    }

    #[test]
    fn an_event_on_a_boundary_belongs_to_the_window_it_opens() {
        let w = Windows::new(HOUR_MICROS);
        let t = micros("2020-01-27T10:00:00+08:00");
        assert_eq!(w.start(t), t);
        assert_eq!(w.start(t - 1), t - HOUR_MICROS);
    }

    #[test]
    fn windows_before_the_epoch_floor_downwards() {
        let w = Windows::new(HOUR_MICROS);
        assert_eq!(w.start(-1), -HOUR_MICROS);
    }

    #[test]
    fn days_are_in_the_reporting_time_zone() {
        let c = Calendar::default();
        // 16:00 UTC on the 26th is midnight of the 27th in Shanghai.
        let t = micros("2020-01-26T16:00:00Z");
        assert_eq!(c.day(t), NaiveDate::from_ymd_opt(2020, 1, 27).unwrap());
        assert_eq!(c.day(t - 1), NaiveDate::from_ymd_opt(2020, 1, 26).unwrap());
        assert_eq!(date32(NaiveDate::from_ymd_opt(1970, 1, 2).unwrap()), 1);
        assert!(Calendar::new("Mars/Olympus").is_err());
    }
}
