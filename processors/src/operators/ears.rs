//! EARS outbreak detection (C1, C2, C3) on daily counts.
//!
//! The CDC's Early Aberration Reporting System methods compare a day's count
//! with the week before it. They need no history beyond a few days, which is
//! why they suit a streaming pipeline that only keeps recent days at hand.
//! The definitions are those of `shared/fixtures/ears/README.md`: C1 and C2
//! agree with R's `surveillance::earsC`, C3 follows the published definition
//! (R's `earsC` leaves the current day out of its C3 bound; this one does not).
//!
//! [`evaluate`] is a pure function of the series and the day. When a late
//! count changes an earlier day, re-evaluating the days that depend on it is
//! the caller's job: a day `d` feeds C1 on `d..=d+7`, C2 on `d` and
//! `d+3..=d+9`, and C3 on `d..=d+11`.

/// Φ⁻¹(0.999): C1 and C2 alarm when a count lies this many (floored) standard
/// deviations above the baseline mean, as `earsC` does with `alpha = 0.001`.
pub const Z_C1_C2: f64 = 3.090232306167813;

/// Φ⁻¹(0.975): C3 alarms when its three-day sum of excesses passes this.
pub const C3_ALARM: f64 = 1.959963984540054;

/// The floor on the baseline standard deviation callers should use unless
/// they have a reason not to. It is 1 rather than 0 because C3 divides by the
/// floored deviation: a flat baseline (σ = 0, common on quiet days) would
/// otherwise make any rise an infinite statistic. A floor of one case also
/// keeps C1 and C2 from alarming on a single case after a run of zeros.
pub const DEFAULT_MIN_SIGMA: f64 = 1.0;

/// Days in every baseline.
const BASELINE_DAYS: usize = 7;

/// Days C3 sums its excesses over (the day itself and the two before).
const C3_DAYS: usize = 3;

/// One of the three EARS methods; they differ in which days form the baseline
/// and in how the alarm is decided, so a caller usually runs all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// The 7 days right before the day: quickest to react, but a slow
    /// outbreak soon raises its own baseline.
    C1,
    /// The 7 days ending 3 days before: the 2-day guard band keeps the
    /// start of an outbreak out of the baseline it is judged against.
    C2,
    /// The sum of the last three days' C2 excesses: catches a rise that is
    /// moderate each day but sustained.
    C3,
}

impl Method {
    /// Every method, in the order reports list them.
    pub const ALL: [Method; 3] = [Method::C1, Method::C2, Method::C3];

    /// The name used in tables and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::C1 => "C1",
            Method::C2 => "C2",
            Method::C3 => "C3",
        }
    }

    /// The first day offset (0-based) [`evaluate`] answers for: the first
    /// whose whole baseline lies inside the series (the 8th, 10th and 12th
    /// day). Lets callers iterate without probing for `None`.
    pub const fn first_day(self) -> usize {
        match self {
            Method::C1 => BASELINE_DAYS,
            Method::C2 => BASELINE_DAYS + C2_LAG - 1,
            Method::C3 => BASELINE_DAYS + C2_LAG - 1 + C3_DAYS - 1,
        }
    }
}

/// How far before the day the newest baseline day of C1 lies.
const C1_LAG: usize = 1;
/// The same for C2 (and C3): two guard days, then the baseline.
const C2_LAG: usize = 3;

/// What one method concluded about one day.
#[derive(Debug, Clone, PartialEq)]
pub struct Aberration {
    /// The method that produced this.
    pub method: Method,
    /// The day's count.
    pub observed: i64,
    /// Mean of the method's 7 baseline days. `None` for C3, whose statistic
    /// mixes three days' baselines, so no single mean describes it (the
    /// fixture leaves these columns empty for C3 too).
    pub baseline_mean: Option<f64>,
    /// Sample standard deviation (n − 1) of the baseline days, before the
    /// `min_sigma` floor, so a reader can see when the floor decided.
    /// `None` for C3, as for `baseline_mean`.
    pub baseline_sd: Option<f64>,
    /// For C1 and C2 the count the day must exceed; for C3 the level the
    /// statistic must exceed ([`C3_ALARM`]).
    pub threshold: f64,
    /// The C3 statistic; `None` for C1 and C2, whose statistic is the count.
    pub statistic: Option<f64>,
    /// Whether the day is aberrant: the count (C1, C2) or statistic (C3)
    /// strictly above `threshold`.
    pub alarm: bool,
}

