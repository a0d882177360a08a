//! Writes run to their end even when the client goes away.
//!
//! hyper drops a request's future when its connection closes (a client that times out, a load
//! balancer that resets, a user who presses Ctrl-C). For a read that is harmless. For a write
//! it would stop the handler at whatever await it had reached: between two store writes of a
//! control-plane operation, between a conditional write's search and its write. So every
//! request that may change state runs on a task of its own; the connection's future only
//! waits for it. A client that leaves early loses its answer, never half of its write.
//!
//! The tasks are tracked, so a graceful stop waits for them before the final lake flush.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio_util::task::TaskTracker;

/// Middleware: runs a request whose method is not safe (RFC 9110: anything but GET, HEAD,
/// OPTIONS, TRACE) on a tracked task of its own.
pub(crate) async fn run_to_completion(
    State(tasks): State<TaskTracker>,
    request: Request,
    next: Next,
) -> Response {
    if request.method().is_safe() {
        return next.run(request).await;
    }
    match tasks.spawn(next.run(request)).await {
        Ok(response) => response,
        // Panics are caught inside (CatchPanicLayer); this is the runtime shutting down.
        Err(e) => {
            tracing::error!("a write request's task ended without an answer: {e}");
            (StatusCode::SERVICE_UNAVAILABLE, "the server is stopping").into_response()
        }
    }
}
