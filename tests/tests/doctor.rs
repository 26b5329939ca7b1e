//! `credbroker doctor` on a healthy dev directory (every check ok), then on copies of it each
//! broken one way — the check made for that breakage fails (or warns, where the daemon would
//! still run) and the doctor exits 1.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use credbroker_tests::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, IsCa, Issuer,
    KeyIdMethod, KeyPair, SerialNumber,
};
use serde_json::Value;
use time::{Duration, OffsetDateTime};

/// The free-space threshold these cases pass: the machine's free disk is not what they judge
/// (CI once ran this with under 1 GiB free, the default, and the healthy case failed on it);
/// the threshold has its own case below.
const MIN_FREE_MIB: &str = "64";

fn doctor(args: &[&str]) -> (i32, Value, String) {
    let mut all = vec!["doctor", "--output", "json"];
    if !args.contains(&"--min-free-mib") {
        all.extend_from_slice(&["--min-free-mib", MIN_FREE_MIB]);
    }
    all.extend_from_slice(args);
    let (code, out, err) = run_cli(&all);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
    (code, v, err)
}

fn finding<'a>(report: &'a Value, check: &str) -> &'a Value {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == check)
        .unwrap_or_else(|| panic!("no finding {check}: {report:#}"))
}

/// A copy of the healthy directory to break.
fn copy(healthy: &Path, root: &Path, name: &str) -> PathBuf {
    let to = root.join(name);
    copy_dir(healthy, &to);
    // `credbroker dev` writes data_dir = ".": the copy's config names the copy.
    to
}

fn dev_doctor(dir: &Path) -> (i32, Value, String) {
    doctor(&["--dev-dir", dir.to_str().unwrap()])
}

fn expect_fail(dir: &Path, check: &str, says: &str) {
    let (code, v, err) = dev_doctor(dir);
    let f = finding(&v, check);
    assert_eq!(f["status"], "fail", "{check}: {f:#} {err}");
    assert!(
        f["detail"].as_str().unwrap().contains(says),
        "{check} says {says:?}: {f:#}"
    );
    assert!(f["fix"].as_str().is_some_and(|s| !s.is_empty()), "{f:#}");
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["ok"], false);
}

