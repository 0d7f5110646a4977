//! Shared by the tests that run real `ieum` processes.

use std::process::Command;

/// SIGKILLs `root` and everything it started (children, grandchildren), so that apps an
/// `ieum run` started in their own process group do not outlive the test.
pub(crate) fn kill_tree(child: &mut std::process::Child) {
    let mut all = vec![child.id()];
    if let Ok(out) = Command::new("ps").args(["-eo", "pid=,ppid="]).output() {
        let table: Vec<(u32, u32)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
            })
            .collect();
        let mut i = 0;
        while i < all.len() {
            let parent = all[i];
            all.extend(table.iter().filter(|(_, p)| *p == parent).map(|(c, _)| *c));
            i += 1;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    for pid in &all[1..] {
        let _ = Command::new("kill")
            .args(["-s", "KILL", &pid.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    }
}
