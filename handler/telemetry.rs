//! The handler's logs, and the part of them operators chart.
//!
//! Under the Functions host the handler writes one JSON object per line to stdout (time,
//! level, message and the event's fields, flattened); the host forwards each line to
//! Application Insights as a trace of category `Host.Function.Console`, where KQL reads it
//! with `parse_json(message)`. `serve` and the CLI write text for a terminal.
//! `FHIRBULK_LOG_FORMAT` (`json` | `text`) overrides either; `RUST_LOG` sets the levels.
//!
//! [`CHARTED_EVENTS`] is a contract with the operations workbook (`infra/workbook.json`,
//! deployed by `infra/main.bicep`): the events it charts, with the JSON type of each field it
//! reads. Tests check that the handler emits them so and that the workbook reads no other
//! event or field; change both together.

use tracing_subscriber::EnvFilter;

pub const ENV_LOG_FORMAT: &str = "FHIRBULK_LOG_FORMAT";

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, the event's fields at the top level.
    Json,
    /// Human-readable text.
    Text,
}

impl LogFormat {
    /// `FHIRBULK_LOG_FORMAT` when it is set to a known format, else `default`.
    pub fn from_env(default: LogFormat) -> Result<LogFormat, String> {
        match std::env::var(ENV_LOG_FORMAT).ok().as_deref().map(str::trim) {
            None | Some("") => Ok(default),
            Some("json") => Ok(LogFormat::Json),
            Some("text") => Ok(LogFormat::Text),
            Some(other) => Err(format!(
                "{ENV_LOG_FORMAT}={other:?} is not a log format: use json or text"
            )),
        }
    }
}

/// Installs the process's log subscriber: `RUST_LOG` levels (default `info`) in `format`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

/// The JSON type of a charted field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    String,
    Number,
}

/// One event the workbook charts: its `message` and the fields it reads.
#[derive(Debug)]
pub struct ChartedEvent {
    pub message: &'static str,
    pub fields: &'static [(&'static str, FieldType)],
}

/// Fields every JSON line has.
pub const COMMON_FIELDS: &[&str] = &["timestamp", "level", "message"];

use FieldType::{Number, String as Text};

/// The events the operations workbook charts (see the module documentation).
pub const CHARTED_EVENTS: &[ChartedEvent] = &[
    // Files per status over time, resources loaded and failed.
    ChartedEvent {
        message: "Import finished.",
        fields: &[
            ("import", Text),
            ("container", Text),
            ("status", Text),
            ("loaded", Number),
            ("failed", Number),
        ],
    },
    // Failures by reason.
    ChartedEvent {
        message: "File rejected.",
        fields: &[("import", Text), ("reason", Text)],
    },
    // The FHIR server pushing back (429, 503) or failing (5xx).
    ChartedEvent {
        message: "Retrying FHIR request.",
        fields: &[("method", Text), ("status", Number), ("delay_ms", Number)],
    },
    // The adaptive concurrency level, per instance.
    ChartedEvent {
        message: "FHIR concurrency changed.",
        fields: &[("limit", Number), ("in_flight", Number)],
    },
    // Queue backlog, sampled by each reconciliation sweep.
    ChartedEvent {
        message: "Work backlog.",
        fields: &[("queue", Text), ("messages", Number)],
    },
    // Exports and their phase.
    ChartedEvent {
        message: "Export started.",
        fields: &[("export", Text), ("kind", Text)],
    },
    ChartedEvent {
        message: "Export planned.",
        fields: &[("export", Text), ("work_items", Number)],
    },
    ChartedEvent {
        message: "Export completed.",
        fields: &[
            ("export", Text),
            ("status", Text),
            ("files", Number),
            ("resources", Number),
        ],
    },
];

/// The charted event with this message.
pub fn charted(message: &str) -> Option<&'static ChartedEvent> {
    CHARTED_EVENTS.iter().find(|e| e.message == message)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The queries of `infra/workbook.json`.
    fn workbook_queries() -> Vec<String> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/infra/workbook.json");
        let workbook: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        workbook["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|item| item["content"]["query"].as_str().map(str::to_string))
            .collect()
    }

    #[test]
    fn the_workbook_reads_only_charted_events_and_their_fields() {
        let queries = workbook_queries();
        assert!(
            queries.len() >= 6,
            "the workbook's charts: {}",
            queries.len()
        );
        let fields: Vec<&str> = CHARTED_EVENTS
            .iter()
            .flat_map(|e| e.fields.iter().map(|(name, _)| *name))
            .chain(COMMON_FIELDS.iter().copied())
            .collect();
        let field_use = field_uses("e.");
        for query in &queries {
            assert!(
                query.contains("customDimensions.Category == \"Host.Function.Console\"")
                    && query.contains("parse_json(message)"),
                "reads the handler's JSON lines: {query}"
            );
            for name in field_use(query) {
                assert!(
                    fields.contains(&name.as_str()),
                    "the workbook reads e.{name}, which no charted event declares: {query}"
                );
            }
            for message in messages_compared(query) {
                assert!(
                    charted(&message).is_some(),
                    "the workbook charts {message:?}, which is not in CHARTED_EVENTS: {query}"
                );
            }
        }
        // And every charted event is charted somewhere.
        for event in CHARTED_EVENTS {
            assert!(
                queries
                    .iter()
                    .any(|q| q.contains(&format!("\"{}\"", event.message))),
                "{:?} is declared charted but no query reads it",
                event.message
            );
        }
    }

    /// A finder of `<prefix><identifier>` uses (e.g. `e.status`), not preceded by a letter.
    fn field_uses(prefix: &'static str) -> impl Fn(&str) -> Vec<String> {
        move |text: &str| {
            let mut found = Vec::new();
            let bytes = text.as_bytes();
            let mut at = 0;
            while let Some(i) = text[at..].find(prefix) {
                let start = at + i;
                let before = start.checked_sub(1).map(|b| bytes[b]);
                let name: String = text[start + prefix.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
                    && !name.is_empty()
                {
                    found.push(name);
                }
                at = start + prefix.len();
            }
            found
        }
    }

    /// The strings a query compares `e.message` with (`== "X"` or `in ("X", "Y")`).
    fn messages_compared(query: &str) -> Vec<String> {
        let mut out = Vec::new();
        for part in query.split("tostring(e.message)").skip(1) {
            let rest = part.trim_start();
            let list = if let Some(r) = rest.strip_prefix("==") {
                r.trim_start()
                    .split('"')
                    .nth(1)
                    .map(|s| vec![s.to_string()])
            } else if let Some(r) = rest.strip_prefix("in") {
                let inside = r
                    .trim_start()
                    .strip_prefix('(')
                    .and_then(|r| r.split(')').next());
                inside.map(|l| {
                    l.split('"')
                        .skip(1)
                        .step_by(2)
                        .map(str::to_string)
                        .collect()
                })
            } else {
                None
            };
            out.extend(list.unwrap_or_default());
        }
        out
    }

    #[test]
    fn the_query_readers_find_what_they_should() {
        let q = r#"| where tostring(e.message) in ("A.", "B.") | where tostring(e.message) == "C." | x = tolong(e.loaded), e.status, time.e.no"#;
        assert_eq!(messages_compared(q), ["A.", "B.", "C."]);
        assert_eq!(
            field_uses("e.")(q),
            ["message", "message", "loaded", "status"]
        );
    }
}
