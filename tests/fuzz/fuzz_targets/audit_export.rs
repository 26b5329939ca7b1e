//! Audit export verification (and with it audit record and checkpoint decoding, and the
//! pinned copies `audit verify --pinned` reads): auditors feed it files from anywhere. And the export itself, as `audit export` writes it from the
//! lines of a log: a filtered export never carries a record its filter leaves out.
#![no_main]
use libfuzzer_sys::fuzz_target;
use time::{format_description::well_known::Rfc3339, macros::datetime, OffsetDateTime};

fn signer() -> &'static credbroker::keys::AuditSigner {
    static SIGNER: std::sync::OnceLock<credbroker::keys::AuditSigner> = std::sync::OnceLock::new();
    SIGNER.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("fuzz-audit-export-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("fuzz directory");
        credbroker::keys::AuditSigner::generate(&d.join("audit.key"), &d.join("audit.pub"))
            .expect("audit key")
    })
}

/// Exports the lines after `data`'s first byte through the filter that byte chooses, and
/// checks that every record line the export carries is one the filter selects.
fn export_filtered(data: &[u8]) {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let filter = credbroker::audit::ExportFilter {
        since: (flags & 1 != 0).then_some(datetime!(2026-06-01 0:00 UTC)),
        until: (flags & 2 != 0).then_some(datetime!(2026-07-01 0:00 UTC)),
        tenant: (flags & 4 != 0).then(|| "t-fuzz".to_owned()),
    };
    let text = String::from_utf8_lossy(data);
    let lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    let mut out = Vec::new();
    if credbroker::audit::write_document(
        (None, None),
        &lines,
        &[],
        &filter,
        signer(),
        &mut out,
        &credbroker::progress::Silent,
    )
    .is_err()
    {
        return;
    }
    // The header first, then the record lines as they were, then the attestations (signed
    // with a random export id, so never equal to a line of the log). Each exported line is
    // read as the export selects it (serde takes an array for a struct, too).
    for line in out.split(|b| *b == b'\n').skip(1) {
        if line.is_empty() || !lines.iter().any(|l| l.as_bytes() == line) {
            continue;
        }
        let record: Key = serde_json::from_slice(line).expect("an exported line is a record");
        if let Some(tenant) = &filter.tenant {
            assert_eq!(
                record.tenant.as_deref(),
                Some(tenant.as_str()),
                "another tenant's record exported"
            );
        }
        if filter.since.is_some() || filter.until.is_some() {
            let at = OffsetDateTime::parse(&record.time, &Rfc3339).expect("a record's time");
            assert!(
                filter.since.is_none_or(|s| at >= s),
                "record before `since` exported"
            );
            assert!(
                filter.until.is_none_or(|u| at < u),
                "record from `until` on exported"
            );
        }
    }
}

/// What an export reads of a record to select it.
#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Key {
    seq: u64,
    time: String,
    #[serde(default)]
    tenant: Option<String>,
    hash: String,
}

fuzz_target!(|data: &[u8]| {
    let verifier = credbroker::keys::AuditVerifier::parse(
        br#"{"algorithm":"ed25519","public_key":"11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="}"#,
    )
    .expect("fixed key parses");
    let _ = credbroker::audit::verify_export(data, &verifier);
    // The whole file as `audit verify --export` reads it: split into documents by position,
    // each read by two cursors side by side.
    let _ = credbroker::audit::verify_exports(&data, &verifier);
    // The same bytes as a pinned copy (`audit verify --pinned`): an export, or lines of
    // checkpoints.log.
    let _ = credbroker::audit::Pins::read(data, &verifier);
    let _ =
        serde_json::from_slice::<credbroker::audit::AuditRecord>(data).map(|r| r.compute_hash());
    export_filtered(data);
});