/// Mean and sample standard deviation of a baseline.
struct Baseline {
    mean: f64,
    sd: f64,
}

/// The baseline of day `t` whose newest day is `lag` days before it, or
/// `None` when it would reach before the series or `t` is past its end.
fn baseline(counts: &[i64], t: usize, lag: usize) -> Option<Baseline> {
    if t >= counts.len() {
        return None;
    }
    let start = t.checked_sub(lag + BASELINE_DAYS - 1)?;
    let days = counts.get(start..start + BASELINE_DAYS)?;
    // Summing as f64 cannot overflow as i64 might on absurd counts, and is
    // exact for any count a day can really hold (below 2⁵³).
    let n = BASELINE_DAYS as f64;
    let mean = days.iter().map(|&x| x as f64).sum::<f64>() / n;
    // Two passes rather than a running sum of squares: a flat baseline then
    // gives σ exactly 0, so "observed > threshold" is decided exactly.
    let ss: f64 = days.iter().map(|&x| (x as f64 - mean).powi(2)).sum();
    Some(Baseline {
        mean,
        sd: (ss / (n - 1.0)).sqrt(),
    })
}

/// The baseline deviation with its floor. `f64::max` ignores a NaN floor, so
/// a NaN `min_sigma` acts as 0 rather than poisoning every result.
fn floored(sd: f64, min_sigma: f64) -> f64 {
    sd.max(min_sigma)
}

/// The C2 statistic of day `t`: its count in floored standard deviations
/// above the C2 baseline.
fn c2_statistic(counts: &[i64], t: usize, min_sigma: f64) -> Option<f64> {
    let b = baseline(counts, t, C2_LAG)?;
    let x = *counts.get(t)? as f64;
    let excess = x - b.mean;
    // With no floor a flat baseline has scale 0: a count on the baseline is
    // then no excess (not 0/0 = NaN), and one above it an infinite excess,
    // which alarms as C1 and C2 do in that case.
    if excess == 0.0 {
        return Some(0.0);
    }
    Some(excess / floored(b.sd, min_sigma))
}

