//! Oversized gRPC messages. etcd's gRPC server (grpc-go) refuses a request larger than its
//! receive limit (`--max-request-bytes` + 512 KiB) with `ResourceExhausted`; tonic reports
//! the same condition as `OutOfRange`. This layer gives clients etcd's code and grpc-go's
//! message, so their retry and error handling sees what it expects.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::http::{HeaderValue, Request, Response};
use tower::{Layer, Service};

const OUT_OF_RANGE: &[u8] = b"11";
const RESOURCE_EXHAUSTED: &str = "8";
const TONIC_TOO_LARGE: &str = "decoded message length too large";

#[derive(Debug, Clone, Copy, Default)]
pub struct OversizeLayer;

impl<S> Layer<S> for OversizeLayer {
    type Service = Oversize<S>;

    fn layer(&self, inner: S) -> Oversize<S> {
        Oversize { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Oversize<S> {
    inner: S,
}

/// grpc-go's wording, rebuilt from tonic's "found N bytes, the limit is: M bytes".
fn grpc_go_message(tonic_message: &str) -> Option<String> {
    let numbers: Vec<&str> = tonic_message
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .collect();
    match numbers.as_slice() {
        [found, limit] => Some(format!("grpc: received message larger than max ({found} vs. {limit})")),
        _ => None,
    }
}

impl<S, B, RB> Service<Request<B>> for Oversize<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            let headers = resp.headers_mut();
            let too_large = headers.get("grpc-status").is_some_and(|v| v.as_bytes() == OUT_OF_RANGE)
                && headers
                    .get("grpc-message")
                    .and_then(|m| m.to_str().ok())
                    .is_some_and(|m| {
                        // grpc-message is percent-encoded; the phrase has spaces as %20.
                        m.replace("%20", " ").contains(TONIC_TOO_LARGE)
                    });
            if too_large {
                let msg = headers
                    .get("grpc-message")
                    .and_then(|m| m.to_str().ok())
                    .and_then(|m| grpc_go_message(&m.replace("%20", " ")));
                headers.insert("grpc-status", HeaderValue::from_static(RESOURCE_EXHAUSTED));
                if let Some(v) = msg.and_then(|m| HeaderValue::from_str(&m.replace(' ', "%20")).ok()) {
                    headers.insert("grpc-message", v);
                }
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_tonic_wording() {
        assert_eq!(
            grpc_go_message(
                "Error, decoded message length too large: found 2300011 bytes, the limit is: 2097152 bytes"
            )
            .as_deref(),
            Some("grpc: received message larger than max (2300011 vs. 2097152)")
        );
        assert_eq!(grpc_go_message("something else"), None);
    }
}
