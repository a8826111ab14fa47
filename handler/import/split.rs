//! Cutting a Bundle into batches of at most N entries, in dependency order: an entry comes
//! after the entries of the same Bundle it references, so a referenced resource is on the
//! server before (or with) what points at it. Reference cycles are broken in upload order.
//!
//! Everything here works on entry positions and on dependencies read from the file alone
//! (fullUrls, ids, ifNoneExist criteria), never on what the server answered: a resumed work
//! item must cut the same pieces as the first try, or its checkpoint would name other entries.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

/// Orders entry positions so dependencies come first (stable: ties keep upload order).
/// `deps[i]` lists the positions entry `i` references (repeats and self-references are fine).
pub fn dependency_order(deps: &[Vec<usize>]) -> Vec<usize> {
    let n = deps.len();
    let edges = || {
        deps.iter()
            .enumerate()
            .flat_map(|(i, ds)| ds.iter().map(move |&j| (i, j)))
            .filter(|&(i, j)| j != i && j < n)
    };
    // Who waits on each entry, as one array sliced per entry (a Bundle has thousands).
    let mut waiting_on = vec![0usize; n];
    let mut start = vec![0usize; n + 1];
    for (i, j) in edges() {
        waiting_on[i] += 1;
        start[j + 1] += 1;
    }
    for k in 0..n {
        start[k + 1] += start[k];
    }
    let mut dependents = vec![0usize; start[n]];
    let mut fill = start.clone();
    for (i, j) in edges() {
        dependents[fill[j]] = i;
        fill[j] += 1;
    }
    let mut ready: BinaryHeap<Reverse<usize>> = (0..n)
        .filter(|&i| waiting_on[i] == 0)
        .map(Reverse)
        .collect();
    let mut done = vec![false; n];
    // Every entry before this one is done (a cycle releases the earliest entry still waiting).
    let mut first_waiting = 0;
    let mut order = Vec::with_capacity(n);
    while order.len() < n {
        let next = match ready.pop() {
            Some(Reverse(i)) => i,
            None => {
                while done[first_waiting] {
                    first_waiting += 1;
                }
                first_waiting
            }
        };
        if done[next] {
            continue;
        }
        done[next] = true;
        order.push(next);
        for &d in &dependents[start[next]..start[next + 1]] {
            waiting_on[d] = waiting_on[d].saturating_sub(1);
            if waiting_on[d] == 0 && !done[d] {
                ready.push(Reverse(d));
            }
        }
    }
    order
}

/// Dependency order, then pieces of at most `max` entry positions.
pub fn split(deps: &[Vec<usize>], max: usize) -> Vec<Vec<usize>> {
    dependency_order(deps)
        .chunks(max.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}

/// For each piece, the earlier pieces holding entries it references: a piece may be sent as
/// soon as those are loaded. Only earlier pieces count (a reference cycle was broken by the
/// ordering), so waiting on them can never deadlock.
pub fn piece_dependencies(pieces: &[Vec<usize>], deps: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let mut home = vec![usize::MAX; deps.len()];
    for (p, piece) in pieces.iter().enumerate() {
        for &i in piece {
            home[i] = p;
        }
    }
    pieces
        .iter()
        .enumerate()
        .map(|(p, piece)| {
            let waits: BTreeSet<usize> = piece
                .iter()
                .flat_map(|&i| deps[i].iter())
                .filter_map(|&j| home.get(j).copied())
                .filter(|&q| q < p)
                .collect();
            waits.into_iter().collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referenced_entries_come_first_and_pieces_respect_the_limit() {
        // 0, 1: Observations listed before the Encounter (2) and Patient (3) they reference.
        let deps = vec![vec![3, 2], vec![3, 2], vec![3], vec![], vec![3]];
        assert_eq!(split(&deps, 2), vec![vec![3, 2], vec![0, 1], vec![4]]);
    }

    #[test]
    fn every_entry_appears_once_even_with_cycles() {
        let deps = vec![vec![1], vec![0], vec![0]];
        assert_eq!(split(&deps, 500), vec![vec![0, 1, 2]]);
    }

    #[test]
    fn pieces_wait_only_for_earlier_pieces_they_reference() {
        // Patient 0, Encounter 1 -> 0, Observations 2 -> 0,1 and 3 -> 1, Organizations 4, 5.
        let deps = vec![vec![], vec![0], vec![0, 1], vec![1], vec![], vec![]];
        let pieces = split(&deps, 2);
        assert_eq!(pieces, vec![vec![0, 1], vec![2, 3], vec![4, 5]]);
        assert_eq!(
            piece_dependencies(&pieces, &deps),
            vec![vec![], vec![0], vec![]]
        );
    }

    #[test]
    fn random_graphs_order_every_entry_once_and_dependencies_first() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |m: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % m as u64) as usize
        };
        for round in 0..200 {
            let n = 1 + next(60);
            let cyclic = round % 4 == 0;
            // Acyclic: entries reference only later positions (as Observations reference the
            // Patient listed after them); every fourth graph may also reference backwards.
            let deps: Vec<Vec<usize>> = (0..n)
                .map(|i| {
                    (0..next(4))
                        .map(|_| if cyclic { next(n) } else { i + next(n - i) })
                        .collect()
                })
                .collect();
            let order = dependency_order(&deps);
            let mut seen = order.clone();
            seen.sort_unstable();
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "{deps:?}");
            if !cyclic {
                let mut at = vec![0; n];
                for (k, &i) in order.iter().enumerate() {
                    at[i] = k;
                }
                for (i, ds) in deps.iter().enumerate() {
                    for &j in ds.iter().filter(|&&j| j != i) {
                        assert!(at[j] < at[i], "{j} before {i} in {order:?} for {deps:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn no_dependencies_keeps_upload_order() {
        let deps = vec![Vec::new(); 7];
        let pieces = split(&deps, 3);
        assert_eq!(
            pieces.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![3, 3, 1]
        );
        assert_eq!(pieces[2], vec![6]);
    }
}
