//! Any bytes as the active segment of a partition after a crash: opening the log must recover
//! without panicking, keep only whole valid batches, and then serve and accept appends.
//! (No index file: recovery then checks the whole segment. With an index, recovery trusts the
//! bytes before its last entry — see docs/STORAGE.md.)
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use runnel_broker::config::BrokerConfig;
use runnel_broker::protocol::batch::{peek_batch_bytes, validate_batch};
use runnel_broker::storage::{PartitionLog, SystemClock};

fuzz_target!(|segment: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("00000000000000000000.log"), segment).expect("write segment");
    let config = BrokerConfig::default().log_config(&Default::default());
    let mut log = PartitionLog::open(dir.path(), config, Arc::new(SystemClock)).expect("recovery never fails on bad bytes");
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let slice = log.read(offset, 1 << 20).expect("recovered log reads").expect("data below end");
        let bytes = slice.read().expect("slice reads");
        let len = peek_batch_bytes(&bytes).expect("a batch");
        let header = validate_batch(&bytes[..len]).expect("only valid batches survive recovery");
        assert!(header.next_offset() > offset);
        offset = header.next_offset();
    }
    assert!(log.size_bytes() <= segment.len() as u64);
});
