//! Copying every record of one store into another, empty one (`credbroker store migrate`).
//!
//! Until the copy verified, the target holds a mark that says it is incomplete: a broker
//! refuses to open it (a half-copied store could lack operators or exclusive identifiers),
//! and a second copy cannot start. Nothing is overwritten: every copied record must be absent
//! from the target, so a record written meanwhile fails the copy.

use super::{Batch, Op, Store, StoreError, Table, MIGRATING_KEY, MOVED_KEY, SCHEMA_KEY};
use crate::progress::{Progress, Unit};

/// Records written per transaction.
const CHUNK: usize = 1000;

fn bookkeeping(table: Table, key: &str) -> bool {
    table == Table::Meta && (key == SCHEMA_KEY || key == MIGRATING_KEY)
}

/// Refuses a target holding any record (but its schema version), then marks it incomplete.
///
/// # Errors
/// When the target holds records, another copy started, or the backend fails.
pub async fn begin(target: &dyn Store, by: &str) -> Result<(), String> {
    for table in Table::ALL {
        let held = target
            .scan(*table, "")
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|(k, _)| !bookkeeping(*table, k))
            .count();
        if held > 0 {
            return Err(format!(
                "the target already holds {held} record(s) in {}: migrate only into an empty database (nothing was copied)",
                table.name()
            ));
        }
    }
    let mut mark = Batch::new();
    mark.push(Op::ExpectAbsent(Table::Meta, MIGRATING_KEY.into()))
        .push(Op::Put(
            Table::Meta,
            MIGRATING_KEY.into(),
            by.as_bytes().to_vec(),
        ));
    target
        .commit(mark)
        .await
        .map_err(|e| format!("another migration into this database started: {e}"))
}

