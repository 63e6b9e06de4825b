//! Kafka error codes rendered the way Kafka users know them (`TOPIC_ALREADY_EXISTS`).

use kafka_protocol::error::ResponseError;

pub(crate) const OFFSET_OUT_OF_RANGE: i16 = 1;
pub(crate) const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
pub(crate) const LEADER_NOT_AVAILABLE: i16 = 5;

/// `NAME (code)` plus the broker's message when it sent one, e.g.
/// `TOPIC_ALREADY_EXISTS (36): Topic 'a' already exists.`
pub(crate) fn describe(code: i16, message: Option<&str>) -> String {
    let name = name(code);
    match message.map(str::trim).filter(|message| !message.is_empty()) {
        Some(message) => format!("{name} ({code}): {message}"),
        None => format!("{name} ({code})"),
    }
}

/// The Java-style constant name of a Kafka error code.
pub(crate) fn name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None => "NONE".to_string(),
        Some(ResponseError::Unknown(_)) => "UNKNOWN_ERROR_CODE".to_string(),
        // The crate names variants in CamelCase after Kafka's constants; convert back.
        Some(error) => screaming_snake_case(&format!("{error:?}")),
    }
}

fn screaming_snake_case(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 8);
    for (index, character) in camel.chars().enumerate() {
        if character.is_ascii_uppercase() && index > 0 {
            out.push('_');
        }
        out.push(character.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_kafka_constants() {
        assert_eq!(name(36), "TOPIC_ALREADY_EXISTS");
        assert_eq!(name(OFFSET_OUT_OF_RANGE), "OFFSET_OUT_OF_RANGE");
        assert_eq!(name(UNKNOWN_TOPIC_OR_PARTITION), "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(name(LEADER_NOT_AVAILABLE), "LEADER_NOT_AVAILABLE");
        assert_eq!(name(6), "NOT_LEADER_OR_FOLLOWER");
        assert_eq!(name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(name(0), "NONE");
        assert_eq!(name(31_000), "UNKNOWN_ERROR_CODE");
    }

    #[test]
    fn describe_includes_the_broker_message_only_when_present() {
        assert_eq!(describe(36, Some("Topic 'a' exists.")), "TOPIC_ALREADY_EXISTS (36): Topic 'a' exists.");
        assert_eq!(describe(36, Some("  ")), "TOPIC_ALREADY_EXISTS (36)");
        assert_eq!(describe(36, None), "TOPIC_ALREADY_EXISTS (36)");
    }
}
