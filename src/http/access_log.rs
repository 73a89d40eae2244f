//! One log line per request, written when the response has been sent (so `bytes` and `ms`
//! cover the whole download), and the request counters of `/metrics`.
//!
//! Fields: remote, scheme, method, path, status, bytes, ms, user_agent. The line goes through
//! `tracing` under the target `access` (`--log-format json` makes it a JSON object;
//! `SIMPLESTREAM_LOG=info,access=off` silences it). A download the client abandoned is logged
//! as "request aborted" with the bytes sent so far.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::response::Response;
use bytes::Bytes;
use http::header::USER_AGENT;
use http_body::{Body, Frame, SizeHint};

use crate::metrics::{self, Scheme};

/// What is known of a request when it arrives.
#[derive(Debug)]
pub struct AccessRecord {
    scheme: Scheme,
    remote: SocketAddr,
    method: String,
    path: String,
    user_agent: String,
    started: Instant,
}

/// Longest path and user agent kept for the log.
const MAX_FIELD: usize = 512;

fn clip(text: &str) -> String {
    crate::fsutil::clip(text, MAX_FIELD)
}

impl AccessRecord {
    /// `method` and `path` as the client sent them (`-` when the request was unreadable).
    pub fn new(
        scheme: Scheme,
        remote: SocketAddr,
        method: &str,
        path: &str,
        user_agent: Option<&str>,
    ) -> AccessRecord {
        AccessRecord {
            scheme,
            remote,
            method: clip(method),
            path: clip(path),
            user_agent: clip(user_agent.unwrap_or("-")),
            started: Instant::now(),
        }
    }

    /// Logs the line and counts the request.
    pub fn finish(self, status: u16, bytes: u64, complete: bool) {
        metrics::record_request(self.scheme, status, bytes);
        let ms = self.started.elapsed().as_millis() as u64;
        macro_rules! line {
            ($message:literal) => {
                tracing::info!(
                    target: "access",
                    remote = %self.remote,
                    scheme = self.scheme.as_str(),
                    method = %self.method,
                    path = %self.path,
                    status,
                    bytes,
                    ms,
                    user_agent = %self.user_agent,
                    $message
                )
            };
        }
        if complete {
            line!("request");
        } else {
            line!("request aborted");
        }
    }

    /// The record of an HTTPS request as it arrives.
    pub fn of_request<B>(
        scheme: Scheme,
        remote: SocketAddr,
        request: &http::Request<B>,
    ) -> AccessRecord {
        AccessRecord::new(
            scheme,
            remote,
            request.method().as_str(),
            request.uri().path(),
            request
                .headers()
                .get(USER_AGENT)
                .and_then(|v| v.to_str().ok()),
        )
    }

    /// Wraps the response body so the line is written when the body is done (or dropped
    /// half-way). A HEAD answer is complete without a body.
    pub fn log_when_sent(self, response: Response, head_only: bool) -> http::Response<LoggedBody> {
        let status = response.status().as_u16();
        response.map(|body| LoggedBody {
            inner: body,
            record: Some(self),
            status,
            bytes: 0,
            complete: head_only,
        })
    }
}

/// A response body that counts what it yields and logs the request when dropped.
pub struct LoggedBody {
    inner: axum::body::Body,
    record: Option<AccessRecord>,
    status: u16,
    bytes: u64,
    complete: bool,
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => self.complete = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            let complete = self.complete || self.inner.is_end_stream();
            record.finish(self.status, self.bytes, complete);
        }
    }
}
