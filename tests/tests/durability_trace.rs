//! No response leaves before its audit record is durable (issue 18, item 2). SIGKILL keeps
//! the page cache, so the crash test cannot see a missing `fdatasync`; this test watches the
//! daemon's system calls instead (strace attached to every thread): for each response written
//! to the worker's connection, the last write to an audit segment before it has been followed
//! by a completed `fdatasync` of the segment. Dropping the sync, or answering before it, fails.

use std::process::{Command, Stdio};
use std::time::Duration;

use credbroker_tests::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

type Conn = BufReader<tokio_rustls::client::TlsStream<TcpStream>>;

/// The worker's own HTTP/1.1 keep-alive connection, so the test knows its port.
async fn connect(pki: &TestPki, url: &str) -> (Conn, u16) {
    let tcp = TcpStream::connect(url.trim_start_matches("https://"))
        .await
        .unwrap();
    let port = tcp.local_addr().unwrap().port();
    let tls = client_tls(pki, "w1", b"http/1.1")
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    (BufReader::new(tls), port)
}

/// One resolve on `conn`: status and body.
async fn resolve_on(conn: &mut Conn) -> (u16, serde_json::Value) {
    let body = br#"{"instance_id": "i1"}"#;
    let head = format!(
        "POST /v1/resolve HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.get_mut().write_all(head.as_bytes()).await.unwrap();
    conn.get_mut().write_all(body).await.unwrap();
    conn.get_mut().flush().await.unwrap();
    let mut status_line = String::new();
    conn.read_line(&mut status_line).await.unwrap();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        conn.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut buf = vec![0u8; length];
    conn.read_exact(&mut buf).await.unwrap();
    (status, serde_json::from_slice(&buf).unwrap())
}

/// One system call of interest, in the order strace reported it.
#[derive(Debug, PartialEq)]
enum Call {
    /// A write to an audit segment started.
    AuditWrite,
    /// An fdatasync of an audit segment returned 0.
    AuditSynced,
    /// A write to the worker's connection started.
    Reply,
}

/// Classifies strace `-f -yy` lines. `client_port` picks the worker's connection.
///
/// With `-f`, every line starts with the thread's id. A call that another thread's line
/// interrupts is split in two, `fdatasync(7</…> <unfinished ...>` and, later,
/// `<... fdatasync resumed>) = 0`, and only the first names the file: a resumed sync
/// counts only when the same thread's unfinished one was of an audit segment (the store
/// syncs its own files too).
fn calls(trace: &str, client_port: u16) -> Vec<Call> {
    let peer = format!(":{client_port}]");
    let mut out = Vec::new();
    let mut unfinished_sync: std::collections::HashMap<&str, bool> = Default::default();
    for line in trace.lines() {
        let tid = line.split_whitespace().next().unwrap_or_default();
        let audit_fd = line.contains("/audit/segment-");
        let succeeded = line.trim_end().ends_with("= 0");
        let is = |name: &str| line.contains(&format!("{name}(")) && !line.contains("resumed>");
        if audit_fd && (is("write") || is("pwrite64") || is("writev")) {
            out.push(Call::AuditWrite);
        } else if is("fdatasync") && line.contains("<unfinished") {
            unfinished_sync.insert(tid, audit_fd);
        } else if line.contains("<... fdatasync resumed>") {
            if unfinished_sync.remove(tid) == Some(true) && succeeded {
                out.push(Call::AuditSynced);
            }
        } else if is("fdatasync") && audit_fd && succeeded {
            out.push(Call::AuditSynced);
        } else if line.contains(&peer)
            && (is("write") || is("writev") || is("sendto") || is("sendmsg"))
        {
            out.push(Call::Reply);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_leaves_after_its_audit_record_is_synced() {
    let strace = on_path("strace", "-V").expect("this test needs strace (tests/run installs it)");
    let (tmp, pki) = setup();
    let daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    // The worker's connection exists (and is past its handshake) before tracing starts.
    let (mut w1, client_port) = connect(&pki, &daemon.url).await;
    let (s, v) = resolve_on(&mut w1).await;
    assert_eq!(s, 200, "{v}");

    let trace_path = tmp.path().join("daemon.strace");
    let mut tracer = Command::new(strace)
        .args(["-f", "-qq", "-yy", "-s", "0", "-e", "signal=none"])
        .args([
            "-e",
            "trace=write,writev,pwrite64,sendto,sendmsg,fdatasync,fsync",
        ])
        .arg("-o")
        .arg(&trace_path)
        .arg("-p")
        .arg(daemon.pid().unwrap().to_string())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // strace attaches to every thread before it writes anything: warm-up requests until the
    // trace shows a reply on this connection (a fixed pause was a guess on a loaded machine),
    // then the counted rounds. The warm-ups are checked like the rest.
    let mut tracing_seen = false;
    for _ in 0..100 {
        let (s, v) = resolve_on(&mut w1).await;
        assert_eq!(s, 200, "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let so_far = std::fs::read_to_string(&trace_path).unwrap_or_default();
        if calls(&so_far, client_port).contains(&Call::Reply) {
            tracing_seen = true;
            break;
        }
    }
    assert!(
        tracing_seen,
        "strace never showed a reply on the worker's connection"
    );

    let rounds = 40;
    let mut audit_ids = Vec::new();
    for _ in 0..rounds {
        let (s, v) = resolve_on(&mut w1).await;
        assert_eq!(s, 200, "{v}");
        audit_ids.push(v["audit_id"].as_str().unwrap().to_owned());
    }
    Command::new("kill")
        .args(["-INT", &tracer.id().to_string()])
        .status()
        .unwrap();
    let _ = tracer.wait();

    let trace = std::fs::read_to_string(&trace_path).unwrap();
    let seen = calls(&trace, client_port);
    let replies = seen.iter().filter(|c| **c == Call::Reply).count();
    assert!(
        replies >= rounds,
        "{replies} replies traced for {rounds} requests (strace did not see the connection):\n{}",
        &trace[..trace.len().min(4000)]
    );
    assert!(
        seen.iter().filter(|c| **c == Call::AuditWrite).count() >= rounds,
        "fewer audit writes than requests"
    );
    // Each reply: the last audit write before it is followed by a completed sync before it.
    let mut written_since_sync = false;
    let mut checked = 0;
    for call in &seen {
        match call {
            Call::AuditWrite => written_since_sync = true,
            Call::AuditSynced => written_since_sync = false,
            Call::Reply => {
                assert!(
                    !written_since_sync,
                    "a response was written to the worker before the audit record written for it was synced"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= rounds);
    // Every acknowledged resolve's record is in the log.
    let log = audit_log_text(&daemon.data_dir);
    for id in &audit_ids {
        let hash_prefix = id.trim_start_matches("aud_");
        assert!(
            log.contains(&format!("\"hash\":\"{hash_prefix}")),
            "{id} missing"
        );
    }
}

/// What the writer finds at open is the page cache's view of the log: a batch written by a
/// process killed before its sync returned, whose write-back to disk then failed, is shown
/// there (its pages are marked clean: never written again), and chained onto, it and every
/// record acknowledged after it would be lost at a power cut. So the log's tail is written
/// back in place and synced before anything is appended: the first write an opening process
/// makes to the live segment is of bytes already there, and a sync of it follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tail_found_at_open_is_written_to_disk_before_anything_is_chained_onto_it() {
    let strace = on_path("strace", "-V").expect("this test needs strace (tests/run installs it)");
    let (tmp, pki) = setup();
    let mut daemon = Daemon::start(tmp.path(), &pki, &DaemonOptions::default());
    let mut op = pki.client_for("op", &daemon.url);
    seed_two_tenants(&mut op).await;
    daemon.stop();
    let segment = audit_segments(&daemon.data_dir).pop().unwrap();
    let bytes = std::fs::read(&segment).unwrap();
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len()) as u64;
    assert!(end > 0);
    let trace_path = tmp.path().join("open.strace");
    let config = daemon.config.to_str().unwrap().to_owned();
    let out = Command::new(strace)
        .args(["-f", "-qq", "-yy", "-s", "0", "-e", "signal=none"])
        .args(["-e", "trace=pwrite64,write,fdatasync,fsync"])
        .arg("-o")
        .arg(&trace_path)
        .arg(daemon_bin())
        .args(["bootstrap-operator", "--config", &config, "--id", "late"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = segment.file_name().unwrap().to_str().unwrap().to_owned();
    let trace = std::fs::read_to_string(&trace_path).unwrap();
    let on_segment: Vec<&str> = trace
        .lines()
        .filter(|l| l.contains(&format!("{name}>")) && !l.contains("resumed>"))
        .collect();
    let first_write = on_segment
        .iter()
        .position(|l| l.contains("pwrite64(") || l.contains(" write("))
        .unwrap_or_else(|| panic!("no write to {name}:\n{trace}"));
    let line = on_segment[first_write];
    let args = line
        .split_once("pwrite64(")
        .unwrap_or_else(|| panic!("the first write is not positioned: {line}"))
        .1;
    let args = args.split(" <unfinished").next().unwrap();
    let args = args.rsplit_once(')').map_or(args, |(a, _)| a);
    let offset: u64 = args.rsplit(", ").next().unwrap().trim().parse().unwrap();
    assert!(
        offset < end,
        "the first write at open starts at {offset}, at or past the log's end {end}: nothing found was written back:\n{}",
        on_segment.join("\n")
    );
    assert!(
        on_segment[first_write..]
            .iter()
            .any(|l| l.contains("fdatasync(") || l.contains("fsync(")),
        "no sync of {name} after the write-back:\n{}",
        on_segment.join("\n")
    );
    daemon.restart_with(&[]);
    let (c, out, err) = daemon.cli(&["audit", "verify", "--config", &config]);
    assert_eq!(c, 0, "{out}{err}");
}

#[test]
fn a_resumed_sync_counts_only_for_the_audit_segment_its_thread_started() {
    let seg = "/d/audit/segment-0000000001.log";
    let trace = format!(
        "11 pwrite64(7<{seg}>, \"\"..., 300, 0) = 300\n\
         11 fdatasync(9</d/store/db> <unfinished ...>\n\
         12 writev(5<TCP:[127.0.0.1:1->127.0.0.1:4000]>, [...], 2) = 90\n\
         11 <... fdatasync resumed>) = 0\n\
         12 writev(5<TCP:[127.0.0.1:1->127.0.0.1:4000]>, [...], 2) = 90\n\
         11 fdatasync(7<{seg}> <unfinished ...>\n\
         13 fdatasync(9</d/store/db>) = 0\n\
         11 <... fdatasync resumed>) = 0\n\
         11 fdatasync(7<{seg}>) = 0\n"
    );
    assert_eq!(
        calls(&trace, 4000),
        [
            Call::AuditWrite,
            Call::Reply,
            Call::Reply,
            Call::AuditSynced,
            Call::AuditSynced
        ]
    );
}
