//! Formatting capture times as RFC 3339 text (a bench binary, not a timed test).
//!
//! ```text
//! cargo bench -p ntp-wire --bench rfc3339
//! ```
//!
//! The API prints 800–900 of these for a page of 100 rows, and nine for every row it exports.
//! Times `time::rfc3339_bytes` and, for scale, `time::format_rfc3339` (the same bytes copied
//! into a new `String`), over 20 M instants about 8 s apart from mid-2026, best of 5 runs.
#![allow(clippy::disallowed_methods)] // a benchmark measures wall time

use std::{hint::black_box, time::Instant};

use ntp_wire::time::{format_rfc3339, rfc3339_bytes};

const N: i64 = 20_000_000;
const BASE: i64 = 1_780_000_000_000_000_000;
const STEP: i64 = 7_919_000_013;

/// Nanoseconds per call of `f` over the instants, best of five runs.
fn per_call(f: impl Fn(i64) -> u8) -> f64 {
    (0..5)
        .map(|_| {
            let start = Instant::now();
            let mut acc = 0u64;
            for i in 0..N {
                acc = acc.wrapping_add(u64::from(f(black_box(BASE + i * STEP))));
            }
            black_box(acc);
            start.elapsed().as_nanos() as f64 / N as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let table = per_call(|ns| black_box(rfc3339_bytes(ns))[27]);
    let format = per_call(|ns| black_box(format_rfc3339(ns)).as_bytes()[27]);
    println!("rfc3339_bytes: {table:.1} ns per instant; format_rfc3339 (allocates a String): {format:.1} ns");
}
