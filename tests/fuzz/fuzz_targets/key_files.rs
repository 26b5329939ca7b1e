//! Key files read at start (KEK keyring, audit public key), and the config file: its text as
//! given, and after a store section whose database URL holds a password, which no error may
//! quote.
#![no_main]
use libfuzzer_sys::fuzz_target;

const BASE: &str = "data_dir = \"data\"\ntrust_domain = \"example.org\"\n[tls]\ncert = \"s.crt\"\nkey = \"s.key\"\nclient_ca = \"ca.crt\"\n";
const STORE: &str = "[store]\nbackend = \"postgres\"\nurl = \"postgresql://u:S3cr3tPw@db/x\"\n";

fn config_path() -> &'static std::path::Path {
    static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("fuzz directory");
        d.join("credbroker.toml")
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = credbroker::keys::Keyring::parse(data);
    let _ = credbroker::keys::AuditVerifier::parse(data);
    let text = String::from_utf8_lossy(data);
    let path = config_path();
    std::fs::write(path, text.as_bytes()).expect("write config");
    let _ = credbroker::config::Config::load(path);
    for whole in [
        format!("{BASE}{STORE}{text}"),
        format!("{text}\n{BASE}{STORE}"),
    ] {
        std::fs::write(path, whole.as_bytes()).expect("write config");
        if let Err(e) = credbroker::config::Config::load(path) {
            assert!(
                text.contains("S3cr3tPw") || !e.0.contains("S3cr3tPw"),
                "a config error quotes the database password: {}",
                e.0
            );
        }
    }
});
