//! The definition of an export-all (`$alt-export-all`, fhir-loader's format): every resource of
//! one type, optionally limited to a `_lastUpdated` range, and optionally fetched as several
//! parallel searches over time windows balanced by `_summary=count`:
//! `{"_type": "Observation", "_since": "2024-01-01T00:00:00Z", "_till": "2025-01-01",
//!   "_parallelizationCount": 8, "_parallelSearchInSecondsInterval": 3600}`.
//!
//! Unlike fhir-loader, an unknown field, a second type, an unparseable date or another server
//! is refused with a reason instead of being ignored, and a parallel export fixes its end
//! (`_till`, default: when it started) so that a repeated planning step plans the same windows.

use serde_json::{Map, Value, json};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime, PrimitiveDateTime, UtcOffset};
use url::Url;

use super::definition::is_resource_type;

/// Most parallel searches one export-all may ask for (fhir-loader's limit).
pub const MAX_PARALLELIZATION: u64 = 100;
/// Most time windows counted while planning; a longer range needs a larger interval.
pub const MAX_WINDOWS: u64 = 10_000;

const FIELDS: [&str; 7] = [
    "_type",
    "_since",
    "_till",
    "_parallelizationCount",
    "_parallelSearchInSecondsInterval",
    "_baseAddress",
    "_audience",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllDefinition {
    pub resource_type: String,
    /// Resources last updated at or after this instant.
    pub since: Option<OffsetDateTime>,
    /// Resources last updated before this instant.
    pub till: Option<OffsetDateTime>,
    pub parallel: Option<Parallel>,
}

/// How a parallel export-all cuts its range: into windows of `window_secs`, counted and merged
/// into about `searches` searches of equal size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parallel {
    pub searches: u64,
    pub window_secs: u64,
}

impl AllDefinition {
    /// Parses and checks a definition; `now` ends a parallel export given no `_till`, and
    /// `audience` is the token audience a given `_audience` must match.
    pub fn parse(
        body: &str,
        base: &Url,
        audience: &str,
        now: OffsetDateTime,
    ) -> Result<Self, String> {
        let value: Value = serde_json::from_str(body)
            .map_err(|e| format!("the export-all definition is not valid JSON: {e}"))?;
        let Some(object) = value.as_object() else {
            return Err("the export-all definition must be a JSON object with at least _type, e.g. {\"_type\": \"Observation\"}".into());
        };
        if let Some(unknown) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(format!(
                "{unknown:?} is not an export-all field; the fields are {}",
                FIELDS.join(", ")
            ));
        }
        let resource_type = resource_type(object)?;
        let since = instant(object, "_since")?;
        let mut till = instant(object, "_till")?;
        check_same_server(object, base, audience)?;
        let searches = whole_number(object, "_parallelizationCount")?;
        let window_secs = whole_number(object, "_parallelSearchInSecondsInterval")?;
        let parallel = match (since, searches, window_secs) {
            (_, None, None) => None,
            (Some(since), Some(searches), Some(window_secs)) => {
                if !(1..=MAX_PARALLELIZATION).contains(&searches) {
                    return Err(format!(
                        "_parallelizationCount is {searches}; give 1 to {MAX_PARALLELIZATION}"
                    ));
                }
                if window_secs == 0 {
                    return Err("_parallelSearchInSecondsInterval must be at least 1".into());
                }
                let end = *till.get_or_insert(now);
                let span = (end - since).whole_seconds().max(0) as u64;
                if span.div_ceil(window_secs) > MAX_WINDOWS {
                    return Err(format!(
                        "_since to _till is {span} seconds: with _parallelSearchInSecondsInterval {window_secs} that is more than {MAX_WINDOWS} windows to count; give an interval of at least {}",
                        span.div_ceil(MAX_WINDOWS)
                    ));
                }
                Some(Parallel {
                    searches,
                    window_secs,
                })
            }
            _ => {
                return Err("a parallel export-all needs _since, _parallelizationCount and _parallelSearchInSecondsInterval together (or none of the last two for one search)".into());
            }
        };
        if let (Some(since), Some(till)) = (since, till)
            && since >= till
        {
            return Err(format!(
                "_since ({}) is not before _till ({}): nothing would be exported",
                format_instant(since),
                format_instant(till)
            ));
        }
        Ok(AllDefinition {
            resource_type,
            since,
            till,
            parallel,
        })
    }

    /// The definition as stored with the export (`_till` resolved) and echoed in its status.
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("_type".into(), json!(self.resource_type));
        if let Some(since) = self.since {
            object.insert("_since".into(), json!(format_instant(since)));
        }
        if let Some(till) = self.till {
            object.insert("_till".into(), json!(format_instant(till)));
        }
        if let Some(p) = self.parallel {
            object.insert("_parallelizationCount".into(), json!(p.searches));
            object.insert(
                "_parallelSearchInSecondsInterval".into(),
                json!(p.window_secs),
            );
        }
        Value::Object(object)
    }

    /// The relative search for resources last updated in `[since, till)` (either end open).
    pub fn search(&self, since: Option<OffsetDateTime>, till: Option<OffsetDateTime>) -> String {
        let mut search = self.resource_type.clone();
        let mut separator = '?';
        for (prefix, bound) in [("ge", since), ("lt", till)] {
            if let Some(instant) = bound {
                search.push(separator);
                search.push_str(&format!("_lastUpdated={prefix}{}", format_instant(instant)));
                separator = '&';
            }
        }
        search
    }
}

