//! librdkafka's batch APIs, which the `rdkafka` crate does not wrap: `rd_kafka_produce_batch`
//! and `rd_kafka_consume_batch_queue`.
//!
//! Why: through the crate's safe API every record is one FFI call, one payload copy and (on
//! the consumer) one event poll; on this two-core machine that per-record cost in the client
//! capped the benchmark before the broker did. Batches cross the boundary once per thousand
//! records, the producer enqueues its payload without copying it, and the consumer counts
//! bytes without touching them. librdkafka still does all the Kafka work (batching,
//! protocol, fetch sessions), so these are the same clients users run, driven efficiently.
//!
//! The unsafe code is confined here; each block says what keeps it sound.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::ptr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};

/// Records handed to librdkafka per call: about one `batch.size` of 1 KiB records.
pub(crate) const RECORDS_PER_CALL: usize = 1_000;

fn error_text(code: rdsys::rd_kafka_resp_err_t) -> String {
    // SAFETY: rd_kafka_err2str returns a static NUL-terminated string for every code.
    unsafe { CStr::from_ptr(rdsys::rd_kafka_err2str(code)) }.to_string_lossy().into_owned()
}

/// A producer's topic handle, for `rd_kafka_produce_batch`.
pub(crate) struct BatchProducer<'p, C: ProducerContext + 'static> {
    producer: &'p BaseProducer<C>,
    topic: *mut rdsys::rd_kafka_topic_t,
    /// Reused message descriptors: no allocation per call.
    messages: Vec<rdsys::rd_kafka_message_t>,
}

impl<'p, C: ProducerContext + 'static> BatchProducer<'p, C> {
    pub(crate) fn new(producer: &'p BaseProducer<C>, topic: &str) -> anyhow::Result<Self> {
        let name = CString::new(topic).context("topic name with a NUL byte")?;
        // SAFETY: the client pointer is valid while `producer` (borrowed for 'p) lives; a null
        // config means the topic's defaults. The handle is destroyed in Drop, before 'p ends.
        let handle =
            unsafe { rdsys::rd_kafka_topic_new(producer.client().native_ptr(), name.as_ptr(), ptr::null_mut()) };
        anyhow::ensure!(!handle.is_null(), "rd_kafka_topic_new failed for {topic}");
        Ok(BatchProducer { producer, topic: handle, messages: Vec::with_capacity(RECORDS_PER_CALL) })
    }

    /// Enqueues `count` records of `payload` to `partition` without copying the payload
    /// (librdkafka keeps a pointer to it until the record is sent, hence `'static`), retrying
    /// while the local queue is full, up to `stall`.
    pub(crate) fn send_shared(
        &mut self,
        partition: i32,
        payload: &'static [u8],
        count: usize,
        stall: Duration,
    ) -> anyhow::Result<()> {
        self.messages.clear();
        self.messages.extend((0..count).map(|_| message(payload)));
        // No flags: neither copied nor freed by librdkafka; a 'static payload outlives it.
        self.enqueue(partition, 0, stall)
    }

    /// Enqueues one record per `size` bytes of `values` to `partition`, each copied by
    /// librdkafka (for values that change, such as the e2e run's timestamps).
    pub(crate) fn send_copied(
        &mut self,
        partition: i32,
        values: &[u8],
        size: usize,
        stall: Duration,
    ) -> anyhow::Result<()> {
        self.messages.clear();
        self.messages.extend(values.chunks_exact(size).map(message));
        self.enqueue(partition, rdsys::RD_KAFKA_MSG_F_COPY, stall)
    }

    fn enqueue(&mut self, partition: i32, flags: i32, stall: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + stall;
        while !self.messages.is_empty() {
            let count = i32::try_from(self.messages.len()).context("batch too large")?;
            // SAFETY: `messages` holds `count` initialised descriptors whose payload pointers
            // are valid (shared payloads are 'static; copied ones are copied during the call). librdkafka only writes each descriptor's `err` field.
            unsafe { rdsys::rd_kafka_produce_batch(self.topic, partition, flags, self.messages.as_mut_ptr(), count) };
            let first_error = self
                .messages
                .iter()
                .map(|m| m.err)
                .find(|e| *e != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR);
            match first_error {
                None => self.messages.clear(),
                Some(rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__QUEUE_FULL) if Instant::now() < deadline => {
                    // Keep only the refused ones and let delivery reports drain the queue.
                    self.messages.retain(|m| m.err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR);
                    for m in &mut self.messages {
                        m.err = rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR;
                    }
                    self.producer.poll(Duration::from_millis(1));
                }
                Some(code) => anyhow::bail!("producing: {}", error_text(code)),
            }
        }
        Ok(())
    }
}

