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

/// A stand-in HTTP service on 127.0.0.1 (one request per connection): `respond` gets the
/// request's head (request line and headers, as sent) and returns the JSON body of a
/// `200`. Returns its port.
#[allow(dead_code, reason = "not every test file uses every helper")]
pub(crate) fn http_app(respond: impl Fn(&str) -> String + Send + Sync + 'static) -> u16 {
    use std::io::{Read as _, Write as _};
    let respond = std::sync::Arc::new(respond);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            let respond = respond.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                // Headers, then as much body as Content-Length says.
                let body_at = loop {
                    let Ok(n) = conn.read(&mut buf) else { return };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    if let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&seen[..body_at]).into_owned();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_owned())
                    })
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                while seen.len() < body_at + length {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let body = respond(&head);
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    port
}
