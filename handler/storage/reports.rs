//! Where the reports of processed input files go (an import's result JSON and error report, a
//! trigger file's start answer): a container of their own, `reports` by default, named by the
//! input's container and blob and the id of that upload's processing. No name uploaded to an
//! input container can collide with a report, and two versions of one file keep two reports.

/// Blob names are at most 1,024 characters (Azure Storage).
const MAX_BLOB_NAME: usize = 1024;

/// The blob in the reports container holding `file` (`result.json`, `errors.ndjson` …) of the
/// processing `id` of `container/blob`: `<container>/<blob>/<id>/<file>`, or
/// `<container>/<id>/<file>` when a blob name is too long to be part of it.
pub fn report_blob(container: &str, blob: &str, id: &str, file: &str) -> String {
    let full = format!("{container}/{blob}/{id}/{file}");
    if full.len() <= MAX_BLOB_NAME {
        full
    } else {
        format!("{container}/{id}/{file}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_named_by_input_and_processing() {
        assert_eq!(
            report_blob("bundles", "dir/coll.json", "0a1b2c3d4e5f", "result.json"),
            "bundles/dir/coll.json/0a1b2c3d4e5f/result.json"
        );
        let long = "x".repeat(1100);
        assert_eq!(
            report_blob("bundles", &long, "0a1b2c3d4e5f", "errors.ndjson"),
            "bundles/0a1b2c3d4e5f/errors.ndjson"
        );
    }
}
