//! Riding through JetStream leader elections at start-up.
//!
//! When a cluster node dies or restarts, the streams and consumers it led elect a new leader; for
//! a few seconds JetStream API calls about them time out or answer "temporarily unavailable".
//! A service that starts (or re-opens a consumer) in that window must wait the election out,
//! not exit: [`retry_transient`] retries an operation while its error is one of those, for at
//! most a grace period, and returns anything else at once. [`is_transient`] is the one
//! classification, on async-nats' typed errors; nothing here matches error text.

use std::{error::Error as StdError, future::Future, time::Duration};

use async_nats::jetstream::{
    self, ErrorCode,
    consumer::{StreamError, StreamErrorKind},
    context::{
        AccountError, AccountErrorKind, ConsumerInfoError, ConsumerInfoErrorKind, CreateKeyValueError, CreateKeyValueErrorKind,
        CreateStreamError, CreateStreamErrorKind, GetStreamError, GetStreamErrorKind, RequestError, RequestErrorKind,
    },
    stream::{ConsumerError, ConsumerErrorKind},
};

use crate::BusError;

/// How an operation is retried through an election: pauses from `first`, doubling to `max`, for
/// at most `grace` in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first pause.
    pub first: Duration,
    /// The longest pause.
    pub max: Duration,
    /// How long the tries may take in all before the last error is reported.
    pub grace: Duration,
}

impl Backoff {
    /// Start-up: an election takes a few seconds; a node restarting under load can take tens.
    pub const ELECTION: Self = Self { first: Duration::from_millis(250), max: Duration::from_secs(5), grace: Duration::from_secs(60) };
}

/// JetStream API error codes that mean "ask again shortly": no leader yet, or the asset's
/// replicas are catching up.
const BUSY: [ErrorCode; 8] = [
    ErrorCode::CLUSTER_NOT_AVAILABLE,
    ErrorCode::CLUSTER_NOT_ACTIVE,
    ErrorCode::CLUSTER_NOT_LEADER,
    ErrorCode::CLUSTER_INCOMPLETE,
    ErrorCode::CLUSTER_NOT_ASSIGNED,
    ErrorCode::RAFT_GENERAL,
    ErrorCode::STREAM_OFFLINE,
    ErrorCode::CONSUMER_OFFLINE,
];

fn busy(e: &jetstream::Error) -> bool {
    // Not every 503: "JetStream not enabled for the account" is one, and it is for good.
    BUSY.contains(&e.error_code())
}

