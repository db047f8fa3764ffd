//! A record as read from the broker, before decoding: borrowed from the consumer's message,
//! or from one a lane kept for the next batch.

use rdkafka::message::{Headers, Message};

use crate::expr::Val;

/// A record as read from the broker, before decoding.
pub struct RawRecord<'a> {
    /// Index of the partition in [`Source::owned`].
    pub index: usize,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    headers: Option<HeaderRef<'a>>,
}

/// A record's headers, from a message just polled or one kept for the next batch.
#[derive(Clone, Copy)]
pub(super) enum HeaderRef<'a> {
    Borrowed(&'a rdkafka::message::BorrowedHeaders),
    Owned(&'a rdkafka::message::OwnedHeaders),
}

fn headers_val<H: Headers>(h: &H) -> Val {
    let fields = h
        .iter()
        .map(|h| {
            (
                std::sync::Arc::from(h.key),
                crate::record::decode_key(h.value),
            )
        })
        .collect();
    Val::Map(std::sync::Arc::new(fields))
}

impl<'a> RawRecord<'a> {
    pub(super) fn of<M: Message>(index: usize, m: &'a M, headers: Option<HeaderRef<'a>>) -> Self {
        RawRecord {
            index,
            offset: m.offset(),
            timestamp: m.timestamp().to_millis(),
            key: m.key(),
            payload: m.payload(),
            headers,
        }
    }

    /// The record's headers as a map of strings (bytes when not UTF-8).
    pub fn headers(&self) -> Val {
        match self.headers {
            None => Val::Map(Default::default()),
            Some(HeaderRef::Borrowed(h)) => headers_val(h),
            Some(HeaderRef::Owned(h)) => headers_val(h),
        }
    }

    /// The value of the record's first header named `name`: no allocation, and none of the
    /// work of [`RawRecord::headers`] for a record without headers.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        fn find<'h, H: Headers>(h: &'h H, name: &str) -> Option<&'h [u8]> {
            h.iter().find(|x| x.key == name).and_then(|x| x.value)
        }
        match self.headers {
            None => None,
            Some(HeaderRef::Borrowed(h)) => find(h, name),
            Some(HeaderRef::Owned(h)) => find(h, name),
        }
    }

    /// The record's headers as they came, for a dead letter to keep.
    pub fn header_pairs(&self) -> Vec<(String, Option<Vec<u8>>)> {
        fn pairs<H: Headers>(h: &H) -> Vec<(String, Option<Vec<u8>>)> {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect()
        }
        match self.headers {
            None => Vec::new(),
            Some(HeaderRef::Borrowed(h)) => pairs(h),
            Some(HeaderRef::Owned(h)) => pairs(h),
        }
    }
}