/// True when a definition body is an export-all's (it names `_type`); used for trigger files.
pub fn is_export_all(body: &str) -> bool {
    serde_json::from_str::<Value>(body)
        .ok()
        .is_some_and(|v| v.get("_type").is_some())
}

/// An instant as FHIR and URLs take it: UTC, `Z`, fractions of a second only when present.
pub fn format_instant(instant: OffsetDateTime) -> String {
    instant
        .to_offset(UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Parses `2024-01-01T00:00:00Z`, `2024-01-01T02:00:00+02:00`, `2024-01-01T00:00:00` (UTC) or
/// `2024-01-01` (midnight UTC), to the millisecond (the precision FHIR servers store and
/// compare reliably; finer fractions are dropped).
pub fn parse_instant(text: &str) -> Option<OffsetDateTime> {
    let t = parse_exact(text.trim())?;
    t.replace_millisecond(t.millisecond()).ok()
}

fn parse_exact(text: &str) -> Option<OffsetDateTime> {
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Some(t);
    }
    let naive = format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]"
    );
    if let Ok(t) = PrimitiveDateTime::parse(text, naive) {
        return Some(t.assume_utc());
    }
    let day = format_description!("[year]-[month]-[day]");
    Date::parse(text, day)
        .ok()
        .map(|d| d.midnight().assume_utc())
}

fn resource_type(object: &Map<String, Value>) -> Result<String, String> {
    let Some(text) = object.get("_type").and_then(Value::as_str).map(str::trim) else {
        return Err(
            "_type is missing: give the one resource type to export, e.g. \"Observation\"".into(),
        );
    };
    if text.contains(',') {
        return Err(format!(
            "_type {text:?} names several types; an export-all exports one type: start one per type"
        ));
    }
    if !is_resource_type(text) {
        return Err(format!(
            "_type {text:?} is not a resource type (e.g. \"Observation\")"
        ));
    }
    Ok(text.to_string())
}

fn instant(object: &Map<String, Value>, name: &str) -> Result<Option<OffsetDateTime>, String> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => parse_instant(s).map(Some).ok_or_else(|| {
            format!("{name} {s:?} is not a date or instant; write e.g. \"2024-01-01\" or \"2024-01-01T00:00:00Z\"")
        }),
        Some(other) => Err(format!(
            "{name} must be a string such as \"2024-01-01T00:00:00Z\", not {other}"
        )),
    }
}

/// A positive whole number, given as a JSON number or a string of digits.
fn whole_number(object: &Map<String, Value>, name: &str) -> Result<Option<u64>, String> {
    let value = match object.get(name) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        Some(_) => None,
    };
    value
        .map(Some)
        .ok_or_else(|| format!("{name} must be a whole number"))
}