fn self_signed(not_before: OffsetDateTime, not_after: OffsetDateTime) -> (String, String) {
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params.not_before = not_before;
    params.not_after = not_after;
    let key = KeyPair::generate().unwrap();
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

/// A CRL of `dir`'s client CA whose next update was yesterday.
fn stale_crl(dir: &Path) -> String {
    crl_of(dir, 8, -1, 2)
}

/// A CRL of `dir`'s client CA (the dev CA, `pki/ca.crt` and `pki/ca.key`), issued
/// `issued_days_ago`, due `next_in_days` from now.
fn crl_of(dir: &Path, issued_days_ago: i64, next_in_days: i64, number: u64) -> String {
    let pem = std::fs::read_to_string(dir.join("pki/ca.crt")).unwrap();
    let key = KeyPair::from_pem(&std::fs::read_to_string(dir.join("pki/ca.key")).unwrap()).unwrap();
    signed_crl(
        &Issuer::from_ca_cert_pem(&pem, key).unwrap(),
        issued_days_ago,
        next_in_days,
        number,
    )
}

fn signed_crl(
    issuer: &Issuer<'_, KeyPair>,
    issued_days_ago: i64,
    next_in_days: i64,
    number: u64,
) -> String {
    let now = OffsetDateTime::now_utc();
    let crl = CertificateRevocationListParams {
        this_update: now - Duration::days(issued_days_ago),
        next_update: now + Duration::days(next_in_days),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    crl.signed_by(issuer).unwrap().pem().unwrap()
}

#[test]
fn the_doctor_passes_a_healthy_dev_directory_and_fails_each_breakage() {
    init_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let healthy = tmp.path().join("dev");
    let mut dev = start_dev(&healthy);
    // While the daemon runs: every check reads only (the store's schema from the file
    // beside it).
    let (code, v, err) = dev_doctor(&healthy);
    assert_eq!(code, 0, "{v:#} {err}");
    assert_eq!(finding(&v, "store.schema")["status"], "ok", "{v:#}");
    dev.stop();
    let (code, v, _) = dev_doctor(&healthy);
    assert_eq!(code, 0, "{v:#}");
    for f in v["findings"].as_array().unwrap() {
        assert_eq!(f["status"], "ok", "a healthy dev directory: {f:#}");
    }
    // The human form, as the closing note shows it.
    let (code, text, _) = run_cli(&[
        "doctor",
        "--dev-dir",
        healthy.to_str().unwrap(),
        "--min-free-mib",
        MIN_FREE_MIB,
        "--output",
        "table",
    ]);
    assert_eq!(code, 0);
    println!("{text}");
    assert!(text.contains(": ready"), "{text}");

    let root = tmp.path();
    // The config does not parse.
    let d = copy(&healthy, root, "config");
    std::fs::write(d.join("credbroker.toml"), "listen = [\n").unwrap();
    expect_fail(&d, "config", "");

    // A key file is missing.
    let d = copy(&healthy, root, "missing");
    std::fs::remove_file(d.join("keys/fingerprint.key")).unwrap();
    expect_fail(&d, "files", "fingerprint.key");

    // The KEK is readable by everyone.
    let d = copy(&healthy, root, "mode");
    std::fs::set_permissions(
        d.join("keys/kek.json"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    expect_fail(&d, "permissions.keys.kek_file", "0644");

    // A key of the broker's through a symbolic link: `serve` refuses to read it so.
    let d = copy(&healthy, root, "linked");
    std::fs::rename(d.join("keys/fingerprint.key"), d.join("keys/real.key")).unwrap();
    std::os::unix::fs::symlink(d.join("keys/real.key"), d.join("keys/fingerprint.key")).unwrap();
    expect_fail(&d, "permissions.keys.fingerprint_key_file", "symbolic link");

    // Key files of the right mode that do not open as `serve` opens them: an empty keyring
    // (what a runbook step gone wrong leaves), an emptied signing key, a cut fingerprint key.
    for (name, file, cut) in [
        ("empty-kek", "keys/kek.json", 0),
        ("empty-audit-key", "keys/audit-signing.key", 0),
        ("cut-fingerprint-key", "keys/fingerprint.key", 10),
    ] {
        let d = copy(&healthy, root, name);
        let path = d.join(file);
        let text = std::fs::read(&path).unwrap();
        std::fs::write(&path, &text[..cut]).unwrap();
        let check = match file {
            "keys/kek.json" => "content.keys.kek_file",
            "keys/audit-signing.key" => "content.keys.audit_key_file",
            _ => "content.keys.fingerprint_key_file",
        };
        expect_fail(&d, check, file.trim_start_matches("keys/"));
    }

    // The TLS key readable by the daemon's group, root-owned (the systemd layout): fine;
    // group-readable and owned by anyone else: not; readable by others: not. (Owners can
    // be changed only as root, as CI runs.)
    let d = copy(&healthy, root, "tls-group");
    let key = d.join("pki/server.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    // The copy belongs to whoever runs the test: root, when it is owned by root.
    let root_runs = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&key).unwrap()) == 0;
    if root_runs {
        let (_, v, _) = dev_doctor(&d);
        assert!(
            v["findings"]
                .as_array()
                .unwrap()
                .iter()
                .all(|f| f["check"] != "permissions.tls.key"),
            "{v:#}"
        );
        std::os::unix::fs::chown(&key, Some(65534), None).unwrap();
    }
    expect_fail(&d, "permissions.tls.key", "0640");
    if root_runs {
        std::os::unix::fs::chown(&key, Some(0), None).unwrap();
    }
    std::fs::set_permissions(
        d.join("pki/server.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    expect_fail(&d, "permissions.tls.key", "0644");

    // The server certificate expired (its key matches: the TLS setup itself loads).
    let d = copy(&healthy, root, "expired");
    let now = OffsetDateTime::now_utc();
    let (cert, key) = self_signed(now - Duration::days(400), now - Duration::days(2));
    std::fs::write(d.join("pki/server.crt"), cert).unwrap();
    std::fs::write(d.join("pki/server.key"), key).unwrap();
    expect_fail(&d, "tls.server_certificate", "expired");

    // Soon to expire: a warning, and the doctor still exits 0.
    let d = copy(&healthy, root, "expiring");
    let (cert, key) = self_signed(now - Duration::days(1), now + Duration::days(10));
    std::fs::write(d.join("pki/server.crt"), cert).unwrap();
    std::fs::write(d.join("pki/server.key"), key).unwrap();
    let (code, v, _) = dev_doctor(&d);
    assert_eq!(
        finding(&v, "tls.server_certificate")["status"],
        "warn",
        "{v:#}"
    );
    assert_eq!(code, 0);

    // A CRL past its next update.
    let d = copy(&healthy, root, "crl");
    std::fs::write(d.join("pki/crl.pem"), stale_crl(&d)).unwrap();
    let config = d.join("credbroker.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace("[tls]\n", "[tls]\ncrl = \"pki/crl.pem\"\n");
    std::fs::write(&config, text).unwrap();
    expect_fail(&d, "tls.crl", "past its next update");
    // Two CRLs of one CA (a current one appended after a stale one; the same issuer name):
    // the broker uses the newest, so the doctor warns about the file but does not fail it.
    let twice = format!("{}{}", stale_crl(&d), crl_of(&d, 1, 6, 3));
    std::fs::write(d.join("pki/crl.pem"), twice).unwrap();
    let (code, v, err) = dev_doctor(&d);
    let f = finding(&v, "tls.crl");
    assert_eq!(f["status"], "warn", "{f:#} {err}");
    assert!(
        f["detail"]
            .as_str()
            .unwrap()
            .contains("more than one CRL of"),
        "{f:#}"
    );
    assert_eq!(code, 0, "{v:#}");
    // Newest first makes no difference; two stale ones fail as stale.
    let twice = format!("{}{}", crl_of(&d, 1, 6, 3), stale_crl(&d));
    std::fs::write(d.join("pki/crl.pem"), twice).unwrap();
    assert_eq!(finding(&dev_doctor(&d).1, "tls.crl")["status"], "warn");
    let twice = format!("{}{}", stale_crl(&d), stale_crl(&d));
    std::fs::write(d.join("pki/crl.pem"), twice).unwrap();
    expect_fail(&d, "tls.crl", "past its next update");
    // A current CRL of another CA: the daemon would refuse every client, since no CRL
    // speaks for the certificates the client CA issued.
    let mut other = CertificateParams::new(Vec::<String>::new()).unwrap();
    other.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let elsewhere = signed_crl(
        &Issuer::from_params(&other, KeyPair::generate().unwrap()),
        1,
        6,
        4,
    );
    std::fs::write(d.join("pki/crl.pem"), &elsewhere).unwrap();
    expect_fail(&d, "tls.crl_issuers", "holds no CRL of");
    // One naming the client CA, signed by another key.
    let pem = std::fs::read_to_string(d.join("pki/ca.crt")).unwrap();
    let forged = signed_crl(
        &Issuer::from_ca_cert_pem(&pem, KeyPair::generate().unwrap()).unwrap(),
        1,
        6,
        5,
    );
    std::fs::write(d.join("pki/crl.pem"), forged).unwrap();
    expect_fail(&d, "tls.crl_issuers", "is not signed by that CA's key");
    // Beside the client CA's own, another CA's (an intermediate's) is fine.
    std::fs::write(
        d.join("pki/crl.pem"),
        format!("{}{elsewhere}", crl_of(&d, 1, 6, 6)),
    )
    .unwrap();
    let (code, v, err) = dev_doctor(&d);
    let f = finding(&v, "tls.crl_issuers");
    assert_eq!(f["status"], "ok", "{f:#} {err}");
    assert!(
        f["detail"]
            .as_str()
            .unwrap()
            .contains("1 CRL(s) of other issuers"),
        "{f:#}"
    );
    assert_eq!(code, 0, "{v:#}");
    // A bundle with a root and the intermediate it issued (which issues clients): the root,
    // never checked as an anchor of the bundle, needs no CRL of its own; said, not failed.
    let mut root_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "doctor test root");
    let root_key = KeyPair::generate().unwrap();
    let root_cert = root_params.self_signed(&root_key).unwrap();
    let mut mid_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    mid_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    mid_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "doctor test intermediate");
    let mid_key = KeyPair::generate().unwrap();
    let mid_cert = mid_params
        .signed_by(&mid_key, &Issuer::from_params(&root_params, &root_key))
        .unwrap();
    let mid_crl = signed_crl(&Issuer::from_params(&mid_params, mid_key), 1, 6, 7);
    let dev_ca = std::fs::read_to_string(d.join("pki/ca.crt")).unwrap();
    std::fs::write(
        d.join("pki/ca.crt"),
        format!("{dev_ca}{}{}", root_cert.pem(), mid_cert.pem()),
    )
    .unwrap();
    std::fs::write(
        d.join("pki/crl.pem"),
        format!("{}{mid_crl}", crl_of(&d, 1, 6, 8)),
    )
    .unwrap();
    let (code, v, err) = dev_doctor(&d);
    let f = finding(&v, "tls.crl_issuers");
    assert_eq!(f["status"], "warn", "{f:#} {err}");
    assert!(
        f["detail"]
            .as_str()
            .unwrap()
            .contains("doctor test root has no CRL"),
        "{f:#}"
    );
    assert_eq!(code, 0, "{v:#}");
    // Without the intermediate's CRL, its clients would be refused: a failure.
    std::fs::write(d.join("pki/crl.pem"), crl_of(&d, 1, 6, 9)).unwrap();
    expect_fail(
        &d,
        "tls.crl_issuers",
        "holds no CRL of CN=doctor test intermediate",
    );

    // A public listener whose key is not its certificate's: `serve` would not start.
    let d = copy(&healthy, root, "public");
    let now = OffsetDateTime::now_utc();
    let (cert, _) = self_signed(now - Duration::days(1), now + Duration::days(90));
    let (_, other_key) = self_signed(now - Duration::days(1), now + Duration::days(90));
    std::fs::write(d.join("pki/public.crt"), cert).unwrap();
    std::fs::write(d.join("pki/public.key"), other_key).unwrap();
    std::fs::set_permissions(
        d.join("pki/public.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let config = d.join("credbroker.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}\n[public]\nlisten = \"127.0.0.1:0\"\nbase_url = \"https://broker.example\"\ncert = \"pki/public.crt\"\nkey = \"pki/public.key\"\n"),
    )
    .unwrap();
    expect_fail(&d, "public.setup", "");

    // A store of a schema version this build does not read.
    let d = copy(&healthy, root, "schema");
    // (As a later release would leave it: the version in the database and beside it. The
    // doctor reads only the file beside it — it never opens the database.)
    {
        let db = sled::open(d.join("store")).unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("schema_version", b"99".as_slice())
            .unwrap();
        db.flush().unwrap();
    }
    std::fs::write(d.join("store/credbroker-schema-version"), "99\n").unwrap();
    let before = tree_state(&d.join("store"));
    expect_fail(&d, "store.schema", "99");
    assert_eq!(
        tree_state(&d.join("store")),
        before,
        "the doctor changed the store"
    );
    // A store the previous release wrote (version 3): upgraded at the next start, a warning.
    std::fs::write(d.join("store/credbroker-schema-version"), "3\n").unwrap();
    let (_, v, _) = dev_doctor(&d);
    let schema = finding(&v, "store.schema");
    assert_eq!(schema["status"], "warn", "{v:#}");
    assert!(
        schema.to_string().contains("upgrades it in place"),
        "{schema}"
    );
    // A store no broker of this release opened: said, not guessed.
    std::fs::remove_file(d.join("store/credbroker-schema-version")).unwrap();
    let (_, v, _) = dev_doctor(&d);
    assert_eq!(finding(&v, "store.schema")["status"], "warn", "{v:#}");
    assert_eq!(tree_state(&d.join("store")), {
        let mut b = before.clone();
        b.retain(|(n, _, _)| n != "credbroker-schema-version");
        b
    });

    // A record of the audit log edited after its last checkpoint.
    let d = copy(&healthy, root, "tampered");
    let log = audit_segments(&d).pop().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, text.replacen("\"tenant.add\"", "\"tenant.adX\"", 1)).unwrap();
    expect_fail(&d, "audit.checkpoint", "sequence");

    // The audit log removed from beside a store a broker opened: not "no audit log yet".
    let d = copy(&healthy, root, "audit-gone");
    for segment in audit_segments(&d) {
        std::fs::remove_file(segment).unwrap();
    }
    let _ = std::fs::remove_file(d.join("audit/checkpoints.log"));
    // (A warning: a first start that failed before its first record leaves the same.)
    let (_, v, err) = dev_doctor(&d);
    let f = finding(&v, "audit.checkpoint");
    assert_eq!(f["status"], "warn", "{f:#} {err}");
    assert!(
        f["detail"]
            .as_str()
            .unwrap()
            .contains("holds no audit log, though a broker opened"),
        "{f:#}"
    );

    // A provider section that does not load.
    let d = copy(&healthy, root, "provider");
    let config = d.join("credbroker.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[providers.aws_assume_role]\nregion = \"eu-west-1\"\nvendor_account_id = \"111122223333\"\nceiling_file = \"no-such-ceiling.json\"\n");
    std::fs::write(&config, text).unwrap();
    expect_fail(&d, "providers", "no-such-ceiling.json");

    // A full audit directory: a 256 KiB tmpfs over it, filled, in a mount namespace of
    // its own (nothing to clean up; unprivileged runs map themselves to root in it). Where
    // the machine allows no mount namespace (a container without CAP_SYS_ADMIN), the same
    // write fails for a file-size limit of 4 KiB instead (`ulimit -f`, SIGXFSZ ignored):
    // the probe's write is refused either way, only the error differs.
    let d = copy(&healthy, root, "full");
    let audit = d.join("audit");
    // (--min-free-mib 0: past the free-space threshold, which has its own case below, to
    // the write itself.)
    let doctor_cmd = format!(
        "{} doctor --output json --min-free-mib 0 --dev-dir {}",
        daemon_bin().display(),
        d.display()
    );
    let mount = format!(
        "mount -t tmpfs -o size=256k tmpfs {a} && (dd if=/dev/zero of={a}/fill bs=4k 2>/dev/null; true) && {doctor_cmd}",
        a = audit.display(),
    );
    let out = Command::new("unshare")
        .arg(if is_root() { "-m" } else { "-rm" })
        .args(["sh", "-c", &mount])
        .output()
        .expect("unshare(1) from util-linux");
    let (out, refusal) = if out.stdout.is_empty() {
        println!(
            "no mount namespace here ({}); a file-size limit stands in for the full disk",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let limited = format!("trap '' XFSZ; ulimit -f 4 && exec {doctor_cmd}");
        let out = Command::new("sh").args(["-c", &limited]).output().unwrap();
        (out, "File too large")
    } else {
        (out, "No space left")
    };
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let f = finding(&v, "audit.directory");
    assert_eq!(f["status"], "fail", "{f:#}");
    assert!(f["detail"].as_str().unwrap().contains(refusal), "{f:#}");
    assert_eq!(out.status.code(), Some(1));

    // Too little free space for the threshold asked.
    let (code, v, _) = doctor(&[
        "--dev-dir",
        healthy.to_str().unwrap(),
        "--min-free-mib",
        "999999999",
    ]);
    let f = finding(&v, "audit.directory");
    assert_eq!(f["status"], "fail", "{f:#}");
    assert!(f["detail"].as_str().unwrap().contains("below"), "{f:#}");
    assert_eq!(code, 1);

    // As production (--config): a KEK inside the data directory fails (`serve` refuses it),
    // the other keys there are warned about.
    let production = healthy.join("credbroker.toml");
    let (code, v, _) = doctor(&["--config", production.to_str().unwrap()]);
    assert_eq!(
        finding(&v, "location.keys.kek_file")["status"],
        "fail",
        "{v:#}"
    );
    let f = finding(&v, "location.keys.fingerprint_key_file");
    assert_eq!(f["status"], "warn", "{v:#}");
    assert_eq!(code, 1);
}

/// Every file under `dir`: name, length, modification time.
fn tree_state(dir: &Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        if m.is_dir() {
            for (n, l, t) in tree_state(&e.path()) {
                all.push((format!("{}/{n}", e.file_name().to_string_lossy()), l, t));
            }
        } else {
            all.push((
                e.file_name().to_string_lossy().into_owned(),
                m.len(),
                m.modified().unwrap(),
            ));
        }
    }
    all.sort();
    all
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        == Some("0")
}

/// A database password written in the config file (`[store] url`) is said when the file is
/// readable by group or others (whoever reads it reaches every tenant's sealed secrets and
/// the audit chains), and never quoted.
#[test]
fn a_database_password_in_a_readable_config_is_said() {
    use std::os::unix::fs::PermissionsExt;
    init_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let mut dev = start_dev(&dir);
    dev.stop();
    let config = dir.join("credbroker.toml");
    let mut parsed: toml::Table = std::fs::read_to_string(&config).unwrap().parse().unwrap();
    let mut store = toml::Table::new();
    store.insert("backend".into(), "postgres".into());
    store.insert(
        "url".into(),
        "postgresql://cb:s3cret-pw@127.0.0.1:1/cb".into(),
    );
    parsed.insert("store".into(), toml::Value::Table(store));
    std::fs::write(&config, toml::to_string(&parsed).unwrap()).unwrap();
    let path = config.to_str().unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (_, v, _) = doctor(&["--config", path]);
    let f = finding(&v, "store.url");
    assert_eq!(f["status"], "warn", "{f:#}");
    assert!(f["detail"].as_str().unwrap().contains("0644"), "{f:#}");
    assert!(!v.to_string().contains("s3cret-pw"), "{v:#}");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (_, v, _) = doctor(&["--config", path]);
    assert!(
        !v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["check"] == "store.url"),
        "{v:#}"
    );
}
