//! The one clock of the durable state: every time written to a table row or a report is
//! `now_rfc3339()` (UTC, RFC 3339), so rows of imports and exports compare and sort as text.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Now, as RFC 3339 text in UTC.
pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}
