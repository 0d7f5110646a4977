//! `ieum demo` as a user runs it: it starts, and when it is killed outright (SIGKILL, so it
//! cannot stop its children itself) every process it started stops on its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Every descendant of `root` (children, their children, …) with its command line.
fn descendants(root: u32) -> Vec<(u32, String)> {
    let out = Command::new("ps")
        .args(["-eo", "pid=,ppid=,args="])
        .output()
        .expect("ps");
    let table: Vec<(u32, u32, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let pid = parts.next()?.parse().ok()?;
            let ppid = parts.next()?.parse().ok()?;
            Some((pid, ppid, parts.collect::<Vec<_>>().join(" ")))
        })
        .collect();
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (pid, ppid, args) in &table {
            if *ppid == p {
                found.push((*pid, args.clone()));
                frontier.push(*pid);
            }
        }
    }
    found
}

/// Which of `procs` still run.
fn alive(procs: &[(u32, String)]) -> Vec<(u32, String)> {
    procs
        .iter()
        .filter(|(pid, _)| std::path::Path::new(&format!("/proc/{pid}")).exists())
        .cloned()
        .collect()
}

#[test]
fn children_of_a_killed_demo_stop_on_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_ieum"))
        .args(["demo", "--rate", "2", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ieum demo");
    let stderr = demo.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.contains("Ctrl-C stops everything"))
    {
        match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("the demo did not start; it said {seen:#?}"),
        }
    }
    // The server and eight instances, each `ieum run` with its app (the shopper's app
    // starts just after the banner).
    let app = |(_, a): &&(u32, String)| a.contains(" demo-app ") && !a.contains(" run ");
    let mut started = descendants(demo.id());
    for _ in 0..100 {
        if started.iter().filter(app).count() == 8 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        started = descendants(demo.id());
    }
    assert!(
        started.len() >= 17 && started.iter().filter(app).count() == 8,
        "the demo's processes: {started:#?}"
    );

    demo.kill().unwrap();
    demo.wait().unwrap();
    let mut left = alive(&started);
    for _ in 0..60 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        left = alive(&started);
    }
    assert!(
        left.is_empty(),
        "still running after the demo died: {left:#?}"
    );
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "the demo's server port is free again"
    );
}
