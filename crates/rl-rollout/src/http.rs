//! A blocking JSON-over-HTTP client with bounded bodies, timeouts and retries (ureq 2).

use std::io::Read;
use std::time::Duration;

use serde_json::Value;

use crate::{EngineConfig, Result, RolloutError};

/// The HTTP side of an engine client: one ureq agent (connection pool) for all servers.
#[derive(Clone)]
pub struct Http {
    agent: ureq::Agent,
    retries: u32,
    backoff: Duration,
    timeout_s: f64,
    max_bytes: u64,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("retries", &self.retries)
            .field("timeout_s", &self.timeout_s)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

/// Whether a failed attempt may be retried: connection failures, HTTP 5xx and 429 only.
fn retryable(e: &RolloutError) -> bool {
    match e {
        RolloutError::Status { status, .. } => *status == 429 || (500..600).contains(status),
        RolloutError::Transport { kind, .. } => kind == "ConnectionFailed" || kind == "Dns",
        _ => false,
    }
}

// ureq 2's `Error` is large (it carries the response); it never leaves this module.
#[allow(clippy::result_large_err)]
impl Http {
    /// A client with `cfg`'s timeouts, retries and body limit.
    pub fn new(cfg: &EngineConfig) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs_f64(cfg.connect_timeout_s))
            .timeout(Duration::from_secs_f64(cfg.request_timeout_s))
            .max_idle_connections_per_host(cfg.max_concurrency.max(1))
            .build();
        Self {
            agent,
            retries: cfg.retries,
            backoff: Duration::from_millis(cfg.backoff_ms),
            timeout_s: cfg.request_timeout_s,
            max_bytes: cfg.max_response_bytes,
        }
    }

    /// `POST url` with a JSON body; the parsed JSON answer. `request` names the call in errors.
    ///
    /// # Errors
    /// [`RolloutError::Status`], [`RolloutError::Transport`], [`RolloutError::Timeout`],
    /// [`RolloutError::TooLarge`], or [`RolloutError::Response`] for a body that is not JSON.
    pub fn post(&self, url: &str, body: &Value, request: &str) -> Result<Value> {
        let text = serde_json::to_string(body).map_err(rl_core::Error::from)?;
        self.with_retries(url, request, || {
            self.agent.post(url).set("Content-Type", "application/json").send_string(&text)
        })
    }

    /// [`Http::post`] without retries, for calls that must not run twice (a weight stream's
    /// receive: a second attempt would wait for bytes the trainer already sent).
    ///
    /// # Errors
    /// As [`Http::post`].
    pub fn post_once(&self, url: &str, body: &Value, request: &str) -> Result<Value> {
        let text = serde_json::to_string(body).map_err(rl_core::Error::from)?;
        self.once(url, request, &|| {
            self.agent.post(url).set("Content-Type", "application/json").send_string(&text)
        })
    }

    /// `GET url`; the parsed JSON answer (an empty body gives `Value::Null`).
    ///
    /// # Errors
    /// As [`Http::post`].
    pub fn get(&self, url: &str, request: &str) -> Result<Value> {
        self.with_retries(url, request, || self.agent.get(url).call())
    }

    fn with_retries(
        &self,
        url: &str,
        request: &str,
        call: impl Fn() -> std::result::Result<ureq::Response, ureq::Error>,
    ) -> Result<Value> {
        let mut delay = self.backoff;
        let mut attempt = 0;
        loop {
            let out = self.once(url, request, &call);
            match out {
                Err(e) if attempt < self.retries && retryable(&e) => {
                    attempt += 1;
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
                other => return other,
            }
        }
    }

    fn once(
        &self,
        url: &str,
        request: &str,
        call: &impl Fn() -> std::result::Result<ureq::Response, ureq::Error>,
    ) -> Result<Value> {
        match call() {
            Ok(resp) => {
                let body = self.read_body(resp, url, request)?;
                if body.iter().all(u8::is_ascii_whitespace) {
                    return Ok(Value::Null);
                }
                serde_json::from_slice(&body).map_err(|e| {
                    RolloutError::response(url, request, "body", format!("not JSON: {e}"))
                })
            }
            Err(ureq::Error::Status(status, resp)) => {
                let body = self.read_body(resp, url, request).unwrap_or_default();
                let cut = body.len().min(512);
                Err(RolloutError::Status {
                    url: url.into(),
                    request: request.into(),
                    status,
                    body: String::from_utf8_lossy(&body[..cut]).into_owned(),
                })
            }
            Err(ureq::Error::Transport(t)) => {
                let timed_out = std::error::Error::source(&t)
                    .and_then(|s| s.downcast_ref::<std::io::Error>())
                    .is_some_and(|io| {
                        matches!(
                            io.kind(),
                            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                        )
                    });
                if timed_out {
                    return Err(RolloutError::Timeout {
                        url: url.into(),
                        request: request.into(),
                        seconds: self.timeout_s,
                    });
                }
                Err(RolloutError::Transport {
                    url: url.into(),
                    request: request.into(),
                    kind: format!("{:?}", t.kind()),
                    reason: t.to_string(),
                })
            }
        }
    }

    fn read_body(&self, resp: ureq::Response, url: &str, request: &str) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        let read = resp.into_reader().take(self.max_bytes + 1).read_to_end(&mut buf);
        if let Err(e) = read {
            let kind = e.kind();
            if matches!(kind, std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) {
                return Err(RolloutError::Timeout {
                    url: url.into(),
                    request: request.into(),
                    seconds: self.timeout_s,
                });
            }
            return Err(RolloutError::Transport {
                url: url.into(),
                request: request.into(),
                kind: "Io".into(),
                reason: e.to_string(),
            });
        }
        if buf.len() as u64 > self.max_bytes {
            return Err(RolloutError::TooLarge {
                url: url.into(),
                request: request.into(),
                limit: self.max_bytes,
            });
        }
        Ok(buf)
    }
}
