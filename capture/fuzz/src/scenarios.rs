//! Built scenarios: one short script per pairing path (answered, interleaved, retransmitted,
//! kiss-o'-death, timed out, flushed, evicted, NTPv1, symmetric ports, trailers, cuts,
//! randomised T1, every frame shape). The seed generator writes them for every link type, and
//! the tests below check that each really reaches its path, so the fuzzer starts from inputs
//! that pair.

use crate::script::{Request, Response, Step};

/// Built exchanges: each is a limits byte and its steps.
pub fn scenarios() -> Vec<(u8, Vec<Step<'static>>)> {
    let q = Request { delta: 20, ..Request::default() };
    let s = Response { delta: 10, timing: 0x21, ..Response::default() };
    let rq = |r: Request| Step::Request(r);
    let rs = |r: Response| Step::Response(r);
    vec![
        // Answered.
        (0, vec![rq(q), rs(s)]),
        // Interleaved: the request carries a receive timestamp, the reply echoes it.
        (0, vec![rq(Request { rx: 7, ..q }), rs(Response { pick: 0x40, ..s })]),
        // Retransmitted twice, then answered.
        (0, vec![rq(q), rq(Request { t1: 0x40, ..q }), rq(Request { t1: 0x40, ..q }), rs(s)]),
        // Kiss-o'-death.
        (0, vec![rq(q), rs(Response { stratum: 0, ..s })]),
        // Timed out, then a late (orphan) response.
        (0, vec![rq(q), Step::Tick { kind: 0, delta: 255 }, rs(s)]),
        // Flushed, and the agent's lagging idle tick.
        (0, vec![rq(q), Step::Tick { kind: 2, delta: 3 }, Step::Tick { kind: 1, delta: 0 }]),
        // max_outstanding 1: the second flow evicts the first; its response is an orphan.
        (1, vec![rq(q), rq(Request { flow: 1, ..q }), rs(Response { pick: 1, ..s })]),
        // max_per_flow 1: a new request on the same flow evicts the older one.
        (1 << 3, vec![rq(q), rq(Request { t1: 5, ..q }), rs(Response { pick: 1, ..s }), rs(s)]),
        // NTPv1 without a mode field, both directions.
        (0, vec![rq(Request { first: 0x13, ..q }), rs(Response { first: 0x13, ..s })]),
        // Symmetric ports.
        (0, vec![rq(Request { flow: 0x08, ..q }), rs(s)]),
        // NTS-like extension fields and MACs, bad trailers.
        (0, vec![rq(Request { trailer: 4 | (3 << 3), ..q }), rs(Response { trailer: 4 | (19 << 3), ..s })]),
        (0, vec![rq(Request { trailer: 2, ..q }), rs(Response { trailer: 3, ..s }), rq(Request { trailer: 1, ..q })]),
        (
            0,
            vec![
                rq(Request { trailer: 5 | (4 << 3), ..q }),
                rq(Request { trailer: 5 | (1 << 3), ..q }),
                rq(Request { trailer: 6 | (9 << 3), ..q }),
            ],
        ),
        // Cut: too short for the mode, and a snap length cut.
        (0, vec![rq(Request { trailer: 7 | (5 << 3), ..q }), rq(Request { trailer: 7 | (20 << 3), ..q }), rs(s)]),
        // Randomised T1 (chrony), a raw origin, a zero origin.
        (
            0,
            vec![
                rq(Request { t1: 0x80, t1_raw: 0x1234_5678_9abc_def0, ..q }),
                rs(s),
                rs(Response { pick: 0x80, origin_raw: 0x0102_0304_0506_0708, ..s }),
                rs(Response { pick: 0xc0, ..s }),
            ],
        ),
        // Every shape and family: VLAN, QinQ, IP options, IPv6.
        (0, vec![rq(Request { flow: 0x41, ..q }), rs(s), rq(Request { flow: 0xa2, ..q }), rs(s), rq(Request { flow: 0xe3, ..q }), rs(s)]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        driver::replay,
        script::{Reader, Setup},
    };

    /// The built scenarios reach the pairing paths they are named after, on every link type:
    /// otherwise the fuzzer would start from seeds that never pair.
    #[test]
    fn scenarios_reach_their_paths_on_every_link_type() {
        let expected: [&[(&str, u64)]; 16] = [
            &[("answered", 1)],
            &[("answered", 1), ("interleaved", 1)],
            &[("answered", 1), ("retransmits", 2)],
            &[("answered", 1), ("kiss_of_death", 1)],
            &[("unanswered", 1), ("orphan_responses", 1)],
            &[("unanswered", 1), ("answered", 0)],
            &[("evicted", 1), ("orphan_responses", 1), ("unanswered", 1)],
            &[("evicted_per_flow", 1), ("mismatched_responses", 1), ("answered", 1)],
            &[("answered", 1), ("ntp_by_version.1", 2), ("ntp_by_mode.0", 2)],
            &[("answered", 1)],
            &[("answered", 1), ("malformed.total", 0)],
            &[("answered", 1), ("unanswered", 1)],
            &[("requests", 3), ("malformed.extension_overrun", 1), ("malformed.extension_bad_length", 1)],
            &[("malformed.too_short", 1), ("snaplen_truncated", 1), ("answered", 1)],
            &[("t1_randomized", 1), ("answered", 1), ("orphan_responses", 2)],
            &[("answered", 3)],
        ];
        for link in 0..crate::LINK_DLTS.len() as u8 {
            for (i, ((limits, steps), want)) in scenarios().into_iter().zip(expected).enumerate() {
                let mut seed = Vec::new();
                Setup { link, limits, misc: 0, start_ns: 1_700_000_000_000_000_000 }.write(&mut seed);
                for s in &steps {
                    s.write(&mut seed);
                }
                let (records, c) = replay(&seed);
                let entries: std::collections::BTreeMap<String, u64> = c.entries().into_iter().collect();
                for (name, n) in want {
                    assert_eq!(entries[*name], *n, "link {link}, scenario {i}, {name}: {entries:?}");
                }
                assert_eq!(c.frames_skipped.iter().sum::<u64>() + c.frames_other_udp, 0, "link {link}, scenario {i}: {c:?}");
                assert_eq!(records.len() as u64, c.answered + c.unanswered + c.observations);
            }
        }
    }

    #[test]
    fn steps_read_back_as_written() {
        for (_, steps) in scenarios() {
            let mut bytes = Vec::new();
            for s in &steps {
                s.write(&mut bytes);
            }
            let frame = [1u8, 2, 3];
            Step::Frame { delta_us: -5, bytes: &frame }.write(&mut bytes);
            let mut r = Reader::new(&bytes);
            let mut back = Vec::new();
            while let Some(s) = Step::read(&mut r) {
                back.push(s);
            }
            assert_eq!(back[..steps.len()], steps[..]);
            assert_eq!(back[steps.len()], Step::Frame { delta_us: -5, bytes: &frame });
        }
    }
}
