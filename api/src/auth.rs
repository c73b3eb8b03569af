//! Bearer tokens: several may be configured; comparison is constant-time, and no token (nor a
//! prefix of one) ever reaches a log line.
//!
//! Tokens are compared through a keyed 64-bit SipHash with per-process random keys: every
//! configured token is checked (no early exit), each on fixed-size digests, so neither the
//! position of the first differing byte nor the length of a token shows in the timing.

use std::{
    hash::{BuildHasher, RandomState},
    sync::Arc,
};

use poem::{Endpoint, IntoResponse, Middleware, Request, Response, http::StatusCode};
use poem_openapi::{SecurityScheme, auth::Bearer};

/// The configured tokens, as keyed digests.
#[derive(Debug)]
pub struct Tokens {
    keys: RandomState,
    digests: Vec<u64>,
    /// Read endpoints need a token too.
    pub protect_reads: bool,
    /// Export needs a token.
    pub protect_export: bool,
}

impl Tokens {
    /// From the configured tokens.
    pub fn new(tokens: &[String], protect_reads: bool, protect_export: bool) -> Self {
        let keys = RandomState::new();
        let digests = tokens.iter().map(|t| keys.hash_one(t.as_bytes())).collect();
        Self { keys, digests, protect_reads, protect_export }
    }

    /// Whether `candidate` is one of the tokens.
    pub fn verify(&self, candidate: &str) -> bool {
        let d = self.keys.hash_one(candidate.as_bytes());
        let mut ok = 0u8;
        for t in &self.digests {
            let diff = t ^ d;
            // 1 when equal, 0 otherwise, without a data-dependent branch.
            ok |= u8::from(diff == 0);
        }
        ok == 1 && !self.digests.is_empty()
    }

    /// Whether any token is configured.
    pub fn configured(&self) -> bool {
        !self.digests.is_empty()
    }
}

/// A token from the server's configuration (`--token-file`, several allowed). Mutating operations
/// (cleanup, capture start/stop) always need one; read operations need one when the server runs
/// with `--protect-reads`, export with `--protect-reads` or `--protect-export`, and take none
/// otherwise. No token → 401, a wrong token → 403.
// The scheme of read operations and export (the same `bearerAuth` in the spec, hence the same
// description): it offers a token or none, so Swagger UI sends a token it was given, and never
// refuses a request itself; `ProtectReads` and the export handler decide, by configuration.
#[derive(Debug, SecurityScheme)]
#[oai(ty = "bearer", rename = "bearerAuth", bearer_format = "opaque token")]
pub struct ReadToken(pub Bearer);

/// [`ReadToken`], or no token at all.
#[derive(Debug, SecurityScheme)]
pub enum ReadAuth {
    /// A bearer token was sent.
    Token(ReadToken),
    /// None was sent.
    #[oai(fallback)]
    Anonymous,
}

/// A token from the server's configuration (`--token-file`, several allowed). Mutating operations
/// (cleanup, capture start/stop) always need one; read operations need one when the server runs
/// with `--protect-reads`, export with `--protect-reads` or `--protect-export`, and take none
/// otherwise. No token → 401, a wrong token → 403.
// The scheme of mutating operations: it refuses a request without a valid token itself.
#[derive(Debug, SecurityScheme)]
#[oai(ty = "bearer", rename = "bearerAuth", bearer_format = "opaque token", checker = "check")]
pub struct TokenAuth(pub ());

#[allow(clippy::unused_async)] // poem-openapi checkers are async
async fn check(req: &Request, bearer: Bearer) -> poem::Result<()> {
    let Some(tokens) = req.data::<Arc<Tokens>>() else {
        return Err(poem::Error::from_status(StatusCode::INTERNAL_SERVER_ERROR));
    };
    if tokens.verify(&bearer.token) {
        Ok(())
    } else {
        tracing::warn!(message = "Rejected an API token.", path = %req.uri().path(), remote = %req.remote_addr());
        Err(poem::Error::from_string("invalid bearer token", StatusCode::FORBIDDEN))
    }
}