impl<C: ProducerContext + 'static> Drop for BatchProducer<'_, C> {
    fn drop(&mut self) {
        // SAFETY: created by rd_kafka_topic_new in `new`, destroyed once, while the client lives.
        unsafe { rdsys::rd_kafka_topic_destroy(self.topic) };
    }
}

fn message(payload: &[u8]) -> rdsys::rd_kafka_message_t {
    rdsys::rd_kafka_message_t {
        err: rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR,
        rkt: ptr::null_mut(),
        partition: 0,
        payload: payload.as_ptr() as *mut _,
        len: payload.len(),
        key: ptr::null_mut(),
        key_len: 0,
        offset: 0,
        _private: ptr::null_mut(),
    }
}

/// A consumer's message queue, read a batch at a time.
pub(crate) struct BatchConsumer<'c> {
    _consumer: &'c BaseConsumer,
    queue: *mut rdsys::rd_kafka_queue_t,
    batch: Vec<*mut rdsys::rd_kafka_message_t>,
}

impl<'c> BatchConsumer<'c> {
    /// The consumer must have a `group.id` (so its main queue is the consumer queue) and an
    /// assignment; records are read from that queue.
    pub(crate) fn new(consumer: &'c BaseConsumer) -> anyhow::Result<Self> {
        // SAFETY: the client pointer is valid while `consumer` lives; the queue reference is
        // released in Drop, before the borrow ends.
        let queue = unsafe { rdsys::rd_kafka_queue_get_consumer(consumer.client().native_ptr()) };
        anyhow::ensure!(!queue.is_null(), "the consumer has no consumer queue (no group.id?)");
        Ok(BatchConsumer { _consumer: consumer, queue, batch: vec![ptr::null_mut(); RECORDS_PER_CALL] })
    }

    /// Waits up to `timeout` for a record, then takes every record already queued (up to a
    /// batch) and calls `each` with every record's payload (empty for a null value), without
    /// copying; returns how many records there were. Never waits for a batch to fill:
    /// `rd_kafka_consume_batch_queue` blocks until it has the whole batch or times out, which
    /// would add that wait to every e2e latency.
    pub(crate) fn poll(&mut self, timeout: Duration, mut each: impl FnMut(&[u8])) -> anyhow::Result<usize> {
        let mut n = self.take(0, Duration::ZERO, &mut each)?;
        if n == 0 {
            n = self.take(0, timeout, &mut each)?;
            if n > 0 {
                n += self.take(n, Duration::ZERO, &mut each)?;
            }
        }
        Ok(n)
    }

    /// One `rd_kafka_consume_batch_queue` into `batch[from..]` (a single slot when it may wait,
    /// so it returns on the first record).
    fn take(&mut self, from: usize, timeout: Duration, each: &mut impl FnMut(&[u8])) -> anyhow::Result<usize> {
        let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let room = if timeout.is_zero() { self.batch.len() - from } else { 1.min(self.batch.len() - from) };
        let slots = &mut self.batch[from..from + room];
        // SAFETY: `slots` has room for `slots.len()` pointers; librdkafka fills the first `n`.
        let n = unsafe { rdsys::rd_kafka_consume_batch_queue(self.queue, timeout_ms, slots.as_mut_ptr(), slots.len()) };
        let n = usize::try_from(n).map_err(|_| anyhow::anyhow!("rd_kafka_consume_batch_queue failed"))?;
        let mut failure = None;
        for &message in &slots[..n] {
            // SAFETY: each of the first `n` pointers is a valid message owned by us until it
            // is destroyed right after its payload is looked at.
            unsafe {
                let m = &*message;
                if m.err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                    failure.get_or_insert(m.err);
                } else if m.payload.is_null() {
                    each(&[]);
                } else {
                    each(std::slice::from_raw_parts(m.payload as *const u8, m.len));
                }
                rdsys::rd_kafka_message_destroy(message);
            }
        }
        match failure {
            Some(code) => anyhow::bail!("consume error: {}", error_text(code)),
            None => Ok(n),
        }
    }
}

impl Drop for BatchConsumer<'_> {
    fn drop(&mut self) {
        // SAFETY: the reference taken in `new`, released once.
        unsafe { rdsys::rd_kafka_queue_destroy(self.queue) };
    }
}
