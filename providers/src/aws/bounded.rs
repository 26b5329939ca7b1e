//! STS answers are read with a size bound (THREATS.md: every upstream answer is bounded in
//! size and time). The SDK reads a whole answer into memory before it parses it, for as long
//! as the attempt's deadline lets it stream; this interceptor wraps the answer's body before
//! that read so it fails past [`MAX_STS_ANSWER`] bytes. An STS answer is a few KiB. Such a
//! failure is not retried (the SDK would take it for a transient one): an upstream that
//! answers that way once is asked once.

use aws_sdk_sts::config::interceptors::{
    BeforeDeserializationInterceptorContextMut, InterceptorContext,
};
use aws_sdk_sts::config::retry::{ClassifyRetry, RetryAction};
use aws_sdk_sts::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_types::body::SdkBody;

/// Largest STS answer read, bytes.
pub const MAX_STS_ANSWER: usize = 256 * 1024;

/// Bounds every answer's body at [`MAX_STS_ANSWER`].
#[derive(Debug)]
pub(super) struct BoundedAnswers;

impl Intercept for BoundedAnswers {
    fn name(&self) -> &'static str {
        "credbroker::BoundedAnswers"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let response = context.response_mut();
        let body = response.take_body();
        *response.body_mut() =
            body.map(|b| SdkBody::from_body_1_x(http_body_util::Limited::new(b, MAX_STS_ANSWER)));
        Ok(())
    }
}

/// Forbids a retry after an answer past [`MAX_STS_ANSWER`].
#[derive(Debug)]
pub(super) struct NoRetryPastTheBound;

impl ClassifyRetry for NoRetryPastTheBound {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        match ctx.output_or_error() {
            Some(Err(e)) if over_the_bound(e) => RetryAction::RetryForbidden,
            _ => RetryAction::NoActionIndicated,
        }
    }

    fn name(&self) -> &'static str {
        "credbroker::NoRetryPastTheBound"
    }
}

/// Whether reading the answer stopped at its size bound.
pub(super) fn over_the_bound(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        next = e.source();
    }
    false
}
