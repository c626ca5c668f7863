//! Independent tasks spread over workers that each own a scratch (a forward pass's workspace).

use anyhow::Result;
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// `f(scratch, i)` for every `i` in `0..count`, the results in index order. With one scratch the
/// tasks run one after another on this thread; with several, one worker per scratch runs on the
/// rayon pool, each taking the next task when it finishes one (so tasks of unequal cost stay
/// balanced), and a worker left without tasks helps the others' parallel kernels. The first
/// error stops the workers from taking new tasks and is returned.
pub fn map_tasks<W: Send, R: Send>(
    scratches: &mut [W],
    count: usize,
    f: impl Fn(&mut W, usize) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let workers = scratches.len();
    let Some(first) = scratches.first_mut() else {
        anyhow::bail!("no scratch to run {count} tasks with");
    };
    if workers == 1 || count <= 1 {
        return (0..count).map(|i| f(first, i)).collect();
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let per_worker: Vec<Result<Vec<(usize, R)>>> = scratches
        .par_iter_mut()
        .map(|scratch| {
            let mut done = Vec::new();
            while !failed.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                match f(scratch, i) {
                    Ok(r) => done.push((i, r)),
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
            Ok(done)
        })
        .collect();
    let mut results = Vec::with_capacity(count);
    for done in per_worker {
        results.extend(done?);
    }
    results.sort_by_key(|&(i, _)| i);
    Ok(results.into_iter().map(|(_, r)| r).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_in_task_order_whatever_the_workers() {
        for workers in [1, 2, 3, 8] {
            let mut scratches = vec![0usize; workers];
            let out = map_tasks(&mut scratches, 50, |seen, i| {
                *seen += 1;
                Ok(i * i)
            })
            .unwrap();
            assert_eq!(out, (0..50).map(|i| i * i).collect::<Vec<_>>());
            assert_eq!(scratches.iter().sum::<usize>(), 50, "each task runs once");
        }
    }

    #[test]
    fn an_error_is_returned_and_stops_the_work() {
        let mut scratches = vec![(); 2];
        let err = map_tasks(&mut scratches, 1000, |_, i| {
            if i == 3 {
                anyhow::bail!("task {i} failed")
            }
            Ok(i)
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "task 3 failed");
        assert!(map_tasks(&mut Vec::<()>::new(), 1, |_, i| Ok(i)).is_err());
    }
}
