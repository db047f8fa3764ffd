//! The checks of windows and of event time: lengths, slides and gaps that make sense for the
//! window's time, and an event-time window's watermark.

use super::{round_up, Checker};
use crate::expr;
use crate::spec::{
    EmitMode, JobSpec, LatePolicy, StepSpec, WindowSpec, WindowTime, MAX_WINDOWS_PER_RECORD,
};

/// The source's event time and watermark.
pub(super) fn source(c: &mut Checker, spec: &JobSpec) {
    let s = &spec.source;
    if let Some(e) = &s.event_time {
        let vars: Vec<&str> = expr::Var::RECORD.iter().map(|v| v.name()).collect();
        c.expr("source.eventTime".into(), e, &vars);
    }
    if let Some(w) = &s.watermark {
        if let Some(idle) = w.idle_after {
            if idle.as_millis() < spec.batch_interval.as_millis() {
                c.err(
                    "source.watermark.idleAfter",
                    format!(
                        "{idle} is shorter than batchInterval {}: every partition would be idle between two batches; set at least {}",
                        spec.batch_interval, spec.batch_interval
                    ),
                );
            }
        }
    }
    // The steps that read the records' own times: event-time windows and interval joins.
    let event_steps: Vec<(usize, &str)> = spec
        .pipeline
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            if s.window
                .as_ref()
                .is_some_and(|w| w.time == WindowTime::Event)
            {
                Some((i, "window.time"))
            } else {
                s.interval_join.as_ref().map(|_| (i, "intervalJoin"))
            }
        })
        .collect();
    if let Some(&(i, field)) = event_steps.first() {
        if let Some(j) = spec.pipeline[..i]
            .iter()
            .position(|s| s.aggregate.is_some() || s.state.is_some())
        {
            c.err(
                format!("pipeline[{i}].{field}"),
                format!("reads the records' own times, after the barrier step pipeline[{j}] ({:?}); an event-time window or interval join comes before any aggregate or state step", spec.pipeline[j].id),
            );
        }
    }
    if let Some(&(i, field)) = event_steps.get(1) {
        c.err(
            format!("pipeline[{i}].{field}"),
            format!(
                "is a second event-time step (pipeline[{}] is the first); a job has at most one event-time window or interval join, so split the job in two",
                event_steps[0].0
            ),
        );
    }
}

/// A step's `window`, for batch time or for event time.
pub(super) fn window(
    c: &mut Checker,
    spec: &JobSpec,
    at: &str,
    step: &StepSpec,
    w: &WindowSpec,
    interval: u128,
) {
    if step.aggregate.is_none() {
        c.err(
            format!("{at}.window"),
            "applies to an aggregate; add aggregate to this step",
        );
    }
    match w.time {
        WindowTime::Batch => batch_window(c, spec, at, w, interval),
        WindowTime::Event => event_window(c, spec, at, w),
    }
}

fn batch_window(c: &mut Checker, spec: &JobSpec, at: &str, w: &WindowSpec, interval: u128) {
    let event_only = [
        ("gap", w.gap.is_some()),
        ("allowedLateness", w.allowed_lateness.is_some()),
        ("late", w.late != LatePolicy::default()),
        ("emit", w.emit != EmitMode::default()),
    ];
    for (name, set) in event_only {
        if set {
            c.err(
                format!("{at}.window.{name}"),
                "applies to event-time windows; set window.time: event (and source.watermark), or remove it",
            );
        }
    }
    let Some(length) = w.length else {
        c.err(
            format!("{at}.window.length"),
            "is missing; a batch-time window is a number of batches, e.g. length: 30s with batchInterval 5s",
        );
        return;
    };
    let len = length.as_millis();
    let slide = w.slide.map_or(interval, |s| s.as_millis());
    if interval > 0 {
        if len == 0 || !len.is_multiple_of(interval) {
            c.err(
                format!("{at}.window.length"),
                format!(
                    "{length} is not a multiple of batchInterval {}; set it to a multiple such as {}",
                    spec.batch_interval,
                    round_up(len, interval)
                ),
            );
        }
        if slide == 0 || !slide.is_multiple_of(interval) {
            c.err(
                format!("{at}.window.slide"),
                format!(
                    "{} is not a multiple of batchInterval {}; set it to a multiple such as {}",
                    w.slide.unwrap_or_default(),
                    spec.batch_interval,
                    round_up(slide, interval)
                ),
            );
        }
    }
    let batches = len / interval.max(1);
    if batches > crate::limits::MAX_WINDOW_BATCHES as u128 {
        c.err(
            format!("{at}.window.length"),
            format!(
                "{length} is {batches} batches of {}; at most {} are kept, set a longer batchInterval or a shorter window",
                spec.batch_interval,
                crate::limits::MAX_WINDOW_BATCHES
            ),
        );
    }
    // A zero length already has its error; the default slide is not "longer" then.
    if len > 0 && slide > len {
        c.err(format!("{at}.window.slide"), "is longer than the window length; records between windows would be skipped, set slide <= length");
    }
}

fn event_window(c: &mut Checker, spec: &JobSpec, at: &str, w: &WindowSpec) {
    if spec.source.watermark.is_none() {
        c.err(
            format!("{at}.window.time"),
            "is event, which needs a watermark to close windows; add source.watermark: {delay: 10s} (how far records may come out of order)",
        );
    }
    if w.late == LatePolicy::DeadLetter && spec.dead_letter.is_none() {
        c.err(
            format!("{at}.window.late"),
            "is deadLetter, but the job has no deadLetter topic; add deadLetter: {topic: ...} or set late: drop or update",
        );
    }
    match (w.length, w.gap) {
        (Some(_), Some(_)) => c.err(
            format!("{at}.window"),
            "sets both length and gap; a tumbling or sliding window has a length, a session window a gap: keep one",
        ),
        (None, None) => c.err(
            format!("{at}.window"),
            "has neither length nor gap; set length (tumbling, with slide for sliding) or gap (session)",
        ),
        (None, Some(gap)) => {
            if gap.as_millis() == 0 {
                c.err(format!("{at}.window.gap"), "must be longer than 0s");
            }
            if w.slide.is_some() {
                c.err(
                    format!("{at}.window.slide"),
                    "applies to windows with a length; a session window has only a gap, remove slide",
                );
            }
        }
        (Some(length), None) => {
            let len = length.as_millis();
            let slide = w.slide.map_or(len, |s| s.as_millis());
            if len == 0 {
                c.err(format!("{at}.window.length"), "must be longer than 0s");
            } else if slide == 0 {
                c.err(format!("{at}.window.slide"), "must be longer than 0s");
            } else if slide > len {
                c.err(format!("{at}.window.slide"), "is longer than the window length; records between windows would be skipped, set slide <= length");
            } else if !len.is_multiple_of(slide) {
                c.err(
                    format!("{at}.window.length"),
                    format!(
                        "{length} is not a multiple of slide {}; every record must fall in the same number of windows, set length to a multiple such as {}",
                        w.slide.unwrap_or_default(),
                        round_up(len, slide)
                    ),
                );
            } else if len / slide > MAX_WINDOWS_PER_RECORD {
                c.err(
                    format!("{at}.window.slide"),
                    format!(
                        "puts each record in {} windows; at most {MAX_WINDOWS_PER_RECORD}, set a longer slide",
                        len / slide
                    ),
                );
            }
        }
    }
}
