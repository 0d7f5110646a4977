//! Runs a fixed number of requests through the no-op service or the default stack, for
//! exact instruction counts under callgrind:
//!
//! ```text
//! cargo bench -p ieum-resilience --bench instructions --no-run
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/deps/instructions-* noop 100000
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/deps/instructions-* stack 100000
//! ```
//!
//! (stack − noop) / N is the stack's cost per request in instructions.

mod common;

use std::hint::black_box;

use tower::{Service, ServiceExt};

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "stack".into());
    let n: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let _guard = rt.enter();
    rt.block_on(async {
        match which.as_str() {
            "noop" => {
                let mut svc = common::noop();
                for _ in 0..n {
                    svc.ready().await.expect("ready");
                    black_box(svc.call(common::request()).await.expect("answered"));
                }
            }
            "cargo-bench" | "--bench" | "stack" => {
                let mut svc = common::default_stack();
                for _ in 0..n {
                    svc.ready().await.expect("ready");
                    black_box(svc.call(common::request()).await.expect("answered"));
                }
            }
            other => eprintln!("unknown benchmark `{other}`: use `noop` or `stack`"),
        }
    });
}
