//! The retention rule for kept snapshots.

use super::*;

fn keep(count: usize, budget: u64) -> Keep {
    Keep {
        count,
        budget,
        bytes: Arc::new(AtomicU64::new(0)),
    }
}

#[test]
fn snapshots_beyond_the_newest_are_kept_only_while_they_fit_half_the_budget() {
    // Plenty of room: the count decides.
    assert_eq!(keep(2, 1 << 30).excess(&[70, 70, 70], 70), 1);
    assert_eq!(keep(2, 1 << 30).excess(&[70, 70], 70), 0);
    // 256 bytes of budget, 128 for snapshots: two of 70 plus the next do not fit, one does
    // not either, but the newest is never deleted.
    assert_eq!(keep(2, 256).excess(&[70, 70], 70), 1);
    assert_eq!(keep(3, 256).excess(&[70, 70, 70], 0), 2);
    assert_eq!(keep(2, 256).excess(&[70], 70), 0);
    assert_eq!(keep(2, 0).excess(&[1, 1], 1), 1);
    // Small old ones fit beside a large newest.
    assert_eq!(keep(3, 300).excess(&[10, 10, 60], 60), 0);
    assert_eq!(keep(3, 300).excess(&[30, 10, 60], 60), 1);
    assert_eq!(keep(0, 256).excess(&[], 0), 0);
}

#[cfg(target_os = "linux")]
#[test]
fn the_snapshot_thread_runs_at_a_lower_priority_than_the_thread_that_started_it() {
    /// The calling thread's nice value.
    fn own() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
    }
    let starter = own();
    let (tx, seen) = std::sync::mpsc::channel();
    let snapshotter = Snapshotter::spawn(move |_rx| tx.send(own()).unwrap());
    let nice = seen.recv().unwrap();
    snapshotter.finish();
    // Raising one's own nice value is always allowed; the starter (this test) keeps its own.
    assert_eq!(
        nice,
        (starter + SNAPSHOT_NICE).min(19),
        "snapshot thread nice {nice}"
    );
    assert_eq!(own(), starter);
}
