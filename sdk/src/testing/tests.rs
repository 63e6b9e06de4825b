//! The entry-point macros, run end to end through the harness (one module per transform,
//! since each macro defines `runnel_instance` where it is called).

use crate::abi::{ERR_MALFORMED, ERR_PROCESSING};
use crate::log::Level;
use crate::testing::Harness;
use crate::{Output, Record};

mod upper {
    use crate::{Error, Output, Record};

    fn upper(record: Record) -> Result<Output, Error> {
        let text = record.value_str()?.to_uppercase();
        let index = if text.starts_with('!') { 1 } else { 0 };
        Ok(Output::from(record).with_value(text).to(index))
    }
    crate::map!(upper);
}

#[test]
fn map_transforms_each_record_and_keeps_key_headers_and_timestamp() {
    let mut h = Harness::new(upper::runnel_instance);
    let input = Record::new("hi").with_key("k").with_timestamp(42).with_header("h", "v");
    let out = h.run(vec![input, Record::new("!x")]).expect("batch");
    assert_eq!(
        out,
        vec![
            Output::new("HI").with_key("k").with_timestamp(42).with_header("h", "v"),
            Output::new("!X").with_timestamp(0).to(1),
        ]
    );
}

#[test]
fn a_user_error_fails_the_batch_with_code_minus_one_and_names_the_offset() {
    let mut h = Harness::new(upper::runnel_instance);
    let tombstone = Record { offset: 7, ..Record::default() };
    let err = h.run(vec![Record::new("ok"), tombstone]).expect_err("tombstone has no text");
    assert_eq!(err.code, ERR_PROCESSING);
    assert!(err.message.starts_with("record at offset 7: "), "{}", err.message);
    assert_eq!(h.last_error(), Some(err.message.as_str()));
}

#[test]
fn malformed_input_fails_with_code_minus_two() {
    let mut h = Harness::new(upper::runnel_instance);
    let err = h.run_encoded(&[1, 0, 0]).expect_err("truncated");
    assert_eq!(err.code, ERR_MALFORMED);
}

mod prefix_filter {
    use crate::{env, Error, Record};

    pub(super) struct Config {
        prefix: String,
    }

    fn config() -> Result<Config, Error> {
        Ok(Config { prefix: env::require("PREFIX")? })
    }

    fn keep(config: &Config, record: &Record) -> Result<bool, Error> {
        crate::debug!("checking offset {}", record.offset);
        Ok(record.value_str()?.starts_with(&config.prefix))
    }
    crate::filter!(keep, config = config);
}

#[test]
fn filter_with_config_reads_env_once_and_keeps_matching_records_unchanged() {
    let mut h = Harness::new(prefix_filter::runnel_instance).env("PREFIX", "a");
    let out = h.run_values(&["apple", "banana", "avocado"]).expect("batch");
    let values: Vec<_> = out.iter().map(|o| o.value_str().unwrap_or("")).collect();
    assert_eq!(values, vec!["apple", "avocado"]);
    assert_eq!(h.logs().len(), 3);
    assert_eq!(h.logs()[0], (Level::Debug, "checking offset 0".to_string()));
}

#[test]
fn missing_required_env_fails_initialization_with_its_name() {
    let mut h = Harness::new(prefix_filter::runnel_instance);
    let err = h.init().expect_err("PREFIX missing");
    assert!(err.message.contains("PREFIX"), "{}", err.message);
}

mod evens {
    use crate::{Error, Record};

    fn keep_even(record: Record) -> Result<Option<Record>, Error> {
        let n: i64 = record.value_str()?.parse().map_err(|_| Error::new("not a number"))?;
        Ok(if n % 2 == 0 { Some(record) } else { None })
    }
    crate::filter_map!(keep_even);
}

#[test]
fn filter_map_drops_records_mapped_to_none() {
    let mut h = Harness::new(evens::runnel_instance);
    let out = h.run_values(&["1", "2", "3", "4"]).expect("batch");
    assert_eq!(out.iter().map(|o| o.value_str()).collect::<Vec<_>>(), vec![Some("2"), Some("4")]);
}

mod splitter {
    use crate::{Error, Output, Record};

    /// Each comma-separated word becomes a record; words starting with `x` go to output 2.
    fn split(record: Record) -> Result<Vec<Output>, Error> {
        let text = record.value_str()?;
        Ok(text
            .split(',')
            .filter(|w| !w.is_empty())
            .map(|w| Output::new(w).to(if w.starts_with('x') { 2 } else { 0 }))
            .collect())
    }
    crate::flat_map!(split);
}

