//! Planning an export-all: one search for the whole range, or, in parallel mode, `[since,
//! till)` cut into windows of the given interval, each counted with `_summary=count`, and
//! adjacent windows merged while a range holds at most `total / searches` resources. Ranges
//! are contiguous, so together they cover the whole `[since, till)` exactly once.
//!
//! The ranges are recorded on the job row before any work item is registered: a repeated
//! planning step (redelivery, a crash in between) registers the same ranges even if the
//! server's counts changed meanwhile.

use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

use super::all::{AllDefinition, Parallel, format_instant, parse_instant};
use super::schedule::WorkItem;
use super::state::ExportJob;
use super::{ExportError, Exporter};
use crate::storage::Row;

/// Count searches in flight at once while planning.
const COUNT_CONCURRENCY: usize = 8;

/// A `_lastUpdated` range `[since, till)` (either end open) and how many resources it held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeRange {
    pub since: Option<OffsetDateTime>,
    pub till: Option<OffsetDateTime>,
    pub count: u64,
}

/// `[since, till)` cut into windows of `secs` seconds. Inner boundaries fall on whole seconds
/// (counted from the whole second at or before `since`), since servers disagree on how to
/// compare against instants finer than they store; the first and last windows may be shorter.
pub fn windows(since: OffsetDateTime, till: OffsetDateTime, secs: u64) -> Vec<TimeRange> {
    let step = Duration::seconds(secs.max(1) as i64);
    let whole_second = since.replace_nanosecond(0).unwrap_or(since);
    let mut out = Vec::new();
    let mut start = since;
    let mut end = whole_second + step;
    while start < till {
        let stop = end.min(till);
        out.push(TimeRange {
            since: Some(start),
            till: Some(stop),
            count: 0,
        });
        start = stop;
        end += step;
    }
    out
}

/// Merges adjacent counted windows while a range holds at most `ceil(total / searches)`
/// resources (a window above that stays a range of its own).
pub fn balance(windows: &[TimeRange], searches: u64) -> Vec<TimeRange> {
    let total: u64 = windows.iter().map(|w| w.count).sum();
    let target = total.div_ceil(searches.max(1)).max(1);
    let mut ranges: Vec<TimeRange> = Vec::new();
    for w in windows {
        match ranges.last_mut() {
            Some(last) if last.count + w.count <= target => {
                last.till = w.till;
                last.count += w.count;
            }
            _ => ranges.push(*w),
        }
    }
    ranges
}

fn ranges_to_json(ranges: &[TimeRange]) -> String {
    let items: Vec<Value> = ranges
        .iter()
        .map(|r| {
            json!([
                r.since.map(format_instant),
                r.till.map(format_instant),
                r.count
            ])
        })
        .collect();
    Value::Array(items).to_string()
}

fn ranges_from_json(text: &str) -> Option<Vec<TimeRange>> {
    let items: Vec<(Option<String>, Option<String>, u64)> = serde_json::from_str(text).ok()?;
    // An open end stays open; a recorded end that no longer parses voids the record.
    let bound = |b: Option<String>| match b {
        Some(s) => parse_instant(&s).map(Some),
        None => Some(None),
    };
    items
        .into_iter()
        .map(|(since, till, count)| {
            Some(TimeRange {
                since: bound(since)?,
                till: bound(till)?,
                count,
            })
        })
        .collect()
}

/// The planning step of an export-all (the job is `gathering`).
pub async fn plan(
    ex: &Exporter,
    export: &str,
    mut job: Row<ExportJob>,
    definition: &AllDefinition,
    attempt: u32,
) -> Result<(), ExportError> {
    let ranges = match job.data.ranges.as_deref().and_then(ranges_from_json) {
        Some(recorded) => recorded,
        None => {
            let ranges = match (definition.parallel, definition.since, definition.till) {
                (Some(parallel), Some(since), Some(till)) => {
                    match counted_ranges(ex, definition, parallel, since, till, attempt).await {
                        Ok(r) => r,
                        Err(Planning::Retry(e)) => return Err(e),
                        Err(Planning::Fail(why)) => {
                            return ex.fail_planning(job, &why, None).await;
                        }
                    }
                }
                _ => vec![TimeRange {
                    since: definition.since,
                    till: definition.till,
                    count: 0,
                }],
            };
            job.data.ranges = Some(ranges_to_json(&ranges));
            if !ex.store.replace_if_unchanged(&mut job).await? {
                return Ok(()); // terminated, or another delivery planned first
            }
            ranges
        }
    };
    let item = |n: usize| WorkItem {
        batch: n as u32,
        include: 0,
        resource_type: definition.resource_type.clone(),
        search: definition.search(ranges[n].since, ranges[n].till),
    };
    ex.register_work(export, job, ranges.len(), item).await
}

