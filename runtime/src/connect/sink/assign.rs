//! Which partitions a sink task owns, computed from the broker's metadata image: the partitions
//! of the topics the connector reads (`topics`, or `topics.regex` matched as topics appear),
//! spread over the connector's tasks.
//!
//! The spread is *stable*: partition `p` of topic `t` goes to task `(start(t) + p) % tasks`
//! where `start(t)` is a hash of the topic's name. Partitions added to a topic and topics
//! created later land on some task without moving any partition that already had one, so a
//! metadata change reopens only the tasks that gain (or lose, when a topic is deleted)
//! partitions. Within a topic the spread is round-robin, so a topic's partitions are balanced
//! over the tasks; across many small topics the balance is that of the hash.
//!
//! Pure: the same image, config and task give the same assignment (tasks compute it
//! independently and must agree, or two of them would read one partition).

use runnel_broker::metadata::MetadataImage;

use crate::connect::config::Common;

/// A task's partitions, sorted.
pub(crate) type Assignment = Vec<(String, i32)>;

/// The partitions of the topics `common` reads that task `task_id` of `tasks` owns.
pub(crate) fn assignment(image: &MetadataImage, common: &Common, task_id: u32, tasks: u32) -> Assignment {
    assert!(tasks > 0 && task_id < tasks, "task {task_id} of {tasks}");
    let mut owned = Vec::new();
    for topic in image.topics.values().filter(|t| common.reads_topic(&t.name)) {
        let start = topic_start(&topic.name, tasks);
        owned.extend(
            (0..topic.partitions)
                .filter(|p| (start + *p as u64) % tasks as u64 == task_id as u64)
                .map(|p| (topic.name.clone(), p)),
        );
    }
    // The image's topics are a sorted map, and partitions are visited in order.
    debug_assert!(owned.windows(2).all(|w| w[0] < w[1]));
    owned
}

/// The listed topics (`topics`) that do not exist: their partitions are assigned once they do.
pub(crate) fn missing_topics<'a>(image: &MetadataImage, common: &'a Common) -> Vec<&'a str> {
    common.topics.iter().filter(|t| !image.topics.contains_key(*t)).map(String::as_str).collect()
}

/// Where a topic's round-robin starts. crc32c, not the std hasher: it must be the same in
/// every task, across restarts and builds.
fn topic_start(topic: &str, tasks: u32) -> u64 {
    u64::from(crc32c::crc32c(topic.as_bytes())) % u64::from(tasks)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use runnel_broker::metadata::MetadataCommand;

    use super::*;
    use crate::connect::config::ConfigMap;

    fn image(topics: &[(&str, i32)]) -> MetadataImage {
        let mut image = MetadataImage::default();
        for (name, partitions) in topics {
            image
                .apply(&MetadataCommand::CreateTopic {
                    name: name.to_string(),
                    topic_id: uuid::Uuid::new_v4().to_string(),
                    partitions: *partitions,
                    configs: Default::default(),
                })
                .expect("valid topic");
        }
        image
    }

    fn common(key: &str, value: &str, tasks: u32) -> Common {
        let config: ConfigMap = [("connector.class", "postgres-sink"), (key, value), ("tasks.max", &tasks.to_string())]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Common::parse("c", &config).expect("valid config")
    }

    fn all_tasks(image: &MetadataImage, common: &Common) -> Vec<Assignment> {
        (0..common.tasks()).map(|task| assignment(image, common, task, common.tasks())).collect()
    }

    /// Every partition read is owned by exactly one task.
    fn assert_partitioned(shares: &[Assignment], expected: &BTreeSet<(String, i32)>) {
        let mut seen = BTreeSet::new();
        for share in shares {
            for partition in share {
                assert!(seen.insert(partition.clone()), "{partition:?} owned twice: {shares:?}");
            }
        }
        assert_eq!(&seen, expected);
    }

    #[test]
    fn every_partition_has_one_owner_and_a_topic_is_balanced() {
        let image = image(&[("a", 7), ("b", 3), ("other", 4)]);
        let common = common("topics", "a,b", 3);
        let shares = all_tasks(&image, &common);
        let expected = (0..7).map(|p| ("a".to_string(), p)).chain((0..3).map(|p| ("b".to_string(), p))).collect();
        assert_partitioned(&shares, &expected);
        for share in &shares {
            let of_a = share.iter().filter(|(t, _)| t == "a").count();
            assert!((2..=3).contains(&of_a), "7 partitions over 3 tasks: {shares:?}");
            assert_eq!(share.iter().filter(|(t, _)| t == "b").count(), 1, "{shares:?}");
        }
    }

    #[test]
    fn growth_never_moves_a_partition_that_had_an_owner() {
        let common = common("topics.regex", "t.*", 4);
        let before = all_tasks(&image(&[("t1", 3), ("t2", 5), ("x", 2)]), &common);
        let mut grown = image(&[("t1", 3), ("t2", 5), ("x", 2), ("t0", 2), ("t3", 1)]);
        grown.apply(&MetadataCommand::CreatePartitions { name: "t1".into(), total: 9 }).expect("grows");
        let after = all_tasks(&grown, &common);
        for (old, new) in before.iter().zip(&after) {
            assert!(old.iter().all(|p| new.contains(p)), "task lost a partition: {old:?} -> {new:?}");
        }
        let expected = [("t0", 2), ("t1", 9), ("t2", 5), ("t3", 1)]
            .iter()
            .flat_map(|(t, n)| (0..*n).map(|p| (t.to_string(), p)))
            .collect();
        assert_partitioned(&after, &expected);
    }

    #[test]
    fn listed_topics_that_do_not_exist_yet_are_reported_and_unassigned() {
        let image = image(&[("a", 2), ("__internal", 1)]);
        let listed = common("topics", "a,later", 1);
        assert_eq!(missing_topics(&image, &listed), vec!["later"]);
        assert_eq!(assignment(&image, &listed, 0, 1), vec![("a".to_string(), 0), ("a".to_string(), 1)]);
        let everything = common("topics.regex", ".*", 1);
        assert!(missing_topics(&image, &everything).is_empty());
        assert_eq!(assignment(&image, &everything, 0, 1).len(), 2, "internal topics are never matched");
    }
}
