//! Work that outlives the request that started it: an audited change runs to its end in its
//! own task even when the client hangs up (`to_completion`), and an upstream with a short
//! answer budget is answered before the store write that follows (`acknowledge_first`). Both
//! hold a permit of the listener's cap on detached work until the work ends.

use std::sync::{Arc, LazyLock};

use tokio::sync::Semaphore;

use crate::admission::LogThrottle;
use crate::api_error::{ApiError, ErrorCode};
use crate::broker::{error_answer, Answer};

/// Lines a second about requests refused for want of a permit: on the public listener
/// anyone can make them, so they are counted (by the caller's `on_full`) and logged
/// throttled, not one by one.
static FULL_LOG: LazyLock<LogThrottle> = LazyLock::new(|| LogThrottle::new(5));

/// A request refused with every permit taken: counted by `on_full`, logged throttled.
fn full<T: From<Answer>>(request_id: &str, on_full: impl FnOnce()) -> T {
    on_full();
    if let Some(suppressed) = FULL_LOG.admit() {
        tracing::warn!(
            request_id,
            suppressed,
            "too many operations in progress; request refused"
        );
    }
    error_answer(
        &ApiError::new(
            ErrorCode::Unavailable,
            "too many operations in progress; retry shortly",
        ),
        None,
        request_id,
    )
    .into()
}

/// Runs `work` in its own task and waits for it: dropping the caller (a client that hung
/// up) does not cancel it, so an audited change always reaches its commit or its failure
/// record.
///
/// Bounded: each such task holds a permit of `detached` until it ends, and with none left the
/// request is refused (`unavailable`, counted by `on_full`) before anything is done, so
/// clients that connect, ask and hang up cannot pile up work beyond the connection limit.
pub(super) async fn to_completion<T: From<Answer> + Send + 'static>(
    request_id: &str,
    (detached, on_full): (&Arc<Semaphore>, impl FnOnce()),
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let Ok(permit) = detached.clone().try_acquire_owned() else {
        return full(request_id, on_full);
    };
    tokio::spawn(async move {
        let _permit = permit;
        work.await
    })
    .await
    .unwrap_or_else(|e| {
        tracing::error!(request_id, error = %e, "request task failed");
        error_answer(
            &ApiError::new(ErrorCode::Internal, "the request could not be completed"),
            None,
            request_id,
        )
        .into()
    })
}

/// Runs `work` to completion like [`to_completion`], but answers with what `work` sends
/// through its acknowledgement channel, as soon as it sends it: the rest of the work (an
/// audited store write) goes on after the answer has left. An upstream with a short answer
/// budget (Forge: 5 s) is never kept waiting on the store.
pub(super) async fn acknowledge_first<T, W, F>(
    request_id: &str,
    (detached, on_full): (&Arc<Semaphore>, impl FnOnce()),
    work: W,
) -> T
where
    T: From<Answer> + Send + 'static,
    W: FnOnce(tokio::sync::oneshot::Sender<T>) -> F,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let refused = |code: ErrorCode, message: &str| -> T {
        error_answer(&ApiError::new(code, message), None, request_id).into()
    };
    let Ok(permit) = detached.clone().try_acquire_owned() else {
        return full(request_id, on_full);
    };
    let (ack, answer) = tokio::sync::oneshot::channel();
    let work = work(ack);
    tokio::spawn(async move {
        let _permit = permit;
        work.await;
    });
    answer.await.unwrap_or_else(|_| {
        tracing::error!(request_id, "request task ended without an answer");
        refused(ErrorCode::Internal, "the request could not be completed")
    })
}

#[cfg(test)]
mod tests {
    /// Forge's 5 s budget, without timers: the answer arrives while the work that follows it
    /// (standing in for the store write) is still held, and that work then runs to its end
    /// holding its permit of detached work.
    #[tokio::test]
    async fn the_acknowledgement_leaves_while_the_write_is_held() {
        use std::sync::Arc;
        let detached = Arc::new(tokio::sync::Semaphore::new(1));
        let (release, held) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done) = tokio::sync::oneshot::channel::<()>();
        let answer: crate::broker::Answer =
            super::acknowledge_first("req_x", (&detached, || {}), |ack| async move {
                let _ = ack.send(crate::broker::Answer {
                    status: http::StatusCode::OK,
                    body: zeroize::Zeroizing::new(b"ack".to_vec()),
                });
                // The "store write": blocked until the test releases it.
                let _ = held.await;
                let _ = done_tx.send(());
            })
            .await;
        assert_eq!(answer.status, http::StatusCode::OK);
        assert_eq!(&answer.body[..], b"ack");
        // The write is still held, and still counts against the detached-work cap.
        assert_eq!(detached.available_permits(), 0);
        release.send(()).unwrap();
        done.await.unwrap();
        // A task that ends without answering is an internal error, not a hang.
        let failed: crate::broker::Answer =
            super::acknowledge_first("req_y", (&detached, || {}), |_ack| async move {}).await;
        assert_eq!(failed.status, http::StatusCode::INTERNAL_SERVER_ERROR);
    }

    /// With every permit taken, a request is refused before its work starts, and each
    /// refusal is counted by the caller's `on_full` (the public listener's metrics: its
    /// callers are anonymous, counted rather than audited).
    #[tokio::test]
    async fn a_refusal_for_want_of_a_permit_is_counted() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let detached = Arc::new(tokio::sync::Semaphore::new(0));
        let counted = AtomicUsize::new(0);
        let ran = Arc::new(AtomicUsize::new(0));
        for _ in 0..20 {
            let r = ran.clone();
            let a: crate::broker::Answer = super::to_completion(
                "req_z",
                (&detached, || {
                    counted.fetch_add(1, Ordering::SeqCst);
                }),
                async move {
                    r.fetch_add(1, Ordering::SeqCst);
                    crate::broker::Answer {
                        status: http::StatusCode::OK,
                        body: zeroize::Zeroizing::new(Vec::new()),
                    }
                },
            )
            .await;
            assert_eq!(a.status, http::StatusCode::SERVICE_UNAVAILABLE);
            let b: crate::broker::Answer = super::acknowledge_first(
                "req_z",
                (&detached, || {
                    counted.fetch_add(1, Ordering::SeqCst);
                }),
                |_ack| async move {},
            )
            .await;
            assert_eq!(b.status, http::StatusCode::SERVICE_UNAVAILABLE);
        }
        assert_eq!(counted.load(Ordering::SeqCst), 40);
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }
}
