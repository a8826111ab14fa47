//! Cutting a search that turns out long. A search of a batch of patients is paged one page
//! after another, and on a server that pages by offset each page costs more than the one
//! before: a batch whose first page shows many pages ahead (`total` ÷ entries per page above
//! `FHIRBULK_EXPORT_SPLIT_PAGES`) is cut into searches of fewer patients, which run side by
//! side. How many ids a search should name depends on the data and the page size, so it is
//! decided here, from what the server answered, not in advance.
//!
//! The parts partition the batch's ids, so together they return what the batch would have;
//! a resource two of them return (one that names two patients) is written once, as compose
//! removes duplicates by id. A part is a work item of its own, keyed by its parent's batch
//! (`child_batch`); parts are not cut again. A redelivered parent cuts the same parts, whose
//! rows then exist already.

use super::definition::IDS_PLACEHOLDER;

/// Batch numbers of parts start here (`part + 1` times it, plus the parent's batch).
pub const CHILD_BATCH_BASE: u32 = 100_000_000;
/// Most parts one search is cut into.
pub const MAX_PARTS: usize = 40;

/// A search as an include template filled with a batch of patient ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdSearch {
    prefix: String,
    ids: Vec<String>,
    suffix: String,
}

impl IdSearch {
    /// The ids `search` was made of by filling `template`'s one `$IDS`; `None` when it was
    /// not (or the template has another number of placeholders).
    pub fn of(template: &str, search: &str) -> Option<Self> {
        let (prefix, suffix) = template.split_once(IDS_PLACEHOLDER)?;
        if suffix.contains(IDS_PLACEHOLDER) {
            return None;
        }
        let ids = search.strip_prefix(prefix)?.strip_suffix(suffix)?;
        Some(IdSearch {
            prefix: prefix.to_string(),
            ids: ids.split(',').map(str::to_string).collect(),
            suffix: suffix.to_string(),
        })
    }

    pub fn ids(&self) -> usize {
        self.ids.len()
    }

    /// The search cut into `parts` searches (at most one per id) over consecutive ids.
    pub fn parts(&self, parts: usize) -> Vec<String> {
        let parts = parts.clamp(1, self.ids.len().max(1));
        let per_part = self.ids.len().div_ceil(parts);
        self.ids
            .chunks(per_part.max(1))
            .map(|ids| format!("{}{}{}", self.prefix, ids.join(","), self.suffix))
            .collect()
    }
}

/// Into how many parts a search with `pages` pages is cut so that each has about
/// `split_pages`; 1 (not cut) when it has no more than that.
pub fn parts_wanted(pages: u64, split_pages: usize) -> usize {
    if split_pages == 0 || pages <= split_pages as u64 {
        return 1;
    }
    (pages.div_ceil(split_pages as u64) as usize).min(MAX_PARTS)
}

/// The pages a search has, from its first: `total` over the entries on a page.
pub fn pages(total: Option<u64>, entries: u64) -> Option<u64> {
    let total = total?;
    (entries > 0).then(|| total.div_ceil(entries))
}

/// The batch number of part `part` of the search in batch `parent`.
pub fn child_batch(parent: u32, part: usize) -> u32 {
    CHILD_BATCH_BASE * (part as u32 + 1) + parent
}

/// Whether a batch is a part of a search already cut.
pub fn is_part(batch: u32) -> bool {
    batch >= CHILD_BATCH_BASE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_is_cut_into_searches_over_its_ids() {
        let s = IdSearch::of(
            "Observation?patient=$IDS&_count=50",
            "Observation?patient=a,b,c,d,e&_count=50",
        )
        .unwrap();
        assert_eq!(s.ids(), 5);
        assert_eq!(
            s.parts(2),
            [
                "Observation?patient=a,b,c&_count=50",
                "Observation?patient=d,e&_count=50"
            ]
        );
        assert_eq!(s.parts(9).len(), 5, "at most one per id");
        assert_eq!(
            IdSearch::of("Patient?_id=$IDS", "Encounter?patient=a"),
            None
        );
        assert_eq!(IdSearch::of("A?x=$IDS&y=$IDS", "A?x=a&y=a"), None);
    }

    #[test]
    fn long_searches_are_cut_to_a_few_pages_each() {
        assert_eq!(pages(Some(800), 50), Some(16));
        assert_eq!(pages(None, 50), None);
        assert_eq!(pages(Some(10), 0), None);
        assert_eq!(parts_wanted(16, 4), 4);
        assert_eq!(parts_wanted(4, 4), 1);
        assert_eq!(parts_wanted(17, 0), 1, "0: never cut");
        assert_eq!(parts_wanted(10_000, 4), MAX_PARTS);
        assert!(is_part(child_batch(12, 0)) && !is_part(12));
        assert_ne!(child_batch(12, 0), child_batch(12, 1));
    }
}
