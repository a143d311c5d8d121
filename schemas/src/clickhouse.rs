//! ClickHouse DDL as ordered migrations, applied by `touchpoint migrate`.
//!
//! A migration is never edited once released: add a new file with the next version instead.
//! `touchpoint migrate` records applied versions in `schema_migrations`, so running it twice is a no-op.

/// One DDL statement with its version (the number in its file name).
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// All migrations, in the order they are applied.
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "0001_events", sql: include_str!("../clickhouse/0001_events.sql") },
    Migration { version: 2, name: "0002_decisions", sql: include_str!("../clickhouse/0002_decisions.sql") },
    Migration { version: 3, name: "0003_events_late", sql: include_str!("../clickhouse/0003_events_late.sql") },
    Migration { version: 4, name: "0004_decisions_late", sql: include_str!("../clickhouse/0004_decisions_late.sql") },
    Migration {
        version: 5,
        name: "0005_decisions_journey",
        sql: include_str!("../clickhouse/0005_decisions_journey.sql"),
    },
    Migration {
        version: 6,
        name: "0006_journey_transitions",
        sql: include_str!("../clickhouse/0006_journey_transitions.sql"),
    },
    Migration { version: 7, name: "0007_deliveries", sql: include_str!("../clickhouse/0007_deliveries.sql") },
    Migration { version: 8, name: "0008_profiles", sql: include_str!("../clickhouse/0008_profiles.sql") },
    Migration {
        version: 9,
        name: "0009_decisions_recipient",
        sql: include_str!("../clickhouse/0009_decisions_recipient.sql"),
    },
    Migration {
        version: 10,
        name: "0010_decisions_quiet_hours",
        sql: include_str!("../clickhouse/0010_decisions_quiet_hours.sql"),
    },
    Migration {
        version: 11,
        name: "0011_segment_memberships",
        sql: include_str!("../clickhouse/0011_segment_memberships.sql"),
    },
];

/// Table that records which migrations were applied (created by the migrator itself).
pub const MIGRATIONS_TABLE_DDL: &str = "CREATE TABLE IF NOT EXISTS schema_migrations \
    (version UInt32, name String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) \
    ENGINE = MergeTree ORDER BY version";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_strictly_increasing_and_match_names() {
        let mut last = 0;
        for m in MIGRATIONS {
            assert!(m.version > last, "{} is out of order", m.name);
            assert!(m.name.starts_with(&format!("{:04}_", m.version)), "{}", m.name);
            assert!(!m.sql.trim().is_empty());
            last = m.version;
        }
    }
}
