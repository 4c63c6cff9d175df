//! Checkpoints and the clocks: what was committed, and how far event time
//! has come.

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

use super::{registered, InternalEvent};
use crate::metrics::Metrics;

pub(crate) struct Handles {
    checkpoints: IntCounter,
    duration: Histogram,
    window_flush_duration: Histogram,
    watermark_seconds: IntGauge,
    watermark_lag_seconds: IntGauge,
}

impl Handles {
    pub(crate) fn register(r: &Registry) -> prometheus::Result<Self> {
        Ok(Handles {
            checkpoints: registered(
                r,
                IntCounter::new(
                    "paicha_checkpoints_total",
                    "Checkpoints committed to the data directory.",
                )?,
            )?,
            duration: registered(
                r,
                Histogram::with_opts(HistogramOpts::new(
                    "paicha_checkpoint_duration_seconds",
                    "Time to write a checkpoint's files and commit its manifest.",
                ))?,
            )?,
            window_flush_duration: registered(
                r,
                Histogram::with_opts(HistogramOpts::new(
                    "paicha_window_flush_duration_seconds",
                    "Time to write and commit the windows a checkpoint finalized (checkpoints that finalized none are not observed).",
                ))?,
            )?,
            watermark_seconds: registered(
                r,
                IntGauge::new(
                    "paicha_watermark_seconds",
                    "The pipeline's event-time watermark, seconds since the Unix epoch.",
                )?,
            )?,
            watermark_lag_seconds: registered(
                r,
                IntGauge::new(
                    "paicha_watermark_lag_seconds",
                    "Wall clock minus the event-time watermark, seconds (large in a replay of old data).",
                )?,
            )?,
        })
    }
}

/// A partition task's checkpoint was handed to its writer (or committed)
/// in `took`; `windows` if it finalized windows.
pub struct CheckpointWritten {
    pub partition: i32,
    pub took: Duration,
    pub windows: bool,
}

impl InternalEvent for CheckpointWritten {
    fn emit(self, m: &Metrics) {
        tracing::debug!(
            partition = self.partition,
            took_ms = self.took.as_millis() as u64,
            windows = self.windows,
            "checkpoint written"
        );
        let c = &m.checkpoint;
        c.checkpoints.inc();
        c.duration.observe(self.took.as_secs_f64());
        if self.windows {
            c.window_flush_duration.observe(self.took.as_secs_f64());
        }
    }
}

/// The instance's watermark (its most lagging task's), µs.
pub struct WatermarkAdvanced {
    pub micros: i64,
}

impl InternalEvent for WatermarkAdvanced {
    fn emit(self, m: &Metrics) {
        tracing::trace!(watermark = self.micros, "watermark");
        m.checkpoint
            .watermark_seconds
            .set(self.micros.div_euclid(1_000_000));
    }
}

/// How far the pipeline clock is behind the wall clock, µs.
pub struct ClockBehind {
    pub micros: i64,
}

impl InternalEvent for ClockBehind {
    fn emit(self, m: &Metrics) {
        m.checkpoint
            .watermark_lag_seconds
            .set(self.micros.div_euclid(1_000_000));
    }
}
