//! Snapshot progress for `etcdsync run`: on a terminal, an indicatif bar per table (rows done /
//! estimated, rows/s); otherwise a log line every 10 s. Both read
//! `telemetry::get().snapshot_progress()` and stop drawing once the phase is streaming.

use etcdsync_core::telemetry::{self, Phase, TableProgress};
use etcdsync_core::TableId;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often a non-terminal stderr gets a progress line.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);
const DRAW_INTERVAL: Duration = Duration::from_millis(200);

static ACTIVE: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// The bars being drawn now, if any (the log writer suspends them around each line).
pub fn bars() -> Option<MultiProgress> {
    ACTIVE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

fn set_bars(bars: Option<MultiProgress>) {
    *ACTIVE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = bars;
}

/// Reports snapshot progress until `stop` is cancelled.
pub fn spawn(stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    if std::io::stderr().is_terminal() {
        tokio::spawn(draw_bars(stop))
    } else {
        tokio::spawn(log_lines(stop))
    }
}

async fn draw_bars(stop: CancellationToken) {
    let mut drawn: Option<(MultiProgress, BTreeMap<TableId, ProgressBar>)> = None;
    let mut tick = tokio::time::interval(DRAW_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        let telemetry = telemetry::get();
        if telemetry.phase_now() != Phase::Snapshot {
            if let Some((multi, bars)) = drawn.take() {
                set_bars(None);
                for bar in bars.values() {
                    bar.finish_and_clear();
                }
                let _ = multi.clear();
            }
            continue;
        }
        let (multi, bars) = drawn.get_or_insert_with(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            set_bars(Some(multi.clone()));
            (multi, BTreeMap::new())
        });
        for (table, progress) in telemetry.snapshot_progress() {
            let bar = bars
                .entry(table.clone())
                .or_insert_with(|| multi.add(new_bar(&table, &progress)));
            update_bar(bar, &progress);
        }
    }
    if let Some((multi, bars)) = drawn {
        set_bars(None);
        for bar in bars.values() {
            bar.finish_and_clear();
        }
        let _ = multi.clear();
    }
}

fn new_bar(table: &TableId, progress: &TableProgress) -> ProgressBar {
    let bar = ProgressBar::hidden();
    bar.set_style(style(if progress.estimated_rows.is_some() {
        "{prefix:32!} [{bar:30}] {human_pos}/{human_len} rows  {rate:>12}  eta {eta}"
    } else {
        "{prefix:32!} {spinner} {human_pos} rows  {rate:>12}"
    }));
    bar.set_prefix(table.to_string());
    bar
}

/// A bar style with `{rate}` (whole rows per second); the templates above are valid, so the
/// fallback is never used.
fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "rate",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0} rows/s", state.per_sec());
            },
        )
        .progress_chars("=> ")
}

fn update_bar(bar: &ProgressBar, progress: &TableProgress) {
    if bar.is_finished() {
        return;
    }
    if let Some(estimate) = progress.estimated_rows {
        // Statistics may be stale: never show more rows than the bar holds.
        bar.set_length(estimate.max(progress.rows));
    }
    bar.set_position(progress.rows);
    if progress.done {
        bar.set_length(progress.rows);
        bar.set_style(style("{prefix:32!} [{bar:30}] {human_pos} rows  done"));
        bar.finish();
    }
}

async fn log_lines(stop: CancellationToken) {
    let mut tick = tokio::time::interval(LOG_INTERVAL);
    tick.tick().await;
    let mut previous: Option<(Instant, BTreeMap<TableId, u64>)> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let telemetry = telemetry::get();
        let in_snapshot = telemetry.phase_now() == Phase::Snapshot;
        let progress = telemetry.snapshot_progress();
        if !in_snapshot {
            if previous.take().is_some() && !progress.is_empty() {
                tracing::info!(
                    tables = progress.len(),
                    rows = progress.values().map(|p| p.rows).sum::<u64>(),
                    "snapshot progress: finished"
                );
            }
            continue;
        }
        if progress.is_empty() {
            continue;
        }
        let now = Instant::now();
        let line = progress_line(&progress, previous.as_ref(), now);
        tracing::info!("snapshot progress: {line}");
        previous = Some((
            now,
            progress.iter().map(|(t, p)| (t.clone(), p.rows)).collect(),
        ));
    }
}

/// `public.a 1200/~5000 rows (24%, 340 rows/s); public.b done (300 rows)`.
pub fn progress_line(
    progress: &BTreeMap<TableId, TableProgress>,
    previous: Option<&(Instant, BTreeMap<TableId, u64>)>,
    now: Instant,
) -> String {
    let mut parts = Vec::with_capacity(progress.len());
    for (table, p) in progress {
        if p.done {
            parts.push(format!("{table} done ({} rows)", p.rows));
            continue;
        }
        let mut part = match p.estimated_rows {
            Some(estimate) => {
                let estimate = estimate.max(p.rows);
                let percent = p
                    .rows
                    .saturating_mul(100)
                    .checked_div(estimate)
                    .unwrap_or(100);
                format!("{table} {}/~{estimate} rows ({percent}%", p.rows)
            }
            None => format!("{table} {} rows (", p.rows),
        };
        if let Some((at, rows)) = previous {
            let seconds = now.duration_since(*at).as_secs_f64();
            let before = rows.get(table).copied().unwrap_or(0);
            if seconds > 0.0 {
                let rate = p.rows.saturating_sub(before) as f64 / seconds;
                if !part.ends_with('(') {
                    part.push_str(", ");
                }
                part.push_str(&format!("{rate:.0} rows/s"));
            }
        }
        if part.ends_with('(') {
            part.truncate(part.len() - 2);
        } else {
            part.push(')');
        }
        parts.push(part);
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_shows_counts_percent_rate_and_done() {
        let a = TableId::new("public", "a");
        let b = TableId::new("public", "b");
        let c = TableId::new("public", "c");
        let mut progress = BTreeMap::new();
        progress.insert(
            a.clone(),
            TableProgress {
                rows: 1200,
                estimated_rows: Some(5000),
                done: false,
            },
        );
        progress.insert(
            b.clone(),
            TableProgress {
                rows: 300,
                estimated_rows: Some(250),
                done: true,
            },
        );
        progress.insert(
            c.clone(),
            TableProgress {
                rows: 7,
                estimated_rows: None,
                done: false,
            },
        );
        let now = Instant::now();
        assert_eq!(
            progress_line(&progress, None, now),
            "public.a 1200/~5000 rows (24%); public.b done (300 rows); public.c 7 rows"
        );
        let earlier = now.checked_sub(Duration::from_secs(10)).unwrap_or(now);
        let previous = (earlier, BTreeMap::from([(a, 200), (c, 7)]));
        let line = progress_line(&progress, Some(&previous), now);
        assert!(
            line.starts_with("public.a 1200/~5000 rows (24%, 100 rows/s); public.b done"),
            "{line}"
        );
        assert!(line.ends_with("public.c 7 rows (0 rows/s)"), "{line}");
    }
}