/// Whether `e` (or what caused it) is a timeout, a request nobody answered, or a JetStream
/// "not available right now" answer: the errors a leader election produces.
pub fn is_transient(e: &(dyn StdError + 'static)) -> bool {
    let direct = if let Some(e) = e.downcast_ref::<jetstream::Error>() {
        Some(busy(e))
    } else if let Some(e) = e.downcast_ref::<async_nats::RequestError>() {
        Some(matches!(e.kind(), async_nats::RequestErrorKind::TimedOut | async_nats::RequestErrorKind::NoResponders))
    } else if let Some(e) = e.downcast_ref::<RequestError>() {
        Some(matches!(e.kind(), RequestErrorKind::TimedOut | RequestErrorKind::NoResponders))
    } else if let Some(e) = e.downcast_ref::<GetStreamError>() {
        match e.kind() {
            GetStreamErrorKind::Request => Some(true),
            GetStreamErrorKind::JetStream(j) => Some(busy(&j)),
            _ => None,
        }
    } else if let Some(e) = e.downcast_ref::<CreateStreamError>() {
        match e.kind() {
            CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable => Some(true),
            CreateStreamErrorKind::JetStream(j) => Some(busy(&j)),
            _ => None,
        }
    } else if let Some(e) = e.downcast_ref::<ConsumerError>() {
        match e.kind() {
            ConsumerErrorKind::TimedOut | ConsumerErrorKind::Request => Some(true),
            ConsumerErrorKind::JetStream(j) => Some(busy(&j)),
            _ => None,
        }
    } else if let Some(e) = e.downcast_ref::<ConsumerInfoError>() {
        match e.kind() {
            ConsumerInfoErrorKind::TimedOut
            | ConsumerInfoErrorKind::NoResponders
            | ConsumerInfoErrorKind::Request
            | ConsumerInfoErrorKind::Offline => Some(true),
            ConsumerInfoErrorKind::JetStream(j) => Some(busy(&j)),
            _ => None,
        }
    } else if let Some(e) = e.downcast_ref::<AccountError>() {
        // `create_key_value` asks for the account's limits first.
        match e.kind() {
            AccountErrorKind::TimedOut => Some(true),
            AccountErrorKind::JetStream(j) => Some(busy(&j)),
            _ => None,
        }
    } else if let Some(e) = e.downcast_ref::<CreateKeyValueError>() {
        (e.kind() == CreateKeyValueErrorKind::TimedOut).then_some(true)
    } else if let Some(e) = e.downcast_ref::<StreamError>() {
        (e.kind() == StreamErrorKind::TimedOut).then_some(true)
    } else {
        None
    };
    direct.unwrap_or_else(|| e.source().is_some_and(is_transient))
}

/// Runs `op` until it succeeds, fails with an error that is not transient, or `backoff.grace` has
/// passed; each transient failure is logged with the pause before the next try.
pub async fn retry_transient<T, F, Fut>(what: &str, backoff: Backoff, mut op: F) -> Result<T, BusError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BusError>>,
{
    let mut last: Option<BusError> = None;
    let attempts = async {
        let mut pause = backoff.first;
        loop {
            match op().await {
                Err(e) if e.is_transient() => {
                    tracing::warn!(
                        message = "JetStream is not ready (a cluster electing a leader?); retrying.",
                        what,
                        error = %e,
                        retry_in = ?pause,
                    );
                    last = Some(e);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(backoff.max);
                }
                done => return done,
            }
        }
    };
    let grace = backoff.grace;
    match tokio::time::timeout(grace, attempts).await {
        Ok(done) => done,
        Err(_) => Err(BusError::JetStream {
            what: format!("{what}: JetStream still not ready after {grace:?} of retries"),
            detail: last.map_or_else(|| "no answer".to_string(), |e| e.to_string()),
            transient: false,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn transient(what: &str) -> BusError {
        BusError::JetStream { what: what.into(), detail: "timed out".into(), transient: true }
    }

    fn permanent() -> BusError {
        BusError::JetStream { what: "creating stream NTP".into(), detail: "insufficient resources".into(), transient: false }
    }

    #[test]
    fn timeouts_and_election_answers_are_transient_other_answers_are_not() {
        let timed_out = GetStreamError::with_source(GetStreamErrorKind::Request, RequestError::new(RequestErrorKind::TimedOut));
        assert!(is_transient(&timed_out));
        assert!(is_transient(&ConsumerError::new(ConsumerErrorKind::TimedOut)));
        assert!(is_transient(&ConsumerInfoError::new(ConsumerInfoErrorKind::Offline)));
        assert!(!is_transient(&ConsumerInfoError::new(ConsumerInfoErrorKind::NotFound)));
        assert!(!is_transient(&ConsumerError::new(ConsumerErrorKind::InvalidName)));
        // A KV bucket creation that failed because the stream creation under it timed out.
        let nested = CreateKeyValueError::with_source(
            CreateKeyValueErrorKind::BucketCreate,
            CreateStreamError::new(CreateStreamErrorKind::TimedOut),
        );
        assert!(is_transient(&nested));
        assert!(!is_transient(&CreateKeyValueError::new(CreateKeyValueErrorKind::InvalidStoreName)));
        assert!(!is_transient(&std::io::Error::other("disk full")));
    }

    #[test]
    fn jetstream_error_codes_decide() {
        let answer = |code: u64, err_code: u64| -> jetstream::Error {
            serde_json::from_value(serde_json::json!({"code": code, "err_code": err_code, "description": "x"})).unwrap()
        };
        assert!(is_transient(&CreateStreamError::new(CreateStreamErrorKind::JetStream(answer(503, 10008)))));
        assert!(is_transient(&ConsumerError::new(ConsumerErrorKind::JetStream(answer(500, 10119)))));
        // "insufficient resources" (an R3 stream on one server) stays an error.
        assert!(!is_transient(&CreateStreamError::new(CreateStreamErrorKind::JetStream(answer(500, 10023)))));
        assert!(!is_transient(&GetStreamError::new(GetStreamErrorKind::JetStream(answer(404, 10059)))));
        // "JetStream not enabled for account" comes as a 503 too, and is not going away.
        assert!(!is_transient(&CreateStreamError::new(CreateStreamErrorKind::JetStream(answer(503, 10039)))));
        assert!(is_transient(&AccountError::new(AccountErrorKind::TimedOut)));
    }

    const FAST: Backoff = Backoff { first: Duration::from_millis(1), max: Duration::from_millis(8), grace: Duration::from_secs(60) };

    #[tokio::test]
    async fn transient_errors_are_retried_until_success() {
        let calls = AtomicU32::new(0);
        let got = retry_transient("opening", FAST, || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 3 { Err(transient("opening")) } else { Ok(7) }
        })
        .await;
        assert_eq!(got.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_permanent_error_returns_at_once() {
        let calls = AtomicU32::new(0);
        let got: Result<(), _> = retry_transient("creating", FAST, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(permanent())
        })
        .await;
        assert!(got.unwrap_err().to_string().contains("insufficient resources"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn after_the_grace_the_last_error_is_reported_and_is_no_longer_transient() {
        let calls = AtomicU32::new(0);
        let backoff = Backoff { first: Duration::from_millis(10), max: Duration::from_millis(40), grace: Duration::from_millis(300) };
        let got: Result<(), _> = retry_transient("creating consumer", backoff, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(transient("creating consumer"))
        })
        .await;
        let e = got.unwrap_err();
        assert!(!e.is_transient());
        let text = e.to_string();
        assert!(text.contains("still not ready after 300ms") && text.contains("timed out"), "{text}");
        // Pauses of 10, 20, 40, 40, … ms: at most 9 tries fit in 300 ms, and the pauses are
        // real (a busy loop would make thousands).
        let n = calls.load(Ordering::SeqCst);
        assert!((3..=9).contains(&n), "{n} tries");
    }
}
