//! A response body whose bytes are zeroized when hyper is done with them, so a resolve
//! response carrying a credential does not leave plaintext in freed memory.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Buf;
use hyper::body::{Body, Frame, SizeHint};
use zeroize::Zeroizing;

/// The body's single chunk.
pub struct ZeroizingBuf {
    data: Zeroizing<Vec<u8>>,
    pos: usize,
}

impl Buf for ZeroizingBuf {
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn chunk(&self) -> &[u8] {
        &self.data[self.pos..]
    }

    fn advance(&mut self, cnt: usize) {
        self.pos = (self.pos + cnt).min(self.data.len());
    }
}

/// A complete, single-chunk body.
pub struct ZeroizingBody {
    data: Option<Zeroizing<Vec<u8>>>,
}

impl ZeroizingBody {
    /// A body holding `data`.
    pub fn new(data: Zeroizing<Vec<u8>>) -> Self {
        ZeroizingBody { data: Some(data) }
    }
}

impl Body for ZeroizingBody {
    type Data = ZeroizingBuf;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Poll::Ready(
            self.data
                .take()
                .filter(|d| !d.is_empty())
                .map(|data| Ok(Frame::data(ZeroizingBuf { data, pos: 0 }))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.data.as_ref().is_none_or(|d| d.is_empty())
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}
