//! `credbroker store migrate --from sled --to postgres`: the offline move of a single broker's
//! store into the database several replicas will share.
//!
//! The daemon must be stopped (sled's directory lock says so otherwise). Every record of
//! every table is copied byte for byte — sealed values stay ciphertext, nothing is opened —
//! into a database that holds no records yet (it is refused otherwise: nothing is merged or
//! overwritten). Counts are printed per table, then a verification pass re-reads every record
//! from both stores and compares the bytes. The move is audited in the file log, which stays
//! where it is with the sled store: `audit verify` keeps verifying it beside the database's
//! chains.

use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};

use super::offline::{cli_actor, local_config, LocalArgs};
use super::runtime;
use crate::store::{migrate, PgStore, SledStore};

#[derive(Subcommand, Debug)]
pub enum StoreCmd {
    /// Copy every record of the sled store into the PostgreSQL database named by the same
    /// config's [store] url or url_env (daemon stopped), then verify the copy.
    Migrate(MigrateArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Source {
    /// The embedded store (`[store] path`, default `<data_dir>/store`).
    Sled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// The database of `[store] url` / `url_env`.
    Postgres,
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    #[command(flatten)]
    local: LocalArgs,
    /// The store to copy from.
    #[arg(long, value_enum)]
    from: Source,
    /// The store to copy into (it must hold no records).
    #[arg(long, value_enum)]
    to: Target,
}

/// Runs a `store` subcommand.
///
/// # Errors
/// When a store cannot be opened, the target holds records, or the copy does not verify.
pub fn run_store(cmd: StoreCmd) -> Result<ExitCode, String> {
    match cmd {
        StoreCmd::Migrate(args) => migrate(&args),
    }
}

fn migrate(args: &MigrateArgs) -> Result<ExitCode, String> {
    let (Source::Sled, Target::Postgres) = (args.from, args.to);
    let config = local_config(&args.local)?;
    let dir = config
        .store
        .path
        .clone()
        .unwrap_or_else(|| config.data_dir.join("store"));
    let actor = cli_actor();
    runtime()?.block_on(async {
        let target = std::sync::Arc::new(
            PgStore::open(&config.store)
                .await
                .map_err(|e| format!("PostgreSQL store: {e}"))?,
        );
        let hold = crate::replica::hold_offline(target.clone(), "store move").await?;
        let result = async {
        // Opening a sled store creates one where there is none: a config or data directory
        // that names another path than the daemon's would copy an empty store, audited as
        // the move, and leave the brokers on PostgreSQL with no operator records. Both are
        // refused before anything is written to the database.
        if !dir.is_dir() {
            return Err(format!(
                "no sled store at {}: [store] path (or the data directory's store/) names none; nothing was copied",
                dir.display()
            ));
        }
        let source = SledStore::open(&dir).map_err(|e| format!("sled store: {e}"))?;
        // A second move would leave two databases each taking its own changes.
        migrate::refuse_moved(&source, &dir)
            .await
            .map_err(|e| format!("{e}; nothing was copied"))?;
        // The move is recorded in the sled store's own log: never in a new chain begun over
        // a removed one.
        crate::broker::refuse_a_lost_log_offline(&config, &source).await?;
        if !migrate::holds_records(&source).await? {
            return Err(format!(
                "the sled store at {} holds no records (no tenant, operator, binding or any other): it is not the store a broker ran on; nothing was copied (a new deployment starts on PostgreSQL directly)",
                dir.display()
            ));
        }
        // A move that stopped between finishing the database and marking this store left
        // both usable: a database that holds exactly this store's records (a broker that
        // ran on it since would have changed them) only needs the mark.
        if migrate::holds_records(target.as_ref()).await?
            && migrate::verify(&source, target.as_ref()).await.is_ok()
        {
            migrate::mark_moved(&source, &dir, &actor).await?;
            println!(
                "the database already holds this store's records, identical (a move that stopped before marking the sled store): the sled store at {} is now marked moved; nothing was copied",
                dir.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        // A database a broker ran on whose records were since deleted still holds its
        // chains: the moved broker, replica 1, would continue another history's chain.
        let chains = {
            let client = crate::audit::chains::connect(&config.store).await?;
            crate::audit::chains::replicas(&client).await?
        };
        if !chains.is_empty() {
            return Err(format!(
                "the database already holds the audit chain(s) of replica(s) {chains:?}: a broker ran on it. Migrate only into a new database (nothing was copied)"
            ));
        }
        let target = target.as_ref();
        migrate::begin(target, &actor).await?;
        let started = std::time::Instant::now();
        let bar = super::progress::Bar::new(super::output::Output::shows_progress(None));
        let total = migrate::copy_all(
            &source,
            target,
            |table, copied| {
                println!("copied {copied:>9} {table}");
            },
            &bar,
        )
        .await?;
        println!(
            "copied {total} records in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let checked = migrate::verify(&source, target).await?;
        println!("verified {checked} records: every key and value identical in both stores");
        // Still this command's store, before the move is recorded and finished.
        hold.confirm().await.map_err(|e| {
            format!("{e}; the database holds the copy and stays marked incomplete (brokers refuse it): drop and recreate it, then migrate again")
        })?;
        // On the record before brokers may open the database.
        audit_migration(&config, &actor, total).await?;
        migrate::finish(target).await?;
        // Still holding the sled store's lock: no broker started on it meanwhile.
        migrate::mark_moved(&source, &dir, &actor).await.map_err(|e| {
            format!("the database holds the verified copy and brokers may open it, but the sled store at {} could not be marked moved ({e}): start no broker on it again", dir.display())
        })?;
        println!(
            "the sled store ({}, now marked moved: nothing opens it as a store again) and its file audit log ({}) stay where they are; set [store] backend = \"postgres\" and start the replicas",
            dir.display(),
            config.audit_dir().display()
        );
        Ok(ExitCode::SUCCESS)
        }
        .await;
        hold.release().await;
        result
    })
}

/// Appends the move to the file log, the last record of the single broker's chain.
async fn audit_migration(
    config: &crate::config::Config,
    actor: &str,
    total: usize,
) -> Result<(), String> {
    let settings = crate::broker::BrokerSettings::from_config(config);
    let signer =
        crate::keys::AuditSigner::load(&config.audit_key_file()).map_err(|e| e.to_string())?;
    let log = crate::audit::AuditLog::open(settings.audit, signer).map_err(|e| e.to_string())?;
    let event = crate::audit::AuditEvent {
        kind: "admin".into(),
        action: "store.migrate".into(),
        request_id: crate::server::new_request_id(),
        actor: actor.to_owned(),
        outcome: "allowed".into(),
        detail: Some(format!(
            "from=sled to=postgres records={total}; later records are in the database's per-replica chains"
        )),
        ..Default::default()
    };
    let appended = log.append(event).await.map_err(|e| e.to_string());
    log.close();
    appended.map(|_| ())
}