/// Checks the `Authorization` header of a request by hand (for endpoints whose protection is
/// optional): `Ok` when allowed.
pub fn check_header(req: &Request, tokens: &Tokens) -> Result<(), StatusCode> {
    let header = req.headers().get(poem::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    // The scheme's name is case-insensitive (RFC 9110 §11.1), as the typed `Authorization` header
    // of the mutating endpoints takes it.
    let token = header.and_then(|h| h.split_once(' ')).filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer")).map(|(_, t)| t);
    match token {
        None => Err(StatusCode::UNAUTHORIZED),
        Some(t) if tokens.verify(t.trim()) => Ok(()),
        Some(_) => {
            tracing::warn!(message = "Rejected an API token.", path = %req.uri().path(), remote = %req.remote_addr());
            Err(StatusCode::FORBIDDEN)
        }
    }
}

/// With `--protect-reads`, every request needs a token except health (for probes), the Swagger UI
/// and the spec. The rule is an allow-list rather than "every `GET`": reads that arrive as `POST`
/// (search, export) are covered, and so is any path a future route or an odd spelling of a path
/// might add. Mutating endpoints check their token themselves as well.
#[derive(Debug, Clone)]
pub struct ProtectReads(pub Arc<Tokens>);

impl<E: Endpoint> Middleware<E> for ProtectReads {
    type Output = ProtectReadsEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        ProtectReadsEndpoint { inner: ep, tokens: self.0.clone() }
    }
}

/// The endpoint [`ProtectReads`] wraps.
#[derive(Debug)]
pub struct ProtectReadsEndpoint<E> {
    inner: E,
    tokens: Arc<Tokens>,
}

impl<E: Endpoint> Endpoint for ProtectReadsEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Self::Output> {
        if self.tokens.protect_reads
            && !is_open(req.uri().path())
            && let Err(status) = check_header(&req, &self.tokens)
        {
            let msg = if status == StatusCode::UNAUTHORIZED { "bearer token required" } else { "invalid bearer token" };
            return Err(poem::Error::from_string(msg, status));
        }
        self.inner.call(req).await.map(IntoResponse::into_response)
    }
}

/// Paths served without a token even with `--protect-reads`: health, the Swagger UI and the spec.
fn is_open(path: &str) -> bool {
    matches!(path, "/api/ntp/history/health" | "/openapi.json" | "/openapi.yaml" | "/docs") || path.starts_with("/docs/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_health_and_the_docs_are_open() {
        for open in ["/api/ntp/history/health", "/docs", "/docs/", "/docs/index.html", "/openapi.json", "/openapi.yaml"] {
            assert!(is_open(open), "{open}");
        }
        for guarded in [
            "/api/ntp/history/clients",
            "/api/ntp/history/search",
            "/api/ntp/history/export",
            "/api/ntp/history/health/",
            "/api/ntp/history/%68ealth",
            "//api/ntp/history/clients",
            "/docsx",
            "/",
        ] {
            assert!(!is_open(guarded), "{guarded}");
        }
    }

    #[test]
    fn only_configured_tokens_pass() {
        let t = Tokens::new(&["a-very-long-token-one".into(), "another-long-token-two".into()], false, false);
        assert!(t.verify("a-very-long-token-one"));
        assert!(t.verify("another-long-token-two"));
        assert!(!t.verify("a-very-long-token-on"));
        assert!(!t.verify(""));
        assert!(!Tokens::new(&[], false, false).verify(""));
    }
}

/// Request bodies larger than the limit are refused with 413: by `Content-Length` when the client
/// sends one, and by counting while reading when it streams (chunked), so no body can grow
/// without bound in memory. Requests without a body pass (poem's `SizeLimit` would demand a
/// `Content-Length` even on `GET`).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

impl<E: Endpoint> Middleware<E> for BodyLimit {
    type Output = BodyLimitEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        BodyLimitEndpoint { inner: ep, limit: self.0 }
    }
}

/// The endpoint [`BodyLimit`] wraps.
#[derive(Debug)]
pub struct BodyLimitEndpoint<E> {
    inner: E,
    limit: usize,
}

impl<E: Endpoint> Endpoint for BodyLimitEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Self::Output> {
        use futures_util::StreamExt as _;
        let declared =
            req.headers().get(poem::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > self.limit) {
            return Err(poem::Error::from_string(format!("request body larger than {} bytes", self.limit), StatusCode::PAYLOAD_TOO_LARGE));
        }
        // A streamed body over the limit fails the handler's read; whatever the handler then
        // answers (a 400 from the JSON parser), the client is told the truth: 413.
        let over = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        if declared.is_none() {
            let (limit, flag) = (self.limit, over.clone());
            let mut seen = 0usize;
            let stream = req.take_body().into_bytes_stream().map(move |chunk| {
                let chunk = chunk?;
                seen += chunk.len();
                if seen > limit {
                    flag.store(true, std::sync::atomic::Ordering::Relaxed);
                    Err(std::io::Error::other(format!("request body larger than {limit} bytes")))
                } else {
                    Ok(chunk)
                }
            });
            req.set_body(poem::Body::from_bytes_stream(stream));
        }
        let resp = self.inner.call(req).await.map(IntoResponse::into_response);
        if over.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(poem::Error::from_string(format!("request body larger than {} bytes", self.limit), StatusCode::PAYLOAD_TOO_LARGE));
        }
        resp
    }
}