/// `_baseAddress` and `_audience` are accepted only when they name the configured server: an
/// export reads from one FHIR server, with one identity.
fn check_same_server(
    object: &Map<String, Value>,
    base: &Url,
    audience: &str,
) -> Result<(), String> {
    let trimmed = |s: &str| s.trim().trim_end_matches('/').to_string();
    if let Some(given) = object.get("_baseAddress").and_then(Value::as_str)
        && trimmed(given) != trimmed(base.as_str())
    {
        return Err(format!(
            "_baseAddress {given:?} is not this loader's FHIR server {base}; exports read only from FHIRBULK_FHIR_URL (leave _baseAddress out)"
        ));
    }
    if let Some(given) = object.get("_audience").and_then(Value::as_str)
        && trimmed(given) != trimmed(audience)
    {
        return Err(format!(
            "_audience {given:?} is not the configured token audience {audience:?}; it is set by FHIRBULK_FHIR_AUDIENCE (leave _audience out)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const AUDIENCE: &str = "http://127.0.0.1:8090";
    const NOW: OffsetDateTime = datetime!(2026-01-01 00:00:00 UTC);

    fn base() -> Url {
        Url::parse("http://127.0.0.1:8090/fhir").unwrap()
    }

    fn parse(body: &str) -> Result<AllDefinition, String> {
        AllDefinition::parse(body, &base(), AUDIENCE, NOW)
    }

    #[test]
    fn a_parallel_definition_fixes_its_end_and_round_trips() {
        let d = parse(
            r#"{"_type":"Observation","_since":"2025-12-31","_parallelizationCount":"4",
                "_parallelSearchInSecondsInterval":3600,"_baseAddress":"http://127.0.0.1:8090/fhir/",
                "_audience":"http://127.0.0.1:8090"}"#,
        )
        .unwrap();
        assert_eq!(d.resource_type, "Observation");
        assert_eq!(d.since, Some(datetime!(2025-12-31 00:00:00 UTC)));
        assert_eq!(d.till, Some(NOW), "a parallel export ends when it started");
        assert_eq!(
            d.parallel,
            Some(Parallel {
                searches: 4,
                window_secs: 3600
            })
        );
        let stored = d.to_json().to_string();
        let later = AllDefinition::parse(&stored, &base(), AUDIENCE, NOW + time::Duration::DAY);
        assert_eq!(
            later.unwrap(),
            d,
            "the stored definition plans the same windows"
        );
    }

    #[test]
    fn searches_carry_only_the_bounds_given() {
        let d = parse(r#"{"_type":"Patient"}"#).unwrap();
        assert_eq!(d.parallel, None);
        assert_eq!(d.search(d.since, d.till), "Patient");
        let d = parse(r#"{"_type":"Patient","_since":"2024-01-01T02:00:00+02:00"}"#).unwrap();
        assert_eq!(
            d.search(d.since, d.till),
            "Patient?_lastUpdated=ge2024-01-01T00:00:00Z"
        );
        let d = parse(r#"{"_type":"Patient","_till":"2024-01-01T00:00:00.250999"}"#).unwrap();
        assert_eq!(
            d.search(d.since, d.till),
            "Patient?_lastUpdated=lt2024-01-01T00:00:00.25Z"
        );
        assert!(is_export_all(r#"{"_type":"Patient"}"#));
        assert!(!is_export_all(r#"{"query":"Patient"}"#));
    }

    #[test]
    fn every_bad_definition_says_what_is_wrong() {
        let cases = [
            ("nope", "not valid JSON"),
            ("[]", "must be a JSON object"),
            ("{}", "_type is missing"),
            (r#"{"_type":"Patient,Observation"}"#, "one type"),
            (r#"{"_type":"patient"}"#, "is not a resource type"),
            (
                r#"{"_type":"Patient","_sinc":"2024"}"#,
                "is not an export-all field",
            ),
            (
                r#"{"_type":"Patient","_since":"last week"}"#,
                "is not a date",
            ),
            (r#"{"_type":"Patient","_since":2024}"#, "must be a string"),
            (
                r#"{"_type":"Patient","_since":"2025-01-01","_till":"2024-01-01"}"#,
                "is not before _till",
            ),
            (
                r#"{"_type":"Patient","_parallelizationCount":4,"_parallelSearchInSecondsInterval":60}"#,
                "needs _since",
            ),
            (
                r#"{"_type":"Patient","_since":"2025-01-01","_parallelizationCount":4}"#,
                "needs _since",
            ),
            (
                r#"{"_type":"Patient","_since":"2025-01-01","_parallelizationCount":101,"_parallelSearchInSecondsInterval":60}"#,
                "give 1 to 100",
            ),
            (
                r#"{"_type":"Patient","_since":"2025-01-01","_parallelizationCount":4,"_parallelSearchInSecondsInterval":0}"#,
                "at least 1",
            ),
            (
                r#"{"_type":"Patient","_since":"2025-01-01","_parallelizationCount":4,"_parallelSearchInSecondsInterval":1}"#,
                "give an interval of at least 3154",
            ),
            (
                r#"{"_type":"Patient","_parallelizationCount":-1}"#,
                "whole number",
            ),
            (
                r#"{"_type":"Patient","_baseAddress":"https://other.example.com/fhir"}"#,
                "is not this loader's FHIR server",
            ),
            (
                r#"{"_type":"Patient","_audience":"https://other.example.com"}"#,
                "FHIRBULK_FHIR_AUDIENCE",
            ),
        ];
        for (body, expected) in cases {
            let err = parse(body).unwrap_err();
            assert!(err.contains(expected), "{body}: {err}");
        }
    }
}
