//! The PostgreSQL schema and its versioned migrations.
//!
//! Migrations are applied at start-up by one broker at a time: each holds a session advisory
//! lock on its own connection while it reads `credbroker_migrations`, applies what is
//! missing (each migration and its row in one transaction) and checks the result. A database
//! migrated by a newer build (a version this build does not know) is refused, never written.

use tokio_postgres::Client;

use crate::store::StoreError;

/// The advisory lock key migrations hold (`credbroker-migrations` in ASCII, truncated).
const MIGRATION_LOCK: i64 = 0x6362_6d69_6772_6174;

/// The key of the transaction-scoped advisory lock every commit holds: commits are applied
/// one at a time across every replica, so a precondition on an absent record is as strong as
/// on sled (the primary key and the row locks make the other preconditions hold without it).
pub(super) const COMMIT_LOCK: i64 = 0x6362_636f_6d6d_6974;

/// Every migration, in order: (version, name, SQL).
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "records, change generation, leases",
        r#"
CREATE TABLE credbroker_records (
    tbl text NOT NULL,
    key text COLLATE "C" NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (tbl, key)
);
CREATE TABLE credbroker_state (
    id smallint PRIMARY KEY CHECK (id = 1),
    generation bigint NOT NULL
);
INSERT INTO credbroker_state (id, generation) VALUES (1, 0);
CREATE TABLE credbroker_leases (
    name text PRIMARY KEY,
    holder text NOT NULL,
    expires_at timestamptz NOT NULL
);
"#,
    ),
    (
        2,
        "audit chains, one per replica",
        r#"
CREATE TABLE credbroker_audit (
    replica integer NOT NULL,
    seq bigint NOT NULL,
    line text NOT NULL,
    PRIMARY KEY (replica, seq)
);
CREATE TABLE credbroker_audit_checkpoints (
    replica integer NOT NULL,
    seq bigint NOT NULL,
    line text NOT NULL,
    PRIMARY KEY (replica, seq)
);
"#,
    ),
];

/// The refusal to `what` (migrate the database, upgrade the records' schema) while
/// `running` replicas hold live leases.
pub(super) fn replicas_run(what: &str, running: i64) -> StoreError {
    StoreError::Backend(format!(
        "cannot {what}: {running} broker replica(s) of an older build run on this store; stop every replica first (a stopped replica's lease is released at once, a killed one's lapses within {} s)",
        crate::replica::LEASE_TTL.as_secs()
    ))
}

/// The newest migration this build knows.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

fn db(e: tokio_postgres::Error) -> StoreError {
    super::db_error(&e)
}

/// Applies the missing migrations under the migration lock and checks the version.
///
/// # Errors
/// [`StoreError::Schema`] when the database was migrated past this build; backend errors.
pub async fn migrate(client: &Client) -> Result<i32, StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db)?;
    let result = apply(client).await;
    // The lock is the session's: it also ends with the connection, which the caller drops.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result
}

async fn apply(client: &Client) -> Result<i32, StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS credbroker_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(db)?;
    let applied: i32 = client
        .query_one(
            "SELECT COALESCE(max(version), 0) FROM credbroker_migrations",
            &[],
        )
        .await
        .map_err(db)?
        .try_get(0)
        .map_err(db)?;
    if applied > latest() {
        return Err(StoreError::Schema {
            found: format!("database migration {applied}"),
            supported: u32::try_from(latest()).unwrap_or(0),
        });
    }
    // A database other brokers run on is not migrated under them: they read its schema once,
    // at their start, and would go on writing what this build no longer expects. The offline
    // hold is taken first, and kept until the migration ends: a broker that read the old
    // schema before this began and claims its replica id after the count below finds the
    // hold when it joins, and does not start; one that claimed first is counted.
    let holder = format!("migration:{}", std::process::id());
    let held = applied > 0 && applied < latest();
    if held {
        let claimed = client
            .query_opt(
                "INSERT INTO credbroker_leases (name, holder, expires_at) VALUES ($1, $2, now() + interval '10 minutes') \
                 ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at \
                 WHERE credbroker_leases.expires_at <= now() RETURNING holder",
                &[&crate::replica::OFFLINE, &holder],
            )
            .await
            .map_err(db)?;
        if claimed.is_none() {
            return Err(StoreError::Backend(
                "cannot migrate the database: an offline change (a KEK rotation, an operator registered offline or a store move) holds this store; start the broker when it has ended".into(),
            ));
        }
    }
    let result = migrate_held(client, applied, held).await;
    if held {
        let _ = client
            .execute(
                "DELETE FROM credbroker_leases WHERE name = $1 AND holder = $2",
                &[&crate::replica::OFFLINE, &holder],
            )
            .await;
    }
    result
}

/// [`apply`] from `applied`, the offline hold taken when `held`.
async fn migrate_held(client: &Client, applied: i32, held: bool) -> Result<i32, StoreError> {
    if held {
        let running: i64 = client
            .query_one(
                "SELECT count(*) FROM credbroker_leases WHERE starts_with(name, 'replica/') AND expires_at > now()",
                &[],
            )
            .await
            .map_err(db)?
            .try_get(0)
            .map_err(db)?;
        if running > 0 {
            return Err(replicas_run("migrate the database", running));
        }
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > applied) {
        tracing::info!(version, name, "applying database migration");
        client.batch_execute("BEGIN").await.map_err(db)?;
        let step = async {
            client.batch_execute(sql).await?;
            client
                .execute(
                    "INSERT INTO credbroker_migrations (version, name) VALUES ($1, $2)",
                    &[version, name],
                )
                .await?;
            client.batch_execute("COMMIT").await
        };
        if let Err(e) = step.await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(db(e));
        }
    }
    Ok(latest())
}
