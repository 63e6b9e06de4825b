//! Any bytes as a request frame: decoding and handling must never panic or abort; the broker
//! either answers or reports an error that closes the connection.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use runnel_broker::config::BrokerConfig;
use runnel_broker::Broker;

// The broker's own allocator: hostile array counts reserve address space instead of aborting.
#[global_allocator]
static GLOBAL: runnel_broker::alloc::Allocator = runnel_broker::alloc::Allocator;

struct Harness {
    _dir: tempfile::TempDir,
    broker: Arc<Broker>,
    runtime: tokio::runtime::Runtime,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..Default::default() };
        let broker = Broker::open(config).expect("broker");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
        Harness { _dir: dir, broker, runtime }
    })
}

fuzz_target!(|data: &[u8]| {
    let harness = harness();
    let frame = bytes::Bytes::copy_from_slice(data);
    let _ = harness.runtime.block_on(async {
        // Long polls are capped; keep fuzz iterations fast regardless.
        tokio::time::timeout(std::time::Duration::from_millis(50), runnel_broker::server::respond_to(&harness.broker, frame)).await
    });
});
