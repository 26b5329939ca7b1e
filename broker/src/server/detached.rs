//! Work that outlives the request that started it: an audited change runs to its end in its
//! own task even when the client hangs up (`to_completion`), and an upstream with a short
//! answer budget is answered before the store write that follows (`acknowledge_first`). Both
//! hold a permit of the listener's cap on detached work until the work ends.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::api_error::{ApiError, ErrorCode};
use crate::broker::{error_answer, Answer};

/// Runs `work` in its own task and waits for it: dropping the caller (a client that hung
/// up) does not cancel it, so an audited change always reaches its commit or its failure
/// record.
///
/// Bounded: each such task holds a permit of `detached` until it ends, and with none left the
/// request is refused (`unavailable`) before anything is done, so clients that connect, ask
/// and hang up cannot pile up work beyond the connection limit.
pub(super) async fn to_completion<T: From<Answer> + Send + 'static>(
    request_id: &str,
    detached: &Arc<Semaphore>,
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let Ok(permit) = detached.clone().try_acquire_owned() else {
        tracing::warn!(
            request_id,
            "too many operations in progress; request refused"
        );
        return error_answer(
            &ApiError::new(
                ErrorCode::Unavailable,
                "too many operations in progress; retry shortly",
            ),
            None,
            request_id,
        )
        .into();
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
    detached: &Arc<Semaphore>,
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
        tracing::warn!(
            request_id,
            "too many operations in progress; request refused"
        );
        return refused(
            ErrorCode::Unavailable,
            "too many operations in progress; retry shortly",
        );
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
            super::acknowledge_first("req_x", &detached, |ack| async move {
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
            super::acknowledge_first("req_y", &detached, |_ack| async move {}).await;
        assert_eq!(failed.status, http::StatusCode::INTERNAL_SERVER_ERROR);
    }
}
