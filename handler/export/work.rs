//! The work items on the export queue: one step of an export each (gather, fetch, compose a
//! type, finish), as tagged JSON.

use serde::{Deserialize, Serialize};

/// One queued step of an export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "lowercase")]
pub enum ExportWork {
    Gather {
        export: String,
    },
    Fetch {
        export: String,
        batch: u32,
        include: u32,
        /// The search, relative to the FHIR base URL (ids or time range filled in).
        search: String,
    },
    /// Writes the files of one resource type once no pending search can return it.
    #[serde(rename = "compose-type")]
    ComposeType {
        export: String,
        #[serde(rename = "resourceType")]
        resource_type: String,
    },
    /// Writes the manifest once every search is finished and every type composed (earlier
    /// versions queued it as `compose`).
    #[serde(alias = "compose")]
    Finish {
        export: String,
    },
}

impl ExportWork {
    pub fn export(&self) -> &str {
        match self {
            ExportWork::Gather { export }
            | ExportWork::Fetch { export, .. }
            | ExportWork::ComposeType { export, .. }
            | ExportWork::Finish { export } => export,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_items_round_trip_as_tagged_json() {
        let w = ExportWork::Fetch {
            export: "abc".into(),
            batch: 2,
            include: 1,
            search: "Patient?_id=p1".into(),
        };
        let text = serde_json::to_string(&w).unwrap();
        assert!(text.contains(r#""step":"fetch""#), "{text}");
        assert_eq!(serde_json::from_str::<ExportWork>(&text).unwrap(), w);
        assert_eq!(w.export(), "abc");
        let compose = ExportWork::ComposeType {
            export: "abc".into(),
            resource_type: "Observation".into(),
        };
        let text = serde_json::to_string(&compose).unwrap();
        assert!(
            text.contains(r#""step":"compose-type""#)
                && text.contains(r#""resourceType":"Observation""#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<ExportWork>(&text).unwrap(), compose);
        assert_eq!(
            serde_json::from_str::<ExportWork>(r#"{"step":"compose","export":"abc"}"#).unwrap(),
            ExportWork::Finish {
                export: "abc".into()
            },
            "messages queued by earlier versions finish the export"
        );
    }
}
