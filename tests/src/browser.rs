//! Headless Chromium (Debian `chromium` + `chromium-driver`, installed by tests/run) driven
//! over WebDriver, for the pages people look at: the intake form, the audit report.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::ClientBuilder;
use serde_json::json;

use crate::free_port;

/// The chromedriver process, leader of its own process group (the Chromium processes it
/// starts join it); the whole group is killed when dropped, so a failing test whose session
/// was never closed leaves no browser behind.
pub struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Debian's chromedriver (the test fails, saying so, when it is missing).
pub fn chromedriver() -> std::path::PathBuf {
    let path = std::path::PathBuf::from("/usr/bin/chromedriver");
    assert!(
        path.exists(),
        "chromedriver is not installed: tests/run installs Debian's chromium and chromium-driver"
    );
    path
}

/// A WebDriver session on a fresh profile in `profile`.
pub async fn browser(profile: &std::path::Path) -> (Driver, fantoccini::Client) {
    let port = free_port();
    let child = Command::new(chromedriver())
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver(child);
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                // The broker's test CA is not in the browser's store.
                "--ignore-certificate-errors",
                format!("--user-data-dir={}", profile.display()),
                "--window-size=900,700",
            ]
        }),
    );
    let mut last = None;
    for _ in 0..50 {
        match ClientBuilder::rustls()
            .expect("rustls client")
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => return (driver, c),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no WebDriver session: {last:?}");
}
