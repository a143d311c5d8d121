//! Avro schemas (`schemas/avro/*.avsc`) of every topic the pipeline reads or writes.

/// Value schema of `marketing.events` (producers register it under `marketing.events-value`).
pub const MARKETING_EVENT: &str = include_str!("../avro/marketing_event.avsc");
/// The canonical event as the normalizer emits it.
pub const NORMALIZED_EVENT: &str = include_str!("../avro/normalized_event.avsc");
/// Documents the headers of `marketing.events.dlq` records (their value is the original bytes).
pub const DEAD_LETTER: &str = include_str!("../avro/dead_letter.avsc");

/// Value schema of `marketing.consent`.
pub const CONSENT: &str = include_str!("../avro/consent.avsc");

/// Value schema of `marketing.profiles`.
pub const PROFILE: &str = include_str!("../avro/profile.avsc");

/// Value schema of `connector.<channel>`: the message a channel connector delivers.
pub const CHANNEL_MESSAGE: &str = include_str!("../avro/channel_message.avsc");
/// Value schema of `marketing.deliveries`: a delivery outcome.
pub const DELIVERY: &str = include_str!("../avro/delivery.avsc");

/// Every schema with its file name, for tools that list or register them.
pub const ALL: &[(&str, &str)] = &[
    ("marketing_event.avsc", MARKETING_EVENT),
    ("normalized_event.avsc", NORMALIZED_EVENT),
    ("dead_letter.avsc", DEAD_LETTER),
    ("consent.avsc", CONSENT),
    ("profile.avsc", PROFILE),
    ("channel_message.avsc", CHANNEL_MESSAGE),
    ("delivery.avsc", DELIVERY),
];

#[cfg(test)]
mod tests {
    #[test]
    fn every_schema_parses() {
        for (name, text) in super::ALL {
            apache_avro::Schema::parse_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
