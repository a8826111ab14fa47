//! Cutting a prepared Bundle into batches of at most N entries, in dependency order: an entry
//! comes after the entries of the same Bundle it references, so when pieces are sent one after
//! another a referenced resource is on the server before (or with) what points at it.
//! Reference cycles are broken in original order.

use std::collections::{BTreeSet, HashMap};

use super::transform::PreparedEntry;

/// Orders entries so dependencies come first (stable: ties keep upload order).
pub fn dependency_order(entries: Vec<PreparedEntry>) -> Vec<PreparedEntry> {
    let position: HashMap<String, usize> = entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| e.target.clone().map(|t| (t, i)))
        .collect();
    let n = entries.len();
    let mut waiting_on = vec![0usize; n];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, e) in entries.iter().enumerate() {
        for dep in &e.depends_on {
            if let Some(&j) = position.get(dep)
                && j != i
            {
                waiting_on[i] += 1;
                dependents[j].push(i);
            }
        }
    }
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| waiting_on[i] == 0).collect();
    let mut done = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while order.len() < n {
        let next = match ready.pop_first() {
            Some(i) => i,
            // A cycle: release the earliest entry still waiting.
            None => (0..n).find(|&i| !done[i]).expect("entries remain"),
        };
        if done[next] {
            continue;
        }
        done[next] = true;
        order.push(next);
        for &d in &dependents[next] {
            waiting_on[d] = waiting_on[d].saturating_sub(1);
            if waiting_on[d] == 0 && !done[d] {
                ready.insert(d);
            }
        }
    }
    let mut slots: Vec<Option<PreparedEntry>> = entries.into_iter().map(Some).collect();
    order
        .into_iter()
        .map(|i| slots[i].take().expect("each entry once"))
        .collect()
}

/// Dependency order, then pieces of at most `max` entries.
pub fn split(entries: Vec<PreparedEntry>, max: usize) -> Vec<Vec<PreparedEntry>> {
    let ordered = dependency_order(entries);
    let mut pieces = Vec::with_capacity(ordered.len().div_ceil(max.max(1)));
    let mut current = Vec::with_capacity(max.min(ordered.len()));
    for e in ordered {
        current.push(e);
        if current.len() == max {
            pieces.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: usize, target: &str, deps: &[&str]) -> PreparedEntry {
        PreparedEntry {
            index,
            target: Some(target.to_string()),
            json: String::new(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn targets(pieces: &[Vec<PreparedEntry>]) -> Vec<Vec<String>> {
        pieces
            .iter()
            .map(|p| p.iter().map(|e| e.target.clone().unwrap()).collect())
            .collect()
    }

    #[test]
    fn referenced_resources_come_first_and_pieces_respect_the_limit() {
        // Observations listed before the Encounter and Patient they reference.
        let entries = vec![
            entry(0, "Observation/o1", &["Patient/p", "Encounter/e"]),
            entry(1, "Observation/o2", &["Patient/p", "Encounter/e"]),
            entry(2, "Encounter/e", &["Patient/p", "Practitioner/x"]),
            entry(3, "Patient/p", &[]),
            entry(4, "Condition/c", &["Patient/p"]),
        ];
        let pieces = split(entries, 2);
        assert_eq!(
            targets(&pieces),
            vec![
                vec!["Patient/p", "Encounter/e"],
                vec!["Observation/o1", "Observation/o2"],
                vec!["Condition/c"],
            ]
        );
    }

    #[test]
    fn every_entry_appears_once_even_with_cycles() {
        let entries = vec![
            entry(0, "A/1", &["B/1"]),
            entry(1, "B/1", &["A/1"]),
            entry(2, "C/1", &["A/1"]),
        ];
        let pieces = split(entries, 500);
        assert_eq!(targets(&pieces), vec![vec!["A/1", "B/1", "C/1"]]);
    }

    #[test]
    fn no_dependencies_keeps_upload_order() {
        let entries: Vec<_> = (0..7).map(|i| entry(i, &format!("P/{i}"), &[])).collect();
        let pieces = split(entries, 3);
        assert_eq!(
            pieces.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![3, 3, 1]
        );
        assert_eq!(pieces[2][0].index, 6);
    }
}