#[test]
fn outputs_without_a_timestamp_get_the_timestamp_of_the_input_that_produced_them() {
    let mut h = Harness::new(splitter::runnel_instance);
    let no_timestamp = Record::new("c").with_timestamp(-1);
    let out = h.run(vec![Record::new("a,b").with_timestamp(10), Record::new("xz").with_timestamp(20), no_timestamp]);
    let stamps: Vec<_> = out.expect("batch").iter().map(|o| o.timestamp_ms).collect();
    assert_eq!(stamps, vec![Some(10), Some(10), Some(20), None]);
}

#[test]
fn flat_map_emits_zero_or_more_outputs_to_any_index_in_order() {
    let mut h = Harness::new(splitter::runnel_instance);
    let out = h.run_values(&["a,xb,c", "", "xd"]).expect("batch");
    let got: Vec<_> = out.iter().map(|o| (o.index, o.value_str().unwrap_or(""))).collect();
    assert_eq!(got, vec![(0, "a"), (2, "xb"), (0, "c"), (2, "xd")]);
}

mod counter {
    use crate::{Error, Output, Record, State};

    /// Counts records per key; a value of "fail" fails the batch after updating the count.
    fn count(record: Record, state: &mut State) -> Result<Option<Output>, Error> {
        let key = record.key.clone().unwrap_or_default();
        let n = state.get_i64(&key)?.unwrap_or(0) + 1;
        state.put_i64(&key, n)?;
        if record.value_str()? == "fail" {
            return Err(Error::new("asked to fail"));
        }
        Ok(Some(Output::new(n.to_string()).with_key(key)))
    }
    crate::processor!(count);
}

#[test]
fn processor_state_persists_across_batches() {
    let mut h = Harness::new(counter::runnel_instance);
    h.run(vec![Record::new("x").with_key("a"), Record::new("x").with_key("b")]).expect("batch 1");
    let out = h.run(vec![Record::new("x").with_key("a")]).expect("batch 2");
    assert_eq!(out[0].value_str(), Some("2"));
    assert_eq!(h.state().get(&b"a"[..]), Some(&2i64.to_le_bytes().to_vec()));
}

#[test]
fn a_failed_batch_discards_its_state_writes() {
    let mut h = Harness::new(counter::runnel_instance);
    h.run(vec![Record::new("x").with_key("a")]).expect("batch 1");
    h.run(vec![Record::new("x").with_key("a"), Record::new("fail").with_key("a")]).expect_err("fails");
    assert_eq!(h.state().get(&b"a"[..]), Some(&1i64.to_le_bytes().to_vec()));
}

#[test]
fn a_refused_state_put_is_an_error_not_a_trap() {
    let mut h = Harness::new(counter::runnel_instance).max_state_entry(4);
    let err = h.run(vec![Record::new("x").with_key("a")]).expect_err("8-byte value over the cap");
    assert!(err.message.contains("state_put refused"), "{}", err.message);
}

#[test]
fn large_state_values_are_read_back_whole() {
    mod big {
        use crate::{Error, Output, Record, State};
        fn echo(record: Record, state: &mut State) -> Result<Vec<Output>, Error> {
            let value = record.value.clone().unwrap_or_default();
            state.put("last", &value)?;
            let back = state.get("last")?.unwrap_or_default();
            state.delete("gone")?;
            Ok(vec![Output::new(back)])
        }
        crate::processor!(echo);
    }
    let mut h = Harness::new(big::runnel_instance);
    h.put_state(b"gone", b"x");
    let value = "v".repeat(10_000);
    let out = h.run_values(&[&value]).expect("batch");
    assert_eq!(out[0].value_str(), Some(value.as_str()));
    assert!(h.state().get(&b"gone"[..]).is_none());
}

mod ref_filter {
    use crate::{env, Error, RecordRef};

    pub(super) struct Config {
        header: String,
    }

    fn config() -> Result<Config, Error> {
        Ok(Config { header: env::require("HEADER")? })
    }

    /// Keeps records that carry the configured header, and fails on a value of "fail".
    fn keep(config: &Config, record: &RecordRef<'_>) -> Result<bool, Error> {
        if record.value == Some(&b"fail"[..]) {
            return Err(Error::new("asked to fail"));
        }
        Ok(record.header(&config.header).is_some())
    }
    crate::filter_ref!(keep, config = config);
}

mod forwarder {
    use crate::{Error, Output, Outputs, Record, RecordRef, Transform};