enum Planning {
    Retry(ExportError),
    Fail(String),
}

async fn counted_ranges(
    ex: &Exporter,
    definition: &AllDefinition,
    parallel: Parallel,
    since: OffsetDateTime,
    till: OffsetDateTime,
    attempt: u32,
) -> Result<Vec<TimeRange>, Planning> {
    let windows = windows(since, till, parallel.window_secs);
    let counted: Vec<TimeRange> = futures::stream::iter(windows)
        .map(|w| async move {
            let search = format!(
                "{}&_summary=count",
                definition.search(w.since, w.till)
            );
            let url = ex.fhir.url(&search);
            match ex.fhir.get(&url).await {
                Ok(page) => match page.get("total").and_then(Value::as_u64) {
                    Some(count) => Ok(TimeRange { count, ..w }),
                    None => Err(Planning::Fail(format!(
                        "the server answered GET {} without a total, so the time windows cannot be balanced; export without _parallelizationCount",
                        url.path()
                    ))),
                },
                Err(e) if e.is_transient() && attempt < ex.settings.work.max_attempts => {
                    Err(Planning::Retry(ExportError::from(e)))
                }
                Err(e) => Err(Planning::Fail(format!(
                    "the resources per time window could not be counted: {e}"
                ))),
            }
        })
        .buffered(COUNT_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(balance(&counted, parallel.searches))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn counted(counts: &[u64]) -> Vec<TimeRange> {
        let start = datetime!(2024-01-01 00:00:00 UTC);
        let mut w = windows(
            start,
            start + Duration::seconds(counts.len() as i64 * 10),
            10,
        );
        for (w, c) in w.iter_mut().zip(counts) {
            w.count = *c;
        }
        w
    }

    #[test]
    fn windows_cover_the_range_with_a_short_last_one() {
        let start = datetime!(2024-01-01 00:00:00 UTC);
        let w = windows(start, start + Duration::seconds(25), 10);
        assert_eq!(w.len(), 3);
        assert_eq!(w[0].since, Some(start));
        assert_eq!(w[2].till, Some(start + Duration::seconds(25)));
        for pair in w.windows(2) {
            assert_eq!(pair[0].till, pair[1].since, "contiguous");
        }
        assert!(windows(start, start, 10).is_empty());
        let odd = start + Duration::milliseconds(1500);
        let w = windows(odd, odd + Duration::seconds(20), 10);
        let bounds: Vec<_> = w.iter().map(|w| w.till.unwrap() - start).collect();
        assert_eq!(
            bounds,
            [
                Duration::seconds(11),
                Duration::seconds(21),
                Duration::milliseconds(21_500)
            ],
            "inner boundaries on whole seconds"
        );
    }

    #[test]
    fn balancing_merges_adjacent_windows_up_to_the_share_and_keeps_coverage() {
        let w = counted(&[5, 0, 5, 10, 0, 0, 30, 2, 3, 5]);
        let ranges = balance(&w, 4); // total 60, share 15
        let counts: Vec<u64> = ranges.iter().map(|r| r.count).collect();
        assert_eq!(counts, vec![10, 10, 30, 10]);
        assert_eq!(ranges.first().unwrap().since, w.first().unwrap().since);
        assert_eq!(ranges.last().unwrap().till, w.last().unwrap().till);
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].till, pair[1].since, "no gap, no overlap");
        }
        assert_eq!(
            balance(&counted(&[0, 0, 0]), 8).len(),
            1,
            "empty range: one search"
        );
        assert_eq!(balance(&w, 1).len(), 1);
    }

    #[test]
    fn recorded_ranges_read_back_the_same() {
        let mut ranges = balance(&counted(&[1, 2, 3]), 2);
        ranges.push(TimeRange {
            since: ranges.last().unwrap().till,
            till: None,
            count: 0,
        });
        assert_eq!(ranges_from_json(&ranges_to_json(&ranges)), Some(ranges));
        assert_eq!(ranges_from_json("not json"), None);
    }
}