/// Evaluates day `t` of `counts` with `method`.
///
/// `counts` is a dense daily series: index `i` is the `i`-th day from the
/// series start, and a day without events must be present as 0 (leaving it
/// out would shift every later day's baseline). `min_sigma` floors the
/// baseline standard deviation; see [`DEFAULT_MIN_SIGMA`].
///
/// Returns `None` when `t` is past the end of the series or the method's
/// baseline would start before it (before [`Method::first_day`]): a partial
/// baseline would give thresholds not comparable with the rest.
pub fn evaluate(counts: &[i64], t: usize, method: Method, min_sigma: f64) -> Option<Aberration> {
    let observed = *counts.get(t)?;
    match method {
        Method::C1 | Method::C2 => {
            let lag = if method == Method::C1 { C1_LAG } else { C2_LAG };
            let b = baseline(counts, t, lag)?;
            let threshold = b.mean + Z_C1_C2 * floored(b.sd, min_sigma);
            Some(Aberration {
                method,
                observed,
                baseline_mean: Some(b.mean),
                baseline_sd: Some(b.sd),
                threshold,
                statistic: None,
                alarm: observed as f64 > threshold,
            })
        }
        Method::C3 => {
            let mut statistic = 0.0;
            for k in 0..C3_DAYS {
                let c2 = c2_statistic(counts, t.checked_sub(k)?, min_sigma)?;
                // Only the part above one deviation counts, so ordinary
                // noise on the three days does not add up to an alarm.
                statistic += (c2 - 1.0).max(0.0);
            }
            Some(Aberration {
                method,
                observed,
                baseline_mean: None,
                baseline_sd: None,
                threshold: C3_ALARM,
                statistic: Some(statistic),
                alarm: statistic > C3_ALARM,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/ears/");

    fn read(name: &str) -> String {
        let path = format!("{FIXTURES}{name}");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
    }

    fn date(s: &str) -> chrono::NaiveDate {
        chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// Each series as (first date, dense counts), absent days filled with 0.
    fn series() -> BTreeMap<String, (chrono::NaiveDate, Vec<i64>)> {
        let text = read("series.csv");
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("series,day,count"));
        let mut rows: BTreeMap<String, Vec<(chrono::NaiveDate, i64)>> = BTreeMap::new();
        for line in lines.filter(|l| !l.is_empty()) {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), 3, "{line}");
            let count = f[2].parse().unwrap_or_else(|e| panic!("{line}: {e}"));
            rows.entry(f[0].to_string())
                .or_default()
                .push((date(f[1]), count));
        }
        rows.into_iter()
            .map(|(name, days)| {
                let first = days.iter().map(|d| d.0).min().expect("a series has days");
                let last = days.iter().map(|d| d.0).max().expect("a series has days");
                let mut counts = vec![0; (last - first).num_days() as usize + 1];
                for (day, count) in days {
                    counts[(day - first).num_days() as usize] += count;
                }
                (name, (first, counts))
            })
            .collect()
    }

    struct Expected {
        observed: i64,
        mean: Option<f64>,
        sd: Option<f64>,
        threshold: f64,
        alarm: bool,
        statistic: Option<f64>,
    }

    /// (series, day offset, method, min_sigma as written) → expected row.
    type Key = (String, usize, &'static str, String);

    fn expected(
        series: &BTreeMap<String, (chrono::NaiveDate, Vec<i64>)>,
    ) -> BTreeMap<Key, Expected> {
        let text = read("expected.csv");
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("series,day,method,min_sigma,observed,baseline_mean,baseline_sd,threshold,alarm,statistic")
        );
        let opt = |s: &str| (!s.is_empty()).then(|| s.parse::<f64>().expect(s));
        let mut out = BTreeMap::new();
        for line in lines.filter(|l| !l.is_empty()) {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), 10, "{line}");
            let (first, _) = &series[f[0]];
            let t = (date(f[1]) - *first).num_days();
            assert!(t >= 0, "{line}: before the series starts");
            let method = Method::ALL
                .into_iter()
                .find(|m| m.as_str() == f[2])
                .unwrap_or_else(|| panic!("{line}: unknown method"));
            let row = Expected {
                observed: f[4].parse().expect(f[4]),
                mean: opt(f[5]),
                sd: opt(f[6]),
                threshold: f[7].parse().expect(f[7]),
                alarm: match f[8] {
                    "TRUE" => true,
                    "FALSE" => false,
                    other => panic!("{line}: alarm {other}"),
                },
                statistic: opt(f[9]),
            };
            let key = (
                f[0].to_string(),
                t as usize,
                method.as_str(),
                f[3].to_string(),
            );
            assert!(out.insert(key, row).is_none(), "{line}: duplicate row");
        }
        out
    }

    fn close(what: &str, got: f64, want: f64) {
        assert!(
            (got - want).abs() <= 1e-9,
            "{what}: got {got:.15}, expected {want:.15}"
        );
    }

    #[test]
    fn matches_fixture() {
        let series = series();
        let expected = expected(&series);
        let mut checked = 0;
        for ((name, t, method, sigma), want) in &expected {
            let counts = &series[name].1;
            let method = Method::ALL
                .into_iter()
                .find(|m| m.as_str() == *method)
                .expect("parsed above");
            let min_sigma: f64 = sigma.parse().expect("min_sigma");
            let what = format!("{name} day {t} {} minSigma {sigma}", method.as_str());
            let got = evaluate(counts, *t, method, min_sigma)
                .unwrap_or_else(|| panic!("{what}: not evaluated"));
            assert_eq!(got.method, method, "{what}");
            assert_eq!(got.observed, want.observed, "{what}: observed");
            close(&format!("{what}: threshold"), got.threshold, want.threshold);
            assert_eq!(got.alarm, want.alarm, "{what}: alarm");
            match method {
                Method::C1 | Method::C2 => {
                    let (Some(mean), Some(sd)) = (want.mean, want.sd) else {
                        panic!("{what}: fixture lacks the baseline");
                    };
                    close(
                        &format!("{what}: mean"),
                        got.baseline_mean.expect("mean"),
                        mean,
                    );
                    close(&format!("{what}: sd"), got.baseline_sd.expect("sd"), sd);
                    assert_eq!(want.statistic, None, "{what}: fixture statistic");
                    assert_eq!(got.statistic, None, "{what}: statistic");
                }
                Method::C3 => {
                    assert_eq!(
                        (want.mean, want.sd),
                        (None, None),
                        "{what}: fixture baseline"
                    );
                    assert_eq!((got.baseline_mean, got.baseline_sd), (None, None), "{what}");
                    let s = want.statistic.expect("fixture C3 statistic");
                    close(
                        &format!("{what}: statistic"),
                        got.statistic.expect("statistic"),
                        s,
                    );
                    close(&format!("{what}: level"), got.threshold, C3_ALARM);
                }
            }
            checked += 1;
        }
        // 5 series × 70 days: C1 63 days and C2 61 days at minSigma 0 and 1,
        // C3 59 days at minSigma 1.
        assert_eq!(checked, 1535);
    }

    /// Every day the function answers for is in the fixture and the reverse:
    /// the fixture's "evaluated only when the whole baseline lies inside the
    /// series" is exactly where `evaluate` returns `Some`.
    #[test]
    fn evaluates_exactly_the_fixture_days() {
        let series = series();
        let expected: BTreeSet<Key> = expected(&series).into_keys().collect();
        let mut produced = BTreeSet::new();
        for (name, (_, counts)) in &series {
            for t in 0..counts.len() + 2 {
                for method in Method::ALL {
                    // The fixture has C3 at minSigma 1 only.
                    let sigmas: &[&str] = match method {
                        Method::C3 => &["1"],
                        _ => &["0", "1"],
                    };
                    for sigma in sigmas {
                        let some = evaluate(counts, t, method, sigma.parse().expect("f64"));
                        assert_eq!(some.is_some(), t >= method.first_day() && t < counts.len());
                        if some.is_some() {
                            produced.insert((name.clone(), t, method.as_str(), sigma.to_string()));
                        }
                    }
                }
            }
        }
        assert_eq!(produced.len(), expected.len());
        assert_eq!(produced, expected);
    }

    #[test]
    fn first_days_are_the_8th_10th_and_12th() {
        assert_eq!(Method::C1.first_day(), 7);
        assert_eq!(Method::C2.first_day(), 9);
        assert_eq!(Method::C3.first_day(), 11);
        let counts = [0; 12];
        for method in Method::ALL {
            let first = method.first_day();
            assert!(evaluate(&counts[..first], first - 1, method, 1.0).is_none());
            assert!(evaluate(&counts[..=first], first - 1, method, 1.0).is_none());
            assert!(evaluate(&counts[..=first], first, method, 1.0).is_some());
        }
    }

    #[test]
    fn out_of_range_is_none_not_a_panic() {
        let counts = [3; 20];
        for method in Method::ALL {
            for min_sigma in [0.0, 1.0, -1.0, f64::NAN, f64::INFINITY] {
                assert!(evaluate(&[], 0, method, min_sigma).is_none());
                assert!(evaluate(&[], usize::MAX, method, min_sigma).is_none());
                assert!(evaluate(&counts, 20, method, min_sigma).is_none());
                assert!(evaluate(&counts, usize::MAX, method, min_sigma).is_none());
                assert!(evaluate(&counts, 0, method, min_sigma).is_none());
                assert!(evaluate(&counts, 19, method, min_sigma).is_some());
            }
        }
        // Extreme counts give some answer rather than an overflow panic.
        let extreme = [
            i64::MAX,
            i64::MIN,
            0,
            i64::MAX,
            -5,
            i64::MIN,
            7,
            1,
            2,
            3,
            4,
            5,
        ];
        for method in Method::ALL {
            assert!(evaluate(&extreme, 11, method, 1.0).is_some());
        }
    }

    /// Without a floor a flat baseline has σ = 0: C1 and C2 then alarm on any
    /// count above it, and C3 on any rise (infinite statistic) but not on a
    /// count equal to it (no 0/0 NaN).
    #[test]
    fn flat_baseline_without_floor() {
        let mut counts = vec![2; 12];
        let c3 = evaluate(&counts, 11, Method::C3, 0.0).expect("evaluated");
        assert_eq!(c3.statistic, Some(0.0));
        assert!(!c3.alarm);
        assert!(!evaluate(&counts, 11, Method::C1, 0.0).expect("c1").alarm);
        counts[11] = 3;
        let c3 = evaluate(&counts, 11, Method::C3, 0.0).expect("evaluated");
        assert_eq!(c3.statistic, Some(f64::INFINITY));
        assert!(c3.alarm);
        let c1 = evaluate(&counts, 11, Method::C1, 0.0).expect("c1");
        assert_eq!((c1.threshold, c1.alarm), (2.0, true));
        // The default floor keeps one extra case from alarming.
        let c1 = evaluate(&counts, 11, Method::C1, DEFAULT_MIN_SIGMA).expect("c1");
        assert_eq!((c1.threshold, c1.alarm), (2.0 + Z_C1_C2, false));
        counts[11] = 1;
        let c3 = evaluate(&counts, 11, Method::C3, 0.0).expect("evaluated");
        assert_eq!(c3.statistic, Some(0.0));
    }

    /// The function is pure: changing one day changes exactly the days whose
    /// baseline or count includes it, which is what a caller recomputing
    /// after a late event relies on.
    #[test]
    fn a_changed_day_changes_the_days_that_depend_on_it() {
        let series = series();
        let before = series["poisson5_outbreak"].1.clone();
        let mut after = before.clone();
        let d = 30;
        after[d] += 4;
        let changed = |method: Method| -> BTreeSet<usize> {
            (0..before.len())
                .filter(|&t| {
                    evaluate(&before, t, method, DEFAULT_MIN_SIGMA)
                        != evaluate(&after, t, method, DEFAULT_MIN_SIGMA)
                })
                .collect()
        };
        let c1: BTreeSet<usize> = (d..=d + 7).collect();
        let c2: BTreeSet<usize> = std::iter::once(d).chain(d + 3..=d + 9).collect();
        assert_eq!(changed(Method::C1), c1);
        assert_eq!(changed(Method::C2), c2);
        // C3 clips at zero, so not every dependent day need change; none
        // outside them may, and the day itself does here.
        let c3 = changed(Method::C3);
        assert!(c3.iter().all(|t| (d..=d + 11).contains(t)), "{c3:?}");
        assert!(c3.contains(&d), "{c3:?}");
        // Same input, same answer.
        for method in Method::ALL {
            for t in 0..before.len() {
                assert_eq!(
                    evaluate(&before, t, method, 1.0),
                    evaluate(&before, t, method, 1.0)
                );
            }
        }
    }

    #[test]
    fn names() {
        let names: Vec<&str> = Method::ALL.iter().map(|m| m.as_str()).collect();
        assert_eq!(names, ["C1", "C2", "C3"]);
    }
}