/// Whether `store` holds any record besides its own marks ([`Table::Meta`]): a store a
/// broker ran on holds at least what set it up.
///
/// # Errors
/// When a table cannot be read.
pub async fn holds_records(store: &dyn Store) -> Result<bool, String> {
    for table in Table::ALL.iter().filter(|t| **t != Table::Meta) {
        if !store
            .scan(*table, "")
            .await
            .map_err(|e| e.to_string())?
            .is_empty()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Copies every record of every table, telling `each` every table's name and count;
/// returns the total.
///
/// # Errors
/// When a record exists in the target already, or a backend fails.
pub async fn copy_all(
    source: &dyn Store,
    target: &dyn Store,
    mut each: impl FnMut(&str, usize),
    progress: &dyn Progress,
) -> Result<usize, String> {
    let mut total = 0;
    for table in Table::ALL {
        let copied = copy_table(source, target, *table, progress).await?;
        each(table.name(), copied);
        total += copied;
    }
    Ok(total)
}

async fn copy_table(
    source: &dyn Store,
    target: &dyn Store,
    table: Table,
    progress: &dyn Progress,
) -> Result<usize, String> {
    let rows = source.scan(table, "").await.map_err(|e| e.to_string())?;
    progress.begin(
        &format!("copying {}", table.name()),
        rows.len() as u64,
        Unit::Items,
    );
    for chunk in rows.chunks(CHUNK) {
        progress.advance(chunk.len() as u64);
        let mut batch = Batch::new();
        for (key, value) in chunk {
            if !bookkeeping(table, key) {
                batch.push(Op::ExpectAbsent(table, key.clone()));
            }
            batch.push(Op::Put(table, key.clone(), value.clone()));
        }
        target.commit(batch).await.map_err(|e: StoreError| {
            format!(
                "{e}; the database is marked incomplete: drop and recreate it, then migrate again"
            )
        })?;
    }
    progress.end();
    Ok(rows.len())
}

/// Re-reads every record from both stores and compares keys and bytes; returns how many.
///
/// # Errors
/// Naming the first table and key that differ.
pub async fn verify(source: &dyn Store, target: &dyn Store) -> Result<usize, String> {
    let mut checked = 0;
    for table in Table::ALL {
        let a = source.scan(*table, "").await.map_err(|e| e.to_string())?;
        let mut b = target.scan(*table, "").await.map_err(|e| e.to_string())?;
        b.retain(|(k, _)| !(*table == Table::Meta && k == MIGRATING_KEY));
        if a != b {
            let differing = a
                .iter()
                .zip(b.iter())
                .position(|(x, y)| x != y)
                .map_or_else(
                    || "the record counts differ".to_owned(),
                    |i| {
                        // (An identifier's key only by its kind: the rest may be a live
                        // install state or a customer's identifier.)
                        format!(
                            "first difference at key {}",
                            a.get(i).map_or("-".to_owned(), |r| super::key_in_message(
                                table.name(),
                                &r.0
                            ))
                        )
                    },
                );
            return Err(format!(
                "verification failed in {}: {} record(s) in the source, {} in the target; {differing}",
                table.name(),
                a.len(),
                b.len()
            ));
        }
        checked += a.len();
    }
    Ok(checked)
}

/// Removes the mark: brokers may open the target from now on.
///
/// # Errors
/// When the backend fails.
pub async fn finish(target: &dyn Store) -> Result<(), String> {
    let mut done = Batch::new();
    done.push(Op::Delete(Table::Meta, MIGRATING_KEY.into()));
    target.commit(done).await.map_err(|e| e.to_string())
}

/// Marks the sled store a move copied from: from now on brokers and offline commands refuse
/// it, and so does a second move (two databases would each take their own changes).
///
/// # Errors
/// When the backend fails.
pub async fn mark_moved(source: &dyn Store, dir: &std::path::Path, by: &str) -> Result<(), String> {
    let mark = serde_json::json!({ "at": crate::model::now_rfc3339(), "by": by });
    // For the doctor, which reads no sled file (best effort: the store's mark refuses it).
    // Never through a link planted under its name: the move may run as root.
    let _ = super::sled_store::write_beside(dir, super::SLED_MOVED_FILE, &format!("{mark}\n"));
    let mut batch = Batch::new();
    batch
        .push(Op::ExpectAbsent(Table::Meta, MOVED_KEY.into()))
        .push(Op::Put(
            Table::Meta,
            MOVED_KEY.into(),
            mark.to_string().into_bytes(),
        ));
    source.commit(batch).await.map_err(|e| e.to_string())
}

/// When `store` is a sled store a move copied from, the refusal that names the move (when,
/// by whom, and what to do).
///
/// # Errors
/// When the store cannot be read.
pub async fn refuse_moved(store: &dyn Store, dir: &std::path::Path) -> Result<(), StoreError> {
    let Some(mark) = store.get(Table::Meta, MOVED_KEY).await? else {
        return Ok(());
    };
    let mark: serde_json::Value = serde_json::from_slice(&mark).unwrap_or_default();
    // Only what the mark may hold: it is read from a file anyone with the data directory
    // could have written.
    let field = |name: &str| -> String {
        mark[name]
            .as_str()
            .unwrap_or("?")
            .chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .take(100)
            .collect()
    };
    Err(StoreError::Backend(format!(
        "the sled store at {} was moved into PostgreSQL (`credbroker store migrate`, {} by {}): the replicas hold every change made since, so it is not opened again. Set [store] backend = \"postgres\". To go back to sled, restore the copy of the store taken before the move (it lacks every change made on PostgreSQL since)",
        dir.display(),
        field("at"),
        field("by")
    )))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::verify;
    use crate::store::records::IdentifierOwner;
    use crate::store::{Batch, SledStore, Store};

    /// A difference in the identifiers table is named by the key's kind only: the rest may
    /// be a live install state or a customer's identifier, and the message reaches a
    /// terminal and logs.
    #[tokio::test]
    async fn a_difference_names_no_identifier() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let source = Arc::new(SledStore::open(a.path()).unwrap());
        let target = Arc::new(SledStore::open(b.path()).unwrap());
        for (store, tenant) in [(&source, "t1"), (&target, "t2")] {
            let mut batch = Batch::new();
            batch.claim_identifier(
                "github_installation:SecretLookingValue",
                &IdentifierOwner {
                    tenant: tenant.into(),
                    binding: None,
                },
            );
            store.commit(batch).await.unwrap();
        }
        let err = verify(source.as_ref(), target.as_ref()).await.unwrap_err();
        assert!(err.contains("first difference at key exclusive"), "{err}");
        assert!(!err.contains("SecretLookingValue"), "{err}");
    }
}
