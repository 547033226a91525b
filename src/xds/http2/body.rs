//! A request body: DATA frames the connection received for one stream, waiting for the
//! handler. Flow-control credit goes back to the peer only as the handler takes the data,
//! so a peer can never have more in flight than the windows this server advertised.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use http_body::Frame;
use tonic::Status;

use super::frame::Reason;

#[derive(Debug)]
enum End {
    Open,
    /// The peer sent END_STREAM.
    Finished,
    /// The stream was reset (by the peer, or by this server closing the connection).
    Reset(Reason),
}

/// DATA payloads shorter than this are gathered into one chunk: a peer sending one-octet
/// frames must not cost an allocation per octet of window.
const GATHER: usize = 4096;

#[derive(Debug)]
struct State {
    chunks: VecDeque<Bytes>,
    /// Small payloads not yet handed over, in one buffer.
    tail: BytesMut,
    end: End,
    /// The handler's task, waiting for data.
    waker: Option<Waker>,
    /// Octets the handler took (or dropped) that the peer was not credited for yet.
    released: usize,
    /// The handler dropped the body: data is credited as it arrives.
    dropped: bool,
}

/// The part of a request body the connection and the handler share.
#[derive(Debug)]
pub struct Inbox {
    state: Mutex<State>,
    /// Wakes the connection to send WINDOW_UPDATE frames.
    connection: Arc<AtomicWaker>,
}

impl Inbox {
    pub fn new(connection: Arc<AtomicWaker>) -> Arc<Inbox> {
        Arc::new(Inbox {
            state: Mutex::new(State {
                chunks: VecDeque::new(),
                tail: BytesMut::new(),
                end: End::Open,
                waker: None,
                released: 0,
                dropped: false,
            }),
            connection,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock is never held across code that can panic; recover the state if it was.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues data for the handler.
    pub fn push(&self, data: &[u8]) {
        let mut state = self.lock();
        if state.dropped {
            state.released += data.len();
            drop(state);
            self.connection.wake();
            return;
        }
        if data.len() < GATHER {
            state.tail.extend_from_slice(data);
            if state.tail.len() >= GATHER {
                let full = std::mem::take(&mut state.tail).freeze();
                state.chunks.push_back(full);
            }
        } else {
            if !state.tail.is_empty() {
                let small = std::mem::take(&mut state.tail).freeze();
                state.chunks.push_back(small);
            }
            state.chunks.push_back(Bytes::copy_from_slice(data));
        }
        if let Some(w) = state.waker.take() {
            w.wake();
        }
    }

    /// The peer ended its side; or, with a reason, the stream was reset.
    pub fn close(&self, reset: Option<Reason>) {
        let mut state = self.lock();
        if matches!(state.end, End::Open) {
            state.end = reset.map_or(End::Finished, End::Reset);
        }
        if let Some(w) = state.waker.take() {
            w.wake();
        }
    }

    /// Octets to credit back to the peer.
    pub fn take_released(&self) -> usize {
        std::mem::take(&mut self.lock().released)
    }
}

/// The body handed to the handler.
#[derive(Debug)]
pub struct RequestBody {
    inbox: Arc<Inbox>,
}

impl RequestBody {
    pub fn new(inbox: Arc<Inbox>) -> Self {
        RequestBody { inbox }
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let mut state = self.inbox.lock();
        let next = match state.chunks.pop_front() {
            Some(data) => Some(data),
            // Taken whole: an idle stream keeps no buffer.
            None if !state.tail.is_empty() => Some(std::mem::take(&mut state.tail).freeze()),
            None => None,
        };
        if state.chunks.is_empty() && state.chunks.capacity() > 0 {
            // An idle stream keeps no queue either.
            state.chunks = VecDeque::new();
        }
        if let Some(data) = next {
            state.released += data.len();
            drop(state);
            self.inbox.connection.wake();
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        match state.end {
            End::Finished => Poll::Ready(None),
            End::Reset(reason) => Poll::Ready(Some(Err(Status::cancelled(format!(
                "the stream was reset: {reason}"
            ))))),
            End::Open => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let state = self.inbox.lock();
        state.chunks.is_empty() && state.tail.is_empty() && matches!(state.end, End::Finished)
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let mut state = self.inbox.lock();
        state.dropped = true;
        let queued: usize = state.chunks.drain(..).map(|c| c.len()).sum();
        state.released += queued + std::mem::take(&mut state.tail).len();
        drop(state);
        self.inbox.connection.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn should_hand_over_data_then_the_end_and_release_what_was_taken() {
        let inbox = Inbox::new(Arc::default());
        let mut body = RequestBody::new(Arc::clone(&inbox));
        let large = vec![7u8; GATHER];
        inbox.push(b"abc");
        inbox.push(b"de");
        inbox.push(&large);
        inbox.push(b"f");
        assert_eq!(inbox.take_released(), 0, "nothing taken yet");
        // Small payloads arrive gathered, in order with the large one.
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"abcde");
        assert_eq!(inbox.take_released(), 5);
        let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(second.len(), GATHER);
        inbox.close(None);
        assert!(
            !http_body::Body::is_end_stream(&body),
            "data is still queued"
        );
        let third = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&third[..], b"f");
        assert!(body.frame().await.is_none());
        assert!(http_body::Body::is_end_stream(&body));
        assert_eq!(inbox.take_released(), GATHER + 1);
    }

    #[tokio::test]
    async fn should_fail_a_reset_stream_and_credit_data_once_the_body_is_gone() {
        let inbox = Inbox::new(Arc::default());
        let mut body = RequestBody::new(Arc::clone(&inbox));
        inbox.push(b"queued");
        inbox.close(Some(Reason::CANCEL));
        body.frame().await.unwrap().unwrap();
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::Cancelled);
        assert!(err.message().contains("CANCEL"), "{}", err.message());

        let inbox = Inbox::new(Arc::default());
        let body = RequestBody::new(Arc::clone(&inbox));
        inbox.push(b"1234");
        drop(body);
        assert_eq!(inbox.take_released(), 4, "queued data credited on drop");
        inbox.push(b"56");
        assert_eq!(inbox.take_released(), 2, "later data credited at once");
    }
}
