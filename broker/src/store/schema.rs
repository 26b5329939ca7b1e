//! The store's schema version: the `schema_version` record in [`Table::Meta`], what opening a
//! store of another version writes or refuses, and the other marks kept beside it.

use super::{Batch, Op, StoreError, Table};

/// What opening a store whose `schema_version` record holds `found` must write: nothing
/// (current), the current version (a new store, or one of version 1 to 4, whose records read
/// as version 5), or a refusal. The batch's precondition makes two brokers opening one new
/// shared store at once agree.
///
/// # Errors
/// [`StoreError::Schema`] for a version this build does not read.
pub(crate) fn schema_upgrade(found: Option<&[u8]>) -> Result<Option<Batch>, StoreError> {
    let current = SCHEMA_VERSION.to_string().into_bytes();
    let mut batch = Batch::new();
    match found {
        Some(v) if v == current.as_slice() => return Ok(None),
        None => {
            batch.push(Op::ExpectAbsent(Table::Meta, SCHEMA_KEY.into()));
        }
        // Version 1 to 4 records read as version 5 (new fields default; platform keys sealed
        // the old way are re-sealed by the broker at start, audited); the bump makes an older
        // binary refuse the store with a clear schema error instead of reading records it
        // cannot decode or open, or acting on them by rules that no longer hold.
        Some(v) if upgraded_in_place(v) => {
            tracing::info!(
                from = %String::from_utf8_lossy(v),
                to = SCHEMA_VERSION,
                "upgrading the store schema in place"
            );
            batch.push(Op::ExpectValue(Table::Meta, SCHEMA_KEY.into(), v.to_vec()));
            // Only a store from before version 4 may hold platform keys sealed the old way (a
            // version 3 one too, if an offline command of that release upgraded it and no
            // broker started on it since): the broker re-seals them at its next start, and
            // only while this mark is there.
            if v != b"4" {
                batch.push(Op::Put(
                    Table::Meta,
                    RESEAL_PLATFORM_KEYS_KEY.into(),
                    RESEAL_PENDING.to_vec(),
                ));
            }
        }
        Some(v) => {
            return Err(StoreError::Schema {
                found: String::from_utf8_lossy(v).into_owned(),
                supported: SCHEMA_VERSION,
            })
        }
    };
    batch.push(Op::Put(Table::Meta, SCHEMA_KEY.into(), current));
    Ok(Some(batch))
}

/// The key of the schema version in [`Table::Meta`].
pub(crate) const SCHEMA_KEY: &str = "schema_version";

/// The key in [`Table::Meta`] that marks a store upgraded from before schema 3, whose
/// platform keys sealed as tenant `platform`'s secrets the broker re-seals at start (and
/// then removes the mark). A store without it that holds such a key is refused: re-sealing
/// it would turn any tenant secret copied into the platform keys' table into a platform key.
pub(crate) const RESEAL_PLATFORM_KEYS_KEY: &str = "reseal_platform_keys";

/// The value of [`RESEAL_PLATFORM_KEYS_KEY`].
pub(crate) const RESEAL_PENDING: &[u8] = b"pending";

/// The key in [`Table::Meta`] that marks a store a `store migrate` is still copying into:
/// no broker opens it.
pub(crate) const MIGRATING_KEY: &str = "migrating";

/// The key in [`Table::Meta`] that marks a sled store `store migrate` copied into PostgreSQL:
/// the replicas hold every change since, so nothing opens it as its store again.
pub(crate) const MOVED_KEY: &str = "moved_to_postgres";

/// Whether a store of schema version `found` is upgraded in place to [`SCHEMA_VERSION`] at
/// the next start (the doctor says so before it happens).
pub fn upgraded_in_place(found: &[u8]) -> bool {
    matches!(found, b"1" | b"2" | b"3" | b"4")
}

/// The schema version this build reads and writes.
///
/// 2: tenants and bindings carry `revision`, bindings `generation` (version 1 stores are
/// upgraded in place on open). 3: platform keys sealed in their own AAD domain. 4: operators
/// carry `revision` (a release before it could not read an operator whose status changed, and
/// would not bump it). 5: records read as in 4, but an AWS or GCP identifier is claimed by the
/// probe that proves it, not by `binding add`, and install links name the operator who issued
/// them: a release before it, run beside this one, would activate a binding without claiming
/// its role, and rewrite links without their issuer.
pub const SCHEMA_VERSION: u32 = 5;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_schemas_are_upgraded_and_newer_refused() {
        assert!(schema_upgrade(Some(b"5")).unwrap().is_none());
        for old in [b"1", b"2", b"3", b"4"] {
            let batch = schema_upgrade(Some(old)).unwrap().unwrap();
            assert!(matches!(
                batch.ops.last(),
                Some(Op::Put(Table::Meta, _, v)) if v == b"5"
            ));
            // A store from before version 4 is marked for the platform keys' re-seal.
            let marked = batch.ops.iter().any(|op| {
                matches!(op, Op::Put(Table::Meta, k, v)
                    if k == RESEAL_PLATFORM_KEYS_KEY && v == RESEAL_PENDING)
            });
            assert_eq!(marked, old != b"4", "{:?}", String::from_utf8_lossy(old));
        }
        let new = schema_upgrade(None).unwrap().unwrap();
        assert!(!new
            .ops
            .iter()
            .any(|op| matches!(op, Op::Put(Table::Meta, k, _) if k == RESEAL_PLATFORM_KEYS_KEY)));
        assert!(matches!(
            schema_upgrade(Some(b"6")),
            Err(StoreError::Schema { supported: 5, .. })
        ));
    }
}
