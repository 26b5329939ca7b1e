use super::checkpoints_due;

/// Whatever the batches — each at most `max_batch` new records, some carrying up to a
/// batch of owed corrections and one record of a cut first — no stretch between two
/// checkpoints, nor the unsigned tail, is longer than verification allows
/// (`every + max_batch`).
#[test]
fn no_stretch_between_checkpoints_passes_the_verified_bound() {
    for every in [1u64, 2, 4, 10] {
        for max_batch in [1u64, 2, 3, 8] {
            let bound = every + max_batch;
            // Every sequence of batches of length 3, each (owed, events) in range.
            let shapes: Vec<(u64, u64)> = (0..=max_batch + 1)
                .flat_map(|o| (0..=max_batch).map(move |e| (o, e)))
                .filter(|(o, e)| o + e > 0)
                .collect();
            for start in 0..every {
                for a in &shapes {
                    for b in &shapes {
                        for c in &shapes {
                            let (mut last, mut signed) = (start, 0u64);
                            for &(owed, events) in [a, b, c] {
                                let (mid, end) =
                                    checkpoints_due((last, signed), (owed, events), every, false);
                                if let Some(m) = mid {
                                    assert!(m - signed <= bound, "{every} {max_batch}");
                                    signed = m;
                                }
                                last += owed + events;
                                if end {
                                    assert!(last - signed <= bound, "{every} {max_batch}");
                                    signed = last;
                                }
                                assert!(last - signed < every + max_batch);
                            }
                        }
                    }
                }
            }
        }
    }
}