    /// Sends each record unchanged to output 1, a copy with a new value to output 0, and the
    /// record unchanged again to output 2 (forwards and built outputs interleaved).
    pub(super) struct Forwarder;

    impl Transform for Forwarder {
        fn process(&mut self, record: Record, out: &mut Outputs) -> Result<(), Error> {
            self.process_ref(&RecordRef::from(&record), out)
        }

        fn process_ref(&mut self, record: &RecordRef<'_>, out: &mut Outputs) -> Result<(), Error> {
            out.forward_input(1);
            out.push(Output::new("built").with_key(record.key.unwrap_or_default()));
            out.forward_input(2);
            Ok(())
        }
    }
    crate::export!(|| Ok(Forwarder));
}

fn mixed_records() -> Vec<Record> {
    vec![
        Record::new("a").with_key("k1").with_timestamp(5).with_header("h", "1").with_offset(0),
        Record { key: None, value: None, timestamp_ms: -1, offset: 1, ..Record::default() }.with_header("h", ""),
        Record::new("").with_key("").with_timestamp(7).with_offset(2),
        Record::new("b").with_timestamp(8).with_header("x", "y").with_header("h", "z").with_offset(3),
    ]
}

/// With or without `keep-input` (a host that accepts it, or an older one), every adapter gives
/// the same outputs; a forwarded record is the input unchanged.
#[test]
fn outputs_are_the_same_whether_the_host_accepts_keep_input_or_not() {
    type Case = (&'static str, crate::testing::Factory, &'static [(&'static str, &'static str)]);
    let factories: [Case; 4] = [
        ("filter!", prefix_filter::runnel_instance, &[("PREFIX", "")]),
        ("filter_ref!", ref_filter::runnel_instance, &[("HEADER", "h")]),
        ("forwarder", forwarder::runnel_instance, &[]),
        ("flat_map!", splitter::runnel_instance, &[]),
    ];
    for (name, factory, env) in factories {
        let run = |features: i64| {
            let mut h = env.iter().fold(Harness::new(factory), |h, (k, v)| h.env(k, v)).abi_features(features);
            // The prefix filter and the splitter read values as text: tombstones would fail them.
            let text_only = name == "filter!" || name == "flat_map!";
            let records = mixed_records().into_iter().filter(|r| !text_only || r.value.is_some());
            h.run(records.collect())
        };
        let (plain, extended) = (run(0), run(crate::abi::FEATURES_SUPPORTED));
        assert_eq!(plain, extended, "{name}");
        assert!(plain.map_or(false, |out| !out.is_empty()), "{name}: the run produced something");
    }
    let out = Harness::new(ref_filter::runnel_instance).env("HEADER", "h").run(mixed_records()).expect("batch");
    let expected: Vec<Output> =
        mixed_records().into_iter().filter(|r| r.header("h").is_some()).map(Output::from).collect();
    assert_eq!(out, expected);
    assert_eq!(out[1].value, None, "a forwarded tombstone stays null");
    assert_eq!(out[1].timestamp_ms, None, "an input without a timestamp is forwarded without one");
}

#[test]
fn forwards_and_built_outputs_keep_their_order() {
    let out = Harness::new(forwarder::runnel_instance).run(mixed_records()).expect("batch");
    let indices: Vec<u32> = out.iter().map(|o| o.index).collect();
    assert_eq!(indices, [1, 0, 2].repeat(4));
    assert_eq!(out[0], mixed_records()[0].clone().to(1));
    assert_eq!(out[1], Output::new("built").with_key("k1").with_timestamp(5));
}

#[test]
fn a_ref_filter_error_fails_the_batch_naming_the_offset() {
    let mut h = Harness::new(ref_filter::runnel_instance).env("HEADER", "h");
    let records = vec![Record::new("ok").with_offset(41), Record::new("fail").with_offset(42)];
    let err = h.run(records).expect_err("fails");
    assert_eq!(err.code, ERR_PROCESSING);
    assert!(err.message.starts_with("record at offset 42: asked to fail"), "{}", err.message);
}

#[test]
fn a_ref_filter_also_runs_on_owned_records() {
    use crate::{Outputs, RecordRef, Transform};
    let mut transform = crate::transform::filter_ref(|r: &RecordRef<'_>| Ok(r.header("h").is_some()));
    let mut out = Outputs::default();
    // Called directly (as a unit test might), `process` takes an owned record.
    transform.process(mixed_records()[0].clone(), &mut out).expect("process");
    transform.process(mixed_records()[2].clone(), &mut out).expect("process");
    assert_eq!(out.into_vec(), vec![Output::from(mixed_records()[0].clone())]);
}
